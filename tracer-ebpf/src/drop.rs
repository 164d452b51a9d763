//! `skb:kfree_skb` with reason NETFILTER_DROP: segments a netfilter rule
//! dropped silently. No RST is sent, but the peer sees the same failure (a
//! timeout instead of a refusal), so drops are counted per remote IP too.
//! Every other drop returns after one look at the reason. The raw
//! tracepoint build builds no record for the drops of a flood; the classic
//! build runs where a raw tracepoint's program can be preempted (see
//! userspace's `bpf_runs_preemptible`).

use aya_ebpf::{
    macros::{map, raw_tracepoint, tracepoint},
    maps::PerCpuHashMap,
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{ABSENT, DropKey, KFREE_SKB_REASON_ARG, KfreeSkbLayout, RemoteStats, stat};

use crate::{
    count,
    egress::{EGRESS_OFFSETS, LAST_REJECT},
    filter,
    packet::{self, Probe},
};

#[unsafe(no_mangle)]
static KFREE_SKB_LAYOUT: KfreeSkbLayout = KfreeSkbLayout::UNSET;

/// Per (remote IP, dropping code address). Userspace may resize it.
#[map]
static DROPS: PerCpuHashMap<DropKey, RemoteStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let l = crate::global::get(&KFREE_SKB_LAYOUT);
    if l.netfilter_drop == ABSENT {
        return 0;
    }
    // An enum: its 32 bits, whatever the upper half holds.
    let reason: u64 = ctx.arg(KFREE_SKB_REASON_ARG);
    if reason as u32 != l.netfilter_drop {
        return 0;
    }
    match try_kfree_skb(ctx.arg(0), ctx.arg(1)) {
        Ok(r) => r,
        Err(r) => r,
    }
}

#[tracepoint]
pub fn kfree_skb_tp(ctx: TracePointContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    match try_kfree_skb_tp(&ctx) {
        Ok(r) => r as u32,
        Err(r) => r as u32,
    }
}

fn try_kfree_skb_tp(ctx: &TracePointContext) -> Result<i32, i32> {
    let l = crate::global::get(&KFREE_SKB_LAYOUT);
    if l.netfilter_drop == ABSENT {
        return Ok(0);
    }
    // SAFETY (the three reads): offsets from this tracepoint's own format
    // file, checked against the record's size by the kernel.
    let reason: u32 = unsafe { ctx.read_at(l.reason as usize) }.map_err(|_| 0)?;
    if reason != l.netfilter_drop {
        return Ok(0);
    }
    let skb: u64 = unsafe { ctx.read_at(l.skbaddr as usize) }.map_err(|_| 0)?;
    let location: u64 = unsafe { ctx.read_at(l.location as usize) }.map_err(|_| 0)?;
    try_kfree_skb(skb, location)
}

/// A segment netfilter dropped (`location`: the code that dropped it).
fn try_kfree_skb(skb: u64, location: u64) -> Result<i32, i32> {
    let o = crate::global::get(&EGRESS_OFFSETS);
    if o.skb_head == ABSENT {
        return Ok(0);
    }
    let Some(p) = packet::tcp::<Probe>(skb, o, 0).map_err(|_| 0i32)? else {
        return Ok(0);
    };
    // A received segment was dropped on its way in: the peer is its
    // source. One this host was sending has not been received anywhere.
    let iif: i32 = packet::read(skb + u64::from(o.skb_iif)).map_err(|_| 0i32)?;
    let (remote, remote_port, local_port) = if iif != 0 {
        (p.saddr, p.sport, p.dport)
    } else {
        (p.daddr, p.dport, p.sport)
    };
    let f = filter::get();
    // Drops are rare next to traffic: the namespace is always worth
    // reading (it names the rule's author).
    if !filter::remote_ok(f, p.family, &remote) {
        return Ok(0);
    }
    // From the segment's socket where it has one: a segment this host
    // was sending has no device yet at the OUTPUT hook, but the socket
    // that sent it (the stack's control socket for a RST) is in the
    // namespace. A received one is read from its device, and one with
    // neither (a REJECT's answer) from its route.
    let sk: u64 = match o.skb_sk {
        ABSENT => 0,
        off => packet::read(skb + u64::from(off)).unwrap_or(0),
    };
    let Some(ns) = filter::netns(f, true, || crate::netns::of::<Probe>(sk, skb)) else {
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
    let now = count::coarse_now();
    count::bump(stat::NETFILTER_DROPS);
    if !count::bump_map(&DROPS, &key, now) {
        count::bump(stat::DROP_MAP_FULL);
    }
    Ok(0)
}
