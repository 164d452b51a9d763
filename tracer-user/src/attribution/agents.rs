//! Runtime-security and intrusion-prevention agents: the processes whose
//! RSTs (a destroyed socket, a firewall rule) get the `security-agent`
//! label, so "who blocked this IP?" answers itself.

/// Well-known agents by process name (as the kernel's 15-byte `comm` shows
/// it) and the name users know them by. Each is known to block peers by
/// destroying sockets or by adding firewall rules.
pub const KNOWN_AGENTS: &[(&str, &str)] = &[
    ("falcon-sensor", "CrowdStrike Falcon"),
    ("tetragon", "Cilium Tetragon"),
    ("crowdsec", "CrowdSec"),
    ("crowdsec-firewall-bouncer", "CrowdSec firewall bouncer"),
    ("fail2ban-server", "fail2ban"),
    ("sshguard", "SSHGuard"),
    ("wazuh-execd", "Wazuh active response"),
    ("ossec-execd", "OSSEC active response"),
    ("lfd", "ConfigServer lfd"),
    ("suricata", "Suricata (IPS mode)"),
    ("snort", "Snort (IPS mode)"),
    ("tracee", "Aqua Tracee"),
    ("wdavdaemon", "Microsoft Defender for Endpoint"),
    ("sentinelone-agent", "SentinelOne"),
    ("s1-agent", "SentinelOne"),
    ("ds_agent", "Trend Micro Deep Security"),
    ("qualys-cloud-agent", "Qualys Cloud Agent"),
    ("twistlock-defender", "Prisma Cloud Defender"),
];

/// Kernel modules of security products that build or drop packets
/// themselves (network containment), by module-name prefix.
pub const KNOWN_AGENT_MODULES: &[(&str, &str)] = &[
    ("falcon_", "CrowdStrike Falcon"),
    ("sophos", "Sophos"),
    ("mfe_", "Trellix/McAfee"),
    ("ds_", "Trend Micro Deep Security"),
    ("tmhook", "Trend Micro Deep Security"),
];

/// Security modules and agents that run inside the server process itself
/// (web-application firewalls, RASP agents): they abort connections with
/// the server's own close(). By the file name of a library the process
/// maps, or of a Java agent on its command line (`-javaagent:PATH[=...]`),
/// `*` and `?` wildcards; and the name users know them by.
pub const KNOWN_LOADED_AGENTS: &[(&str, &str)] = &[
    // ModSecurity v3 (libmodsecurity, behind its nginx/Apache connectors)
    // and its v2 Apache module.
    ("libmodsecurity.so*", "ModSecurity"),
    ("ngx_http_modsecurity_module.so", "ModSecurity"),
    ("mod_security2.so", "ModSecurity"),
    ("ngx_http_naxsi_module.so", "NAXSI"),
    ("ngx_http_wallarm_module.so", "Wallarm"),
    ("mod_sigsci.so", "Fastly Next-Gen WAF (Signal Sciences)"),
    (
        "ngx_http_sigsci_module.so",
        "Fastly Next-Gen WAF (Signal Sciences)",
    ),
    // Datadog's PHP AppSec extension, and the WAF library its tracers
    // load when App and API Protection is on.
    ("ddappsec.so", "Datadog AppSec"),
    ("libddwaf.so*", "Datadog AppSec"),
    ("openrasp.so", "OpenRASP"),
    ("sqreen.so", "Sqreen"),
    // Java agents.
    ("rasp.jar", "OpenRASP"),
    ("contrast*.jar", "Contrast Security"),
    ("sqreen*.jar", "Sqreen"),
];

/// The security product a kernel module belongs to, if known.
pub fn module_agent(module: &str) -> Option<&'static str> {
    KNOWN_AGENT_MODULES
        .iter()
        .find(|(prefix, _)| module.starts_with(prefix))
        .map(|(_, name)| *name)
}

use crate::untrusted::Untrusted;

const COMM_LEN: usize = 15;

/// Matches process names against the known list and user patterns.
#[derive(Debug, Default, Clone)]
pub struct Agents {
    patterns: Vec<String>,
    /// `--agent-library` values.
    libraries: Vec<String>,
}

/// A security module or agent loaded in a process: its name and how it was
/// seen (the library's path, or the `-javaagent:` argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub name: Untrusted,
    pub via: Untrusted,
}

impl Agents {
    /// `patterns`: `--agent` values; `*` matches any run of characters, `?`
    /// one character. Matched against the process name and its executable.
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            libraries: vec![],
        }
    }

    /// `libraries`: `--agent-library` values, matched against the file
    /// names (or paths) of the libraries a process maps and of its Java
    /// agents, beside `KNOWN_LOADED_AGENTS`.
    pub fn with_libraries(mut self, libraries: Vec<String>) -> Self {
        self.libraries = libraries;
        self
    }

    /// The security module loaded in a process, from its memory maps
    /// (`/proc/PID/maps`) and command line (`/proc/PID/cmdline`): the first
    /// known one, else the first `--agent-library` match (named by its file
    /// name: the process chose it).
    pub fn loaded(&self, maps: &[u8], cmdline: &[u8]) -> Option<Loaded> {
        let mut candidates: Vec<&[u8]> = maps.split(|b| *b == b'\n').filter_map(map_path).collect();
        candidates.extend(cmdline.split(|b| *b == 0).filter_map(|arg| {
            let jar = arg.strip_prefix(b"-javaagent:")?;
            Some(jar.split(|b| *b == b'=').next().unwrap_or(jar))
        }));
        let base = |p: &[u8]| -> String {
            String::from_utf8_lossy(p.rsplit(|b| *b == b'/').next().unwrap_or(p)).into_owned()
        };
        for path in &candidates {
            let file = base(path);
            if let Some((_, name)) = KNOWN_LOADED_AGENTS.iter().find(|(p, _)| glob(p, &file)) {
                return Some(Loaded {
                    name: (*name).into(),
                    via: Untrusted::from_bytes(*path),
                });
            }
        }
        for path in &candidates {
            let (file, full) = (base(path), String::from_utf8_lossy(path));
            if self
                .libraries
                .iter()
                .any(|p| glob(p, &file) || glob(p, &full))
            {
                return Some(Loaded {
                    name: Untrusted::from(file),
                    via: Untrusted::from_bytes(*path),
                });
            }
        }
        None
    }

    /// The agent's name when `comm` (or `exe`) is one: a known agent's
    /// display name, or for a user pattern the process name itself (still
    /// untrusted: the process chose it).
    pub fn classify(&self, comm: &Untrusted, exe: Option<&Untrusted>) -> Option<Untrusted> {
        for (name, display) in KNOWN_AGENTS {
            let truncated = &name[..name.len().min(COMM_LEN)];
            if *comm == truncated {
                return Some((*display).into());
            }
        }
        let (comm_text, exe) = (comm.lossy(), exe.map(|e| e.lossy()));
        let exe_base = exe.as_deref().and_then(|e| e.rsplit('/').next());
        for p in &self.patterns {
            if glob(p, &comm_text)
                || exe.as_deref().is_some_and(|e| glob(p, e))
                || exe_base.is_some_and(|b| glob(p, b))
            {
                return Some(comm.clone());
            }
        }
        None
    }
}

/// The file a line of `/proc/PID/maps` maps, if a file: the path from the
/// sixth field on (paths may hold spaces), without " (deleted)".
fn map_path(line: &[u8]) -> Option<&[u8]> {
    let slash = line.iter().position(|b| *b == b'/')?;
    // The fifth field (the inode) ends before the path: no '/' earlier.
    let path = &line[slash..];
    Some(path.strip_suffix(b" (deleted)").unwrap_or(path))
}

/// Shell-style match with `*` and `?` (no character classes).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Validates an `--agent` value.
pub fn parse_pattern(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("an empty pattern would match nothing".into());
    }
    if s.contains(['[', ']']) {
        return Err("character classes are not supported; use * and ?".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("blocklist*", "blocklistd"));
        assert!(glob("*guard", "sshguard"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*", ""));
        assert!(!glob("blocklist*", "xblocklist"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b", "xxaxxbxxc"));
    }

    #[test]
    fn known_agents_match_their_truncated_comm() {
        let a = Agents::default();
        let classify = |comm: &str, exe: Option<&str>| {
            a.classify(&comm.into(), exe.map(Untrusted::from).as_ref())
                .map(|n| n.to_string())
        };
        assert_eq!(
            classify("crowdsec-firew", None),
            None,
            "14 chars is not the comm"
        );
        assert_eq!(
            classify("crowdsec-firewa", None).as_deref(),
            Some("CrowdSec firewall bouncer")
        );
        assert_eq!(
            classify("fail2ban-server", None).as_deref(),
            Some("fail2ban")
        );
        assert_eq!(classify("ss", Some("/usr/bin/ss")), None);
    }

    #[test]
    fn known_modules() {
        assert_eq!(
            module_agent("falcon_nf_netcontain"),
            Some("CrowdStrike Falcon")
        );
        assert_eq!(module_agent("nf_tables"), None);
    }

    #[test]
    fn user_patterns_match_comm_or_executable() {
        let a = Agents::new(vec!["blocklist*".into(), "/opt/sec/*".into()]);
        let classify = |comm: &str, exe: Option<&str>| {
            a.classify(&comm.into(), exe.map(Untrusted::from).as_ref())
                .map(|n| n.to_string())
        };
        assert_eq!(classify("blocklistd", None).as_deref(), Some("blocklistd"));
        assert_eq!(classify("x", Some("/opt/sec/bin/x")).as_deref(), Some("x"));
        assert_eq!(classify("nginx", Some("/usr/sbin/nginx")), None);
        assert!(parse_pattern("").is_err());
        assert!(parse_pattern("[ab]").is_err());
    }

    #[test]
    fn loaded_modules_from_maps_and_java_agents() {
        let a = Agents::default();
        let maps = b"7f0000000000-7f0000001000 r-xp 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
            7f0000002000-7f0000003000 r-xp 00000000 08:01 1235 /opt/my lib/libmodsecurity.so.3.0.12 (deleted)\n\
            7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n";
        let l = a.loaded(maps, b"nginx\0").unwrap();
        assert_eq!(l.name.to_string(), "ModSecurity");
        assert_eq!(l.via.to_string(), "/opt/my lib/libmodsecurity.so.3.0.12");
        let java = a
            .loaded(
                b"",
                b"java\0-javaagent:/opt/contrast/contrast-agent.jar=x\0-jar\0app.jar\0",
            )
            .unwrap();
        assert_eq!(java.name.to_string(), "Contrast Security");
        assert_eq!(java.via.to_string(), "/opt/contrast/contrast-agent.jar");
        assert_eq!(
            a.loaded(b"0-1 r-xp 0 0:0 1 /usr/lib/libssl.so.3\n", b""),
            None
        );
        let own = Agents::default().with_libraries(vec!["libwaf*.so".into()]);
        let l = own
            .loaded(b"0-1 r-xp 0 0:0 1 /srv/libwaf-acme.so\n", b"")
            .unwrap();
        assert_eq!(
            (l.name.to_string(), l.via.to_string()),
            ("libwaf-acme.so".into(), "/srv/libwaf-acme.so".into())
        );
    }
}
