//! The initramfs as an in-memory tree written out as a newc cpio archive
//! (the format the kernel unpacks; uncompressed, which TCG unpacks fastest).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

#[derive(Clone)]
enum Entry {
    Dir,
    /// Contents are read from this host file when the archive is written.
    HostFile {
        src: PathBuf,
        mode: u32,
    },
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(PathBuf),
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// Absolute paths inside the image; parents are added as directories.
#[derive(Clone, Default)]
pub struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Archive {
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    pub fn dir(&mut self, path: impl AsRef<Path>) {
        self.insert(path.as_ref(), Entry::Dir);
    }

    pub fn host_file(&mut self, path: impl AsRef<Path>, src: impl AsRef<Path>, mode: u32) {
        let src = src.as_ref().to_path_buf();
        self.insert(path.as_ref(), Entry::HostFile { src, mode });
    }

    pub fn data(&mut self, path: impl AsRef<Path>, data: impl Into<Vec<u8>>, mode: u32) {
        let data = data.into();
        self.insert(path.as_ref(), Entry::Data { data, mode });
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) {
        let target = target.as_ref().to_path_buf();
        self.insert(path.as_ref(), Entry::Symlink(target));
    }

    pub fn char_dev(&mut self, path: impl AsRef<Path>, major: u32, minor: u32) {
        self.insert(path.as_ref(), Entry::CharDev { major, minor });
    }

    fn insert(&mut self, path: &Path, entry: Entry) {
        assert!(path.is_absolute(), "image paths are absolute: {path:?}");
        let mut parent = path.parent();
        while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
            self.entries.entry(p.to_path_buf()).or_insert(Entry::Dir);
            parent = p.parent();
        }
        self.entries.insert(path.to_path_buf(), entry);
    }

    /// Copies host path `path` to the same path in the image, reproducing
    /// every symlink met on the way (merged /usr, /etc/alternatives, library
    /// sonames), so the image resolves it exactly as the host does.
    pub fn copy_host_path(&mut self, path: &Path) -> Result<()> {
        self.copy_host_path_depth(path, 0)
    }

    fn copy_host_path_depth(&mut self, path: &Path, depth: usize) -> Result<()> {
        if depth > 40 {
            bail!("too many levels of symlinks at {}", path.display());
        }
        let mut cur = PathBuf::from("/");
        let comps: Vec<Component> = path.components().collect();
        for (i, comp) in comps.iter().enumerate() {
            match comp {
                Component::RootDir | Component::CurDir => continue,
                Component::ParentDir => {
                    cur.pop();
                    continue;
                }
                Component::Normal(_) | Component::Prefix(_) => {}
            }
            let next = cur.join(comp);
            let meta = std::fs::symlink_metadata(&next)
                .with_context(|| format!("{} (for {})", next.display(), path.display()))?;
            if meta.is_symlink() {
                let target = std::fs::read_link(&next)?;
                self.symlink(&next, &target);
                // `cur` holds no symlinks, so joining lexically is exact.
                let mut rest = if target.is_absolute() {
                    target
                } else {
                    cur.join(target)
                };
                rest.extend(&comps[i + 1..]);
                return self.copy_host_path_depth(&normalize(&rest), depth + 1);
            }
            if i + 1 == comps.len() {
                if meta.is_dir() {
                    self.dir(&next);
                } else {
                    use std::os::unix::fs::PermissionsExt as _;
                    let mode = meta.permissions().mode() & 0o7777;
                    self.host_file(&next, &next, mode);
                }
            }
            cur = next;
        }
        Ok(())
    }

    pub fn write(&self, out: impl Write) -> Result<()> {
        let mut w = std::io::BufWriter::new(out);
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let name = path.strip_prefix("/").expect("absolute");
            let (mode, data, rdev): (u32, Vec<u8>, (u32, u32)) = match entry {
                Entry::Dir => (0o040755, vec![], (0, 0)),
                Entry::HostFile { src, mode } => (
                    0o100000 | mode,
                    std::fs::read(src).with_context(|| format!("reading {}", src.display()))?,
                    (0, 0),
                ),
                Entry::Data { data, mode } => (0o100000 | mode, data.clone(), (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_os_str().as_encoded_bytes().to_vec(), (0, 0)),
                Entry::CharDev { major, minor } => (0o020600, vec![], (*major, *minor)),
            };
            let name = name.as_os_str().as_encoded_bytes();
            record(&mut w, ino, mode, rdev, name, &data)?;
        }
        record(&mut w, 0, 0, (0, 0), b"TRAILER!!!", &[])?;
        w.flush()?;
        Ok(())
    }
}

/// Resolves `.` and `..` lexically (valid once the prefix has no symlinks).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// One newc record: a 110-byte ASCII header, the NUL-terminated name and
/// the data, each padded to 4 bytes.
fn record(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    rdev: (u32, u32),
    name: &[u8],
    data: &[u8],
) -> Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).context("file too large for cpio")?,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name)?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0; 3][..n])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_aligned_and_parents_come_first() {
        let mut a = Archive::default();
        a.data("/etc/x/y", b"hello".to_vec(), 0o644);
        a.symlink("/bin", "usr/bin");
        let mut out = vec![];
        a.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let etc = text.find("etc\0").unwrap();
        let x = text.find("etc/x\0").unwrap();
        let y = text.find("etc/x/y\0").unwrap();
        assert!(etc < x && x < y);
        assert!(text.contains("hello"));
        assert!(text.contains("usr/bin"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
        // The first header: magic, then inode 1.
        assert!(text.starts_with("07070100000001"));
    }

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(
            normalize(Path::new("/usr/lib64/../lib/x86_64-linux-gnu/./ld.so")),
            Path::new("/usr/lib/x86_64-linux-gnu/ld.so")
        );
    }
}
