//! What a console log says: boot time, each test binary's counts and
//! duration, and each failed test with its panic message.

use std::fmt::Write as _;

#[derive(Default)]
pub struct Summary {
    pub boot_secs: Option<String>,
    pub binaries: Vec<Binary>,
    pub failures: Vec<Failure>,
    /// The VM's own warnings (a module that did not load, a mount).
    pub warnings: Vec<String>,
}

#[derive(Default)]
pub struct Binary {
    pub name: String,
    /// cargo test's "N passed; M failed; ..." part.
    pub counts: Option<String>,
    pub exit: Option<String>,
    pub secs: Option<String>,
}

pub struct Failure {
    pub binary: String,
    pub test: String,
    pub message: String,
}

pub fn summarize(log: &str) -> Summary {
    let mut s = Summary::default();
    let lines: Vec<&str> = log.lines().collect();
    let mut binary = String::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("RSTTRACE-VM: ") {
            if let Some(b) = rest.strip_prefix("booted ") {
                s.boot_secs = b
                    .rsplit(" in ")
                    .next()
                    .map(|t| t.trim_end_matches('s').to_string());
            } else if let Some(w) = rest.strip_prefix("warning: ") {
                s.warnings.push(w.to_string());
            } else if let Some(b) = rest.strip_prefix("test binary ") {
                let (name, what) = b.split_once(": ").unwrap_or((b, ""));
                if what == "start" {
                    binary = name.to_string();
                    s.binaries.push(Binary {
                        name: name.to_string(),
                        ..Binary::default()
                    });
                } else if let Some(exit) = what.strip_prefix("exit ") {
                    let (code, secs) = exit.split_once(" after ").unwrap_or((exit, ""));
                    if let Some(b) = s.binaries.last_mut() {
                        b.exit = Some(code.to_string());
                        b.secs = Some(secs.trim_end_matches('s').to_string());
                    }
                }
            }
        } else if let Some(r) = line.strip_prefix("test result: ") {
            if let Some(b) = s.binaries.last_mut() {
                let counts = r.split_once(". ").map_or(r, |(_, c)| c);
                b.counts = Some(
                    counts
                        .split("; finished")
                        .next()
                        .unwrap_or(counts)
                        .to_string(),
                );
            }
        } else if let Some(t) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            s.failures.push(Failure {
                binary: binary.clone(),
                test: t.to_string(),
                message: panic_message(&lines[i..], t),
            });
        }
    }
    s
}

/// The first lines of `test`'s panic in its "---- test stdout ----" block
/// (which cargo prints after the test lines).
fn panic_message(after: &[&str], test: &str) -> String {
    let header = format!("---- {test} stdout ----");
    let Some(start) = after.iter().position(|l| *l == header) else {
        return "(no panic message in the log)".into();
    };
    let block = &after[start + 1..];
    let Some(p) = block.iter().position(|l| l.contains("panicked at")) else {
        return "(no panic message in the log)".into();
    };
    let mut msg = String::new();
    let at = block[p]
        .split("panicked at ")
        .nth(1)
        .unwrap_or("")
        .trim_end_matches(':');
    for l in block[p + 1..].iter().take_while(|l| {
        !l.is_empty()
            && !l.starts_with("note: ")
            && !l.starts_with("stack backtrace:")
            && !l.starts_with("---- ")
    }) {
        if msg.len() > 400 {
            msg.push_str(" ...");
            break;
        }
        if !msg.is_empty() {
            msg.push_str(" | ");
        }
        msg.push_str(l.trim());
    }
    let _ = write!(msg, " ({at})");
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_counts_and_timings_are_read_off_the_log() {
        let log = "\
RSTTRACE-VM: booted 6.1.0-50-cloud-amd64 in 3.21s
RSTTRACE-VM: warning: insmod /x.ko failed
RSTTRACE-VM: test binary trace: start

running 2 tests
test closed_port_ipv4 ... FAILED
test linger_abort_on_close ... ok

failures:

---- closed_port_ipv4 stdout ----

thread 'closed_port_ipv4' (123) panicked at tracer-user/tests/trace.rs:40:5:
assertion `left == right` failed: events to 127.1.0.1
  left: 0
 right: 3
stack backtrace:
   0: foo

failures:
    closed_port_ipv4

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.10s

RSTTRACE-VM: test binary trace: exit 101 after 12s
RSTTRACE-VM-RESULT: FAIL failed: trace(exit 101)
";
        let s = summarize(log);
        assert_eq!(s.boot_secs.as_deref(), Some("3.21"));
        assert_eq!(s.warnings, ["insmod /x.ko failed"]);
        assert_eq!(s.binaries.len(), 1);
        let b = &s.binaries[0];
        assert_eq!(
            b.counts.as_deref(),
            Some("1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out")
        );
        assert_eq!(
            (b.exit.as_deref(), b.secs.as_deref()),
            (Some("101"), Some("12"))
        );
        assert_eq!(s.failures.len(), 1);
        let f = &s.failures[0];
        assert_eq!(
            (f.binary.as_str(), f.test.as_str()),
            ("trace", "closed_port_ipv4")
        );
        assert_eq!(
            f.message,
            "assertion `left == right` failed: events to 127.1.0.1 | left: 0 | right: 3 \
             (tracer-user/tests/trace.rs:40:5)"
        );
    }
}
