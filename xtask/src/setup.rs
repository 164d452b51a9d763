//! `cargo xtask setup`: everything building and tracing need that a fresh
//! machine with rustup (stable + nightly) lacks. Each step checks first and
//! says what it does and why.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{check, is_root};

/// bpf-linker's minor line that works with the nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "^0.13";

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    tracefs();
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("can't run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the eBPF crate builds with a nightly toolchain: install it with `rustup toolchain install nightly`")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to nightly (the eBPF build compiles core from source)");
    check(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to the nightly toolchain")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker links dynamically against nightly rustc's own libLLVM. Its
/// prefix must outlive any checkout, so it lives in CARGO_HOME; refreshing
/// the links also repairs an install whose nightly was updated.
fn llvm_prefix() -> Result<(PathBuf, u32)> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    let soname = libllvm.file_name().expect("file").to_owned();
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major: u32 = soname
        .to_str()
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split(['.', '-']).next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("can't read the LLVM version from {soname:?}"))?;
    let prefix = cargo_home().join("bpf-linker-llvm");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib).with_context(|| format!("creating {}", plib.display()))?;
    for name in [Path::new("libLLVM.so"), Path::new(&soname)] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok((prefix, major))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Command::new(cargo_home().join("bin/bpf-linker"))
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn bpf_linker() -> Result<()> {
    let (prefix, major) = llvm_prefix()?;
    if bpf_linker_works() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against nightly rustc's LLVM {major} \
         (links the eBPF object; about a minute)"
    );
    // A bpf-linker that exists but does not run (its libLLVM moved) is
    // replaced.
    let force = cargo_home().join("bin/bpf-linker").exists();
    check(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .args(force.then_some("--force"))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("installing bpf-linker")?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but does not run: check that {} is in PATH",
            cargo_home().join("bin").display()
        );
    }
    Ok(())
}

/// rsttrace mounts tracefs itself; doing it here too lets a developer see
/// the tracepoints before the first run. Not fatal: building needs no root.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return;
    }
    if !is_root() {
        eprintln!(
            "xtask: tracefs is not mounted; rsttrace will mount it when run as root \
             (or: sudo mount -t tracefs tracefs /sys/kernel/tracing)"
        );
        return;
    }
    eprintln!(
        "xtask: mounting tracefs at /sys/kernel/tracing (rsttrace reads tracepoint formats there)"
    );
    if let Err(e) =
        check(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
    {
        eprintln!("xtask: warning: {e:#}");
    }
}
