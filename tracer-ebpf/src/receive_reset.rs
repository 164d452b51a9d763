//! `tcp:tcp_receive_reset` (`--direction in|both`): RSTs this host
//! receives, so both sides of a conversation can be read from one host.
//! The record has the split layout of older tcp_send_reset records: the
//! same reader serves, with offsets from this tracepoint's format file.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{ABSENT, Cause, RstEvent, SendResetLayout, TASK_COMM_LEN, source};

use crate::{
    count, filter, netns,
    packet::Probe,
    send_reset::{copy_record, read_split},
};

#[unsafe(no_mangle)]
static RECEIVE_RESET_LAYOUT: SendResetLayout = SendResetLayout::UNSET;

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    match try_tcp_receive_reset(&ctx) {
        Ok(r) => r,
        Err(r) => r,
    }
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = crate::global::get(&RECEIVE_RESET_LAYOUT);
    if layout.skaddr == ABSENT {
        return Ok(0);
    }
    let rec = copy_record(ctx)?;
    // The socket's own view: saddr/sport are this host's.
    let ends = read_split(&rec, layout)?;
    let skaddr = u64::from_ne_bytes(rec.bytes(layout.skaddr)?);
    let f = filter::get();
    if !filter::cause_ok(f, Cause::Received as u8)
        || !filter::port_ok(f, ends.local_port)
        || !filter::remote_ok(f, ends.family, &ends.remote)
    {
        return Ok(0);
    }
    let read_ns = || netns::of::<Probe>(skaddr, 0);
    let Some(scoped_ns) = filter::netns(f, false, read_ns) else {
        return Ok(0);
    };
    let rst = count::Counted {
        ts_ns: count::coarse_now(),
        remote: ends.remote,
        family: ends.family,
        cause: Cause::Received as u8,
    };
    count::record_received(&rst, count::emitting(), || RstEvent {
        ts_ns: 0,
        skaddr,
        cgroup_id: 0,
        pid_tgid: 0,
        reason: ABSENT,
        state: 0,
        netns: filter::netns_or_read(scoped_ns, read_ns),
        stack_id: -1,
        sk_ino: 0,
        nft_chain: 0,
        local_addr: ends.local,
        remote_addr: ends.remote,
        local_port: ends.local_port,
        remote_port: ends.remote_port,
        family: ends.family,
        cause: Cause::Received as u8,
        source: source::RECEIVED,
        _pad: 0,
        comm: [0; TASK_COMM_LEN],
        exit: 0,
        user_stack: -1,
        ifindex: 0,
        _pad2: 0,
    });
    Ok(0)
}
