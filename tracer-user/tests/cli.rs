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
