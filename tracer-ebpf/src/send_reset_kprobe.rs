//! kprobes on `tcp_v4_send_reset` / `tcp_v6_send_reset`, for kernels before
//! 6.10: there `tcp:tcp_send_reset` fires only with a full socket, so the
//! TCP stack's answers to segments for no socket (closed ports), for a
//! time-wait socket or for a request socket never reach it. This program
//! takes exactly those and leaves full sockets to the tracepoint, so nothing
//! is counted twice. Userspace attaches it only on such kernels.
//!
//! The endpoints come from the segment being answered: its source is the
//! remote peer.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use tracer_common::{ABSENT, FULL_SOCKET, RstEvent, TASK_COMM_LEN, source, tcp_state};

use crate::{
    count,
    egress::EGRESS_OFFSETS,
    filter, netns,
    packet::{self, Probe, read},
};

const TCP_RST: u8 = 0x04;

/// The cause of a RST by the state of the socket it is sent on (slot 0:
/// no socket), `FULL_SOCKET` for the RSTs the tracepoint reports; filled
/// by userspace from its cause rules.
#[unsafe(no_mangle)]
static NO_FULL_SOCKET_CAUSES: [u8; tcp_state::SLOTS] = [FULL_SOCKET; tcp_state::SLOTS];

#[kprobe]
pub fn send_reset_no_full_socket(ctx: ProbeContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    match try_send_reset(&ctx) {
        Ok(r) => r,
        Err(r) => r as u32,
    }
}

fn try_send_reset(ctx: &ProbeContext) -> Result<u32, i32> {
    let o = crate::global::get(&EGRESS_OFFSETS);
    if o.skb_sk == ABSENT {
        return Ok(0);
    }
    let sk: u64 = ctx.arg(0).ok_or(0)?;
    let skb: u64 = ctx.arg(1).ok_or(0)?;
    let state: u8 = if sk == 0 {
        0
    } else {
        read(sk + u64::from(o.sk_state))?
    };
    let slot = if sk == 0 { 0 } else { usize::from(state) };
    let cause = crate::global::get(&NO_FULL_SOCKET_CAUSES)
        .get(slot)
        .copied()
        .unwrap_or(FULL_SOCKET);
    if cause == FULL_SOCKET {
        return Ok(0);
    }
    let Some(seg) = packet::tcp::<Probe, false>(skb, o, 0)? else {
        return Ok(0);
    };
    // The kernel never answers a RST with a RST.
    if seg.flags & TCP_RST != 0 {
        return Ok(0);
    }
    let f = filter::get();
    if !filter::cause_ok(f, cause)
        || !filter::port_ok(f, seg.dport)
        || !filter::remote_ok(f, seg.family, &seg.saddr)
    {
        return Ok(0);
    }
    let read_ns = || netns::of::<Probe>(sk, skb);
    let Some(scoped_ns) = filter::netns(f, false, read_ns) else {
        return Ok(0);
    };
    let rst = count::Counted {
        ts_ns: count::coarse_now(),
        remote: seg.saddr,
        family: seg.family,
        cause,
    };
    count::record(&rst, false, count::emitting(), || RstEvent {
        ts_ns: 0,
        skaddr: sk,
        // Sent in softirq on behalf of the peer: no actor.
        cgroup_id: 0,
        pid_tgid: 0,
        reason: ABSENT,
        state: u32::from(state),
        netns: filter::netns_or_read(scoped_ns, read_ns),
        stack_id: -1,
        sk_ino: 0,
        nft_chain: 0,
        local_addr: seg.daddr,
        remote_addr: seg.saddr,
        local_port: seg.dport,
        remote_port: seg.sport,
        family: seg.family,
        cause,
        source: source::TCP_STACK_KPROBE,
        _pad: 0,
        comm: [0; TASK_COMM_LEN],
        exit: 0,
        user_stack: -1,
        ifindex: 0,
        _pad2: 0,
    });
    Ok(0)
}
