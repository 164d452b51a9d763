//! `skb:kfree_skb`: TCP segments dropped silently by a policy or a limit
//! (netfilter, tc, XDP, cgroup programs, a full accept queue). No RST is
//! sent, but the peer sees the same failure (a timeout instead of a
//! refusal), so drops are counted per remote IP and drop cause. The kernel
//! reason decides the cause through `DROP_REASON_CAUSE`, filled by
//! userspace (values move between kernels): every other drop returns after
//! that one lookup. The raw tracepoint build builds no record for the
//! drops of a flood; the classic build runs where a raw tracepoint's
//! program can be preempted (see userspace's `bpf_runs_preemptible`).

use aya_ebpf::{
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{
    ABSENT, DROP_NONE, DropCause, DropKey, KFREE_SKB_REASON_ARG, KfreeSkbLayout, MAX_DROP_REASONS,
    RemoteStats, stat,
};

use crate::{
    count,
    egress::{EGRESS_OFFSETS, LAST_REJECT},
    filter,
    packet::{self, Probe},
};

#[unsafe(no_mangle)]
static KFREE_SKB_LAYOUT: KfreeSkbLayout = KfreeSkbLayout::UNSET;

/// Drop reason -> `DropCause` id (`DROP_NONE`: not counted), from the
/// reason names the running kernel prints.
#[map]
static DROP_REASON_CAUSE: Array<u8> = Array::with_max_entries(MAX_DROP_REASONS, 0);

/// Per (remote IP, drop cause, dropping code address). Userspace may
/// resize it.
#[map]
static DROPS: PerCpuHashMap<DropKey, RemoteStats> = PerCpuHashMap::with_max_entries(16384, 0);

/// The drop cause of `reason`, or None: the one lookup every drop pays.
#[inline(always)]
fn cause_of(reason: u32) -> Option<u8> {
    if reason >= MAX_DROP_REASONS {
        return None;
    }
    match DROP_REASON_CAUSE.get(reason) {
        Some(c) if *c != DROP_NONE => Some(*c),
        _ => None,
    }
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    if crate::global::bench_empty() {
        return 0;
    }
    // An enum: its 32 bits, whatever the upper half holds.
    let reason: u64 = ctx.arg(KFREE_SKB_REASON_ARG);
    let Some(cause) = cause_of(reason as u32) else {
        return 0;
    };
    match try_kfree_skb(ctx.arg(0), ctx.arg(1), cause) {
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
    if l.reason == ABSENT {
        return Ok(0);
    }
    // SAFETY (the three reads): offsets from this tracepoint's own format
    // file, checked against the record's size by the kernel.
    let reason: u32 = unsafe { ctx.read_at(l.reason as usize) }.map_err(|_| 0)?;
    let Some(cause) = cause_of(reason) else {
        return Ok(0);
    };
    let skb: u64 = unsafe { ctx.read_at(l.skbaddr as usize) }.map_err(|_| 0)?;
    let location: u64 = unsafe { ctx.read_at(l.location as usize) }.map_err(|_| 0)?;
    try_kfree_skb(skb, location, cause)
}

/// A segment dropped for `cause` (`location`: the code that dropped it).
fn try_kfree_skb(skb: u64, location: u64, cause: u8) -> Result<i32, i32> {
    let o = crate::global::get(&EGRESS_OFFSETS);
    if o.skb_head == ABSENT {
        return Ok(0);
    }
    let Some(p) = packet::tcp::<Probe, false>(skb, o, 0).map_err(|_| 0i32)? else {
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
    // reading (it names the rule's author, the listener's holder).
    if !filter::remote_ok(f, p.family, &remote) {
        return Ok(0);
    }
    // A received segment's namespace is its device's: its socket may be
    // the sender's in another namespace (a veth keeps skb->sk). One this
    // host was sending has no device yet at the OUTPUT hook, but the
    // socket that sent it (the stack's control socket for a RST) is in
    // the namespace; one with neither (a REJECT's answer) is read from its
    // route.
    let sk: u64 = match o.skb_sk {
        _ if iif != 0 => 0,
        ABSENT => 0,
        off => packet::read(skb + u64::from(off)).unwrap_or(0),
    };
    let Some(ns) = filter::netns(f, true, || crate::netns::of::<Probe>(sk, skb)) else {
        return Ok(0);
    };
    // The segment a REJECT rule just answered: not a silent drop.
    if cause == DropCause::NetfilterDrop as u8
        && let Some(last) = LAST_REJECT.get_ptr_mut(0)
    {
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
    // A full accept queue's drops are kept per listening port (it names
    // the listener); the others' local ports are mostly ephemeral.
    let port = if cause == DropCause::ListenOverflow as u8 {
        // With tcp_abort_on_overflow the kernel answered this segment with
        // a RST (cause listen-overflow) before dropping it: not silent.
        if crate::netns::aborts_on_overflow::<Probe>(skb) {
            return Ok(0);
        }
        local_port
    } else {
        0
    };
    count_drop(&DropKey {
        addr: remote,
        family: p.family,
        cause,
        local_port: port,
        netns: ns,
        location,
    });
    Ok(0)
}

/// Where every drop is counted, silent or answered by an ICMP error
/// (`egress.rs`).
#[inline(always)]
pub fn count_drop(key: &DropKey) {
    count::bump(stat::DROPS);
    if !count::bump_map(&DROPS, key, count::coarse_now()) {
        count::bump(stat::DROP_MAP_FULL);
    }
}
