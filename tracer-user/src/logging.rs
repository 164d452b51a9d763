//! The userspace logger: `log` records go to stderr as
//! `rsttrace: LEVEL: message`. `RUST_LOG` sets the level (`error`, `warn`,
//! `info`, `debug`, `trace`, or `off`; default `warn`), and each step of
//! `verbosity` raises it by one. A dozen lines, not env_logger: rsttrace
//! needs one target and one format, and no per-module filters.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = r.level().as_str().to_ascii_lowercase();
            eprintln!("rsttrace: {level}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls only set the level).
pub fn init(verbosity: u8) {
    let _ = log::set_logger(&Stderr);
    log::set_max_level(level(std::env::var("RUST_LOG").ok().as_deref(), verbosity));
}

fn level(rust_log: Option<&str>, verbosity: u8) -> LevelFilter {
    let base = rust_log
        .and_then(|s| s.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Warn);
    let mut l = base;
    for _ in 0..verbosity {
        l = match l.to_level() {
            Some(Level::Error) => LevelFilter::Warn,
            Some(Level::Warn) => LevelFilter::Info,
            Some(Level::Info) => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        };
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_the_level_and_verbosity_raises_it() {
        assert_eq!(level(None, 0), LevelFilter::Warn);
        assert_eq!(level(Some("debug"), 0), LevelFilter::Debug);
        assert_eq!(level(Some("nonsense"), 0), LevelFilter::Warn);
        assert_eq!(level(None, 2), LevelFilter::Debug);
        assert_eq!(level(Some("trace"), 3), LevelFilter::Trace);
    }
}
