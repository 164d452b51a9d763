//! Checks made before touching the kernel, each failing with a message that
//! says what to do.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

pub const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities, from /proc/self/status.
fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// Which capabilities are missing to load and attach tracing programs:
/// CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN which implies both.
pub fn missing_caps(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return vec![];
    }
    let mut missing = vec![];
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Whether the effective set holds capability `cap` (unknown: assume yes
/// and let the kernel answer).
pub fn has_cap(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective_caps(&status).is_none_or(|eff| eff & (1 << cap) != 0)
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYSLOG: u32 = 34;

pub fn check_capabilities() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = effective_caps(&status) else {
        // No procfs: let the kernel answer instead of guessing.
        return Ok(());
    };
    let missing = missing_caps(eff);
    if !missing.is_empty() {
        bail!(
            "does not have {} (or CAP_SYS_ADMIN): can't load eBPF programs; run as root, e.g. `sudo rsttrace`",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// Checked after tracefs: where both are missing, mounting tracefs is the
/// first thing to fix.
pub fn check_perf_paranoid() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = effective_caps(&status) else {
        return Ok(());
    };
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(level) = paranoid
        && needs_sys_admin_to_attach(level, eff)
    {
        bail!(
            "does not have CAP_SYS_ADMIN: kernel.perf_event_paranoid is {level} (Debian's \
             setting), which reserves perf events, and so attaching tracepoints and kprobes, \
             to CAP_SYS_ADMIN; run as root, or `sysctl kernel.perf_event_paranoid=2` to let \
             CAP_PERFMON do"
        );
    }
    Ok(())
}

/// Above 2 (a Debian patch) perf_event_open needs CAP_SYS_ADMIN itself:
/// CAP_PERFMON is not enough.
pub fn needs_sys_admin_to_attach(paranoid: i32, eff: u64) -> bool {
    paranoid > 2 && eff & (1 << CAP_SYS_ADMIN) == 0
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

fn is_tracefs(p: &Path) -> bool {
    p.join("events").is_dir()
}

/// The tracefs mount point, mounting it at /sys/kernel/tracing if needed.
pub fn tracefs() -> Result<PathBuf> {
    for p in [TRACEFS, DEBUGFS_TRACING] {
        if is_tracefs(Path::new(p)) {
            return Ok(PathBuf::from(p));
        }
    }
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}): \
             run `mount -t tracefs tracefs {TRACEFS}` as root (kernel needs CONFIG_TRACING)"
        );
    }
    if !is_tracefs(Path::new(TRACEFS)) {
        bail!(
            "mounted tracefs at {TRACEFS} but it has no events/ directory: is CONFIG_TRACING set?"
        );
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

/// Text of a tracepoint's format file, or an error naming the tracepoint.
pub fn tracepoint_format(tracefs: &Path, category: &str, name: &str) -> Result<String> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this kernel has no {category}:{name} tracepoint ({} not found); rsttrace needs Linux 4.15 or newer",
            path.display()
        ),
        Err(e) => bail!("can't read {}: {e}", path.display()),
    }
}

/// Lets map memory count against the memlock limit on kernels before 5.11.
/// Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK (later ones to
/// the memory cgroup): there the limit must be raised, which needs
/// CAP_SYS_RESOURCE unless it is already unlimited.
pub fn raise_memlock_limit() -> Result<()> {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } == 0 {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if charges_memlock(&release) {
        bail!(
            "can't raise RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE): kernel {} charges eBPF maps \
             to it (before 5.11); run as root, or raise it first (`ulimit -l unlimited`)",
            release.trim()
        );
    }
    Ok(())
}

/// Whether kernel `release` ("5.10.0-32-cloud-amd64") is older than 5.11.
pub fn charges_memlock(release: &str) -> bool {
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) < (5, 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_is_charged_before_5_11() {
        assert!(charges_memlock("5.10.0-32-cloud-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.1.0-50-cloud-amd64"));
        assert!(!charges_memlock("6.18.44-fc-v782\n"));
    }

    #[test]
    fn debian_paranoid_3_needs_sys_admin_to_attach() {
        let perfmon = 1u64 << CAP_PERFMON | 1 << CAP_BPF;
        assert!(needs_sys_admin_to_attach(3, perfmon));
        assert!(!needs_sys_admin_to_attach(3, perfmon | 1 << CAP_SYS_ADMIN));
        assert!(!needs_sys_admin_to_attach(2, perfmon));
        assert!(!needs_sys_admin_to_attach(-1, perfmon));
    }

    #[test]
    fn reads_cap_eff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(s), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
        assert_eq!(effective_caps(""), None);
    }

    #[test]
    fn names_missing_caps() {
        assert!(missing_caps(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_caps(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn missing_tracepoint_is_named() {
        let dir = std::env::temp_dir();
        let e = tracepoint_format(&dir, "tcp", "no_such_tp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tcp:no_such_tp tracepoint"), "{e}");
    }
}
