//! rsttrace: attributes every TCP RST this host sends to the kernel path
//! that produced it, and aggregates per remote IP.

mod attribution;
mod cli;
mod clock;
#[cfg(test)]
mod fuzz;
mod kernel;
mod loader;
mod logging;
mod output;
mod plan;
mod report;
mod scope;
mod untrusted;

use attribution::{agents, cause, decode as event, nftmon};
use kernel::{btf, format as kfmt, ksyms, preflight};
use loader as tracer;
use output::metrics;
use report::{diagnosis, summary};

use std::{
    io::{self, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracer_common::{RstEvent, stat};

use crate::{
    attribution::actor::ActorResolver, attribution::decode::Decoder, cli::Args, clock::BootClock,
    kernel::format::Format, kernel::format::SendResetFormat, output::Sink,
    report::diagnosis::ActorTally,
};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let args = Args::parse();
    logging::init(0);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rsttrace: can't start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rsttrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> Result<()> {
    let doctor = matches!(args.command, Some(cli::Command::Doctor));
    if doctor {
        // Probe every hook, print nothing per RST.
        args.direction = cli::Direction::Both;
        args.summary_only = true;
        args.pcap = None;
        args.metrics = None;
    }
    preflight::check_capabilities()?;
    let scope = scope::build(&args.netns, &args.remote, &args.local_port, &args.cause)?;
    let tracefs = preflight::tracefs()?;
    preflight::check_perf_paranoid()?;
    let text = preflight::tracepoint_format(&tracefs, "tcp", "tcp_send_reset")?;
    let fmt = Format::parse(&text)
        .and_then(|f| SendResetFormat::from_format(&f))
        .context("reading the tcp:tcp_send_reset format file")?;
    let reason_causes = cause::reason_table(&fmt.reasons);
    let mut plan = plan::Plan::new();
    plan.fact("tracefs", true, tracefs.display().to_string());
    let btf_present = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    plan.fact(
        "kernel BTF",
        btf_present,
        if btf_present {
            "/sys/kernel/btf/vmlinux: struct offsets for the egress hook and namespaces"
        } else {
            "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)"
        },
    );
    let reason = !fmt.reasons.is_empty();
    plan.fact(
        "RST reason in tcp_send_reset",
        reason,
        if reason {
            format!("{} reasons named by the format file", fmt.reasons.len())
        } else {
            "no reason field (kernels before 6.10)".to_string()
        },
    );
    let kprobes = plan::kprobes_available();
    plan.fact(
        "kprobes",
        kprobes,
        if kprobes {
            "available: used where tracepoints lack what rsttrace needs"
        } else {
            "not available on this kernel: no hook relies on them"
        },
    );
    let ksyms = ksyms::Kallsyms::load();
    plan.fact(
        "kernel symbols",
        ksyms.is_ok(),
        match &ksyms {
            Ok(_) => "/proc/kallsyms with addresses: kernel stacks can be read".to_string(),
            Err(e) => format!("{e:#}"),
        },
    );
    for (cap, name, why) in [
        (
            preflight::CAP_SYSLOG,
            "CAP_SYSLOG",
            "kernel addresses in /proc/kallsyms",
        ),
        (
            preflight::CAP_NET_ADMIN,
            "CAP_NET_ADMIN",
            "following nftables ruleset changes",
        ),
        (
            preflight::CAP_SYS_ADMIN,
            "CAP_SYS_ADMIN",
            "entering other namespaces; mounting tracefs",
        ),
        (
            preflight::CAP_SYS_PTRACE,
            "CAP_SYS_PTRACE",
            "owners of other users' sockets",
        ),
    ] {
        plan.fact(name, preflight::has_cap(cap), why);
    }

    // Read and parsed once: every offset set, the loader and the BTF
    // tracepoints use it.
    let (mut kernel_btf, aya_btf) = btf::load_vmlinux();
    let nft = if !kprobes {
        Err(anyhow::anyhow!("naming them needs kprobes, absent here"))
    } else if !args.direction.sent() {
        Err(anyhow::anyhow!("only RSTs sent are traced"))
    } else {
        nft_plan(&mut kernel_btf, &ksyms)
    };
    let from_btf = || kernel_btf.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"));
    let egress = from_btf().and_then(egress_offsets);
    let sock_addrs = from_btf().and_then(|b| sock_addr_offsets(b, &fmt.layout));
    let netns = from_btf().and_then(netns_offsets);
    let egress_rules = match &ksyms {
        Ok(k) => cause::resolve_egress_rules(k).0,
        Err(_) => tracer_common::StackRules::EMPTY,
    };
    let mut missing_functions = vec![];
    let stack_rules = match &ksyms {
        Ok(k) => {
            let (rules, missing) = if reason {
                cause::resolve_stack_rules(k)
            } else {
                cause::resolve_reasonless_rules(k)
            };
            if !missing.is_empty() {
                eprintln!(
                    "rsttrace: warning: kernel functions not found: {}; their stack rules are off",
                    missing.join(", ")
                );
            }
            missing_functions = missing;
            rules
        }
        Err(e) => {
            eprintln!(
                "rsttrace: warning: {e:#}; socket-killed, linger-abort and app-disconnect \
                 can't be told apart and show as their fallback cause"
            );
            tracer_common::StackRules::EMPTY
        }
    };
    if let Err(e) = &egress {
        eprintln!(
            "rsttrace: warning: RSTs the TCP stack does not send (netfilter, raw sockets) \
             will not be seen: {e:#}"
        );
    }
    let kfree_skb = kfree_skb_layout(&tracefs);
    if let Err(e) = &kfree_skb {
        eprintln!("rsttrace: warning: netfilter drops will not be counted: {e}");
    }
    if let Err(e) = &netns {
        eprintln!("rsttrace: warning: network namespaces will not be shown: {e:#}");
    }
    let probed = plan::Probed {
        reason,
        kprobes,
        egress: why_not(&egress),
        ksyms: why_not(&ksyms),
        missing_functions,
        nft: why_not(&nft),
        netlink: preflight::has_cap(preflight::CAP_NET_ADMIN),
        kfree_skb: kfree_skb.as_ref().map(drop).map_err(Clone::clone),
        drops_in_scope: scope.drops,
        netns: why_not(&netns),
        ptrace: preflight::has_cap(preflight::CAP_SYS_PTRACE),
    };
    preflight::raise_memlock_limit()?;

    let mut tracer = tracer::Tracer::load(&tracer::Options {
        send_reset: fmt.layout,
        sock_addrs: sock_addrs.ok(),
        reason_causes: &reason_causes,
        stack_rules,
        netns: netns.unwrap_or(tracer_common::NetnsOffsets::UNSET),
        egress: egress.ok().map(|o| (o, egress_rules)),
        kfree_skb: kfree_skb.unwrap_or(tracer_common::KfreeSkbLayout::UNSET),
        emit_events: !args.summary_only || args.pcap.is_some(),
        events_per_sec: events_per_sec(&args),
        max_remote_ips: args.max_remote_ips,
        ring_size: args.ring_size,
        scope: &scope,
        sent: args.direction.sent(),
        kprobes,
        nft: nft.ok(),
        bench_empty: bench_empty(args.debug_empty_programs),
        btf: aya_btf.as_ref(),
        no_tp_btf: args.debug_no_tp_btf,
        receive_reset: if args.direction.received() {
            let text = preflight::tracepoint_format(&tracefs, "tcp", "tcp_receive_reset")?;
            let f = Format::parse(&text)
                .and_then(|f| SendResetFormat::from_format(&f))
                .context("reading the tcp:tcp_receive_reset format file")?;
            Some(f.layout)
        } else {
            None
        },
    })?;
    let events = tracer.take_events()?;
    // SAFETY: the ring buffer owns its fd, which stays open as long as the
    // AsyncFd that owns the ring buffer.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    // Ruleset authors: follow nftables changes before the first RST.
    let ruleset = nftmon::SharedLog::default();
    let mut monitors = nftmon::Monitors::default();
    for w in monitors.rescan(&ruleset) {
        eprintln!("rsttrace: warning: nftables ruleset changes will not be followed: {w}");
    }
    // Before attaching: a file that can't be written is a start-up error.
    let pcap = match &args.pcap {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("--pcap: can't create {}", path.display()))?;
            let pcap = output::Pcap::new(Box::new(io::BufWriter::new(file)))
                .with_context(|| format!("--pcap: can't write {}", path.display()))?;
            Some(pcap)
        }
        None => None,
    };
    // Before attaching: an address in use is a start-up error, not a
    // surprise after the trace began.
    let mut scrapes = match args.metrics {
        Some(addr) => Some(metrics::serve(addr).await?),
        None => None,
    };
    let shape = metrics::Shape {
        sent: args.direction.sent(),
        received: args.direction.received(),
        top: args.metrics_remote_ips as usize,
    };
    // Before attaching: a SIGINT that arrives once "attached" is printed
    // must stop the trace cleanly, not kill it.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut bench_toggle = BenchToggle::new(args.debug_toggle_signals)?;
    let attached = tracer.attach(aya_btf.as_ref())?;
    let started = Instant::now();
    plan.signals(&probed, &attached);
    let hooks = tracer.btf_hooks();
    if !hooks.used.is_empty() || !hooks.refused.is_empty() || !hooks.avoided.is_empty() {
        plan.fact(
            "BTF tracepoints (tp_btf)",
            hooks.refused.is_empty(),
            btf_fact(hooks),
        );
    }
    let clock = BootClock::new();
    if doctor {
        tracer.detach()?;
        // No hook needs fentry/fexit; the fact says whether a future one
        // could use them here.
        let fentry = tracer.probe_fentry(aya_btf.as_ref());
        plan.fact(
            "fentry/fexit",
            fentry.is_ok(),
            match &fentry {
                Ok(()) => {
                    "attach here; no hook needs them (tracepoints and kprobes serve)".to_string()
                }
                Err(e) => format!(
                    "not usable here ({}); no hook needs them",
                    tracer::first_line(e)
                ),
            },
        );
        plan.fact(
            "kernel stack traces",
            true,
            "the stack map and bpf_get_stack loaded with the programs: stack rules work",
        );
        print!("{}", plan.report());
        return Ok(());
    }
    // The plan in one line: what is watched, and what is not.
    eprintln!(
        "rsttrace: {}; {}",
        plan.one_line(),
        match args.duration {
            Some(d) => format!("tracing for {}", humantime::format_duration(d)),
            None => "stop with Ctrl-C".to_string(),
        }
    );

    let stdout: Box<dyn Write> = Box::new(io::BufWriter::new(io::stdout()));
    let mut sink = output::new_sink(args.output, stdout, args.rate, args.top);
    if args.summary_only {
        sink = Box::new(output::SummaryOnly(sink));
    }
    if let Some(pcap) = pcap {
        sink = Box::new(output::Tee(vec![sink, Box::new(pcap)]));
    }
    let mut decoder = Decoder {
        ruleset: ruleset.clone(),
        clock,
        reasons: fmt.reasons.clone(),
        actors: ActorResolver::new(agents::Agents::new(args.agent.clone())),
        ksyms: ksyms.ok(),
    };

    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel wakes us only for batches; this picks up single events.
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut output_ok = true;
    let mut tally = ActorTally::default();
    let mut lost_noted = false;
    let mut skipped_noted = false;
    let mut unsent = Unsent::default();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            attach = bench_toggle.recv() => {
                // `cargo xtask bench` waits for these lines.
                if attach {
                    tracer.unpark()?;
                    eprintln!("rsttrace: bench: attached again");
                } else {
                    tracer.park()?;
                    eprintln!("rsttrace: bench: detached");
                }
            }
            _ = &mut deadline => break,
            _ = tick.tick() => {
                // Namespaces created while tracing get a ruleset monitor.
                for w in monitors.rescan(&ruleset) {
                    eprintln!("rsttrace: warning: nftables ruleset changes: {w}");
                }
                let stats = tracer.stat_slots();
                // Said once, not per event: the summary has the number.
                if !lost_noted
                    && (!args.summary_only || args.pcap.is_some())
                    && stats.get(stat::LOST_EVENTS) > 0
                {
                    lost_noted = true;
                    eprintln!(
                        "rsttrace: the event ring buffer overflowed: some RSTs are not shown \
                         live; every count stays exact (see lost in the summary; --ring-size)"
                    );
                }
                if !skipped_noted && !tracer.skipped_runs().is_empty() {
                    skipped_noted = true;
                    eprintln!(
                        "rsttrace: warning: the kernel skipped some runs of rsttrace's programs \
                         (a BPF program was already running on that CPU): counts may be short \
                         (see skipped_runs in the summary)"
                    );
                }
                unsent.report(tracer.unsent(), sink.as_mut());
                if let Err(e) = sink.tick() { output_ok = stop_on_output_error(e)?; break; }
            }
            Some(reply) = next_scrape(&mut scrapes) => {
                let counts = counts(&tracer, &decoder, started.elapsed())?;
                let _ = reply.send(metrics::encode(&counts, shape));
            }
            _ = poll.tick() => {
                if let Err(e) = drain(events.get_mut(), &tracer, &mut decoder, &mut tally, sink.as_mut()) {
                    output_ok = stop_on_output_error(e)?;
                    break;
                }
            }
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                if let Err(e) = drain(guard.get_inner_mut(), &tracer, &mut decoder, &mut tally, sink.as_mut()) {
                    output_ok = stop_on_output_error(e)?;
                    break;
                }
                guard.clear_ready();
            }
        }
    }

    // Detach before the final drain so every counted RST is either shown
    // or reported as lost.
    tracer.detach()?;
    if output_ok
        && let Err(e) = drain(
            events.get_mut(),
            &tracer,
            &mut decoder,
            &mut tally,
            sink.as_mut(),
        )
    {
        output_ok = stop_on_output_error(e)?;
    }
    unsent.report(tracer.unsent(), sink.as_mut());
    let mut summary = counts(&tracer, &decoder, started.elapsed())?;
    for d in &mut summary.drops {
        d.author = d
            .netns
            .iter()
            .find_map(|ns| decoder.rule_author(*ns, nftmon::Verdict::Drop));
    }
    if let Ok(log) = ruleset.lock() {
        summary.ruleset_changes = log.generations.clone();
    }
    for r in &mut summary.by_remote_ip {
        r.diagnosis = Some(diagnosis::diagnose(r, &tally));
    }
    if output_ok && let Err(e) = sink.summary(&summary) {
        stop_on_output_error(e)?;
    }
    Ok(())
}

/// A probe's outcome as the plan needs it: only why it failed.
fn why_not<T>(probe: &Result<T>) -> Result<(), String> {
    probe.as_ref().map(drop).map_err(|e| format!("{e:#}"))
}

/// Every count, from the kernel's maps: what the summary and the metrics
/// report.
fn counts(
    tracer: &tracer::Tracer,
    decoder: &Decoder,
    duration: Duration,
) -> Result<summary::Summary> {
    let stats = tracer.stats()?;
    let mut summary = summary::build(&stats, tracer.remotes()?, &decoder.clock, duration);
    (summary.received, summary.received_total) =
        summary::build_received(&stats, tracer.received()?, &decoder.clock);
    summary.drops = summary::build_drops(tracer.drops()?, &decoder.clock, |loc| {
        event::symbolize_function(decoder.ksyms.as_ref(), loc)
    });
    summary.skipped_runs = tracer.skipped_runs();
    Ok(summary)
}

async fn next_scrape(
    scrapes: &mut Option<tokio::sync::mpsc::Receiver<metrics::Scrape>>,
) -> Option<metrics::Scrape> {
    match scrapes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Where netfilter drops show on this kernel, or why they can't be told
/// apart.
fn kfree_skb_layout(tracefs: &std::path::Path) -> Result<tracer_common::KfreeSkbLayout, String> {
    let layout = preflight::tracepoint_format(tracefs, "skb", "kfree_skb")
        .and_then(|t| Format::parse(&t))
        .and_then(|f| kfmt::kfree_skb_layout(&f));
    match layout {
        Ok(l) if l.netfilter_drop != tracer_common::ABSENT => Ok(l),
        Ok(_) => Err(
            "this kernel's skb:kfree_skb has no NETFILTER_DROP reason (5.17 or later \
                      has it): silent netfilter drops can't be told from other drops"
                .into(),
        ),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Offsets for reading outgoing packets at the egress hook; without them
/// only the TCP stack's RSTs are seen, and rsttrace says so.
fn egress_offsets(b: &btf::Btf) -> Result<tracer_common::EgressOffsets> {
    let m = |s: &str, p: &[&str], size: u32| b.offset(s, p, size);
    let (head, nh, proto) = (
        m("sk_buff", &["head"], 8)?,
        m("sk_buff", &["network_header"], 2)?,
        m("sk_buff", &["protocol"], 2)?,
    );
    // One read for the three when they sit together after `protocol`.
    let block = nh > proto
        && head > proto
        && head + 8 - proto <= tracer_common::SKB_BLOCK
        && nh + 2 - proto <= tracer_common::SKB_BLOCK;
    Ok(tracer_common::EgressOffsets {
        skb_sk: m("sk_buff", &["sk"], 8)?,
        skb_head: head,
        skb_network_header: nh,
        skb_protocol: proto,
        skb_block: u32::from(block),
        sk_family: m("sock", &["__sk_common", "skc_family"], 2)?,
        sk_state: m("sock", &["__sk_common", "skc_state"], 1)?,
        sk_type: m("sock", &["sk_type"], 2)?,
        sk_protocol: m("sock", &["sk_protocol"], 2)?,
        sk_socket: m("sock", &["sk_socket"], 8)?,
        socket_file: m("socket", &["file"], 8)?,
        skb_iif: m("sk_buff", &["skb_iif"], 4)?,
        socket_ino: {
            let sock = b.member("socket_alloc", &["socket"])?.offset;
            let inode = b.member("socket_alloc", &["vfs_inode"])?.offset;
            let ino = m("inode", &["i_ino"], 8)?;
            anyhow::ensure!(inode > sock, "socket_alloc has its inode first");
            inode - sock + ino
        },
    })
}

/// What doctor says about the BTF builds of the hot programs.
fn btf_fact(hooks: &tracer::BtfHooks) -> String {
    let mut parts = vec![];
    if !hooks.used.is_empty() {
        parts.push(format!(
            "{} read kernel structures with plain loads, no record built",
            hooks.used.join(" and ")
        ));
    }
    for (tp, why) in &hooks.refused {
        parts.push(format!(
            "{tp} refused ({why}): its classic or raw build runs, at a higher cost per event"
        ));
    }
    // One reason keeps them classic so far: named once.
    let mut whys: Vec<&str> = hooks.avoided.iter().map(|(_, why)| *why).collect();
    whys.dedup();
    for why in whys {
        let tps: Vec<&str> = hooks
            .avoided
            .iter()
            .filter(|(_, w)| *w == why)
            .map(|(tp, _)| *tp)
            .collect();
        let stay = if tps.len() == 1 {
            "stays a classic tracepoint"
        } else {
            "stay classic tracepoints"
        };
        parts.push(format!("{} {stay} ({why})", tps.join(" and ")));
    }
    parts.join("; ")
}

/// Where a socket keeps its endpoints, for the BTF build of the
/// tcp_send_reset program; its arguments follow the record's reason field.
fn sock_addr_offsets(
    b: &btf::Btf,
    layout: &tracer_common::SendResetLayout,
) -> Result<tracer_common::SockAddrOffsets> {
    let m = |name: &str, size: u32| b.offset("sock", &["__sk_common", name], size);
    // Kernels without IPv6 have no v6 fields: IPv4 still works.
    let v6 = |name: &str| m(name, 16).unwrap_or(tracer_common::ABSENT);
    Ok(tracer_common::SockAddrOffsets {
        rcv_saddr: m("skc_rcv_saddr", 4)?,
        daddr: m("skc_daddr", 4)?,
        sport: b.offset("inet_sock", &["inet_sport"], 2)?,
        dport: m("skc_dport", 2)?,
        v6_rcv_saddr: v6("skc_v6_rcv_saddr"),
        v6_daddr: v6("skc_v6_daddr"),
        reason_arg: u32::from(layout.reason != tracer_common::ABSENT),
    })
}

/// What naming the chain of a REJECT rule older than the trace takes:
/// nf_tables loaded (its module's BTF, nft_do_chain) and a reject function
/// to hook; returns the offsets and the reject functions present.
fn nft_plan(
    kernel_btf: &mut Result<btf::Btf>,
    ksyms: &Result<ksyms::Kallsyms>,
) -> Result<(tracer_common::NftOffsets, Vec<&'static str>)> {
    let ksyms = ksyms
        .as_ref()
        .map_err(|e| anyhow::anyhow!("kernel symbols are needed: {e:#}"))?;
    anyhow::ensure!(
        ksyms.range(tracer::NFT_DO_CHAIN).is_some(),
        "nf_tables was not loaded when rsttrace started (no nftables or iptables-nft rules)"
    );
    let functions: Vec<&'static str> = tracer::NF_SEND_RESET_FUNCTIONS
        .into_iter()
        .filter(|f| ksyms.range(f).is_some())
        .collect();
    anyhow::ensure!(
        !functions.is_empty(),
        "no reject module (nf_reject_ipv4/ipv6) was loaded when rsttrace started"
    );
    let b = kernel_btf
        .as_mut()
        .map_err(|e| anyhow::anyhow!("kernel BTF is needed: {e:#}"))?;
    if b.member("nft_chain", &["name"]).is_err() {
        b.add_module("nf_tables")?;
    }
    let ptr = |s: &str, m: &str| b.offset(s, &[m], 8);
    Ok((
        tracer_common::NftOffsets {
            pktinfo_skb: ptr("nft_pktinfo", "skb")?,
            chain_table: ptr("nft_chain", "table")?,
            chain_name: ptr("nft_chain", "name")?,
            table_name: ptr("nft_table", "name")?,
        },
        functions,
    ))
}

/// Offsets for reading a RST's network namespace; without BTF the trace
/// still runs, with `netns` null.
fn netns_offsets(b: &btf::Btf) -> Result<tracer_common::NetnsOffsets> {
    let ptr = |s: &str, p: &[&str]| b.offset(s, p, 8);
    Ok(tracer_common::NetnsOffsets {
        sock_net: ptr("sock", &["__sk_common", "skc_net", "net"])?,
        skb_dev: ptr("sk_buff", &["dev"])?,
        dev_net: ptr("net_device", &["nd_net", "net"])?,
        net_inum: b.offset("net", &["ns", "inum"], 4)?,
        // Only for segments with neither socket nor device (see
        // netns.rs): without them, those alone have no namespace.
        skb_refdst: ptr("sk_buff", &["_skb_refdst"]).unwrap_or(tracer_common::ABSENT),
        dst_dev: ptr("dst_entry", &["dev"]).unwrap_or(tracer_common::ABSENT),
    })
}

/// `--debug-empty-programs`, for `cargo xtask bench` only: the programs
/// are attached as usual but return at once, so the bench can measure what
/// the hooks cost before any of rsttrace's work. Nothing is counted, and
/// the trace says so.
fn bench_empty(on: bool) -> bool {
    if on {
        eprintln!(
            "rsttrace: --debug-empty-programs: every program returns at once, nothing is counted"
        );
    }
    on
}

/// `--debug-toggle-signals`, for `cargo xtask bench` only: SIGUSR1
/// detaches every program and SIGUSR2 attaches them again, so that the
/// bench can compare traced and untraced stretches a few hundred
/// milliseconds apart. Counts miss what happens while detached.
struct BenchToggle(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl BenchToggle {
    fn new(on: bool) -> Result<Self> {
        if !on {
            return Ok(Self(None));
        }
        Ok(Self(Some((
            signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?,
            signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
        ))))
    }

    /// Waits for the next toggle: true to attach, false to detach.
    async fn recv(&mut self) -> bool {
        match &mut self.0 {
            Some((detach, attach)) => tokio::select! {
                _ = detach.recv() => false,
                _ = attach.recv() => true,
            },
            None => std::future::pending().await,
        }
    }
}

/// Events the kernel's budget held back, handed to the output as they
/// grow (the text output says "N more").
#[derive(Default)]
struct Unsent(u64);

impl Unsent {
    fn report(&mut self, now: u64, sink: &mut dyn Sink) {
        if now > self.0 {
            sink.unsent(now - self.0);
            self.0 = now;
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    tracer: &tracer::Tracer,
    decoder: &mut Decoder,
    tally: &mut ActorTally,
    sink: &mut dyn Sink,
) -> io::Result<()> {
    let mut shown = false;
    while let Some(item) = ring.next() {
        if item.len() < size_of::<RstEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole RstEvent; read_unaligned copes
        // with the ring's 8-byte alignment.
        let ev: RstEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        drop(item);
        if let Some(rst) = decoder.decode(&ev, |id| tracer.stack(id), |c| tracer.nft_chain(c)) {
            tally.observe(&rst);
            sink.rst(&rst)?;
            shown = true;
        }
    }
    // One write per batch: lines appear at once, floods stay cheap.
    if shown {
        sink.tick()?;
    }
    Ok(())
}

/// The text output prints `--rate` lines a second: that many events per
/// CPU of the line-only causes are enough (each CPU's second may start
/// anywhere in the output's). JSON and pcap write every event.
fn events_per_sec(args: &cli::Args) -> u64 {
    match (args.output, &args.pcap) {
        (cli::OutputFormat::Text, None) => u64::from(args.rate),
        _ => 0,
    }
}

/// A closed stdout (`rsttrace | head`) ends the trace quietly; other write
/// errors are errors.
fn stop_on_output_error(e: io::Error) -> Result<bool> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(e).context("writing output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_fact_names_each_reason_once() {
        let hooks = tracer::BtfHooks {
            used: vec!["net_dev_queue"],
            refused: vec![],
            avoided: vec![
                ("tcp_send_reset", tracer::PREEMPTIBLE_RUNS),
                ("kfree_skb", tracer::PREEMPTIBLE_RUNS),
            ],
        };
        let fact = btf_fact(&hooks);
        assert_eq!(fact.matches(tracer::PREEMPTIBLE_RUNS).count(), 1, "{fact}");
        assert!(
            fact.contains("tcp_send_reset and kfree_skb stay classic tracepoints"),
            "{fact}"
        );
        assert!(
            fact.starts_with("net_dev_queue read kernel structures"),
            "{fact}"
        );
    }
}
