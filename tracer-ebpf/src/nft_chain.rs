//! Which nftables base chain a REJECT came from, for rules that predate the
//! trace (rules added while tracing are named over netlink). Kernels with
//! kprobes only: a kprobe on `nft_do_chain` remembers, per CPU, the last
//! chain that evaluated a packet; a kprobe on `nf_send_reset` /
//! `nf_send_reset6` keeps it when that packet is the one being answered;
//! the egress program puts it in the RST's event. Names are read only for
//! rejects: the per-packet cost is one map write.
//!
//! The chain is the base chain (the one on the hook): a rule in a chain
//! reached by `jump` is reported under the base chain that jumped.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes},
    macros::{kprobe, map},
    maps::{LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use tracer_common::{ABSENT, NftChainNames, NftOffsets};

use crate::packet::read;

#[unsafe(no_mangle)]
static NFT_OFFSETS: NftOffsets = NftOffsets::UNSET;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    /// LAST_CHAIN: the packet; REJECT: when it was kept.
    tag: u64,
    chain: u64,
}

#[map]
static LAST_CHAIN: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1, 0);

#[map]
static REJECT: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1, 0);

/// Names by chain address, read at each reject (a freed chain's address
/// may come back for another: the entry is rewritten then).
#[map]
static NFT_CHAINS: LruHashMap<u64, NftChainNames> = LruHashMap::with_max_entries(1024, 0);

#[map]
static NAMES_BUF: PerCpuArray<NftChainNames> = PerCpuArray::with_max_entries(1, 0);

/// The RST leaves within the reject's own call: older is stale (a reject
/// whose RST never reached a device). Generous: under emulation that call
/// can take milliseconds.
const FRESH_NS: u64 = 100_000_000;

fn offsets() -> Option<&'static NftOffsets> {
    let o = crate::global::get(&NFT_OFFSETS);
    (o.pktinfo_skb != ABSENT).then_some(o)
}

#[kprobe]
pub fn nft_do_chain_entry(ctx: ProbeContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let _ = try_chain_entry(&ctx);
    0
}

fn try_chain_entry(ctx: &ProbeContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    // nft_do_chain(const struct nft_pktinfo *pkt, void *priv = chain)
    let pkt: u64 = ctx.arg(0).ok_or(0)?;
    let chain: u64 = ctx.arg(1).ok_or(0)?;
    let skb: u64 = read(pkt + u64::from(o.pktinfo_skb))?;
    let slot = LAST_CHAIN.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's slot.
    unsafe { *slot = Slot { tag: skb, chain } };
    Ok(())
}

#[kprobe]
pub fn nf_send_reset_entry(ctx: ProbeContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let _ = try_send_reset(&ctx);
    0
}

fn try_send_reset(ctx: &ProbeContext) -> Result<(), i32> {
    let o = offsets().ok_or(0)?;
    let last = LAST_CHAIN.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's slot.
    let Slot { tag: skb, chain } = unsafe { *last };
    if skb == 0 {
        return Ok(());
    }
    // The packet answered is the second argument, or the third where the
    // kernel passes a socket first (nf_send_reset(net, [sk,] oldskb, hook)).
    let a1: u64 = ctx.arg(1).ok_or(0)?;
    let a2: u64 = ctx.arg(2).ok_or(0)?;
    if skb != a1 && skb != a2 {
        return Ok(());
    }
    let names = NAMES_BUF.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's scratch, filled then copied into the map.
    unsafe {
        let n = &mut *names;
        n.table = [0; tracer_common::NFT_NAME_LEN];
        n.chain = [0; tracer_common::NFT_NAME_LEN];
        let table: u64 = read(chain + u64::from(o.chain_table))?;
        let table_name: u64 = read(table + u64::from(o.table_name))?;
        let chain_name: u64 = read(chain + u64::from(o.chain_name))?;
        let _ = bpf_probe_read_kernel_str_bytes(table_name as *const u8, &mut n.table);
        let _ = bpf_probe_read_kernel_str_bytes(chain_name as *const u8, &mut n.chain);
        NFT_CHAINS.insert(chain, n, 0).map_err(|_| 0)?;
    }
    let reject = REJECT.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's slot; a plain helper call.
    unsafe {
        *reject = Slot {
            tag: bpf_ktime_get_boot_ns(),
            chain,
        }
    };
    Ok(())
}

/// The chain of the reject whose RST is leaving now, on this CPU; 0 when
/// none is known. Taken once.
#[inline(always)]
pub fn take_reject() -> u64 {
    let Some(slot) = REJECT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; a plain helper call.
    unsafe {
        let s = *slot;
        (*slot).chain = 0;
        if s.chain != 0 && bpf_ktime_get_boot_ns().wrapping_sub(s.tag) < FRESH_NS {
            s.chain
        } else {
            0
        }
    }
}
