//! A namespace's iptables-legacy tables, read from the kernel as
//! `iptables-legacy-save` reads them (IPT_SO_GET_INFO and
//! IPT_SO_GET_ENTRIES on a raw socket, and their ip6tables twins), turned
//! into a `Snapshot` so that one matcher runs both backends: an entry's
//! addresses, masks, protocol and interfaces become the payload, bitwise,
//! cmp and meta expressions iptables-nft would have made of them; its
//! matches and target are the same xtables structs nft_compat carries.
//!
//! Only tables the namespace already has are read (its
//! /proc/net/ip_tables_names): asking for another would make the kernel
//! load and register it there, hooks and all.
//!
//! A rule's handle is its number in its chain, as `iptables -L
//! --line-numbers` and `iptables -D CHAIN N` count.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use crate::untrusted::Untrusted;

use super::{
    expr::{self, Data, Expr},
    snapshot::{Chain, Rule, Snapshot, cstr},
};

/// The layout of one family's structs (linux/netfilter_ipv4/ip_tables.h,
/// linux/netfilter_ipv6/ip6_tables.h, x86-64 and every 64-bit ABI alike).
struct Layout {
    nfproto: u8,
    /// The socket level and the names file.
    sol: libc::c_int,
    names: &'static str,
    addr_len: usize,
    /// Offsets in the entry: interfaces, proto, flags, invflags,
    /// target_offset, next_offset; the entry's own size.
    iniface: usize,
    proto: usize,
    flags: usize,
    invflags: usize,
    target_offset: usize,
    entry_size: usize,
    /// Where saddr and daddr sit in the packet's network header.
    saddr_at: u32,
    daddr_at: u32,
    /// IPT_F_GOTO / IP6T_F_GOTO; IPv4's fragment flag (none in IPv6).
    goto_flag: u8,
    frag_flag: u8,
}

const V4: Layout = Layout {
    nfproto: 2,
    sol: libc::SOL_IP,
    names: "ip_tables_names",
    addr_len: 4,
    iniface: 16,
    proto: 80,
    flags: 82,
    invflags: 83,
    target_offset: 88,
    entry_size: 112,
    saddr_at: 12,
    daddr_at: 16,
    goto_flag: 0x02,
    frag_flag: 0x01,
};

const V6: Layout = Layout {
    nfproto: 10,
    sol: libc::SOL_IPV6,
    names: "ip6_tables_names",
    addr_len: 16,
    iniface: 64,
    proto: 128,
    flags: 131,
    invflags: 132,
    target_offset: 140,
    entry_size: 168,
    saddr_at: 8,
    daddr_at: 24,
    goto_flag: 0x04,
    frag_flag: 0,
};

const SO_GET_INFO: libc::c_int = 64;
const SO_GET_ENTRIES: libc::c_int = 65;
/// struct ipt_getinfo / ip6t_getinfo.
const INFO_SIZE: usize = 84;
/// struct ipt_get_entries up to its (8-aligned) entry table.
const ENTRIES_HEADER: usize = 40;
/// xt_entry_match / xt_entry_target: size, name[29], revision.
const XT_HEADER: usize = 32;

const INV_VIA_IN: u8 = 0x01;
const INV_VIA_OUT: u8 = 0x02;
const INV_SRCIP: u8 = 0x08;
const INV_DSTIP: u8 = 0x10;
const INV_FRAG: u8 = 0x20;
const INV_PROTO: u8 = 0x40;

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// NF_IP_PRI_* of each table, by hook where nat's differ.
fn priority(table: &str, hook: usize) -> i32 {
    match table {
        "raw" => -300,
        "mangle" => -150,
        "nat" if hook == 0 || hook == 3 => -100,
        "nat" => 100,
        "security" => 50,
        _ => 0,
    }
}

/// Every legacy table (both families) of the namespace at `path` (None:
/// this one). A namespace without ip_tables has none.
pub fn read(path: Option<&Path>) -> Result<Snapshot, String> {
    let Some(path) = path else {
        return read_here();
    };
    crate::kernel::netns::run_in(path, read_here)
}

fn read_here() -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    for l in [&V4, &V6] {
        // This thread's namespace's tables (/proc/net follows the
        // reading task's namespace only through thread-self).
        let names = match std::fs::read_to_string(format!("/proc/thread-self/net/{}", l.names)) {
            Ok(n) => n,
            // No ip_tables (or ip6_tables) in this kernel: no tables.
            Err(_) => continue,
        };
        if names.trim().is_empty() {
            continue;
        }
        let family = if l.nfproto == 2 {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(format!(
                "iptables socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for table in names.lines().map(str::trim).filter(|t| !t.is_empty()) {
            // A table gone between the two reads is no error.
            if let Some((info, entries)) = table_blob(&fd, l, table)? {
                parse_table(l, table, &info, &entries, &mut snap);
            }
        }
    }
    Ok(snap)
}

fn getsockopt(fd: &OwnedFd, l: &Layout, opt: libc::c_int, buf: &mut [u8]) -> std::io::Result<()> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes; the kernel writes at most len.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            l.sol,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The table's info and its entries, None when it is gone.
#[allow(clippy::type_complexity)]
fn table_blob(fd: &OwnedFd, l: &Layout, table: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
    let mut name = [0u8; 32];
    let n = table.len().min(31);
    name[..n].copy_from_slice(&table.as_bytes()[..n]);
    // The table may change between the two calls (its size with it): the
    // kernel then refuses the second (EAGAIN), and it is read again.
    for _ in 0..5 {
        let mut info = vec![0u8; INFO_SIZE];
        info[..32].copy_from_slice(&name);
        match getsockopt(fd, l, SO_GET_INFO, &mut info) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "iptables-legacy table {}: {e}",
                    Untrusted::from(table)
                ));
            }
        }
        let size = u32_at(&info, 80) as usize;
        let mut buf = vec![0u8; ENTRIES_HEADER + size];
        buf[..32].copy_from_slice(&name);
        buf[32..36].copy_from_slice(&(size as u32).to_ne_bytes());
        match getsockopt(fd, l, SO_GET_ENTRIES, &mut buf) {
            Ok(()) => return Ok(Some((info, buf.split_off(ENTRIES_HEADER)))),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "iptables-legacy table {}: {e}",
                    Untrusted::from(table)
                ));
            }
        }
    }
    Err(format!(
        "iptables-legacy table {}: changing while read",
        Untrusted::from(table)
    ))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |v| u16::from_ne_bytes(v.try_into().unwrap()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |v| u32::from_ne_bytes(v.try_into().unwrap()))
}

/// One entry's extension (match or target): name, revision, data.
struct Ext<'a> {
    name: String,
    rev: u8,
    data: &'a [u8],
}

fn ext(b: &[u8]) -> Option<(Ext<'_>, usize)> {
    let size = u16_at(b, 0) as usize;
    if size < XT_HEADER || size > b.len() {
        return None;
    }
    Some((
        Ext {
            name: cstr(&b[2..31]),
            rev: b[31],
            data: &b[XT_HEADER..size],
        },
        size,
    ))
}

/// One entry, where it is in the table, and what its target says.
struct Entry<'a> {
    offset: usize,
    next: usize,
    bytes: &'a [u8],
    target: Ext<'a>,
}

impl Entry<'_> {
    /// The standard target's verdict (negative: -NF verdict - 1; else
    /// the offset jumped to).
    fn standard(&self) -> Option<i32> {
        (self.target.name.is_empty())
            .then(|| self.target.data.get(..4))
            .flatten()
            .map(|v| i32::from_ne_bytes(v.try_into().unwrap()))
    }

    fn error_name(&self) -> Option<String> {
        (self.target.name == "ERROR").then(|| cstr(self.target.data))
    }
}

fn entries<'a>(l: &Layout, blob: &'a [u8]) -> Vec<Entry<'a>> {
    let mut v = vec![];
    let mut at = 0;
    while at + l.entry_size <= blob.len() {
        let e = &blob[at..];
        let target_offset = u16_at(e, l.target_offset) as usize;
        let next = u16_at(e, l.target_offset + 2) as usize;
        if next < l.entry_size || at + next > blob.len() || target_offset >= next {
            break;
        }
        let bytes = &e[..next];
        let Some((target, _)) = ext(&bytes[target_offset..]) else {
            break;
        };
        v.push(Entry {
            offset: at,
            next,
            bytes,
            target,
        });
        at += next;
    }
    v
}

fn parse_table(l: &Layout, table: &str, info: &[u8], blob: &[u8], snap: &mut Snapshot) {
    let valid_hooks = u32_at(info, 32);
    let hook_entry: Vec<usize> = (0..5).map(|h| u32_at(info, 36 + 4 * h) as usize).collect();
    let underflow: Vec<usize> = (0..5).map(|h| u32_at(info, 56 + 4 * h) as usize).collect();
    let hooks: Vec<usize> = (0..5).filter(|h| valid_hooks & (1 << h) != 0).collect();
    let all = entries(l, blob);
    // A user chain starts after its ERROR entry: jumps land there.
    let mut chain_at: Vec<(usize, String)> = vec![];
    for e in &all {
        if let Some(name) = e.error_name()
            && name != "ERROR"
        {
            chain_at.push((e.offset + e.next, name));
        }
    }
    let chain_of_offset = |off: usize| {
        chain_at
            .iter()
            .find(|(o, _)| *o == off)
            .map(|(_, n)| n.clone())
    };
    for &h in &hooks {
        let policy = all
            .iter()
            .find(|e| e.offset == underflow[h])
            .and_then(Entry::standard)
            .map_or(expr::NF_ACCEPT as u32, |v| (-v - 1) as u32);
        snap.chains.push(Chain {
            family: l.nfproto,
            table: table.to_string(),
            name: BUILTIN[h].to_string(),
            hook: Some((h as u32, priority(table, h), policy)),
        });
    }
    for (_, name) in &chain_at {
        snap.chains.push(Chain {
            family: l.nfproto,
            table: table.to_string(),
            name: name.clone(),
            hook: None,
        });
    }
    // Walk the entries in order: a built-in chain runs from its hook entry
    // to its underflow (the policy, not a rule); a user chain from after
    // its ERROR entry to the RETURN before the next ERROR.
    let mut current: Option<(String, u64)> = None;
    for (i, e) in all.iter().enumerate() {
        if let Some(h) = hooks.iter().find(|&&h| hook_entry[h] == e.offset) {
            current = Some((BUILTIN[*h].to_string(), 0));
        }
        if e.error_name().is_some() {
            current = chain_of_offset(e.offset + e.next).map(|n| (n, 0));
            continue;
        }
        if hooks.iter().any(|&h| underflow[h] == e.offset) {
            current = None;
            continue;
        }
        let ends_user_chain = all.get(i + 1).is_some_and(|n| n.error_name().is_some());
        let Some((chain, n)) = current.as_mut() else {
            continue;
        };
        if ends_user_chain {
            current = None;
            continue;
        }
        *n += 1;
        snap.rules.push(Rule {
            family: l.nfproto,
            table: table.to_string(),
            chain: chain.clone(),
            handle: *n,
            exprs: exprs(l, e, &chain_of_offset),
            comment: None,
        });
    }
}

/// The expressions iptables-nft makes of the same rule.
fn exprs(l: &Layout, e: &Entry<'_>, chain_of: &dyn Fn(usize) -> Option<String>) -> Vec<Expr> {
    let b = e.bytes;
    let inv = b[l.invflags];
    let mut v = vec![];
    let a = l.addr_len;
    for (addr_at, mask_at, header_at, flag) in [
        (0, 2 * a, l.saddr_at, INV_SRCIP),
        (a, 3 * a, l.daddr_at, INV_DSTIP),
    ] {
        let mask = &b[mask_at..mask_at + a];
        if mask.iter().all(|&m| m == 0) {
            continue;
        }
        v.push(Expr::Payload {
            base: 1,
            offset: header_at,
            len: a as u32,
            dreg: 1,
        });
        if mask.iter().any(|&m| m != 0xff) {
            v.push(Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: mask.to_vec(),
                xor: vec![0; a],
            });
        }
        v.push(cmp(inv & flag != 0, b[addr_at..addr_at + a].to_vec()));
    }
    for (name_at, key, flag) in [(l.iniface, 6, INV_VIA_IN), (l.iniface + 16, 7, INV_VIA_OUT)] {
        let name = cstr(&b[name_at..name_at + 16]);
        if !name.is_empty() {
            v.push(Expr::Meta { key, dreg: 1 });
            // A trailing '+' matches a prefix: the name is the prefix.
            let name = name.trim_end_matches('+');
            v.push(cmp(inv & flag != 0, name.as_bytes().to_vec()));
        }
    }
    let proto = u16_at(b, l.proto);
    if proto != 0 {
        v.push(Expr::Meta { key: 16, dreg: 1 });
        v.push(cmp(inv & INV_PROTO != 0, vec![proto as u8]));
    }
    if l.frag_flag != 0 && (b[l.flags] & l.frag_flag != 0 || inv & INV_FRAG != 0) {
        v.push(Expr::Other("fragment".into()));
    }
    let target_offset = u16_at(b, l.target_offset) as usize;
    let mut at = l.entry_size;
    while at < target_offset {
        let Some((m, size)) = ext(&b[at..target_offset]) else {
            v.push(Expr::Other("match".into()));
            break;
        };
        v.push(Expr::Xt {
            target: false,
            name: m.name,
            rev: u32::from(m.rev),
            info: m.data.to_vec(),
        });
        at += size;
    }
    let verdict = |code, chain| Expr::Immediate {
        dreg: 0,
        data: Data::Verdict(code, chain),
    };
    v.push(match e.standard() {
        Some(-5) => verdict(expr::NFT_RETURN, None),
        Some(code) if code < 0 => verdict(-code - 1, None),
        Some(off) => match chain_of(off as usize) {
            Some(c) if b[l.flags] & l.goto_flag != 0 => verdict(expr::NFT_GOTO, Some(c)),
            Some(c) => verdict(expr::NFT_JUMP, Some(c)),
            // A jump to the next entry: iptables's fall-through.
            None => Expr::Counter,
        },
        None => Expr::Xt {
            target: true,
            name: e.target.name.clone(),
            rev: u32::from(e.target.rev),
            info: e.target.data.to_vec(),
        },
    });
    v
}

fn cmp(invert: bool, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: 1,
        op: u32::from(invert),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 entry: source address/mask, protocol, then its target
    /// (name, data) as the kernel lays them out.
    fn entry(src: [u8; 4], mask: [u8; 4], proto: u16, target: &str, data: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; V4.entry_size];
        e[0..4].copy_from_slice(&src);
        e[8..12].copy_from_slice(&mask);
        e[80..82].copy_from_slice(&proto.to_ne_bytes());
        let tsize = XT_HEADER + data.len().next_multiple_of(8);
        let mut t = vec![0u8; tsize];
        t[0..2].copy_from_slice(&(tsize as u16).to_ne_bytes());
        t[2..2 + target.len()].copy_from_slice(target.as_bytes());
        t[XT_HEADER..XT_HEADER + data.len()].copy_from_slice(data);
        e[88..90].copy_from_slice(&(V4.entry_size as u16).to_ne_bytes());
        e[90..92].copy_from_slice(&((V4.entry_size + tsize) as u16).to_ne_bytes());
        e.extend(t);
        e
    }

    fn standard(v: i32) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn error(name: &str) -> Vec<u8> {
        let mut n = [0u8; 32];
        n[..name.len()].copy_from_slice(name.as_bytes());
        entry([0; 4], [0; 4], 0, "ERROR", &n)
    }

    /// filter: INPUT jumps tcp to chain f2b-sshd, which rejects one /32
    /// and returns; INPUT's policy is drop.
    #[test]
    fn a_table_becomes_chains_and_rules() {
        let mut blob = vec![];
        let at = |e: Vec<u8>, blob: &mut Vec<u8>| {
            let o = blob.len();
            blob.extend(e);
            o
        };
        // INPUT: the jump (offset patched below), then its policy.
        let jump = at(entry([0; 4], [0; 4], 6, "", &standard(0)), &mut blob);
        let policy = at(entry([0; 4], [0; 4], 0, "", &standard(-1)), &mut blob);
        let head = at(error("f2b-sshd"), &mut blob);
        let first = at(
            entry([198, 18, 9, 10], [255; 4], 0, "REJECT", &[0; 4]),
            &mut blob,
        );
        at(entry([0; 4], [0; 4], 0, "", &standard(-5)), &mut blob);
        at(error("ERROR"), &mut blob);
        assert_eq!(first, head + error("x").len());
        let t = jump + V4.entry_size + XT_HEADER;
        blob[t..t + 4].copy_from_slice(&(first as i32).to_ne_bytes());
        let mut info = vec![0u8; INFO_SIZE];
        info[32..36].copy_from_slice(&(1u32 << 1).to_ne_bytes());
        info[40..44].copy_from_slice(&(jump as u32).to_ne_bytes());
        info[60..64].copy_from_slice(&(policy as u32).to_ne_bytes());

        let mut snap = Snapshot::default();
        parse_table(&V4, "filter", &info, &blob, &mut snap);
        let names: Vec<&str> = snap.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["INPUT", "f2b-sshd"]);
        // Hook input, priority 0, policy drop; a user chain has no hook.
        assert_eq!(snap.chains[0].hook, Some((1, 0, 0)));
        assert_eq!(snap.chains[1].hook, None);
        let rules: Vec<(&str, u64)> = snap
            .rules
            .iter()
            .map(|r| (r.chain.as_str(), r.handle))
            .collect();
        assert_eq!(rules, [("INPUT", 1), ("f2b-sshd", 1)]);
        assert_eq!(
            snap.rules[0].exprs,
            [
                Expr::Meta { key: 16, dreg: 1 },
                cmp(false, vec![6]),
                Expr::Immediate {
                    dreg: 0,
                    data: Data::Verdict(expr::NFT_JUMP, Some("f2b-sshd".into())),
                },
            ]
        );
        assert_eq!(
            snap.rules[1].exprs[..2],
            [
                Expr::Payload {
                    base: 1,
                    offset: 12,
                    len: 4,
                    dreg: 1
                },
                cmp(false, vec![198, 18, 9, 10]),
            ]
        );
        assert!(matches!(
            &snap.rules[1].exprs[2],
            Expr::Xt { target: true, name, .. } if name == "REJECT"
        ));
    }
}
