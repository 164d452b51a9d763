//! Where RSTs and the summary are printed: one sink per output format.

mod human;
mod json;

use std::io::{self, Write};

pub use human::Human;
pub use json::Json;

use crate::{event::Rst, summary::Summary};

pub trait Sink {
    fn rst(&mut self, rst: &Rst) -> io::Result<()>;
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
