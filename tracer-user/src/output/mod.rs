//! Where RSTs and the summary are printed: one sink per output format.

mod human;
mod json;
pub mod metrics;
mod pcap;

use std::io::{self, Write};

pub use human::Human;
pub use json::Json;
pub use pcap::Pcap;

use crate::{attribution::decode::Rst, report::summary::Summary};

pub trait Sink {
    fn rst(&mut self, rst: &Rst) -> io::Result<()>;
    /// `n` more RSTs whose events stayed in the kernel (the text output's
    /// budget; only the text output sets one).
    fn unsent(&mut self, _n: u64) {}
    /// Called about once a second: flush rate-limit notes and buffers.
    fn tick(&mut self) -> io::Result<()>;
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
}

pub fn new_sink(
    format: crate::cli::OutputFormat,
    out: Box<dyn Write>,
    rate: u32,
    top: u32,
) -> Box<dyn Sink> {
    match format {
        crate::cli::OutputFormat::Text => Box::new(Human::new(out, rate, top as usize)),
        crate::cli::OutputFormat::Json => Box::new(Json::new(out)),
    }
}

/// Several outputs at once (`--pcap` beside text or JSON).
pub struct Tee(pub Vec<Box<dyn Sink>>);

impl Sink for Tee {
    fn rst(&mut self, rst: &Rst) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.rst(rst))
    }
    fn unsent(&mut self, n: u64) {
        self.0.iter_mut().for_each(|s| s.unsent(n))
    }
    fn tick(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.tick())
    }
    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.summary(summary))
    }
}

/// `--summary-only` with `--pcap`: events flow for the file only.
pub struct SummaryOnly(pub Box<dyn Sink>);

impl Sink for SummaryOnly {
    fn rst(&mut self, _: &Rst) -> io::Result<()> {
        Ok(())
    }
    fn tick(&mut self) -> io::Result<()> {
        self.0.tick()
    }
    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.0.summary(summary)
    }
}
