//! The counts read from the kernel's maps, assembled into the one summary
//! every output reports (`report`): the final one, `--summary-only`, and
//! each metrics scrape. `summary` builds it from the maps, `diagnosis`
//! says what each remote IP's RSTs mean.

pub mod diagnosis;
pub mod summary;

use std::time::Duration;

use anyhow::Result;
use tracer_common::DropCause;

use crate::{
    attribution::{
        bpfprogs,
        enrich::{self, Enricher},
        netfilter::Netfilter,
        nft::names::hook_name,
        nftmon::Verdict,
    },
    loader::Tracer,
};

/// Remotes whose drops are named by their rule (the rest keep `where`).
const NAMED_DROPS: usize = 200;

/// The summary as of now: every count from the kernel's maps, with what
/// the session learnt on the way (rule authors, ruleset changes, the
/// actors behind each remote's RSTs).
pub fn report(
    tracer: &Tracer,
    enricher: &Enricher,
    tally: &diagnosis::ActorTally,
    duration: Duration,
) -> Result<summary::Summary> {
    let stats = tracer.stats()?;
    let mut s = summary::build(&stats, tracer.remotes()?, &enricher.clock, duration);
    (s.received, s.received_total) =
        summary::build_received(&stats, tracer.received()?, &enricher.clock);
    s.drops = summary::build_drops(tracer.drops()?, &enricher.clock, |loc| {
        enrich::symbolize_function(enricher.ksyms.as_deref(), loc)
    });
    s.skipped_runs = tracer.skipped_runs();
    for (i, d) in s.drops.iter_mut().enumerate() {
        for l in &mut d.listeners {
            if let Some((pid, comm)) = enricher.listeners.holder(l.netns, l.port) {
                (l.pid, l.comm) = (Some(pid), Some(comm));
            }
        }
        // A rule's author and the ruleset name only netfilter's drops and
        // ICMP rejects: a remote both dropped and rejected is named by
        // the verdict it met more often.
        let count = |c| d.by_cause.get(&c).copied().unwrap_or(0);
        let (drops, rejects) = (
            count(DropCause::NetfilterDrop),
            count(DropCause::NetfilterRejectIcmp),
        );
        let verdict = match (drops, rejects) {
            (0, 0) => continue,
            (dropped, rejected) if rejected > dropped => Verdict::Reject,
            _ => Verdict::Drop,
        };
        // The ruleset is asked about the busiest remotes only: a scan from
        // a whole network must not make each report thousands of lookups.
        let named = (i < NAMED_DROPS)
            .then(|| {
                d.netns
                    .iter()
                    .find_map(|ns| Some((*ns, enricher.name_drop(*ns, d.remote_ip, verdict)?)))
            })
            .flatten();
        // The author of the rule that matched; with no match, the newest
        // drop rule added while tracing, the best guess left.
        d.author = match &named {
            Some((ns, (_, n))) => enricher.author_of(*ns, n),
            None => d
                .netns
                .iter()
                .find_map(|ns| enricher.rule_author(*ns, verdict)),
        };
        d.netfilter = named.map(|(_, (hook, named))| {
            let mut nf = Netfilter {
                hook: Some(hook_name(hook)),
                backend: Some(named.backend),
                ..Default::default()
            };
            nf.name_rule(&named);
            nf
        });
    }
    if let Ok(log) = enricher.ruleset.lock() {
        s.ruleset_changes = log.generations.clone();
    }
    for r in &mut s.by_remote_ip {
        r.diagnosis = Some(diagnosis::diagnose(r, tally));
    }
    Ok(s)
}

/// Names the BPF programs at the hooks that dropped (tc, XDP) in each
/// drops row. Once, for the final summary: it walks /proc and the bpffs
/// mounts, which a metrics scrape should not.
pub fn name_programs(s: &mut summary::Summary) {
    // Each (namespace, hook) asked once, however many remotes it dropped.
    let mut at_hook = std::collections::HashMap::new();
    for d in &mut s.drops {
        for (netns, hook) in &d.hooks {
            let progs = at_hook.entry((*netns, *hook)).or_insert_with(|| {
                let Some(path) = bpfprogs::netns_path(*netns) else {
                    return vec![];
                };
                bpfprogs::at_hooks(&path, &[*hook]).unwrap_or_else(|e| {
                    log::debug!("programs at {hook:?} in netns {netns}: {e}");
                    vec![]
                })
            });
            for p in progs.iter() {
                if !d.programs.contains(p) {
                    d.programs.push(p.clone());
                }
            }
        }
    }
}
