//! The network namespace of a RST: from its socket when there is one, else
//! from the device of the segment it answers. Offsets come from BTF.

use tracer_common::{ABSENT, NetnsOffsets};

use crate::packet::Mem;

#[unsafe(no_mangle)]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets::UNSET;

/// Inode number of the namespace, 0 when it can't be read.
#[inline(always)]
pub fn of<M: Mem>(skaddr: u64, skbaddr: u64) -> u32 {
    let read_u64 = |addr: u64| M::read::<u64>(addr).unwrap_or(0);
    let o = crate::global::get(&NETNS_OFFSETS);
    if o.net_inum == ABSENT {
        return 0;
    }
    let net = if skaddr != 0 && o.sock_net != ABSENT {
        read_u64(skaddr + u64::from(o.sock_net))
    } else if skbaddr != 0 && o.skb_dev != ABSENT && o.dev_net != ABSENT {
        let dev = read_u64(skbaddr + u64::from(o.skb_dev));
        if dev == 0 {
            return 0;
        }
        read_u64(dev + u64::from(o.dev_net))
    } else {
        0
    };
    if net == 0 {
        return 0;
    }
    M::read::<u32>(net + u64::from(o.net_inum)).unwrap_or(0)
}
