//! Which tool owns a table, chain or set, by the names those tools give
//! them (next to the process list in `agents.rs`). Security agents'
//! entries add the `security-agent` label.

use crate::attribution::agents::glob;

/// (what the pattern names, pattern, tool, security agent).
pub const KNOWN_OWNERS: &[(Kind, &str, &str, bool)] = &[
    // CrowdSec firewall bouncer, nftables mode: tables `crowdsec` and
    // `crowdsec6`, chains `crowdsec-chain`/`crowdsec6-chain`, sets
    // `crowdsec-blacklists`/`crowdsec6-blacklists` (newer releases add an
    // origin suffix: `crowdsec-blacklists-<origin>`). Source:
    // crowdsecurity/cs-firewall-bouncer config/crowdsec-firewall-bouncer.yaml.
    (Kind::Table, "crowdsec", "CrowdSec", true),
    (Kind::Table, "crowdsec6", "CrowdSec", true),
    (Kind::Set, "crowdsec-blacklists*", "CrowdSec", true),
    (Kind::Set, "crowdsec6-blacklists*", "CrowdSec", true),
    (Kind::Chain, "crowdsec-chain", "CrowdSec", true),
    (Kind::Chain, "crowdsec6-chain", "CrowdSec", true),
    // fail2ban: action.d/nftables.conf (table `f2b-table`, chain
    // `f2b-chain`, sets `addr-set-<jail>`), iptables actions (chains
    // `f2b-<jail>`), iptables-ipset actions (ipsets `f2b-<jail>`).
    (Kind::Table, "f2b-table", "fail2ban", true),
    (Kind::Chain, "f2b-*", "fail2ban", true),
    (Kind::Set, "addr-set-*", "fail2ban", true),
    (Kind::Set, "f2b-*", "fail2ban", true),
    // SSHGuard: sshg-fw-nft-sets (tables `sshguard` in ip and ip6, chain
    // `blacklist`, set `attackers`).
    (Kind::Table, "sshguard", "SSHGuard", true),
    // Firewalls and orchestrators: not security agents, named so the
    // answer says whose rule it is. firewalld's nftables backend: table
    // `firewalld` (inet, and ip/ip6). ufw: iptables chains `ufw-*` and
    // `ufw6-*`. Docker: iptables chains DOCKER, DOCKER-USER,
    // DOCKER-ISOLATION-*; with `firewall-backend: nftables` (29.0) tables
    // `ip docker-bridges` and `ip6 docker-bridges` (docs.docker.com,
    // engine/network/firewall-nftables). kube-proxy: iptables chains
    // `KUBE-*`; nftables mode (KEP-3866) tables `ip kube-proxy` and `ip6
    // kube-proxy`. Calico: chains `cali-*`. Cilium: chains `CILIUM_*`.
    (Kind::Table, "firewalld", "firewalld", false),
    (Kind::Chain, "ufw-*", "ufw", false),
    (Kind::Chain, "ufw6-*", "ufw", false),
    (Kind::Table, "docker-bridges", "Docker", false),
    (Kind::Chain, "DOCKER*", "Docker", false),
    (Kind::Table, "kube-proxy", "kube-proxy", false),
    (Kind::Chain, "KUBE-*", "kube-proxy", false),
    (Kind::Chain, "cali-*", "Calico", false),
    (Kind::Chain, "CILIUM_*", "Cilium", false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Table,
    Chain,
    Set,
}

/// A tool that owns ruleset objects: its name and whether it is a
/// security agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub security: bool,
}

/// The known list plus `--ruleset-owner KIND:PATTERN=NAME` values.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    user: Vec<(Kind, String, String)>,
}

impl Owners {
    pub fn new(user: Vec<(Kind, String, String)>) -> Self {
        Self { user }
    }

    pub fn is_security_agent(&self, name: &str) -> bool {
        self.user.iter().any(|(_, _, n)| n == name)
            || KNOWN_OWNERS.iter().any(|(_, _, n, s)| *s && *n == name)
    }

    /// The owner of a set, else a chain, else a table (the most specific
    /// name wins: a CrowdSec set in someone else's table is CrowdSec's).
    pub fn of(&self, table: &str, chain: &str, set: Option<&str>) -> Option<Owner> {
        let find = |kind: Kind, name: &str| {
            self.user
                .iter()
                .find(|(k, p, _)| *k == kind && glob(p, name))
                .map(|(_, _, n)| Owner {
                    name: n.clone(),
                    security: true,
                })
                .or_else(|| {
                    KNOWN_OWNERS
                        .iter()
                        .find(|(k, p, _, _)| *k == kind && glob(p, name))
                        .map(|(_, _, n, s)| Owner {
                            name: (*n).to_string(),
                            security: *s,
                        })
                })
        };
        set.and_then(|s| find(Kind::Set, s))
            .or_else(|| find(Kind::Chain, chain))
            .or_else(|| find(Kind::Table, table))
    }
}

/// Parses `--ruleset-owner table:PATTERN=NAME` (or chain:, set:).
pub fn parse_owner(s: &str) -> Result<(Kind, String, String), String> {
    let (kind, rest) = s
        .split_once(':')
        .ok_or("expected KIND:PATTERN=NAME, KIND one of table, chain, set")?;
    let kind = match kind {
        "table" => Kind::Table,
        "chain" => Kind::Chain,
        "set" => Kind::Set,
        k => return Err(format!("unknown kind {k:?}: expected table, chain or set")),
    };
    let (pattern, name) = rest.split_once('=').ok_or("expected KIND:PATTERN=NAME")?;
    if pattern.is_empty() || name.is_empty() {
        return Err("the pattern and the name must not be empty".into());
    }
    Ok((kind, pattern.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_named_by_their_objects() {
        let o = Owners::default();
        let name = |t, c, s| o.of(t, c, s).map(|o| o.name);
        assert_eq!(
            name("crowdsec", "crowdsec-chain", Some("crowdsec-blacklists")).as_deref(),
            Some("CrowdSec")
        );
        assert_eq!(
            name("filter", "input", Some("crowdsec-blacklists-cscli")).as_deref(),
            Some("CrowdSec")
        );
        assert_eq!(
            name("f2b-table", "f2b-chain", Some("addr-set-sshd")).as_deref(),
            Some("fail2ban")
        );
        assert_eq!(
            name("filter", "INPUT", Some("f2b-sshd")).as_deref(),
            Some("fail2ban")
        );
        assert_eq!(
            name("sshguard", "blacklist", Some("attackers")).as_deref(),
            Some("SSHGuard")
        );
        assert_eq!(name("filter", "input", None), None);
        let user = Owners::new(vec![parse_owner("set:blocklist*=blocklistd").unwrap()]);
        assert_eq!(
            user.of("t", "c", Some("blocklist4"))
                .map(|o| o.name)
                .as_deref(),
            Some("blocklistd")
        );
        assert!(parse_owner("rule:x=y").is_err());
        assert!(parse_owner("set:x").is_err());
    }
}
