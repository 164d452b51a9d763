//! Where the plan for the running kernel is told: per signal, the hook that
//! sees it and what is lost where a hook or a permission is missing.
//! `rsttrace doctor` prints it in full; the trace's start-up line in one line.
//!
//! The facts are recorded while rsttrace probes the kernel (format files,
//! BTF, kallsyms, netlink); the signals and the start-up line are told from
//! the tracer's record of what it attached (`Plan::signals`), so they say
//! what the programs really attached to, not what should work.

use std::fmt::Write as _;

use anyhow::Result;
use tracer_common::{ABSENT, KfreeSkbLayout, NetnsOffsets, SignalLayout, StackRules};

use crate::{
    attribution::cause,
    cli::{self, Args},
    kernel::{Facts, Probe},
    loader::{Attached, Hook, Options},
    scope::Scope,
};

/// What to load, and everything said about it before it is attached:
/// decided from the probed facts and the arguments alone (no I/O), so that
/// every kernel's plan can be tested from its fixtures.
pub struct Decided<'a> {
    pub load: Options<'a>,
    pub probed: Probed,
    /// The kernel and permission facts doctor lists.
    pub plan: Plan,
    /// What is lost here, said on stderr before the trace starts.
    pub warnings: Vec<String>,
}

pub fn decide<'a>(facts: &'a Facts, args: &Args, scope: &'a Scope) -> Result<Decided<'a>> {
    let (stack_rules, missing_functions) = match &facts.ksyms {
        Ok(k) if facts.reason() => cause::resolve_stack_rules(k),
        Ok(k) => cause::resolve_reasonless_rules(k),
        Err(_) => (StackRules::EMPTY, vec![]),
    };
    let egress_rules = facts
        .ksyms
        .as_ref()
        .map_or(StackRules::EMPTY, |k| cause::resolve_egress_rules(k).0);
    let full_socket_reset = facts
        .ksyms
        .as_ref()
        .ok()
        .and_then(|k| cause::resolve_full_socket_reset(k));
    let bpf_egress = bpf_egress(facts, full_socket_reset.is_some());
    let sent = args.direction.sent();
    let load = Options {
        send_reset: facts.send_reset.layout,
        sock_addrs: facts.sock_addrs.clone().ok(),
        reason_causes: cause::reason_table(&facts.send_reset.reasons),
        stack_rules,
        netns: facts.netns.clone().unwrap_or(NetnsOffsets::UNSET),
        egress: facts.egress.clone().ok().map(|mut offsets| {
            // Without the means to tell the stack's RSTs from a program's,
            // a full socket's packets stay unread, as on every device
            // without egress programs.
            if bpf_egress.is_err() {
                offsets.dev_egress = ABSENT;
            }
            crate::loader::Egress {
                offsets,
                rules: egress_rules,
                full_socket_reset: full_socket_reset.unwrap_or(tracer_common::StackRule::NONE),
                reply_destructor: facts
                    .ksyms
                    .as_ref()
                    .map_or(0, |k| cause::resolve_reply_destructor(k)),
            }
        }),
        // Loaded for netfilter-drop too: its count leaves out the segments
        // an ICMP reject answered (the egress program counts the rejects
        // only when they are in scope).
        egress_icmp_rules: match &facts.ksyms {
            Ok(k)
                if scope.drop_causes.iter().any(|c| {
                    matches!(
                        c,
                        cause::DropCause::NetfilterRejectIcmp | cause::DropCause::NetfilterDrop
                    )
                }) =>
            {
                cause::resolve_egress_icmp_rules(k).0
            }
            _ => StackRules::EMPTY,
        },
        kfree_skb: facts
            .kfree_skb
            .as_ref()
            .map_or(KfreeSkbLayout::UNSET, |f| f.layout),
        drop_reason_causes: facts.kfree_skb.as_ref().map_or(vec![], |f| {
            cause::drop_reason_table(&f.reasons, &scope.drop_causes)
        }),
        emit_events: !args.summary_only || args.pcap.is_some(),
        user_stacks: args.user_stacks,
        events_per_sec: events_per_sec(args),
        max_remote_ips: args.max_remote_ips,
        ring_size: args.ring_size,
        scope,
        sent,
        kprobes: facts.kprobes,
        nft: if sent { facts.nft.clone().ok() } else { None },
        bench_empty: args.debug_empty_programs,
        bench_start_xmit: args.debug_start_xmit_probe,
        task: facts.task.clone().ok(),
        signal: SignalLayout {
            victim_pid: facts.mark_victim.clone().unwrap_or(ABSENT),
            ..facts.signal_generate.clone().unwrap_or(SignalLayout::UNSET)
        },
        btf: facts.aya_btf.as_ref(),
        no_tp_btf: args.debug_no_tp_btf,
        receive_reset: if args.direction.received() {
            Some(facts.receive_reset.clone().map_err(anyhow::Error::msg)?)
        } else {
            None
        },
    };
    let probed = Probed {
        reason: facts.reason(),
        kprobes: facts.kprobes,
        egress: ok(&facts.egress),
        bpf_egress,
        ksyms: ok(&facts.ksyms),
        missing_functions,
        nft: if sent {
            ok(&facts.nft)
        } else {
            Err("only RSTs sent are traced".into())
        },
        netlink: facts.caps.net_admin,
        kfree_skb: ok(&facts.kfree_skb),
        drop_causes: facts.kfree_skb.as_ref().map_or(vec![], |f| {
            cause::drop_causes_named(&f.reasons)
                .into_iter()
                .filter(|c| scope.drop_causes.contains(c))
                .collect()
        }),
        drops_in_scope: scope.drops,
        reject_icmp: scope
            .drop_causes
            .contains(&cause::DropCause::NetfilterRejectIcmp)
            .then(|| match &facts.ksyms {
                Ok(k) => Ok(cause::resolve_egress_icmp_rules(k).1),
                Err(e) => Err(e.to_string()),
            }),
        netns: ok(&facts.netns),
        ptrace: facts.caps.ptrace,
        task: ok(&facts.task),
        signal_generate: ok(&facts.signal_generate),
        mark_victim: ok(&facts.mark_victim),
    };
    let mut warnings = warnings(&probed);
    if load.bench_empty {
        warnings.push(
            "--debug-empty-programs: every program returns at once, nothing is counted".into(),
        );
    }
    if load.bench_start_xmit {
        warnings.push(
            "--debug-start-xmit-probe: an empty program runs on net:net_dev_start_xmit".into(),
        );
    }
    Ok(Decided {
        warnings,
        plan: Plan::for_kernel(facts),
        load,
        probed,
    })
}

/// Whether RSTs a tc/tcx egress program made of a TCP stack's segment can
/// be seen: the device's egress pointer to look at, and the stack's own
/// send path on the kernel stack to tell its RSTs from a program's.
fn bpf_egress(facts: &Facts, full_socket_reset: bool) -> Result<(), String> {
    let o = facts
        .egress
        .as_ref()
        .map_err(|e| format!("{e}: needs kernel BTF"))?;
    if o.dev_egress == ABSENT {
        return Err(
            "net_device has neither tcx_egress (6.6+) nor miniq_egress: a kernel \
                    without tc egress classifiers, where no program can rewrite a segment"
                .into(),
        );
    }
    if let Err(e) = &facts.ksyms {
        return Err(format!(
            "{e}: the TCP stack's own RSTs could not be told from a program's"
        ));
    }
    if !full_socket_reset {
        return Err(
            "tcp_send_active_reset is not in /proc/kallsyms: the TCP stack's own \
                    RSTs could not be told from a program's"
                .into(),
        );
    }
    Ok(())
}

fn ok<T>(p: &Probe<T>) -> Result<(), String> {
    p.as_ref().map(drop).map_err(Clone::clone)
}

/// The text output prints `--rate` lines a second: that many events per
/// CPU of the line-only causes are enough (each CPU's second may start
/// anywhere in the output's). JSON and pcap write every event.
fn events_per_sec(args: &Args) -> u64 {
    match (args.output, &args.pcap) {
        (cli::OutputFormat::Text, None) => u64::from(args.rate),
        _ => 0,
    }
}

/// What a trace loses on this kernel, said once at start: doctor has the
/// whole plan.
fn warnings(p: &Probed) -> Vec<String> {
    let mut w = vec![];
    match &p.ksyms {
        Ok(()) if !p.missing_functions.is_empty() => w.push(format!(
            "kernel functions not found: {}; their stack rules are off",
            p.missing_functions.join(", ")
        )),
        Ok(()) => {}
        Err(e) => w.push(format!(
            "{e}; socket-killed, listener-closed, linger-abort and app-disconnect can't be told apart and show \
             as their fallback cause"
        )),
    }
    if let Err(e) = &p.egress {
        w.push(format!(
            "RSTs the TCP stack does not send (netfilter, raw sockets) will not be seen: {e}"
        ));
    }
    if let Err(e) = &p.kfree_skb {
        w.push(format!("silent drops will not be counted: {e}"));
    }
    if let Err(e) = &p.netns {
        w.push(format!("network namespaces will not be shown: {e}"));
    }
    w
}

/// One thing rsttrace reports, and how it sees it on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub what: &'static str,
    /// The hook (or source) in use; None when nothing can see it here.
    pub hook: Option<String>,
    /// What is lost, and what would bring it back; None when complete.
    pub lost: Option<String>,
}

/// A kernel or permission fact the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub name: &'static str,
    pub present: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub kernel: String,
    pub facts: Vec<Fact>,
    pub signals: Vec<Signal>,
    /// What the tracer attached.
    pub attached: Vec<Attached>,
}

/// What probing found, for the signals: each `Err` says why that part is
/// missing here.
/// The drop causes the kfree_skb program counts here, and the one this
/// kernel cannot name.
fn drop_reasons(probed: &Probed) -> String {
    let named: Vec<&str> = probed.drop_causes.iter().map(|c| c.name()).collect();
    let mut s = format!("drop reasons: {}", named.join(", "));
    if !probed
        .drop_causes
        .contains(&cause::DropCause::ListenOverflow)
    {
        s.push_str(
            "; no TCP_LISTEN_OVERFLOW reason on this kernel (6.18 has it): full accept queues \
             are not counted",
        );
    }
    s
}

#[derive(Debug, Clone)]
pub struct Probed {
    /// tcp_send_reset names the kernel's RST reason (6.10+).
    pub reason: bool,
    pub kprobes: bool,
    /// The offsets for reading packets at the egress hook.
    pub egress: Result<(), String>,
    /// RSTs a tc/tcx egress program made of a TCP stack's segment.
    pub bpf_egress: Result<(), String>,
    pub ksyms: Result<(), String>,
    /// Kernel functions of the stack rules that were not found.
    pub missing_functions: Vec<&'static str>,
    /// What naming the chains of rules older than the trace takes.
    pub nft: Result<(), String>,
    /// Following nftables changes over netlink (CAP_NET_ADMIN).
    pub netlink: bool,
    /// skb:kfree_skb's drop reasons (5.17+).
    pub kfree_skb: Result<(), String>,
    /// The drop causes in scope this kernel's reasons name.
    pub drop_causes: Vec<cause::DropCause>,
    /// `--cause` leaves silent drops in scope.
    pub drops_in_scope: bool,
    /// netfilter-reject-icmp in scope: the REJECT functions not in the
    /// kernel now, or why none can be told.
    pub reject_icmp: Option<Result<Vec<&'static str>, String>>,
    pub netns: Result<(), String>,
    /// Owners of other users' sockets (CAP_SYS_PTRACE).
    pub ptrace: bool,
    /// task_struct offsets: whether an actor was exiting.
    pub task: Result<(), String>,
    pub signal_generate: Result<(), String>,
    pub mark_victim: Result<(), String>,
}

impl Plan {
    /// The kernel and permission facts, as doctor lists them.
    pub fn for_kernel(f: &Facts) -> Self {
        let mut plan = Self {
            kernel: f.release.clone(),
            ..Self::default()
        };
        plan.fact("tracefs", true, f.tracefs.display().to_string());
        plan.fact(
            "kernel BTF",
            f.btf_present,
            if f.btf_present {
                "/sys/kernel/btf/vmlinux: struct offsets for the egress hook and namespaces"
            } else {
                "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)"
            },
        );
        plan.fact(
            "RST reason in tcp_send_reset",
            f.reason(),
            if f.reason() {
                format!(
                    "{} reasons named by the format file",
                    f.send_reset.reasons.len()
                )
            } else {
                "no reason field (kernels before 6.10)".to_string()
            },
        );
        plan.fact(
            "kprobes",
            f.kprobes,
            if f.kprobes {
                "available: used where tracepoints lack what rsttrace needs"
            } else {
                "not available on this kernel: no hook relies on them"
            },
        );
        plan.fact(
            "kernel symbols",
            f.ksyms.is_ok(),
            match &f.ksyms {
                Ok(_) => "/proc/kallsyms with addresses: kernel stacks can be read".to_string(),
                Err(e) => e.clone(),
            },
        );
        for (present, name, why) in [
            (
                f.caps.syslog,
                "CAP_SYSLOG",
                "kernel addresses in /proc/kallsyms",
            ),
            (
                f.caps.net_admin,
                "CAP_NET_ADMIN",
                "following nftables ruleset changes",
            ),
            (
                f.caps.sys_admin,
                "CAP_SYS_ADMIN",
                "entering other namespaces; mounting tracefs",
            ),
            (
                f.caps.ptrace,
                "CAP_SYS_PTRACE",
                "owners of other users' sockets",
            ),
        ] {
            plan.fact(name, present, why);
        }
        plan
    }

    pub fn fact(&mut self, name: &'static str, present: bool, detail: impl Into<String>) {
        self.facts.push(Fact {
            name,
            present,
            detail: detail.into(),
        });
    }

    pub fn seen(&mut self, what: &'static str, hook: impl Into<String>) {
        self.signals.push(Signal {
            what,
            hook: Some(hook.into()),
            lost: None,
        });
    }

    /// Seen, but not completely: `lost` says what is missing and why.
    pub fn partly(&mut self, what: &'static str, hook: impl Into<String>, lost: impl Into<String>) {
        self.signals.push(Signal {
            what,
            hook: Some(hook.into()),
            lost: Some(lost.into()),
        });
    }

    pub fn unseen(&mut self, what: &'static str, lost: impl Into<String>) {
        self.signals.push(Signal {
            what,
            hook: None,
            lost: Some(lost.into()),
        });
    }

    /// Each signal, told from what the tracer attached (`attached`) and
    /// what probing found; signals whose hooks the trace's scope leaves off
    /// (direction, `--cause`) are not listed.
    pub fn signals(&mut self, probed: &Probed, attached: &[Attached]) {
        self.attached = attached.to_vec();
        let find = |hook: Hook| attached.iter().find(|a| a.hook == hook);
        let send_reset = find(Hook::SendReset);
        let egress = find(Hook::NetDevQueue);
        if let Some(send_reset) = send_reset {
            let what = "RSTs sent by the TCP stack, cause from the kernel's reason";
            let no_full_socket =
                "RSTs for segments with no full socket: closed ports, time-wait, handshakes";
            let tp = send_reset.describe();
            if probed.reason {
                self.seen(what, format!("{tp} (reason field)"));
            } else if let Some(kprobes) = find(Hook::SendResetKprobes) {
                self.partly(
                    what,
                    format!("{tp} (full sockets, no reason field)"),
                    "this kernel gives no RST reason: causes come from the kernel stack and the \
                     socket's state, kernel_reason is null, and RSTs for segments that were \
                     invalid in the socket's state show as unknown. Kernel 6.10 or later names \
                     them",
                );
                self.seen(no_full_socket, kprobes.describe());
            } else {
                self.partly(
                    what,
                    format!("{tp} (no reason field)"),
                    "this kernel gives no RST reason: causes come from the kernel stack and the \
                     socket's state, kernel_reason is null",
                );
                self.unseen(
                    no_full_socket,
                    format!(
                        "this tracepoint skips them before 6.10 and {}: the egress hook counts \
                         them only as coverage (by_tcp_stack), not by cause",
                        if probed.kprobes {
                            "reading their segments needs kernel BTF"
                        } else {
                            "this kernel has no kprobes to take them"
                        }
                    ),
                );
            }
            let what = "socket-killed, listener-closed, linger-abort and app-disconnect told apart";
            let how = "kernel stack at tcp:tcp_send_reset, against /proc/kallsyms";
            match &probed.ksyms {
                Ok(()) if probed.missing_functions.is_empty() => self.seen(what, how),
                Ok(()) => self.partly(
                    what,
                    how,
                    format!(
                        "kernel functions not found: {}",
                        probed.missing_functions.join(", ")
                    ),
                ),
                Err(e) => self.unseen(what, format!("{e}: they show as their fallback cause")),
            }
            let what =
                "RSTs outside the TCP stack: netfilter REJECT, raw and packet sockets, modules";
            match (egress, &probed.ksyms) {
                (Some(hook), Ok(())) => self.seen(
                    what,
                    format!(
                        "{} (every device of every namespace) and the stack",
                        hook.describe()
                    ),
                ),
                (Some(hook), Err(e)) => self.partly(
                    what,
                    format!("{} (every device of every namespace)", hook.describe()),
                    format!("{e}: RSTs without a socket (netfilter, modules) show as unknown"),
                ),
                (None, _) => self.unseen(
                    what,
                    format!("{}: needs kernel BTF", why_not(&probed.egress)),
                ),
            }
        }
        if let Some(hook) = egress {
            let what = "RSTs a tc/tcx egress BPF program made of a full TCP socket's segment, \
                        the program named";
            match &probed.bpf_egress {
                // What no kernel lets the egress hook see (XDP_TX, AF_PACKET
                // with PACKET_QDISC_BYPASS) is in the README, not a gap of
                // this one.
                Ok(()) => self.seen(
                    what,
                    format!(
                        "{} on devices with egress programs (net_device's tcx_egress or \
                         miniq_egress set), the stack's own told apart by \
                         tcp_send_active_reset on the kernel stack; the program from netlink \
                         and BPF_PROG_QUERY",
                        hook.describe()
                    ),
                ),
                Err(e) => self.unseen(what, e.clone()),
            }
        }
        if egress.is_some() {
            let what = "netfilter hook, backend, table, chain, rule, set element, owner and \
                        author of a REJECT";
            let legacy = "iptables-legacy rules have no author: their changes are told to no one";
            let unsure = "a rule that depends on what rsttrace does not know (ct state, mark, \
                          interfaces, xt matches other than set, multiport, tcp and udp) is \
                          named as a candidate";
            let matched = "hook and backend from the kernel stack; the rule, its set element \
                           and owner by matching the answered segment against the namespace's \
                           nftables ruleset and iptables-legacy tables (IPT_SO_GET_ENTRIES), \
                           ipset members (--match-set) over ipset netlink, author of rules \
                           added while tracing over nftables netlink";
            let nft = find(Hook::NftKprobes);
            match (nft, probed.netlink) {
                (Some(kprobes), true) => self.partly(
                    what,
                    format!(
                        "{matched}; for rules older than the trace, the base chain confirmed \
                         by {}",
                        kprobes.describe()
                    ),
                    format!("{unsure}; {legacy}"),
                ),
                (None, true) => self.partly(
                    what,
                    matched,
                    format!(
                        "{unsure}; the base chain is not confirmed by the kernel ({}); {legacy}",
                        why_not(&probed.nft)
                    ),
                ),
                (_, false) => self.partly(
                    what,
                    "hook and backend from the kernel stack",
                    match nft {
                        Some(_) => "following nftables changes needs CAP_NET_ADMIN: no author, \
                                    and only the base chain of each rule is named"
                            .to_string(),
                        None => format!(
                            "table, chain and author are not named: following nftables changes \
                             needs CAP_NET_ADMIN, and for rules older than the trace, {}",
                            why_not(&probed.nft)
                        ),
                    },
                ),
            }
        }
        // Announced where RSTs sent are traced, as the other egress lines.
        if let (Some(reject_icmp), true) = (&probed.reject_icmp, send_reset.is_some()) {
            self.reject_icmp(reject_icmp, egress, &probed.egress);
        }
        let what = "silent drops (no RST sent)";
        match find(Hook::KfreeSkb) {
            Some(hook) => self.seen(
                what,
                format!("{} ({})", hook.describe(), drop_reasons(probed)),
            ),
            None if send_reset.is_some() && probed.drops_in_scope => match &probed.kfree_skb {
                Err(e) => self.unseen(what, e.clone()),
                // The drop program reads the dropped packet with the egress
                // offsets.
                Ok(()) => self.unseen(
                    what,
                    format!(
                        "reading the dropped packets needs the egress offsets: {}",
                        why_not(&probed.egress)
                    ),
                ),
            },
            None => {}
        }
        match &probed.netns {
            Ok(()) => self.seen(
                "network namespace of each RST",
                "BTF offsets of sock and sk_buff to their net",
            ),
            Err(e) => self.unseen(
                "network namespace of each RST",
                format!("{e}: netns is null, and --netns can't filter"),
            ),
        }
        let what = "actors: process, cgroup, container; owners of killed sockets";
        let how = "the task at the hook; /proc for socket owners";
        if probed.ptrace {
            self.seen(what, how);
        } else {
            self.partly(
                what,
                how,
                "owners of other users' sockets are not named (needs CAP_SYS_PTRACE)",
            );
        }
        if send_reset.is_some() {
            self.exits(probed, attached);
        }
        if let Some(hook) = find(Hook::ReceiveReset) {
            self.seen("RSTs received", hook.describe());
        }
    }

    /// netfilter-reject-icmp: ICMP errors a REJECT answers TCP with, told
    /// by the REJECT's function on the kernel stack at the egress hook.
    fn reject_icmp(
        &mut self,
        found: &Result<Vec<&'static str>, String>,
        egress: Option<&Attached>,
        egress_probed: &Result<(), String>,
    ) {
        let what = "ICMP errors a netfilter REJECT answers TCP segments with (netfilter-reject-icmp), \
                    per remote, named by rule and set as RST rejects are";
        let Some(hook) = egress else {
            self.unseen(what, format!("the egress hook: {}", why_not(egress_probed)));
            return;
        };
        let how = format!(
            "{}, the REJECT's function (nf_send_unreach, nft_reject_*_eval, reject_tg) on the \
             kernel stack",
            hook.describe()
        );
        match found {
            Ok(missing) if missing.len() == cause::EGRESS_ICMP_STACK_RULES.len() => self.unseen(
                what,
                "no REJECT function is in the kernel now (their modules load with the first \
                 reject rule): rejects of rules added after rsttrace started are not counted; \
                 start it again once the rules exist",
            ),
            Ok(missing) if !missing.is_empty() => self.partly(
                what,
                how,
                format!(
                    "REJECTs through functions whose module was not loaded when the trace \
                     started are not counted: {}",
                    missing.join(", ")
                ),
            ),
            Ok(_) => self.seen(what, how),
            Err(e) => self.unseen(what, format!("{e}: the REJECT can't be told on the stack")),
        }
    }

    /// The `exit` object of RSTs sent by an exiting process, and what
    /// this kernel lets it name.
    fn exits(&mut self, probed: &Probed, attached: &[Attached]) {
        let what = "exit: RSTs sent by exiting processes, their fatal signal, killer and OOM kills";
        let find = |hook: Hook| attached.iter().find(|a| a.hook == hook);
        if let Err(e) = &probed.task {
            self.unseen(
                what,
                format!("task_struct offsets are needed ({e}): exit is absent"),
            );
            return;
        }
        let flags = "PF_EXITING and exit code of the task at the RST hook";
        match (find(Hook::SignalGenerate), find(Hook::MarkVictim)) {
            (Some(sg), Some(mv)) => self.seen(
                what,
                format!(
                    "{flags}; killer from {}; OOM from {}",
                    sg.describe(),
                    mv.describe()
                ),
            ),
            (Some(sg), None) => self.partly(
                what,
                format!("{flags}; killer from {}", sg.describe()),
                format!("oom is always false: {}", why_not(&probed.mark_victim)),
            ),
            (None, _) => self.partly(
                what,
                flags,
                format!(
                    "killed_by is always null and oom false: {}",
                    why_not(&probed.signal_generate)
                ),
            ),
        }
    }

    /// The start-up line: hooks attached, and how many signals are not
    /// complete (doctor has the details).
    pub fn one_line(&self) -> String {
        let mut attached: Vec<&Attached> = self.attached.iter().collect();
        attached.sort_by_key(|a| a.hook);
        let mut hooks: Vec<String> = vec![];
        for a in attached {
            let point = a.point();
            if !hooks.contains(&point) {
                hooks.push(point);
            }
        }
        let gaps = self.signals.iter().filter(|s| s.lost.is_some()).count();
        let mut line = format!("attached to {} on {}", hooks.join(", "), self.kernel);
        if gaps > 0 {
            let _ = write!(
                line,
                " ({gaps} of {} signals incomplete here: `rsttrace doctor` says what and why)",
                self.signals.len()
            );
        }
        line
    }

    /// What `rsttrace doctor` prints.
    pub fn report(&self) -> String {
        let mut t = format!(
            "rsttrace plan for kernel {}\n\nKERNEL AND PERMISSIONS\n",
            self.kernel
        );
        for f in &self.facts {
            let mark = if f.present { "yes" } else { "no " };
            let _ = writeln!(t, "  {mark}  {:<28} {}", f.name, f.detail);
        }
        t.push_str("\nSIGNALS\n");
        for s in &self.signals {
            let mark = match (&s.hook, &s.lost) {
                (Some(_), None) => "ok     ",
                (Some(_), Some(_)) => "partial",
                (None, _) => "missing",
            };
            let _ = writeln!(t, "  {mark}  {}", s.what);
            if let Some(h) = &s.hook {
                let _ = writeln!(t, "           via {h}");
            }
            if let Some(l) = &s.lost {
                let _ = writeln!(t, "           lost: {l}");
            }
        }
        t
    }
}

/// Why a part is off: its probe's error. A probe that passed leaves only
/// the tracer's own choice (`Programs::decide`) to say it.
fn why_not(probed: &Result<(), String>) -> &str {
    match probed {
        Err(e) => e,
        Ok(()) => "not attached",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The five kernels of the matrix, from their real format files:
    /// (fixture, kprobes there) and what the plan must load on each.
    mod kernels {
        use clap::Parser as _;
        use tracer_common::{EgressOffsets, NetnsOffsets, SockAddrOffsets};

        use crate::{
            cli::Args,
            kernel::{Caps, Facts, format, offsets},
            loader::Programs,
            plan::decide,
        };

        fn fixture(kernel: &str, file: &str) -> String {
            let path = format!(
                "{}/tests/fixtures/{kernel}/{file}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        }

        fn tcp(kernel: &str, file: &str) -> format::SendResetFormat {
            format::Format::parse(&fixture(kernel, file))
                .and_then(|f| format::SendResetFormat::from_format(&f))
                .unwrap()
        }

        /// A kernel's facts as probing would find them, with or without
        /// BTF (its offsets are not in the fixtures: any value does).
        fn facts(kernel: &str, kprobes: bool, btf: bool) -> Facts {
            let from_btf = |o| {
                if btf {
                    Ok(o)
                } else {
                    Err("no BTF".to_string())
                }
            };
            Facts {
                release: kernel.into(),
                tracefs: "/sys/kernel/tracing".into(),
                send_reset: tcp(kernel, "tcp_send_reset"),
                receive_reset: Ok(tcp(kernel, "tcp_receive_reset").layout),
                kfree_skb: offsets::kfree_skb_from_format(&fixture(kernel, "kfree_skb")),
                btf_present: btf,
                egress: from_btf(EgressOffsets::UNSET),
                sock_addrs: if btf {
                    Ok(SockAddrOffsets::UNSET)
                } else {
                    Err("no BTF".into())
                },
                netns: if btf {
                    Ok(NetnsOffsets::UNSET)
                } else {
                    Err("no BTF".into())
                },
                nft: Err("nf_tables was not loaded".into()),
                ksyms: Err("no kernel symbols in a unit test".into()),
                kprobes,
                aya_btf: None,
                caps: Caps::default(),
                task: if btf {
                    Ok(tracer_common::TaskOffsets::UNSET)
                } else {
                    Err("no BTF".into())
                },
                // Only 6.18's are kept as fixtures; the fields have not
                // moved since 3.x (mark_victim's pid is first everywhere).
                signal_generate: offsets::signal_generate_from_format(&fixture(
                    "6.18",
                    "signal_generate",
                ))
                .map_err(|e| e.to_string()),
                mark_victim: offsets::mark_victim_from_format(&fixture("6.18", "mark_victim"))
                    .map_err(|e| e.to_string()),
            }
        }

        fn programs(f: &Facts, argv: &[&str]) -> Programs {
            let args = Args::parse_from(std::iter::once("rsttrace").chain(argv.iter().copied()));
            let scope = crate::scope::build("all", &[], &[], &args.cause).unwrap();
            Programs::decide(&decide(f, &args, &scope).unwrap().load)
        }

        #[test]
        fn each_kernel_of_the_matrix_gets_its_programs() {
            // (kernel, kprobes, kprobes for RSTs without a full socket,
            // drops counted)
            for (kernel, kprobes, kprobe_resets, drops) in [
                ("5.10", true, true, false),
                ("6.1", true, true, true),
                ("6.12", true, false, true),
                ("6.18", false, false, true),
                ("7.2", true, false, true),
            ] {
                let p = programs(&facts(kernel, kprobes, true), &[]);
                assert!(p.send_reset && p.egress, "{kernel}: {p:?}");
                assert_eq!(p.kprobe_resets, kprobe_resets, "{kernel}: {p:?}");
                assert_eq!(p.drops, drops, "{kernel}: {p:?}");
                assert!(!p.receive_reset, "{kernel}: {p:?}");
            }
        }

        #[test]
        fn without_btf_only_the_tcp_stack_is_seen_and_said() {
            for kernel in ["5.10", "6.1", "6.12", "6.18", "7.2"] {
                let f = facts(kernel, true, false);
                let p = programs(&f, &[]);
                assert!(
                    p.send_reset && !p.egress && !p.drops && !p.kprobe_resets,
                    "{p:?}"
                );
                let args = Args::parse_from(["rsttrace"]);
                let scope = crate::scope::build("all", &[], &[], &[]).unwrap();
                let w = decide(&f, &args, &scope).unwrap().warnings;
                assert!(
                    w.iter()
                        .any(|w| w.starts_with("RSTs the TCP stack does not send")),
                    "{kernel}: {w:?}"
                );
            }
        }

        #[test]
        fn scope_and_direction_decide_the_rest() {
            let f = facts("6.18", false, true);
            let p = programs(&f, &["--cause", "closed-port"]);
            assert!(p.send_reset && p.egress && !p.drops, "{p:?}");
            let p = programs(&f, &["--direction", "in"]);
            assert!(
                !p.send_reset && !p.egress && !p.drops && p.receive_reset,
                "{p:?}"
            );
            let p = programs(&f, &["--direction", "both"]);
            assert!(
                p.send_reset && p.egress && p.drops && p.receive_reset,
                "{p:?}"
            );
        }
    }

    use crate::loader::Variant;

    #[test]
    fn one_line_names_what_was_attached_and_counts_gaps() {
        let mut p = Plan {
            kernel: "6.1.0-test".into(),
            // In attach order: the line keeps its own.
            attached: vec![
                Attached::new(Hook::SendReset, Variant::Classic),
                Attached::new(Hook::NetDevQueue, Variant::Btf),
                Attached::new(Hook::ReceiveReset, Variant::Classic),
                Attached {
                    functions: vec!["tcp_v4_send_reset", "tcp_v6_send_reset"],
                    ..Attached::new(Hook::SendResetKprobes, Variant::Kprobe)
                },
            ],
            ..Plan::default()
        };
        p.partly(
            "TCP stack RSTs",
            "tracepoint tcp:tcp_send_reset",
            "no reason",
        );
        // A hook named in a signal's prose is not thereby attached.
        p.seen("netfilter drops", "raw tracepoint skb:kfree_skb");
        p.unseen("netns", "no BTF");
        assert_eq!(
            p.one_line(),
            "attached to tcp:tcp_send_reset, kprobes on tcp_v4_send_reset/tcp_v6_send_reset, \
             net_dev_queue, tcp:tcp_receive_reset on 6.1.0-test (2 of 3 signals incomplete \
             here: `rsttrace doctor` says what and why)"
        );
        let r = p.report();
        assert!(r.contains("partial  TCP stack RSTs\n"), "{r}");
        assert!(r.contains("missing  netns\n           lost: no BTF"), "{r}");
    }

    /// This host's probes: 6.10+, no kprobes, BTF, root.
    fn probed() -> Probed {
        Probed {
            reason: true,
            kprobes: false,
            egress: Ok(()),
            bpf_egress: Ok(()),
            ksyms: Ok(()),
            missing_functions: vec![],
            nft: Err("naming them needs kprobes, absent here".into()),
            netlink: true,
            kfree_skb: Ok(()),
            // Those of the kfree_skb reasons (an ICMP reject has none).
            drop_causes: cause::DropCause::ALL
                .into_iter()
                .filter(|c| *c != cause::DropCause::NetfilterRejectIcmp)
                .collect(),
            drops_in_scope: true,
            reject_icmp: Some(Ok(vec![])),
            netns: Ok(()),
            ptrace: true,
            task: Ok(()),
            signal_generate: Ok(()),
            mark_victim: Ok(()),
        }
    }

    fn told(probed: &Probed, attached: &[Attached]) -> Plan {
        let mut p = Plan {
            kernel: "6.18-test".into(),
            ..Plan::default()
        };
        p.signals(probed, attached);
        p
    }

    const DROPS: &str = "silent drops (no RST sent)";

    #[test]
    fn exits_say_what_a_kernel_cannot_name() {
        let send_reset = [Attached::new(Hook::SendReset, Variant::Btf)];
        let exits = |p: &Plan| {
            p.signals
                .iter()
                .find(|s| s.what.starts_with("exit:"))
                .cloned()
                .unwrap()
        };
        let no_oom = Probed {
            mark_victim: Err("this kernel has no oom:mark_victim tracepoint".into()),
            ..probed()
        };
        let with_signals = [
            send_reset[0].clone(),
            Attached::new(Hook::SignalGenerate, Variant::Raw),
        ];
        let s = exits(&told(&no_oom, &with_signals));
        assert_eq!(
            s.lost.as_deref(),
            Some("oom is always false: this kernel has no oom:mark_victim tracepoint")
        );
        let no_btf = Probed {
            task: Err("no BTF".into()),
            ..probed()
        };
        let s = exits(&told(&no_btf, &send_reset));
        assert_eq!(s.hook, None);
        assert!(s.lost.unwrap().contains("exit is absent"));
    }

    #[test]
    fn signals_follow_what_was_attached() {
        let all = [
            Attached::new(Hook::SendReset, Variant::Btf),
            Attached::new(Hook::NetDevQueue, Variant::Btf),
            Attached::new(Hook::KfreeSkb, Variant::Classic),
            Attached::new(Hook::ReceiveReset, Variant::Classic),
            Attached::new(Hook::SignalGenerate, Variant::Raw),
            Attached::new(Hook::MarkVictim, Variant::Classic),
        ];
        let p = told(&probed(), &all);
        assert_eq!(
            p.one_line(),
            "attached to tcp:tcp_send_reset, net_dev_queue, skb:kfree_skb, \
             tcp:tcp_receive_reset, signal:signal_generate, oom:mark_victim on 6.18-test (1 of \
             11 signals incomplete here: `rsttrace doctor` says what and why)"
        );
        assert!(
            p.report().contains(
                "killer from raw tracepoint signal:signal_generate; OOM from tracepoint \
                 oom:mark_victim"
            ),
            "{}",
            p.report()
        );
        let r = p.report();
        // The kind each program was attached as, not the one expected.
        assert!(
            r.contains(
                "via tracepoint skb:kfree_skb (drop reasons: netfilter-drop, tc-drop, \
                 xdp-drop, cgroup-drop, listen-overflow)"
            ),
            "{r}"
        );
        assert!(
            r.contains("via BTF tracepoint tcp:tcp_send_reset (reason field)"),
            "{r}"
        );
    }

    /// A kernel without TCP_LISTEN_OVERFLOW (6.1, 6.12): doctor names the
    /// drop causes it counts and says full accept queues are not counted.
    #[test]
    fn drops_name_the_causes_this_kernel_counts() {
        use cause::DropCause as D;
        let probed = Probed {
            drop_causes: vec![D::NetfilterDrop, D::TcDrop, D::XdpDrop, D::CgroupDrop],
            ..probed()
        };
        let p = told(&probed, &[Attached::new(Hook::KfreeSkb, Variant::Raw)]);
        let drops = p.signals.iter().find(|s| s.what == DROPS).unwrap();
        let hook = drops.hook.as_deref().unwrap();
        assert!(
            hook.contains("drop reasons: netfilter-drop, tc-drop, xdp-drop, cgroup-drop; no TCP_LISTEN_OVERFLOW"),
            "{hook}"
        );
        assert!(
            hook.contains("full accept queues are not counted"),
            "{hook}"
        );
    }

    /// ICMP rejects: counted at the egress hook; the REJECT functions not
    /// in the kernel at start are named, and with none of them nothing is
    /// counted.
    #[test]
    fn icmp_rejects_say_which_reject_functions_count() {
        const WHAT: &str = "ICMP errors a netfilter REJECT answers";
        let attached = [
            Attached::new(Hook::SendReset, Variant::Btf),
            Attached::new(Hook::NetDevQueue, Variant::Btf),
        ];
        let line = |probed: &Probed| {
            told(probed, &attached)
                .signals
                .into_iter()
                .find(|s| s.what.starts_with(WHAT))
        };
        let some = line(&Probed {
            reject_icmp: Some(Ok(vec!["nft_reject_bridge_eval"])),
            ..probed()
        })
        .unwrap();
        assert!(some.hook.unwrap().contains("net_dev_queue"));
        assert!(some.lost.unwrap().ends_with(": nft_reject_bridge_eval"));
        let all = line(&Probed {
            reject_icmp: Some(Ok(vec![])),
            ..probed()
        })
        .unwrap();
        assert!(all.hook.is_some() && all.lost.is_none(), "{all:?}");
        let none = line(&Probed {
            reject_icmp: Some(Ok(cause::EGRESS_ICMP_STACK_RULES.to_vec())),
            ..probed()
        })
        .unwrap();
        assert!(none.hook.is_none(), "{none:?}");
        let out_of_scope = Probed {
            reject_icmp: None,
            ..probed()
        };
        assert!(line(&out_of_scope).is_none());
        // Without the egress hook, nothing is counted; without RSTs sent,
        // nothing is said.
        let p = told(&probed(), &attached[..1]);
        let no_egress = p.signals.iter().find(|s| s.what.starts_with(WHAT)).unwrap();
        assert!(no_egress.hook.is_none(), "{no_egress:?}");
        let received = Attached::new(Hook::ReceiveReset, Variant::Btf);
        let p = told(&probed(), &[received]);
        assert!(!p.signals.iter().any(|s| s.what.starts_with(WHAT)));
    }

    /// `--cause` without netfilter-drop: the drop program stays off, and
    /// neither the line nor doctor names it.
    #[test]
    fn drops_out_of_scope_are_not_announced() {
        let probed = Probed {
            drops_in_scope: false,
            ..probed()
        };
        let p = told(
            &probed,
            &[
                Attached::new(Hook::SendReset, Variant::Btf),
                Attached::new(Hook::NetDevQueue, Variant::Btf),
            ],
        );
        assert!(!p.one_line().contains("kfree_skb"), "{}", p.one_line());
        assert!(!p.report().contains("kfree_skb"), "{}", p.report());
        assert!(p.signals.iter().all(|s| s.what != DROPS), "{}", p.report());
    }

    /// A kernel whose net_device has no egress pointer: doctor says RSTs a
    /// program made are not seen, and why.
    #[test]
    fn rsts_of_egress_programs_unseen_say_why() {
        let probed = Probed {
            bpf_egress: Err("net_device has neither tcx_egress nor miniq_egress".into()),
            ..probed()
        };
        let p = told(&probed, &[Attached::new(Hook::NetDevQueue, Variant::Btf)]);
        let s = p
            .signals
            .iter()
            .find(|s| s.what.starts_with("RSTs a tc/tcx egress BPF program"))
            .unwrap();
        assert_eq!(s.hook, None);
        assert!(
            s.lost.as_deref().unwrap().contains("miniq_egress"),
            "{}",
            p.report()
        );
    }

    /// No kernel BTF: no egress offsets, so no drop program either, though
    /// kfree_skb has its NETFILTER_DROP reason.
    #[test]
    fn drops_without_egress_offsets_are_missing() {
        let probed = Probed {
            egress: Err("no /sys/kernel/btf/vmlinux".into()),
            ..probed()
        };
        let p = told(&probed, &[Attached::new(Hook::SendReset, Variant::Classic)]);
        assert!(
            p.one_line()
                .starts_with("attached to tcp:tcp_send_reset on 6.18-test ("),
            "{}",
            p.one_line()
        );
        let drops = p.signals.iter().find(|s| s.what == DROPS).unwrap();
        assert_eq!(drops.hook, None);
        assert!(
            drops
                .lost
                .as_ref()
                .unwrap()
                .contains("no /sys/kernel/btf/vmlinux"),
            "{drops:?}"
        );
        let outside = p
            .signals
            .iter()
            .find(|s| s.what.starts_with("RSTs outside the TCP stack"))
            .unwrap();
        assert_eq!(outside.hook, None);
        assert!(
            p.signals
                .iter()
                .all(|s| !s.what.starts_with("netfilter hook")),
            "{}",
            p.report()
        );
    }

    /// `--direction in`: only what is received is traced and announced.
    #[test]
    fn received_only_announces_no_hook_for_sent_rsts() {
        let p = told(
            &probed(),
            &[Attached::new(Hook::ReceiveReset, Variant::Classic)],
        );
        assert_eq!(
            p.one_line(),
            "attached to tcp:tcp_receive_reset on 6.18-test"
        );
        let r = p.report();
        for hook in ["tcp_send_reset", "net_dev_queue", "kfree_skb"] {
            assert!(!r.contains(hook), "{hook}: {r}");
        }
    }

    #[test]
    fn before_6_10_kprobes_take_segments_without_a_socket() {
        let probed = Probed {
            reason: false,
            kprobes: true,
            ..probed()
        };
        let kprobes = Attached {
            functions: vec!["tcp_v4_send_reset", "tcp_v6_send_reset"],
            ..Attached::new(Hook::SendResetKprobes, Variant::Kprobe)
        };
        let send_reset = Attached::new(Hook::SendReset, Variant::Classic);
        let r = told(&probed, &[send_reset.clone(), kprobes]).report();
        assert!(
            r.contains("ok       RSTs for segments with no full socket")
                && r.contains("via kprobes on tcp_v4_send_reset/tcp_v6_send_reset"),
            "{r}"
        );
        // Loaded without them (no BTF to read the segment): said missing.
        let r = told(&probed, &[send_reset]).report();
        assert!(
            r.contains("missing  RSTs for segments with no full socket"),
            "{r}"
        );
    }
}
