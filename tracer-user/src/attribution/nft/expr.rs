//! nftables rule expressions, decoded from netlink: the ones security
//! tools' rules are made of are typed; any other keeps its name (the
//! matcher treats it as an unknown fact).

use crate::attribution::nftmon::attrs;

use super::snapshot::cstr;

/// Immediate data: a verdict or a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Verdict(i32, Option<String>),
    Value(Vec<u8>),
}

pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Meta {
        key: u32,
        dreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    Immediate {
        dreg: u32,
        data: Data,
    },
    Reject {
        kind: u32,
        code: u8,
    },
    /// An xtables target or match through nft_compat: its name, revision
    /// and the extension's own info struct (NFTA_MATCH_INFO, in the
    /// kernel's layout and byte order).
    Xt {
        target: bool,
        name: String,
        rev: u32,
        info: Vec<u8>,
    },
    Counter,
    Other(String),
}

fn attr<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// NFTA_DATA_VALUE or NFTA_DATA_VERDICT inside a data attribute.
fn data(d: &[u8]) -> Data {
    let d = attrs(d);
    if let Some(v) = attr(&d, 2) {
        let v = attrs(v);
        return Data::Verdict(
            attr(&v, 1).and_then(be32).unwrap_or(0) as i32,
            attr(&v, 2).map(cstr),
        );
    }
    Data::Value(attr(&d, 1).map(<[u8]>::to_vec).unwrap_or_default())
}

fn value(d: Option<&[u8]>) -> Vec<u8> {
    match d.map(data) {
        Some(Data::Value(v)) => v,
        _ => vec![],
    }
}

/// A rule's NFTA_RULE_EXPRESSIONS.
pub fn parse_list(list: &[u8]) -> Vec<Expr> {
    attrs(list)
        .into_iter()
        .filter(|(ty, _)| *ty == 1)
        .map(|(_, e)| parse(e))
        .collect()
}

fn parse(e: &[u8]) -> Expr {
    let e = attrs(e);
    let name = attr(&e, 1).map(cstr).unwrap_or_default();
    let a = attr(&e, 2).map(attrs).unwrap_or_default();
    let u = |ty| attr(&a, ty).and_then(be32);
    let parsed = match name.as_str() {
        "payload" if u(5).is_none() => Some(Expr::Payload {
            dreg: u(1).unwrap_or(0),
            base: u(2).unwrap_or(0),
            offset: u(3).unwrap_or(0),
            len: u(4).unwrap_or(0),
        }),
        "meta" if u(1).is_some() => Some(Expr::Meta {
            dreg: u(1).unwrap_or(0),
            key: u(2).unwrap_or(0),
        }),
        "ct" if u(1).is_some() && u(3).is_none() => Some(Expr::Ct {
            dreg: u(1).unwrap_or(0),
            key: u(2).unwrap_or(0),
        }),
        "cmp" => Some(Expr::Cmp {
            sreg: u(1).unwrap_or(0),
            op: u(2).unwrap_or(0),
            data: value(attr(&a, 3)),
        }),
        // Only the boolean (mask and xor) form: shifts are another fact.
        "bitwise" if u(6).unwrap_or(0) == 0 => Some(Expr::Bitwise {
            sreg: u(1).unwrap_or(0),
            dreg: u(2).unwrap_or(0),
            mask: value(attr(&a, 4)),
            xor: value(attr(&a, 5)),
        }),
        "range" => Some(Expr::Range {
            sreg: u(1).unwrap_or(0),
            op: u(2).unwrap_or(0),
            from: value(attr(&a, 3)),
            to: value(attr(&a, 4)),
        }),
        "lookup" => Some(Expr::Lookup {
            set: attr(&a, 1).map(cstr).unwrap_or_default(),
            sreg: u(2).unwrap_or(0),
            dreg: u(3),
            invert: u(5).unwrap_or(0) & 1 != 0,
        }),
        "immediate" => Some(Expr::Immediate {
            dreg: u(1).unwrap_or(0),
            data: attr(&a, 2).map(data).unwrap_or(Data::Value(vec![])),
        }),
        "reject" => Some(Expr::Reject {
            kind: u(1).unwrap_or(0),
            code: attr(&a, 2).and_then(|c| c.first().copied()).unwrap_or(0),
        }),
        "target" | "match" => Some(Expr::Xt {
            target: name == "target",
            name: attr(&a, 1).map(cstr).unwrap_or_default(),
            rev: u(2).unwrap_or(0),
            info: attr(&a, 3).map(<[u8]>::to_vec).unwrap_or_default(),
        }),
        "counter" => Some(Expr::Counter),
        _ => None,
    };
    parsed.unwrap_or(Expr::Other(name))
}

/// An xtables match rsttrace can evaluate, decoded from its info struct
/// (the kernel's layout, host byte order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XtMatch {
    /// `-m set --match-set NAME src|dst` (xt_set, revisions 1 to 4):
    /// the set by kernel index, the direction of each dimension, inverted.
    Set {
        index: u16,
        dim: u8,
        /// IPSET_DIM_ONE_SRC: the first dimension is the source address.
        src: bool,
        invert: bool,
        /// A packet or byte counter condition (revisions 3 and 4).
        counters: bool,
    },
    /// `-m multiport --dports|--sports|--ports LIST` (revisions 0 and 1):
    /// inclusive port ranges.
    Multiport {
        /// 0 source, 1 destination, 2 either.
        dir: u8,
        ports: Vec<(u16, u16)>,
        invert: bool,
    },
    /// `-m tcp|udp --sport/--dport` ranges; `other` when a tcp flags or
    /// option test is there too.
    Ports {
        sports: (u16, u16),
        dports: (u16, u16),
        inv_src: bool,
        inv_dst: bool,
        other: bool,
    },
}

fn ne16(info: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(info.get(at..at + 2)?.try_into().ok()?))
}

/// Decodes the info of the xt matches rsttrace evaluates.
pub fn xt_match(name: &str, rev: u32, info: &[u8]) -> Option<XtMatch> {
    match (name, rev) {
        ("set", 1..=4) => {
            let flags = *info.get(3)?;
            // Counter conditions: op bytes of the packets and bytes
            // matches (struct ip_set_counter_match0 in revision 3, the
            // aligned ip_set_counter_match in 4).
            let ops: &[usize] = match rev {
                3 => &[8, 24],
                4 => &[16, 32],
                _ => &[],
            };
            Some(XtMatch::Set {
                index: ne16(info, 0)?,
                dim: *info.get(2)?,
                src: flags & 2 != 0,
                invert: flags & 1 != 0,
                counters: ops
                    .iter()
                    .any(|at| info.get(*at).is_some_and(|op| *op != 0)),
            })
        }
        ("multiport", 0 | 1) => {
            let dir = *info.first()?;
            let count = usize::from(*info.get(1)?).min(15);
            let port = |i: usize| ne16(info, 2 + 2 * i);
            let mut ports = vec![];
            let mut i = 0;
            while i < count {
                let s = port(i)?;
                // Revision 1: pflags[i] makes ports[i]..ports[i + 1] a range.
                if rev == 1 && info.get(32 + i).is_some_and(|f| *f != 0) && i + 1 < count {
                    ports.push((s, port(i + 1)?));
                    i += 2;
                } else {
                    ports.push((s, s));
                    i += 1;
                }
            }
            let invert = rev == 1 && info.get(47).is_some_and(|v| *v != 0);
            (dir <= 2).then_some(XtMatch::Multiport { dir, ports, invert })
        }
        ("tcp", 0) => {
            let inv = *info.get(11)?;
            Some(XtMatch::Ports {
                sports: (ne16(info, 0)?, ne16(info, 2)?),
                dports: (ne16(info, 4)?, ne16(info, 6)?),
                inv_src: inv & 1 != 0,
                inv_dst: inv & 2 != 0,
                // option, flg_mask, and their inversions.
                other: *info.get(8)? != 0 || *info.get(9)? != 0 || inv & 0x0c != 0,
            })
        }
        ("udp", 0) => {
            let inv = *info.get(8)?;
            Some(XtMatch::Ports {
                sports: (ne16(info, 0)?, ne16(info, 2)?),
                dports: (ne16(info, 4)?, ne16(info, 6)?),
                inv_src: inv & 1 != 0,
                inv_dst: inv & 2 != 0,
                other: false,
            })
        }
        _ => None,
    }
}

/// REJECT's `--reject-with` (ipt_reject_info, ip6t_reject_info).
pub fn reject_with(info: &[u8], v6: bool) -> Option<&'static str> {
    let with = u32::from_ne_bytes(info.get(..4)?.try_into().ok()?);
    const V4: &[&str] = &[
        "icmp-net-unreachable",
        "icmp-host-unreachable",
        "icmp-proto-unreachable",
        "icmp-port-unreachable",
        "echo-reply",
        "icmp-net-prohibited",
        "icmp-host-prohibited",
        "tcp-reset",
        "icmp-admin-prohibited",
    ];
    const V6: &[&str] = &[
        "icmp6-no-route",
        "icmp6-adm-prohibited",
        "no-route",
        "icmp6-addr-unreachable",
        "icmp6-port-unreachable",
        "echo-reply",
        "tcp-reset",
        "icmp6-policy-fail",
        "icmp6-reject-route",
    ];
    (if v6 { V6 } else { V4 }).get(with as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xt_infos_decode() {
        // set rev 4: index 3, dim 1, src; no counters.
        let mut set = vec![0u8; 48];
        set[..2].copy_from_slice(&3u16.to_ne_bytes());
        set[2] = 1;
        set[3] = 2;
        assert_eq!(
            xt_match("set", 4, &set),
            Some(XtMatch::Set {
                index: 3,
                dim: 1,
                src: true,
                invert: false,
                counters: false
            })
        );
        set[3] = 3;
        set[16] = 1;
        assert!(matches!(
            xt_match("set", 4, &set),
            Some(XtMatch::Set {
                invert: true,
                counters: true,
                ..
            })
        ));
        // multiport v1: --dports 22,8000:8080 !
        let mut mp = vec![0u8; 48];
        mp[0] = 1;
        mp[1] = 3;
        for (i, p) in [22u16, 8000, 8080].iter().enumerate() {
            mp[2 + 2 * i..4 + 2 * i].copy_from_slice(&p.to_ne_bytes());
        }
        mp[33] = 1;
        mp[47] = 1;
        assert_eq!(
            xt_match("multiport", 1, &mp),
            Some(XtMatch::Multiport {
                dir: 1,
                ports: vec![(22, 22), (8000, 8080)],
                invert: true
            })
        );
        assert_eq!(reject_with(&7u32.to_ne_bytes(), false), Some("tcp-reset"));
        assert_eq!(
            reject_with(&3u32.to_ne_bytes(), false),
            Some("icmp-port-unreachable")
        );
        assert_eq!(xt_match("conntrack", 3, &[0; 64]), None);
    }
}
