//! Reading IPv4/IPv6 + TCP headers of an skb at its network header.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{AF_INET, AF_INET6, EgressOffsets, SKB_BLOCK};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;

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
    /// 1: not a segment sent, but the one an ICMP destination unreachable
    /// quotes (the segment it answers, as that segment was; `flags` 0).
    pub quoted: u8,
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

/// Header bytes read as words: the verifier-friendly way to take fields
/// apart (a byte array read at odd offsets compiles to a load, shift and
/// or per byte, on every packet).
#[repr(C, align(8))]
struct Words<const N: usize>([u32; N]);

#[inline(always)]
fn read_words<const N: usize>(addr: u64) -> Result<Words<N>, i32> {
    read::<Words<N>>(addr)
}

/// Byte `i` (0..4) of a word as it lies in memory.
#[inline(always)]
fn byte(w: u32, i: u32) -> u8 {
    (w.to_le() >> (8 * i)) as u8
}

/// (sport, dport) from the TCP header's first word, in host order.
#[inline(always)]
fn ports(w: u32) -> (u16, u16) {
    let b = w.to_ne_bytes();
    (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    )
}

/// The TCP segment in `skb`, if it holds one at its network header with
/// one of the flags in `need` set (0: any segment). The flags are checked
/// before anything else is taken: most packets stop there. With `UNREACH`,
/// also the TCP segment an ICMP (ICMPv6) destination unreachable quotes,
/// marked `quoted`: other packets pay one more compare of the protocol
/// byte already read.
#[inline(always)]
pub fn tcp<M: Mem, const UNREACH: bool>(
    skb: u64,
    o: &EgressOffsets,
    need: u8,
) -> Result<Option<Tcp>, i32> {
    let (proto, nh, head) = skb_fields::<M>(skb, o)?;
    // The network header is unset (0xffff) on packets that have none.
    if head == 0 || nh == 0xffff {
        return Ok(None);
    }
    let ip = head + u64::from(nh);
    if proto == ETH_P_IP {
        // IP header and TCP's first 16 bytes in one read when there are no
        // IP options (ihl 5).
        let h = read_words::<9>(ip)?.0;
        let ver_ihl = byte(h[0], 0);
        if ver_ihl >> 4 != 4 {
            return Ok(None);
        }
        let proto = byte(h[2], 1);
        if UNREACH && proto == IPPROTO_ICMP {
            // Without options the type is in the words read already.
            if ver_ihl & 0x0f == 5 && byte(h[5], 0) != ICMP_DEST_UNREACH {
                return Ok(None);
            }
            return unreach_v4(ip + u64::from(ver_ihl & 0x0f) * 4);
        }
        if proto != IPPROTO_TCP {
            return Ok(None);
        }
        let (ports_w, flags_w) = if ver_ihl & 0x0f == 5 {
            (h[5], h[8])
        } else {
            let t = read_words::<4>(ip + u64::from(ver_ihl & 0x0f) * 4)?.0;
            (t[0], t[3])
        };
        let flags = byte(flags_w, 1);
        if need != 0 && flags & need == 0 {
            return Ok(None);
        }
        let mut p = Tcp::new(AF_INET, ports_w, flags);
        // SAFETY: `Tcp` is 8-aligned and both arrays start 8-aligned.
        unsafe {
            (p.saddr.as_mut_ptr() as *mut u32).write(h[3]);
            (p.daddr.as_mut_ptr() as *mut u32).write(h[4]);
        }
        Ok(Some(p))
    } else if proto == ETH_P_IPV6 {
        // Segments worth tracing carry no extension headers: TCP at 40.
        let h = read_words::<14>(ip)?.0;
        if byte(h[0], 0) >> 4 != 6 {
            return Ok(None);
        }
        let next = byte(h[1], 2);
        if UNREACH && next == IPPROTO_ICMPV6 {
            // The type is in the words read already.
            if byte(h[10], 0) != ICMPV6_DEST_UNREACH {
                return Ok(None);
            }
            return unreach_v6(ip + 48);
        }
        if next != IPPROTO_TCP {
            return Ok(None);
        }
        let flags = byte(h[13], 1);
        if need != 0 && flags & need == 0 {
            return Ok(None);
        }
        let mut p = Tcp::new(AF_INET6, h[10], flags);
        // SAFETY: as above; four words each.
        unsafe {
            (p.saddr.as_mut_ptr() as *mut [u32; 4]).write([h[2], h[3], h[4], h[5]]);
            (p.daddr.as_mut_ptr() as *mut [u32; 4]).write([h[6], h[7], h[8], h[9]]);
        }
        Ok(Some(p))
    } else {
        Ok(None)
    }
}

/// The TCP segment quoted by the ICMP message at `icmp`, if it is a
/// destination unreachable: ICMP header (8 bytes), then the IP header and
/// at least 8 bytes of the segment (RFC 792), enough for the ports.
#[inline(always)]
fn unreach_v4(icmp: u64) -> Result<Option<Tcp>, i32> {
    let h = read_words::<8>(icmp)?.0;
    let ver_ihl = byte(h[2], 0);
    if byte(h[0], 0) != ICMP_DEST_UNREACH || ver_ihl >> 4 != 4 || byte(h[4], 1) != IPPROTO_TCP {
        return Ok(None);
    }
    let ports_w = if ver_ihl & 0x0f == 5 {
        h[7]
    } else {
        read::<u32>(icmp + 8 + u64::from(ver_ihl & 0x0f) * 4)?
    };
    let mut p = Tcp::new(AF_INET, ports_w, 0);
    p.quoted = 1;
    // SAFETY: as in `tcp`.
    unsafe {
        (p.saddr.as_mut_ptr() as *mut u32).write(h[5]);
        (p.daddr.as_mut_ptr() as *mut u32).write(h[6]);
    }
    Ok(Some(p))
}

/// The TCP segment an ICMPv6 destination unreachable quotes, its IPv6
/// header at `quoted` (after the 8-byte ICMPv6 header).
#[inline(always)]
fn unreach_v6(quoted: u64) -> Result<Option<Tcp>, i32> {
    let h = read_words::<11>(quoted)?.0;
    if byte(h[0], 0) >> 4 != 6 || byte(h[1], 2) != IPPROTO_TCP {
        return Ok(None);
    }
    let mut p = Tcp::new(AF_INET6, h[10], 0);
    p.quoted = 1;
    // SAFETY: as in `tcp`.
    unsafe {
        (p.saddr.as_mut_ptr() as *mut [u32; 4]).write([h[2], h[3], h[4], h[5]]);
        (p.daddr.as_mut_ptr() as *mut [u32; 4]).write([h[6], h[7], h[8], h[9]]);
    }
    Ok(Some(p))
}

impl Tcp {
    /// Ports from the TCP header's first word; addresses zero.
    #[inline(always)]
    fn new(family: u8, ports_w: u32, flags: u8) -> Self {
        let (sport, dport) = ports(ports_w);
        Self {
            saddr: [0; 16],
            daddr: [0; 16],
            family,
            sport,
            dport,
            flags,
            quoted: 0,
        }
    }
}
