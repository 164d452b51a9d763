//! The network namespace of a RST: from its socket when there is one, else
//! from the device of the segment it answers, else from that segment's
//! route. Offsets come from BTF.

use tracer_common::{ABSENT, NetnsOffsets};

use crate::packet::Mem;

#[unsafe(no_mangle)]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets::UNSET;

/// Inode number of the namespace, 0 when it can't be read.
#[inline(always)]
pub fn of<M: Mem>(skaddr: u64, skbaddr: u64) -> u32 {
    let o = crate::global::get(&NETNS_OFFSETS);
    if o.net_inum == ABSENT {
        return 0;
    }
    match net::<M>(skaddr, skbaddr) {
        0 => 0,
        net => M::read::<u32>(net + u64::from(o.net_inum)).unwrap_or(0),
    }
}

/// Whether `net.ipv4.tcp_abort_on_overflow` is set in the namespace of a
/// received segment (`skbaddr`, read from its device).
#[inline(always)]
pub fn aborts_on_overflow<M: Mem>(skbaddr: u64) -> bool {
    let o = crate::global::get(&NETNS_OFFSETS);
    if o.net_abort_on_overflow == ABSENT {
        return false;
    }
    match net::<M>(0, skbaddr) {
        0 => false,
        net => M::read::<u8>(net + u64::from(o.net_abort_on_overflow)).unwrap_or(0) != 0,
    }
}

/// The `struct net` of a socket, else of a segment's device (or route).
#[inline(always)]
fn net<M: Mem>(skaddr: u64, skbaddr: u64) -> u64 {
    let read_u64 = |addr: u64| M::read::<u64>(addr).unwrap_or(0);
    let o = crate::global::get(&NETNS_OFFSETS);
    if skaddr != 0 && o.sock_net != ABSENT {
        read_u64(skaddr + u64::from(o.sock_net))
    } else if skbaddr != 0 && o.skb_dev != ABSENT && o.dev_net != ABSENT {
        let mut dev = read_u64(skbaddr + u64::from(o.skb_dev));
        // Plain loads can't follow the route (see route_dev); the programs
        // that use them read segments that have a device.
        if dev == 0 && !M::DIRECT {
            dev = route_dev(skbaddr, o);
        }
        if dev == 0 {
            return 0;
        }
        read_u64(dev + u64::from(o.dev_net))
    } else {
        0
    }
}

/// The device of a segment's route. A segment this host sends has no
/// device until it leaves the OUTPUT hook, and a netfilter REJECT's answer
/// no socket either (drop.rs sees such a one when an OUTPUT rule drops
/// it); its route, set before OUTPUT, names the device. Probe-read: the
/// route's pointer is a flagged integer, which the verifier does not type.
#[inline(always)]
fn route_dev(skb: u64, o: &NetnsOffsets) -> u64 {
    /// `SKB_DST_NOREF`: the route is borrowed, not held.
    const NOREF: u64 = 1;
    let read_u64 = |addr: u64| crate::packet::read::<u64>(addr).unwrap_or(0);
    if o.skb_refdst == ABSENT || o.dst_dev == ABSENT {
        return 0;
    }
    match read_u64(skb + u64::from(o.skb_refdst)) & !NOREF {
        0 => 0,
        dst => read_u64(dst + u64::from(o.dst_dev)),
    }
}
