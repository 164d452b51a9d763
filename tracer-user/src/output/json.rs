//! `--output json`: the JSON-lines contract of DESIGN.md.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use super::Sink;
use crate::{
    attribution::actor::{Actor, Owner},
    attribution::cause::Cause,
    attribution::decode::Rst,
    attribution::netfilter::Netfilter,
    attribution::nftmon::Generation,
    clock::rfc3339,
    report::summary::Summary,
};

#[derive(Serialize)]
struct RstLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    /// `out` (sent by this host) or `in` (received).
    direction: &'static str,
    cause: Cause,
    kernel_reason: Option<&'a str>,
    family: &'static str,
    local_ip: IpAddr,
    local_port: u16,
    remote_ip: IpAddr,
    remote_port: u16,
    state: Option<&'static str>,
    netns: Option<u64>,
    actor: Option<&'a Actor>,
    labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    netfilter: Option<&'a Netfilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a crate::untrusted::Untrusted>,
    /// `injected` by a BPF program: shaped like a drops row's programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    bpf_program: Option<ProgramLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a Owner>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listener: Option<ListenerLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit: Option<ExitLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a [crate::untrusted::Untrusted]>,
}

#[derive(Serialize)]
struct ListenerLine<'a> {
    port: u16,
    pid: Option<u32>,
    comm: Option<&'a crate::untrusted::Untrusted>,
    gone_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u32>,
}

/// A RST sent while its actor exited: how it ended, and who ended it.
#[derive(Serialize)]
struct ExitLine<'a> {
    signal: Option<String>,
    killed_by: Option<&'a crate::attribution::exits::Killer>,
    oom: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bpf_program: Option<&'a crate::attribution::exits::KillProgram>,
}

#[derive(Serialize)]
struct RemoteLine<'a> {
    remote_ip: IpAddr,
    total: u64,
    by_cause: &'a BTreeMap<Cause, u64>,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    duration_s: f64,
    total: u64,
    lost: u64,
    skipped_runs: &'a BTreeMap<String, u64>,
    unreadable: u64,
    remote_ip_overflow: u64,
    by_cause: &'a BTreeMap<Cause, u64>,
    by_remote_ip: Vec<RemoteLine<'a>>,
    received: Vec<RemoteLine<'a>>,
    received_total: u64,
    drops: Vec<DropLine<'a>>,
    drops_total: u64,
    drop_overflow: u64,
    coverage: CoverageLine,
    ruleset_changes: &'a [Generation],
}

/// Silent drops of a remote IP's segments, shaped like a by_remote_ip
/// entry (by drop cause), plus where they were dropped.
#[derive(Serialize)]
struct DropLine<'a> {
    remote_ip: IpAddr,
    total: u64,
    by_cause: &'a BTreeMap<tracer_common::DropCause, u64>,
    /// listen-overflow: the listeners whose full accept queue dropped them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    listeners: Vec<DropListenerLine<'a>>,
    /// tc-drop, xdp-drop: the BPF programs attached at the hook.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    programs: Vec<ProgramLine<'a>>,
    #[serde(rename = "where")]
    by_location: &'a BTreeMap<crate::untrusted::Untrusted, u64>,
    first_seen: String,
    last_seen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a crate::attribution::nftmon::Author>,
    /// The nftables rule and set element that drop them, shaped like an
    /// RST's `netfilter`; null when no rule in the ruleset explains them.
    netfilter: Option<&'a crate::attribution::netfilter::Netfilter>,
}

#[derive(Serialize)]
struct ProgramLine<'a> {
    id: Option<u32>,
    name: Option<&'a crate::untrusted::Untrusted>,
    tag: Option<&'a str>,
    attach: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a crate::untrusted::Untrusted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a crate::untrusted::Untrusted>,
    holder: Option<HolderLine<'a>>,
    pin: Option<&'a crate::untrusted::Untrusted>,
    agent: Option<&'static str>,
}

#[derive(Serialize)]
struct HolderLine<'a> {
    pid: u32,
    comm: &'a crate::untrusted::Untrusted,
}

#[derive(Serialize)]
struct DropListenerLine<'a> {
    port: u16,
    pid: Option<u32>,
    comm: Option<&'a crate::untrusted::Untrusted>,
    count: u64,
}

/// RSTs seen leaving through a device, and how many a rule explains.
#[derive(Serialize)]
struct CoverageLine {
    egress_rsts: u64,
    attributed: u64,
    unknown: u64,
    by_tcp_stack: u64,
}

pub struct Json {
    out: Box<dyn Write>,
    /// One line, built here and handed to `out` whole: serializing
    /// straight into `out` costs a dynamic call per token, most of the
    /// reader's time under a flood.
    line: Vec<u8>,
}

impl Json {
    pub fn new(out: Box<dyn Write>) -> Self {
        Self {
            out,
            line: Vec::with_capacity(512),
        }
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }
}

fn rst_line(rst: &Rst) -> RstLine<'_> {
    RstLine {
        kind: "rst",
        ts: rfc3339(rst.ts),
        direction: rst.cause.direction().name(),
        cause: rst.cause,
        kernel_reason: rst.kernel_reason.as_deref(),
        family: rst.family.name(),
        local_ip: rst.local.ip(),
        local_port: rst.local.port(),
        remote_ip: rst.remote.ip(),
        remote_port: rst.remote.port(),
        state: rst.state,
        netns: rst.netns,
        actor: rst.actor.as_ref(),
        labels: &rst.labels,
        stack: rst.stack.as_deref(),
        netfilter: rst.netfilter.as_ref(),
        module: rst.module.as_ref(),
        bpf_program: rst.bpf_program.as_ref().map(program_line),
        owner: rst.owner.as_ref(),
        listener: rst.listener.as_ref().map(|l| ListenerLine {
            port: l.port,
            pid: l.pid,
            comm: l.comm.as_ref(),
            gone_at: l.gone_at.map(rfc3339),
            backlog: l.backlog,
        }),
        exit: rst.exit.as_ref().map(|e| ExitLine {
            signal: e.signal.map(crate::attribution::exits::signal_name),
            killed_by: e.killed_by.as_ref(),
            oom: e.oom,
            bpf_program: e.bpf_program.as_ref(),
        }),
    }
}

fn program_line(p: &crate::attribution::bpfprogs::BpfProgram) -> ProgramLine<'_> {
    ProgramLine {
        id: p.id,
        name: p.name.as_ref(),
        tag: p.tag.as_deref(),
        attach: p.attach,
        device: p.device.as_ref(),
        cgroup: p.cgroup.as_ref(),
        holder: p
            .holder
            .as_ref()
            .map(|(pid, comm)| HolderLine { pid: *pid, comm }),
        pin: p.pin.as_ref(),
        agent: p.agent,
    }
}

fn remote_line(r: &crate::report::summary::RemoteSummary) -> RemoteLine<'_> {
    RemoteLine {
        remote_ip: r.remote_ip,
        total: r.total,
        by_cause: &r.by_cause,
        first_seen: rfc3339(r.first_seen),
        last_seen: rfc3339(r.last_seen),
    }
}

fn summary_line(s: &Summary) -> SummaryLine<'_> {
    SummaryLine {
        kind: "summary",
        duration_s: s.duration.as_secs_f64(),
        total: s.total,
        lost: s.lost,
        skipped_runs: &s.skipped_runs,
        unreadable: s.unreadable,
        remote_ip_overflow: s.remote_ip_overflow,
        by_cause: &s.by_cause,
        by_remote_ip: s.by_remote_ip.iter().map(remote_line).collect(),
        received: s.received.iter().map(remote_line).collect(),
        received_total: s.received_total,
        drops: s
            .drops
            .iter()
            .map(|d| DropLine {
                remote_ip: d.remote_ip,
                total: d.total,
                by_cause: &d.by_cause,
                listeners: d
                    .listeners
                    .iter()
                    .map(|l| DropListenerLine {
                        port: l.port,
                        pid: l.pid,
                        comm: l.comm.as_ref(),
                        count: l.count,
                    })
                    .collect(),
                programs: d.programs.iter().map(program_line).collect(),
                by_location: &d.by_location,
                first_seen: rfc3339(d.first_seen),
                last_seen: rfc3339(d.last_seen),
                author: d.author.as_ref(),
                netfilter: d.netfilter.as_ref(),
            })
            .collect(),
        drops_total: s.drops_total,
        drop_overflow: s.drop_overflow,
        ruleset_changes: &s.ruleset_changes,
        coverage: CoverageLine {
            egress_rsts: s.coverage.egress_rsts,
            attributed: s.coverage.attributed(),
            unknown: s.coverage.unexplained,
            by_tcp_stack: s.coverage.tcp_stack,
        },
    }
}

impl Sink for Json {
    fn rst(&mut self, rst: &Rst) -> io::Result<()> {
        self.line(&rst_line(rst))
    }

    fn tick(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.line(&summary_line(s))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::decode::Family,
        report::summary::{Coverage, DropSummary, RemoteSummary},
    };
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rst_line_follows_the_contract() {
        let rst = Rst {
            ts: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001),
            cause: Cause::AbortOnClose,
            kernel_reason: Some("TCP_ABORT_ON_CLOSE".into()),
            family: Family::Ipv4,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.4.0.1:40000".parse().unwrap(),
            state: Some("TCP_ESTABLISHED"),
            actor: Some(Actor {
                pid: 42,
                tid: 43,
                comm: "server".into(),
                exe: None,
                cgroup: Some("/user.slice".into()),
                container_id: None,
                agent: None,
                agent_via: None,
                stack: None,
            }),
            ..Rst::example()
        };
        assert_eq!(
            serde_json::to_value(rst_line(&rst)).unwrap(),
            json!({
                "type": "rst",
                "ts": "2023-11-14T22:13:20.000001Z",
                "direction": "out",
                "cause": "abort-on-close",
                "kernel_reason": "TCP_ABORT_ON_CLOSE",
                "family": "ipv4",
                "local_ip": "127.0.0.1",
                "local_port": 8080,
                "remote_ip": "127.4.0.1",
                "remote_port": 40000,
                "state": "TCP_ESTABLISHED",
                "netns": null,
                "actor": {"pid": 42, "tid": 43, "comm": "server", "exe": null, "cgroup": "/user.slice", "container_id": null},
                "labels": [],
            })
        );
    }

    /// A RST a tc egress program made: the program as a drops row's
    /// programs entry renders it (one renderer for both).
    #[test]
    fn injected_by_a_program_names_it() {
        let rst = Rst {
            cause: Cause::Injected,
            bpf_program: Some(crate::attribution::bpfprogs::BpfProgram {
                id: Some(7),
                name: Some("rst_it".into()),
                tag: Some("0123456789abcdef".into()),
                attach: "tcx-egress",
                device: Some("eth0".into()),
                cgroup: None,
                holder: Some((42, "agent".into())),
                pin: None,
                agent: None,
            }),
            ..Rst::example()
        };
        let v = serde_json::to_value(rst_line(&rst)).unwrap();
        assert_eq!(
            v["bpf_program"],
            json!({
                "id": 7, "name": "rst_it", "tag": "0123456789abcdef", "attach": "tcx-egress",
                "device": "eth0", "holder": {"pid": 42, "comm": "agent"}, "pin": null,
                "agent": null,
            })
        );
        assert_eq!(
            serde_json::to_value(rst_line(&Rst::example()))
                .unwrap()
                .get("bpf_program"),
            None
        );
    }

    #[test]
    fn unknown_rsts_carry_their_stack() {
        let rst = Rst {
            ts: UNIX_EPOCH,
            cause: Cause::Unknown,
            kernel_reason: Some("NOT_SPECIFIED".into()),
            family: Family::Ipv4,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.2:2".parse().unwrap(),
            netns: Some(4026531840),
            stack: Some(vec![
                "tcp_v4_send_reset+0x1a".into(),
                "nft_do_chain+0x10 [nf_tables]".into(),
            ]),
            ..Rst::example()
        };
        let v = serde_json::to_value(rst_line(&rst)).unwrap();
        assert_eq!(v["cause"], "unknown");
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(
            v["stack"],
            json!(["tcp_v4_send_reset+0x1a", "nft_do_chain+0x10 [nf_tables]"])
        );
    }

    #[test]
    fn netfilter_detail_is_an_object() {
        let rst = Rst {
            ts: UNIX_EPOCH,
            cause: Cause::NetfilterReject,
            family: Family::Ipv6,
            local: "[::1]:7777".parse().unwrap(),
            remote: "[fd72::1]:4000".parse().unwrap(),
            netfilter: Some(Netfilter {
                hook: Some("input"),
                backend: Some("nftables"),
                table: None,
                chain: None,
                author: None,
                ..Default::default()
            }),
            ..Rst::example()
        };
        let v = serde_json::to_value(rst_line(&rst)).unwrap();
        assert_eq!(v["kernel_reason"], serde_json::Value::Null);
        assert_eq!(
            v["netfilter"],
            json!({"hook": "input", "backend": "nftables", "table": null, "family": null,
                   "chain": null, "handle": null, "rule": null, "set": null, "agent": null})
        );
        assert!(v.get("stack").is_none() && v.get("module").is_none());
    }

    #[test]
    fn summary_line_follows_the_contract() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = Summary {
            duration: Duration::from_millis(2500),
            total: 3,
            lost: 1,
            coverage: Coverage {
                egress_rsts: 5,
                tcp_stack: 3,
                unexplained: 1,
            },
            by_cause: [(Cause::ClosedPort, 3)].into_iter().collect(),
            by_remote_ip: vec![RemoteSummary {
                remote_ip: "::1".parse().unwrap(),
                total: 3,
                by_cause: [(Cause::ClosedPort, 3)].into_iter().collect(),
                first_seen: t,
                last_seen: t,
                diagnosis: None,
            }],
            drops: vec![DropSummary {
                remote_ip: "127.20.0.1".parse().unwrap(),
                total: 3,
                by_cause: [
                    (tracer_common::DropCause::NetfilterDrop, 2),
                    (tracer_common::DropCause::ListenOverflow, 1),
                ]
                .into_iter()
                .collect(),
                listeners: vec![crate::report::summary::DropListener {
                    netns: 1,
                    port: 8080,
                    count: 1,
                    pid: Some(42),
                    comm: Some("web".into()),
                }],
                hooks: Default::default(),
                programs: vec![crate::attribution::bpfprogs::BpfProgram {
                    id: Some(77),
                    name: Some("cil_from_netdev".into()),
                    tag: Some("0011223344556677".into()),
                    attach: "tcx-ingress",
                    device: Some("eth0".into()),
                    cgroup: None,
                    holder: Some((9, "cilium-agent".into())),
                    pin: None,
                    agent: Some("Cilium"),
                }],
                by_location: [
                    ("nft_do_chain [nf_tables]".into(), 2),
                    ("tcp_v4_rcv".into(), 1),
                ]
                .into_iter()
                .collect(),
                first_seen: t,
                last_seen: t,
                netns: vec![],
                author: None,
                netfilter: None,
            }],
            drops_total: 3,
            skipped_runs: [("tcp_send_reset".to_string(), 4)].into_iter().collect(),
            unreadable: 2,
            ..Default::default()
        };
        let v = serde_json::to_value(summary_line(&s)).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "summary",
                "duration_s": 2.5,
                "total": 3,
                "lost": 1,
                "skipped_runs": {"tcp_send_reset": 4},
                "unreadable": 2,
                "remote_ip_overflow": 0,
                "by_cause": {"closed-port": 3},
                "by_remote_ip": [{
                    "remote_ip": "::1",
                    "total": 3,
                    "by_cause": {"closed-port": 3},
                    "first_seen": "2023-11-14T22:13:20.000000Z",
                    "last_seen": "2023-11-14T22:13:20.000000Z",
                }],
                "received": [],
                "received_total": 0,
                "drops": [{
                    "remote_ip": "127.20.0.1",
                    "total": 3,
                    "by_cause": {"netfilter-drop": 2, "listen-overflow": 1},
                    "listeners": [{"port": 8080, "pid": 42, "comm": "web", "count": 1}],
                    "programs": [{
                        "id": 77, "name": "cil_from_netdev", "tag": "0011223344556677",
                        "attach": "tcx-ingress", "device": "eth0",
                        "holder": {"pid": 9, "comm": "cilium-agent"}, "pin": null,
                        "agent": "Cilium",
                    }],
                    "where": {"nft_do_chain [nf_tables]": 2, "tcp_v4_rcv": 1},
                    "first_seen": "2023-11-14T22:13:20.000000Z",
                    "last_seen": "2023-11-14T22:13:20.000000Z",
                    "netfilter": null,
                }],
                "drops_total": 3,
                "drop_overflow": 0,
                "ruleset_changes": [],
                "coverage": {"egress_rsts": 5, "attributed": 4, "unknown": 1, "by_tcp_stack": 3},
            })
        );
    }

    #[test]
    fn strings_from_outside_stay_json_strings() {
        use crate::untrusted::hostile;
        let rst = hostile::rst();
        let line = serde_json::to_string(&rst_line(&rst)).unwrap();
        // The JSON encoder escapes C0 controls; DEL and C1 are plain
        // characters in JSON.
        hostile::assert_clean(line.replace('\u{7f}', "").as_bytes(), &[]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // Controls come back as characters, bytes that are not UTF-8 as
        // `\xNN`, never as U+FFFD.
        assert_eq!(v["actor"]["comm"], "\x1b[2J\x1b]0;pwn\x07X\\xff");
        assert_eq!(v["actor"]["exe"], "/tmp/a\n00:00:00.000000 forged/ss");
        assert_eq!(v["netfilter"]["table"], "t\x1b[31m\r\0");
        assert_eq!(v["netfilter"]["chain"], "c\u{7f}\\x9b\n");
        assert_eq!(v["owner"]["comm"], v["actor"]["comm"]);
    }
}
