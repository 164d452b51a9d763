//! The default output: a line per RST (rate-limited) and a summary table.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use super::Sink;
use crate::{attribution::decode::Rst, clock::time_of_day, report::summary::Summary};

pub struct Human {
    out: Box<dyn Write>,
    /// Lines per second; 0 = no limit.
    rate: u32,
    top: usize,
    window: Instant,
    shown: u32,
    suppressed: u64,
}

impl Human {
    pub fn new(out: Box<dyn Write>, rate: u32, top: usize) -> Self {
        Self {
            out,
            rate,
            top,
            window: Instant::now(),
            shown: 0,
            suppressed: 0,
        }
    }

    fn roll_window(&mut self, now: Instant) -> io::Result<()> {
        if now.duration_since(self.window) < Duration::from_secs(1) {
            return Ok(());
        }
        self.flush_suppressed()?;
        self.window = now;
        self.shown = 0;
        Ok(())
    }

    fn flush_suppressed(&mut self) -> io::Result<()> {
        if self.suppressed > 0 {
            writeln!(
                self.out,
                "... {} more RSTs not shown (over {}/s; all are counted in the summary)",
                self.suppressed, self.rate
            )?;
            self.suppressed = 0;
        }
        Ok(())
    }
}

fn endpoint(a: &SocketAddr) -> String {
    // SocketAddr's Display already brackets IPv6: [::1]:9.
    a.to_string()
}

pub fn rst_text(rst: &Rst) -> String {
    // Sent RSTs go to the remote; received ones come from it.
    let (dir, here) = if rst.cause.direction() == tracer_common::Direction::In {
        ("from", "to")
    } else {
        ("to", "from")
    };
    format!(
        "{} {:<17} {dir} {:<22} {here} {:<22} {}",
        time_of_day(rst.ts),
        rst.cause.name(),
        endpoint(&rst.remote),
        endpoint(&rst.local),
        details(rst),
    )
}

/// Everything known about a RST besides its time, cause and endpoints (also
/// the pcapng packet comment).
pub fn details(rst: &Rst) -> String {
    let mut line = format!(
        "reason={} state={}",
        rst.kernel_reason.as_deref().unwrap_or("-"),
        rst.state.map_or("-", |s| s.trim_start_matches("TCP_")),
    );

    if let Some(a) = &rst.actor {
        line.push_str(&format!(" actor={}/{}", a.pid, a.comm));
        if let Some(cg) = &a.cgroup {
            line.push_str(&format!(" cgroup={cg}"));
        }
    }
    for l in &rst.labels {
        match &rst.agent {
            Some(name) if l == "security-agent" => line.push_str(&format!(" [{l}: {name}]")),
            _ => line.push_str(&format!(" [{l}]")),
        }
    }
    // An agent loaded in the actor: what it was seen by.
    if let Some(via) = rst.actor.as_ref().and_then(|a| a.agent_via.as_ref()) {
        line.push_str(&format!(" agent-via={via}"));
    }
    if let Some(nf) = &rst.netfilter {
        line.push_str(&format!(
            " hook={} backend={}",
            nf.hook.unwrap_or("?"),
            nf.backend.unwrap_or("?")
        ));
        if let (Some(t), Some(c)) = (&nf.table, &nf.chain) {
            line.push_str(&format!(" table={t} chain={c}"));
        }
        if let Some(a) = &nf.author {
            line.push_str(&format!(" rule-by={}/{}", a.pid, a.comm));
        }
        if nf.rule.is_some() {
            line.push_str(&format!(" {}", nft_rule(nf)));
        }
    }
    if let Some(o) = &rst.owner {
        line.push_str(&format!(" owner={}/{}", o.pid, o.comm));
    }
    if let Some(l) = &rst.listener {
        let who = format!(
            "{}/{}",
            l.pid.map_or("?".to_string(), |p| p.to_string()),
            l.comm.as_ref().map_or("?".to_string(), |c| c.to_string()),
        );
        match (rst.cause, l.gone_at) {
            // A closed port's listener went before the RST: say since when.
            (crate::attribution::cause::Cause::ClosedPort, Some(at)) => {
                line.push_str(&format!(" listener-gone={who} at {}", time_of_day(at)));
            }
            // Sent on a listener: which one, and when its queue was full.
            (crate::attribution::cause::Cause::ListenOverflow, _) => {
                line.push_str(&format!(" listener={who} accept-queue-full"));
                if let Some(b) = l.backlog {
                    line.push_str(&format!(" backlog={b}"));
                }
            }
            (crate::attribution::cause::Cause::InvalidSegment, None) => {
                line.push_str(&format!(" listener={who}"));
            }
            _ => {}
        }
    }
    if let Some(e) = &rst.exit {
        line.push_str(&format!(" {}", exit_text(e)));
    }
    if let Some(p) = &rst.bpf_program {
        line.push_str(&format!(" {}", program_text(p)));
    }
    if let Some(m) = &rst.module {
        line.push_str(&format!(" module={m}"));
    }
    if let Some(us) = rst.actor.as_ref().and_then(|a| a.stack.as_ref()) {
        line.push_str(&format!(" user-stack={}", user_stack_text(us)));
    }
    if let Some(stack) = &rst.stack {
        // The innermost frames name the path that needs a rule.
        let frames: Vec<String> = stack.iter().take(6).map(|f| f.to_string()).collect();
        line.push_str(&format!(" stack={}", frames.join("<-")));
    }
    line
}

/// `f+0x1c<-g+0x40<-main+0x9`, the innermost first; a frame without a
/// symbol is its address. A walk that stopped before the entry point says
/// so: the callers beyond were not unwound.
fn user_stack_text(us: &crate::attribution::ustack::UserStack) -> String {
    let mut frames: Vec<String> = us
        .frames
        .iter()
        .map(|f| match (&f.function, f.offset) {
            (Some(name), Some(off)) => format!("{name}+{off:#x}"),
            (Some(name), None) => name.to_string(),
            _ => format!("{:#x}", f.addr),
        })
        .collect();
    if !us.complete {
        frames.push("?(not unwound: no frame pointer)".to_string());
    }
    frames.join("<-")
}

/// `exiting`, `killed-by=pid/comm(SIGKILL)`, `killed-by=oom(SIGKILL)`
/// or `killed-by=bpf:name(SIGKILL)`: how the actor ended.
fn exit_text(e: &crate::attribution::exits::Exit) -> String {
    use crate::attribution::exits::signal_name;
    let Some(sig) = e.signal.map(signal_name) else {
        return "exited".to_string();
    };
    let by = if e.oom {
        "oom".to_string()
    } else if let Some(p) = &e.bpf_program {
        match &e.killed_by {
            Some(k) => format!("bpf:{}@{}/{}", p.name, k.pid, k.comm),
            None => format!("bpf:{}", p.name),
        }
    } else if let Some(k) = &e.killed_by {
        format!("{}/{}", k.pid, k.comm)
    } else {
        return format!("died-by={sig}");
    };
    format!("killed-by={by}({sig})")
}

/// One row per remote IP: address, total, first and last seen, details.
type IpRow = (IpAddr, u64, SystemTime, SystemTime, Vec<String>);

/// The top `top` rows under a header, and how many more there are.
fn per_ip_table(t: &mut String, title: &str, details: &str, rows: &[IpRow], top: usize) {
    if rows.is_empty() {
        return;
    }
    t.push_str(&format!(
        "\n{title:<40} {:>8}  {:<15}  {:<15}  {details}\n",
        "TOTAL", "FIRST SEEN", "LAST SEEN"
    ));
    for (ip, total, first, last, what) in rows.iter().take(top) {
        t.push_str(&format!(
            "{:<40} {total:>8}  {:<15}  {:<15}  {}\n",
            ip.to_string(),
            time_of_day(*first),
            time_of_day(*last),
            what.join(" ")
        ));
    }
    if rows.len() > top {
        let rest = &rows[top..];
        t.push_str(&format!(
            "... and {} more remote IPs ({} in all)\n",
            rest.len(),
            rest.iter().map(|r| r.1).sum::<u64>()
        ));
    }
}

/// `family=ip handle=4 set=crowdsec-blacklists[198.18.0.10 expires 3h59m]
/// owner=CrowdSec`: the matched rule, after its table and chain.
fn nft_rule(nf: &crate::attribution::netfilter::Netfilter) -> String {
    let mut s = format!(
        "family={} handle={}",
        nf.family.unwrap_or("?"),
        nf.handle.map_or("policy".to_string(), |h| h.to_string())
    );
    if let Some(set) = &nf.set {
        s.push_str(&format!(" set={}[{}", set.name, set.element));
        if let Some(e) = set.expires_in_s {
            s.push_str(&format!(
                " expires {}",
                crate::attribution::nft::names::short_duration(e)
            ));
        }
        s.push(']');
    }
    if let Some(a) = &nf.agent {
        s.push_str(&format!(" owner={a}"));
    }
    if !nf.unknown.is_empty() {
        s.push_str(&format!(
            " unsure({})",
            nf.unknown
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    s
}

/// A BPF program at the hook that dropped: "prog=tc-ingress/eth0:12/name
/// (holder 812/agent) [security-agent: Cilium]".
fn program_text(p: &crate::attribution::bpfprogs::BpfProgram) -> String {
    let at = p.device.as_ref().or(p.cgroup.as_ref());
    let mut t = format!("prog={}", p.attach);
    if let Some(at) = at {
        t.push_str(&format!("/{at}"));
    }
    match (p.id, &p.name) {
        (Some(id), Some(n)) => t.push_str(&format!(":{id}/{n}")),
        (Some(id), None) => t.push_str(&format!(":{id}")),
        (None, _) => t.push_str(":classic"),
    }
    if let Some((pid, comm)) = &p.holder {
        t.push_str(&format!(" held-by={pid}/{comm}"));
    }
    if let Some(pin) = &p.pin {
        t.push_str(&format!(" pin={pin}"));
    }
    if let Some(a) = p.agent {
        t.push_str(&format!(" [security-agent: {a}]"));
    }
    t
}

pub fn summary_text(s: &Summary, top: usize) -> String {
    let mut t = String::new();
    let secs = s.duration.as_secs_f64();
    t.push_str(&format!(
        "\nrsttrace summary: {} RST{} sent in {secs:.1}s\n",
        s.total,
        if s.total == 1 { "" } else { "s" }
    ));
    let remotes: Vec<_> = s
        .by_remote_ip
        .iter()
        .map(|r| {
            let causes = r.by_cause.iter().map(|(c, n)| format!("{c}={n}")).collect();
            (r.remote_ip, r.total, r.first_seen, r.last_seen, causes)
        })
        .collect();
    per_ip_table(&mut t, "REMOTE IP", "CAUSES", &remotes, top);
    if !s.by_cause.is_empty() {
        t.push_str(&format!("\n{:<40} {:>8}\n", "CAUSE", "TOTAL"));
        let mut causes: Vec<_> = s.by_cause.iter().collect();
        causes.sort_by_key(|(c, n)| (std::cmp::Reverse(**n), **c));
        for (c, n) in causes {
            t.push_str(&format!("{:<40} {:>8}\n", c.name(), n));
        }
    }
    let diagnoses: Vec<_> = s
        .by_remote_ip
        .iter()
        .take(top)
        .filter_map(|r| Some((r.remote_ip, r.diagnosis.as_deref()?)))
        .collect();
    if !diagnoses.is_empty() {
        t.push_str("\nDIAGNOSIS\n");
        for (ip, d) in diagnoses {
            t.push_str(&format!("{ip}: {d}\n"));
        }
    }
    let received: Vec<_> = s
        .received
        .iter()
        .map(|r| (r.remote_ip, r.total, r.first_seen, r.last_seen, vec![]))
        .collect();
    per_ip_table(&mut t, "RSTS RECEIVED FROM", "", &received, top);
    let drops: Vec<_> = s
        .drops
        .iter()
        .map(|d| {
            let mut wh: Vec<String> = d.by_cause.iter().map(|(c, n)| format!("{c}={n}")).collect();
            wh.extend(d.listeners.iter().map(|l| match (l.pid, &l.comm) {
                (Some(pid), Some(comm)) => format!("port={} listener={pid}/{comm}", l.port),
                _ => format!("port={}", l.port),
            }));
            wh.extend(d.by_location.iter().map(|(w, n)| format!("at {w}={n}")));
            wh.extend(d.programs.iter().map(program_text));
            if let Some(nf) = &d.netfilter {
                let q = |u: &Option<crate::untrusted::Untrusted>| {
                    u.as_ref().map_or("?".to_string(), |x| x.to_string())
                };
                wh.push(format!(
                    "table={} chain={} {}",
                    q(&nf.table),
                    q(&nf.chain),
                    nft_rule(nf)
                ));
            }
            (d.remote_ip, d.total, d.first_seen, d.last_seen, wh)
        })
        .collect();
    per_ip_table(
        &mut t,
        "SILENT DROPS",
        "CAUSES, WHERE (no RST sent)",
        &drops,
        top,
    );
    if !s.ruleset_changes.is_empty() {
        t.push_str("\nRULESET CHANGES (nftables, while tracing)\n");
        for g in &s.ruleset_changes {
            for c in &g.changes {
                let mut what = format!("{} {}", c.what, c.family);
                for part in [&c.table, &c.chain].into_iter().flatten() {
                    what.push_str(&format!(" {part}"));
                }
                if let Some(h) = c.handle {
                    what.push_str(&format!(" handle {h}"));
                }
                if let Some(v) = c
                    .verdict
                    .filter(|v| *v != crate::attribution::nftmon::Verdict::Other)
                {
                    what.push_str(&format!(
                        " ({})",
                        if v == crate::attribution::nftmon::Verdict::Reject {
                            "reject"
                        } else {
                            "drop"
                        }
                    ));
                }
                t.push_str(&format!(
                    "netns {} generation {} by {} (pid {}): {what}\n",
                    g.netns, g.generation, g.comm, g.pid
                ));
            }
        }
    }
    let c = &s.coverage;
    t.push_str(&format!(
        "\ncoverage: {} RSTs left through a device: {} attributed ({} by the TCP stack), {} unknown\n",
        c.egress_rsts,
        c.attributed(),
        c.tcp_stack,
        c.unexplained
    ));
    if s.remote_ip_overflow > 0 {
        t.push_str(&format!(
            "\n{} RSTs are counted by cause only: more distinct remote IPs than --max-remote-ips\n",
            s.remote_ip_overflow
        ));
    }
    if s.unreadable > 0 {
        t.push_str(&format!(
            "\n{} RSTs could not be read (a fault, or a kernel layout rsttrace does not know): \
             they are in no count above\n",
            s.unreadable
        ));
    }
    if !s.skipped_runs.is_empty() {
        let runs: Vec<String> = s
            .skipped_runs
            .iter()
            .map(|(prog, n)| format!("{prog} {n}"))
            .collect();
        t.push_str(&format!(
            "\nskipped by the kernel: {} (runs of rsttrace's programs not started because a \
             BPF program was already running on that CPU; the counts above may be short by \
             as many)\n",
            runs.join(", ")
        ));
    }
    t.push_str(&format!(
        "\nlost events: {}{}\n",
        s.lost,
        if s.lost > 0 {
            " (not shown live; every count above is exact)"
        } else {
            ""
        }
    ));
    t
}

impl Sink for Human {
    fn rst(&mut self, rst: &Rst) -> io::Result<()> {
        let now = Instant::now();
        self.roll_window(now)?;
        if self.rate != 0 && self.shown >= self.rate {
            self.suppressed += 1;
            return Ok(());
        }
        self.shown += 1;
        writeln!(self.out, "{}", rst_text(rst))
    }

    fn unsent(&mut self, n: u64) {
        self.suppressed += n;
    }

    fn tick(&mut self) -> io::Result<()> {
        self.roll_window(Instant::now())?;
        self.out.flush()
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.flush_suppressed()?;
        write!(self.out, "{}", summary_text(s, self.top))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::cause::Cause, attribution::decode::Family, report::summary::RemoteSummary,
    };
    use std::{
        sync::{Arc, Mutex},
        time::UNIX_EPOCH,
    };

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn rst() -> Rst {
        Rst {
            ts: UNIX_EPOCH,
            cause: Cause::ClosedPort,
            kernel_reason: Some("NO_SOCKET".into()),
            family: Family::Ipv6,
            local: "[::1]:9".parse().unwrap(),
            remote: "[::1]:50976".parse().unwrap(),
            ..Rst::example()
        }
    }

    /// A RST a kernel module built, the module a known agent's: the line
    /// names the agent (it once printed a bare "[security-agent]", the
    /// agent being looked for in the actor and rule author only).
    #[test]
    fn a_module_built_rst_names_the_agent_of_its_module() {
        use crate::attribution::{actor::ActorResolver, agents::Agents, enrich::Enricher};
        let ksyms = crate::kernel::ksyms::Kallsyms::parse(
            "ffffffff81000000 T __dev_queue_xmit\n\
             ffffffff81001000 T ip_output\n\
             ffffffffc0001000 t falcon_send_rst\t[falcon_lsm_serviceable]\n\
             ffffffffc0002000 t falcon_other\t[falcon_lsm_serviceable]\n",
        )
        .unwrap();
        let mut enricher = Enricher {
            ruleset: Default::default(),
            clock: crate::clock::BootClock::new(),
            reasons: Default::default(),
            actors: ActorResolver::new(Agents::new(vec![])),
            ksyms: Some(ksyms.into()),
            listeners: crate::attribution::listeners::Listeners::new(Duration::from_secs(600)),
            namer: std::cell::RefCell::new(crate::attribution::nft::names::Namer::new(
                Default::default(),
            )),
            user_stacks: Default::default(),
            egress_programs: Default::default(),
        };
        // SAFETY: plain data, every bit pattern valid.
        let mut ev: tracer_common::RstEvent = unsafe { std::mem::zeroed() };
        ev.family = tracer_common::AF_INET;
        ev.cause = Cause::Injected as u8;
        ev.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.remote_addr[..4].copy_from_slice(&[127, 9, 0, 1]);
        (ev.local_port, ev.remote_port) = (80, 5000);
        let stack = vec![0xffff_ffff_8100_0010, 0xffff_ffff_c000_1010];
        let rst = enricher
            .rst(&ev, |_| Some(stack.clone()), |_| None, |_| None, |_| None)
            .expect("decoded");
        assert_eq!(rst.labels, ["security-agent"]);
        let line = rst_text(&rst);
        assert!(
            line.contains("[security-agent: CrowdStrike Falcon]"),
            "{line}"
        );
    }

    #[test]
    fn rst_line_names_cause_endpoints_and_reason() {
        let l = rst_text(&rst());
        assert!(l.starts_with("00:00:00.000000 closed-port"), "{l}");
        assert!(l.contains("to [::1]:50976"), "{l}");
        assert!(l.contains("from [::1]:9"), "{l}");
        assert!(l.ends_with("reason=NO_SOCKET state=-"), "{l}");
    }

    #[test]
    fn rsts_sent_on_a_listener_name_it() {
        use crate::attribution::decode::Listener;
        let mut r = rst();
        r.cause = Cause::ListenOverflow;
        r.state = Some("TCP_LISTEN");
        r.listener = Some(Listener {
            port: 8083,
            pid: Some(812),
            comm: Some("orders-api".into()),
            gone_at: None,
            backlog: Some(1),
        });
        let l = rst_text(&r);
        assert!(
            l.ends_with("state=LISTEN listener=812/orders-api accept-queue-full backlog=1"),
            "{l}"
        );
        r.cause = Cause::InvalidSegment;
        let l = rst_text(&r);
        assert!(l.ends_with("state=LISTEN listener=812/orders-api"), "{l}");
    }

    #[test]
    fn floods_are_rate_limited_with_one_note() {
        let buf = Buf::default();
        let mut h = Human::new(Box::new(buf.clone()), 3, 10);
        for _ in 0..10 {
            h.rst(&rst()).unwrap();
        }
        let s = Summary {
            duration: Duration::from_secs(1),
            total: 10,
            lost: 0,
            by_cause: [(Cause::ClosedPort, 10)].into_iter().collect(),
            by_remote_ip: vec![RemoteSummary {
                remote_ip: "::1".parse().unwrap(),
                total: 10,
                by_cause: [(Cause::ClosedPort, 10)].into_iter().collect(),
                first_seen: UNIX_EPOCH,
                last_seen: UNIX_EPOCH,
                diagnosis: None,
            }],
            ..Default::default()
        };
        h.summary(&s).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("closed-port       to").count(), 3, "{text}");
        assert_eq!(text.matches("7 more RSTs not shown").count(), 1, "{text}");
        assert!(text.contains("rsttrace summary: 10 RSTs sent"), "{text}");
        assert!(text.contains("closed-port=10"), "{text}");
        assert!(text.contains("lost events: 0\n"), "{text}");
        assert!(!text.contains("skipped by the kernel"), "{text}");
        assert!(!text.contains("could not be read"), "{text}");
    }

    #[test]
    fn summary_shows_top_n_and_the_rest() {
        let r = |ip: &str, n| RemoteSummary {
            remote_ip: ip.parse().unwrap(),
            total: n,
            by_cause: [(Cause::ClosedPort, n)].into_iter().collect(),
            first_seen: UNIX_EPOCH,
            last_seen: UNIX_EPOCH,
            diagnosis: None,
        };
        let s = Summary {
            duration: Duration::from_secs(1),
            total: 6,
            lost: 2,
            skipped_runs: [
                ("kfree_skb".to_string(), 1),
                ("tcp_send_reset".to_string(), 5),
            ]
            .into_iter()
            .collect(),
            unreadable: 1,
            by_cause: [(Cause::ClosedPort, 6)].into_iter().collect(),
            by_remote_ip: vec![r("127.0.0.3", 3), r("127.0.0.2", 2), r("127.0.0.1", 1)],
            ..Default::default()
        };
        let t = summary_text(&s, 2);
        assert!(t.contains("127.0.0.3"));
        assert!(t.contains("127.0.0.2"));
        assert!(!t.contains("127.0.0.1 "));
        assert!(t.contains("... and 1 more remote IPs (1 in all)"), "{t}");
        assert!(t.contains("lost events: 2 (not shown live"));
        assert!(t.contains("1 RSTs could not be read (a fault"), "{t}");
        assert!(
            t.contains("skipped by the kernel: kfree_skb 1, tcp_send_reset 5 (runs of"),
            "{t}"
        );
    }

    #[test]
    fn strings_from_outside_are_escaped_in_the_line_and_the_summary() {
        use crate::{
            attribution::nftmon::{Change, Generation, Verdict},
            report::diagnosis::{ActorTally, diagnose},
            report::summary::DropSummary,
            untrusted::{Untrusted, hostile},
        };
        let comm = hostile::COMM_TEXT;
        let (table, chain) = (r"t\x1b[31m\x0d\x00", r"c\x7f\x9b\x0a");
        let rst = hostile::rst();
        let line = rst_text(&rst);
        hostile::assert_clean(line.as_bytes(), &[]);
        for part in [
            format!(" actor=17884/{comm} "),
            r" cgroup=/user.slice/\x1b]0;cg\x07 ".to_string(),
            format!(" [security-agent: {comm}] "),
            format!(" table={table} chain={chain} rule-by=7/{comm} owner=9/{comm} "),
            format!(
                r" module=mod\x1b[8m user-stack={comm}+0x1c<-?(not unwound: no frame pointer) stack=evil\x1b[A+0x1 [mod\x07]"
            ),
        ] {
            assert!(line.contains(&part), "{part:?} not in {line:?}");
        }

        let mut tally = ActorTally::default();
        tally.observe(&rst);
        let mut remote = RemoteSummary {
            remote_ip: rst.remote.ip(),
            total: 1,
            by_cause: [(Cause::NetfilterReject, 1)].into_iter().collect(),
            first_seen: UNIX_EPOCH,
            last_seen: UNIX_EPOCH,
            diagnosis: None,
        };
        remote.diagnosis = Some(diagnose(&remote, &tally));
        let s = Summary {
            total: 1,
            by_cause: remote.by_cause.clone(),
            by_remote_ip: vec![remote],
            drops: vec![DropSummary {
                remote_ip: "127.77.0.2".parse().unwrap(),
                total: 2,
                by_cause: [(tracer_common::DropCause::ListenOverflow, 2)]
                    .into_iter()
                    .collect(),
                listeners: vec![crate::report::summary::DropListener {
                    netns: 1,
                    port: 80,
                    count: 2,
                    pid: Some(7),
                    comm: Some(hostile::comm()),
                }],
                hooks: Default::default(),
                programs: vec![crate::attribution::bpfprogs::BpfProgram {
                    id: Some(3),
                    name: Some(hostile::comm()),
                    tag: None,
                    attach: "tc-ingress",
                    device: Some(hostile::comm()),
                    cgroup: None,
                    holder: Some((7, hostile::comm())),
                    pin: Some(hostile::comm()),
                    agent: None,
                }],
                by_location: [(Untrusted::from("hook\x1b[2J [m\n]"), 2)]
                    .into_iter()
                    .collect(),
                first_seen: UNIX_EPOCH,
                last_seen: UNIX_EPOCH,
                netns: vec![],
                author: None,
                netfilter: None,
            }],
            ruleset_changes: vec![Generation {
                netns: 1,
                generation: 5,
                pid: 7,
                comm: hostile::comm(),
                at: None,
                changes: vec![Change {
                    what: "add rule".into(),
                    family: "inet",
                    table: Some(hostile::table()),
                    chain: Some(hostile::chain()),
                    handle: Some(4),
                    verdict: Some(Verdict::Reject),
                }],
            }],
            ..Default::default()
        };
        let t = summary_text(&s, 10);
        hostile::assert_clean(t.as_bytes(), b"\n");
        for part in [
            format!(
                "\n127.77.0.1: netfilter-reject (1 of 1): a REJECT rule added by {comm} \
                 (security agent: {comm}) answered"
            ),
            format!(
                "\nnetns 1 generation 5 by {comm} (pid 7): add rule inet {table} {chain} \
                 handle 4 (reject)\n"
            ),
            r" at hook\x1b[2J [m\x0a]=2".to_string(),
        ] {
            assert!(t.contains(&part), "{part:?} not in {t:?}");
        }
    }
}
