//! Where the plan for the running kernel is told: per signal, the hook that
//! sees it and what is lost where a hook or a permission is missing.
//! `rsttrace doctor` prints it in full; the trace's start-up line in one line.
//!
//! The plan is recorded while rsttrace starts (the decisions are made where
//! the kernel is probed: format files, BTF, kallsyms, netlink), so it says
//! what the programs really attached to, not what should work.

use std::fmt::Write as _;

/// One thing rsttrace reports, and how it sees it on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub what: &'static str,
    /// The hook (or source) in use; None when nothing can see it here.
    pub hook: Option<String>,
    /// What is lost, and what would bring it back; None when complete.
    pub lost: Option<String>,
}

/// A kernel or permission fact the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub name: &'static str,
    pub present: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub kernel: String,
    pub facts: Vec<Fact>,
    pub signals: Vec<Signal>,
}

impl Plan {
    pub fn new() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            kernel,
            ..Self::default()
        }
    }

    pub fn fact(&mut self, name: &'static str, present: bool, detail: impl Into<String>) {
        self.facts.push(Fact {
            name,
            present,
            detail: detail.into(),
        });
    }

    pub fn seen(&mut self, what: &'static str, hook: impl Into<String>) {
        self.signals.push(Signal {
            what,
            hook: Some(hook.into()),
            lost: None,
        });
    }

    /// Seen, but not completely: `lost` says what is missing and why.
    pub fn partly(&mut self, what: &'static str, hook: impl Into<String>, lost: impl Into<String>) {
        self.signals.push(Signal {
            what,
            hook: Some(hook.into()),
            lost: Some(lost.into()),
        });
    }

    pub fn unseen(&mut self, what: &'static str, lost: impl Into<String>) {
        self.signals.push(Signal {
            what,
            hook: None,
            lost: Some(lost.into()),
        });
    }

    /// The start-up line: hooks attached, and how many signals are not
    /// complete (doctor has the details).
    pub fn one_line(&self) -> String {
        let mut hooks: Vec<&str> = vec![];
        for s in &self.signals {
            if let Some(h) = s.hook.as_deref().and_then(attached_hook)
                && !hooks.contains(&h)
            {
                hooks.push(h);
            }
        }
        let gaps = self.signals.iter().filter(|s| s.lost.is_some()).count();
        let mut line = format!("attached to {} on {}", hooks.join(", "), self.kernel);
        if gaps > 0 {
            let _ = write!(
                line,
                " ({gaps} of {} signals incomplete here: `rsttrace doctor` says what and why)",
                self.signals.len()
            );
        }
        line
    }

    /// What `rsttrace doctor` prints.
    pub fn report(&self) -> String {
        let mut t = format!(
            "rsttrace plan for kernel {}\n\nKERNEL AND PERMISSIONS\n",
            self.kernel
        );
        for f in &self.facts {
            let mark = if f.present { "yes" } else { "no " };
            let _ = writeln!(t, "  {mark}  {:<28} {}", f.name, f.detail);
        }
        t.push_str("\nSIGNALS\n");
        for s in &self.signals {
            let mark = match (&s.hook, &s.lost) {
                (Some(_), None) => "ok     ",
                (Some(_), Some(_)) => "partial",
                (None, _) => "missing",
            };
            let _ = writeln!(t, "  {mark}  {}", s.what);
            if let Some(h) = &s.hook {
                let _ = writeln!(t, "           via {h}");
            }
            if let Some(l) = &s.lost {
                let _ = writeln!(t, "           lost: {l}");
            }
        }
        t
    }
}

/// The attachment point named at the start of a hook description
/// (`tracepoint tcp:tcp_send_reset (...)` -> `tcp:tcp_send_reset`).
fn attached_hook(hook: &str) -> Option<&str> {
    if hook.starts_with("kprobes on ") {
        return hook.split(" (").next();
    }
    let rest = hook
        .strip_prefix("tracepoint ")
        .or_else(|| hook.strip_prefix("raw tracepoint "))?;
    rest.split_whitespace().next()
}

/// Whether the kernel can attach kprobes (the kprobe PMU exists): used by
/// doctor to say which gaps a kprobe plan could close on this kernel.
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_names_hooks_once_and_counts_gaps() {
        let mut p = Plan {
            kernel: "6.1.0-test".into(),
            ..Plan::default()
        };
        p.partly(
            "TCP stack RSTs",
            "tracepoint tcp:tcp_send_reset (no reason field)",
            "no reason",
        );
        p.seen(
            "socket-killed vs app-disconnect",
            "tracepoint tcp:tcp_send_reset + stack",
        );
        p.seen("RSTs outside the TCP stack", "raw tracepoint net_dev_queue");
        p.unseen("netfilter drops", "no reason field in skb:kfree_skb");
        assert_eq!(
            p.one_line(),
            "attached to tcp:tcp_send_reset, net_dev_queue on 6.1.0-test (2 of 4 signals \
             incomplete here: `rsttrace doctor` says what and why)"
        );
        let r = p.report();
        assert!(r.contains("partial  TCP stack RSTs\n"), "{r}");
        assert!(
            r.contains("missing  netfilter drops\n           lost: no reason"),
            "{r}"
        );
    }
}
