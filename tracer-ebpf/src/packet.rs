//! Reading IPv4/IPv6 + TCP headers of an skb at its network header.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{AF_INET, AF_INET6, EgressOffsets, SKB_BLOCK};

const IPPROTO_TCP: u8 = 6;

#[inline(always)]
pub fn read<T>(addr: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| 0)
}

/// How a program reads fields of kernel structures (`sk_buff`, `sock`,
/// `net_device`, `net`). Packet bytes are always probe-read: the verifier
/// types structure pointers, not the buffers they point to.
pub trait Mem {
    /// Loads are plain instructions, no helper call: several fields can be
    /// read apart at no cost.
    const DIRECT: bool;
    fn read<T>(addr: u64) -> Result<T, i32>;
}

/// Through `bpf_probe_read_kernel`: any program type.
pub struct Probe;

impl Mem for Probe {
    const DIRECT: bool = false;
    #[inline(always)]
    fn read<T>(addr: u64) -> Result<T, i32> {
        read(addr)
    }
}

/// Plain loads, for BTF-typed programs (tp_btf): the verifier follows the
/// pointer types from the program's arguments and checks each field
/// against the kernel's BTF (offsets from read-only globals are constants
/// to it); the JIT makes the loads fault-safe. Only for addresses derived
/// from the arguments by structure fields.
pub struct Direct;

impl Mem for Direct {
    const DIRECT: bool = true;
    #[inline(always)]
    fn read<T>(addr: u64) -> Result<T, i32> {
        // SAFETY: see above: the verifier checks every such load.
        Ok(unsafe { core::ptr::read_volatile(addr as *const T) })
    }
}

/// Aligned so that its addresses are zeroed and copied a word at a time.
#[repr(C, align(8))]
pub struct Tcp {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u8,
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
fn skb_fields<M: Mem>(skb: u64, o: &EgressOffsets) -> Result<(u16, u16, u64), i32> {
    if !M::DIRECT && o.skb_block == 1 {
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
    let proto: u16 = M::read(skb + u64::from(o.skb_protocol))?;
    let nh: u16 = M::read(skb + u64::from(o.skb_network_header))?;
    let head: u64 = M::read(skb + u64::from(o.skb_head))?;
    Ok((u16::from_be(proto), nh, head))
}

/// The TCP segment in `skb`, if it holds one at its network header with
/// one of the flags in `need` set (0: any segment). The flags are checked
/// before anything else is taken: most packets stop there.
#[inline(always)]
pub fn tcp<M: Mem>(skb: u64, o: &EgressOffsets, need: u8) -> Result<Option<Tcp>, i32> {
    let (proto, nh, head) = skb_fields::<M>(skb, o)?;
    // The network header is unset (0xffff) on packets that have none.
    if head == 0 || nh == 0xffff {
        return Ok(None);
    }
    let ip = head + u64::from(nh);
    // IP and TCP headers in one read when there are no IP options.
    if proto == ETH_P_IP {
        let h: [u8; 34] = read(ip)?;
        if h[0] >> 4 != 4 || h[9] != IPPROTO_TCP {
            return Ok(None);
        }
        let ihl = u64::from(h[0] & 0x0f) * 4;
        let t: [u8; 14] = if ihl == 20 {
            let mut t = [0u8; 14];
            t.copy_from_slice(&h[20..34]);
            t
        } else {
            read(ip + ihl)?
        };
        if need != 0 && t[13] & need == 0 {
            return Ok(None);
        }
        let mut p = Tcp::new(AF_INET, &t);
        p.saddr[..4].copy_from_slice(&h[12..16]);
        p.daddr[..4].copy_from_slice(&h[16..20]);
        Ok(Some(p))
    } else if proto == ETH_P_IPV6 {
        let h: [u8; 54] = read(ip)?;
        // Segments worth tracing carry no extension headers.
        if h[0] >> 4 != 6 || h[6] != IPPROTO_TCP {
            return Ok(None);
        }
        let mut t = [0u8; 14];
        t.copy_from_slice(&h[40..54]);
        if need != 0 && t[13] & need == 0 {
            return Ok(None);
        }
        let mut p = Tcp::new(AF_INET6, &t);
        p.saddr.copy_from_slice(&h[8..24]);
        p.daddr.copy_from_slice(&h[24..40]);
        Ok(Some(p))
    } else {
        Ok(None)
    }
}

impl Tcp {
    /// Ports and flags from the TCP header `t`; addresses zero.
    #[inline(always)]
    fn new(family: u8, t: &[u8; 14]) -> Self {
        Self {
            saddr: [0; 16],
            daddr: [0; 16],
            family,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
            flags: t[13],
        }
    }
}
