//! ipset over netlink, for the `-m set --match-set` matches of
//! iptables(-nft) rules: a set's name from the index the rule holds
//! (IPSET_CMD_GET_BYINDEX), its type and family (IPSET_CMD_HEADER),
//! membership asked of the kernel (IPSET_CMD_TEST, never guessed from a
//! listing) and the member's entry, timeout left and comment
//! (IPSET_CMD_LIST). On the namespace's nftables socket: one netfilter
//! netlink socket speaks to both subsystems, so this runs in the
//! namespace the rule lives in.

use std::net::IpAddr;

use crate::attribution::nftmon::attrs;

use super::nft::{
    netlink::{NFNL_SUBSYS_IPSET, NLA_F_NESTED, Socket, nla, nla_str},
    snapshot::cstr,
};

const IPSET_CMD_LIST: u16 = 7;
const IPSET_CMD_TEST: u16 = 11;
const IPSET_CMD_HEADER: u16 = 12;
const IPSET_CMD_GET_BYINDEX: u16 = 15;

const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_TYPENAME: u16 = 3;
const ATTR_FAMILY: u16 = 5;
const ATTR_DATA: u16 = 7;
const ATTR_ADT: u16 = 8;
const ATTR_INDEX: u16 = 11;
// Inside IPSET_ATTR_DATA.
const ATTR_IP: u16 = 1;
const ATTR_CIDR: u16 = 3;
const ATTR_TIMEOUT: u16 = 6;
const ATTR_COMMENT: u16 = 26;
// Inside IPSET_ATTR_IP.
const ATTR_IPADDR_IPV4: u16 = 1;
const ATTR_IPADDR_IPV6: u16 = 2;

const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// Protocol 7 (GET_BYINDEX wants exactly it; the others take 6 or 7).
const PROTOCOL: u8 = 7;
/// -IPSET_ERR_EXIST: TEST's "not in the set".
const ERR_EXIST: i32 = 4096 + 7;

/// A set's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub typename: String,
    /// NFPROTO_IPV4 (2), NFPROTO_IPV6 (10).
    pub family: u8,
}

/// The entry holding an address, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub addr: IpAddr,
    /// hash:net entries' prefix.
    pub cidr: Option<u8>,
    /// Seconds left (a set with timeouts lists what remains).
    pub timeout_left_s: Option<u32>,
    pub comment: Option<String>,
    /// The set's default timeout, s, when it has one (ipset keeps no
    /// entry's own timeout, only what is left of it).
    pub set_timeout_s: Option<u32>,
}

impl Entry {
    /// The entry as a key and, for a network, its last address (what
    /// nft set elements print from: a range that is a prefix prints as
    /// a CIDR).
    pub fn range(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let host = if self.addr.is_ipv4() { 32 } else { 128 };
        let c = u32::from(self.cidr.unwrap_or(128)).min(host);
        match self.addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - c).unwrap_or(0);
                let first = u32::from(a) & m;
                let last = first | !m;
                let end = (c < 32).then(|| last.to_be_bytes().to_vec());
                (first.to_be_bytes().to_vec(), end)
            }
            IpAddr::V6(a) => {
                let m = u128::MAX.checked_shl(128 - c).unwrap_or(0);
                let first = u128::from(a) & m;
                let last = first | !m;
                let end = (c < 128).then(|| last.to_be_bytes().to_vec());
                (first.to_be_bytes().to_vec(), end)
            }
        }
    }

    fn holds(&self, a: IpAddr) -> bool {
        let c = u32::from(self.cidr.unwrap_or(128));
        match (self.addr, a) {
            (IpAddr::V4(e), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - c.min(32)).unwrap_or(0);
                u32::from(e) & m == u32::from(a) & m
            }
            (IpAddr::V6(e), IpAddr::V6(a)) => {
                let m = u128::MAX.checked_shl(128 - c.min(128)).unwrap_or(0);
                u128::from(e) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

fn attr<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn base(name: Option<&str>) -> Vec<u8> {
    let mut a = nla(ATTR_PROTOCOL, &[PROTOCOL]);
    if let Some(n) = name {
        a.extend(nla_str(ATTR_SETNAME, n));
    }
    a
}

fn ip_attr(a: IpAddr) -> Vec<u8> {
    let inner = match a {
        IpAddr::V4(v) => nla(ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &v.octets()),
        IpAddr::V6(v) => nla(ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &v.octets()),
    };
    nla(ATTR_IP | NLA_F_NESTED, &inner)
}

fn parse_ip(v: &[u8]) -> Option<IpAddr> {
    let a = attrs(v);
    if let Some(b) = attr(&a, ATTR_IPADDR_IPV4) {
        return Some(IpAddr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?));
    }
    let b = attr(&a, ATTR_IPADDR_IPV6)?;
    Some(IpAddr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?))
}

/// The name of the set with kernel index `index` in the socket's
/// namespace.
pub fn name_of(sock: &mut Socket, index: u16) -> Result<String, i32> {
    let mut a = base(None);
    a.extend(nla(ATTR_INDEX | NLA_F_NET_BYTEORDER, &index.to_be_bytes()));
    let r = sock.request_to(NFNL_SUBSYS_IPSET, IPSET_CMD_GET_BYINDEX, 0, false, &a)?;
    r.iter()
        .find_map(|m| attr(&attrs(&m.attrs), ATTR_SETNAME).map(cstr))
        .ok_or(libc::EPROTO)
}

/// A set's type, family and default timeout.
pub fn header(sock: &mut Socket, name: &str) -> Result<Header, i32> {
    let r = sock.request_to(
        NFNL_SUBSYS_IPSET,
        IPSET_CMD_HEADER,
        0,
        false,
        &base(Some(name)),
    )?;
    let m = r.first().ok_or(libc::EPROTO)?;
    let a = attrs(&m.attrs);
    Ok(Header {
        name: attr(&a, ATTR_SETNAME).map_or_else(|| name.to_string(), cstr),
        typename: attr(&a, ATTR_TYPENAME).map(cstr).unwrap_or_default(),
        family: attr(&a, ATTR_FAMILY)
            .and_then(|f| f.first().copied())
            .unwrap_or(0),
    })
}

/// Whether `addr` is in the set, as the kernel's own test answers it
/// (an expired entry is not).
pub fn test(sock: &mut Socket, name: &str, addr: IpAddr) -> Result<bool, i32> {
    let mut a = base(Some(name));
    a.extend(nla(ATTR_DATA | NLA_F_NESTED, &ip_attr(addr)));
    let family = if addr.is_ipv4() { 2 } else { 10 };
    match sock.request_to(NFNL_SUBSYS_IPSET, IPSET_CMD_TEST, family, false, &a) {
        Ok(_) => Ok(true),
        Err(ERR_EXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The set's entry holding `addr` (the most specific one), for its text,
/// timeout and comment: read from a listing of the set.
pub fn entry(sock: &mut Socket, name: &str, addr: IpAddr) -> Result<Option<Entry>, i32> {
    let r = sock.request_to(
        NFNL_SUBSYS_IPSET,
        IPSET_CMD_LIST,
        0,
        true,
        &base(Some(name)),
    )?;
    let mut best: Option<Entry> = None;
    let mut set_timeout = None;
    for m in r {
        let a = attrs(&m.attrs);
        if let Some(t) = attr(&a, ATTR_DATA)
            .map(attrs)
            .and_then(|d| attr(&d, ATTR_TIMEOUT).and_then(be32))
        {
            set_timeout = Some(t);
        }
        let Some(adt) = attr(&a, ATTR_ADT) else {
            continue;
        };
        for (ty, d) in attrs(adt) {
            if ty != ATTR_DATA {
                continue;
            }
            let d = attrs(d);
            let Some(ip) = attr(&d, ATTR_IP).and_then(parse_ip) else {
                continue;
            };
            let e = Entry {
                addr: ip,
                cidr: attr(&d, ATTR_CIDR).and_then(|c| c.first().copied()),
                timeout_left_s: attr(&d, ATTR_TIMEOUT).and_then(be32),
                comment: attr(&d, ATTR_COMMENT).map(cstr),
                set_timeout_s: None,
            };
            if e.holds(addr) && best.as_ref().is_none_or(|b| e.cidr > b.cidr) {
                best = Some(e);
            }
        }
    }
    Ok(best.map(|e| Entry {
        set_timeout_s: set_timeout.filter(|t| *t != 0),
        ..e
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_their_networks_and_print_as_listed() {
        let e = |a: &str, cidr| Entry {
            addr: a.parse().unwrap(),
            cidr,
            timeout_left_s: None,
            comment: None,
            set_timeout_s: None,
        };
        let a = "192.0.2.77".parse().unwrap();
        assert!(e("192.0.2.77", None).holds(a));
        assert!(e("192.0.2.77", Some(32)).holds(a));
        assert!(e("192.0.2.0", Some(24)).holds(a));
        assert!(!e("192.0.3.0", Some(24)).holds(a));
        assert!(e("0.0.0.0", Some(0)).holds(a));
        assert!(!e("2001:db8::1", None).holds(a));
        assert_eq!(
            e("192.0.2.9", Some(24)).range(),
            (vec![192, 0, 2, 0], Some(vec![192, 0, 2, 255]))
        );
        assert_eq!(
            e("192.0.2.77", Some(32)).range(),
            (vec![192, 0, 2, 77], None)
        );
        assert_eq!(e("192.0.2.77", None).range(), (vec![192, 0, 2, 77], None));
        let ip = parse_ip(&ip_attr(a)[4..]);
        assert_eq!(ip, Some(a));
    }
}
