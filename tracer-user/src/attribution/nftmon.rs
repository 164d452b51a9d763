//! Follows nftables ruleset changes over netlink, the way `nft monitor`
//! does, and remembers which process committed each generation: a REJECT
//! or DROP rule added while rsttrace runs gets an author, and an author
//! that is a security agent gets the label. A netlink socket sees one
//! network namespace, so one is opened in each namespace found at start.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::Serialize;

use crate::{attribution::actor::comm_str, untrusted::Untrusted};

const NETLINK_NETFILTER: i32 = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWGEN: u16 = 15;

const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// What a rule does to the packets it matches, as far as rsttrace cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Reject,
    Drop,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// "add rule", "delete rule", "add table", ...
    pub what: String,
    pub family: &'static str,
    pub table: Option<Untrusted>,
    pub chain: Option<Untrusted>,
    pub handle: Option<u64>,
    pub verdict: Option<Verdict>,
}

/// One committed ruleset generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    pub netns: u64,
    pub generation: u32,
    pub pid: u32,
    pub comm: Untrusted,
    #[serde(skip)]
    pub at: Option<SystemTime>,
    pub changes: Vec<Change>,
}

/// The rule a netfilter event was most likely answered by: the newest
/// rule with that verdict added (and not deleted) in the event's namespace
/// while rsttrace ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Author {
    pub pid: u32,
    pub comm: Untrusted,
    pub generation: u32,
    /// The security agent the author is, if it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Untrusted>,
    /// Where the rule sits (reported in the netfilter object itself).
    #[serde(skip)]
    pub table: Option<Untrusted>,
    #[serde(skip)]
    pub chain: Option<Untrusted>,
}

#[derive(Debug, Default)]
pub struct Log {
    pub generations: Vec<Generation>,
    /// Per namespace, changes not yet closed by a NEWGEN message.
    pending: HashMap<u64, Vec<Change>>,
}

impl Log {
    pub fn author(&self, netns: u64, verdict: Verdict) -> Option<Author> {
        // Rules still in place: added, not deleted since.
        let mut live: Vec<(&Generation, &Change)> = Vec::new();
        for g in self.generations.iter().filter(|g| g.netns == netns) {
            for c in &g.changes {
                match c.what.as_str() {
                    "add rule" if c.verdict == Some(verdict) => live.push((g, c)),
                    "delete rule" => live.retain(|(_, l)| {
                        !(l.table == c.table && l.chain == c.chain && l.handle == c.handle)
                    }),
                    "delete table" => live.retain(|(_, l)| l.table != c.table),
                    _ => {}
                }
            }
        }
        let (g, c) = live.last()?;
        Some(Self::author_from(g, c))
    }

    /// Who added the rule `handle` of `table`/`chain` in namespace `netns`
    /// while we ran, if it is still in place: the author of a rule the
    /// ruleset matcher named.
    pub fn author_of(
        &self,
        netns: u64,
        table: &Untrusted,
        chain: &Untrusted,
        handle: u64,
    ) -> Option<Author> {
        let mut found = None;
        for g in self.generations.iter().filter(|g| g.netns == netns) {
            for c in &g.changes {
                let same_table = c.table.as_ref() == Some(table);
                match c.what.as_str() {
                    "add rule"
                        if same_table
                            && c.chain.as_ref() == Some(chain)
                            && c.handle == Some(handle) =>
                    {
                        found = Some(Self::author_from(g, c))
                    }
                    "delete rule"
                        if same_table
                            && c.chain.as_ref() == Some(chain)
                            && c.handle == Some(handle) =>
                    {
                        found = None
                    }
                    "delete table" if same_table => found = None,
                    _ => {}
                }
            }
        }
        found
    }

    fn author_from(g: &Generation, c: &Change) -> Author {
        Author {
            pid: g.pid,
            comm: g.comm.clone(),
            generation: g.generation,
            agent: None,
            table: c.table.clone(),
            chain: c.chain.clone(),
        }
    }
}

pub type SharedLog = Arc<Mutex<Log>>;

/// Monitor threads: one in rsttrace's own namespace and one in each named
/// namespace (/run/netns/*), including those created while tracing
/// (`rescan`, called about once a second). A thread whose namespace file
/// disappears ends, so it does not keep a deleted namespace alive.
#[derive(Default)]
pub struct Monitors {
    started: HashSet<Option<PathBuf>>,
    denied: bool,
}

impl Monitors {
    /// Starts monitors where none runs yet; returns warnings (the trace
    /// runs on without authors there).
    pub fn rescan(&mut self, log: &SharedLog) -> Vec<String> {
        let mut targets: Vec<Option<PathBuf>> = vec![None];
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            targets.extend(dir.flatten().map(|e| Some(e.path())));
        }
        self.started
            .retain(|t| t.as_ref().is_none_or(|p| p.exists()));
        let mut warnings = vec![];
        for target in targets {
            if self.started.contains(&target) {
                continue;
            }
            self.started.insert(target.clone());
            if let Err(e) = spawn(target.clone(), log.clone()) {
                // Only our own namespace's failure is worth a warning: a
                // named namespace may vanish as we look. A namespace file
                // caught half-made by `ip netns add` is retried next time.
                if target.is_none() {
                    warnings.push(e);
                } else if e.contains("Operation not permitted") {
                    // Said once: entering namespaces needs CAP_SYS_ADMIN.
                    if !self.denied {
                        self.denied = true;
                        warnings.push(format!("{e} (needs CAP_SYS_ADMIN)"));
                    }
                } else if e.starts_with("entering") {
                    self.started.remove(&target);
                }
            }
        }
        warnings
    }
}

fn spawn(target: Option<PathBuf>, log: SharedLog) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("nftmon".into())
        .spawn(move || {
            let setup = (|| -> Result<(OwnedNl, u64), String> {
                if let Some(path) = &target {
                    enter(path)?;
                }
                let ns = netns_inode(Path::new("/proc/thread-self/ns/net"))
                    .ok_or("can't read the namespace inode")?;
                Ok((OwnedNl::subscribe()?, ns))
            })();
            match setup {
                Ok((sock, ns)) => {
                    let _ = tx.send(Ok(()));
                    sock.run(ns, target.as_deref(), &log);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("can't start a ruleset monitor thread: {e}"))?;
    rx.recv()
        .map_err(|_| "a ruleset monitor thread died".to_string())?
}

fn netns_inode(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.ino())
}

fn enter(path: &Path) -> Result<(), String> {
    // Namespace names are whatever their creator chose.
    let name = Untrusted::from(path);
    let f = File::open(path).map_err(|e| format!("{name}: {e}"))?;
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "entering {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

struct OwnedNl(std::os::fd::OwnedFd);

impl OwnedNl {
    fn subscribe() -> Result<Self, String> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(format!(
                "netfilter netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid; it is bound as given.
        let rc = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(format!(
                "binding netlink: {}",
                std::io::Error::last_os_error()
            ));
        }
        let group = NFNLGRP_NFTABLES;
        // SAFETY: a u32 option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                4,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                "needs CAP_NET_ADMIN"
            } else {
                "is nf_tables available?"
            };
            return Err(format!("joining the nftables netlink group: {e} ({hint})"));
        }
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a timeval option value of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Self(fd))
    }

    fn run(self, netns: u64, path: Option<&Path>, log: &SharedLog) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if path.is_some_and(|p| !p.exists()) {
                return;
            }
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // ENOBUFS: the kernel dropped notifications; EAGAIN: the
                // receive timeout, which lets the thread notice that its
                // namespace is gone. Both: keep going.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                ) {
                    continue;
                }
                return;
            }
            let Ok(mut log) = log.lock() else { return };
            for msg in messages(&buf[..n as usize]) {
                log.apply(netns, msg);
            }
        }
    }
}

/// One netlink message: nftables message type, family, attributes.
#[derive(Debug)]
pub struct Message<'a> {
    pub kind: u16,
    pub family: u8,
    pub attrs: &'a [u8],
}

pub fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = vec![];
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        let body = &buf[16..len];
        if ty >> 8 == NFNL_SUBSYS_NFTABLES && body.len() >= 4 {
            out.push(Message {
                kind: ty & 0xff,
                family: body[0],
                attrs: &body[4..],
            });
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// (type, payload) of each attribute.
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = vec![];
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

fn attr<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "unspec",
    }
}

/// reject / drop / other, from a rule's expressions: nft `reject`, an
/// xtables REJECT target through nft_compat, or an immediate DROP verdict.
pub fn verdict(expressions: &[u8]) -> Verdict {
    const NFTA_LIST_ELEM: u16 = 1;
    const NFTA_EXPR_NAME: u16 = 1;
    const NFTA_EXPR_DATA: u16 = 2;
    const NFTA_IMMEDIATE_DATA: u16 = 2;
    const NFTA_DATA_VERDICT: u16 = 2;
    const NFTA_VERDICT_CODE: u16 = 1;
    const NFTA_TARGET_NAME: u16 = 1;
    const NF_DROP: u32 = 0;
    let mut v = Verdict::Other;
    for (ty, elem) in attrs(expressions) {
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let e = attrs(elem);
        let name = attr(&e, NFTA_EXPR_NAME).map(comm_str).unwrap_or_default();
        let data = attr(&e, NFTA_EXPR_DATA).map(attrs).unwrap_or_default();
        match name.as_str() {
            "reject" => v = Verdict::Reject,
            "target"
                if attr(&data, NFTA_TARGET_NAME).map(comm_str).as_deref() == Some("REJECT") =>
            {
                v = Verdict::Reject;
            }
            "immediate" => {
                let code = attr(&data, NFTA_IMMEDIATE_DATA)
                    .map(attrs)
                    .and_then(|d| attr(&d, NFTA_DATA_VERDICT).map(attrs))
                    .and_then(|vd| attr(&vd, NFTA_VERDICT_CODE).and_then(be32));
                if code == Some(NF_DROP) {
                    v = Verdict::Drop;
                }
            }
            _ => {}
        }
    }
    v
}

impl Log {
    pub fn apply(&mut self, netns: u64, m: Message<'_>) {
        let a = attrs(m.attrs);
        let family = family_name(m.family);
        let change = |what: &str, table: u16, chain: Option<u16>, handle: Option<u16>| Change {
            what: what.to_string(),
            family,
            table: attr(&a, table).map(Untrusted::from_c),
            chain: chain.and_then(|c| attr(&a, c)).map(Untrusted::from_c),
            handle: handle.and_then(|h| attr(&a, h)).and_then(be64),
            verdict: None,
        };
        let c = match m.kind {
            NFT_MSG_NEWTABLE => change("add table", 1, None, None),
            NFT_MSG_DELTABLE => change("delete table", 1, None, None),
            NFT_MSG_NEWCHAIN => change("add chain", 1, Some(3), None),
            NFT_MSG_DELCHAIN => change("delete chain", 1, Some(3), None),
            NFT_MSG_NEWRULE => Change {
                verdict: Some(attr(&a, 4).map(verdict).unwrap_or(Verdict::Other)),
                ..change("add rule", 1, Some(2), Some(3))
            },
            NFT_MSG_DELRULE => change("delete rule", 1, Some(2), Some(3)),
            NFT_MSG_NEWGEN => {
                let changes = self.pending.remove(&netns).unwrap_or_default();
                if !changes.is_empty() {
                    self.generations.push(Generation {
                        netns,
                        generation: attr(&a, 1).and_then(be32).unwrap_or(0),
                        pid: attr(&a, 2).and_then(be32).unwrap_or(0),
                        comm: attr(&a, 3).map(Untrusted::from_c).unwrap_or_default(),
                        at: Some(SystemTime::now()),
                        changes,
                    });
                }
                return;
            }
            _ => return,
        };
        self.pending.entry(netns).or_default().push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 4) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn msg(kind: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut v = (len as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(&[family, 0, 0, 0]);
        v.extend_from_slice(attrs);
        v
    }

    fn expr(name: &str, data: Vec<u8>) -> Vec<u8> {
        let mut e = nla(1, format!("{name}\0").as_bytes());
        e.extend(nla(2 | NLA_F_NESTED, &data));
        nla(1 | NLA_F_NESTED, &e)
    }

    fn rule(table: &str, chain: &str, handle: u64, exprs: Vec<u8>) -> Vec<u8> {
        let mut a = nla(1, format!("{table}\0").as_bytes());
        a.extend(nla(2, format!("{chain}\0").as_bytes()));
        a.extend(nla(3, &handle.to_be_bytes()));
        a.extend(nla(4 | NLA_F_NESTED, &exprs));
        msg(NFT_MSG_NEWRULE, 1, &a)
    }

    fn newgen(id: u32, pid: u32, comm: &str) -> Vec<u8> {
        let mut a = nla(1, &id.to_be_bytes());
        a.extend(nla(2, &pid.to_be_bytes()));
        a.extend(nla(3, format!("{comm}\0").as_bytes()));
        msg(NFT_MSG_NEWGEN, 0, &a)
    }

    fn drop_verdict() -> Vec<u8> {
        let code = nla(1, &0u32.to_be_bytes());
        let verdict = nla(2 | NLA_F_NESTED, &code);
        let data = nla(2 | NLA_F_NESTED, &verdict);
        let mut d = nla(1, &0u32.to_be_bytes());
        d.extend(data);
        expr("immediate", d)
    }

    #[test]
    fn a_generation_names_its_process_and_rules() {
        let mut buf = rule("filter", "input", 4, expr("reject", vec![]));
        buf.extend(rule("filter", "input", 5, drop_verdict()));
        buf.extend(newgen(7, 4242, "crowdsec"));
        let mut log = Log::default();
        for m in messages(&buf) {
            log.apply(99, m);
        }
        assert_eq!(log.generations.len(), 1);
        let g = &log.generations[0];
        assert_eq!((g.generation, g.pid), (7, 4242));
        assert_eq!(g.comm, "crowdsec");
        assert_eq!(g.changes[0].verdict, Some(Verdict::Reject));
        assert_eq!(g.changes[1].verdict, Some(Verdict::Drop));
        assert_eq!(g.changes[0].family, "inet");
        let a = log.author(99, Verdict::Reject).unwrap();
        assert_eq!(
            (a.pid, a.table, a.chain),
            (4242, Some("filter".into()), Some("input".into()))
        );
        assert!(log.author(98, Verdict::Reject).is_none(), "other namespace");
    }

    #[test]
    fn deleted_rules_have_no_author() {
        let mut buf = rule("t", "c", 4, expr("reject", vec![]));
        buf.extend(newgen(1, 10, "nft"));
        let mut del = nla(1, b"t\0");
        del.extend(nla(2, b"c\0"));
        del.extend(nla(3, &4u64.to_be_bytes()));
        buf.extend(msg(NFT_MSG_DELRULE, 1, &del));
        buf.extend(newgen(2, 11, "nft"));
        let mut log = Log::default();
        for m in messages(&buf) {
            log.apply(1, m);
        }
        assert!(log.author(1, Verdict::Reject).is_none());
    }

    #[test]
    fn xtables_reject_target_counts_as_reject() {
        let t = expr("target", nla(1, b"REJECT\0"));
        let mut list = vec![];
        list.extend(t);
        assert_eq!(verdict(&list), Verdict::Reject);
        assert_eq!(verdict(&expr("counter", vec![])), Verdict::Other);
    }

    #[test]
    fn truncated_messages_do_not_panic() {
        let mut buf = rule("filter", "input", 4, expr("reject", vec![]));
        buf.extend(newgen(7, 1, "x"));
        for n in 0..buf.len() {
            let mut log = Log::default();
            for m in messages(&buf[..n]) {
                log.apply(1, m);
            }
        }
    }
}
