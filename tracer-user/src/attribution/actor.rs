//! The process behind a RST, for causes sent in process context.

use std::{
    collections::HashMap,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracer_common::RstEvent;

use crate::{
    attribution::agents::{Agents, Loaded},
    untrusted::Untrusted,
};

/// How long a process found with no agent loaded is believed: it may load
/// one later (a module loaded on configuration reload).
const LOADED_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub comm: Untrusted,
    /// Executable, when the process still exists when the event is read.
    pub exe: Option<Untrusted>,
    /// cgroup v2 path relative to the cgroup root, when it can be resolved.
    pub cgroup: Option<Untrusted>,
    /// The container the cgroup names, if any (docker, containerd, CRI-O,
    /// podman: a 64-hex id in the cgroup path).
    pub container_id: Option<Untrusted>,
    /// The runtime-security agent this process is, or has loaded (a
    /// web-application firewall module, a RASP agent), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Untrusted>,
    /// For an agent loaded in the process: the library's path or the
    /// `-javaagent:` argument it was seen by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_via: Option<Untrusted>,
    /// Its user-space stack at the RST (`--user-stacks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<crate::attribution::ustack::UserStack>,
}

/// The process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: Untrusted,
}

/// The 64-hex container id in a cgroup path (`.../docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// `/docker/<id>`, `/kubepods/.../<id>`), innermost first.
pub fn container_id(cgroup: &[u8]) -> Option<Untrusted> {
    cgroup.rsplit(|b| *b == b'/').find_map(|bytes| {
        (0..bytes.len().saturating_sub(63)).find_map(|i| {
            let run = &bytes[i..i + 64];
            let bounded = bytes.get(i + 64).is_none_or(|b| !b.is_ascii_hexdigit())
                && (i == 0 || !bytes[i - 1].is_ascii_hexdigit());
            (bounded
                && run
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| Untrusted::from_bytes(run))
        })
    })
}

pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Resolves cgroup ids (the cgroup directory's inode on cgroup v2) to paths,
/// walking the hierarchy at most once per unknown id.
pub struct ActorResolver {
    agents: Agents,
    sockets: HashMap<u64, Owner>,
    /// When /proc was last scanned for sockets (monotonic, wall clock).
    sockets_scanned: Option<(Instant, SystemTime)>,
    /// When the batch of events being enriched was read (`begin_batch`).
    batch: Option<Instant>,
    /// When a killed socket's lookup last scanned /proc (the flood floor).
    killed_scanned: Option<Instant>,
    /// The cgroup2 mount; None on v1-only hosts, where ids have no path.
    root: Option<PathBuf>,
    cgroups: HashMap<u64, Option<Untrusted>>,
    /// The agent loaded in each process, by pid: its start time (a pid
    /// reused is another process), when its maps were read, and what
    /// they held. Maps are read once per process, not per RST.
    loaded: HashMap<u32, (u64, Instant, Option<Loaded>)>,
}

/// Process `pid`'s start time (clock ticks after boot, `/proc/PID/stat`'s
/// 22nd field): with the pid, names one process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold anything: fields count from its last ')'.
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
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
            sockets: HashMap::new(),
            sockets_scanned: None,
            batch: None,
            killed_scanned: None,
            root: cgroup2_mount(&mounts),
            cgroups: HashMap::new(),
            loaded: HashMap::new(),
        }
    }

    pub fn resolve(&mut self, ev: &RstEvent) -> Actor {
        let pid = (ev.pid_tgid >> 32) as u32;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| Untrusted::from(p.as_path()));
        let comm = Untrusted::from_c(&ev.comm);
        let (agent, agent_via) = match self.agents.classify(&comm, exe.as_ref()) {
            Some(a) => (Some(a), None),
            None => match self.loaded_agent(pid) {
                Some(l) => (Some(l.name), Some(l.via)),
                None => (None, None),
            },
        };
        let cgroup = self.cgroup_path(ev.cgroup_id);
        Actor {
            pid,
            tid: ev.pid_tgid as u32,
            comm,
            exe,
            container_id: cgroup.as_ref().and_then(|c| container_id(c.as_bytes())),
            cgroup,
            agent,
            agent_via,
            stack: None,
        }
    }

    /// The security module or agent process `pid` has loaded, read from
    /// /proc once per process (again after `LOADED_RECHECK` while none).
    fn loaded_agent(&mut self, pid: u32) -> Option<Loaded> {
        let start = start_time(pid)?;
        if let Some((s, at, found)) = self.loaded.get(&pid)
            && *s == start
            && (found.is_some() || at.elapsed() < LOADED_RECHECK)
        {
            return found.clone();
        }
        let maps = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let found = self.agents.loaded(&maps, &cmdline);
        // Bounded: processes that went are forgotten when the table grows.
        if self.loaded.len() >= 4096 {
            self.loaded
                .retain(|p, _| Path::new(&format!("/proc/{p}")).exists());
        }
        self.loaded
            .insert(pid, (start, Instant::now(), found.clone()));
        found
    }

    /// The security agent a process with `comm` and `exe` is, if any.
    pub fn agent_of(&self, comm: &Untrusted, exe: Option<&Untrusted>) -> Option<Untrusted> {
        self.agents.classify(comm, exe)
    }

    /// The security agent `comm` is, if it is one.
    pub fn agent(&self, comm: &Untrusted) -> Option<Untrusted> {
        self.agents.classify(comm, None)
    }

    /// The process that holds the socket whose file has inode `ino`. One
    /// scan of /proc maps every socket at once; unknown inodes trigger a
    /// new scan at most once a second.
    pub fn owner(&mut self, ino: u64) -> Option<Owner> {
        let stale = self
            .sockets_scanned
            .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(1));
        self.owner_if(ino, stale)
    }

    /// Marks the start of a batch of events read from the kernel: each was
    /// sent before this instant.
    pub fn begin_batch(&mut self) {
        self.batch = Some(Instant::now());
    }

    /// The holder of a socket killed at `at`. A scan that may predate the
    /// RST may predate the socket too (other lookups, such as the
    /// listeners', scan as well), so /proc is scanned again: when the last
    /// scan was before this batch was read, or, for events sent while the
    /// batch is read, before `at` (the kernel's coarse clock: up to a jiffy
    /// early, hence the margin). A newer scan without the inode means the
    /// socket is gone; the floor keeps a flood of such RSTs to 20 scans a
    /// second of its own.
    pub fn owner_at(&mut self, ino: u64, at: SystemTime) -> Option<Owner> {
        const MARGIN: Duration = Duration::from_millis(20);
        const FLOOR: Duration = Duration::from_millis(50);
        let batch = self.batch;
        let stale = self
            .sockets_scanned
            .is_none_or(|(t, wall)| batch.is_none_or(|b| t <= b) || wall <= at + MARGIN)
            && self.killed_scanned.is_none_or(|t| t.elapsed() >= FLOOR);
        if stale && ino != 0 && !self.sockets.contains_key(&ino) {
            self.killed_scanned = Some(Instant::now());
        }
        self.owner_if(ino, stale)
    }

    fn owner_if(&mut self, ino: u64, stale: bool) -> Option<Owner> {
        if ino == 0 {
            return None;
        }
        if !self.sockets.contains_key(&ino) && stale {
            self.sockets = scan_sockets();
            self.sockets_scanned = Some((Instant::now(), SystemTime::now()));
        }
        self.sockets.get(&ino).cloned()
    }

    fn cgroup_path(&mut self, id: u64) -> Option<Untrusted> {
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

/// Socket inode -> owning process, from every /proc/PID/fd.
fn scan_sockets() -> HashMap<u64, Owner> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                let mut c = std::fs::read(p.path().join("comm")).unwrap_or_default();
                // The kernel ends the name with a newline of its own.
                if c.last() == Some(&b'\n') {
                    c.pop();
                }
                Untrusted::from_bytes(c)
            });
            out.entry(ino).or_insert_with(|| Owner {
                pid,
                comm: comm.clone(),
            });
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, dev: u64, depth: usize, out: &mut HashMap<u64, Untrusted>) {
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
    let mut path = b"/".to_vec();
    path.extend_from_slice(rel.as_os_str().as_bytes());
    out.insert(meta.ino(), Untrusted::from_bytes(path));
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
    fn container_ids_from_cgroup_paths() {
        let id = "4f1c3e9a8b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("/docker/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(
                container_id(path.as_bytes()),
                Some(Untrusted::from(id)),
                "{path}"
            );
        }
        assert_eq!(
            container_id(b"/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(
            container_id(format!("/x/{id}0").as_bytes()),
            None,
            "65 hex digits is no id"
        );
        assert_eq!(container_id(b"/"), None);
    }

    #[test]
    fn finds_the_owner_of_its_own_socket() {
        use std::os::unix::fs::MetadataExt as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let owner = scan_sockets().remove(&ino).expect("own socket");
        assert_eq!(owner.pid, std::process::id());
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(b"nginx\0\0\0garbage\0"), "nginx");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
