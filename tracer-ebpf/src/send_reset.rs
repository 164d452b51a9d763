//! `tcp:tcp_send_reset`: every RST the TCP stack sends (on 6.10+ also the
//! ones with no socket). The record's layout differs between kernels, so all
//! offsets come from userspace, read off the running kernel's format file.

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext, tracing::StackIdContext},
};
use tracer_common::{
    ABSENT, AF_INET, AF_INET6, BY_LISTENER, Cause, EgressOffsets, MAX_REASONS, NEEDS_STACK,
    RstEvent, SendResetLayout, SockAddrOffsets, TASK_COMM_LEN, addr_layout, source, stat,
    tcp_state,
};

use crate::{
    count, egress, filter, netns,
    packet::{self, Direct, Mem, Probe},
    stack,
};

#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: SendResetLayout = SendResetLayout::UNSET;

/// Kernel reason value -> cause, filled by userspace from the reason names
/// the running kernel prints (values move between kernels, names do not).
#[map]
static REASON_CAUSE: Array<u8> = Array::with_max_entries(MAX_REASONS, 0);

/// The record is copied once per event (each helper call costs, more so
/// with return-thunk mitigations); fields are then taken from the copy.
const RECORD_MAX: usize = tracer_common::SEND_RESET_RECORD_MAX as usize;

#[map]
static RECORD: PerCpuArray<[u8; RECORD_MAX]> = PerCpuArray::with_max_entries(1, 0);

pub struct Record<'a>(&'a [u8; RECORD_MAX]);

impl Record<'_> {
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, offset: u32) -> Result<[u8; N], u32> {
        let o = offset as usize;
        let mut out = [0u8; N];
        out.copy_from_slice(self.0.get(o..o + N).ok_or(1u32)?);
        Ok(out)
    }
}

/// Copies the tracepoint's record into this CPU's scratch buffer.
#[inline(always)]
pub fn copy_record(ctx: &TracePointContext) -> Result<Record<'static>, u32> {
    let buf = RECORD.get_ptr_mut(0).ok_or(1u32)?;
    // SAFETY: per-CPU scratch of exactly RECORD_MAX bytes; the perf
    // record lives in a per-CPU buffer larger than that.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            buf.cast(),
            RECORD_MAX as u32,
            ctx.as_ptr().cast_const(),
        )
    };
    // SAFETY: just written, this CPU's copy.
    Ok(Record(unsafe { &*buf }))
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    match try_tcp_send_reset(&ctx) {
        Ok(r) => r,
        Err(r) => unreadable(r),
    }
}

/// A RST that could not be read is still counted, as unreadable: the
/// summary never comes up short without saying so.
#[inline(always)]
fn unreadable(r: u32) -> u32 {
    count::bump(stat::UNREADABLE_RSTS);
    r
}

/// Aligned, addresses first: zeroed and copied a word at a time (see
/// `packet::Tcp`).
#[repr(C, align(8))]
pub struct Endpoints {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub family: u8,
    pub local_port: u16,
    pub remote_port: u16,
}

fn try_tcp_send_reset(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = crate::global::get(&SEND_RESET_LAYOUT);
    let rec = copy_record(ctx)?;
    let ends = match layout.addr_layout {
        addr_layout::SOCKADDR => read_sockaddr_pair(&rec, layout)?,
        addr_layout::SPLIT => read_split(&rec, layout)?,
        _ => return Err(1),
    };
    let field = |offset: u32| -> Result<u64, u32> {
        Ok(match offset {
            ABSENT => 0,
            o => u64::from_ne_bytes(rec.bytes(o)?),
        })
    };
    let state = match layout.state {
        ABSENT => 0,
        o => u32::from_ne_bytes(rec.bytes(o)?),
    };
    let reason = match layout.reason {
        ABSENT => ABSENT,
        o => u32::from_ne_bytes(rec.bytes(o)?),
    };
    let (skaddr, skbaddr) = (field(layout.skaddr)?, field(layout.skbaddr)?);
    let mut ends = ends;
    // A listener's RST: the record holds the listener's own ends (its
    // bound address, no peer); the segment it answers holds the
    // connection's. Every field of the record is taken by now.
    if state == u32::from(tcp_state::LISTEN) && skbaddr != 0 {
        answered_into(skbaddr, &mut ends)?;
    }
    let rst = Rst {
        ends,
        state,
        reason,
        has_reason: layout.reason != ABSENT,
        skaddr,
        skbaddr,
    };
    attribute::<Probe, _>(ctx, &rst, stack::Rules::SendReset)
}

/// Read off the socket, or the segment it answers, at the BTF tracepoint:
/// no record is built (the classic tracepoint's main cost) and every field
/// is a plain load. The endpoints are taken as the tracepoint takes them:
/// from a full socket, else from the segment, reversed.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    match try_tcp_send_reset_btf(&ctx) {
        Ok(r) => r,
        Err(r) => unreadable(r),
    }
}

#[unsafe(no_mangle)]
static SOCK_ADDR_OFFSETS: SockAddrOffsets = SockAddrOffsets::UNSET;

fn try_tcp_send_reset_btf(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let a = crate::global::get(&SOCK_ADDR_OFFSETS);
    let o = crate::global::get(&crate::egress::EGRESS_OFFSETS);
    if a.sport == ABSENT || o.sk_state == ABSENT {
        return Err(1);
    }
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let reason = if a.reason_arg != 0 {
        // An enum: its 32 bits.
        ctx.arg::<u64>(2) as u32
    } else {
        ABSENT
    };
    let state = if sk == 0 {
        0
    } else {
        u32::from(Direct::read::<u8>(sk + u64::from(o.sk_state)).map_err(|_| 1u32)?)
    };
    // A listener holds no peer: its RSTs take the segment's ends.
    let listener = state == u32::from(tcp_state::LISTEN);
    let ends = if sk != 0
        && state != u32::from(tcp_state::TIME_WAIT)
        && state != u32::from(tcp_state::NEW_SYN_RECV)
        && !listener
    {
        sock_endpoints(sk, a, o)?
    } else if a.reason_arg == 0 && !listener {
        // Before 6.10 (no reason argument) the tracepoint fires only with a
        // full socket: this path is left out of the program the verifier
        // walks there but for a listener's RSTs (a second walk of
        // everything below, which 5.10 under emulation takes most of a
        // minute over).
        return Ok(0);
    } else if skb == 0 {
        // The verifier types `skb` may-be-null: checked before any
        // arithmetic on it. The kernel always passes the segment a RST
        // without a full socket answers.
        return Err(1);
    } else {
        let Some(seg) = packet::tcp::<Direct, false>(skb, o, 0).map_err(|_| 1u32)? else {
            return Err(1);
        };
        answered(&seg)
    };
    let rst = Rst {
        ends,
        state,
        reason,
        has_reason: a.reason_arg != 0,
        skaddr: sk,
        skbaddr: skb,
    };
    attribute::<Direct, _>(ctx, &rst, stack::Rules::SendResetBtf)
}

/// Sets `ends` to those of the RST that answers the segment in `skb` (its
/// own, reversed), for the classic build. The headers are read into this
/// CPU's record buffer, done with by then: that program's stack has no
/// room left for a header buffer (5.10's 512 bytes, counted across calls).
/// IPv4 without options and IPv6 without extension headers, as the
/// handshake's segments come; others keep the record's ends.
#[inline(always)]
fn answered_into(skb: u64, ends: &mut Endpoints) -> Result<(), u32> {
    let o = crate::global::get(&crate::egress::EGRESS_OFFSETS);
    if o.skb_head == ABSENT || o.skb_network_header == ABSENT || o.skb_protocol == ABSENT {
        return Ok(());
    }
    let rd = |off: u32| -> Result<u64, u32> {
        Ok(u64::from(
            Probe::read::<u16>(skb + u64::from(off)).map_err(|_| 1u32)?,
        ))
    };
    let (proto, nh) = (
        u16::from_be(rd(o.skb_protocol)? as u16),
        rd(o.skb_network_header)?,
    );
    let head: u64 = Probe::read(skb + u64::from(o.skb_head)).map_err(|_| 1u32)?;
    if head == 0 || nh == 0xffff {
        return Ok(());
    }
    let buf = RECORD.get_ptr_mut(0).ok_or(1u32)?;
    // SAFETY: per-CPU scratch of RECORD_MAX bytes; 64 fit.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            buf.cast(),
            64,
            (head + nh) as *const core::ffi::c_void,
        )
    };
    // SAFETY: just written, this CPU's copy.
    let h = Record(unsafe { &*buf });
    let [ver_ihl]: [u8; 1] = h.bytes(0)?;
    let tcp_at = if proto == 0x0800 && ver_ihl == 0x45 {
        ends.family = AF_INET;
        ends.local = [0; 16];
        ends.remote = [0; 16];
        ends.remote[..4].copy_from_slice(&h.bytes::<4>(12)?);
        ends.local[..4].copy_from_slice(&h.bytes::<4>(16)?);
        20
    } else if proto == 0x86dd && ver_ihl >> 4 == 6 {
        ends.family = AF_INET6;
        ends.remote = h.bytes(8)?;
        ends.local = h.bytes(24)?;
        40
    } else {
        return Ok(());
    };
    let p: [u8; 4] = h.bytes(tcp_at)?;
    ends.remote_port = u16::from_be_bytes([p[0], p[1]]);
    ends.local_port = u16::from_be_bytes([p[2], p[3]]);
    Ok(())
}

/// The ends of the RST that answers segment `seg`: its own, reversed.
#[inline(always)]
fn answered(seg: &packet::Tcp) -> Endpoints {
    Endpoints {
        local: seg.daddr,
        remote: seg.saddr,
        family: seg.family,
        local_port: seg.dport,
        remote_port: seg.sport,
    }
}

/// A full socket's endpoints, as its own fields hold them.
#[inline(always)]
fn sock_endpoints(sk: u64, a: &SockAddrOffsets, o: &EgressOffsets) -> Result<Endpoints, u32> {
    let rd16 = |off: u32| Direct::read::<u16>(sk + u64::from(off)).map_err(|_| 1u32);
    let family = rd16(o.sk_family)?;
    let mut ends = Endpoints {
        local: [0; 16],
        remote: [0; 16],
        family: 0,
        // `inet_sport` lies past `struct sock`, the type the verifier gives
        // `sk`: a plain load there is refused, so it takes the helper.
        local_port: u16::from_be(Probe::read::<u16>(sk + u64::from(a.sport)).map_err(|_| 1u32)?),
        remote_port: u16::from_be(rd16(a.dport)?),
    };
    if family == u16::from(AF_INET) {
        ends.family = AF_INET;
        let l: u32 = Direct::read(sk + u64::from(a.rcv_saddr)).map_err(|_| 1u32)?;
        let r: u32 = Direct::read(sk + u64::from(a.daddr)).map_err(|_| 1u32)?;
        ends.local[..4].copy_from_slice(&l.to_ne_bytes());
        ends.remote[..4].copy_from_slice(&r.to_ne_bytes());
    } else if family == u16::from(AF_INET6) && a.v6_daddr != ABSENT {
        ends.family = AF_INET6;
        ends.local = read_in6(sk + u64::from(a.v6_rcv_saddr))?;
        ends.remote = read_in6(sk + u64::from(a.v6_daddr))?;
    } else {
        return Err(1);
    }
    Ok(ends)
}

/// An `in6_addr` in two loads (the verifier allows loads that stay within
/// one array of scalars).
#[inline(always)]
fn read_in6(addr: u64) -> Result<[u8; 16], u32> {
    let lo: u64 = Direct::read(addr).map_err(|_| 1u32)?;
    let hi: u64 = Direct::read(addr + 8).map_err(|_| 1u32)?;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_ne_bytes());
    out[8..].copy_from_slice(&hi.to_ne_bytes());
    Ok(out)
}

/// What either build of the program read: the RST, before attribution.
pub struct Rst {
    pub ends: Endpoints,
    pub state: u32,
    /// The kernel's reason, `ABSENT` before 6.10.
    pub reason: u32,
    /// Whether the kernel has reasons: from a read-only global.
    pub has_reason: bool,
    pub skaddr: u64,
    pub skbaddr: u64,
}

/// Decides the cause, applies the scope, counts and emits: the part both
/// builds share. `M` reads the socket and skb (for the namespace).
#[inline(always)]
fn attribute<M: Mem, C: StackIdContext>(
    ctx: &C,
    rst: &Rst,
    rules: stack::Rules,
) -> Result<u32, u32> {
    let (state, reason, ends) = (rst.state, rst.reason, &rst.ends);
    let (skaddr, skbaddr) = (rst.skaddr, rst.skbaddr);
    // Whether this kernel has reasons is a read-only global, a constant to
    // the verifier: it walks one of the two ways to a cause, not both (the
    // value of `reason` would leave both open, each with the stack rules).
    let has_reason = rst.has_reason;
    let (cause, by_listener) = if !has_reason {
        // No reason on this kernel: the stack and the state decide, with
        // the rules userspace chose for such kernels.
        let c = stack::cause_from_stack(ctx, rules, state).unwrap_or(Cause::Unknown as u8);
        // SAFETY: a read-only global that userspace sets before load.
        let turns = unsafe { core::ptr::read_volatile(&FULL_LISTENER_CAUSES) };
        (c, count::in_mask(turns, c))
    } else {
        let entry = if reason < MAX_REASONS {
            REASON_CAUSE
                .get(reason)
                .copied()
                .unwrap_or(Cause::Unknown as u8)
        } else {
            Cause::Unknown as u8
        };
        let c = entry & !(NEEDS_STACK | BY_LISTENER);
        let c = if entry & NEEDS_STACK != 0 {
            stack::cause_from_stack(ctx, rules, state).unwrap_or(c)
        } else {
            c
        };
        (c, entry & BY_LISTENER != 0)
    };
    let cause = if by_listener && state == u32::from(tcp_state::LISTEN) && queue_full(skaddr) {
        Cause::ListenOverflow as u8
    } else {
        cause
    };
    let f = filter::get();
    if !filter::port_ok(f, ends.local_port) || !filter::remote_ok(f, ends.family, &ends.remote) {
        return Ok(0);
    }
    // Each helper call costs: take only what will be used. The namespace
    // is read here only for a --netns scope, else with the event.
    let emit = count::emitting();
    let read_ns = || netns::of::<M>(skaddr, skbaddr);
    let Some(scoped_ns) = filter::netns(f, false, read_ns) else {
        return Ok(0);
    };
    // Coverage, as the egress hook would have counted it (in scope,
    // whatever the cause): a RST of tcp_send_active_reset leaves on the
    // socket's own packet, which the egress hook passes over; from 6.10 so
    // do all of the TCP stack's (see egress.rs), and their cause's count
    // is their coverage count too (`count::record`).
    let at_send = egress::stack_counted_at_send();
    if !at_send && skaddr != 0 && skbaddr == 0 {
        count::bump(stat::STACK_RSTS_AT_SEND);
    }
    if !filter::cause_ok(f, cause) {
        if at_send {
            count::bump(stat::STACK_RSTS_AT_SEND);
        }
        return Ok(0);
    }
    let rst = count::Counted {
        ts_ns: count::coarse_now(),
        remote: ends.remote,
        family: ends.family,
        cause,
    };
    count::record(&rst, at_send, emit, || RstEvent {
        ts_ns: 0,
        skaddr,
        cgroup_id: 0,
        pid_tgid: 0,
        reason,
        state,
        netns: filter::netns_or_read(scoped_ns, read_ns),
        stack_id: if cause == Cause::Unknown as u8 {
            stack::stack_id(ctx, rules)
        } else {
            -1
        },
        sk_ino: if cause == Cause::SocketKilled as u8 {
            socket_ino(skaddr)
        } else {
            0
        },
        nft_chain: 0,
        local_addr: ends.local,
        remote_addr: ends.remote,
        local_port: ends.local_port,
        remote_port: ends.remote_port,
        family: ends.family,
        cause,
        source: source::TCP_STACK,
        _pad: 0,
        comm: [0; TASK_COMM_LEN],
        exit: 0,
        user_stack: stack::user_stack_id(ctx, cause),
        ifindex: 0,
        _pad2: 0,
    });
    Ok(0)
}

/// Causes that a RST on a full listener turns into `listen-overflow` on
/// kernels without reasons (the rule is `full_listener_turns` in
/// userspace; with reasons, the `BY_LISTENER` flag of the reason's entry).
#[unsafe(no_mangle)]
static FULL_LISTENER_CAUSES: u32 = 0;

/// Whether listening socket `sk`'s accept queue is full, as the kernel's
/// `sk_acceptq_is_full` tells it: a child past the backlog was refused.
/// Read with the helper in both builds (rare: only RSTs sent on a
/// listener come here).
#[inline(always)]
fn queue_full(sk: u64) -> bool {
    let o = crate::global::get(&crate::egress::EGRESS_OFFSETS);
    if sk == 0 || o.sk_ack_backlog == ABSENT || o.sk_max_ack_backlog == ABSENT {
        return false;
    }
    let queued: u32 = crate::packet::read(sk + u64::from(o.sk_ack_backlog)).unwrap_or(0);
    let backlog: u32 =
        crate::packet::read(sk + u64::from(o.sk_max_ack_backlog)).unwrap_or(u32::MAX);
    queued > backlog
}

/// Inode number of the file behind socket `sk`, 0 when unknown.
#[inline(always)]
fn socket_ino(sk: u64) -> u64 {
    let o = crate::global::get(&crate::egress::EGRESS_OFFSETS);
    if sk == 0 || o.sk_socket == ABSENT || o.socket_ino == ABSENT {
        return 0;
    }
    let socket: u64 = crate::packet::read(sk + u64::from(o.sk_socket)).unwrap_or(0);
    if socket == 0 {
        return 0;
    }
    crate::packet::read(socket + u64::from(o.socket_ino)).unwrap_or(0)
}

/// 6.10+: `saddr`/`daddr` are a `sockaddr_in` or `sockaddr_in6`; the
/// tracepoint already puts the sending (local) side in `saddr`, also when it
/// had to take the tuple from the incoming segment. Inlined: a separate
/// frame on top of the caller's exceeds 5.10's 512-byte combined stack.
#[inline(always)]
fn read_sockaddr_pair(rec: &Record<'_>, l: &SendResetLayout) -> Result<Endpoints, u32> {
    let s: [u8; 28] = rec.bytes(l.saddr)?;
    let d: [u8; 28] = rec.bytes(l.daddr)?;
    let family = u16::from_ne_bytes([s[0], s[1]]);
    let mut ends = Endpoints {
        family: 0,
        local: [0; 16],
        remote: [0; 16],
        local_port: u16::from_be_bytes([s[2], s[3]]),
        remote_port: u16::from_be_bytes([d[2], d[3]]),
    };
    if family == AF_INET as u16 {
        ends.family = AF_INET;
        ends.local[..4].copy_from_slice(&s[4..8]);
        ends.remote[..4].copy_from_slice(&d[4..8]);
    } else if family == AF_INET6 as u16 {
        ends.family = AF_INET6;
        ends.local.copy_from_slice(&s[8..24]);
        ends.remote.copy_from_slice(&d[8..24]);
    } else {
        return Err(1);
    }
    Ok(ends)
}

/// Before 6.10: separate v4 and v6 fields, ports in host order. 5.10 has no
/// `family` field; there an IPv4 connection shows as a v4-mapped v6 address.
#[inline(always)]
pub fn read_split(rec: &Record<'_>, l: &SendResetLayout) -> Result<Endpoints, u32> {
    let local_port = u16::from_ne_bytes(rec.bytes(l.sport)?);
    let remote_port = u16::from_ne_bytes(rec.bytes(l.dport)?);
    let s6: [u8; 16] = rec.bytes(l.saddr_v6)?;
    let d6: [u8; 16] = rec.bytes(l.daddr_v6)?;
    let is_v4 = if l.family != ABSENT {
        u16::from_ne_bytes(rec.bytes(l.family)?) == AF_INET as u16
    } else {
        is_v4_mapped(&d6)
    };
    let mut ends = Endpoints {
        family: AF_INET6,
        local: s6,
        remote: d6,
        local_port,
        remote_port,
    };
    if is_v4 {
        let s4: [u8; 4] = rec.bytes(l.saddr)?;
        let d4: [u8; 4] = rec.bytes(l.daddr)?;
        ends.family = AF_INET;
        ends.local = [0; 16];
        ends.remote = [0; 16];
        ends.local[..4].copy_from_slice(&s4);
        ends.remote[..4].copy_from_slice(&d4);
    }
    Ok(ends)
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}
