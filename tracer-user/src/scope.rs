//! The user's scope flags, parsed and resolved for the kernel's filter.

use std::{net::IpAddr, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, Result, bail};
use tracer_common::{AF_INET, AF_INET6, CidrKey, Filter};

use crate::attribution::cause::{Cause, DropCause};

/// A remote network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.trim().parse().map_err(|_| {
        format!("not an IP address or CIDR: {s:?} (e.g. 10.0.0.0/8, 2001:db8::/32)")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("bad prefix length in {s:?} (0..={max})"))?,
    };
    Ok(Cidr { addr, prefix })
}

impl Cidr {
    /// The trie key: family byte, then the address bits.
    pub fn key(&self) -> (u32, CidrKey) {
        let mut data = [0u8; 17];
        match self.addr {
            IpAddr::V4(a) => {
                data[0] = AF_INET;
                data[1..5].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                data[0] = AF_INET6;
                data[1..].copy_from_slice(&a.octets());
            }
        }
        (8 + u32::from(self.prefix), data)
    }
}

pub fn parse_cause(s: &str) -> Result<String, String> {
    if Cause::ALL.iter().any(|c| c.name() == s) || DropCause::ALL.iter().any(|c| c.name() == s) {
        return Ok(s.to_string());
    }
    let names: Vec<&str> = Cause::ALL
        .iter()
        .map(|c| c.name())
        .chain(DropCause::ALL.iter().map(|c| c.name()))
        .collect();
    Err(format!("unknown cause {s:?}; one of: {}", names.join(", ")))
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("not a port: {s:?} (1-65535)"))
}

/// `--netns`: `all` (0), `self`, a namespace file (`/run/netns/NAME`,
/// `/proc/PID/ns/net`) or `pid:N`, as the namespace's inode.
pub fn resolve_netns(spec: &str) -> Result<u32> {
    let path = match spec {
        "all" => return Ok(0),
        "self" => "/proc/self/ns/net".to_string(),
        s => match s.strip_prefix("pid:") {
            Some(pid) => {
                let pid: u32 = pid
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--netns pid:N needs a process id, got {s:?}"))?;
                format!("/proc/{pid}/ns/net")
            }
            None => s.to_string(),
        },
    };
    let meta = std::fs::metadata(Path::new(&path))
        .with_context(|| format!("--netns {spec}: can't open {path}"))?;
    // nsfs files are how namespaces show; anything else is a mistake.
    let nsfs = 0x6e73_6673u32;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(path.clone()).expect("no NUL");
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as u32 != nsfs {
        bail!("--netns {spec}: {path} is not a network namespace file");
    }
    u32::try_from(meta.ino()).context("namespace inode out of range")
}

pub struct Scope {
    pub filter: Filter,
    pub cidrs: Vec<Cidr>,
    pub ports: Vec<u16>,
    /// Whether silent drops are in scope (no --cause, or a drop cause).
    pub drops: bool,
    /// The drop causes in scope (all without --cause).
    pub drop_causes: Vec<DropCause>,
}

pub fn build(netns: &str, remotes: &[Cidr], ports: &[u16], causes: &[String]) -> Result<Scope> {
    let mut mask = 0u32;
    for c in causes {
        if let Some(c) = Cause::ALL.iter().find(|k| k.name() == c) {
            mask |= 1 << (*c as u32);
        }
    }
    // Only drop causes asked for: no RST is in scope.
    if !causes.is_empty() && mask == 0 {
        mask = 1 << 31;
    }
    let drop_causes: Vec<DropCause> = DropCause::ALL
        .into_iter()
        .filter(|d| causes.is_empty() || causes.iter().any(|c| c == d.name()))
        .collect();
    Ok(Scope {
        filter: Filter {
            netns: resolve_netns(netns)?,
            causes: mask,
            remote: u32::from(!remotes.is_empty()),
            local_port: u32::from(!ports.is_empty()),
        },
        cidrs: remotes.to_vec(),
        ports: ports.to_vec(),
        drops: !drop_causes.is_empty(),
        drop_causes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().prefix, 8);
        assert_eq!(parse_cidr("127.0.0.1").unwrap().prefix, 32);
        assert_eq!(parse_cidr("fd00::/8").unwrap().key().0, 16);
        assert_eq!(parse_cidr("::1").unwrap().key().0, 136);
        for bad in ["10.0.0.0/33", "::/129", "x", "10.0.0/8", "", "1.2.3.4/-1"] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
        let (len, data) = parse_cidr("10.1.0.0/16").unwrap().key();
        assert_eq!((len, data[0], data[1], data[2]), (24, AF_INET, 10, 1));
    }

    #[test]
    fn causes_and_ports() {
        assert!(parse_cause("closed-port").is_ok());
        assert!(parse_cause("netfilter-drop").is_ok());
        assert!(
            parse_cause("closed")
                .unwrap_err()
                .contains("one of: unknown, closed-port")
        );
        assert_eq!(parse_port("443"), Ok(443));
        assert!(parse_port("0").is_err() && parse_port("70000").is_err());
    }

    #[test]
    fn netns_specs() {
        assert_eq!(resolve_netns("all").unwrap(), 0);
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(resolve_netns("self").unwrap(), own);
        assert_eq!(
            resolve_netns(&format!("pid:{}", std::process::id())).unwrap(),
            own
        );
        assert!(resolve_netns("pid:x").is_err());
        assert!(resolve_netns("/nonexistent").is_err());
        let e = resolve_netns("/etc/hostname").unwrap_err().to_string();
        assert!(e.contains("not a network namespace file"), "{e}");
    }

    #[test]
    fn scope_masks() {
        let s = build("all", &[], &[], &["closed-port".into()]).unwrap();
        assert_eq!(s.filter.causes, 1 << (Cause::ClosedPort as u32));
        assert!(!s.drops);
        assert!(s.drop_causes.is_empty());
        let only_drops = build("all", &[], &[], &["netfilter-drop".into()]).unwrap();
        assert!(only_drops.drops && only_drops.filter.causes == 1 << 31);
        assert_eq!(only_drops.drop_causes, [DropCause::NetfilterDrop]);
        let tc = build("all", &[], &[], &["tc-drop".into(), "closed-port".into()]).unwrap();
        assert_eq!(tc.drop_causes, [DropCause::TcDrop]);
        assert_eq!(tc.filter.causes, 1 << (Cause::ClosedPort as u32));
        let all = build("all", &[], &[], &[]).unwrap();
        assert_eq!(all.filter, Filter::default());
        assert!(all.drops);
        assert_eq!(all.drop_causes, DropCause::ALL);
        assert!(parse_cause("listen-overflow").is_ok());
        let e = parse_cause("nope").unwrap_err();
        assert!(
            e.contains("cgroup-drop") && e.contains("closed-port"),
            "{e}"
        );
    }
}
