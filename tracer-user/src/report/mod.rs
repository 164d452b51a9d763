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
        decode::{self, Decoder},
        nftmon::Verdict,
    },
    loader::Tracer,
};

/// The summary as of now: every count from the kernel's maps, with what
/// the session learnt on the way (rule authors, ruleset changes, the
/// actors behind each remote's RSTs).
pub fn report(
    tracer: &Tracer,
    decoder: &Decoder,
    tally: &diagnosis::ActorTally,
    duration: Duration,
) -> Result<summary::Summary> {
    let stats = tracer.stats()?;
    let mut s = summary::build(&stats, tracer.remotes()?, &decoder.clock, duration);
    (s.received, s.received_total) =
        summary::build_received(&stats, tracer.received()?, &decoder.clock);
    s.drops = summary::build_drops(tracer.drops()?, &decoder.clock, |loc| {
        decode::symbolize_function(decoder.ksyms.as_deref(), loc)
    });
    s.skipped_runs = tracer.skipped_runs();
    for d in &mut s.drops {
        d.author = d
            .netns
            .iter()
            .find_map(|ns| decoder.rule_author(*ns, Verdict::Drop));
    }
    if let Ok(log) = decoder.ruleset.lock() {
        s.ruleset_changes = log.generations.clone();
    }
    for r in &mut s.by_remote_ip {
        r.diagnosis = Some(diagnosis::diagnose(r, tally));
    }
    Ok(s)
}
