//! The counts read from the kernel's maps, assembled into the one summary
//! every output reports (`report`): the final one, `--summary-only`, and
//! each metrics scrape. `summary` builds it from the maps, `diagnosis`
//! says what each remote IP's RSTs mean.

pub mod diagnosis;
pub mod summary;

use std::time::Duration;

use anyhow::Result;

use crate::{
    attribution::{
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
        d.author = d
            .netns
            .iter()
            .find_map(|ns| enricher.rule_author(*ns, Verdict::Drop));
        // The ruleset is asked about the busiest remotes only: a scan from
        // a whole network must not make each report thousands of lookups.
        if i >= NAMED_DROPS {
            continue;
        }
        d.netfilter = d
            .netns
            .iter()
            .find_map(|ns| enricher.name_drop(*ns, d.remote_ip))
            .map(|(hook, named)| {
                let mut nf = Netfilter {
                    hook: Some(hook_name(hook)),
                    backend: Some("nftables"),
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
