//! A namespace's nftables ruleset as the kernel holds it: tables, chains
//! (base chains with hook, priority and policy), rules with their
//! expressions, sets with their flags. Read over netlink (no `nft`
//! binary: it works in a FROM-scratch image and a sidecar's namespace),
//! once per ruleset generation. Set elements are not kept: membership is
//! asked of the kernel, key by key (`Snapshot::element`).

use crate::attribution::nftmon::attrs;

use super::{
    expr::{self, Expr},
    netlink::{self, NLA_F_NESTED, Socket, nla, nla_str},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: u8,
    pub table: String,
    pub name: String,
    /// Base chains: hook number, priority, policy (NF_DROP 0, NF_ACCEPT 1).
    pub hook: Option<(u32, i32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

pub const SET_ANONYMOUS: u32 = 0x1;
pub const SET_INTERVAL: u32 = 0x4;
pub const SET_MAP: u32 = 0x8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub family: u8,
    pub table: String,
    pub name: String,
    pub flags: u32,
    pub key_len: u32,
    /// Default element timeout, ms.
    pub timeout_ms: Option<u64>,
    pub comment: Option<String>,
    /// Anonymous sets' elements (key, interval end), for printing the
    /// rule; named sets' are never read whole.
    pub elements: Vec<(Vec<u8>, bool)>,
}

/// A set element as the kernel returned it for a key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    /// Maps: the verdict (code, chain) or the data.
    pub verdict: Option<(i32, Option<String>)>,
    pub timeout_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u32,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
    pub sets: Vec<Set>,
}

fn attr<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// The comment in a userdata TLV list (type, length, value), NUL-ended.
fn udata_comment(ud: &[u8], ty: u8) -> Option<String> {
    let mut rest = ud;
    while rest.len() >= 2 {
        let (t, l) = (rest[0], rest[1] as usize);
        let v = rest.get(2..2 + l)?;
        if t == ty {
            return Some(cstr(v));
        }
        rest = &rest[2 + l..];
    }
    None
}

pub fn generation(sock: &mut Socket) -> Result<u32, i32> {
    let r = sock.request(netlink::NFT_MSG_GETGEN, 0, false, &[])?;
    r.iter()
        .find_map(|m| attr(&attrs(&m.attrs), 1).and_then(be32))
        .ok_or(libc::EPROTO)
}

impl Snapshot {
    /// Reads the whole ruleset (all families) as of one generation: the
    /// generation is read before and after, and the dump retried when a
    /// commit came between.
    pub fn read(sock: &mut Socket) -> Result<Self, i32> {
        for _ in 0..5 {
            let before = generation(sock)?;
            let s = Self::read_once(sock, before)?;
            if generation(sock)? == before {
                return Ok(s);
            }
        }
        Err(libc::EBUSY)
    }

    fn read_once(sock: &mut Socket, generation: u32) -> Result<Self, i32> {
        let mut s = Snapshot {
            generation,
            ..Default::default()
        };
        for m in sock.request(netlink::NFT_MSG_GETCHAIN, 0, true, &[])? {
            let a = attrs(&m.attrs);
            let hook = attr(&a, 4).map(attrs).and_then(|h| {
                Some((
                    attr(&h, 1).and_then(be32)?,
                    attr(&h, 2).and_then(be32)? as i32,
                    attr(&a, 5).and_then(be32).unwrap_or(1),
                ))
            });
            s.chains.push(Chain {
                family: m.family,
                table: attr(&a, 1).map(cstr).unwrap_or_default(),
                name: attr(&a, 3).map(cstr).unwrap_or_default(),
                hook,
            });
        }
        for m in sock.request(netlink::NFT_MSG_GETRULE, 0, true, &[])? {
            let a = attrs(&m.attrs);
            s.rules.push(Rule {
                family: m.family,
                table: attr(&a, 1).map(cstr).unwrap_or_default(),
                chain: attr(&a, 2).map(cstr).unwrap_or_default(),
                handle: attr(&a, 3).and_then(be64).unwrap_or(0),
                exprs: attr(&a, 4).map(expr::parse_list).unwrap_or_default(),
                comment: attr(&a, 7).and_then(|u| udata_comment(u, 0)),
            });
        }
        for m in sock.request(netlink::NFT_MSG_GETSET, 0, true, &[])? {
            let a = attrs(&m.attrs);
            s.sets.push(Set {
                family: m.family,
                table: attr(&a, 1).map(cstr).unwrap_or_default(),
                name: attr(&a, 2).map(cstr).unwrap_or_default(),
                flags: attr(&a, 3).and_then(be32).unwrap_or(0),
                key_len: attr(&a, 5).and_then(be32).unwrap_or(0),
                timeout_ms: attr(&a, 11).and_then(be64),
                comment: attr(&a, 13).and_then(|u| udata_comment(u, 7)),
                elements: vec![],
            });
        }
        for i in 0..s.sets.len() {
            if s.sets[i].flags & SET_ANONYMOUS != 0 {
                s.sets[i].elements = elements(sock, &s.sets[i])?;
            }
        }
        Ok(s)
    }

    pub fn set(&self, family: u8, table: &str, name: &str) -> Option<&Set> {
        self.sets
            .iter()
            .find(|s| s.family == family && s.table == table && s.name == name)
    }

    /// Base chains of `hook` that see packets of `nfproto` (2 or 10), in
    /// the order the kernel runs them (priority; ties in table order).
    pub fn base_chains(&self, hook: u32, nfproto: u8) -> Vec<&Chain> {
        let mut v: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.hook.is_some_and(|(h, _, _)| h == hook))
            .filter(|c| c.family == nfproto || c.family == FAMILY_INET)
            .collect();
        v.sort_by_key(|c| c.hook.map(|(_, p, _)| p));
        v
    }

    pub fn rules_of<'a>(&'a self, c: &'a Chain) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.family == c.family && r.table == c.table && r.chain == c.name)
    }

    pub fn chain(&self, family: u8, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }
}

pub const FAMILY_INET: u8 = 1;

/// Asks the kernel whether `key` is in a set (NFT_MSG_GETSETELEM, as `nft
/// get element` does): Ok(None) when it is not. For interval sets the
/// kernel answers with the range holding the key.
pub fn element(sock: &mut Socket, set: &Set, key: &[u8]) -> Result<Option<Element>, i32> {
    let mut keyattr = nla(1, key);
    keyattr = nla(1 | NLA_F_NESTED, &keyattr);
    let mut elem = keyattr;
    if set.flags & SET_INTERVAL != 0 {
        // Newer kernels want the range's end too: a single point.
        elem.extend(nla(9 | NLA_F_NESTED, &nla(1, key)));
    }
    let list = nla(1 | NLA_F_NESTED, &elem);
    let mut a = nla_str(1, &set.table);
    a.extend(nla_str(2, &set.name));
    a.extend(nla(3 | NLA_F_NESTED, &list));
    let r = match sock.request(netlink::NFT_MSG_GETSETELEM, set.family, false, &a) {
        Err(libc::ENOENT) => return Ok(None),
        // Old kernels refuse a KEY_END: ask again without it.
        Err(libc::EINVAL) if set.flags & SET_INTERVAL != 0 => {
            let list = nla(1 | NLA_F_NESTED, &nla(1 | NLA_F_NESTED, &nla(1, key)));
            let mut a = nla_str(1, &set.table);
            a.extend(nla_str(2, &set.name));
            a.extend(nla(3 | NLA_F_NESTED, &list));
            match sock.request(netlink::NFT_MSG_GETSETELEM, set.family, false, &a) {
                Err(libc::ENOENT) => return Ok(None),
                r => r?,
            }
        }
        r => r?,
    };
    for m in r {
        let a = attrs(&m.attrs);
        let Some(elems) = attr(&a, 3) else { continue };
        // The answer holds the one element asked for.
        if let Some((_, e)) = attrs(elems).first() {
            let e = attrs(e);
            let value = |ty: u16| {
                attr(&e, ty)
                    .map(attrs)
                    .and_then(|d| attr(&d, 1).map(<[u8]>::to_vec))
            };
            let verdict = attr(&e, 2)
                .map(attrs)
                .and_then(|d| attr(&d, 2).map(attrs))
                .map(|v| {
                    (
                        attr(&v, 1).and_then(be32).unwrap_or(0) as i32,
                        attr(&v, 2).map(cstr),
                    )
                });
            return Ok(Some(Element {
                key: value(1).unwrap_or_default(),
                key_end: value(9),
                verdict,
                timeout_ms: attr(&e, 4).and_then(be64),
                expires_ms: attr(&e, 5).and_then(be64),
                comment: attr(&e, 6).and_then(|u| udata_comment(u, 0)),
            }));
        }
    }
    Ok(None)
}

/// All elements of a set (for rendering an anonymous set's contents and
/// an interval's end; membership is never decided from this).
pub fn elements(sock: &mut Socket, set: &Set) -> Result<Vec<(Vec<u8>, bool)>, i32> {
    let mut a = nla_str(1, &set.table);
    a.extend(nla_str(2, &set.name));
    let mut out = vec![];
    for m in sock.request(netlink::NFT_MSG_GETSETELEM, set.family, true, &a)? {
        let a = attrs(&m.attrs);
        let Some(elems) = attr(&a, 3) else { continue };
        for (_, e) in attrs(elems) {
            let e = attrs(e);
            let key = attr(&e, 1)
                .map(attrs)
                .and_then(|d| attr(&d, 1).map(<[u8]>::to_vec))
                .unwrap_or_default();
            let end = attr(&e, 3).and_then(be32).unwrap_or(0) & 1 != 0;
            out.push((key, end));
        }
    }
    Ok(out)
}
