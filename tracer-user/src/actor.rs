//! The process behind a RST, for causes sent in process context.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;
use tracer_common::RstEvent;

use crate::agents::Agents;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Executable, when the process still exists when the event is read.
    pub exe: Option<String>,
    /// cgroup v2 path relative to the cgroup root, when it can be resolved.
    pub cgroup: Option<String>,
    /// The runtime-security agent this process is, if it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Resolves cgroup ids (the cgroup directory's inode on cgroup v2) to paths,
/// walking the hierarchy at most once per unknown id.
pub struct ActorResolver {
    agents: Agents,
    /// The cgroup2 mount; None on v1-only hosts, where ids have no path.
    root: Option<PathBuf>,
    cgroups: HashMap<u64, Option<String>>,
}

/// The cgroup2 mount point: /sys/fs/cgroup on unified hosts, often
/// /sys/fs/cgroup/unified on hybrid ones (whose v1 roots share inode numbers
/// with v2 directories, so only the v2 tree may be walked).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

impl ActorResolver {
    pub fn new(agents: Agents) -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Self {
            agents,
            root: cgroup2_mount(&mounts),
            cgroups: HashMap::new(),
        }
    }

    pub fn resolve(&mut self, ev: &RstEvent) -> Actor {
        let pid = (ev.pid_tgid >> 32) as u32;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let comm = comm_str(&ev.comm);
        let agent = self.agents.classify(&comm, exe.as_deref());
        Actor {
            pid,
            tid: ev.pid_tgid as u32,
            comm,
            exe,
            cgroup: self.cgroup_path(ev.cgroup_id),
            agent,
        }
    }

    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.cgroups.get(&id) {
            return p.clone();
        }
        let root = self.root.as_ref()?;
        let mut found = HashMap::new();
        let dev = std::fs::metadata(root).ok()?.dev();
        walk(root, root, dev, 0, &mut found);
        for (k, v) in found {
            self.cgroups.insert(k, Some(v));
        }
        self.cgroups.entry(id).or_insert(None).clone()
    }
}

fn walk(root: &Path, dir: &Path, dev: u64, depth: usize, out: &mut HashMap<u64, String>) {
    // Deep enough for systemd and Kubernetes hierarchies, bounded anyway.
    if depth > 12 {
        return;
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if meta.dev() != dev {
        return;
    }
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    out.insert(meta.ino(), format!("/{}", rel.display()));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &e.path(), dev, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(b"nginx\0\0\0garbage\0"), "nginx");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
