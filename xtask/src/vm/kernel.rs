//! Debian cloud-amd64 kernels: which suite a KERNEL argument names, the
//! packages behind `linux-image-cloud-amd64` there, and the kernel modules
//! the tests need, in load order.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::apt::{self, Apt};

/// (suite, the name the kernel goes by in reports).
pub const KERNELS: [(&str, &str); 4] = [
    ("bullseye", "5.10"),
    ("bookworm", "6.1"),
    ("trixie", "6.12"),
    ("sid", "sid"),
];

/// Dependencies that carry the kernel itself: the image (older suites),
/// or sid's split packages: binary (vmlinuz), modules, and base
/// (modules.builtin, config). Plain `linux-base` (scripts) does not match.
const KERNEL_PACKAGES: [&str; 4] = [
    "linux-image-",
    "linux-binary-",
    "linux-modules-",
    "linux-base-",
];

pub fn suite_of(arg: &str) -> Result<(&'static str, &'static str)> {
    let arg = if arg == "unstable" { "sid" } else { arg };
    KERNELS
        .iter()
        .find(|(suite, label)| arg == *suite || arg == *label)
        .copied()
        .with_context(|| {
            format!(
                "unknown kernel {arg:?}: use 5.10, 6.1, 6.12, sid (or bullseye, bookworm, trixie)"
            )
        })
}

pub struct Kernel {
    pub label: &'static str,
    /// `uname -r`, the name of its modules directory.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
    /// target/vm/<suite>: everything of this kernel.
    pub dir: PathBuf,
}

/// Resolves, downloads (once) and extracts the suite's cloud kernel.
pub fn fetch(apt: &Apt, suite: &str, label: &'static str, dir: &Path) -> Result<Kernel> {
    let debs_dir = dir.join("debs");
    let (meta, debs) =
        apt.download_closure("linux-image-cloud-amd64", suite, &debs_dir, |dep| {
            KERNEL_PACKAGES.iter().any(|p| dep.starts_with(p))
        })?;
    let root = dir.join(format!("root-{}", meta.version));
    for deb in &debs {
        apt::extract(deb, &root)?;
    }

    let (release, modules_dir) = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("modules.builtin").exists())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .with_context(|| {
            format!(
                "no modules directory with modules.builtin under {}",
                root.display()
            )
        })?;
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        modules_dir.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz for {release} under {}", root.display()))?;
    remove_stale(
        dir,
        &debs_dir,
        &debs,
        &[root, dir.join(format!("modules-{release}"))],
    );
    Ok(Kernel {
        label,
        release,
        vmlinuz,
        modules_dir,
        dir: dir.to_path_buf(),
    })
}

/// A newer kernel replaced an older one: drop the older one's files.
fn remove_stale(dir: &Path, debs_dir: &Path, debs: &[PathBuf], keep: &[PathBuf]) {
    for e in std::fs::read_dir(debs_dir).into_iter().flatten().flatten() {
        if !debs.contains(&e.path()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let versioned = name.starts_with("root-") || name.starts_with("modules-");
        if versioned && !keep.contains(&e.path()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What loading a set of modules takes on one kernel.
pub struct ModulePlan {
    /// Decompressed .ko files (host paths), dependencies first.
    pub load: Vec<PathBuf>,
    pub builtin: Vec<String>,
    pub missing: Vec<String>,
}

/// Module names compare with `-` and `_` as one.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// The closure of `wanted` over the modules' own `depends=` lists (Debian
/// ships no modules.dep: depmod runs at install), decompressed into
/// target/vm/<suite>/modules-<release>/.
pub fn plan_modules(k: &Kernel, wanted: &[&str]) -> Result<ModulePlan> {
    let builtin: BTreeSet<String> = std::fs::read_to_string(k.modules_dir.join("modules.builtin"))
        .context("reading modules.builtin")?
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut files = BTreeMap::new();
    index(&k.modules_dir.join("kernel"), &mut files)?;
    let out = k.dir.join(format!("modules-{}", k.release));
    std::fs::create_dir_all(&out)?;
    let mut plan = ModulePlan {
        load: vec![],
        builtin: vec![],
        missing: vec![],
    };
    let mut done = BTreeSet::new();
    for name in wanted {
        let name = norm(name);
        if builtin.contains(&name) {
            plan.builtin.push(name);
        } else if !files.contains_key(&name) {
            plan.missing.push(name);
        } else {
            visit(&name, &files, &builtin, &out, &mut done, &mut plan.load)?;
        }
    }
    Ok(plan)
}

/// Depth-first, dependencies before the module itself.
fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    out: &Path,
    done: &mut BTreeSet<String>,
    load: &mut Vec<PathBuf>,
) -> Result<()> {
    if builtin.contains(name) || !done.insert(name.to_string()) {
        return Ok(());
    }
    let src = files
        .get(name)
        .with_context(|| format!("module {name} (a dependency) not found"))?;
    let ko = decompress(src, &out.join(format!("{name}.ko")))?;
    let data = std::fs::read(&ko)?;
    for dep in modinfo(&data, "depends")
        .with_context(|| format!("reading {}", ko.display()))?
        .split(',')
        .filter(|d| !d.is_empty())
    {
        visit(&norm(dep), files, builtin, out, done, load)?;
    }
    load.push(ko);
    Ok(())
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(norm(stem))
}

fn index(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index(&p, files)?;
        } else if let Some(name) = module_name(&p) {
            files.insert(name, p);
        }
    }
    Ok(())
}

/// .ko.xz / .ko.zst / .ko.gz with the host's decompressors (busybox insmod
/// takes plain ELF only); cached by name.
fn decompress(src: &Path, dst: &Path) -> Result<PathBuf> {
    if dst.exists() {
        return Ok(dst.to_path_buf());
    }
    let s = src.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        "xz"
    } else if s.ends_with(".zst") {
        "zstd"
    } else if s.ends_with(".gz") {
        "gzip"
    } else {
        std::fs::copy(src, dst)?;
        return Ok(dst.to_path_buf());
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .output()
        .with_context(|| format!("can't run {tool} (to decompress {s}): is it installed?"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {s} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, out.stdout)?;
    std::fs::rename(&tmp, dst)?;
    Ok(dst.to_path_buf())
}

/// A `key=value` of an ELF64 module's .modinfo section ("" when absent).
fn modinfo(elf: &[u8], key: &str) -> Result<String> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).context("not an ELF file")?;
    let body = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?
        .data()
        .context("truncated ELF")?;
    let prefix = format!("{key}=");
    Ok(body
        .split(|&b| b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok())
        .find_map(|f| f.strip_prefix(&prefix))
        .unwrap_or("")
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_arguments_name_suites() {
        assert_eq!(suite_of("6.12").unwrap(), ("trixie", "6.12"));
        assert_eq!(suite_of("bullseye").unwrap(), ("bullseye", "5.10"));
        assert_eq!(suite_of("unstable").unwrap(), ("sid", "sid"));
        assert!(suite_of("6.18").is_err());
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(
            module_name(Path::new("kernel/net/ipv4/netfilter/nf_reject_ipv4.ko.xz")).as_deref(),
            Some("nf_reject_ipv4")
        );
        assert_eq!(
            module_name(Path::new("kernel/drivers/net/veth.ko")).as_deref(),
            Some("veth")
        );
        assert_eq!(module_name(Path::new("modules.order")), None);
    }
}
