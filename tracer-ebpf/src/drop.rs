//! `skb:kfree_skb` with reason NETFILTER_DROP: segments a netfilter rule
//! dropped silently. No RST is sent, but the peer sees the same failure (a
//! timeout instead of a refusal), so drops are counted per remote IP too.
//! Every other drop returns after one read of the reason.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
};
use tracer_common::{ABSENT, DropKey, KfreeSkbLayout, RemoteStats, stat};

use crate::{
    count,
    egress::{EGRESS_OFFSETS, LAST_REJECT},
    filter, packet,
};

#[unsafe(no_mangle)]
static KFREE_SKB_LAYOUT: KfreeSkbLayout = KfreeSkbLayout::UNSET;

/// Per (remote IP, dropping code address). Userspace may resize it.
#[map]
static DROPS: PerCpuHashMap<DropKey, RemoteStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    match try_kfree_skb(&ctx) {
        Ok(r) => r,
        Err(r) => r,
    }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    // SAFETY: offsets come from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| 0u32)
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: read-only globals that userspace sets before load.
    let l = unsafe { core::ptr::read_volatile(&KFREE_SKB_LAYOUT) };
    if l.reason == ABSENT {
        return Ok(0);
    }
    let reason: u32 = field(ctx, l.reason)?;
    if reason != l.netfilter_drop {
        return Ok(0);
    }
    let o = unsafe { core::ptr::read_volatile(&EGRESS_OFFSETS) };
    if o.skb_head == ABSENT {
        return Ok(0);
    }
    let skb: u64 = field(ctx, l.skbaddr)?;
    let location: u64 = field(ctx, l.location)?;
    let Some(p) = packet::tcp(skb, &o).map_err(|_| 0u32)? else {
        return Ok(0);
    };
    // A received segment was dropped on its way in: the peer is its
    // source. One this host was sending has not been received anywhere.
    let iif: i32 = packet::read(skb + u64::from(o.skb_iif)).map_err(|_| 0u32)?;
    let (remote, remote_port, local_port) = if iif != 0 {
        (p.saddr, p.sport, p.dport)
    } else {
        (p.daddr, p.dport, p.sport)
    };
    let f = filter::get();
    // Drops are rare next to traffic: the namespace is always worth
    // reading (it names the rule's author).
    if !filter::remote_ok(&f, p.family, &remote) {
        return Ok(0);
    }
    let Some(ns) = filter::netns(&f, true, || crate::netns::of(0, skb)) else {
        return Ok(0);
    };
    // The segment a REJECT rule just answered: not a silent drop.
    if let Some(last) = LAST_REJECT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let l = unsafe { &mut *last };
        if l.valid != 0
            && l.remote == remote
            && l.remote_port == remote_port
            && l.local_port == local_port
        {
            l.valid = 0;
            return Ok(0);
        }
    }
    let key = DropKey {
        addr: remote,
        family: p.family,
        _pad: [0; 3],
        netns: ns,
        location,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    count::bump(stat::NETFILTER_DROPS);
    if !count::bump_map(&DROPS, &key, now) {
        count::bump(stat::DROP_MAP_FULL);
    }
    Ok(0)
}
