//! The test kernel module (tracer-user/tests/kmod: it answers SYNs with a
//! RST it builds itself), built for a VM kernel against that kernel's
//! Debian headers, with the compiler the kernel was built with.
//!
//! Modules must come from the kernel's own compiler (its flags are in the
//! headers' configuration, and a mismatch warns at best), so a kernel
//! whose gcc the host lacks does not get the module: the test that loads
//! it is reported NOT RUN there, with the reason.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    apt::{self, Apt},
    kernel::Kernel,
};

/// The test that loads the module (an ignored test: only a kernel with
/// module support and the module built for it can run it).
pub const TEST: &str = "injected_by_a_kernel_module";
/// Where the VM finds the module, and how the test learns it.
pub const VM_PATH: &str = "/usr/lib/rsttrace-vm/rst_inject_test.ko";
pub const ENV: &str = "RSTTRACE_TEST_MODULE";

pub enum Outcome {
    Built(PathBuf),
    /// Why this kernel gets no module (not an error: the report says it).
    NotBuilt(String),
}

impl Outcome {
    pub fn ko(&self) -> Option<&Path> {
        match self {
            Outcome::Built(ko) => Some(ko),
            Outcome::NotBuilt(_) => None,
        }
    }

    pub fn not_built(&self) -> Option<&str> {
        match self {
            Outcome::NotBuilt(why) => Some(why),
            Outcome::Built(_) => None,
        }
    }
}

pub fn build(apt: &Apt, suite: &str, k: &Kernel) -> Result<Outcome> {
    let headers = headers(apt, suite, k)?;
    let gcc = match kernel_gcc(&headers)? {
        Some(v) => v,
        None => return Ok(Outcome::NotBuilt("its headers name no gcc".into())),
    };
    let own = format!("gcc-{gcc}");
    // Another gcc builds modules that load as well, as long as it takes
    // the kernel's flags; a failure then is the compiler's, not the test's.
    let (cc, exact) = if on_path(&own) {
        (own.clone(), true)
    } else {
        ("gcc".to_string(), false)
    };
    let src = crate::workspace_root().join("tracer-user/tests/kmod");
    let out = k.dir.join("kmod");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    for f in ["Kbuild", "rst_inject_test.c"] {
        std::fs::copy(src.join(f), out.join(f))
            .with_context(|| format!("copying {}", src.join(f).display()))?;
    }
    eprintln!("xtask: vm: {}: building the test module with {cc}", k.label);
    let res = Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", out.display()))
        .arg(format!("CC={cc}"))
        .arg("modules")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("can't run make (install make)")?;
    if !res.status.success() && !exact {
        let err = String::from_utf8_lossy(&res.stderr);
        let first = err
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| err.lines().last())
            .unwrap_or("")
            .trim();
        return Ok(Outcome::NotBuilt(format!(
            "this host lacks {own}, the kernel's compiler, and its gcc fails on the kernel's \
             flags: {first}"
        )));
    }
    if !res.status.success() {
        bail!(
            "building the test module for {} failed:\n{}",
            k.release,
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    let ko = out.join("rst_inject_test.ko");
    if !ko.is_file() {
        bail!("make left no {}", ko.display());
    }
    Ok(Outcome::Built(ko))
}

/// Debian's linux-headers-<release> and its dependencies (the common
/// headers, the kbuild tools), extracted once; returns the kbuild tree.
fn headers(apt: &Apt, suite: &str, k: &Kernel) -> Result<PathBuf> {
    let root = k.dir.join(format!("headers-{}", k.release));
    let (_, debs) = apt.download_closure(
        &format!("linux-headers-{}", k.release),
        suite,
        &k.dir.join("header-debs"),
        |dep| dep.starts_with("linux-headers-") || dep.starts_with("linux-kbuild-"),
    )?;
    for deb in &debs {
        apt::extract(deb, &root)?;
    }
    let tree = root.join(format!("usr/src/linux-headers-{}", k.release));
    // Debian's Makefile names the common headers (and, newer, itself as
    // KBUILD_OUTPUT) by their installed paths: point them into this
    // extraction instead.
    let makefile = tree.join("Makefile");
    let text = std::fs::read_to_string(&makefile)
        .with_context(|| format!("no kbuild tree at {}", tree.display()))?;
    let here = format!("{}/usr/src/", root.display());
    let ours = text.replace(&here, "/usr/src/").replace("/usr/src/", &here);
    if ours != text {
        std::fs::write(&makefile, ours)?;
    }
    Ok(tree)
}

/// The major version of the gcc that built the kernel, from the headers'
/// CONFIG_CC_VERSION_TEXT ("gcc-12 (Debian 12.2.0-14) 12.2.0").
fn kernel_gcc(tree: &Path) -> Result<Option<u32>> {
    let config = std::fs::read_to_string(tree.join(".config"))
        .with_context(|| format!("reading {}/.config", tree.display()))?;
    Ok(gcc_major(&config))
}

fn gcc_major(config: &str) -> Option<u32> {
    let text = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))?
        .trim_matches('"');
    if !text.contains("gcc") {
        return None;
    }
    // The last word is the version: "... 12.2.0".
    text.split_whitespace()
        .last()?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_from_config() {
        assert_eq!(
            gcc_major("X=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14) 12.2.0\"\n"),
            Some(12)
        );
        assert_eq!(
            gcc_major(
                "CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\""
            ),
            Some(14)
        );
        assert_eq!(
            gcc_major("CONFIG_CC_VERSION_TEXT=\"Debian clang version 19.1.7\""),
            None
        );
        assert_eq!(gcc_major("CONFIG_CC_IS_GCC=y"), None);
    }
}
