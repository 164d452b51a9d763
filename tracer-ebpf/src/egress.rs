//! Every RST that leaves through a device, whoever built it: the
//! `net_dev_queue` tracepoint sees all devices of all namespaces at once
//! (tc would need a hook per interface per namespace, created as containers
//! come and go). Packets that are not TCP RSTs return after a few reads.
//!
//! Every packet the host sends passes here, so the program comes in two
//! builds of one body: a BTF tracepoint reading `sk_buff` and `sock` with
//! plain loads, and a raw tracepoint that probe-reads them, for kernels
//! whose BTF or verifier refuses the first (userspace picks).
//!
//! An ICMP (ICMPv6) destination unreachable that quotes a TCP segment,
//! sent by a netfilter REJECT (its functions on the stack), is counted
//! with the drops as `netfilter-reject-icmp`: nft's and fail2ban's default
//! `reject` refuses TCP so, with no RST. Other packets pay one compare of
//! their protocol byte for it; ICMP errors a stack read and scan.
//!
//! The TCP stack's own RSTs were already counted by `tcp_send_reset`; here
//! they only count for coverage. What remains is what the TCP stack never
//! saw: netfilter rejects (no socket, `nf_send_reset` on the stack), raw and
//! packet sockets, and kernel modules.
//!
//! A packet of a full TCP socket stops at its socket, before its headers
//! are read (most packets a host sends are such, and reading the headers
//! takes a helper call): the TCP stack sends a RST on a full socket's own
//! packet only from `tcp_send_active_reset`, which `tcp_send_reset` sees
//! on every kernel, and counts for coverage there. From 6.10, where
//! `tcp_send_reset` sees every RST the TCP stack sends, the stack's other
//! packets (control, time-wait and request sockets) stop at their socket
//! too, and `tcp_send_reset` counts all of its RSTs for coverage.
//!
//! Except where a tc or tcx egress program may run: net_dev_queue fires
//! after them, and a program may have turned the stack's segment into a
//! RST (or built one in its place). A full socket's segment is read on
//! only when its device has egress programs (one more load of the
//! device's egress pointer, NULL on every device without them); a RST
//! there is the stack's own when its send path for a full socket
//! (`tcp_send_active_reset`) is on the kernel stack, else a program's.
//! The stack's other sockets (time-wait, request, control) are not
//! looked at again: their RSTs come from the stack's no-socket paths.

use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext, tracing::StackIdContext},
};
use tracer_common::{
    ABSENT, Cause, DropCause, DropKey, EgressOffsets, RULE_TCP_STACK, RstEvent, TASK_COMM_LEN,
    source, stat, tcp_state,
};

use crate::{
    count, drop, filter, netns, nft_chain,
    packet::{self, Direct, Mem, Probe},
    stack,
};

#[unsafe(no_mangle)]
pub static EGRESS_OFFSETS: EgressOffsets = EgressOffsets::UNSET;

/// 1 when `tcp_send_reset` is attached and sees every RST the TCP stack
/// sends (6.10+): it then counts them for coverage (see the module's
/// comment).
#[unsafe(no_mangle)]
static STACK_COUNTED_AT_SEND: u8 = 0;

#[inline(always)]
pub fn stack_counted_at_send() -> bool {
    // SAFETY: a read-only global that userspace sets before load; a
    // constant to the verifier, which walks only the branch taken.
    unsafe { core::ptr::read_volatile(&STACK_COUNTED_AT_SEND) != 0 }
}

/// The destructor of the TCP stack's replies on behalf of a full socket
/// (`cause::REPLY_DESTRUCTOR`), 0 when unknown.
#[unsafe(no_mangle)]
static REPLY_DESTRUCTOR: u64 = 0;

#[inline(always)]
fn reply_destructor() -> u64 {
    // SAFETY: a read-only global that userspace sets before load.
    unsafe { core::ptr::read_volatile(&REPLY_DESTRUCTOR) }
}

/// The cause of a RST sent through a user's raw or packet socket, set by
/// userspace from its cause rules.
#[unsafe(no_mangle)]
static USER_SOCKET_CAUSE: u8 = Cause::Unknown as u8;

/// 1 when `netfilter-reject-icmp` is in scope. Its rules are loaded for
/// `netfilter-drop` too: a drop count must leave out the segments an ICMP
/// reject answered, counted or not.
#[unsafe(no_mangle)]
static ICMP_REJECTS_COUNTED: u8 = 0;

/// The last netfilter reject on this CPU: the segment it answered is
/// freed right after with NETFILTER_DROP, and is not a silent drop.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastReject {
    pub remote: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    pub valid: u32,
}

#[map]
pub static LAST_REJECT: PerCpuArray<LastReject> = PerCpuArray::with_max_entries(1, 0);

const IPPROTO_TCP: u8 = 6;
const TCP_RST: u8 = 0x04;
const AF_PACKET: u16 = 17;
const SOCK_STREAM: u16 = 1;
const SOCK_RAW: u16 = 3;

#[btf_tracepoint(function = "net_dev_queue")]
pub fn net_dev_queue_btf(ctx: BtfTracePointContext) -> i32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    match try_net_dev_queue::<Direct, _>(&ctx, skb) {
        Ok(r) => r,
        Err(r) => r,
    }
}

#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn net_dev_queue(ctx: RawTracePointContext) -> i32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    match try_net_dev_queue::<Probe, _>(&ctx, skb) {
        Ok(r) => r,
        Err(r) => r,
    }
}

enum Origin {
    /// Sent by the TCP stack without a full socket of its own (time-wait,
    /// request and control sockets): already attributed by tcp_send_reset.
    TcpStack,
    /// A full TCP socket: the stack's own RST, or a program's at the
    /// device's egress.
    Full,
    /// A user's raw or packet socket.
    Socket,
    /// No socket: decided by the stack.
    NoSocket,
}

/// Whether `sk` is a full TCP socket (see the module's comment).
#[inline(always)]
fn full_socket<M: Mem>(sk: u64, o: &EgressOffsets) -> Result<bool, i32> {
    if sk == 0 {
        return Ok(false);
    }
    let family: u16 = M::read(sk + u64::from(o.sk_family))?;
    if family == AF_PACKET {
        return Ok(false);
    }
    let state: u8 = M::read(sk + u64::from(o.sk_state))?;
    if state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
        return Ok(false);
    }
    let sk_type: u16 = M::read(sk + u64::from(o.sk_type))?;
    Ok(sk_type == SOCK_STREAM)
}

/// The device `skb` leaves through when tc or tcx egress programs may run
/// on it (its egress pointer is set), else 0.
#[inline(always)]
fn device_with_egress_programs<M: Mem>(skb: u64, o: &EgressOffsets) -> Result<u64, i32> {
    if o.dev_egress == ABSENT {
        return Ok(0);
    }
    let dev: u64 = M::read(skb + u64::from(o.skb_dev))?;
    if dev == 0 {
        return Ok(0);
    }
    let programs: u64 = M::read(dev + u64::from(o.dev_egress))?;
    Ok(if programs == 0 { 0 } else { dev })
}

#[inline(always)]
fn origin<M: Mem>(sk: u64, o: &EgressOffsets) -> Result<Origin, i32> {
    if sk == 0 {
        return Ok(Origin::NoSocket);
    }
    let family: u16 = M::read(sk + u64::from(o.sk_family))?;
    if family == AF_PACKET {
        return Ok(Origin::Socket);
    }
    // Time-wait and request sockets are only a `sock_common`: check the
    // state before reading fields of a full socket.
    let state: u8 = M::read(sk + u64::from(o.sk_state))?;
    if state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
        return Ok(Origin::TcpStack);
    }
    let sk_type: u16 = M::read(sk + u64::from(o.sk_type))?;
    if sk_type == SOCK_STREAM {
        // Stopped before the parse unless its device has egress programs
        // (see try_net_dev_queue).
        return Ok(Origin::Full);
    }
    if sk_type == SOCK_RAW {
        let protocol: u16 = M::read(sk + u64::from(o.sk_protocol))?;
        if protocol == u16::from(IPPROTO_TCP) {
            // The TCP stack answers without a full socket through its
            // per-CPU control socket, a raw TCP socket that no file holds.
            let socket: u64 = M::read(sk + u64::from(o.sk_socket))?;
            let file: u64 = if socket == 0 {
                0
            } else {
                M::read(socket + u64::from(o.socket_file))?
            };
            if file == 0 {
                return Ok(Origin::TcpStack);
            }
        }
    }
    Ok(Origin::Socket)
}

/// A RST of the TCP stack seen leaving. Where tcp_send_reset counts the
/// stack's RSTs for coverage (6.10+), only those without a socket get this
/// far (IPv6 replies leave with none): they were counted at send already,
/// and counting them here too made each IPv6 RST two.
#[inline(always)]
fn count_tcp_stack() {
    if !stack_counted_at_send() {
        count::bump(stat::EGRESS_RSTS);
        count::bump(stat::EGRESS_TCP_STACK);
    }
}

#[inline(always)]
fn try_net_dev_queue<M: Mem, C: StackIdContext>(ctx: &C, skb: u64) -> Result<i32, i32> {
    let o = crate::global::get(&EGRESS_OFFSETS);
    if o.skb_sk == ABSENT {
        return Ok(0);
    }
    let sk: u64 = M::read(skb + u64::from(o.skb_sk))?;
    // A yes or no, not the origin: nothing of it stays live across the
    // header parse, so the verifier walks that once, not once per origin
    // (5.10's gave up on the BTF build otherwise). Where tcp_send_reset
    // counts the stack's RSTs, every socket of the stack stops here (a
    // full socket is one of them: the same first loads decide it).
    let (stop, full) = if stack_counted_at_send() {
        match origin::<M>(sk, o)? {
            Origin::TcpStack => (true, false),
            Origin::Full => (true, true),
            _ => (false, false),
        }
    } else {
        let full = full_socket::<M>(sk, o)?;
        (full, full)
    };
    // Only a device with egress programs can send a full socket's segment
    // as a RST the stack did not make (see the module's comment).
    if stop && !(full && device_with_egress_programs::<M>(skb, o)? != 0) {
        return Ok(0);
    }
    let Some(p) = packet::tcp::<M, true>(skb, o, TCP_RST)? else {
        return Ok(0);
    };
    if p.quoted != 0 {
        return reject_icmp::<M, _>(ctx, skb, &p);
    }
    let f = filter::get();
    if !filter::remote_ok(f, p.family, &p.daddr) || !filter::port_ok(f, p.sport) {
        return Ok(0);
    }
    let origin = origin::<M>(sk, o)?;
    // The namespace from the device, which every packet has here (a
    // reject's RST has no socket; drop.rs, before the device is set, reads
    // the socket, else the route); read for a --netns scope, else with the
    // event.
    let read_ns = || netns::of::<M>(0, skb);
    let Some(scoped_ns) = filter::netns(f, false, read_ns) else {
        return Ok(0);
    };
    let mut ifindex = 0u32;
    let (cause, stack_id) = match origin {
        // Here only because its device has egress programs.
        Origin::Full => {
            // The stack's reply on behalf of this socket, counted at send.
            let destructor: u64 = M::read(skb + u64::from(o.skb_destructor))?;
            if destructor != 0 && destructor == reply_destructor() {
                count_tcp_stack();
                return Ok(0);
            }
            let Some(cause) = stack::full_socket_reset_cause(ctx) else {
                // The stack's own, counted at send.
                return Ok(0);
            };
            let dev: u64 = M::read(skb + u64::from(o.skb_dev))?;
            ifindex = M::read(dev + u64::from(o.dev_ifindex))?;
            (cause, -1)
        }
        Origin::TcpStack => {
            count_tcp_stack();
            return Ok(0);
        }
        // SAFETY: a read-only global that userspace sets before load.
        Origin::Socket => (unsafe { core::ptr::read_volatile(&USER_SOCKET_CAUSE) }, -1),
        Origin::NoSocket => {
            match stack::cause_from_stack(ctx, stack::Rules::Egress, 0) {
                Some(c) if u32::from(c) == RULE_TCP_STACK => {
                    count_tcp_stack();
                    return Ok(0);
                }
                // The stack names the netfilter hook and backend.
                Some(c) => (c, stack::stack_id(ctx, stack::Rules::Egress)),
                None => {
                    count::bump(stat::EGRESS_UNEXPLAINED);
                    (
                        Cause::Unknown as u8,
                        stack::stack_id(ctx, stack::Rules::Egress),
                    )
                }
            }
        }
    };
    count::bump(stat::EGRESS_RSTS);
    if !filter::cause_ok(f, cause) {
        return Ok(0);
    }
    let nft_chain = if cause == Cause::NetfilterReject as u8 {
        if let Some(last) = LAST_REJECT.get_ptr_mut(0) {
            // SAFETY: this CPU's slot.
            unsafe {
                *last = LastReject {
                    remote: p.daddr,
                    remote_port: p.dport,
                    local_port: p.sport,
                    valid: 1,
                };
            }
        }
        // Taken whether or not the event is sent: a chain left in its slot
        // could name the wrong rule later.
        nft_chain::take_reject()
    } else {
        0
    };
    let rst = count::Counted {
        ts_ns: count::coarse_now(),
        remote: p.daddr,
        family: p.family,
        cause,
    };
    count::record(&rst, false, count::emitting(), || RstEvent {
        ts_ns: 0,
        skaddr: sk,
        cgroup_id: 0,
        pid_tgid: 0,
        reason: ABSENT,
        state: 0,
        netns: filter::netns_or_read(scoped_ns, read_ns),
        stack_id,
        sk_ino: 0,
        nft_chain,
        // Outgoing: the source is this host.
        local_addr: p.saddr,
        remote_addr: p.daddr,
        local_port: p.sport,
        remote_port: p.dport,
        family: p.family,
        cause,
        source: if ifindex != 0 {
            source::EGRESS_BPF
        } else {
            source::EGRESS
        },
        _pad: 0,
        comm: [0; TASK_COMM_LEN],
        exit: 0,
        // A program's RST has no actor: the task is whoever sent the segment.
        user_stack: if ifindex != 0 {
            -1
        } else {
            stack::user_stack_id(ctx, cause)
        },
        ifindex,
        _pad2: 0,
    });
    Ok(0)
}

/// An ICMP destination unreachable quoting the TCP segment `q` (as that
/// segment came in: its source is the remote). A netfilter REJECT's when
/// one of its functions is on the stack (the error leaves within the
/// reject's call); any other (a router's, a failed neighbour's) is not
/// counted.
#[inline(always)]
fn reject_icmp<M: Mem, C: StackIdContext>(ctx: &C, skb: u64, q: &packet::Tcp) -> Result<i32, i32> {
    if !stack::icmp_rules() {
        return Ok(0);
    }
    if stack::cause_from_stack(ctx, stack::Rules::EgressIcmp, 0).is_none() {
        return Ok(0);
    }
    // The answered segment is freed right after with NETFILTER_DROP: not
    // a silent drop (drop.rs), in scope here or not (drop.rs has no port
    // scope).
    if let Some(last) = LAST_REJECT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            *last = LastReject {
                remote: q.saddr,
                remote_port: q.sport,
                local_port: q.dport,
                valid: 1,
            };
        }
    }
    // SAFETY: a read-only global that userspace sets before load.
    if unsafe { core::ptr::read_volatile(&ICMP_REJECTS_COUNTED) } == 0 {
        return Ok(0);
    }
    let f = filter::get();
    if !filter::remote_ok(f, q.family, &q.saddr) || !filter::port_ok(f, q.dport) {
        return Ok(0);
    }
    // Rejects are rare next to traffic: the namespace is always read (it
    // names the ruleset to match).
    let Some(ns) = filter::netns(f, true, || netns::of::<M>(0, skb)) else {
        return Ok(0);
    };
    drop::count_drop(&DropKey {
        addr: q.saddr,
        family: q.family,
        cause: DropCause::NetfilterRejectIcmp as u8,
        local_port: 0,
        netns: ns,
        location: stack::matched_at(),
    });
    Ok(0)
}
