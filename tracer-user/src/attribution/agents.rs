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
}

impl Agents {
    /// `patterns`: `--agent` values; `*` matches any run of characters, `?`
    /// one character. Matched against the process name and its executable.
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
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
}
