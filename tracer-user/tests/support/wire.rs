//! The wire as the oracle: every TCP segment with RST set that leaves any
//! device of a test's namespace, captured by an AF_PACKET socket of the
//! test process and compared with what rsttrace reported for that
//! namespace. A fact rsttrace prints about a RST (its family, ends, count)
//! is right only if the packet that left says the same.
//!
//! ICMP (ICMPv6) destination unreachables that quote a TCP segment are
//! kept too (`WireUnreach`): a REJECT that refuses without a RST.
//!
//! Outgoing packets only (`PACKET_OUTGOING`): on loopback each packet is
//! seen once leaving and once arriving, and only the first is a RST sent.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use serde_json::Value;

use super::{Netns, TraceOutput};

/// One RST as it left a device: its source is this host's end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireRst {
    pub family: &'static str,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
}

/// One ICMP destination unreachable as it left a device, by the TCP
/// segment it quotes: that segment's source is the remote end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireUnreach {
    pub family: &'static str,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub local_ip: IpAddr,
    pub local_port: u16,
    /// The ICMP (ICMPv6) code: 3 (4) port unreachable, ...
    pub code: u8,
}

enum Captured {
    Rst(WireRst),
    Unreach(WireUnreach),
}

/// A capture running on a thread of its own until `stop`.
pub struct Wire {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<WireRst>, Vec<WireUnreach>)>,
}

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PACKET_OUTGOING: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_RST: u8 = 0x04;

impl Wire {
    /// Starts capturing in `ns`; every RST sent after this returns is seen.
    pub fn capture(ns: &Netns) -> Self {
        // A socket stays in the namespace it was made in: made on a thread
        // inside it, read from anywhere.
        let fd = ns.run(packet_socket);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || read_rsts(&fd, &flag));
        Wire { stop, thread }
    }

    /// Every RST captured since `capture`. Panics if the socket dropped
    /// any packet: the oracle must have seen everything.
    pub fn stop(self) -> Vec<WireRst> {
        self.stop_all().0
    }

    /// Every RST and every destination unreachable quoting TCP.
    pub fn stop_all(self) -> (Vec<WireRst>, Vec<WireUnreach>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

fn packet_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let rcvbuf: libc::c_int = 16 << 20;
    setsockopt(&fd, libc::SO_RCVBUFFORCE, &rcvbuf);
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    setsockopt(&fd, libc::SO_RCVTIMEO, &timeout);
    fd
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) {
    // SAFETY: `value` is a valid T for the option's size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads until `stop` is set and the socket is empty.
fn read_rsts(fd: &OwnedFd, stop: &AtomicBool) -> (Vec<WireRst>, Vec<WireUnreach>) {
    let (mut out, mut unreach) = (vec![], vec![]);
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: zeroed sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buffers valid for their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    // Every packet sent before `stop` was set is queued by
                    // then (the tap runs as the packet is sent).
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => panic!("reading the capture: {e}"),
            }
        }
        if addr.sll_pkttype != PACKET_OUTGOING {
            continue;
        }
        match parse(u16::from_be(addr.sll_protocol), &buf[..n as usize]) {
            Some(Captured::Rst(rst)) => out.push(rst),
            Some(Captured::Unreach(u)) => unreach.push(u),
            None => {}
        }
    }
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: valid buffer for PACKET_STATISTICS.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "PACKET_STATISTICS");
    assert_eq!(
        stats.tp_drops, 0,
        "the capture dropped packets: the oracle is incomplete"
    );
    (out, unreach)
}

/// A TCP segment with RST set, or an ICMP (ICMPv6) destination
/// unreachable quoting a TCP segment, from its network header on.
fn parse(proto: u16, p: &[u8]) -> Option<Captured> {
    let (family, src, dst, l4, next): (_, IpAddr, IpAddr, &[u8], u8) = match proto {
        ETH_P_IP if p.len() >= 20 && p[0] >> 4 == 4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            // A later fragment has no transport header.
            let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            if frag_off != 0 || p.len() < ihl {
                return None;
            }
            let a = |o: usize| IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
            ("ipv4", a(12), a(16), &p[ihl..], p[9])
        }
        ETH_P_IPV6 if p.len() >= 40 && p[0] >> 4 == 6 => {
            // The tests send no extension headers.
            let a = |o: usize| {
                let b: [u8; 16] = p[o..o + 16].try_into().unwrap();
                IpAddr::V6(Ipv6Addr::from(b))
            };
            ("ipv6", a(8), a(24), &p[40..], p[6])
        }
        _ => return None,
    };
    match (family, next) {
        (_, IPPROTO_TCP) => {}
        ("ipv4", IPPROTO_ICMP) if l4.first() == Some(&3) => {
            return unreach(ETH_P_IP, l4).map(Captured::Unreach);
        }
        ("ipv6", IPPROTO_ICMPV6) if l4.first() == Some(&1) => {
            return unreach(ETH_P_IPV6, l4).map(Captured::Unreach);
        }
        _ => return None,
    }
    if l4.len() < 20 || l4[13] & TCP_RST == 0 {
        return None;
    }
    Some(Captured::Rst(WireRst {
        family,
        local_ip: src,
        local_port: u16::from_be_bytes([l4[0], l4[1]]),
        remote_ip: dst,
        remote_port: u16::from_be_bytes([l4[2], l4[3]]),
    }))
}

/// The destination unreachable `icmp` (its ICMP header on), if the packet
/// it quotes is a TCP segment.
fn unreach(proto: u16, icmp: &[u8]) -> Option<WireUnreach> {
    let quoted = icmp.get(8..)?;
    // The quoted segment: at least its ports.
    let ports = |l4: &[u8]| -> Option<(u16, u16)> {
        let l4 = l4.get(..4)?;
        Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ))
    };
    let (family, src, dst, (sport, dport)) = match proto {
        ETH_P_IP if quoted.len() >= 20 && quoted[9] == IPPROTO_TCP => {
            let ihl = usize::from(quoted[0] & 0x0f) * 4;
            let a = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    quoted[o],
                    quoted[o + 1],
                    quoted[o + 2],
                    quoted[o + 3],
                ))
            };
            ("ipv4", a(12), a(16), ports(quoted.get(ihl..)?)?)
        }
        ETH_P_IPV6 if quoted.len() >= 40 && quoted[6] == IPPROTO_TCP => {
            let a = |o: usize| {
                let b: [u8; 16] = quoted[o..o + 16].try_into().unwrap();
                IpAddr::V6(Ipv6Addr::from(b))
            };
            ("ipv6", a(8), a(24), ports(&quoted[40..])?)
        }
        _ => return None,
    };
    Some(WireUnreach {
        family,
        remote_ip: src,
        remote_port: sport,
        local_ip: dst,
        local_port: dport,
        code: icmp[1],
    })
}

/// The same key read from an `rst` event.
fn event_key(e: &Value) -> WireRst {
    let ip = |k: &str| -> IpAddr {
        e[k].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{k} of {e}"))
    };
    let port = |k: &str| -> u16 {
        e[k].as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{k} of {e}"))
    };
    WireRst {
        family: match e["family"].as_str() {
            Some("ipv4") => "ipv4",
            Some("ipv6") => "ipv6",
            _ => panic!("family of {e}"),
        },
        local_ip: ip("local_ip"),
        local_port: port("local_port"),
        remote_ip: ip("remote_ip"),
        remote_port: port("remote_port"),
    }
}

fn tally<'a>(keys: impl Iterator<Item = &'a WireRst>) -> BTreeMap<&'a WireRst, u64> {
    keys.fold(BTreeMap::new(), |mut m, k| {
        *m.entry(k).or_default() += 1;
        m
    })
}

impl TraceOutput {
    /// The oracle, for a trace scoped to `ns` (`--netns`): every RST that
    /// left a device of `ns` has exactly one event with the same family and
    /// ends; every event was captured, but for `off_wire` RSTs that never
    /// reached a device (dropped on their way out); the summary's total is
    /// both, and `coverage.egress_rsts` is what left.
    pub fn assert_matches_wire(&self, ns: &Netns, wire: &[WireRst], off_wire: u64) {
        let s = &self.summary;
        assert_eq!(s["lost"], 0, "events were lost: {s}");
        let inode = ns.inode();
        for e in &self.rsts {
            assert_eq!(e["netns"], inode, "a trace scoped to {}: {e}", ns.name);
        }
        let left = wire.len() as u64;
        assert_eq!(
            s["total"],
            left + off_wire,
            "summary total vs {left} RSTs on the wire and {off_wire} off it: {s}"
        );
        assert_eq!(
            s["coverage"]["egress_rsts"], left,
            "coverage.egress_rsts vs {left} RSTs on the wire: {s}"
        );
        // --summary-only: the counts above are all there is.
        if !(self.rsts.is_empty() && left + off_wire > 0) {
            self.assert_events_match_wire(ns, wire, off_wire);
        }
    }

    /// The events of namespace `ns` against its wire, in a trace that may
    /// see other namespaces too: each captured RST has exactly one event
    /// with its family and ends, and `off_wire` events have no packet.
    pub fn assert_events_match_wire(&self, ns: &Netns, wire: &[WireRst], off_wire: u64) {
        assert_eq!(self.summary["lost"], 0, "events were lost");
        let inode = ns.inode();
        let keys: Vec<WireRst> = self
            .rsts
            .iter()
            .filter(|e| e["netns"] == inode)
            .map(event_key)
            .collect();
        let events = tally(keys.iter());
        let captured = tally(wire.iter());
        for (rst, n) in &captured {
            let theirs: Vec<&Value> = self
                .rsts
                .iter()
                .filter(|e| e["netns"] == inode && event_key(e) == **rst)
                .collect();
            assert_eq!(
                theirs.len() as u64,
                *n,
                "RSTs on the wire of {} {rst:?}: {n}; events for them: {theirs:?} (all: {:?})",
                ns.name,
                events
            );
        }
        let extra: Vec<_> = events
            .iter()
            .filter(|(k, n)| captured.get(*k).copied().unwrap_or(0) < **n)
            .collect();
        let extra_n: u64 = extra
            .iter()
            .map(|(k, n)| **n - captured.get(*k).copied().unwrap_or(0))
            .sum();
        assert_eq!(
            extra_n, off_wire,
            "events in {} for RSTs that did not leave a device: {extra:?}; wire: {captured:?}",
            ns.name
        );
    }
}
