//! Where RSTs are counted for the report: the summary is built from the
//! kernel's counters (exact even when events were lost), never from the
//! event stream.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use tracer_common::{DropCause, DropKey, RemoteKey, RemoteStats, stat};

use crate::{
    attribution::cause::Cause, attribution::decode::ip_from, clock::BootClock, loader::StatSlots,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSummary {
    pub remote_ip: IpAddr,
    pub total: u64,
    pub by_cause: BTreeMap<Cause, u64>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// What to look at next (human output), filled in by `diagnosis`.
    pub diagnosis: Option<String>,
}

/// Silent drops of one remote IP's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSummary {
    pub remote_ip: IpAddr,
    pub total: u64,
    pub by_cause: BTreeMap<DropCause, u64>,
    /// The listening ports whose full accept queue dropped them
    /// (`listen-overflow`), with the listener's holder where known.
    pub listeners: Vec<DropListener>,
    /// (namespace, hook) where BPF programs dropped them (tc, XDP), and
    /// the programs attached there, named at report time.
    pub hooks: std::collections::BTreeSet<(u64, crate::attribution::bpfprogs::Hook)>,
    pub programs: Vec<crate::attribution::bpfprogs::BpfProgram>,
    /// Dropping code (`nft_do_chain [nf_tables]`, `ipt_do_table
    /// [ip_tables]`, a module's hook) -> count.
    pub by_location: BTreeMap<crate::untrusted::Untrusted, u64>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Namespaces the drops happened in (to name the rules' authors).
    pub netns: Vec<u64>,
    /// Who added the drop rule, when it was added while tracing.
    pub author: Option<crate::attribution::nftmon::Author>,
    /// The nftables rule (and set element) that drops them, from the
    /// namespace's ruleset.
    pub netfilter: Option<crate::attribution::netfilter::Netfilter>,
}

/// A listener whose full accept queue dropped a remote's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropListener {
    pub netns: u64,
    pub port: u16,
    pub count: u64,
    /// The process holding the listener (sock_diag), filled in at report
    /// time.
    pub pid: Option<u32>,
    pub comm: Option<crate::untrusted::Untrusted>,
}

/// RSTs seen at the egress hook and how they were explained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub egress_rsts: u64,
    /// Sent by the TCP stack (attributed through tcp_send_reset).
    pub tcp_stack: u64,
    /// No rule explains them: counted as `unknown`.
    pub unexplained: u64,
}

impl Coverage {
    /// RSTs that left a device and were explained.
    pub fn attributed(&self) -> u64 {
        self.egress_rsts.saturating_sub(self.unexplained)
    }

    /// ... by an egress rule (netfilter, raw socket, module), not the TCP
    /// stack.
    pub fn by_egress_rule(&self) -> u64 {
        self.attributed().saturating_sub(self.tcp_stack)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub duration: Duration,
    pub total: u64,
    /// Events that did not reach userspace (counts above stay exact).
    pub lost: u64,
    /// Runs of our programs the kernel skipped, by program: RSTs (or drops)
    /// not counted at all (see `Tracer::skipped_runs`).
    pub skipped_runs: BTreeMap<String, u64>,
    /// RSTs tcp_send_reset saw but could not read: in no other count.
    pub unreadable: u64,
    /// RSTs counted by cause but not per remote IP: the per-remote map was full.
    pub remote_ip_overflow: u64,
    pub coverage: Coverage,
    pub by_cause: BTreeMap<Cause, u64>,
    /// Sorted by total, descending (then by address, for a stable order).
    pub by_remote_ip: Vec<RemoteSummary>,
    /// RSTs this host received (`--direction in|both`), per remote IP.
    pub received: Vec<RemoteSummary>,
    pub received_total: u64,
    /// Silent drops (no RST sent), sorted like `by_remote_ip`.
    pub drops: Vec<DropSummary>,
    pub drops_total: u64,
    /// Drops counted in `drops_total` only: the drop map was full.
    pub drop_overflow: u64,
    /// nftables generations committed while tracing, with their authors.
    pub ruleset_changes: Vec<crate::attribution::nftmon::Generation>,
}

/// Merges per-CPU values: (count, first, last), or None when all are zero.
fn merge(per_cpu: &[RemoteStats]) -> Option<(u64, u64, u64)> {
    let mut count = 0;
    let mut first = u64::MAX;
    let mut last = 0;
    for v in per_cpu.iter().filter(|v| v.count > 0) {
        count += v.count;
        first = first.min(v.first_ns);
        last = last.max(v.last_ns);
    }
    (count > 0).then_some((count, first, last))
}

/// Per-remote-IP drop summaries; `name` symbolizes a dropping address.
pub fn build_drops(
    drops: impl IntoIterator<Item = (DropKey, Vec<RemoteStats>)>,
    clock: &BootClock,
    name: impl Fn(u64) -> crate::untrusted::Untrusted,
) -> Vec<DropSummary> {
    let mut per_ip: HashMap<IpAddr, DropSummary> = HashMap::new();
    for (key, per_cpu) in drops {
        let (Some(ip), Some((count, first, last))) =
            (ip_from(key.family, &key.addr), merge(&per_cpu))
        else {
            continue;
        };
        let Some(cause) = DropCause::from_id(key.cause) else {
            continue;
        };
        let (first, last) = (clock.to_system_time(first), clock.to_system_time(last));
        let d = per_ip.entry(ip).or_insert(DropSummary {
            remote_ip: ip,
            total: 0,
            by_cause: BTreeMap::new(),
            listeners: Vec::new(),
            hooks: Default::default(),
            programs: Vec::new(),
            by_location: BTreeMap::new(),
            first_seen: first,
            last_seen: last,
            netns: Vec::new(),
            author: None,
            netfilter: None,
        });
        if key.netns != 0 && !d.netns.contains(&u64::from(key.netns)) {
            d.netns.push(u64::from(key.netns));
        }
        d.total += count;
        *d.by_cause.entry(cause).or_default() += count;
        if cause == DropCause::ListenOverflow && key.local_port != 0 {
            let netns = u64::from(key.netns);
            match d
                .listeners
                .iter_mut()
                .find(|l| l.netns == netns && l.port == key.local_port)
            {
                Some(l) => l.count += count,
                None => d.listeners.push(DropListener {
                    netns,
                    port: key.local_port,
                    count,
                    pid: None,
                    comm: None,
                }),
            }
        }
        let location = name(key.location);
        for h in crate::attribution::cause::drop_hooks(cause, &location.lossy()) {
            d.hooks.insert((u64::from(key.netns), h));
        }
        *d.by_location.entry(location).or_default() += count;
        d.first_seen = d.first_seen.min(first);
        d.last_seen = d.last_seen.max(last);
    }
    let mut out: Vec<_> = per_ip.into_values().collect();
    for d in &mut out {
        d.listeners.sort_by_key(|l| (Reverse(l.count), l.port));
    }
    out.sort_by_key(|d| (Reverse(d.total), d.remote_ip));
    out
}

/// `remotes`: each per-remote map entry with its per-CPU values. A cause's
/// total is its slot (RSTs that found the map full) plus its entries (see
/// `tracer_common::stat`).
pub fn build(
    stats: &StatSlots,
    remotes: impl IntoIterator<Item = (RemoteKey, Vec<RemoteStats>)>,
    clock: &BootClock,
    duration: Duration,
) -> Summary {
    let mut by_cause: BTreeMap<Cause, u64> = (0..Cause::COUNT as u32)
        .filter(|i| stats.get(*i) > 0)
        .map(|i| (Cause::from_id(i as u8), stats.get(i)))
        .collect();
    // The entries tcp_send_reset counted for coverage too.
    let mut at_send = 0;

    struct Acc {
        total: u64,
        by_cause: BTreeMap<Cause, u64>,
        first: u64,
        last: u64,
    }
    let mut per_ip: HashMap<IpAddr, Acc> = HashMap::new();
    for (key, per_cpu) in remotes {
        let Some(ip) = ip_from(key.family, &key.addr) else {
            continue;
        };
        let Some((count, first, last)) = merge(&per_cpu) else {
            continue;
        };
        let acc = per_ip.entry(ip).or_insert(Acc {
            total: 0,
            by_cause: BTreeMap::new(),
            first: u64::MAX,
            last: 0,
        });
        acc.total += count;
        *acc.by_cause.entry(Cause::from_id(key.cause)).or_default() += count;
        *by_cause.entry(Cause::from_id(key.cause)).or_default() += count;
        if key.at_send != 0 {
            at_send += count;
        }
        acc.first = acc.first.min(first);
        acc.last = acc.last.max(last);
    }
    let mut by_remote_ip: Vec<RemoteSummary> = per_ip
        .into_iter()
        .map(|(ip, a)| RemoteSummary {
            remote_ip: ip,
            total: a.total,
            by_cause: a.by_cause,
            first_seen: clock.to_system_time(a.first),
            last_seen: clock.to_system_time(a.last),
            diagnosis: None,
        })
        .collect();
    by_remote_ip.sort_by_key(|r| (Reverse(r.total), r.remote_ip));

    Summary {
        duration,
        total: by_cause.values().sum(),
        lost: stats.get(stat::LOST_EVENTS),
        skipped_runs: BTreeMap::new(),
        unreadable: stats.get(stat::UNREADABLE_RSTS),
        remote_ip_overflow: stats.get(stat::REMOTE_MAP_FULL),
        coverage: Coverage {
            egress_rsts: stats.get(stat::EGRESS_RSTS)
                + stats.get(stat::STACK_RSTS_AT_SEND)
                + at_send,
            tcp_stack: stats.get(stat::EGRESS_TCP_STACK)
                + stats.get(stat::STACK_RSTS_AT_SEND)
                + at_send,
            unexplained: stats.get(stat::EGRESS_UNEXPLAINED),
        },
        by_cause,
        by_remote_ip,
        received: Vec::new(),
        received_total: 0,
        drops: Vec::new(),
        drops_total: stats.get(stat::DROPS),
        drop_overflow: stats.get(stat::DROP_MAP_FULL),
        ruleset_changes: Vec::new(),
    }
}

/// RSTs this host received, per remote IP, and their total: the map's
/// entries plus the RSTs that found it full.
pub fn build_received(
    stats: &StatSlots,
    received: impl IntoIterator<Item = (RemoteKey, Vec<RemoteStats>)>,
    clock: &BootClock,
) -> (Vec<RemoteSummary>, u64) {
    let s = build(&StatSlots::default(), received, clock, Duration::ZERO);
    (s.by_remote_ip, s.total + stats.get(stat::RECEIVED_MAP_FULL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{AF_INET, AF_INET6};

    fn key(ip: IpAddr, cause: Cause) -> RemoteKey {
        let mut addr = [0; 16];
        let family = match ip {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                AF_INET
            }
            IpAddr::V6(v6) => {
                addr = v6.octets();
                AF_INET6
            }
        };
        RemoteKey {
            addr,
            family,
            cause: cause as u8,
            at_send: 0,
            _pad: 0,
        }
    }

    fn v(count: u64, first_ns: u64, last_ns: u64) -> RemoteStats {
        RemoteStats {
            count,
            first_ns,
            last_ns,
        }
    }

    #[test]
    fn merges_cpus_and_causes_per_ip_and_sorts_by_total() {
        let a: IpAddr = "127.3.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let mut stats = vec![0; stat::COUNT as usize];
        // One closed-port RST found the per-remote map full.
        stats[Cause::ClosedPort as usize] = 1;
        stats[stat::LOST_EVENTS as usize] = 3;
        stats[stat::REMOTE_MAP_FULL as usize] = 1;
        stats[stat::UNREADABLE_RSTS as usize] = 4;
        let remotes = vec![
            (key(a, Cause::ClosedPort), vec![v(1, 100, 100), v(0, 0, 0)]),
            (key(b, Cause::ClosedPort), vec![v(2, 50, 60), v(1, 40, 45)]),
            (key(b, Cause::AbortOnClose), vec![v(0, 0, 0), v(2, 70, 80)]),
        ];
        let clock = BootClock::with_boot_epoch_ns(0);
        let s = build(&StatSlots(stats), remotes, &clock, Duration::from_secs(1));
        assert_eq!(s.total, 7, "unreadable RSTs are in no cause");
        assert_eq!(s.unreadable, 4);
        assert_eq!(s.lost, 3);
        assert_eq!(s.remote_ip_overflow, 1);
        assert_eq!(
            s.by_cause[&Cause::ClosedPort],
            5,
            "1 by cause only, 4 per remote"
        );
        assert_eq!(s.by_cause[&Cause::AbortOnClose], 2);
        assert_eq!(s.by_remote_ip.len(), 2);
        let top = &s.by_remote_ip[0];
        assert_eq!(top.remote_ip, b);
        assert_eq!(top.total, 5);
        assert_eq!(top.by_cause[&Cause::ClosedPort], 3);
        assert_eq!(top.by_cause[&Cause::AbortOnClose], 2);
        assert_eq!(top.first_seen, clock.to_system_time(40));
        assert_eq!(top.last_seen, clock.to_system_time(80));
        assert_eq!(s.by_remote_ip[1].remote_ip, a);
        assert_eq!(s.by_remote_ip[1].total, 1);
    }

    #[test]
    fn coverage_adds_what_tcp_send_reset_counted_for_it() {
        let mut stats = vec![0; stat::COUNT as usize];
        stats[stat::EGRESS_RSTS as usize] = 4;
        stats[stat::EGRESS_TCP_STACK as usize] = 1;
        stats[stat::EGRESS_UNEXPLAINED as usize] = 2;
        stats[stat::STACK_RSTS_AT_SEND as usize] = 10;
        // 6 counted per remote at send (coverage too), 2 by egress.
        let a: IpAddr = "127.3.0.9".parse().unwrap();
        let at_send = RemoteKey {
            at_send: 1,
            ..key(a, Cause::ClosedPort)
        };
        let remotes = vec![
            (at_send, vec![v(6, 1, 2)]),
            (key(a, Cause::Unknown), vec![v(2, 1, 2)]),
        ];
        let s = build(
            &StatSlots(stats),
            remotes,
            &BootClock::with_boot_epoch_ns(0),
            Duration::ZERO,
        );
        assert_eq!(s.coverage.egress_rsts, 4 + 10 + 6);
        assert_eq!(s.coverage.tcp_stack, 1 + 10 + 6);
        assert_eq!(s.coverage.unexplained, 2);
        assert_eq!(s.by_cause[&Cause::ClosedPort], 6);
        assert_eq!(s.by_cause[&Cause::Unknown], 2);
    }

    #[test]
    fn drops_merge_per_ip_and_name_their_location() {
        let a: IpAddr = "127.20.0.1".parse().unwrap();
        let k = |loc: u64, cause: DropCause, port: u16| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&[127, 20, 0, 1]);
            DropKey {
                addr,
                family: AF_INET,
                cause: cause as u8,
                local_port: port,
                netns: 7,
                location: loc,
            }
        };
        let clock = BootClock::with_boot_epoch_ns(0);
        let nf = DropCause::NetfilterDrop;
        let lo = DropCause::ListenOverflow;
        let mut unknown = k(0x30, nf, 0);
        unknown.cause = 0;
        let d = build_drops(
            vec![
                (k(0x10, nf, 0), vec![v(2, 5, 9), v(1, 3, 3)]),
                (k(0x20, DropCause::TcDrop, 0), vec![v(1, 7, 7)]),
                (k(0x40, lo, 8080), vec![v(2, 7, 7)]),
                (k(0x40, lo, 8081), vec![v(1, 7, 7)]),
                // Not a drop cause: never counted, not mixed in.
                (unknown, vec![v(5, 7, 7)]),
            ],
            &clock,
            |loc| format!("fn{loc:x}").into(),
        );
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].remote_ip, d[0].total), (a, 7));
        assert_eq!(
            d[0].by_cause,
            BTreeMap::from([(nf, 3), (DropCause::TcDrop, 1), (lo, 3)])
        );
        let ports: Vec<_> = d[0].listeners.iter().map(|l| (l.port, l.count)).collect();
        assert_eq!(ports, [(8080, 2), (8081, 1)]);
        assert_eq!(d[0].by_location[&"fn10".into()], 3);
        assert_eq!(d[0].by_location[&"fn20".into()], 1);
        assert_eq!(d[0].first_seen, clock.to_system_time(3));
        assert_eq!(d[0].last_seen, clock.to_system_time(9));
        assert_eq!(d[0].netns, vec![7]);
    }

    #[test]
    fn received_total_is_entries_and_the_full_slot() {
        let a: IpAddr = "127.46.0.1".parse().unwrap();
        let mut stats = vec![0; stat::COUNT as usize];
        stats[stat::RECEIVED_MAP_FULL as usize] = 2;
        // Sent RSTs' slots are not received ones.
        stats[Cause::ClosedPort as usize] = 5;
        let clock = BootClock::with_boot_epoch_ns(0);
        let (per_ip, total) = build_received(
            &StatSlots(stats),
            vec![(key(a, Cause::Received), vec![v(3, 1, 2), v(1, 4, 4)])],
            &clock,
        );
        assert_eq!(total, 4 + 2);
        assert_eq!(per_ip.len(), 1);
        assert_eq!((per_ip[0].remote_ip, per_ip[0].total), (a, 4));
    }

    #[test]
    fn empty_run_is_all_zero() {
        let s = build(
            &StatSlots::default(),
            vec![],
            &BootClock::with_boot_epoch_ns(0),
            Duration::ZERO,
        );
        assert_eq!(s.total, 0);
        assert!(s.by_cause.is_empty() && s.by_remote_ip.is_empty());
    }
}
