//! The trace once its programs are loaded: outputs opened, programs
//! attached, then the loop that drains events, ticks, answers metrics
//! scrapes and stops on a signal or `--duration`; and `doctor`, which
//! attaches, reports the plan and stops.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracer_common::{RstEvent, stat};

use crate::{
    attribution::{
        actor::ActorResolver,
        agents,
        enrich::Enricher,
        listeners::Listeners,
        nftmon::{Monitors, SharedLog},
    },
    cli::Args,
    clock::BootClock,
    kernel::Facts,
    loader::{self, Tracer},
    output::{self, Sink, metrics},
    plan::Decided,
    report::{self, diagnosis::ActorTally},
};

/// `rsttrace doctor`: attach every program, say what this kernel and
/// these permissions allow, detach.
pub fn doctor(decided: Decided<'_>, facts: &Facts, mut tracer: Tracer) -> Result<()> {
    let Decided {
        mut plan, probed, ..
    } = decided;
    let attached = tracer.attach(facts.aya_btf.as_ref())?;
    plan.signals(&probed, &attached);
    btf_fact_into(&mut plan, &tracer);
    tracer.detach()?;
    // No hook needs fentry/fexit; the fact says whether a future one
    // could use them here.
    let fentry = tracer.probe_fentry(facts.aya_btf.as_ref());
    plan.fact(
        "fentry/fexit",
        fentry.is_ok(),
        match &fentry {
            Ok(()) => "attach here; no hook needs them (tracepoints and kprobes serve)".to_string(),
            Err(e) => format!(
                "not usable here ({}); no hook needs them",
                loader::first_line(e)
            ),
        },
    );
    plan.fact(
        "kernel stack traces",
        true,
        "the stack map and bpf_get_stack loaded with the programs: stack rules work",
    );
    print!("{}", plan.report());
    Ok(())
}

fn btf_fact_into(plan: &mut crate::plan::Plan, tracer: &Tracer) {
    let hooks = tracer.btf_hooks();
    if !hooks.used.is_empty() || !hooks.refused.is_empty() || !hooks.avoided.is_empty() {
        plan.fact(
            "BTF tracepoints (tp_btf)",
            hooks.refused.is_empty(),
            btf_fact(hooks),
        );
    }
}

/// The trace: from the outputs that must open before anything is attached
/// to the summary when it stops.
pub async fn trace(
    args: &Args,
    decided: Decided<'_>,
    facts: &Facts,
    mut tracer: Tracer,
) -> Result<()> {
    let Decided {
        mut plan, probed, ..
    } = decided;
    let events = tracer.take_events()?;
    // SAFETY: the ring buffer owns its fd, which stays open as long as the
    // AsyncFd that owns the ring buffer.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    // Ruleset authors: follow nftables changes before the first RST.
    let ruleset = SharedLog::default();
    let mut monitors = Monitors::default();
    for w in monitors.rescan(&ruleset) {
        log::warn!("nftables ruleset changes will not be followed: {w}");
    }
    let mut sink = open_sink(args)?;
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
    let attached = tracer.attach(facts.aya_btf.as_ref())?;
    let started = Instant::now();
    plan.signals(&probed, &attached);
    btf_fact_into(&mut plan, &tracer);
    // The plan in one line: what is watched, and what is not.
    log::info!(
        "{}; {}",
        plan.one_line(),
        match args.duration {
            Some(d) => format!("tracing for {}", humantime::format_duration(d)),
            None => "stop with Ctrl-C".to_string(),
        }
    );
    let mut enricher = Enricher {
        ruleset: ruleset.clone(),
        clock: BootClock::new(),
        reasons: facts.send_reset.reasons.clone(),
        actors: ActorResolver::new(
            agents::Agents::new(args.agent.clone()).with_libraries(args.agent_library.clone()),
        ),
        ksyms: facts.ksyms.as_ref().ok().cloned(),
        listeners: Listeners::new(args.listener_memory),
        namer: std::cell::RefCell::new(crate::attribution::nft::names::Namer::new(
            crate::attribution::nft::owners::Owners::new(args.ruleset_owner.clone()),
        )),
        user_stacks: Default::default(),
        egress_programs: Default::default(),
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
                    log::info!("bench: attached again");
                } else {
                    tracer.park()?;
                    log::info!("bench: detached");
                }
            }
            _ = &mut deadline => break,
            _ = tick.tick() => {
                // Namespaces created while tracing get a ruleset monitor.
                for w in monitors.rescan(&ruleset) {
                    log::warn!("nftables ruleset changes: {w}");
                }
                if args.direction.sent() {
                    enricher.listeners.refresh(&mut enricher.actors);
                }
                let stats = tracer.stat_slots();
                // Said once, not per event: the summary has the number.
                if !lost_noted
                    && (!args.summary_only || args.pcap.is_some())
                    && stats.get(stat::LOST_EVENTS) > 0
                {
                    lost_noted = true;
                    log::info!(
                        "the event ring buffer overflowed: some RSTs are not shown live; every \
                         count stays exact (see lost in the summary; --ring-size)"
                    );
                }
                if !skipped_noted && !tracer.skipped_runs().is_empty() {
                    skipped_noted = true;
                    log::warn!(
                        "the kernel skipped some runs of rsttrace's programs (a BPF program was \
                         already running on that CPU): counts may be short (see skipped_runs in \
                         the summary)"
                    );
                }
                unsent.report(tracer.unsent(), sink.as_mut());
                if let Err(e) = sink.tick() { output_ok = stop_on_output_error(e)?; break; }
            }
            Some(reply) = next_scrape(&mut scrapes) => {
                let summary = report::report(&tracer, &enricher, &tally, started.elapsed())?;
                let _ = reply.send(metrics::encode(&summary, shape));
            }
            _ = poll.tick() => {
                if let Err(e) = drain(events.get_mut(), &tracer, &mut enricher, &mut tally, sink.as_mut()) {
                    output_ok = stop_on_output_error(e)?;
                    break;
                }
            }
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                if let Err(e) = drain(guard.get_inner_mut(), &tracer, &mut enricher, &mut tally, sink.as_mut()) {
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
            &mut enricher,
            &mut tally,
            sink.as_mut(),
        )
    {
        output_ok = stop_on_output_error(e)?;
    }
    unsent.report(tracer.unsent(), sink.as_mut());
    let mut summary = report::report(&tracer, &enricher, &tally, started.elapsed())?;
    report::name_programs(&mut summary);
    if output_ok && let Err(e) = sink.summary(&summary) {
        stop_on_output_error(e)?;
    }
    Ok(())
}

/// The outputs the arguments ask for, opened before anything is attached:
/// a --pcap file that can't be written is a start-up error.
fn open_sink(args: &Args) -> Result<Box<dyn Sink>> {
    let stdout: Box<dyn Write> = Box::new(io::BufWriter::new(io::stdout()));
    let mut sink = output::new_sink(args.output, stdout, args.rate, args.top);
    if args.summary_only {
        sink = Box::new(output::SummaryOnly(sink));
    }
    if let Some(path) = &args.pcap {
        let file = std::fs::File::create(path)
            .with_context(|| format!("--pcap: can't create {}", path.display()))?;
        let pcap = output::Pcap::new(Box::new(io::BufWriter::new(file)))
            .with_context(|| format!("--pcap: can't write {}", path.display()))?;
        sink = Box::new(output::Tee(vec![sink, Box::new(pcap)]));
    }
    Ok(sink)
}

/// What doctor says about the BTF builds of the hot programs.
fn btf_fact(hooks: &loader::BtfHooks) -> String {
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
    tracer: &Tracer,
    enricher: &mut Enricher,
    tally: &mut ActorTally,
    sink: &mut dyn Sink,
) -> io::Result<()> {
    let mut shown = false;
    enricher.actors.begin_batch();
    while let Some(item) = ring.next() {
        if item.len() < size_of::<RstEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole RstEvent; read_unaligned copes
        // with the ring's 8-byte alignment.
        let ev: RstEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        drop(item);
        let rst = enricher.rst(
            &ev,
            |id| tracer.stack(id),
            |c| tracer.nft_chain(c),
            |pid| tracer.kill(pid),
            |id| tracer.user_stack(id),
        );
        if let Some(rst) = rst {
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

/// A closed stdout (`rsttrace | head`) ends the trace quietly; other write
/// errors are errors.
fn stop_on_output_error(e: io::Error) -> Result<bool> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(e).context("writing output")
    }
}

async fn next_scrape(
    scrapes: &mut Option<tokio::sync::mpsc::Receiver<metrics::Scrape>>,
) -> Option<metrics::Scrape> {
    match scrapes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_fact_names_each_reason_once() {
        let hooks = loader::BtfHooks {
            used: vec!["net_dev_queue"],
            refused: vec![],
            avoided: vec![
                ("tcp_send_reset", loader::PREEMPTIBLE_RUNS),
                ("kfree_skb", loader::PREEMPTIBLE_RUNS),
            ],
        };
        let fact = btf_fact(&hooks);
        assert_eq!(fact.matches(loader::PREEMPTIBLE_RUNS).count(), 1, "{fact}");
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
