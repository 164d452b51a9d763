//! Reading IPv4/IPv6 + TCP headers of an skb at its network header.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{AF_INET, AF_INET6, EgressOffsets};

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

/// The TCP segment in `skb`, if it holds one at its network header.
#[inline(always)]
pub fn tcp(skb: u64, o: &EgressOffsets) -> Result<Option<Tcp>, i32> {
    let head: u64 = read(skb + u64::from(o.skb_head))?;
    let nh: u16 = read(skb + u64::from(o.skb_network_header))?;
    // The network header is unset (0xffff) on packets that have none.
    if head == 0 || nh == 0xffff {
        return Ok(None);
    }
    let ip = head + u64::from(nh);
    let first: u8 = read(ip)?;
    let mut p = Tcp {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        flags: 0,
    };
    let th = match first >> 4 {
        4 => {
            let h: [u8; 20] = read(ip)?;
            if h[9] != IPPROTO_TCP {
                return Ok(None);
            }
            p.family = AF_INET;
            p.saddr[..4].copy_from_slice(&h[12..16]);
            p.daddr[..4].copy_from_slice(&h[16..20]);
            ip + u64::from(h[0] & 0x0f) * 4
        }
        6 => {
            let h: [u8; 40] = read(ip)?;
            // Segments worth tracing carry no extension headers.
            if h[6] != IPPROTO_TCP {
                return Ok(None);
            }
            p.family = AF_INET6;
            p.saddr.copy_from_slice(&h[8..24]);
            p.daddr.copy_from_slice(&h[24..40]);
            ip + 40
        }
        _ => return Ok(None),
    };
    let t: [u8; 14] = read(th)?;
    p.sport = u16::from_be_bytes([t[0], t[1]]);
    p.dport = u16::from_be_bytes([t[2], t[3]]);
    p.flags = t[13];
    Ok(Some(p))
}
