//! Diagnostics on stderr through `log`: warnings and the start-up line by
//! default, the decisions behind them with -v, every detail with -vv;
//! RUST_LOG, where set, decides instead. Lines keep the form scripts and
//! tests read: "rsttrace: ...", "rsttrace: warning: ...".

use std::io::Write as _;

pub fn init(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(|buf, record| {
            let tag = match record.level() {
                log::Level::Warn => "warning: ",
                log::Level::Debug | log::Level::Trace => "debug: ",
                log::Level::Error | log::Level::Info => "",
            };
            writeln!(buf, "rsttrace: {tag}{}", record.args())
        })
        .init();
}
