//! Reading IPv4/IPv6 + TCP headers of an skb at its network header.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{AF_INET, AF_INET6, EgressOffsets, SKB_BLOCK};

const IPPROTO_TCP: u8 = 6;

#[inline(always)]
pub fn read<T>(addr: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| 0)
}

pub struct Tcp {
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[inline(always)]
fn at<const N: usize>(buf: &[u8; SKB_BLOCK as usize], off: u32) -> Option<[u8; N]> {
    let off = off as usize;
    let mut out = [0u8; N];
    out.copy_from_slice(buf.get(off..off + N)?);
    Some(out)
}

/// (protocol, network header offset, head) of `skb`: one read where the
/// three sit together (every packet goes through here: reads cost).
#[inline(always)]
fn skb_fields(skb: u64, o: &EgressOffsets) -> Result<(u16, u16, u64), i32> {
    if o.skb_block == 1 {
        let b: [u8; SKB_BLOCK as usize] = read(skb + u64::from(o.skb_protocol))?;
        let proto = at::<2>(&b, 0).ok_or(0)?;
        let nh = at::<2>(&b, o.skb_network_header - o.skb_protocol).ok_or(0)?;
        let head = at::<8>(&b, o.skb_head - o.skb_protocol).ok_or(0)?;
        return Ok((
            u16::from_be_bytes(proto),
            u16::from_ne_bytes(nh),
            u64::from_ne_bytes(head),
        ));
    }
    let proto: u16 = read(skb + u64::from(o.skb_protocol))?;
    let nh: u16 = read(skb + u64::from(o.skb_network_header))?;
    let head: u64 = read(skb + u64::from(o.skb_head))?;
    Ok((u16::from_be(proto), nh, head))
}

/// The TCP segment in `skb`, if it holds one at its network header.
#[inline(always)]
pub fn tcp(skb: u64, o: &EgressOffsets) -> Result<Option<Tcp>, i32> {
    let (proto, nh, head) = skb_fields(skb, o)?;
    // The network header is unset (0xffff) on packets that have none.
    if head == 0 || nh == 0xffff || (proto != ETH_P_IP && proto != ETH_P_IPV6) {
        return Ok(None);
    }
    let ip = head + u64::from(nh);
    let mut p = Tcp {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        flags: 0,
    };
    // IP and TCP headers in one read when there are no IP options.
    let t: [u8; 14] = if proto == ETH_P_IP {
        let h: [u8; 34] = read(ip)?;
        if h[0] >> 4 != 4 || h[9] != IPPROTO_TCP {
            return Ok(None);
        }
        p.family = AF_INET;
        p.saddr[..4].copy_from_slice(&h[12..16]);
        p.daddr[..4].copy_from_slice(&h[16..20]);
        let ihl = u64::from(h[0] & 0x0f) * 4;
        if ihl == 20 {
            let mut t = [0u8; 14];
            t.copy_from_slice(&h[20..34]);
            t
        } else {
            read(ip + ihl)?
        }
    } else {
        let h: [u8; 54] = read(ip)?;
        // Segments worth tracing carry no extension headers.
        if h[0] >> 4 != 6 || h[6] != IPPROTO_TCP {
            return Ok(None);
        }
        p.family = AF_INET6;
        p.saddr.copy_from_slice(&h[8..24]);
        p.daddr.copy_from_slice(&h[24..40]);
        let mut t = [0u8; 14];
        t.copy_from_slice(&h[40..54]);
        t
    };
    p.sport = u16::from_be_bytes([t[0], t[1]]);
    p.dport = u16::from_be_bytes([t[2], t[3]]);
    p.flags = t[13];
    Ok(Some(p))
}
