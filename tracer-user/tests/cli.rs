//! How rsttrace fails: a clear line on stderr and a non-zero exit code.

use std::process::{Command, Output};

fn rsttrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsttrace"))
        .args(args)
        .output()
        .expect("running rsttrace")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_flag_values_exit_2_with_a_message() {
    for (args, needle) in [
        (
            &["--duration", "soon"][..],
            "invalid value 'soon' for '--duration",
        ),
        (&["--duration", "0"][..], "must be longer than zero"),
        (
            &["--output", "xml"][..],
            "invalid value 'xml' for '--output",
        ),
        (&["--top", "0"][..], "invalid value '0' for '--top"),
        (
            &["--no-such-flag"][..],
            "unexpected argument '--no-such-flag'",
        ),
    ] {
        let o = rsttrace(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn help_names_the_outputs() {
    let o = rsttrace(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--output",
        "--summary-only",
        "--duration",
        "--rate",
        "--top",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

/// Dropping every capability (as an unprivileged user would run it) must
/// say which capability is missing, not fail somewhere in the loader.
#[test]
fn without_capabilities_it_names_what_is_missing() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            env!("CARGO_BIN_EXE_rsttrace"),
            "--duration",
            "1",
        ])
        .output()
        .expect("running setpriv (util-linux)");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("does not have CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

/// tracefs unmounted (in a private mount namespace, so the host keeps its
/// own): rsttrace mounts it when it may, and says what to do when not.
/// debugfs goes too: its tracing directory would mount tracefs on access.
#[test]
fn tracefs_missing_is_mounted_or_named() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    let bin = env!("CARGO_BIN_EXE_rsttrace");
    let run = |prefix: &str| {
        let script = format!(
            "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
             umount /sys/kernel/debug 2>/dev/null; {prefix} {bin} --summary-only --duration 1"
        );
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .output()
            .expect("unshare (util-linux)")
    };
    let ok = run("");
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stderr(&ok).contains("mounted tracefs at /sys/kernel/tracing"),
        "{}",
        stderr(&ok)
    );

    let denied = run("setpriv --bounding-set=-all,+bpf,+perfmon");
    assert_eq!(denied.status.code(), Some(1), "{}", stderr(&denied));
    let e = stderr(&denied);
    assert!(
        e.contains("tracefs is not mounted and mounting it at /sys/kernel/tracing failed"),
        "{e}"
    );
    assert!(
        e.contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "{e}"
    );
}

/// The tracepoints and kprobed functions a process has attached, as the
/// kernel lists them: links in their fdinfo (tracepoints of every kind,
/// and kprobes where the kernel makes links of them), and kprobes and
/// tracepoints that are perf events with a program (kernels before 5.15)
/// through BPF_TASK_FD_QUERY, as `bpftool perf` asks. The one thing a
/// kernel may not tell: the point of a perf-event link, whose fdinfo names
/// it only on newer kernels (6.1 names none); those are counted, in
/// `.1`.
fn attached_by(pid: u32) -> (Vec<String>, usize) {
    let mut points = vec![];
    let mut unnamed = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        if field("link_id:").is_none() {
            let num: u32 = fd.file_name().to_string_lossy().parse().unwrap();
            points.extend(perf_event_of(pid, num));
            continue;
        }
        // "perf_event_type: kprobe" where the kernel says it.
        let kprobe = info
            .lines()
            .any(|l| l.contains("event_type:") && l.contains("kprobe"));
        match if kprobe {
            field("name:")
        } else {
            field("tp_name:")
        } {
            Some(point) => points.push(point),
            None => unnamed += 1,
        }
    }
    points.sort();
    (points, unnamed)
}

/// The tracepoint or kprobed function of a perf-event fd of `pid` with a
/// BPF program on it.
fn perf_event_of(pid: u32, fd: u32) -> Option<String> {
    const BPF_TASK_FD_QUERY: libc::c_long = 20;
    // BPF_FD_TYPE_RAW_TRACEPOINT, _TRACEPOINT, _KPROBE.
    const POINTS: [u32; 3] = [0, 1, 2];
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        pid: u32,
        fd: u32,
        flags: u32,
        buf_len: u32,
        buf: u64,
        prog_id: u32,
        fd_type: u32,
        probe_offset: u64,
        probe_addr: u64,
    }
    let mut name = [0u8; 128];
    let mut q = Query {
        pid,
        fd,
        buf_len: name.len() as u32,
        buf: name.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: a valid attr of the size given; the kernel writes `name`
    // within buf_len.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_TASK_FD_QUERY,
            &mut q as *mut Query,
            size_of::<Query>() as u32,
        )
    };
    (rc == 0 && POINTS.contains(&q.fd_type)).then(|| {
        let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..len]).into_owned()
    })
}

/// The points a start-up line names, as bpftool names them
/// (`tcp:tcp_send_reset` -> `tcp_send_reset`, `kprobes on a/b` -> a, b).
fn named_in(line: &str) -> Vec<String> {
    let list = line
        .split("attached to ")
        .nth(1)
        // The kernel's release follows the last " on " ("kprobes on" has one).
        .and_then(|l| l.rsplit_once(" on ").map(|(list, _)| list))
        .unwrap_or_else(|| panic!("no hooks in {line:?}"));
    let mut points: Vec<String> = vec![];
    for item in list.split(", ") {
        match item.strip_prefix("kprobes on ") {
            Some(funcs) => points.extend(funcs.split('/').map(String::from)),
            None => points.push(item.rsplit(':').next().unwrap().to_string()),
        }
    }
    points.sort();
    points
}

/// The start-up line names what is attached while rsttrace runs, as the
/// kernel lists it: with `--cause` leaving drops out, or only received RSTs
/// traced, the drop program is not attached and not named (both once were).
#[test]
fn startup_line_names_what_the_kernel_has_attached() {
    use std::io::BufRead as _;
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    for (args, left_off) in [
        (&[][..], false),
        (&["--cause", "closed-port"][..], true),
        (&["--direction", "in"][..], true),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rsttrace"))
            .args(args)
            .args(["--summary-only", "--duration", "30"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running rsttrace");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map_while(Result::ok);
        let line = lines
            .find(|l| l.contains("attached"))
            .unwrap_or_else(|| panic!("{args:?}: no start-up line"));
        let attached = attached_by(child.id());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        // Read to the end: a closed pipe would fail its last writes.
        let rest: Vec<String> = lines.collect();
        assert!(child.wait().unwrap().success(), "{args:?}: {rest:?}");
        if left_off {
            assert!(!line.contains("kfree_skb"), "{args:?}: {line}");
        }
        let (found, unnamed) = attached;
        let named = named_in(&line);
        for point in &found {
            assert!(
                named.contains(point),
                "{args:?}: {point} is attached and not named: {line}"
            );
        }
        assert_eq!(
            named.len(),
            found.len() + unnamed,
            "{args:?}: the line names {named:?}; the kernel lists {found:?} and {unnamed} \
             links it does not name: {line}"
        );
    }
}

/// Doctor tells its signals from what it attached: no drop signal, and no
/// drop hook, where `--cause` leaves drops out.
#[test]
fn doctor_does_not_name_hooks_left_off() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    let some = rsttrace(&["--cause", "closed-port", "doctor"]);
    let text = String::from_utf8_lossy(&some.stdout);
    assert!(some.status.success(), "{}", stderr(&some));
    assert!(!text.contains("kfree_skb"), "{text}");
    assert!(!text.contains("silent netfilter drops"), "{text}");
}
