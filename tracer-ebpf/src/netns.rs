//! The network namespace of a RST: from its socket when there is one, else
//! from the device of the segment it answers. Offsets come from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{ABSENT, NetnsOffsets};

#[unsafe(no_mangle)]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets::UNSET;

#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// Inode number of the namespace, 0 when it can't be read.
#[inline(always)]
pub fn of(skaddr: u64, skbaddr: u64) -> u32 {
    // SAFETY: a read-only global that userspace sets before load.
    let o = unsafe { core::ptr::read_volatile(&NETNS_OFFSETS) };
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
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((net + u64::from(o.net_inum)) as *const u32) }.unwrap_or(0)
}
