//! Debian packages through a private apt configuration under target/vm/apt/:
//! its own sources, lists and cache, so the host's apt setup is only read
//! (for proxy and release-validity settings), never changed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

/// Suites whose kernels the VM tests boot; the host's suite serves busybox.
pub const SUITES: [&str; 4] = ["bullseye", "bookworm", "trixie", "sid"];
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Lists younger than this are used as they are: no network on re-runs.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub struct Apt {
    dir: PathBuf,
}

/// One binary package record, as `apt-cache show` gives it.
pub struct Record {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub depends: Vec<String>,
}

impl Apt {
    /// Writes the private configuration and refreshes the lists when they
    /// are missing or older than a day.
    pub fn new(dir: &Path) -> Result<Self> {
        let apt = Apt {
            dir: dir.to_path_buf(),
        };
        apt.configure()?;
        apt.refresh()?;
        Ok(apt)
    }

    fn configure(&self) -> Result<()> {
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/apt.conf.d",
        ] {
            let d = self.dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        for sub in ["etc/sources.list.d", "etc/preferences.d"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let status = self.dir.join("state/status");
        if !status.exists() {
            // No installed packages: nothing on the host shapes resolution.
            std::fs::write(&status, "")?;
        }
        let mut sources = String::new();
        for suite in SUITES {
            sources.push_str(&format!(
                "deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"
            ));
        }
        if write_if_changed(&self.dir.join("etc/sources.list"), &sources)? {
            // New suites: the lists must be fetched whatever their age.
            let _ = std::fs::remove_file(self.dir.join("state/updated"));
        }
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        // Sandbox::User root: the _apt user may not reach target/ (a home
        // directory), and these are signed downloads into our own cache.
        // Lists kept compressed and no source cache: 180 MB instead of 420.
        let mut conf = format!(
            "Dir::State \"{}\";\n\
             Dir::State::status \"{}\";\n\
             Dir::Cache \"{}\";\n\
             Dir::Etc::SourceList \"{}\";\n\
             Dir::Etc::SourceParts \"{}\";\n\
             Dir::Etc::Parts \"{}\";\n\
             Dir::Etc::main \"/dev/null\";\n\
             Dir::Etc::Preferences \"/dev/null\";\n\
             Dir::Etc::PreferencesParts \"{}\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             Acquire::Languages {{ \"none\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::GzipIndexes \"true\";\n\
             Dir::Cache::srcpkgcache \"\";\n",
            d("state"),
            d("state/status"),
            d("cache"),
            d("etc/sources.list"),
            d("etc/sources.list.d"),
            d("etc/apt.conf.d"),
            d("etc/preferences.d"),
        );
        conf.push_str(&host_network_settings());
        write_if_changed(&self.dir.join("etc/apt.conf"), &conf)?;
        Ok(())
    }

    /// apt reads APT_CONFIG before anything else, so the host's
    /// apt.conf.d (hooks, extra index targets) is never read.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", self.dir.join("etc/apt.conf"));
        c
    }

    fn refresh(&self) -> Result<()> {
        let stamp = self.dir.join("state/updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        eprintln!(
            "xtask: vm: refreshing the package lists of {} (private apt under {})",
            SUITES.join(", "),
            self.dir.display()
        );
        let out = self
            .cmd("apt-get")
            .args(["-q", "update"])
            .stdout(Stdio::null())
            .output()
            .context("can't run apt-get")?;
        let err = String::from_utf8_lossy(&out.stderr);
        // apt-get update exits 0 even when a suite failed: read its errors.
        if !out.status.success() || err.lines().any(|l| l.starts_with("E:")) {
            if self.dir.join("state/updated").exists() {
                eprintln!("xtask: vm: warning: apt-get update failed, using the old lists:\n{err}");
                return Ok(());
            }
            bail!("apt-get update failed: {}", err.trim());
        }
        std::fs::write(&stamp, "")?;
        Ok(())
    }

    /// The candidate of `package` in `suite`.
    pub fn show(&self, package: &str, suite: &str) -> Result<Record> {
        let out = self
            .cmd("apt-cache")
            .args(["show", "--no-all-versions", &format!("{package}/{suite}")])
            .stderr(Stdio::piped())
            .output()
            .context("can't run apt-cache")?;
        if !out.status.success() {
            bail!(
                "no package {package} in {suite}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse_record(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("apt-cache show {package}/{suite}"))
    }

    /// Downloads `package` and, transitively, the dependencies `follow`
    /// accepts, into `dir`; returns the candidate of `package` and the .debs.
    pub fn download_closure(
        &self,
        package: &str,
        suite: &str,
        dir: &Path,
        follow: impl Fn(&str) -> bool,
    ) -> Result<(Record, Vec<PathBuf>)> {
        let top = self.show(package, suite)?;
        let mut debs = vec![];
        // The top package counts as seen: a dependency cycle back to it
        // would download and extract it twice.
        let mut seen = std::collections::BTreeSet::from([top.package.clone()]);
        let mut queue = vec![top.package.clone()];
        while let Some(package) = queue.pop() {
            let rec = self.show(&package, suite)?;
            debs.push(self.download(&rec, suite, dir)?);
            for dep in rec.depends {
                if follow(&dep) && seen.insert(dep.clone()) {
                    queue.push(dep);
                }
            }
        }
        Ok((top, debs))
    }

    /// Downloads the package of `rec` into `dir` unless it is there already;
    /// returns the .deb's path.
    pub fn download(&self, rec: &Record, suite: &str, dir: &Path) -> Result<PathBuf> {
        let base = rec.filename.rsplit('/').next().unwrap_or(&rec.filename);
        let deb = dir.join(base);
        if deb.exists() {
            return Ok(deb);
        }
        // apt-get names the file after the version with its epoch
        // (`1%3a1.35`); download into an empty directory and rename.
        let tmp = dir.join(".download");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        eprintln!("xtask: vm: downloading {base}");
        crate::check(
            self.cmd("apt-get")
                .args(["-q", "download", &format!("{}/{suite}", rec.package)])
                .current_dir(&tmp)
                .stdout(Stdio::null()),
        )?;
        let got = std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", tmp.display()))?;
        std::fs::rename(&got, &deb)?;
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(deb)
    }
}

/// Extracts `deb` into `root` once (a stamp per package remembers it).
pub fn extract(deb: &Path, root: &Path) -> Result<()> {
    let name = deb.file_name().expect("file").to_string_lossy();
    let stamp = root.join(format!(".extracted-{name}"));
    if stamp.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(root)?;
    crate::check(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    std::fs::write(stamp, "")?;
    Ok(())
}

fn parse_record(text: &str) -> Result<Record> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let depends = field("Depends")
        .map(|d| {
            d.split(',')
                // "a (= 1) | b": the first alternative, without its version.
                .filter_map(|alt| alt.split('|').next())
                .filter_map(|p| p.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Record {
        package: field("Package").context("no Package field")?,
        version: field("Version").context("no Version field")?,
        filename: field("Filename").context("no Filename field")?,
        depends,
    })
}

/// The host's proxy and release-validity settings (a mirror that serves
/// expired Release files needs the latter), carried into the private config.
fn host_network_settings() -> String {
    let Ok(out) = Command::new("apt-config")
        .arg("dump")
        .env_remove("APT_CONFIG")
        .stderr(Stdio::null())
        .output()
    else {
        return String::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            [
                "Acquire::http::Proxy",
                "Acquire::https::Proxy",
                "Acquire::Check-Valid-Until",
                "Acquire::Check-Date",
            ]
            .iter()
            .any(|k| l.starts_with(&format!("{k} ")))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Returns whether the file changed.
fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_takes_first_alternatives_without_versions() {
        let r = parse_record(
            "Package: linux-image-7.2.13+deb14-cloud-amd64\nVersion: 7.2.13-1\n\
             Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
             linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)\n\
             Filename: pool/main/l/x/linux-image_7.2.13-1_amd64.deb\n",
        )
        .unwrap();
        assert_eq!(r.version, "7.2.13-1");
        assert_eq!(
            r.depends,
            ["dracut", "linux-binary-7.2.13+deb14-cloud-amd64"]
        );
    }
}
