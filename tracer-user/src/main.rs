//! rsttrace: attributes every TCP RST this host sends to the kernel path
//! that produced it, and aggregates per remote IP.
//!
//! The pipeline, one module each: `kernel` probes what the running kernel
//! offers into `Facts`; `plan` decides from them what to load and what is
//! lost; `loader` loads and attaches the eBPF programs and records what it
//! attached; `session` drains their events through `attribution` (decode,
//! then enrich) into `output`; `report` assembles the summary every output
//! ends with. docs/architecture.md follows one RST through them.

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
mod session;
mod untrusted;
mod why;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;

use crate::{cli::Args, kernel::preflight};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let args = Args::parse().for_command();
    logging::init(args.verbose);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("can't start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if let Some(cli::Command::Why {
        target,
        proto,
        netns,
        output,
    }) = &args.command
    {
        return why::run(target, *proto, netns, *output);
    }
    preflight::check_capabilities()?;
    let scope = scope::build(&args.netns, &args.remote, &args.local_port, &args.cause)?;
    let facts = kernel::Facts::probe()?;
    let decided = plan::decide(&facts, &args, &scope)?;
    for w in &decided.warnings {
        log::warn!("{w}");
    }
    preflight::raise_memlock_limit()?;
    let tracer = loader::Tracer::load(&decided.load)?;
    if args.doctor() {
        session::doctor(decided, &facts, tracer)
    } else {
        session::trace(&args, decided, &facts, tracer).await
    }
}
