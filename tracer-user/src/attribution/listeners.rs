//! Listening sockets seen during the trace, per network namespace and
//! port, so that a closed-port RST to a port that had a listener names it
//! (who held it, when it went): "the server stopped" apart from "nobody
//! listens here" (a scan, a wrong port). Dumped each second over
//! sock_diag in every namespace rsttrace follows (its own and
//! /run/netns/*): no kernel hook, so nothing runs per packet or per state
//! change. A listener that lived less than a second between two dumps is
//! not seen; one whose accept queue held connections is (listener-closed).
//! A RST sent on a listener that no dump has seen yet (a listener younger
//! than a second whose queue overflowed) dumps again at once, at most
//! every `AGAIN_AFTER`.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::attribution::{actor::ActorResolver, decode::Listener};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
/// `struct inet_diag_msg`: idiag_sport at 4 (network order), idiag_inode at
/// 68; for a listener, idiag_wqueue (60) is its backlog.
const MSG_SPORT: usize = 4;
const MSG_WQUEUE: usize = 60;
const MSG_INODE: usize = 68;
/// The shortest time between two dumps for RSTs on unseen listeners.
const AGAIN_AFTER: Duration = Duration::from_millis(100);

struct Seen {
    inode: u64,
    backlog: u32,
    holder: Option<(u32, crate::untrusted::Untrusted)>,
    gone_at: Option<SystemTime>,
}

pub struct Listeners {
    /// A sock_diag socket per namespace followed, made inside it.
    sockets: HashMap<Option<PathBuf>, (u64, OwnedFd)>,
    seen: HashMap<(u64, u16), Seen>,
    /// How long a listener that went is remembered (`--listener-memory`).
    memory: Duration,
    /// When the last dump was made.
    dumped: Option<std::time::Instant>,
}

impl Listeners {
    pub fn new(memory: Duration) -> Self {
        Self {
            sockets: HashMap::new(),
            seen: HashMap::new(),
            memory,
            dumped: None,
        }
    }

    /// One dump per namespace: listeners new since the last are recorded
    /// with the process holding them, those gone are marked gone now.
    pub fn refresh(&mut self, actors: &mut ActorResolver) {
        self.dumped = Some(std::time::Instant::now());
        let mut targets: Vec<Option<PathBuf>> = vec![None];
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            targets.extend(dir.flatten().map(|e| Some(e.path())));
        }
        self.sockets.retain(|t, _| targets.contains(t));
        let now = SystemTime::now();
        for t in targets {
            if !self.sockets.contains_key(&t) {
                match open(t.as_deref()) {
                    Ok(s) => {
                        self.sockets.insert(t.clone(), s);
                    }
                    // A namespace deleted meanwhile, or no permission to
                    // enter it: its listeners are not named.
                    Err(e) => {
                        log::debug!("listeners: {e}");
                        continue;
                    }
                }
            }
            let (netns, fd) = &self.sockets[&t];
            let netns = *netns;
            let Ok(now_listening) = dump(fd) else {
                continue;
            };
            for (port, (inode, backlog)) in &now_listening {
                let entry = self.seen.entry((netns, *port));
                let e = entry.or_insert_with(|| Seen {
                    inode: 0,
                    backlog: 0,
                    holder: None,
                    gone_at: None,
                });
                e.backlog = *backlog;
                if e.inode != *inode || e.gone_at.is_some() || e.holder.is_none() {
                    e.inode = *inode;
                    e.gone_at = None;
                    e.holder = actors.owner(*inode).map(|o| (o.pid, o.comm));
                }
            }
            for ((ns, port), e) in self.seen.iter_mut() {
                if *ns == netns && e.gone_at.is_none() && !now_listening.contains_key(port) {
                    e.gone_at = Some(now);
                }
            }
        }
        let memory = self.memory;
        self.seen.retain(|_, e| {
            e.gone_at
                .is_none_or(|g| now.duration_since(g).unwrap_or_default() < memory)
        });
    }

    /// The process holding (or that last held) the listener on `port` of
    /// `netns`: whose full accept queue dropped a listen-overflow segment.
    pub fn holder(&self, netns: u64, port: u16) -> Option<(u32, crate::untrusted::Untrusted)> {
        self.seen.get(&(netns, port))?.holder.clone()
    }

    /// A listener that closed with connections queued (a listener-closed
    /// RST at `at`): gone then, exactly.
    pub fn closed(&mut self, netns: u64, port: u16, at: SystemTime) {
        if let Some(e) = self.seen.get_mut(&(netns, port)) {
            e.gone_at = Some(e.gone_at.map_or(at, |g| g.min(at)));
        }
    }

    /// The listener that port `port` of `netns` had, for a closed-port RST
    /// at `at`: one still believed there went at or before `at`.
    pub fn had(&mut self, netns: u64, port: u16, at: SystemTime) -> Option<Listener> {
        let e = self.seen.get_mut(&(netns, port))?;
        let gone_at = *e.gone_at.get_or_insert(at);
        if at.duration_since(gone_at).unwrap_or_default() >= self.memory {
            return None;
        }
        Some(Listener {
            port,
            pid: e.holder.as_ref().map(|h| h.0),
            comm: e.holder.as_ref().map(|h| h.1.clone()),
            gone_at: Some(gone_at),
            backlog: Some(e.backlog),
        })
    }

    /// The listener on port `port` of `netns` now, for a RST sent on it;
    /// one not seen yet is looked for again (see `AGAIN_AFTER`).
    pub fn live(&mut self, netns: u64, port: u16, actors: &mut ActorResolver) -> Option<Listener> {
        let found = |s: &Self| {
            s.seen
                .get(&(netns, port))
                .filter(|e| e.gone_at.is_none())
                .map(|e| Listener {
                    port,
                    pid: e.holder.as_ref().map(|h| h.0),
                    comm: e.holder.as_ref().map(|h| h.1.clone()),
                    gone_at: None,
                    backlog: Some(e.backlog),
                })
        };
        if let Some(l) = found(self).filter(|l| l.pid.is_some()) {
            return Some(l);
        }
        if self.dumped.is_none_or(|d| d.elapsed() >= AGAIN_AFTER) {
            self.refresh(actors);
        }
        found(self).or(Some(Listener {
            port,
            pid: None,
            comm: None,
            gone_at: None,
            backlog: None,
        }))
    }
}

/// A sock_diag socket inside namespace `path` (None: rsttrace's own),
/// with that namespace's inode.
fn open(path: Option<&Path>) -> Result<(u64, OwnedFd), String> {
    let ns = path.unwrap_or(Path::new("/proc/self/ns/net")).to_path_buf();
    let inode = std::fs::metadata(&ns)
        .map(|m| m.ino())
        .map_err(|e| format!("{}: {e}", ns.display()))?;
    let socket = move || -> Result<OwnedFd, String> {
        let f = File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        // SAFETY: a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "entering a namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(format!(
                "sock_diag socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // A socket keeps the namespace it was made in: made on a thread of its
    // own, which enters the namespace and ends.
    let fd = std::thread::spawn(socket)
        .join()
        .map_err(|_| "a sock_diag thread died".to_string())??;
    Ok((inode, fd))
}

/// Listening TCP sockets (IPv4 and IPv6) of the socket's namespace: port
/// -> (socket inode, backlog).
fn dump(fd: &OwnedFd) -> Result<HashMap<u16, (u64, u32)>, String> {
    let mut out = HashMap::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let mut req = [0u8; 16 + 56];
        let len = req.len() as u32;
        req[..4].copy_from_slice(&len.to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[16] = family;
        req[17] = libc::IPPROTO_TCP as u8;
        req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // SAFETY: a valid buffer of its length.
        let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(format!("sock_diag: {}", std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 32 * 1024];
        'recv: loop {
            // SAFETY: a valid buffer of its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return Err(format!("sock_diag: {}", std::io::Error::last_os_error()));
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes(msgs[..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
                if len < 16 || len > msgs.len() {
                    break;
                }
                match kind {
                    NLMSG_DONE => break 'recv,
                    NLMSG_ERROR => return Err("sock_diag: the kernel refused the dump".into()),
                    SOCK_DIAG_BY_FAMILY => {
                        let m = &msgs[16..len];
                        if m.len() >= MSG_INODE + 4 {
                            let port = u16::from_be_bytes([m[MSG_SPORT], m[MSG_SPORT + 1]]);
                            let inode =
                                u32::from_ne_bytes(m[MSG_INODE..MSG_INODE + 4].try_into().unwrap());
                            let backlog = u32::from_ne_bytes(
                                m[MSG_WQUEUE..MSG_WQUEUE + 4].try_into().unwrap(),
                            );
                            out.insert(port, (u64::from(inode), backlog));
                        }
                    }
                    _ => {}
                }
                // Messages are aligned to 4 bytes.
                let next = (len + 3) & !3;
                msgs = msgs.get(next..).unwrap_or(&[]);
            }
        }
    }
    Ok(out)
}
