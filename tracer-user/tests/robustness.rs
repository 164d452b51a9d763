//! Behaviour under stress and with less than root: exact counts when the
//! event stream overflows, clean detach on SIGTERM mid-flood, two tracers
//! at once, and the smallest set of capabilities.

mod support;

use std::{
    io::ErrorKind,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use support::{Netns, Trace, connect_from, out_rsts_here, parse_output, rsttrace_command};

/// `threads` x `per_thread` connects from `client` to a closed port; the
/// namespace's OutRsts delta.
fn flood(ns: &Netns, client: &'static str, threads: usize, per_thread: usize) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        let ns_file = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        thread::scope(|s| {
            for _ in 0..threads {
                let ns_file = &ns_file;
                s.spawn(move || {
                    // Same namespace as the calling thread.
                    // SAFETY: a valid namespace fd; affects only this thread.
                    let rc = unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(ns_file), libc::CLONE_NEWNET)
                    };
                    assert_eq!(rc, 0);
                    let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
                    for _ in 0..per_thread {
                        let e = connect_from(client.parse().unwrap(), server).unwrap_err();
                        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
                    }
                });
            }
        });
        out_rsts_here() - before
    })
}

#[test]
fn ring_overflow_keeps_counts_exact_and_says_so_once() {
    let ns = Netns::new("overflow");
    // A 4K ring holds a few dozen events; the flood outruns it, all the
    // more as the test reads rsttrace's output only at the end.
    let trace = Trace::start(&["--ring-size", "4K"]);
    // The same in human output, read only at the end too.
    let mut text = spawn_piped(&["--ring-size", "4K", "--rate", "0"]);
    let (_, text_stderr) = wait_attached(&mut text);
    let sent = flood(&ns, "127.33.0.1", 2, 3000);
    let out = trace.stop();
    let text = interrupt(text);
    assert!(text.status.success());
    let human = String::from_utf8_lossy(&text.stdout);
    let stderr = text_stderr.finish();
    let lost_lines: Vec<&str> = human.lines().filter(|l| l.contains("lost")).collect();
    assert_eq!(
        lost_lines.len(),
        1,
        "one line about lost events: {lost_lines:?}"
    );
    assert!(
        lost_lines[0].contains("not shown live; every count above is exact"),
        "{lost_lines:?}"
    );
    assert!(stderr.matches("overflowed").count() <= 1, "{stderr}");
    assert_eq!(sent, 6000, "OutRsts delta");
    let entry = out.remote("127.33.0.1").expect("remote in summary");
    assert_eq!(
        entry["total"], sent,
        "exact in the summary despite the overflow"
    );
    assert_eq!(
        entry["by_cause"],
        serde_json::json!({ "closed-port": sent })
    );
    let shown = out.rsts_to("127.33.0.1").len() as u64;
    let lost = out.summary["lost"].as_u64().unwrap();
    assert!(shown < sent && lost > 0, "shown {shown}, lost {lost}");
    assert!(
        shown + lost >= sent,
        "every RST either shown or counted as lost"
    );
    let notes = out.stderr.matches("event ring buffer overflowed").count();
    assert!(
        notes <= 1,
        "the overflow is said once, not per event:\n{}",
        out.stderr
    );
}

/// The text output prints `--rate` lines a second. Under a flood the kernel
/// keeps the events of line-only causes past that budget (carrying them
/// through the ring is most of a RST's cost), and the output still accounts
/// for every RST: the lines plus the "N more" notes make the exact count,
/// and nothing is lost.
#[test]
fn text_output_shows_its_rate_and_accounts_for_every_rst() {
    let ns = Netns::new("budget");
    let mut text = spawn_piped(&["--rate", "5", "--remote", "127.38.0.1/32"]);
    let (_, stderr) = wait_attached(&mut text);
    let sent = flood(&ns, "127.38.0.1", 2, 2000);
    let text = interrupt(text);
    let stderr = stderr.finish();
    assert!(text.status.success(), "{stderr}");
    let human = String::from_utf8_lossy(&text.stdout);
    assert_eq!(sent, 4000, "OutRsts delta");
    let lines = human
        .lines()
        .filter(|l| l.contains(" closed-port ") && l.contains(" to 127.38.0.1:"))
        .count() as u64;
    let more: u64 = human
        .lines()
        .filter_map(|l| {
            l.strip_prefix("... ")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        lines > 0 && more > 0,
        "{lines} lines, {more} more:\n{human}"
    );
    assert_eq!(
        lines + more,
        sent,
        "every RST a line or in a note:\n{human}"
    );
    assert!(
        human.contains(&format!("rsttrace summary: {sent} RSTs sent")),
        "{human}"
    );
    assert!(human.contains("lost events: 0\n"), "{human}");
    assert!(!stderr.contains("overflowed"), "{stderr}");
}

/// rsttrace with `args`, its stdout and stderr piped.
fn spawn_piped(args: &[&str]) -> std::process::Child {
    rsttrace_command(None).args(args).spawn().unwrap()
}

/// Stops `child` with SIGINT (as Ctrl-C would) and collects its output.
fn interrupt(child: std::process::Child) -> std::process::Output {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait_with_output().unwrap()
}

/// A child's standard error, collected while it runs.
struct Stderr {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: thread::JoinHandle<()>,
}

impl Stderr {
    /// Everything the child wrote, once it has exited.
    fn finish(self) -> String {
        let _ = self.reader.join();
        self.text.lock().unwrap().clone()
    }
}

/// Waits for the child's "attached" line (the start-up line), then returns
/// the BPF programs and links it holds. Its stderr is collected from then
/// on. (Before 5.15 perf-event attachments hold no link: only programs.)
fn wait_attached(child: &mut std::process::Child) -> (Vec<(String, String)>, Stderr) {
    use std::io::BufRead as _;
    let err = child.stderr.take().expect("stderr piped");
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let t = text.clone();
    let reader = thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let attached = l.contains("attached");
            t.lock().unwrap().push_str(&(l + "\n"));
            if attached {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(support::ATTACH_WITHIN).is_err() {
        panic!(
            "process {} did not attach: {}",
            child.id(),
            text.lock().unwrap()
        );
    }
    (bpf_ids(child.id()), Stderr { text, reader })
}

/// BPF program and link ids held by a process, from its fdinfo.
fn bpf_ids(pid: u32) -> Vec<(String, String)> {
    let mut ids = vec![];
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            for (key, kind) in [("prog_id:", "prog"), ("link_id:", "link")] {
                if let Some(id) = line.strip_prefix(key) {
                    ids.push((kind.to_string(), id.trim().to_string()));
                }
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn sigterm_mid_flood_prints_the_summary_and_leaves_nothing_behind() {
    let ns = Netns::new("sigterm");
    let mut child = spawn_piped(&["--output", "json", "--summary-only"]);
    let pid = child.id();
    let (ids, child_stderr) = wait_attached(&mut child);
    assert!(
        ids.iter().filter(|(k, _)| k == "prog").count() >= 3,
        "programs held: {ids:?}"
    );
    let ns_ref = &ns;
    thread::scope(|s| {
        s.spawn(move || flood(ns_ref, "127.34.0.1", 1, 3000));
        thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    });
    let out = child.wait_with_output().unwrap();
    let stderr = child_stderr.finish();
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    let parsed = parse_output(&String::from_utf8_lossy(&out.stdout), stderr);
    assert!(
        parsed.summary["total"].as_u64().unwrap() > 0,
        "{}",
        parsed.summary
    );
    // Every program and link it held is gone. The kernel frees them after
    // an RCU grace period once the last reference goes (for tracing
    // programs that can take a moment): wait a little, not forever.
    let exists = |kind: &str, id: &str| {
        Command::new("bpftool")
            .args([kind, "show", "id", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running bpftool")
            .success()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (kind, id) in ids {
        while exists(&kind, &id) && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !exists(&kind, &id),
            "{kind} {id} still exists 5 s after exit"
        );
    }
}

#[test]
fn two_tracers_at_once_both_count_exactly() {
    let ns = Netns::new("twice");
    let a = Trace::start(&[]);
    let b = Trace::start(&["--summary-only"]);
    let sent = flood(&ns, "127.35.0.1", 1, 50);
    let (a, b) = (a.stop(), b.stop());
    assert_eq!(sent, 50);
    a.assert_exactly(&ns, "127.35.0.1", sent, "closed-port");
    assert_eq!(b.remote("127.35.0.1").unwrap()["total"], sent);
}

/// The bench's instrument (`--debug-toggle-signals`): SIGUSR1 detaches
/// every program, SIGUSR2 attaches them again; RSTs are counted exactly
/// while attached and not at all in between.
#[test]
fn bench_toggle_detaches_and_attaches_again() {
    let ns = Netns::new("toggle");
    let mut t = Trace::start(&["--debug-toggle-signals"]);
    let before = flood(&ns, "127.37.0.1", 1, 20);
    t.signal_and_wait(libc::SIGUSR1, "bench: detached");
    let detached = flood(&ns, "127.37.0.2", 1, 20);
    t.signal_and_wait(libc::SIGUSR2, "bench: attached again");
    let after = flood(&ns, "127.37.0.3", 1, 20);
    let out = t.stop();
    assert_eq!((before, detached, after), (20, 20, 20));
    out.assert_exactly(&ns, "127.37.0.1", before, "closed-port");
    assert!(
        out.remote("127.37.0.2").is_none(),
        "counted while detached: {}",
        out.summary
    );
    out.assert_exactly(&ns, "127.37.0.3", after, "closed-port");
}

/// As uid 0 but with every capability dropped except those rsttrace needs
/// to trace (CAP_BPF, CAP_PERFMON, CAP_SYSLOG for kernel symbols).
#[test]
fn runs_with_only_the_capabilities_it_needs() {
    let ns = Netns::new("caps");
    let bin = env!("CARGO_BIN_EXE_rsttrace");
    let caps = format!("--bounding-set=-all,{},+syslog", support::attach_caps());
    if support::attach_caps().contains("sys_admin") {
        // Debian's perf_event_paranoid=3: CAP_PERFMON alone is refused, and
        // rsttrace says why before trying.
        let o = Command::new("setpriv")
            .args(["--bounding-set=-all,+bpf,+perfmon", bin, "--duration", "1"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("kernel.perf_event_paranoid is"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let mut child = Command::new("setpriv")
        .args([&caps, bin, "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut seen = String::new();
    loop {
        let l = match rx.recv_timeout(support::ATTACH_WITHIN) {
            Ok(l) => l,
            Err(e) => panic!("no attached line ({e}); stderr:\n{seen}"),
        };
        seen.push_str(&l);
        seen.push('\n');
        if l.contains("attached") {
            break;
        }
    }
    let sent = flood(&ns, "127.36.0.1", 1, 20);
    // SAFETY: signalling our own child (setpriv execs rsttrace in place).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{seen}");
    seen.extend(rx.try_iter().map(|l| l + "\n"));
    let parsed = parse_output(&String::from_utf8_lossy(&out.stdout), seen.clone());
    parsed.assert_exactly(&ns, "127.36.0.1", sent, "closed-port");
    // What it could not do without more is said, with the capability.
    assert!(seen.contains("needs CAP_NET_ADMIN"), "{seen}");

    // Without CAP_PERFMON it names what is missing and stops.
    let o = Command::new("setpriv")
        .args(["--bounding-set=-all,+bpf", bin, "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("does not have CAP_PERFMON"), "{e}");
}

/// `rsttrace doctor` loads and attaches every program, prints the plan for
/// this kernel and exits; each signal's state follows what the kernel and
/// the permissions offer.
#[test]
fn doctor_prints_the_plan_for_this_kernel() {
    let bin = env!("CARGO_BIN_EXE_rsttrace");
    let out = Command::new(bin).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |what: &str| -> String {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in:\n{text}"))
            .to_string()
    };
    // A BTF build the verifier refuses falls back to a costlier one
    // silently but for this line: a change that makes the kernel refuse
    // one (a load past the type a pointer has) must not pass unseen.
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        let btf = line("BTF tracepoints (tp_btf)");
        assert!(!btf.contains("refused"), "{btf}");
    }
    // The reason field is what the plan's first signal depends on.
    let tcp = line("RSTs sent by the TCP stack");
    if support::send_reset_has_reason() {
        assert!(tcp.trim_start().starts_with("ok "), "{tcp}");
    } else {
        assert!(tcp.trim_start().starts_with("partial "), "{tcp}");
        assert!(text.contains("this kernel gives no RST reason"), "{text}");
    }
    for signal in ["RSTs received", "network namespace of each RST"] {
        assert!(line(signal).trim_start().starts_with("ok "), "{text}");
    }
    // Rules older than the trace: named by matching everywhere, their base
    // chain confirmed where kprobes and nf_tables' BTF are there, and the
    // plan says which.
    let netfilter = text
        .split("netfilter hook, backend, table, chain")
        .nth(1)
        .expect("the netfilter signal");
    if support::names_predating_nft_chains() {
        assert!(
            netfilter.contains("kprobes on nft_do_chain/nf_send_reset"),
            "{text}"
        );
    } else {
        assert!(
            netfilter.contains("the base chain is not confirmed by the kernel"),
            "{text}"
        );
    }
    // ICMP rejects: told at the egress hook; a REJECT function said to be
    // missing is really not in the kernel.
    let icmp: String = text
        .lines()
        .skip_while(|l| !l.contains("ICMP errors a netfilter REJECT answers"))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with("    "))
        .map(|(_, l)| l.trim().to_string() + "\n")
        .collect();
    assert!(icmp.contains("net_dev_queue"), "{text}");
    if let Some(missing) = icmp
        .lines()
        .find_map(|l| l.split("are not counted: ").nth(1))
    {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        for f in missing.trim().split(", ") {
            assert!(
                !kallsyms
                    .lines()
                    .any(|l| l.split_whitespace().nth(2) == Some(f)),
                "{f} is in /proc/kallsyms: {text}"
            );
        }
    }
    assert!(
        line("kernel stack traces").trim_start().starts_with("yes "),
        "{text}"
    );
    line("fentry/fexit");
    // As root every permission is there.
    for cap in [
        "CAP_SYSLOG",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
    ] {
        assert!(line(cap).trim_start().starts_with("yes "), "{text}");
    }

    // Without CAP_SYSLOG the stack-decided causes are named as missing, and
    // the trace's start-up line points at doctor.
    let caps = format!("--bounding-set=-all,{}", support::attach_caps());
    let out = Command::new("setpriv")
        .args([&caps, bin, "doctor"])
        .output()
        .expect("setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let killed = text
        .lines()
        .find(|l| l.contains("linger-abort and app-disconnect told apart"))
        .unwrap_or_else(|| panic!("{text}"));
    // Addresses are hidden without CAP_SYSLOG unless kptr_restrict is 0 and
    // perf_event_paranoid at most 1.
    let sysctl = |n: &str| -> i64 {
        std::fs::read_to_string(format!("/proc/sys/kernel/{n}"))
            .map_or(2, |s| s.trim().parse().unwrap_or(2))
    };
    if sysctl("kptr_restrict") != 0 || sysctl("perf_event_paranoid") > 1 {
        assert!(killed.trim_start().starts_with("missing "), "{text}");
        assert!(text.contains("kptr_restrict"), "{text}");
    }
    let out = Command::new("setpriv")
        .args([&caps, bin, "--duration", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("signals incomplete here: `rsttrace doctor` says what and why"),
        "{stderr}"
    );
}
