//! A rule in nft syntax, short, the way `nft list ruleset` prints it
//! (counters without their values): `ip saddr @crowdsec-blacklists
//! counter reject with tcp reset`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    expr::{self, Data, Expr, XtMatch},
    snapshot::{FAMILY_INET, Rule, Snapshot},
};

/// What a register holds, to print the cmp or lookup that reads it.
#[derive(Clone, Debug)]
enum Loaded {
    Field(String, Kind),
    Masked(String, Kind, Vec<u8>),
    Nothing,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Addr,
    /// The first bytes of an address of this many bytes (a prefix).
    AddrPrefix(usize),
    Port,
    Proto,
    NfProto,
    Name,
    CtState,
    Number,
    /// Marks, as nft prints them: 0x0000002a.
    Hex32,
}

pub fn family_name(f: u8) -> &'static str {
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

#[cfg(test)]
pub fn rule(snap: Option<&Snapshot>, r: &Rule) -> String {
    rule_ipset(snap, r, None)
}

/// `rule`, naming the ipset of its `--match-set` (else its index).
pub fn rule_ipset(snap: Option<&Snapshot>, r: &Rule, ipset: Option<&str>) -> String {
    let mut out: Vec<String> = vec![];
    let mut regs: Vec<(u32, Loaded)> = vec![];
    // The network protocol and transport protocol the rule has narrowed
    // to, for naming payload fields (`ip saddr`, `tcp dport`).
    let mut nfproto: Option<u8> = match r.family {
        2 => Some(2),
        10 => Some(10),
        _ => None,
    };
    let mut l4: Option<u8> = None;
    let get = |regs: &Vec<(u32, Loaded)>, reg: u32| {
        regs.iter()
            .rev()
            .find(|(r, _)| *r == reg)
            .map_or(Loaded::Nothing, |(_, l)| l.clone())
    };
    let exprs = &r.exprs;
    let mut i = 0;
    while i < exprs.len() {
        let e = &exprs[i];
        i += 1;
        match e {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let (name, kind) = payload_name(*base, *offset, *len, nfproto, l4);
                regs.push((*dreg, Loaded::Field(name, kind)));
            }
            Expr::Meta { key, dreg } => {
                let kind = match key {
                    3 => Kind::Hex32,
                    15 => Kind::NfProto,
                    16 => Kind::Proto,
                    6 | 7 => Kind::Name,
                    _ => Kind::Number,
                };
                regs.push((
                    *dreg,
                    Loaded::Field(super::matcher::meta_name(*key).to_string(), kind),
                ));
            }
            Expr::Ct { key, dreg } => {
                let kind = if *key == 0 {
                    Kind::CtState
                } else {
                    Kind::Number
                };
                regs.push((
                    *dreg,
                    Loaded::Field(super::matcher::ct_name(*key).into(), kind),
                ));
            }
            Expr::Bitwise {
                sreg, dreg, mask, ..
            } => {
                if let Loaded::Field(n, k) = get(&regs, *sreg) {
                    regs.push((*dreg, Loaded::Masked(n, k, mask.clone())));
                }
            }
            Expr::Cmp { sreg, op, data } => {
                let op_s = match op {
                    0 => "",
                    1 => "!= ",
                    2 => "< ",
                    3 => "<= ",
                    4 => "> ",
                    _ => ">= ",
                };
                match get(&regs, *sreg) {
                    Loaded::Field(n, k) => {
                        // Implied by the payload that follows, as nft hides it.
                        let hidden = *op == 0
                            && match k {
                                Kind::NfProto => {
                                    nfproto = data.first().copied();
                                    r.family == FAMILY_INET
                                        && exprs[i..].iter().any(|e| {
                                            matches!(
                                                e,
                                                Expr::Payload { base: 1, .. }
                                                    | Expr::Reject { kind: 0, .. }
                                            )
                                        })
                                }
                                Kind::Proto => {
                                    l4 = data.first().copied();
                                    matches!(exprs.get(i), Some(Expr::Payload { base: 2, .. }))
                                }
                                _ => false,
                            };
                        if !hidden {
                            out.push(format!("{n} {op_s}{}", value(k, data)));
                        }
                    }
                    Loaded::Masked(n, Kind::Addr, mask) if *op == 0 => {
                        let bits: u32 = mask.iter().map(|b| b.count_ones()).sum();
                        out.push(format!("{n} {}/{bits}", value(Kind::Addr, data)));
                    }
                    Loaded::Masked(n, Kind::CtState, mask) => {
                        out.push(format!("{n} {}", ct_states(&mask)));
                    }
                    Loaded::Masked(n, k, _) => out.push(format!("{n} {op_s}{}", value(k, data))),
                    Loaded::Nothing => out.push(format!("cmp {op_s}{}", hex(data))),
                }
            }
            Expr::Range { sreg, op, from, to } => {
                let (n, k) = match get(&regs, *sreg) {
                    Loaded::Field(n, k) | Loaded::Masked(n, k, _) => (n, k),
                    Loaded::Nothing => ("range".into(), Kind::Number),
                };
                let neg = if *op == 1 { "!= " } else { "" };
                out.push(format!("{n} {neg}{}-{}", value(k, from), value(k, to)));
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                let n = match get(&regs, *sreg) {
                    Loaded::Field(n, _) | Loaded::Masked(n, _, _) => n,
                    Loaded::Nothing => "lookup".into(),
                };
                let neg = if *invert { "!= " } else { "" };
                // An anonymous set prints as its elements.
                let target = match snap.and_then(|s| s.set(r.family, &r.table, set)) {
                    Some(s) if set.starts_with("__") && !s.elements.is_empty() => {
                        anonymous(&s.elements)
                    }
                    _ => format!("@{set}"),
                };
                match dreg {
                    Some(0) => out.push(format!("{n} vmap {target}")),
                    Some(_) => out.push(format!("{n} map {target}")),
                    None => out.push(format!("{n} {neg}{target}")),
                }
            }
            Expr::Immediate {
                dreg: 0,
                data: Data::Verdict(code, chain),
            } => {
                out.push(verdict(*code, chain.as_deref()));
            }
            Expr::Immediate { .. } => {}
            Expr::Reject { kind, code } => out.push(reject(*kind, *code, r.family, nfproto)),
            Expr::Xt {
                target: true,
                name,
                info,
                ..
            } if name == "REJECT" => out.push(match expr::reject_with(info, r.family == 10) {
                Some(w) => format!("-j REJECT --reject-with {w}"),
                None => "-j REJECT".into(),
            }),
            Expr::Xt {
                target: false,
                name,
                rev,
                info,
            } if expr::xt_match(name, *rev, info).is_some() => {
                out.push(xt_match(
                    expr::xt_match(name, *rev, info).as_ref(),
                    name,
                    ipset,
                ));
            }
            Expr::Xt { target, name, .. } => out.push(if *target {
                format!("xt target {name}")
            } else {
                format!("xt match {name}")
            }),
            Expr::Counter => out.push("counter".into()),
            Expr::Other(name) => out.push(name.clone()),
        }
    }
    if let Some(c) = &r.comment {
        out.push(format!("comment \"{c}\""));
    }
    out.join(" ")
}

/// An xt match in iptables syntax.
fn xt_match(m: Option<&XtMatch>, name: &str, ipset: Option<&str>) -> String {
    let list = |r: &[(u16, u16)]| {
        r.iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}:{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let not = |inv: bool| if inv { "! " } else { "" };
    match m {
        Some(XtMatch::Set {
            index, src, invert, ..
        }) => format!(
            "-m set {}--match-set {} {}",
            not(*invert),
            ipset.map_or_else(|| format!("#{index}"), str::to_string),
            if *src { "src" } else { "dst" }
        ),
        Some(XtMatch::Multiport { dir, ports, invert }) => format!(
            "-m multiport {}--{} {}",
            not(*invert),
            ["sports", "dports", "ports"][usize::from(*dir).min(2)],
            list(ports)
        ),
        Some(XtMatch::Ports {
            sports,
            dports,
            inv_src,
            inv_dst,
            ..
        }) => {
            let mut v = format!("-m {name}");
            if *sports != (0, u16::MAX) || *inv_src {
                v += &format!(" {}--sport {}", not(*inv_src), list(&[*sports]));
            }
            if *dports != (0, u16::MAX) || *inv_dst {
                v += &format!(" {}--dport {}", not(*inv_dst), list(&[*dports]));
            }
            v
        }
        None => format!("xt match {name}"),
    }
}

/// `{ a, b }`; intervals as ranges; long sets cut short.
fn anonymous(elements: &[(Vec<u8>, bool)]) -> String {
    let mut starts: Vec<&(Vec<u8>, bool)> = elements.iter().filter(|(_, end)| !end).collect();
    starts.sort();
    let ends: Vec<&Vec<u8>> = elements
        .iter()
        .filter(|(_, end)| *end)
        .map(|(k, _)| k)
        .collect();
    let mut shown: Vec<String> = vec![];
    for (k, _) in starts.iter().take(6) {
        let end = ends.iter().filter(|e| e.as_slice() > k.as_slice()).min();
        shown.push(match end {
            Some(e) => {
                let mut last = (*e).clone();
                for b in last.iter_mut().rev() {
                    let (v, borrow) = b.overflowing_sub(1);
                    *b = v;
                    if !borrow {
                        break;
                    }
                }
                element(k, Some(&last))
            }
            None => addr(k),
        });
    }
    if starts.len() > 6 {
        shown.push(format!("... ({} more)", starts.len() - 6));
    }
    format!("{{ {} }}", shown.join(", "))
}

fn verdict(code: i32, chain: Option<&str>) -> String {
    match code {
        expr::NF_DROP => "drop".into(),
        expr::NF_ACCEPT => "accept".into(),
        expr::NFT_CONTINUE => "continue".into(),
        expr::NFT_RETURN => "return".into(),
        expr::NFT_JUMP => format!("jump {}", chain.unwrap_or("?")),
        expr::NFT_GOTO => format!("goto {}", chain.unwrap_or("?")),
        c => format!("verdict {c}"),
    }
}

/// As nft prints it: codes by their names (`reject with icmp
/// host-unreachable`), the default port unreachable as a bare `reject`
/// (an icmp or icmpv6 one only in an ip or ip6 table: in the others nft
/// spells it out).
fn reject(kind: u32, code: u8, table_family: u8, nfproto: Option<u8>) -> String {
    const ICMP: &[(u8, &str)] = &[
        (0, "net-unreachable"),
        (1, "host-unreachable"),
        (2, "prot-unreachable"),
        (3, "port-unreachable"),
        (9, "net-prohibited"),
        (10, "host-prohibited"),
        (13, "admin-prohibited"),
    ];
    const ICMPV6: &[(u8, &str)] = &[
        (0, "no-route"),
        (1, "admin-prohibited"),
        (3, "addr-unreachable"),
        (4, "port-unreachable"),
        (5, "policy-fail"),
        (6, "reject-route"),
    ];
    const ICMPX: &[(u8, &str)] = &[
        (0, "no-route"),
        (1, "port-unreachable"),
        (2, "host-unreachable"),
        (3, "admin-prohibited"),
    ];
    let v6 = nfproto == Some(10);
    let own_family = matches!(table_family, 2 | 10);
    let (word, names, default) = match kind {
        1 => return "reject with tcp reset".into(),
        0 if v6 => ("icmpv6", ICMPV6, own_family.then_some(4)),
        0 => ("icmp", ICMP, own_family.then_some(3)),
        _ => ("icmpx", ICMPX, Some(1)),
    };
    if Some(code) == default {
        return "reject".into();
    }
    match names.iter().find(|(c, _)| *c == code) {
        Some((_, name)) => format!("reject with {word} {name}"),
        None => format!("reject with {word} {code}"),
    }
}

fn payload_name(
    base: u32,
    offset: u32,
    len: u32,
    nfproto: Option<u8>,
    l4: Option<u8>,
) -> (String, Kind) {
    let named = match (base, nfproto, offset, len) {
        (1, Some(2), 12, 4) => Some(("ip saddr", Kind::Addr)),
        (1, Some(2), 16, 4) => Some(("ip daddr", Kind::Addr)),
        (1, Some(2), 9, 1) => Some(("ip protocol", Kind::Proto)),
        (1, Some(10), 8, 16) => Some(("ip6 saddr", Kind::Addr)),
        (1, Some(10), 24, 16) => Some(("ip6 daddr", Kind::Addr)),
        (1, Some(10), 6, 1) => Some(("ip6 nexthdr", Kind::Proto)),
        _ => None,
    };
    let prefix = match (base, nfproto, offset) {
        (1, Some(2), 12) if len < 4 => Some(("ip saddr", 4)),
        (1, Some(2), 16) if len < 4 => Some(("ip daddr", 4)),
        (1, Some(10), 8) if len < 16 => Some(("ip6 saddr", 16)),
        (1, Some(10), 24) if len < 16 => Some(("ip6 daddr", 16)),
        _ => None,
    };
    if let Some((n, full)) = prefix {
        return (n.into(), Kind::AddrPrefix(full));
    }
    if let Some((n, k)) = named {
        return (n.into(), k);
    }
    if base == 2 && len == 2 && (offset == 0 || offset == 2) {
        let proto = match l4 {
            Some(6) => "tcp",
            Some(17) => "udp",
            Some(132) => "sctp",
            _ => "th",
        };
        let field = if offset == 0 { "sport" } else { "dport" };
        return (format!("{proto} {field}"), Kind::Port);
    }
    let b = match base {
        0 => "ll",
        1 => "nh",
        2 => "th",
        _ => "ih",
    };
    // In bits, as nft prints it; wide enough for any offset a rule holds.
    let (offset, len) = (u64::from(offset) * 8, u64::from(len) * 8);
    (format!("@{b},{offset},{len}"), Kind::Number)
}

fn value(k: Kind, d: &[u8]) -> String {
    match k {
        Kind::Addr => addr(d),
        Kind::AddrPrefix(full) => {
            let mut a = d.to_vec();
            a.resize(full, 0);
            format!("{}/{}", addr(&a), d.len() * 8)
        }
        Kind::Port if d.len() == 2 => u16::from_be_bytes([d[0], d[1]]).to_string(),
        Kind::Proto if d.len() == 1 => match d[0] {
            6 => "tcp".into(),
            17 => "udp".into(),
            1 => "icmp".into(),
            58 => "ipv6-icmp".into(),
            p => p.to_string(),
        },
        Kind::NfProto if d.len() == 1 => match d[0] {
            2 => "ipv4".into(),
            10 => "ipv6".into(),
            p => p.to_string(),
        },
        Kind::Name => format!("\"{}\"", super::snapshot::cstr(d)),
        Kind::Hex32 if d.len() == 4 => {
            format!("0x{:08x}", u32::from_ne_bytes([d[0], d[1], d[2], d[3]]))
        }
        Kind::Number if d.len() == 4 => u32::from_ne_bytes([d[0], d[1], d[2], d[3]]).to_string(),
        _ => hex(d),
    }
}

/// An address or port key as nft prints it.
pub fn addr(d: &[u8]) -> String {
    match d.len() {
        4 => Ipv4Addr::from(<[u8; 4]>::try_from(d).unwrap()).to_string(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(d).unwrap()).to_string(),
        2 => u16::from_be_bytes([d[0], d[1]]).to_string(),
        _ => hex(d),
    }
}

fn hex(d: &[u8]) -> String {
    let mut s = "0x".to_string();
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn ct_states(mask: &[u8]) -> String {
    let m = u32::from_ne_bytes(
        mask.get(..4)
            .and_then(|m| m.try_into().ok())
            .unwrap_or([0; 4]),
    );
    let names = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| m & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(",")
}

/// A matched element: the key, or the range it lies in.
pub fn element(key: &[u8], end: Option<&[u8]>) -> String {
    let Some(end) = end.filter(|e| *e != key) else {
        return addr(key);
    };
    // A CIDR when [key, end] is one (end inclusive, as pipapo keeps it;
    // rbtree ends are exclusive and are made inclusive by the caller).
    if key.len() == end.len() && (key.len() == 4 || key.len() == 16) {
        let k = u128_of(key);
        let e = u128_of(end);
        let span = e ^ k;
        let bits = key.len() as u32 * 8;
        if span.count_ones() == span.trailing_ones() && k & span == 0 {
            return format!("{}/{}", addr(key), bits - span.count_ones());
        }
    }
    format!("{}-{}", addr(key), addr(end))
}

fn u128_of(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |a, x| (a << 8) | u128::from(*x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_print_as_cidrs() {
        assert_eq!(
            element(&[10, 0, 0, 0], Some(&[10, 255, 255, 255])),
            "10.0.0.0/8"
        );
        assert_eq!(
            element(&[10, 0, 0, 1], Some(&[10, 0, 0, 9])),
            "10.0.0.1-10.0.0.9"
        );
        assert_eq!(element(&[198, 18, 0, 10], None), "198.18.0.10");
    }

    /// As nft 1.0 lists them (checked against `nft -a list`): the family's
    /// default port unreachable is bare only in its own family's table.
    #[test]
    fn rejects_print_as_nft_lists_them() {
        let (ip, ip6, inet) = (2, 10, 1);
        assert_eq!(reject(0, 3, ip, Some(2)), "reject");
        assert_eq!(reject(0, 4, ip6, Some(10)), "reject");
        assert_eq!(reject(2, 1, inet, None), "reject");
        assert_eq!(
            reject(0, 3, inet, Some(2)),
            "reject with icmp port-unreachable"
        );
        assert_eq!(
            reject(0, 1, inet, Some(2)),
            "reject with icmp host-unreachable"
        );
        assert_eq!(reject(0, 9, ip, Some(2)), "reject with icmp net-prohibited");
        assert_eq!(reject(0, 0, ip6, Some(10)), "reject with icmpv6 no-route");
        assert_eq!(
            reject(2, 3, inet, None),
            "reject with icmpx admin-prohibited"
        );
        assert_eq!(reject(1, 0, inet, None), "reject with tcp reset");
        assert_eq!(reject(0, 42, ip, Some(2)), "reject with icmp 42");
    }
}
