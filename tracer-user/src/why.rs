//! `rsttrace why ADDR[:PORT]`: the nftables rules and set elements that
//! would reject or drop a peer's packets, in one namespace or all, read
//! from the kernel now (no tracing, no eBPF). The on-call engineer's
//! first question, answered before any traffic arrives.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use anyhow::{Result, bail};

use crate::{
    attribution::nft::{
        matcher::Packet,
        names::{self, Named},
        owners::Owners,
    },
    cli::{OutputFormat, Proto},
    untrusted::Untrusted,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// `ADDR`, `ADDR:PORT`, `[ADDR6]:PORT`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(Target { addr, port: None });
    }
    match s.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(Target {
            addr: sa.ip(),
            port: Some(sa.port()),
        }),
        Ok(_) => Err("port 0 is not a port (1-65535)".into()),
        Err(_) => Err(format!(
            "{s:?} is not an address: expected ADDR, ADDR:PORT or [ADDR6]:PORT"
        )),
    }
}

/// The namespaces `spec` names, as (label, file).
fn namespaces(spec: &str) -> Result<Vec<(String, PathBuf)>> {
    let one = |label: &str, path: PathBuf| -> Result<Vec<(String, PathBuf)>> {
        crate::scope::resolve_netns(&path.to_string_lossy())?;
        Ok(vec![(label.to_string(), path)])
    };
    match spec {
        "all" => {}
        "self" => return one("self", "/proc/self/ns/net".into()),
        s => {
            if let Some(pid) = s.strip_prefix("pid:") {
                let pid: u32 = pid
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--netns pid:N needs a process id, got {s:?}"))?;
                return one(s, format!("/proc/{pid}/ns/net").into());
            }
            return one(s, s.into());
        }
    }
    let mut seen = HashSet::new();
    let mut out = vec![];
    let ino = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| m.ino());
    let own = PathBuf::from("/proc/self/ns/net");
    if let Some(i) = ino(&own) {
        seen.insert(i);
        out.push(("self".to_string(), own));
    }
    let mut named: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    named.sort();
    for p in named {
        if let Some(i) = ino(&p)
            && seen.insert(i)
        {
            out.push((p.to_string_lossy().into_owned(), p));
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    for pid in pids {
        let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Some(i) = ino(&p)
            && seen.insert(i)
        {
            out.push((format!("pid:{pid}"), p));
        }
    }
    Ok(out)
}

pub fn run(target: &Target, proto: Proto, netns: &str, output: OutputFormat) -> Result<()> {
    let pkt = Packet {
        v6: target.addr.is_ipv6(),
        src: Some(target.addr),
        dst: None,
        sport: None,
        dport: target.port,
        l4proto: match proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        },
    };
    let owners = Owners::default();
    let mut found = 0;
    let mut errors = vec![];
    let spaces = namespaces(netns)?;
    let all = netns == "all";
    for (label, path) in &spaces {
        // Our own namespace needs no setns (nor CAP_SYS_ADMIN).
        let own = label == "self";
        let matches = match names::why(&owners, (!own).then_some(path.as_path()), &pkt) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{}: {e}", Untrusted::from(label.as_str())));
                continue;
            }
        };
        for (hook, n) in matches {
            found += 1;
            match output {
                OutputFormat::Json => println!("{}", json(label, hook, &n)),
                OutputFormat::Text => print!("{}", text(label, hook, &n, all)),
            }
        }
    }
    if errors.len() == spaces.len() && !spaces.is_empty() {
        bail!(
            "could not read any ruleset (needs CAP_NET_ADMIN, and CAP_SYS_ADMIN for other \
             namespaces): {}",
            errors.join("; ")
        );
    }
    for e in &errors {
        log::warn!("{e}");
    }
    if found == 0 && output == OutputFormat::Text {
        let port = target
            .port
            .map(|p| format!(" port {p}"))
            .unwrap_or_default();
        println!(
            "no nftables or iptables rule rejects or drops {}{port} ({} namespace{} read)",
            target.addr,
            spaces.len() - errors.len(),
            if spaces.len() - errors.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    Ok(())
}

fn verdict(n: &Named) -> &'static str {
    match n.verdict {
        crate::attribution::nftmon::Verdict::Reject => "reject",
        _ => "drop",
    }
}

fn text(label: &str, hook: u32, n: &Named, all: bool) -> String {
    let ns = if all {
        format!(" [netns {}]", Untrusted::from(label))
    } else {
        String::new()
    };
    // A legacy rule's handle is its number in the chain.
    let legacy = n.backend == "iptables-legacy";
    let handle = match n.handle {
        None => "policy".to_string(),
        Some(h) if legacy => format!("rule {h}"),
        Some(h) => format!("handle {h}"),
    };
    let family = match legacy {
        true => format!("iptables-legacy {}", n.family),
        false => n.family.to_string(),
    };
    let maybe = if n.unknown.is_empty() {
        String::new()
    } else {
        format!(
            " (if {} allow{})",
            n.unknown
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if n.unknown.len() == 1 { "s" } else { "" }
        )
    };
    let mut s = format!(
        "{}: {} {} {} chain {} {handle}{ns}{maybe}\n    {}\n",
        names::hook_name(hook),
        verdict(n),
        family,
        n.table,
        n.chain,
        n.rule
    );
    if let Some(set) = &n.set {
        s.push_str(&format!("    set {} element {}", set.name, set.element));
        if let Some(t) = set.timeout_s {
            s.push_str(&format!(" timeout {}", names::short_duration(t)));
        }
        if let Some(e) = set.expires_in_s {
            s.push_str(&format!(" expires in {}", names::short_duration(e)));
        }
        if let Some(c) = &set.comment {
            s.push_str(&format!(" comment \"{c}\""));
        }
        s.push('\n');
    }
    if let Some(a) = &n.agent {
        let label = if n.security_agent {
            " [security-agent]"
        } else {
            ""
        };
        s.push_str(&format!("    owner {a}{label}\n"));
    }
    s
}

fn json(label: &str, hook: u32, n: &Named) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "why",
        "netns": Untrusted::from(label),
        "hook": names::hook_name(hook),
        "verdict": verdict(n),
        "backend": n.backend,
        "family": n.family,
        "table": n.table,
        "chain": n.chain,
        "handle": n.handle,
        "rule": n.rule,
        "set": n.set,
        "agent": n.agent,
        "labels": if n.security_agent { vec!["security-agent"] } else { vec![] },
    });
    // Only a candidate names the facts it depends on.
    if !n.unknown.is_empty() {
        v["unknown"] = serde_json::json!(n.unknown);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("198.18.0.10").unwrap().port, None);
        assert_eq!(parse_target("198.18.0.10:22").unwrap().port, Some(22));
        assert_eq!(parse_target("[2001:db8::1]:443").unwrap().port, Some(443));
        assert!(parse_target("2001:db8::1").is_ok());
        assert!(parse_target("198.18.0.10:0").is_err());
        assert!(parse_target("198.18.0.10:99999").is_err());
        assert!(parse_target("example").is_err());
    }
}
