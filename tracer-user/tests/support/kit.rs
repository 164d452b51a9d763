//! The test-kit the integration tests and `cargo xtask bench` share: the
//! pieces that set up namespaces and read the kernel's own counters, with
//! no test framework in them (std and libc only). The bench includes this
//! file with `#[path]`; the tests as `support::kit`. Both fail loudly: a
//! counter that can't be read is a broken run, never a 0.
#![allow(dead_code)]

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    thread,
};

/// Runs `ip` with `args`; panics with its stderr unless it succeeds.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates network namespace `name` with its loopback up; one left over
/// from a run that was killed is deleted first.
pub fn netns_add(name: &str) {
    netns_delete(name);
    ip(&["netns", "add", name]);
    ip(&["-n", name, "link", "set", "lo", "up"]);
}

/// Deletes network namespace `name` (quietly: it may be gone already).
pub fn netns_delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "delete", name])
        .stderr(Stdio::null())
        .status();
}

/// Moves the calling thread into namespace `name`.
pub fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread that has entered namespace `name`: sockets it
/// creates belong to the namespace.
pub fn run_in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_string();
    thread::spawn(move || {
        enter_netns(&name);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Tcp OutRsts of the calling thread's namespace: exactly the RSTs its TCP
/// stack sent.
pub fn out_rsts_here() -> u64 {
    tcp_mib_here("OutRsts")
}

/// A counter of the Tcp lines of /proc/net/snmp, in the calling thread's
/// namespace. Hand-read rather than with procfs: procfs has no reader for
/// `/proc/thread-self/net/snmp` (a thread's namespace), and two lines of
/// names and values are all there is to it.
pub fn tcp_mib_here(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")
        .expect("reading /proc/thread-self/net/snmp");
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next().expect("Tcp header").split_whitespace().collect();
    let values: Vec<&str> = tcp.next().expect("Tcp values").split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no Tcp {name} in /proc/net/snmp"));
    values[i]
        .parse()
        .unwrap_or_else(|e| panic!("Tcp {name}: {:?}: {e}", values[i]))
}
