//! Which rule answered a packet: the packet's known facts run through
//! the base chains of its hook in priority order, following jump and
//! goto, the way nf_tables evaluates them. A fact rsttrace does not know
//! (conntrack state, mark, interface) neither matches nor fails: the rule
//! stays a candidate and says which fact was missing.

use std::net::IpAddr;

use crate::attribution::nftmon::Verdict;

use super::{
    expr::{self, Data, Expr, XtMatch},
    snapshot::{Chain, Element, Rule, SET_MAP, Set, Snapshot},
};

/// What rsttrace knows of the packet a rule answered (the peer's segment).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Packet {
    pub v6: bool,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// IPPROTO_TCP, ...
    pub l4proto: u8,
}

impl Packet {
    pub fn nfproto(&self) -> u8 {
        if self.v6 { 10 } else { 2 }
    }

    /// The network header with the known bytes marked.
    fn network(&self) -> (Vec<u8>, Vec<bool>) {
        let mut b = vec![0u8; 40];
        let mut k = vec![false; 40];
        let mut put = |at: usize, v: &[u8]| {
            b[at..at + v.len()].copy_from_slice(v);
            k[at..at + v.len()].iter_mut().for_each(|x| *x = true);
        };
        if self.v6 {
            put(6, &[self.l4proto]);
        } else {
            put(9, &[self.l4proto]);
        }
        for (a, at4, at6) in [(self.src, 12, 8), (self.dst, 16, 24)] {
            match a {
                Some(IpAddr::V4(a)) if !self.v6 => put(at4, &a.octets()),
                Some(IpAddr::V6(a)) if self.v6 => put(at6, &a.octets()),
                _ => {}
            }
        }
        (b, k)
    }

    fn transport(&self) -> (Vec<u8>, Vec<bool>) {
        let mut b = vec![0u8; 20];
        let mut k = vec![false; 20];
        if let Some(p) = self.sport {
            b[0..2].copy_from_slice(&p.to_be_bytes());
            k[0..2].fill(true);
        }
        if let Some(p) = self.dport {
            b[2..4].copy_from_slice(&p.to_be_bytes());
            k[2..4].fill(true);
        }
        (b, k)
    }
}

/// The set element a rule's lookup matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetHit {
    pub set: Set,
    pub element: Element,
}

/// A rule (or a base chain's policy: `handle` None) that gives the
/// packet a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub base_chain: String,
    pub handle: Option<u64>,
    pub rule: Option<Rule>,
    pub verdict: Verdict,
    pub set: Option<SetHit>,
    /// Facts the match depends on that rsttrace does not know: empty when
    /// the rule certainly matched.
    pub unknown: Vec<String>,
}

/// The kernel's answer to "is this key in this set?".
pub type Lookup<'a> = dyn FnMut(&Set, &[u8]) -> Result<Option<Element>, i32> + 'a;

/// The kernel's answer to "is this address in the ipset of this index?"
/// (`-m set --match-set`): the member's entry as a set hit (its `table`
/// empty), None when not a member, Err when it cannot tell.
pub type IpsetTest<'a> = dyn FnMut(u16, IpAddr) -> Result<Option<SetHit>, i32> + 'a;

/// A rule's verdict, when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleVerdict {
    Block(Verdict),
    Accept,
    Jump(String),
    Goto(String),
    Return,
}

enum Stop {
    Final,
    Accept,
    Blocked,
}

struct Eval<'s, 'l> {
    snap: &'s Snapshot,
    pkt: &'s Packet,
    want: Verdict,
    lookup: &'s mut Lookup<'l>,
    ipset: &'s mut IpsetTest<'l>,
    hits: Vec<Hit>,
}

/// Hooks by name, as NF_INET_*.
pub fn hook_number(name: &str) -> Option<u32> {
    Some(match name {
        "prerouting" => 0,
        "input" => 1,
        "forward" => 2,
        "output" => 3,
        "postrouting" => 4,
        _ => return None,
    })
}

/// The rules that may have given `pkt` the verdict `want` at `hook`:
/// candidates (an unknown fact) in evaluation order, ending with the rule
/// that certainly did, if one did. (Without ipset: `evaluate_with`.)
#[cfg(test)]
pub fn evaluate(
    snap: &Snapshot,
    pkt: &Packet,
    hook: u32,
    want: Verdict,
    lookup: &mut Lookup<'_>,
) -> Vec<Hit> {
    evaluate_with(snap, pkt, hook, want, lookup, &mut |_, _| Err(libc::ENOSYS))
}

/// `evaluate`, with ipset `--match-set` matches asked of the kernel too.
pub fn evaluate_with<'l>(
    snap: &Snapshot,
    pkt: &Packet,
    hook: u32,
    want: Verdict,
    lookup: &mut Lookup<'l>,
    ipset: &mut IpsetTest<'l>,
) -> Vec<Hit> {
    let mut ev = Eval {
        snap,
        pkt,
        want,
        lookup,
        ipset,
        hits: vec![],
    };
    for base in snap.base_chains(hook, pkt.nfproto()) {
        match ev.run(base, base, true, 0) {
            Some(Stop::Final | Stop::Blocked) => break,
            Some(Stop::Accept) => continue,
            None => {}
        }
        // Fell off the end: the base chain's policy.
        if base
            .hook
            .is_some_and(|(_, _, policy)| policy == expr::NF_DROP as u32)
        {
            if want == Verdict::Drop {
                ev.hits.push(Hit {
                    family: base.family,
                    table: base.table.clone(),
                    chain: base.name.clone(),
                    base_chain: base.name.clone(),
                    handle: None,
                    rule: None,
                    verdict: Verdict::Drop,
                    set: None,
                    unknown: vec![],
                });
            }
            break;
        }
    }
    ev.hits
}

impl Eval<'_, '_> {
    fn run(&mut self, chain: &Chain, base: &Chain, sure: bool, depth: u32) -> Option<Stop> {
        // The kernel's jump stack is this deep.
        if depth > 16 {
            return None;
        }
        let snap = self.snap;
        for rule in snap.rules_of(chain) {
            let Some((verdict, set, unknown)) = self.rule(rule) else {
                continue;
            };
            let certain = sure && unknown.is_empty();
            match verdict {
                None => {}
                Some(RuleVerdict::Block(v)) if v == self.want => {
                    self.hits.push(Hit {
                        family: chain.family,
                        table: chain.table.clone(),
                        chain: chain.name.clone(),
                        base_chain: base.name.clone(),
                        handle: Some(rule.handle),
                        rule: Some(rule.clone()),
                        verdict: v,
                        set,
                        unknown,
                    });
                    if certain {
                        return Some(Stop::Final);
                    }
                }
                Some(RuleVerdict::Block(_)) if certain => return Some(Stop::Blocked),
                Some(RuleVerdict::Accept) if certain => return Some(Stop::Accept),
                Some(RuleVerdict::Return) if certain => return None,
                Some(RuleVerdict::Jump(to) | RuleVerdict::Goto(to)) if !certain => {
                    // Followed for candidates only.
                    if let Some(c) = snap.chain(chain.family, &chain.table, &to) {
                        self.run(c, base, false, depth + 1);
                    }
                }
                Some(RuleVerdict::Jump(to)) => {
                    if let Some(c) = snap.chain(chain.family, &chain.table, &to)
                        && let Some(stop) = self.run(c, base, true, depth + 1)
                    {
                        return Some(stop);
                    }
                }
                Some(RuleVerdict::Goto(to)) => {
                    return snap
                        .chain(chain.family, &chain.table, &to)
                        .and_then(|c| self.run(c, base, true, depth + 1));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// None: the rule does not match. Else its verdict, the set element
    /// it matched through, and the facts it needed but rsttrace lacks.
    #[allow(clippy::type_complexity)]
    fn rule(&mut self, rule: &Rule) -> Option<(Option<RuleVerdict>, Option<SetHit>, Vec<String>)> {
        let mut regs = [0u8; 4 * 24];
        let mut known = [false; 4 * 24];
        let mut unknown: Vec<String> = vec![];
        let mut verdict = None;
        let mut set_hit = None;
        // What each unknown register was loaded from, to name the fact.
        let mut facts: Vec<(usize, &'static str)> = vec![];
        let note = |unknown: &mut Vec<String>, what: String| {
            if !unknown.contains(&what) {
                unknown.push(what);
            }
        };
        for e in &rule.exprs {
            match e {
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    let (b, k) = match base {
                        1 => self.pkt.network(),
                        2 => self.pkt.transport(),
                        _ => (vec![], vec![]),
                    };
                    let at = reg_at(*dreg)?;
                    facts.push((at, payload_fact(*base, *offset)));
                    for i in 0..*len as usize {
                        let src = *offset as usize + i;
                        let dst = at + i;
                        if dst >= regs.len() {
                            break;
                        }
                        regs[dst] = b.get(src).copied().unwrap_or(0);
                        known[dst] = k.get(src).copied().unwrap_or(false);
                    }
                }
                Expr::Meta { key, dreg } => {
                    let at = reg_at(*dreg)?;
                    let v: Option<Vec<u8>> = match key {
                        15 => Some(vec![self.pkt.nfproto()]),
                        16 => Some(vec![self.pkt.l4proto]),
                        1 => Some(if !self.pkt.v6 {
                            0x0800u16.to_be_bytes().to_vec()
                        } else {
                            0x86ddu16.to_be_bytes().to_vec()
                        }),
                        _ => None,
                    };
                    let end = (at + 16).min(regs.len());
                    known[at..end].fill(false);
                    match &v {
                        Some(v) => {
                            regs[at..at + v.len()].copy_from_slice(v);
                            known[at..at + v.len()].fill(true);
                        }
                        None => {
                            regs[at..end].fill(0);
                        }
                    }
                    if v.is_none() {
                        facts.push((at, meta_name(*key)));
                    }
                }
                Expr::Ct { key, dreg } => {
                    let at = reg_at(*dreg)?;
                    let end = (at + 16).min(regs.len());
                    known[at..end].fill(false);
                    facts.push((at, ct_name(*key)));
                }
                Expr::Bitwise {
                    sreg,
                    dreg,
                    mask,
                    xor,
                } => {
                    let (s, d) = (reg_at(*sreg)?, reg_at(*dreg)?);
                    if s != d
                        && let Some(f) = facts.iter().rev().find(|(a, _)| *a == s).map(|(_, n)| *n)
                    {
                        facts.push((d, f));
                    }
                    for i in 0..mask.len() {
                        if s + i >= regs.len() || d + i >= regs.len() {
                            break;
                        }
                        let v = (regs[s + i] & mask[i]) ^ xor.get(i).copied().unwrap_or(0);
                        let k = known[s + i] || mask[i] == 0;
                        regs[d + i] = v;
                        known[d + i] = k;
                    }
                }
                Expr::Cmp { sreg, op, data } => {
                    let s = reg_at(*sreg)?;
                    let Some(v) = read(&regs, &known, s, data.len()) else {
                        note(&mut unknown, fact_of(&facts, s));
                        continue;
                    };
                    let ord = v.cmp(data.as_slice());
                    use std::cmp::Ordering::*;
                    let ok = match op {
                        0 => ord == Equal,
                        1 => ord != Equal,
                        2 => ord == Less,
                        3 => ord != Greater,
                        4 => ord == Greater,
                        5 => ord != Less,
                        _ => {
                            note(&mut unknown, "cmp".into());
                            continue;
                        }
                    };
                    if !ok {
                        return None;
                    }
                }
                Expr::Range { sreg, op, from, to } => {
                    let s = reg_at(*sreg)?;
                    let Some(v) = read(&regs, &known, s, from.len()) else {
                        note(&mut unknown, fact_of(&facts, s));
                        continue;
                    };
                    let inside = v >= from.as_slice() && v <= to.as_slice();
                    if inside != (*op == 0) {
                        return None;
                    }
                }
                Expr::Lookup {
                    set,
                    sreg,
                    dreg,
                    invert,
                } => {
                    let Some(set) = self.snap.set(rule.family, &rule.table, set) else {
                        note(&mut unknown, format!("set {set}"));
                        continue;
                    };
                    let s = reg_at(*sreg)?;
                    let Some(key) = read(&regs, &known, s, set.key_len as usize) else {
                        note(&mut unknown, fact_of(&facts, s));
                        continue;
                    };
                    let key = key.to_vec();
                    match (self.lookup)(set, &key) {
                        Ok(found) => {
                            if found.is_some() == *invert {
                                return None;
                            }
                            if let Some(el) = found {
                                if *dreg == Some(0) && set.flags & SET_MAP != 0 {
                                    verdict =
                                        el.verdict.clone().and_then(|(c, ch)| to_verdict(c, ch));
                                }
                                set_hit = Some(SetHit {
                                    set: set.clone(),
                                    element: el,
                                });
                            }
                            if let Some(d) = dreg.filter(|d| *d != 0).and_then(reg_at) {
                                let end = (d + 16).min(regs.len());
                                known[d..end].fill(false);
                            }
                        }
                        Err(_) => note(&mut unknown, format!("membership of set {}", set.name)),
                    }
                }
                Expr::Immediate { dreg, data } => match data {
                    Data::Verdict(code, chain) if *dreg == 0 => {
                        verdict = to_verdict(*code, chain.clone());
                    }
                    Data::Value(v) => {
                        let at = reg_at(*dreg)?;
                        for (i, b) in v.iter().enumerate() {
                            if at + i < regs.len() {
                                regs[at + i] = *b;
                                known[at + i] = true;
                            }
                        }
                    }
                    Data::Verdict(..) => {}
                },
                Expr::Reject { .. } => verdict = Some(RuleVerdict::Block(Verdict::Reject)),
                Expr::Xt {
                    target: true, name, ..
                } if name == "REJECT" => {
                    verdict = Some(RuleVerdict::Block(Verdict::Reject));
                }
                Expr::Xt {
                    target: false,
                    name,
                    rev,
                    info,
                } => match expr::xt_match(name, *rev, info).map(|m| self.xt(&m)) {
                    Some(XtResult::Match(hit)) => {
                        if let Some(hit) = hit {
                            set_hit = Some(*hit);
                        }
                    }
                    Some(XtResult::NoMatch) => return None,
                    Some(XtResult::Unknown(f)) => note(&mut unknown, f),
                    None => note(&mut unknown, format!("xt match {name}")),
                },
                Expr::Xt { name, .. } => note(&mut unknown, format!("xt target {name}")),
                Expr::Counter => {}
                Expr::Other(name)
                    if matches!(
                        name.as_str(),
                        "log" | "dynset" | "notrack" | "objref" | "last"
                    ) => {}
                Expr::Other(name) => {
                    note(&mut unknown, name.clone());
                    known.fill(false);
                }
            }
        }
        Some((verdict, set_hit, unknown))
    }
}

enum XtResult {
    Match(Option<Box<SetHit>>),
    NoMatch,
    Unknown(String),
}

impl Eval<'_, '_> {
    /// An xt match, as the kernel's extension evaluates it.
    fn xt(&mut self, m: &XtMatch) -> XtResult {
        let in_ranges = |p: u16, r: &[(u16, u16)]| r.iter().any(|(a, b)| (*a..=*b).contains(&p));
        let unknown = |what: &str| XtResult::Unknown(what.into());
        let matched = |yes: bool| {
            if yes {
                XtResult::Match(None)
            } else {
                XtResult::NoMatch
            }
        };
        match m {
            XtMatch::Set {
                index,
                dim,
                src,
                invert,
                counters,
            } => {
                if *dim != 1 || *counters {
                    return unknown("xt match set");
                }
                let (addr, what) = if *src {
                    (self.pkt.src, "source address")
                } else {
                    (self.pkt.dst, "destination address")
                };
                let Some(addr) = addr else {
                    return unknown(what);
                };
                match (self.ipset)(*index, addr) {
                    Ok(hit) if hit.is_some() != *invert => XtResult::Match(hit.map(Box::new)),
                    Ok(_) => XtResult::NoMatch,
                    Err(_) => XtResult::Unknown(format!("membership of ipset #{index}")),
                }
            }
            XtMatch::Multiport { dir, ports, invert } => {
                let (s, d) = (self.pkt.sport, self.pkt.dport);
                let hit = match dir {
                    0 => match s {
                        Some(p) => in_ranges(p, ports),
                        None => return unknown("source port"),
                    },
                    1 => match d {
                        Some(p) => in_ranges(p, ports),
                        None => return unknown("destination port"),
                    },
                    _ => {
                        let any = [s, d].iter().flatten().any(|p| in_ranges(*p, ports));
                        if !any && (s.is_none() || d.is_none()) {
                            return unknown(if s.is_none() {
                                "source port"
                            } else {
                                "destination port"
                            });
                        }
                        any
                    }
                };
                matched(hit != *invert)
            }
            XtMatch::Ports {
                sports,
                dports,
                inv_src,
                inv_dst,
                other,
            } => {
                if *dports != (0, u16::MAX) || *inv_dst {
                    let Some(d) = self.pkt.dport else {
                        return unknown("destination port");
                    };
                    if in_ranges(d, &[*dports]) == *inv_dst {
                        return XtResult::NoMatch;
                    }
                }
                if *sports != (0, u16::MAX) || *inv_src {
                    let Some(p) = self.pkt.sport else {
                        return unknown("source port");
                    };
                    if in_ranges(p, &[*sports]) == *inv_src {
                        return XtResult::NoMatch;
                    }
                }
                if *other {
                    return unknown("tcp flags");
                }
                XtResult::Match(None)
            }
        }
    }
}

fn payload_fact(base: u32, offset: u32) -> &'static str {
    match (base, offset) {
        (1, _) => "network header",
        (2, 0) => "source port",
        (2, 2) => "destination port",
        (2, _) => "transport header",
        _ => "link-layer header",
    }
}

fn fact_of(facts: &[(usize, &'static str)], at: usize) -> String {
    facts
        .iter()
        .rev()
        .find(|(a, _)| *a == at)
        .map_or("a header field", |(_, n)| *n)
        .to_string()
}

fn to_verdict(code: i32, chain: Option<String>) -> Option<RuleVerdict> {
    Some(match code {
        expr::NF_DROP => RuleVerdict::Block(Verdict::Drop),
        expr::NF_ACCEPT => RuleVerdict::Accept,
        expr::NFT_JUMP => RuleVerdict::Jump(chain?),
        expr::NFT_GOTO => RuleVerdict::Goto(chain?),
        expr::NFT_RETURN => RuleVerdict::Return,
        _ => return None,
    })
}

/// Byte offset of a register: NFT_REG_1..4 are 16 bytes each,
/// NFT_REG32_00..15 4 bytes each, over the same storage.
fn reg_at(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 16),
        8..=23 => Some((reg as usize - 8) * 4),
        _ => None,
    }
}

fn read<'a>(regs: &'a [u8], known: &[bool], at: usize, len: usize) -> Option<&'a [u8]> {
    let v = regs.get(at..at + len)?;
    known[at..at + len].iter().all(|k| *k).then_some(v)
}

pub fn meta_name(key: u32) -> &'static str {
    match key {
        0 => "meta length",
        1 => "meta protocol",
        2 => "meta priority",
        3 => "meta mark",
        4 => "meta iif",
        5 => "meta oif",
        6 => "meta iifname",
        7 => "meta oifname",
        8 => "meta iiftype",
        9 => "meta oiftype",
        10 => "meta skuid",
        11 => "meta skgid",
        15 => "meta nfproto",
        16 => "meta l4proto",
        _ => "meta",
    }
}

pub fn ct_name(key: u32) -> &'static str {
    match key {
        0 => "ct state",
        1 => "ct direction",
        2 => "ct status",
        3 => "ct mark",
        _ => "ct",
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::attribution::nft::{
        expr::Expr::*,
        snapshot::{Element, Rule, SET_INTERVAL},
    };

    pub fn packet(src: &str, dport: u16) -> Packet {
        let src: IpAddr = src.parse().unwrap();
        Packet {
            v6: src.is_ipv6(),
            src: Some(src),
            dst: None,
            sport: Some(40000),
            dport: Some(dport),
            l4proto: 6,
        }
    }

    /// Table ip t: base chain `in` at input holding `rules` (and any
    /// rules of chain `c`), chain `sub` for jumps, set `s`.
    pub fn one_chain(rules: Vec<Rule>) -> Snapshot {
        let chain = |name: &str, hook| Chain {
            family: 2,
            table: "t".into(),
            name: name.into(),
            hook,
        };
        Snapshot {
            generation: 1,
            chains: vec![chain("c", Some((1, 0, 1))), chain("sub", None)],
            rules,
            sets: vec![Set {
                family: 2,
                table: "t".into(),
                name: "s".into(),
                flags: SET_INTERVAL,
                key_len: 4,
                timeout_ms: None,
                comment: None,
                elements: vec![],
            }],
        }
    }

    fn rule(chain: &str, handle: u64, exprs: Vec<Expr>) -> Rule {
        Rule {
            family: 2,
            table: "t".into(),
            chain: chain.into(),
            handle,
            exprs,
            comment: None,
        }
    }

    fn saddr() -> Expr {
        Payload {
            base: 1,
            offset: 12,
            len: 4,
            dreg: 1,
        }
    }

    fn verdict(code: i32, chain: Option<&str>) -> Expr {
        Immediate {
            dreg: 0,
            data: Data::Verdict(code, chain.map(String::from)),
        }
    }

    /// `ip saddr @s reject with tcp reset`, as netlink attributes.
    pub fn crowdsec_exprs() -> Vec<u8> {
        use crate::attribution::nft::netlink::{NLA_F_NESTED, nla, nla_str};
        let e = |name: &str, data: Vec<u8>| {
            let mut v = nla_str(1, name);
            v.extend(nla(2 | NLA_F_NESTED, &data));
            nla(1 | NLA_F_NESTED, &v)
        };
        let be = |v: u32| v.to_be_bytes();
        let mut list = vec![];
        let mut p = nla(1, &be(1));
        p.extend(nla(2, &be(1)));
        p.extend(nla(3, &be(12)));
        p.extend(nla(4, &be(4)));
        list.extend(e("payload", p));
        let mut l = nla_str(1, "s");
        l.extend(nla(2, &be(1)));
        list.extend(e("lookup", l));
        let mut r = nla(1, &be(1));
        r.extend(nla(2, &[0]));
        list.extend(e("reject", r));
        list
    }

    #[test]
    fn netlink_expressions_decode_and_print() {
        let exprs = expr::parse_list(&crowdsec_exprs());
        let r = rule("c", 4, exprs);
        assert_eq!(
            crate::attribution::nft::render::rule(None, &r),
            "ip saddr @s reject with tcp reset"
        );
    }

    #[test]
    fn a_set_member_is_rejected_by_the_first_rule_with_that_verdict() {
        let snap = one_chain(vec![
            // ct state established,related accept: unknown, passed over.
            rule(
                "c",
                2,
                vec![
                    Ct { key: 0, dreg: 1 },
                    Cmp {
                        sreg: 1,
                        op: 1,
                        data: vec![0; 4],
                    },
                    verdict(1, None),
                ],
            ),
            rule(
                "c",
                3,
                vec![
                    saddr(),
                    Cmp {
                        sreg: 1,
                        op: 0,
                        data: vec![10, 0, 0, 1],
                    },
                    verdict(0, None),
                ],
            ),
            rule("c", 4, expr::parse_list(&crowdsec_exprs())),
        ]);
        let asked = std::cell::RefCell::new(vec![]);
        let mut lookup = |s: &Set, key: &[u8]| {
            asked.borrow_mut().push((s.name.clone(), key.to_vec()));
            Ok((key == [198, 18, 0, 10]).then(|| Element {
                key: key.to_vec(),
                ..Default::default()
            }))
        };
        let hits = evaluate(
            &snap,
            &packet("198.18.0.10", 22),
            1,
            Verdict::Reject,
            &mut lookup,
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!((hits[0].handle, hits[0].unknown.len()), (Some(4), 0));
        assert_eq!(
            hits[0].set.as_ref().unwrap().element.key,
            vec![198, 18, 0, 10]
        );
        assert_eq!(
            *asked.borrow(),
            vec![("s".to_string(), vec![198, 18, 0, 10])]
        );
        // Not a member: no rule rejects it; 10.0.0.1 is dropped, not rejected.
        assert!(
            evaluate(
                &snap,
                &packet("198.18.0.11", 22),
                1,
                Verdict::Reject,
                &mut lookup
            )
            .is_empty()
        );
        assert!(
            evaluate(
                &snap,
                &packet("10.0.0.1", 22),
                1,
                Verdict::Reject,
                &mut lookup
            )
            .is_empty()
        );
        let d = evaluate(
            &snap,
            &packet("10.0.0.1", 22),
            1,
            Verdict::Drop,
            &mut lookup,
        );
        assert_eq!(d[0].handle, Some(3));
    }

    /// fail2ban's iptables-ipset rule as iptables-nft makes it: `-p tcp
    /// -m multiport --dports 22 -m set --match-set f2b-sshd src -j
    /// REJECT`, the set asked of the kernel by index.
    #[test]
    fn an_ipset_match_is_asked_of_the_kernel_by_index() {
        let xt = |target: bool, name: &str, rev: u32, info: Vec<u8>| Xt {
            target,
            name: name.into(),
            rev,
            info,
        };
        let mut mp = vec![0u8; 48];
        mp[0] = 1;
        mp[1] = 1;
        mp[2..4].copy_from_slice(&22u16.to_ne_bytes());
        let set = |flags: u8| {
            let mut v = vec![0u8; 48];
            v[..2].copy_from_slice(&5u16.to_ne_bytes());
            v[2] = 1;
            v[3] = flags;
            v
        };
        let snap = |flags: u8| {
            one_chain(vec![rule(
                "c",
                7,
                vec![
                    Meta { key: 16, dreg: 1 },
                    Cmp {
                        sreg: 1,
                        op: 0,
                        data: vec![6],
                    },
                    xt(false, "multiport", 1, mp.clone()),
                    xt(false, "set", 4, set(flags)),
                    Counter,
                    xt(true, "REJECT", 0, 7u32.to_ne_bytes().to_vec()),
                ],
            )])
        };
        let asked = std::cell::RefCell::new(vec![]);
        let mut ipset = |index: u16, a: IpAddr| {
            asked.borrow_mut().push((index, a));
            Ok(
                (a == "198.18.0.10".parse::<IpAddr>().unwrap()).then(|| SetHit {
                    set: Set {
                        family: 2,
                        table: String::new(),
                        name: "f2b-sshd".into(),
                        flags: 0,
                        key_len: 4,
                        timeout_ms: None,
                        comment: None,
                        elements: vec![],
                    },
                    element: Element {
                        key: vec![198, 18, 0, 10],
                        ..Default::default()
                    },
                }),
            )
        };
        let mut none = |_: &Set, _: &[u8]| Ok(None);
        let mut run = |flags: u8, src: &str, port: u16| {
            evaluate_with(
                &snap(flags),
                &packet(src, port),
                1,
                Verdict::Reject,
                &mut none,
                &mut ipset,
            )
        };
        // src (IPSET_DIM_ONE_SRC).
        let hits = run(2, "198.18.0.10", 22);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!((hits[0].handle, hits[0].unknown.len()), (Some(7), 0));
        assert_eq!(hits[0].set.as_ref().unwrap().set.name, "f2b-sshd");
        assert!(run(2, "198.18.0.11", 22).is_empty());
        // Another port: the set is not asked.
        let before = asked.borrow().len();
        assert!(run(2, "198.18.0.10", 80).is_empty());
        assert_eq!(asked.borrow().len(), before);
        // Inverted: everyone but the member.
        assert!(run(3, "198.18.0.10", 22).is_empty());
        assert_eq!(run(3, "198.18.0.11", 22).len(), 1);
        // dst, and the answered packet's destination is not known.
        let c = run(0, "198.18.0.10", 22);
        assert_eq!(c[0].unknown, vec!["destination address".to_string()]);
        assert_eq!(asked.borrow()[0], (5, "198.18.0.10".parse().unwrap()));
        let text =
            crate::attribution::nft::render::rule_ipset(None, &snap(2).rules[0], Some("f2b-sshd"));
        assert_eq!(
            text,
            "meta l4proto tcp -m multiport --dports 22 -m set --match-set f2b-sshd src \
             counter -j REJECT --reject-with tcp-reset"
        );
    }

    #[test]
    fn jumps_masks_unknown_facts_and_policies() {
        let snap = one_chain(vec![
            // ip saddr 10.0.0.0/8 jump sub
            rule(
                "c",
                2,
                vec![
                    saddr(),
                    Bitwise {
                        sreg: 1,
                        dreg: 1,
                        mask: vec![255, 0, 0, 0],
                        xor: vec![0; 4],
                    },
                    Cmp {
                        sreg: 1,
                        op: 0,
                        data: vec![10, 0, 0, 0],
                    },
                    verdict(expr::NFT_JUMP, Some("sub")),
                ],
            ),
            // meta mark 42 reject: a candidate.
            rule(
                "sub",
                5,
                vec![
                    Meta { key: 3, dreg: 1 },
                    Cmp {
                        sreg: 1,
                        op: 0,
                        data: vec![42, 0, 0, 0],
                    },
                    Reject { kind: 1, code: 0 },
                ],
            ),
            // tcp dport 22-25 reject
            rule(
                "sub",
                6,
                vec![
                    Payload {
                        base: 2,
                        offset: 2,
                        len: 2,
                        dreg: 1,
                    },
                    Range {
                        sreg: 1,
                        op: 0,
                        from: 22u16.to_be_bytes().to_vec(),
                        to: 25u16.to_be_bytes().to_vec(),
                    },
                    Reject { kind: 1, code: 0 },
                ],
            ),
        ]);
        let mut none = |_: &Set, _: &[u8]| Ok(None);
        let hits = evaluate(
            &snap,
            &packet("10.9.9.9", 23),
            1,
            Verdict::Reject,
            &mut none,
        );
        let got: Vec<_> = hits
            .iter()
            .map(|h| (h.chain.as_str(), h.handle, h.unknown.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("sub", Some(5), vec!["meta mark".to_string()]),
                ("sub", Some(6), vec![])
            ]
        );
        assert!(
            evaluate(
                &snap,
                &packet("11.0.0.1", 23),
                1,
                Verdict::Reject,
                &mut none
            )
            .is_empty()
        );
        // Past the range: only the candidate remains.
        let c = evaluate(
            &snap,
            &packet("10.9.9.9", 80),
            1,
            Verdict::Reject,
            &mut none,
        );
        assert_eq!(c.len(), 1);
        assert!(!c[0].unknown.is_empty());
        // A drop policy answers when no rule does.
        let mut s2 = snap.clone();
        s2.chains[0].hook = Some((1, 0, 0));
        let p = evaluate(&s2, &packet("11.0.0.1", 80), 1, Verdict::Drop, &mut none);
        assert_eq!((p.len(), p[0].handle), (1, None));
    }
}
