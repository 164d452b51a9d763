//! Booting a kernel and its initramfs under qemu: the serial console goes
//! to a log file and is scanned for the job's result line; a deadline
//! kills a VM that hangs.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub const RESULT: &str = "RSTTRACE-VM-RESULT: ";

pub struct Machine {
    pub smp: usize,
    pub memory_mib: usize,
}

/// Which console lines reach the terminal while the VM runs.
#[derive(Clone, Copy, PartialEq)]
pub enum Echo {
    All,
    /// Test progress (`test x ... ok`) and this tool's own lines.
    Progress,
}

pub struct Outcome {
    /// KVM was asked for and the guest did not boot with it.
    pub kvm_failed: bool,
    /// The text after "RSTTRACE-VM-RESULT: ", if the line came.
    pub result: Option<String>,
    pub timed_out: bool,
    pub duration: Duration,
    /// Our init said it booted (before it, no test had run).
    pub booted: bool,
    /// The guest kernel's first crash line (oops, BUG, panic), if any.
    pub crash: Option<String>,
}

/// Whether a console line says the guest kernel itself crashed.
fn is_crash(line: &str) -> bool {
    ["Oops:", "Kernel panic", "BUG: ", "general protection fault"]
        .iter()
        .any(|m| line.contains(m))
}

/// How the guest's CPU runs. KVM can be present and still unusable (nested
/// virtualization that fails on the first instructions, as on this project's
/// machines), so a KVM boot must show the guest's boot line quickly.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// A KVM guest prints its boot line within seconds; past this, KVM is
/// taken as unusable and the kernel is booted again under TCG.
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(60);
pub const BOOTED: &str = "RSTTRACE-VM: booted ";

pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[allow(clippy::too_many_arguments)]
pub fn boot(
    m: &Machine,
    accel: Accel,
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    echo: Echo,
    prefix: &str,
) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    let accel = match accel {
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
    };
    cmd.args(accel)
        .args(["-smp", &m.smp.to_string()])
        .args(["-m", &m.memory_mib.to_string()])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        // Kept open and unused: the console must not see end of input.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context("can't run qemu-system-x86_64: install qemu-system-x86")?;
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    thread::spawn(move || lines(out, tx));
    thread::spawn(move || lines(err, tx2));

    let deadline = start + timeout;
    let mut result = None;
    let mut timed_out = false;
    let mut booted = false;
    let kvm = accel[1] == "kvm";
    let kvm_failed;
    let mut grace = None;
    let mut crash: Option<String> = None;
    loop {
        // After the result line the VM only has to power off.
        let mut limit = grace.unwrap_or(deadline);
        if kvm && !booted {
            limit = limit.min(start + KVM_BOOT_LIMIT);
        }
        let Some(left) = limit.checked_duration_since(Instant::now()) else {
            kvm_failed = kvm && !booted;
            timed_out = result.is_none() && !kvm_failed;
            break;
        };
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                booted |= line.contains(BOOTED);
                if crash.is_none() && is_crash(&line) {
                    crash = Some(line.trim().to_string());
                }
                if let Some(i) = line.find(RESULT) {
                    result = Some(line[i + RESULT.len()..].trim().to_string());
                    grace = Some(Instant::now() + Duration::from_secs(30));
                }
                let progress = line.starts_with("test ")
                    || line.starts_with("RSTTRACE-VM")
                    || line.contains("Kernel panic");
                if echo == Echo::All || progress {
                    println!("{prefix}{line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                kvm_failed = kvm && !booted;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    file.flush()?;
    Ok(Outcome {
        kvm_failed,
        result,
        timed_out,
        duration: start.elapsed(),
        booted,
        crash,
    })
}

/// Console bytes as lines: lossy UTF-8, without the serial line's CRs.
fn lines(r: impl Read, tx: mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = vec![];
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .replace('\r', "");
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_crash_lines_are_told_from_test_output() {
        for l in [
            "[    1.712345] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   90.1] Kernel panic - not syncing: Fatal exception in interrupt",
            "[    3.2] BUG: kernel NULL pointer dereference, address: 0000000000000008",
        ] {
            assert!(is_crash(l), "{l}");
        }
        for l in [
            "test closed_port_ipv4 ... ok",
            "RSTTRACE-VM: booted 6.12.117-cloud-amd64 in 3.10s",
            "thread 'x' panicked at tracer-user/tests/trace.rs:40:5:",
        ] {
            assert!(!is_crash(l), "{l}");
        }
    }
}
