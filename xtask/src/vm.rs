//! `cargo xtask vm-test [KERNEL...]`: the privileged integration tests on
//! Debian's cloud kernels (5.10, 6.1, 6.12, sid) under qemu, each booted
//! with an initramfs built here; `--exec CMD` runs a command there instead.
//! Downloads and extractions are cached under target/vm/.

mod apt;
mod cpio;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod testmod;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use initramfs::Job;

pub struct Options {
    pub kernels: Vec<String>,
    /// Integration test targets of tracer-user to run.
    pub tests: Vec<String>,
    pub test_threads: usize,
    pub timeout: Duration,
    pub exec: Option<String>,
    pub verbose: bool,
    pub smp: usize,
    pub memory_mib: usize,
    /// "auto" (KVM when it boots a guest, else TCG), "kvm" or "tcg".
    pub accel: String,
    /// Extra arguments for every test binary (a name filter, --exact...).
    pub test_args: Vec<String>,
}

/// Modules the tests need (veth pairs, nftables and iptables rejects, both
/// iptables back-ends, sock_diag destroy, AF_PACKET, `ct state` in the
/// block-list rulesets, fail2ban's ipset and iptables `-m set`/`-m
/// multiport` rules, tc's clsact and BPF classifier); those built into a
/// kernel need nothing, dependencies come along by themselves.
const MODULES: &[&str] = &[
    "af_packet",
    "veth",
    "inet_diag",
    "tcp_diag",
    "raw_diag",
    "nf_tables",
    "nft_counter",
    "nft_ct",
    "nft_reject",
    "nf_reject_ipv4",
    "nf_reject_ipv6",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_reject_inet",
    "nft_reject_netdev",
    "nft_compat",
    "x_tables",
    "xt_tcpudp",
    "xt_multiport",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_net",
    "xt_set",
    "ip_tables",
    "ip6_tables",
    "iptable_filter",
    "ip6table_filter",
    "ipt_REJECT",
    "ip6t_REJECT",
    "sch_ingress",
    "cls_bpf",
];

/// Tests a kernel can't run when it lacks a module: Debian builds no
/// `nft_reject_netdev` (CONFIG_NFT_REJECT_NETDEV), so nft refuses the rule
/// the test needs. Such tests are left out on that kernel, and the report
/// says so; the host kernel runs them in `cargo xtask test`.
pub const NEEDS_MODULE: &[(&str, &str)] = &[(
    "nft_reject_netdev",
    "netfilter_reject_nftables_netdev_ingress",
)];

/// The test binary that runs the container image; the VM gets the image
/// only when it runs.
const CONTAINERS_TEST: &str = "containers";
/// Where the VM has the image `cargo xtask image` builds, as an OCI image
/// layout (tests/containers.rs unpacks it into a bundle).
pub const IMAGE_IN_VM: &str = "/usr/share/rsttrace-vm/image";
/// Its own tag: podman's image store is shared with other builds.
const IMAGE_TAG: &str = "localhost/rsttrace:vm-test";

/// Builds the image as `cargo xtask image` does and exports it with
/// podman (no container runs on the host: it can't run them) as an OCI
/// image layout: the layers that ship, not a rootfs assembled here.
fn image_layout(vm: &Path) -> Result<PathBuf> {
    crate::image::image(IMAGE_TAG)?;
    let dir = vm.join("image-oci");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    crate::check(
        std::process::Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-dir", "-o"])
            .arg(&dir)
            .arg(IMAGE_TAG),
    )?;
    Ok(dir)
}

struct KernelResult {
    label: &'static str,
    release: String,
    pass: bool,
    line: String,
    secs: u64,
    boot: Option<String>,
}

pub fn run(o: &Options) -> Result<bool> {
    let mut kernels = vec![];
    for arg in &o.kernels {
        let k = kernel::suite_of(arg)?;
        if !kernels.contains(&k) {
            kernels.push(k);
        }
    }
    if kernels.is_empty() {
        kernels = kernel::KERNELS.to_vec();
    }
    let (rsttrace, bins) = build(&o.tests)?;
    let job = match &o.exec {
        Some(cmd) => Job::Exec(cmd.clone()),
        None => {
            let mut args = vec![format!("--test-threads={}", o.test_threads)];
            args.extend(o.test_args.iter().cloned());
            Job::Tests { args }
        }
    };
    let vm = crate::workspace_root().join("target/vm");
    let apt = apt::Apt::new(&vm.join("apt"))?;
    let busybox = busybox(&apt, &vm)?;
    let image = if o.tests.iter().any(|t| t == CONTAINERS_TEST) {
        Some(image_layout(&vm)?)
    } else {
        None
    };
    let base = initramfs::base(&busybox, &rsttrace, &bins, &job, image.as_deref())?;
    let machine = qemu::Machine {
        smp: o.smp,
        memory_mib: o.memory_mib,
    };
    let mut accel = initial_accel(&o.accel, &vm)?;
    let mut results = vec![];
    for (suite, label) in kernels {
        let dir = vm.join(suite);
        let r = one(&apt, suite, label, &dir, &base, &machine, &mut accel, o).unwrap_or_else(|e| {
            KernelResult {
                label,
                release: "?".into(),
                pass: false,
                line: format!("FAIL {e:#}"),
                secs: 0,
                boot: None,
            }
        });
        results.push(r);
    }
    println!("\nkernel  release                         result  time     boot");
    for r in &results {
        println!(
            "{:<7} {:<31} {:<7} {:>5}s  {}",
            r.label,
            r.release,
            if r.pass { "PASS" } else { "FAIL" },
            r.secs,
            r.boot.as_deref().map_or("-".into(), |b| format!("{b}s")),
        );
    }
    for r in results.iter().filter(|r| !r.pass) {
        println!("{}: {}", r.label, r.line);
    }
    Ok(results.iter().all(|r| r.pass))
}

/// The oops of a breakpoint the kernel's own text patching left
/// (`text_poke_bp`), as a CPU the emulator did not keep coherent took it.
fn is_text_patching_trap(crash: &str) -> bool {
    crash.contains("Oops: int3")
}

/// Where KVM failed to boot a guest, keyed by the host kernel: later runs
/// go straight to TCG instead of waiting for KVM again.
const KVM_UNUSABLE: &str = "kvm-unusable";

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// (accel, whether a failing KVM may fall back to TCG)
fn initial_accel(choice: &str, vm: &Path) -> Result<(qemu::Accel, bool)> {
    Ok(match choice {
        "kvm" => (qemu::Accel::Kvm, false),
        "tcg" => (qemu::Accel::Tcg, false),
        "auto" => {
            let known_bad = std::fs::read_to_string(vm.join(KVM_UNUSABLE))
                .is_ok_and(|k| k.trim() == host_kernel());
            if qemu::kvm_opens() && !known_bad {
                (qemu::Accel::Kvm, true)
            } else {
                (qemu::Accel::Tcg, false)
            }
        }
        other => bail!("--accel {other:?}: use auto, kvm or tcg"),
    })
}

#[allow(clippy::too_many_arguments)]
fn one(
    apt: &apt::Apt,
    suite: &str,
    label: &'static str,
    dir: &Path,
    base: &cpio::Archive,
    machine: &qemu::Machine,
    accel: &mut (qemu::Accel, bool),
    o: &Options,
) -> Result<KernelResult> {
    let k = kernel::fetch(apt, suite, label, dir)?;
    let modules = kernel::plan_modules(&k, MODULES)?;
    if !modules.missing.is_empty() {
        eprintln!(
            "xtask: vm: {label}: no module {} (neither built in nor shipped)",
            modules.missing.join(", ")
        );
    }
    let skip: Vec<&str> = NEEDS_MODULE
        .iter()
        .filter(|(m, _)| modules.missing.iter().any(|x| x == m))
        .map(|(_, t)| *t)
        .collect();
    let kmod = testmod::build(apt, suite, &k)?;
    let initrd = dir.join("initrd.cpio");
    initramfs::write(
        base.clone(),
        &k.release,
        &modules,
        &skip,
        kmod.ko(),
        &initrd,
    )?;
    let log = dir.join("console.log");
    eprintln!(
        "xtask: vm: booting {label} ({}) under qemu ({:?}); console in {}",
        k.release,
        accel.0,
        log.display()
    );
    let echo = if o.exec.is_some() || o.verbose {
        qemu::Echo::All
    } else {
        qemu::Echo::Progress
    };
    let prefix = format!("[{label}] ");
    let mut out = qemu::boot(
        machine, accel.0, &k.vmlinuz, &initrd, &log, o.timeout, echo, &prefix,
    )?;
    if out.kvm_failed && accel.1 {
        eprintln!(
            "xtask: vm: /dev/kvm opens but KVM did not boot the guest (see {}): TCG from now on",
            log.display()
        );
        let _ = std::fs::write(
            dir.parent().unwrap_or(dir).join(KVM_UNUSABLE),
            host_kernel(),
        );
        *accel = (qemu::Accel::Tcg, false);
        out = qemu::boot(
            machine, accel.0, &k.vmlinuz, &initrd, &log, o.timeout, echo, &prefix,
        )?;
    }
    // A guest kernel that crashes before our init runs has run nothing of
    // ours (6.12 under TCG sometimes trips on its own int3 text patching
    // while booting): boot it once more. A crash after boot is reported,
    // never retried: a tracer was running.
    if let (false, Some(crash)) = (out.booted, &out.crash) {
        eprintln!(
            "xtask: vm: {label}: the guest kernel crashed while booting, before any test \
             ran ({crash}; see {}): booting it once more",
            log.display()
        );
        let first = log.with_extension("first-boot.log");
        let _ = std::fs::rename(&log, &first);
        out = qemu::boot(
            machine, accel.0, &k.vmlinuz, &initrd, &log, o.timeout, echo, &prefix,
        )?;
    }
    // After boot too, under TCG, 6.12 now and then trips on its own int3
    // text patching (a jump label being switched on one CPU, the other
    // taking the breakpoint after it is gone: seen once in a CI run, inside
    // bpf_prog_load). That is the emulator's, not a tracer's: run the
    // kernel's tests once more, saying so. Any other crash, a crash under
    // KVM, or the same crash twice, fails.
    let mut rerun_after: Option<String> = None;
    if let (true, Some(crash)) = (out.booted, out.crash.clone())
        && accel.0 == qemu::Accel::Tcg
        && is_text_patching_trap(&crash)
    {
        let first = log.with_extension("crashed-run.log");
        eprintln!(
            "xtask: vm: {label}: the guest kernel crashed on its own text patching under \
             TCG ({crash}; see {}): running its tests once more",
            first.display()
        );
        let _ = std::fs::rename(&log, &first);
        out = qemu::boot(
            machine, accel.0, &k.vmlinuz, &initrd, &log, o.timeout, echo, &prefix,
        )?;
        rerun_after = Some(crash);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = report::summarize(&text);
    let pass = out.result.as_deref() == Some("PASS");
    let mut line = match (&out.result, out.timed_out) {
        (Some(r), _) => r.clone(),
        (None, true) => format!("FAIL timed out after {}s", o.timeout.as_secs()),
        (None, false) => "FAIL the VM stopped without a result line".into(),
    };
    if let Some(crash) = &out.crash {
        line.push_str(&format!(" (the guest kernel crashed: {crash})"));
    }
    if let Some(crash) = &rerun_after {
        line.push_str(&format!(
            " (second run: the first crashed on text patching under TCG: {crash})"
        ));
        eprintln!("xtask: vm: {label}: second run: {line}");
    }
    print_kernel(
        &k,
        &line,
        &out,
        &summary,
        &modules,
        kmod.not_built(),
        &text,
        &log,
    );
    Ok(KernelResult {
        label,
        release: k.release,
        pass,
        line,
        secs: out.duration.as_secs(),
        boot: summary.boot_secs,
    })
}

#[allow(clippy::too_many_arguments)]
fn print_kernel(
    k: &kernel::Kernel,
    line: &str,
    out: &qemu::Outcome,
    s: &report::Summary,
    modules: &kernel::ModulePlan,
    kmod_not_built: Option<&str>,
    log_text: &str,
    log: &Path,
) {
    println!(
        "\n== {} ({}): {line} in {}s (booted in {}s)",
        k.label,
        k.release,
        out.duration.as_secs(),
        s.boot_secs.as_deref().unwrap_or("?")
    );
    for b in &s.binaries {
        println!(
            "   {}: {} (exit {}, {}s)",
            b.name,
            b.counts.as_deref().unwrap_or("no test result line"),
            b.exit.as_deref().unwrap_or("?"),
            b.secs.as_deref().unwrap_or("?")
        );
    }
    // Tests that failed the same way (rsttrace refusing to start) are one
    // line, in the order they failed; numbers (timings, pids) may differ.
    let shape = |m: &str| -> String {
        let mut out = String::new();
        for c in m.chars() {
            if !c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('#') {
                out.push('#');
            }
        }
        out
    };
    let mut groups: Vec<(String, &str, Vec<String>)> = vec![];
    for f in &s.failures {
        let name = format!("{}::{}", f.binary, f.test);
        let key = shape(&f.message);
        match groups.iter_mut().find(|(k, ..)| *k == key) {
            Some((.., names)) => names.push(name),
            None => groups.push((key, &f.message, vec![name])),
        }
    }
    for (_, message, names) in groups {
        println!("   FAILED {}: {message}", names.join(", "));
    }
    if !modules.missing.is_empty() {
        println!(
            "   modules absent from this kernel: {}",
            modules.missing.join(", ")
        );
    }
    for (m, t) in NEEDS_MODULE {
        if modules.missing.iter().any(|x| x == m) {
            println!("   NOT RUN here: {t} (needs {m}, absent from this kernel)");
        }
    }
    if let Some(why) = kmod_not_built {
        println!("   NOT RUN here: {} (no test module: {why})", testmod::TEST);
    }
    for w in &s.warnings {
        println!("   VM warning: {w}");
    }
    if line != "PASS" && s.failures.is_empty() {
        println!("   last lines of the console:");
        let lines: Vec<&str> = log_text.lines().collect();
        for l in &lines[lines.len().saturating_sub(25)..] {
            println!("   | {l}");
        }
    }
    println!("   console log: {}", log.display());
}

/// Builds rsttrace and the test binaries; returns rsttrace's path and the
/// executables of the `tests` integration targets.
fn build(tests: &[String]) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    eprintln!("xtask: vm: building rsttrace and its test binaries (release)");
    let out = crate::cargo()
        .args([
            "test",
            "--release",
            "--package",
            "tracer-user",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        // By name: a target with `test = false` (containers, which only a
        // VM can run) is built only when named, and naming one builds only
        // those named (rsttrace too, which they run).
        .args(tests.iter().flat_map(|t| ["--test", t.as_str()]))
        .stderr(Stdio::inherit())
        .output()
        .context("can't run cargo")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut rsttrace = None;
    let mut found = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let kind = |k: &str| kinds.iter().any(|v| v == k);
        // `cargo test` also builds rsttrace's own unit-test harness.
        let harness = msg["profile"]["test"].as_bool().unwrap_or(false);
        if kind("bin") && name == "rsttrace" && !harness {
            rsttrace = Some(PathBuf::from(exe));
        } else if kind("test") {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    let rsttrace = rsttrace.context("cargo built no rsttrace binary")?;
    let mut bins = vec![];
    for t in tests {
        let exe = found
            .iter()
            .find(|(n, _)| n == t)
            .map(|(_, e)| e.clone())
            .with_context(|| {
                let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
                format!(
                    "no integration test {t:?} in tracer-user (there are: {})",
                    names.join(", ")
                )
            })?;
        bins.push((t.clone(), exe));
    }
    Ok((rsttrace, bins))
}

/// Debian's static busybox, from the host's suite (or trixie elsewhere).
fn busybox(apt: &apt::Apt, vm: &Path) -> Result<PathBuf> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let suite = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"'))
        .filter(|s| apt::SUITES.contains(s))
        .unwrap_or("trixie");
    let rec = apt.show("busybox-static", suite)?;
    let dir = vm.join("busybox");
    let deb = apt.download(&rec, suite, &dir)?;
    let root = dir.join(format!("root-{}", rec.version));
    apt::extract(&deb, &root)?;
    ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .with_context(|| format!("no busybox binary in {}", deb.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the text-patching trap is run again; other crashes fail.
    #[test]
    fn only_a_text_patching_trap_is_run_again() {
        assert!(is_text_patching_trap(
            "[  498.388856] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
        ));
        for other in [
            "[   12.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "[   12.000000] Oops: general protection fault, probably for non-canonical address",
            "[   12.000000] Kernel panic - not syncing: Fatal exception",
        ] {
            assert!(!is_text_patching_trap(other), "{other}");
        }
    }
}
