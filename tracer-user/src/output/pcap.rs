//! `--pcap FILE`: each RST as a pcapng packet whose comment carries the
//! cause, so tcpdump and Wireshark users see the answer in their own tools.
//!
//! The packet is rebuilt from what the tracer knows (addresses, ports, the
//! RST flag, time, network namespace): headers only. Sequence and
//! acknowledgment numbers are not captured and are zero; the comment says so.
//! Checksums are valid so dissectors do not flag every packet.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::UNIX_EPOCH,
};

use super::{Sink, human};
use tracer_common::Direction;

use crate::{attribution::decode::Rst, report::summary::Summary};

/// LINKTYPE_RAW: packets start with the IPv4 or IPv6 header.
const LINKTYPE_RAW: u16 = 101;
const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const OPT_COMMENT: u16 = 1;
const OPT_SHB_USERAPPL: u16 = 4;
const OPT_IF_NAME: u16 = 2;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_END: u16 = 0;

pub struct Pcap {
    out: Box<dyn Write>,
}

impl Pcap {
    /// Writes the section and interface headers.
    pub fn new(mut out: Box<dyn Write>) -> io::Result<Self> {
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        // Section length unknown: the file is written as RSTs happen.
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        let appl = format!("rsttrace {}", env!("CARGO_PKG_VERSION"));
        option(&mut shb, OPT_SHB_USERAPPL, appl.as_bytes());
        option(&mut shb, OPT_END, &[]);
        block(&mut out, SHB, &shb)?;

        let mut idb = Vec::new();
        idb.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&0u32.to_le_bytes()); // no snap length limit
        option(&mut idb, OPT_IF_NAME, b"rsttrace");
        // Nanosecond timestamps, as the kernel gives them.
        option(&mut idb, OPT_IF_TSRESOL, &[9]);
        option(&mut idb, OPT_END, &[]);
        block(&mut out, IDB, &idb)?;
        Ok(Self { out })
    }
}

impl Sink for Pcap {
    fn rst(&mut self, rst: &Rst) -> io::Result<()> {
        let packet = packet(rst);
        let ns = rst
            .ts
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut epb = Vec::with_capacity(64 + packet.len() + 256);
        epb.extend_from_slice(&0u32.to_le_bytes()); // interface 0
        epb.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ns as u32).to_le_bytes());
        epb.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        epb.extend_from_slice(&packet);
        pad(&mut epb);
        option(&mut epb, OPT_COMMENT, comment(rst).as_bytes());
        option(&mut epb, OPT_END, &[]);
        block(&mut self.out, EPB, &epb)
    }

    fn tick(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn summary(&mut self, _: &Summary) -> io::Result<()> {
        self.out.flush()
    }
}

/// `rsttrace: <cause> <details>`, the details as in the text output.
pub fn comment(rst: &Rst) -> String {
    let mut c = format!("rsttrace: {}", rst.cause.name());
    let details = human::details(rst);
    if !details.is_empty() {
        c.push(' ');
        c.push_str(&details);
    }
    if let Some(ns) = rst.netns {
        c.push_str(&format!(" netns={ns}"));
    }
    c.push_str(" (seq/ack not captured)");
    c
}

/// Sent RSTs go from the local address to the remote; received ones the
/// other way.
fn packet(rst: &Rst) -> Vec<u8> {
    let (src, dst) = if rst.cause.direction() == Direction::In {
        (rst.remote, rst.local)
    } else {
        (rst.local, rst.remote)
    };
    let tcp = tcp_header(src, dst);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(20 + tcp.len() as u16).to_be_bytes());
            p[6] = 0x40; // don't fragment
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
            let sum = checksum(&[&p]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut tcp = tcp;
            let pseudo = [&s.octets()[..], &d.octets(), &[0, 6, 0, 20]].concat();
            let sum = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(&tcp);
            p
        }
        (s, d) => {
            let (s, d) = (to_v6(s), to_v6(d));
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
            p[6] = 6;
            p[7] = 64;
            p[8..24].copy_from_slice(&s);
            p[24..40].copy_from_slice(&d);
            let mut tcp = tcp;
            let pseudo = [&s[..], &d, &[0, 0, 0, 20, 0, 0, 0, 6]].concat();
            let sum = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(&tcp);
            p
        }
    }
}

fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn tcp_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x04; // RST
    t
}

/// The Internet checksum over the concatenation of `parts` (each even-sized
/// but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

/// Type, total length, body, total length again.
fn block(out: &mut dyn Write, kind: u32, body: &[u8]) -> io::Result<()> {
    let len = (12 + body.len()) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&len.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        // A header that carries its checksum sums to zero.
        let mut h = [
            0x45u8, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 2,
        ];
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&[&h]), 0);
    }

    #[test]
    fn options_and_blocks_are_32_bit_aligned() {
        let mut b = vec![];
        option(&mut b, OPT_COMMENT, b"abcde");
        assert_eq!(b.len(), 4 + 8);
        let mut out = vec![];
        block(&mut out, EPB, &b).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[4..8], &out[out.len() - 4..]);
    }

    #[test]
    fn comments_escape_strings_from_outside() {
        use crate::untrusted::hostile;
        let c = comment(&hostile::rst());
        hostile::assert_clean(c.as_bytes(), &[]);
        assert!(
            c.starts_with(&format!(
                "rsttrace: netfilter-reject reason=- state=- actor=17884/{} ",
                hostile::COMM_TEXT
            )),
            "{c}"
        );
        assert!(
            c.contains(r" table=t\x1b[31m\x0d\x00 chain=c\x7f\x9b\x0a "),
            "{c}"
        );
        // The comment option in the file carries exactly that text.
        let file =
            std::env::temp_dir().join(format!("rsttrace-unit-{}.pcapng", std::process::id()));
        let mut p = Pcap::new(Box::new(std::fs::File::create(&file).unwrap())).unwrap();
        p.rst(&hostile::rst()).unwrap();
        p.tick().unwrap();
        let out = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(out.windows(c.len()).any(|w| w == c.as_bytes()));
    }
}
