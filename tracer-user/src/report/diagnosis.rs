//! The last lines of the human summary: per remote IP, the dominant cause
//! and what to look at next.

use std::{collections::HashMap, net::IpAddr, time::SystemTime};

use crate::{
    attribution::cause::{self, Cause},
    attribution::decode::Rst,
    attribution::exits::{Exit, Killer, signal_name},
    report::summary::RemoteSummary,
    untrusted::Untrusted,
};

/// A listener that went, by (holder, port): when, and RSTs after.
type Gone = HashMap<(Option<Untrusted>, u16), (SystemTime, u64)>;

/// A listener whose full accept queue reset connections: (holder, port,
/// backlog) -> RSTs.
type Full = HashMap<(Option<Untrusted>, u16, Option<u32>), u64>;

/// (cause, process name, security agent it is or has loaded, listening
/// port for `listener-closed`, else 0, whether the agent is loaded in it).
type ActorKey = (Cause, Untrusted, Option<Untrusted>, u16, bool);

/// Who sent the RSTs that have an actor, per remote IP, from the events
/// that reached userspace.
#[derive(Debug, Default)]
pub struct ActorTally {
    by_remote: HashMap<IpAddr, HashMap<ActorKey, u64>>,
    /// Closed-port RSTs to a port whose listener went, per remote IP.
    gone: HashMap<IpAddr, Gone>,
    /// listen-overflow RSTs, per remote IP.
    full: HashMap<IpAddr, Full>,
    /// The last netfilter rule named for a remote's rejected segments.
    rules: HashMap<IpAddr, crate::attribution::netfilter::Netfilter>,
    /// RSTs sent by exiting processes, per remote IP, by how each ended
    /// (`exit_story`).
    exits: HashMap<IpAddr, HashMap<String, u64>>,
}

impl ActorTally {
    /// Counts the process behind `rst`: its actor, or for a netfilter
    /// reject the author of the rule, with the agent either one is.
    pub fn observe(&mut self, rst: &Rst) {
        if let (Some(a), Some(e)) = (&rst.actor, &rst.exit) {
            *self
                .exits
                .entry(rst.remote.ip())
                .or_default()
                .entry(exit_story(&a.comm, a.pid, e))
                .or_default() += 1;
        }
        if let Some(nf) = rst.netfilter.as_ref().filter(|nf| nf.rule.is_some()) {
            self.rules.insert(rst.remote.ip(), nf.clone());
        }
        if let (Cause::ClosedPort, Some(l)) = (rst.cause, &rst.listener)
            && let Some(gone_at) = l.gone_at
        {
            let e = self
                .gone
                .entry(rst.remote.ip())
                .or_default()
                .entry((l.comm.clone(), l.port))
                .or_insert((gone_at, 0));
            e.1 += 1;
        }
        if let (Cause::ListenOverflow, Some(l)) = (rst.cause, &rst.listener) {
            *self
                .full
                .entry(rst.remote.ip())
                .or_default()
                .entry((l.comm.clone(), l.port, l.backlog))
                .or_default() += 1;
        }
        let who = match (
            &rst.actor,
            rst.netfilter.as_ref().and_then(|n| n.author.as_ref()),
        ) {
            (Some(a), _) => (a.comm.clone(), a.agent.clone(), a.agent_via.is_some()),
            (None, Some(author)) => (author.comm.clone(), author.agent.clone(), false),
            (None, None) => return,
        };
        *self
            .by_remote
            .entry(rst.remote.ip())
            .or_default()
            .entry((
                rst.cause,
                who.0,
                who.1,
                rst.listener.as_ref().map_or(0, |l| l.port),
                who.2,
            ))
            .or_default() += 1;
    }

    /// The process that sent most RSTs of `cause` to `ip`.
    fn top(&self, ip: IpAddr, cause: Cause) -> Option<(&Untrusted, Option<&Untrusted>, u64)> {
        self.top_key(ip, cause)
            .map(|((_, comm, agent, _, _), n)| (comm, agent.as_ref(), n))
    }

    fn top_key(&self, ip: IpAddr, cause: Cause) -> Option<(&ActorKey, u64)> {
        self.by_remote
            .get(&ip)?
            .iter()
            .filter(|(k, _)| k.0 == cause)
            .max_by_key(|(k, n)| (**n, std::cmp::Reverse(k.1.clone())))
            .map(|(k, n)| (k, *n))
    }
}

/// "198.18.0.10 is on CrowdSec's block list (set crowdsec-blacklists in
/// table ip crowdsec, expires in 3h59m): its requests are answered with
/// RSTs by chain crowdsec-chain, rule 4".
pub fn rule_advice(
    ip: IpAddr,
    nf: &crate::attribution::netfilter::Netfilter,
    what: &str,
) -> String {
    let table = format!(
        "table {} {}",
        nf.family.unwrap_or("?"),
        nf.table.as_ref().map_or("?".to_string(), |t| t.to_string())
    );
    let chain = nf.chain.as_ref().map_or("?".to_string(), |c| c.to_string());
    let rule = match nf.handle {
        Some(h) => format!("chain {chain}, rule {h}"),
        None => format!("chain {chain}'s drop policy"),
    };
    let maybe = if nf.unknown.is_empty() {
        String::new()
    } else {
        format!(
            " (if {} allowed it)",
            nf.unknown
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match &nf.set {
        Some(set) => {
            let expires = set
                .expires_in_s
                .map(|s| {
                    format!(
                        ", expires in {}",
                        crate::attribution::nft::names::short_duration(s)
                    )
                })
                .unwrap_or_default();
            let list = match &nf.agent {
                Some(a) => format!("{a}'s block list"),
                None => "a block list".to_string(),
            };
            format!(
                "{ip} is on {list} (set {} in {table}{expires}): its requests {what} by {rule}{maybe}",
                set.name
            )
        }
        None => {
            let owner = nf
                .agent
                .as_ref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            format!(
                "its requests {what} by {rule} in {table}{owner}: {}{maybe}",
                nf.rule.as_ref().map_or("?".to_string(), |r| r.to_string())
            )
        }
    }
}

pub fn diagnose(r: &RemoteSummary, tally: &ActorTally) -> String {
    let Some((&cause, &n)) = r
        .by_cause
        .iter()
        .max_by_key(|(c, n)| (**n, std::cmp::Reverse(**c)))
    else {
        return String::new();
    };
    let lead = format!("{cause} ({n} of {})", r.total);
    // A process that exited or was killed with connections open: how it
    // ended is the story, whichever of its causes (abort-on-close,
    // listener-closed, linger-abort) leads.
    if let Some((story, k)) = tally
        .exits
        .get(&r.remote_ip)
        .and_then(|e| e.iter().max_by_key(|(s, k)| (**k, std::cmp::Reverse(*s))))
        .filter(|_| cause::has_actor(cause))
    {
        let connections = if *k == 1 { "connection" } else { "connections" };
        return format!("{lead}: {story}: {k} {connections} reset");
    }
    let advice = match cause {
        Cause::SocketKilled => match tally.top(r.remote_ip, cause) {
            Some((comm, Some(agent), k)) => format!(
                "process {comm} (security agent: {agent}) destroyed {k} connections from this IP: check its block list"
            ),
            Some((comm, None, k)) => format!(
                "process {comm} destroyed {k} connections from this IP (sock_diag destroy): check why it blocks this peer"
            ),
            None => "another process destroyed these connections (sock_diag destroy)".to_string(),
        },
        Cause::ClosedPort => match tally.gone.get(&r.remote_ip).and_then(|g| g.iter().max_by_key(|(_, v)| v.1)) {
            Some(((comm, port), (at, k))) => format!(
                "{} stopped listening on {port} at {}; {k} connections were refused after",
                comm.as_ref().map_or("a server".to_string(), |c| c.to_string()),
                crate::clock::time_of_day(*at)
            ),
            None => "connections to ports nobody listened on during the trace: a scan, a wrong \
                     port, or a service down since before it"
                .to_string(),
        },
        Cause::AbortOnClose => actor_advice(
            r,
            tally,
            cause,
            "closed connections without reading what the peer sent: check its errors and timeouts",
            "closed {k} connections without reading what the peer sent: check the module's block decisions",
        ),
        Cause::LingerAbort => actor_advice(
            r,
            tally,
            cause,
            "closes with SO_LINGER 0 (abortive close): often deliberate in proxies and load balancers",
            "aborted {k} connections with SO_LINGER 0 after reading their requests: check the module's block decisions",
        ),
        Cause::AppDisconnect => actor_advice(
            r,
            tally,
            cause,
            "dropped live connections with connect(AF_UNSPEC)",
            "dropped {k} live connections with connect(AF_UNSPEC): check the module's block decisions",
        ),
        Cause::KeepaliveTimeout => "keepalive probes went unanswered: the peer, or a NAT/firewall idle timeout on the way, dropped the connection".to_string(),
        Cause::DataAfterClose => "the peer sent data after this host closed: a keep-alive race; make this server's idle timeout longer than the client's".to_string(),
        Cause::Linger2Timeout => "FIN_WAIT2 timed out: the peer never closed its side (net.ipv4.tcp_fin_timeout)".to_string(),
        Cause::MemoryPressure => "TCP memory or orphan limits forced aborts: check net.ipv4.tcp_mem and tcp_max_orphans".to_string(),
        Cause::InvalidSegment => "segments invalid for the connection's state: a middlebox rewriting sequence numbers, or a peer reusing a port too early".to_string(),
        Cause::Mptcp => "MPTCP subflow resets".to_string(),
        // A rule added while tracing names its author; an older one its
        // block list and rule.
        Cause::NetfilterReject
            if tally.rules.contains_key(&r.remote_ip) && tally.top(r.remote_ip, cause).is_none() =>
        {
            rule_advice(r.remote_ip, &tally.rules[&r.remote_ip], "are answered with RSTs")
        }
        Cause::NetfilterReject => match tally.top(r.remote_ip, cause) {
            Some((comm, Some(agent), _)) => format!(
                "a REJECT rule added by {comm} (security agent: {agent}) answered: check its block list"
            ),
            Some((comm, None, _)) => {
                format!("a REJECT rule added by {comm} answered: check why it blocks this peer")
            }
            None => "a netfilter REJECT rule answered: check the ruleset".to_string(),
        },
        Cause::Injected => "RSTs built outside the TCP stack (raw or packet socket, kernel module or BPF program)".to_string(),
        Cause::Unknown => "no rule explains these: the events carry the kernel stack; please report it".to_string(),
        Cause::Received => "this host received these RSTs: trace the peer with rsttrace".to_string(),
        Cause::ListenOverflow => match tally
            .full
            .get(&r.remote_ip)
            .and_then(|f| f.iter().max_by_key(|(k, v)| (**v, std::cmp::Reverse(k.1))))
        {
            Some(((comm, port, backlog), k)) => format!(
                "{}'s accept queue on port {port} was full{}: {k} connections were reset \
                 (tcp_abort_on_overflow=1): it does not accept fast enough",
                comm.as_ref().map_or("a server".to_string(), |c| c.to_string()),
                backlog.map_or(String::new(), |b| format!(" (backlog {b})")),
            ),
            None => "a listener's accept queue was full: connections were reset \
                     (tcp_abort_on_overflow=1): it does not accept fast enough"
                .to_string(),
        },
        Cause::ListenerClosed => match tally.top_key(r.remote_ip, cause) {
            Some(((_, comm, _, port, _), k)) => format!(
                "{k} connections were waiting in {comm}'s accept queue on port {port} when its \
                 listener closed: the server exited, was killed or restarted, or closed it"
            ),
            None => "connections were waiting in an accept queue when its listener closed: the \
                     server exited, was killed or restarted, or closed it"
                .to_string(),
        },
    };
    format!("{lead}: {advice}")
}

/// How a process ended, as the diagnosis says it: "orders-api (pid 812)
/// was killed by falcon-sensor (SIGKILL) [security-agent: CrowdStrike
/// Falcon]", "... exited", "... was killed by the OOM killer (SIGKILL)".
pub fn exit_story(comm: &Untrusted, pid: u32, e: &Exit) -> String {
    let who = format!("{comm} (pid {pid})");
    let Some(sig) = e.signal.map(signal_name) else {
        return format!("{who} exited");
    };
    if e.oom {
        return format!("{who} was killed by the OOM killer ({sig})");
    }
    let agent = |k: &Killer| {
        k.agent
            .as_ref()
            .map_or(String::new(), |a| format!(" [security-agent: {a}]"))
    };
    match (&e.bpf_program, &e.killed_by) {
        (Some(p), Some(k)) => format!(
            "{who} was killed by BPF program {} of {} (pid {}) ({sig}){}",
            p.name,
            k.comm,
            k.pid,
            agent(k)
        ),
        (Some(p), None) => format!("{who} was killed by BPF program {} ({sig})", p.name),
        (None, Some(k)) => format!("{who} was killed by {} ({sig}){}", k.comm, agent(k)),
        (None, None) => format!("{who} died of {sig}"),
    }
}

/// `what` the top actor of `cause` did; `what_loaded` (with `{k}`, its
/// count) when a security module loaded in it did it.
fn actor_advice(
    r: &RemoteSummary,
    tally: &ActorTally,
    cause: Cause,
    what: &str,
    what_loaded: &str,
) -> String {
    match tally.top_key(r.remote_ip, cause) {
        Some(((_, comm, Some(agent), _, true), k)) => format!(
            "{comm} ({agent} loaded) {}",
            what_loaded.replace("{k}", &k.to_string())
        ),
        Some(((_, comm, ..), _)) => format!("{comm} {what}"),
        None => format!("the application {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribution::actor::Actor, attribution::decode::Family};
    use std::time::UNIX_EPOCH;

    fn remote(ip: &str, causes: &[(Cause, u64)]) -> RemoteSummary {
        RemoteSummary {
            remote_ip: ip.parse().unwrap(),
            total: causes.iter().map(|c| c.1).sum(),
            by_cause: causes.iter().copied().collect(),
            first_seen: UNIX_EPOCH,
            last_seen: UNIX_EPOCH,
            diagnosis: None,
        }
    }

    fn killed_by(comm: &str, agent: Option<&str>) -> Rst {
        Rst {
            ts: UNIX_EPOCH,
            cause: Cause::SocketKilled,
            kernel_reason: Some("TCP_STATE".into()),
            family: Family::Ipv4,
            local: "127.0.0.1:80".parse().unwrap(),
            remote: "127.7.0.1:5000".parse().unwrap(),
            state: Some("TCP_ESTABLISHED"),
            actor: Some(Actor {
                pid: 1,
                tid: 1,
                comm: comm.into(),
                exe: None,
                cgroup: None,
                container_id: None,
                agent: agent.map(Into::into),
                agent_via: None,
                stack: None,
            }),
            ..Rst::example()
        }
    }

    #[test]
    fn a_killed_server_is_named_with_its_killer_and_agent() {
        let mut t = ActorTally::default();
        let killer = Killer {
            pid: 77,
            comm: "falcon-sensor".into(),
            exe: None,
            agent: Some("CrowdStrike Falcon".into()),
        };
        let exit = Exit {
            signal: Some(9),
            killed_by: Some(killer),
            oom: false,
            bpf_program: None,
        };
        for cause in [
            Cause::AbortOnClose,
            Cause::AbortOnClose,
            Cause::ListenerClosed,
        ] {
            let mut rst = killed_by("orders-api", None);
            rst.cause = cause;
            rst.actor.as_mut().unwrap().pid = 812;
            rst.exit = Some(exit.clone());
            t.observe(&rst);
        }
        let d = diagnose(
            &remote(
                "127.7.0.1",
                &[(Cause::AbortOnClose, 2), (Cause::ListenerClosed, 1)],
            ),
            &t,
        );
        assert_eq!(
            d,
            "abort-on-close (2 of 3): orders-api (pid 812) was killed by falcon-sensor (SIGKILL) \
             [security-agent: CrowdStrike Falcon]: 3 connections reset"
        );
        let name: Untrusted = "orders-api".into();
        let oom = Exit {
            oom: true,
            killed_by: None,
            ..exit.clone()
        };
        assert_eq!(
            exit_story(&name, 812, &oom),
            "orders-api (pid 812) was killed by the OOM killer (SIGKILL)"
        );
        let exited = Exit {
            signal: None,
            killed_by: None,
            ..exit
        };
        assert_eq!(
            exit_story(&name, 812, &exited),
            "orders-api (pid 812) exited"
        );
    }

    #[test]
    fn socket_killed_by_an_agent_names_it_and_its_block_list() {
        let mut t = ActorTally::default();
        for _ in 0..3 {
            t.observe(&killed_by("crowdsec", Some("CrowdSec")));
        }
        let d = diagnose(
            &remote(
                "127.7.0.1",
                &[(Cause::SocketKilled, 3), (Cause::ClosedPort, 1)],
            ),
            &t,
        );
        assert_eq!(
            d,
            "socket-killed (3 of 4): process crowdsec (security agent: CrowdSec) destroyed 3 connections from this IP: check its block list"
        );
    }

    #[test]
    fn netfilter_reject_names_the_block_list_and_rule() {
        let mut rst = killed_by("x", None);
        rst.cause = Cause::NetfilterReject;
        rst.actor = None;
        rst.remote = "198.18.0.10:40000".parse().unwrap();
        rst.netfilter = Some(crate::attribution::netfilter::Netfilter {
            hook: Some("input"),
            backend: Some("nftables"),
            table: Some("crowdsec".into()),
            family: Some("ip"),
            chain: Some("crowdsec-chain".into()),
            handle: Some(4),
            rule: Some("ip saddr @crowdsec-blacklists reject with tcp reset".into()),
            set: Some(crate::attribution::nft::names::SetMatch {
                name: "crowdsec-blacklists".into(),
                element: "198.18.0.10".into(),
                timeout_s: Some(14400),
                expires_in_s: Some(14340),
                comment: None,
            }),
            agent: Some("CrowdSec".into()),
            ..Default::default()
        });
        let mut t = ActorTally::default();
        t.observe(&rst);
        let d = diagnose(&remote("198.18.0.10", &[(Cause::NetfilterReject, 1)]), &t);
        assert_eq!(
            d,
            "netfilter-reject (1 of 1): 198.18.0.10 is on CrowdSec's block list (set \
             crowdsec-blacklists in table ip crowdsec, expires in 3h59m): its requests are \
             answered with RSTs by chain crowdsec-chain, rule 4"
        );
    }

    #[test]
    fn netfilter_reject_names_the_rule_author() {
        let mut rst = killed_by("x", None);
        rst.cause = Cause::NetfilterReject;
        rst.actor = None;
        rst.netfilter = Some(crate::attribution::netfilter::Netfilter {
            hook: Some("input"),
            backend: Some("nftables"),
            table: Some("blocklist".into()),
            chain: Some("in".into()),
            author: Some(crate::attribution::nftmon::Author {
                pid: 7,
                comm: "crowdsec".into(),
                generation: 3,
                // Resolved by the enricher when the author is an agent.
                agent: Some("CrowdSec".into()),
                table: None,
                chain: None,
            }),
            ..Default::default()
        });
        let mut t = ActorTally::default();
        t.observe(&rst);
        let d = diagnose(&remote("127.7.0.1", &[(Cause::NetfilterReject, 1)]), &t);
        assert!(
            d.ends_with("a REJECT rule added by crowdsec (security agent: CrowdSec) answered: check its block list"),
            "{d}"
        );
    }

    #[test]
    fn dominant_cause_leads() {
        let t = ActorTally::default();
        let d = diagnose(
            &remote(
                "127.0.0.9",
                &[(Cause::ClosedPort, 9), (Cause::KeepaliveTimeout, 2)],
            ),
            &t,
        );
        assert!(
            d.starts_with("closed-port (9 of 11): connections to ports nobody listened on"),
            "{d}"
        );
    }

    #[test]
    fn process_names_are_escaped() {
        use crate::untrusted::hostile;
        let mut rst = killed_by("x", None);
        if let Some(a) = rst.actor.as_mut() {
            a.comm = hostile::comm();
            a.agent = Some(hostile::comm());
        }
        let mut t = ActorTally::default();
        t.observe(&rst);
        let d = diagnose(&remote("127.7.0.1", &[(Cause::SocketKilled, 1)]), &t);
        hostile::assert_clean(d.as_bytes(), &[]);
        let comm = hostile::COMM_TEXT;
        assert!(
            d.contains(&format!(
                "process {comm} (security agent: {comm}) destroyed 1 connections"
            )),
            "{d}"
        );
        rst.cause = Cause::AbortOnClose;
        t.observe(&rst);
        let d = diagnose(&remote("127.7.0.1", &[(Cause::AbortOnClose, 1)]), &t);
        assert!(d.contains(&format!(": {comm} closed connections")), "{d}");
    }

    #[test]
    fn a_closed_listener_is_named_with_its_port_and_queue() {
        let mut t = ActorTally::default();
        let mut rst = killed_by("orders-api", None);
        rst.cause = Cause::ListenerClosed;
        rst.local = "127.0.0.1:8083".parse().unwrap();
        rst.listener = Some(crate::attribution::decode::Listener {
            port: 8083,
            pid: Some(812),
            comm: Some("orders-api".into()),
            gone_at: Some(UNIX_EPOCH),
            backlog: None,
        });
        for _ in 0..4 {
            t.observe(&rst);
        }
        let d = diagnose(&remote("127.7.0.1", &[(Cause::ListenerClosed, 4)]), &t);
        assert_eq!(
            d,
            "listener-closed (4 of 4): 4 connections were waiting in orders-api's accept queue \
             on port 8083 when its listener closed: the server exited, was killed or restarted, \
             or closed it"
        );
    }

    #[test]
    fn a_closed_port_that_had_a_listener_says_who_stopped_when() {
        let mut t = ActorTally::default();
        let mut rst = Rst::example();
        rst.remote = "127.7.0.1:5000".parse().unwrap();
        rst.listener = Some(crate::attribution::decode::Listener {
            port: 8082,
            pid: Some(812),
            comm: Some("orders-api".into()),
            gone_at: Some(UNIX_EPOCH + std::time::Duration::from_secs(12 * 3600 + 1)),
            backlog: Some(128),
        });
        for _ in 0..5 {
            t.observe(&rst);
        }
        let d = diagnose(&remote("127.7.0.1", &[(Cause::ClosedPort, 5)]), &t);
        assert_eq!(
            d,
            "closed-port (5 of 5): orders-api stopped listening on 8082 at 12:00:01.000000; 5 \
             connections were refused after"
        );
    }

    #[test]
    fn a_full_accept_queue_names_the_listener_and_its_backlog() {
        let mut t = ActorTally::default();
        let mut rst = Rst::example();
        rst.cause = Cause::ListenOverflow;
        rst.remote = "127.7.0.1:5000".parse().unwrap();
        rst.listener = Some(crate::attribution::decode::Listener {
            port: 8083,
            pid: Some(812),
            comm: Some("orders-api".into()),
            gone_at: None,
            backlog: Some(1),
        });
        for _ in 0..3 {
            t.observe(&rst);
        }
        let d = diagnose(&remote("127.7.0.1", &[(Cause::ListenOverflow, 3)]), &t);
        assert_eq!(
            d,
            "listen-overflow (3 of 3): orders-api's accept queue on port 8083 was full \
             (backlog 1): 3 connections were reset (tcp_abort_on_overflow=1): it does not \
             accept fast enough"
        );
    }

    #[test]
    fn a_module_loaded_in_the_actor_is_named() {
        let mut t = ActorTally::default();
        let mut rst = killed_by("httpd", Some("ModSecurity"));
        rst.cause = Cause::LingerAbort;
        if let Some(a) = rst.actor.as_mut() {
            a.agent_via = Some("/usr/lib/libmodsecurity.so.3".into());
        }
        for _ in 0..5 {
            t.observe(&rst);
        }
        let d = diagnose(&remote("127.7.0.1", &[(Cause::LingerAbort, 5)]), &t);
        assert_eq!(
            d,
            "linger-abort (5 of 5): httpd (ModSecurity loaded) aborted 5 connections with \
             SO_LINGER 0 after reading their requests: check the module's block decisions"
        );
    }
}
