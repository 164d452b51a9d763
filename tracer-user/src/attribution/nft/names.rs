//! The nftables rule (and set element) behind a reject or drop, from the
//! namespace's ruleset as of now: what the session adds to `netfilter`
//! and `drops`, and what `rsttrace why` lists.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{attribution::nftmon::Verdict, untrusted::Untrusted};

use crate::attribution::ipset;

use super::{
    legacy,
    matcher::{self, Hit, Packet, SetHit},
    netlink::{Socket, netns_path},
    owners::Owners,
    render,
    snapshot::{self, Element, SET_INTERVAL, Set, Snapshot},
};

/// The set element a rule matched through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetMatch {
    pub name: Untrusted,
    /// The key, or the range (CIDR) holding it.
    pub element: Untrusted,
    /// The element's timeout and what is left of it, in seconds.
    pub timeout_s: Option<u64>,
    pub expires_in_s: Option<u64>,
    pub comment: Option<Untrusted>,
}

/// Another rule that may have answered (an unknown fact kept it open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub table: Untrusted,
    pub chain: Untrusted,
    pub handle: Option<u64>,
    pub rule: Untrusted,
    pub unknown: Vec<Untrusted>,
}

/// The ruleset a rule is looked for in: where the kernel stack told the
/// backend, only that one; else nftables', then iptables-legacy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Nftables,
    Legacy,
    Either,
}

/// A rule named by matching, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// "nftables" (iptables-nft's rules included) or "iptables-legacy".
    pub backend: &'static str,
    pub family: &'static str,
    pub table: Untrusted,
    pub chain: Untrusted,
    pub base_chain: Untrusted,
    /// None: the base chain's drop policy.
    pub handle: Option<u64>,
    pub rule: Untrusted,
    pub verdict: Verdict,
    pub set: Option<SetMatch>,
    pub agent: Option<Untrusted>,
    pub security_agent: bool,
    /// Facts the match needed but rsttrace lacks (then a candidate).
    pub unknown: Vec<Untrusted>,
    /// Other rules that may have answered instead.
    pub candidates: Vec<Candidate>,
}

/// A match asked: the packet, the hook, the verdict, the ruleset.
type CacheKey = (Packet, u32, Verdict, Backend);

struct Ns {
    /// The namespace's file, to notice it is gone: the socket would keep
    /// a deleted namespace alive.
    path: std::path::PathBuf,
    sock: Socket,
    snap: Snapshot,
    /// The iptables-legacy tables, as a snapshot of their own: they have
    /// no generation, and are read again each RECHECK.
    legacy: Snapshot,
    checked: Instant,
    cache: HashMap<CacheKey, (Instant, Option<Named>)>,
}

/// Per-namespace snapshots, re-read when the ruleset generation changes.
pub struct Namer {
    owners: Owners,
    /// A namespace not found (or unreadable) is tried again after a while.
    per_ns: HashMap<u64, Result<Ns, Instant>>,
}

/// A generation is trusted this long before asking the kernel again.
const RECHECK: Duration = Duration::from_millis(250);
/// A namespace that could not be read is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);
/// A match (with its element's expiry) is reused this long.
const REUSE: Duration = Duration::from_secs(1);

impl Namer {
    pub fn new(owners: Owners) -> Self {
        Self {
            owners,
            per_ns: HashMap::new(),
        }
    }

    /// Whether `owner` (a name `Named::agent` gave) is a security agent.
    pub fn is_security_agent(&self, owner: &str) -> bool {
        self.owners.is_security_agent(owner)
    }

    fn ns(&mut self, netns: u64) -> Option<&mut Ns> {
        let open = || {
            let path = netns_path(netns)?;
            let mut sock = Socket::open_in(Some(&path)).ok()?;
            let snap = Snapshot::read(&mut sock).ok()?;
            let legacy = legacy::read(Some(&path)).unwrap_or_default();
            Some(Ns {
                path,
                sock,
                snap,
                legacy,
                checked: Instant::now(),
                cache: HashMap::new(),
            })
        };
        let stale = match self.per_ns.get(&netns) {
            None => true,
            Some(Err(at)) => at.elapsed() >= RETRY,
            Some(Ok(_)) => false,
        };
        if stale {
            let ns = open().ok_or_else(Instant::now);
            self.per_ns.insert(netns, ns);
        }
        let gone = {
            let ns = self.per_ns.get_mut(&netns)?.as_mut().ok()?;
            if ns.checked.elapsed() < RECHECK {
                false
            } else {
                ns.checked = Instant::now();
                use std::os::unix::fs::MetadataExt as _;
                if std::fs::metadata(&ns.path).map(|m| m.ino()).ok() != Some(netns) {
                    true
                } else {
                    if snapshot::generation(&mut ns.sock).ok() != Some(ns.snap.generation)
                        && let Ok(s) = Snapshot::read(&mut ns.sock)
                    {
                        ns.snap = s;
                        ns.cache.clear();
                    }
                    if let Ok(l) = legacy::read(Some(&ns.path))
                        && (l.chains != ns.legacy.chains || l.rules != ns.legacy.rules)
                    {
                        ns.legacy = l;
                        ns.cache.clear();
                    }
                    false
                }
            }
        };
        if gone {
            // Gone (or its file now names another): let it go.
            self.per_ns.insert(netns, Err(Instant::now()));
            return None;
        }
        let ns = self.per_ns.get_mut(&netns)?.as_mut().ok()?;
        Some(ns)
    }

    /// The rule that gave `pkt` the verdict `want` at `hook` (NF_INET_*)
    /// in namespace `netns` (an inode), in `backend`'s ruleset.
    pub fn name(
        &mut self,
        netns: u64,
        pkt: &Packet,
        hook: u32,
        want: Verdict,
        backend: Backend,
    ) -> Option<Named> {
        // Each connection has its own source port, and almost no rule
        // looks at it: matched without it, a flood of rejects costs one
        // evaluation per peer and second, not one per RST.
        let coarse = Packet {
            sport: None,
            ..pkt.clone()
        };
        let named = self.cached(netns, &coarse, hook, want, backend)?;
        let needs_port = |u: &Vec<Untrusted>| u.iter().any(|f| *f == "source port");
        if pkt.sport.is_some()
            && (needs_port(&named.unknown)
                || named.candidates.iter().any(|c| needs_port(&c.unknown)))
        {
            let owners = self.owners.clone();
            let ns = self.ns(netns)?;
            return ns.name(&owners, pkt, hook, want, backend);
        }
        Some(named)
    }

    fn cached(
        &mut self,
        netns: u64,
        pkt: &Packet,
        hook: u32,
        want: Verdict,
        backend: Backend,
    ) -> Option<Named> {
        let owners = self.owners.clone();
        let ns = self.ns(netns)?;
        let key = (pkt.clone(), hook, want, backend);
        if let Some((at, n)) = ns.cache.get(&key)
            && at.elapsed() < REUSE
        {
            return n.clone();
        }
        let named = ns.name(&owners, pkt, hook, want, backend);
        // Bounded: entries older than REUSE are of no use.
        if ns.cache.len() >= 4096 {
            ns.cache.retain(|_, (at, _)| at.elapsed() < REUSE);
        }
        ns.cache.insert(key, (Instant::now(), named.clone()));
        named
    }
}

impl Ns {
    fn name(
        &mut self,
        owners: &Owners,
        pkt: &Packet,
        hook: u32,
        want: Verdict,
        backend: Backend,
    ) -> Option<Named> {
        let nft = matches!(backend, Backend::Nftables | Backend::Either);
        let legacy = matches!(backend, Backend::Legacy | Backend::Either);
        let named = if nft {
            let hits = evaluate(&mut self.sock, &self.snap, pkt, hook, want);
            choose(owners, &mut self.sock, &self.snap, hits, NFTABLES)
        } else {
            None
        };
        match named {
            Some(n) => Some(n),
            None if legacy => {
                let hits = evaluate(&mut self.sock, &self.legacy, pkt, hook, want);
                choose(owners, &mut self.sock, &self.legacy, hits, LEGACY)
            }
            None => None,
        }
    }
}

const NFTABLES: &str = "nftables";
const LEGACY: &str = "iptables-legacy";

fn evaluate(
    sock: &mut Socket,
    snap: &Snapshot,
    pkt: &Packet,
    hook: u32,
    want: Verdict,
) -> Vec<Hit> {
    let sock = std::cell::RefCell::new(sock);
    let mut lookup = |set: &Set, key: &[u8]| snapshot::element(&mut sock.borrow_mut(), set, key);
    let mut ipset = |index: u16, addr| ipset_member(&mut sock.borrow_mut(), index, addr, pkt);
    matcher::evaluate_with(snap, pkt, hook, want, &mut lookup, &mut ipset)
}

/// An ipset `--match-set` as the kernel decides it: the set's name from
/// its index, its type (single-address types only: hash:ip, hash:net,
/// bitmap:ip), the kernel's TEST, then the member's entry from a listing.
/// A set of the other family never matches (as in xt_set).
fn ipset_member(
    sock: &mut Socket,
    index: u16,
    addr: std::net::IpAddr,
    pkt: &Packet,
) -> Result<Option<SetHit>, i32> {
    let name = ipset::name_of(sock, index)?;
    let h = ipset::header(sock, &name)?;
    if !matches!(h.typename.as_str(), "hash:ip" | "hash:net" | "bitmap:ip") {
        return Err(libc::EOPNOTSUPP);
    }
    if h.family != pkt.nfproto() {
        return Ok(None);
    }
    if !ipset::test(sock, &name, addr)? {
        return Ok(None);
    }
    // A member whose entry the listing lacks (gone since): the address.
    let entry = ipset::entry(sock, &name, addr).ok().flatten();
    let (key, key_end) = match &entry {
        Some(e) => e.range(),
        None => (ip_bytes(addr), None),
    };
    Ok(Some(SetHit {
        set: Set {
            family: pkt.nfproto(),
            table: String::new(),
            name,
            flags: 0,
            key_len: key.len() as u32,
            timeout_ms: entry
                .as_ref()
                .and_then(|e| e.set_timeout_s)
                .map(|t| u64::from(t) * 1000),
            comment: None,
            elements: vec![],
        },
        element: Element {
            key,
            key_end,
            verdict: None,
            timeout_ms: None,
            expires_ms: entry
                .as_ref()
                .and_then(|e| e.timeout_left_s)
                .map(|t| u64::from(t) * 1000),
            comment: entry.and_then(|e| e.comment),
        },
    }))
}

fn ip_bytes(a: std::net::IpAddr) -> Vec<u8> {
    match a {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The first rule that certainly answered, else the first candidate;
/// the others as candidates.
fn choose(
    owners: &Owners,
    sock: &mut Socket,
    snap: &Snapshot,
    hits: Vec<Hit>,
    backend: &'static str,
) -> Option<Named> {
    let pick = hits.iter().position(|h| h.unknown.is_empty()).unwrap_or(0);
    let hit = hits.get(pick)?;
    let mut named = describe(owners, sock, snap, hit, backend);
    named.candidates = hits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pick)
        .map(|(_, h)| Candidate {
            table: h.table.clone().into(),
            chain: h.chain.clone().into(),
            handle: h.handle,
            rule: rule_text(snap, h).into(),
            unknown: untrusted(&h.unknown),
        })
        .collect();
    Some(named)
}

/// Facts may name sets and xt extensions: from outside.
fn untrusted(v: &[String]) -> Vec<Untrusted> {
    v.iter().map(|s| Untrusted::from(s.as_str())).collect()
}

fn rule_text(snap: &Snapshot, h: &Hit) -> String {
    // An ipset hit (no nftables table) names the rule's --match-set.
    let ipset = h
        .set
        .as_ref()
        .filter(|s| s.set.table.is_empty())
        .map(|s| s.set.name.as_str());
    match &h.rule {
        Some(r) => render::rule_ipset(Some(snap), r, ipset),
        None => "policy drop".into(),
    }
}

fn describe(
    owners: &Owners,
    sock: &mut Socket,
    snap: &Snapshot,
    h: &Hit,
    backend: &'static str,
) -> Named {
    let set = h.set.as_ref().map(|s| SetMatch {
        name: s.set.name.clone().into(),
        element: element_text(sock, &s.set, &s.element).into(),
        timeout_s: s.element.timeout_ms.or(s.set.timeout_ms).map(|t| t / 1000),
        expires_in_s: s.element.expires_ms.map(|t| t / 1000),
        comment: s.element.comment.clone().map(Untrusted::from),
    });
    // An anonymous set belongs to its rule: the owner is the chain's.
    let set_name = h
        .set
        .as_ref()
        .map(|s| s.set.name.as_str())
        .filter(|n| !n.starts_with("__"));
    let owner = owners.of(&h.table, &h.chain, set_name);
    Named {
        backend,
        family: render::family_name(h.family),
        table: h.table.clone().into(),
        chain: h.chain.clone().into(),
        base_chain: h.base_chain.clone().into(),
        handle: h.handle,
        rule: rule_text(snap, h).into(),
        verdict: h.verdict,
        set,
        security_agent: owner.as_ref().is_some_and(|o| o.security),
        agent: owner.map(|o| o.name.into()),
        unknown: untrusted(&h.unknown),
        candidates: vec![],
    }
}

/// The element as nft lists it: a key, or an interval's range (the
/// kernel returns an rbtree interval's start; its end is the next
/// interval-end element, exclusive).
fn element_text(sock: &mut Socket, set: &Set, el: &Element) -> String {
    if let Some(end) = &el.key_end {
        return render::element(&el.key, Some(end));
    }
    if set.flags & SET_INTERVAL != 0
        && let Ok(all) = snapshot::elements(sock, set)
        && let Some((end, _)) = all
            .iter()
            .filter(|(k, is_end)| {
                *is_end && k.len() == el.key.len() && k.as_slice() > el.key.as_slice()
            })
            .min_by(|a, b| a.0.cmp(&b.0))
    {
        let mut last = end.clone();
        // Exclusive end, minus one.
        for b in last.iter_mut().rev() {
            let (v, borrow) = b.overflowing_sub(1);
            *b = v;
            if !borrow {
                break;
            }
        }
        return render::element(&el.key, Some(&last));
    }
    render::addr(&el.key)
}

/// `rsttrace why`: every rule that would reject or drop `pkt` in the
/// namespace at `path`, at the hooks a peer's packet meets (prerouting,
/// input, forward).
pub fn why(
    owners: &Owners,
    path: Option<&Path>,
    pkt: &Packet,
) -> Result<Vec<(u32, Named)>, String> {
    let mut sock = Socket::open_in(path)?;
    let snap = Snapshot::read(&mut sock).map_err(|e| {
        format!(
            "reading the nftables ruleset: {}",
            std::io::Error::from_raw_os_error(e)
        )
    })?;
    // A namespace without ip_tables has no legacy tables: no error.
    let legacy = legacy::read(path)?;
    let mut out = vec![];
    for (snap, backend) in [(&snap, NFTABLES), (&legacy, LEGACY)] {
        for hook in [0, 1, 2] {
            for want in [Verdict::Reject, Verdict::Drop] {
                let hits = evaluate(&mut sock, snap, pkt, hook, want);
                for h in &hits {
                    out.push((hook, describe(owners, &mut sock, snap, h, backend)));
                }
            }
        }
    }
    Ok(out)
}

pub fn hook_name(h: u32) -> &'static str {
    match h {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        _ => "postrouting",
    }
}

/// "expires in 3h59m" style durations.
pub fn short_duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}
