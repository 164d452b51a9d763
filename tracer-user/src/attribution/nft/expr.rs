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
    /// An xtables target or match through nft_compat.
    Xt {
        target: bool,
        name: String,
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
        }),
        "counter" => Some(Expr::Counter),
        _ => None,
    };
    parsed.unwrap_or(Expr::Other(name))
}
