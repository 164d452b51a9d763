//! `cargo xtask build --static` and `cargo xtask image`: the container image
//! of deploy/Dockerfile, checked on a machine that can't pull base images.
//!
//! The Dockerfile's build stage runs `cargo xtask build --static`; here that
//! same command runs on the host, and the final stage is built from its
//! output with podman, so the image CI builds is the one users build.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, check, workspace_root};

pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds rsttrace linked statically (glibc's crt-static: no musl target
/// needed), so it runs on an empty base image.
pub fn build_static() -> Result<PathBuf> {
    // Target-scoped flags: the eBPF object, built by tracer-user's build
    // script for the BPF target, must not get them.
    check(
        cargo()
            .args(["build", "--release", "--package", "tracer-user"])
            .args(["--target", STATIC_TARGET])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
    )?;
    let bin = workspace_root().join(format!("target/{STATIC_TARGET}/release/rsttrace"));
    ensure_static(&bin)?;
    eprintln!("xtask: static binary at {}", bin.display());
    Ok(bin)
}

/// A static executable has no program interpreter (PT_INTERP).
fn ensure_static(bin: &std::path::Path) -> Result<()> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", bin.display()))?;
    let endian = elf.endian();
    if elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
    {
        bail!(
            "{} is dynamically linked (it has a program interpreter)",
            bin.display()
        );
    }
    Ok(())
}

/// The Dockerfile's last stage, taking the binary from the build context
/// instead of the build stage.
fn final_stage(dockerfile: &str) -> Result<String> {
    let start = dockerfile
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .map(|(i, _)| i)
        .last()
        .context("deploy/Dockerfile has no FROM line")?;
    let mut copies = 0;
    let stage: Vec<String> = dockerfile
        .lines()
        .skip(start)
        .map(|l| {
            if l.starts_with("COPY --from=build ") {
                copies += 1;
                // COPY --from=build <path>/rsttrace /rsttrace
                let dest = l.split_whitespace().last().unwrap_or("/rsttrace");
                format!("COPY rsttrace {dest}")
            } else {
                l.to_string()
            }
        })
        .collect();
    ensure!(
        copies == 1,
        "deploy/Dockerfile's final stage should copy exactly one file from the build stage"
    );
    Ok(stage.join("\n") + "\n")
}

/// Builds the static binary and, when podman is installed, the image
/// `tag`; then checks the binary inside the image runs.
pub fn image(tag: &str) -> Result<()> {
    let bin = build_static()?;
    let root = workspace_root();
    let dockerfile =
        fs::read_to_string(root.join("deploy/Dockerfile")).context("reading deploy/Dockerfile")?;
    let context = root.join("target/image");
    fs::create_dir_all(&context)?;
    fs::copy(&bin, context.join("rsttrace")).context("copying the binary")?;
    fs::write(context.join("Containerfile"), final_stage(&dockerfile)?)?;

    if Command::new("podman").arg("--version").output().is_err() {
        bail!("podman is not installed (Debian package podman): can't build the image");
    }
    check(
        Command::new("podman")
            .args(["build", "--quiet", "-t", tag, "-f"])
            .arg(context.join("Containerfile"))
            .arg(&context),
    )?;
    // Running containers needs more than this machine allows; take the
    // binary back out of the image and run it.
    let out = Command::new("podman")
        .args(["create", tag])
        .output()
        .context("podman create")?;
    ensure!(out.status.success(), "podman create {tag} failed");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let extracted = context.join("from-image");
    let copied = Command::new("podman")
        .args(["cp", &format!("{id}:/rsttrace")])
        .arg(&extracted)
        .status();
    let _ = Command::new("podman").args(["rm", &id]).output();
    ensure!(copied?.success(), "podman cp {id}:/rsttrace failed");
    let version = Command::new(&extracted)
        .arg("--version")
        .output()
        .context("running the image's binary")?;
    ensure!(
        version.status.success(),
        "the image's rsttrace does not run"
    );
    eprintln!(
        "xtask: image {tag} built; its binary runs: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stage_takes_the_binary_from_the_context() {
        let df = fs::read_to_string(workspace_root().join("deploy/Dockerfile")).unwrap();
        let stage = final_stage(&df).unwrap();
        assert!(stage.starts_with("FROM scratch\n"), "{stage}");
        assert!(stage.contains("\nCOPY rsttrace /rsttrace\n"), "{stage}");
        assert!(!stage.contains("--from"), "{stage}");
        // The build stage runs the command `build_static` runs.
        assert!(df.contains("RUN cargo xtask build --static\n"), "{df}");
    }
}
