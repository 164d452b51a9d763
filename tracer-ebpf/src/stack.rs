//! Stack rules: for reasons the kernel reuses on several paths (TCP_STATE
//! is sent by close with SO_LINGER 0, by connect(AF_UNSPEC) and by sock_diag
//! destroy alike), the functions on the kernel stack tell the paths apart.
//! Userspace resolves the functions to address ranges; the first rule with
//! a frame inside its range decides, so counts in the kernel are by the
//! final cause. Stacks are only taken for ambiguous reasons: they cost.

use aya_ebpf::{
    helpers::generated::bpf_get_stack,
    macros::map,
    maps::{PerCpuArray, StackTrace},
    programs::tracing::StackIdContext,
};
use tracer_common::{MAX_STACK_RULES, STACK_DEPTH, StackRule, StackRules};

#[unsafe(no_mangle)]
static STACK_RULES: StackRules = StackRules::EMPTY;

/// Rules for egress RSTs that have no socket (netfilter, modules).
#[unsafe(no_mangle)]
static EGRESS_STACK_RULES: StackRules = StackRules::EMPTY;

/// The TCP stack's send path for a full socket's own RST; its `cause` is
/// that of a full socket's RST sent without it on the stack (egress.rs).
#[unsafe(no_mangle)]
static FULL_SOCKET_RESET: StackRule = StackRule::NONE;

/// The functions of a netfilter REJECT that answers with an ICMP error,
/// for the ICMP destination unreachables that quote a TCP segment; empty
/// when `netfilter-reject-icmp` is out of scope.
#[unsafe(no_mangle)]
static EGRESS_ICMP_STACK_RULES: StackRules = StackRules::EMPTY;

#[derive(Clone, Copy)]
pub enum Rules {
    SendReset,
    /// The BTF build of the tcp_send_reset program: its rules, with the
    /// own frames of a raw tracepoint.
    SendResetBtf,
    Egress,
    /// An ICMP error at the egress hook: `EGRESS_ICMP_STACK_RULES`.
    EgressIcmp,
    /// signal_generate's raw build (`exits.rs`): stacks only, no rules.
    Signal,
    /// Its classic build.
    SignalTp,
}

/// Frames a raw (or BTF) tracepoint program's stack starts with that are its own:
/// the program (twice on 5.10: its unwinder repeats it) or the program and
/// `bpf_trace_run1`. They lie among the modules and would read as one.
/// Skipping `bpf_trace_run1` too is harmless: no rule names it.
const RAW_TP_OWN_FRAMES: u64 = 2;

impl Rules {
    /// Each program has its own scratch slot: a program never runs twice
    /// at once on a CPU (the kernel skips the nested run and counts it),
    /// but a raw or BTF tracepoint program runs without the classic
    /// tracepoints' shared guard, so a softirq's tcp_send_reset can run in
    /// the middle of the egress program's scan, or the other way round.
    /// The two builds of tcp_send_reset are never loaded together.
    fn scratch(self) -> u32 {
        match self {
            Rules::SendReset | Rules::SendResetBtf => 0,
            Rules::Egress | Rules::EgressIcmp | Rules::Signal | Rules::SignalTp => 1,
        }
    }

    fn skip(self) -> u64 {
        match self {
            // A tracepoint program's stack starts at the traced code.
            Rules::SendReset | Rules::SignalTp => 0,
            Rules::SendResetBtf | Rules::Egress | Rules::EgressIcmp | Rules::Signal => {
                RAW_TP_OWN_FRAMES
            }
        }
    }
}

/// Stacks of the RSTs whose details userspace reads off the stack
/// (netfilter hook and backend, modules, unexplained paths), deduplicated by
/// the kernel.
#[map]
static STACK_TRACES: StackTrace = StackTrace::with_max_entries(4096, 0);

const EEXIST: i32 = -17;
const BPF_F_REUSE_STACKID: u64 = 1 << 10;

/// The stack's id in `STACK_TRACES`, without the program's own frames.
pub fn stack_id<C: StackIdContext>(ctx: &C, which: Rules) -> i32 {
    stack_in(ctx, &STACK_TRACES, which.skip())
}

/// The current stack's id in `map`, -1 when it could not be stored.
#[inline(always)]
fn stack_in<C: StackIdContext>(ctx: &C, map: &StackTrace, flags: u64) -> i32 {
    // Another stack in the same bucket: without taking the bucket over the
    // event would go without its stack (a netfilter RST without its hook,
    // seen with many tests' stacks in one trace). The stack it replaces
    // belongs to an older event, almost always read by now.
    match ctx.get_stackid(map, flags) {
        Ok(id) => id as i32,
        Err(EEXIST) => ctx
            .get_stackid(map, flags | BPF_F_REUSE_STACKID)
            .map_or(-1, |id| id as i32),
        Err(_) => -1,
    }
}

/// 1 with `--user-stacks`: RSTs with an actor carry its user-space stack.
#[unsafe(no_mangle)]
static USER_STACKS: u8 = 0;

/// The actors' user-space stacks (`--user-stacks`), unwound by the kernel
/// through frame pointers. One entry unless the flag sizes it: a stack
/// map's entries are allocated at creation.
#[map]
static USER_STACK_TRACES: StackTrace = StackTrace::with_max_entries(1, 0);

const BPF_F_USER_STACK: u64 = 1 << 8;

/// The user-space stack of the task sending a RST of `cause`, when
/// `--user-stacks` asks for it and the cause has an actor (the task in
/// whose syscall the RST was sent); -1 otherwise.
#[inline(always)]
pub fn user_stack_id<C: StackIdContext>(ctx: &C, cause: u8) -> i32 {
    // SAFETY: a read-only global that userspace sets before load.
    if unsafe { core::ptr::read_volatile(&USER_STACKS) } == 0 || !crate::count::has_actor(cause) {
        return -1;
    }
    stack_in(ctx, &USER_STACK_TRACES, BPF_F_USER_STACK)
}

#[map]
static STACK_BUF: PerCpuArray<[u64; STACK_DEPTH]> = PerCpuArray::with_max_entries(2, 0);

/// Passes the matched cause through memory: each rule that can match is a
/// path with its own constant cause, and the verifier would check the rest
/// of the program once per path (past its limit on kernels where the
/// rules are many); read back, the cause is one unknown value again.
#[map]
static MATCHED: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);

const NO_MATCH: u32 = u32::MAX;

/// The cause of the first rule that matches this stack (and `state`, the
/// TCP state of the socket, 0 when unknown).
pub fn cause_from_stack<C: aya_ebpf::EbpfContext>(ctx: &C, which: Rules, state: u32) -> Option<u8> {
    let found = first_match(ctx, which, state).unwrap_or(NO_MATCH);
    let slot = MATCHED.get_ptr_mut(which.scratch())?;
    // SAFETY: this CPU's slot for this kind, written then read at once.
    let found = unsafe {
        core::ptr::write_volatile(slot, found);
        core::ptr::read_volatile(slot)
    };
    (found != NO_MATCH).then_some(found as u8)
}

/// The cause of a full socket's RST at the egress hook: None when the TCP
/// stack sent it (`FULL_SOCKET_RESET`'s function on the stack, or no
/// stack to say otherwise), else that rule's cause. One range, not the
/// egress rules: a second walk of those past the first would take the
/// verifier over its limit.
pub fn full_socket_reset_cause<C: aya_ebpf::EbpfContext>(ctx: &C) -> Option<u8> {
    let which = Rules::Egress;
    let buf = STACK_BUF.get_ptr_mut(which.scratch())?;
    // SAFETY: buf is a per-CPU scratch of exactly the size passed.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            buf.cast(),
            (STACK_DEPTH * 8) as u32,
            which.skip(),
        )
    };
    if n <= 0 {
        return None;
    }
    let frames = (n as usize / 8).min(STACK_DEPTH);
    // SAFETY: a read-only global that userspace sets before load.
    let rule = unsafe { core::ptr::read_volatile(&FULL_SOCKET_RESET) };
    if rule.start == 0 || on_stack(buf, frames, rule.start, rule.end) {
        return None;
    }
    Some(rule.cause as u8)
}

#[inline(always)]
fn first_match<C: aya_ebpf::EbpfContext>(ctx: &C, which: Rules, state: u32) -> Option<u32> {
    let buf = STACK_BUF.get_ptr_mut(which.scratch())?;
    // SAFETY: buf is a per-CPU scratch of exactly the size passed.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            buf.cast(),
            (STACK_DEPTH * 8) as u32,
            which.skip(),
        )
    };
    if n <= 0 {
        return None;
    }
    let frames = (n as usize / 8).min(STACK_DEPTH);
    let rules = match which {
        Rules::SendReset | Rules::SendResetBtf => &STACK_RULES,
        Rules::Egress | Rules::Signal | Rules::SignalTp => &EGRESS_STACK_RULES,
        Rules::EgressIcmp => &EGRESS_ICMP_STACK_RULES,
    };
    // SAFETY: a read-only global that userspace sets before load.
    let count = unsafe { core::ptr::read_volatile(&rules.count) } as usize;
    for r in 0..MAX_STACK_RULES {
        if r >= count {
            break;
        }
        let rule = rules.rules.get(r)?;
        // SAFETY: as above.
        let rule = unsafe { core::ptr::read_volatile(rule) };
        if rule.state_mask != 0 && (state >= 32 || rule.state_mask & (1 << state) == 0) {
            continue;
        }
        // Two scans that stop at the first hit: a single scan tracking both
        // flags multiplies the verifier's states past its limit.
        if !on_stack(buf, frames, rule.start, rule.end) {
            continue;
        }
        if rule.also_start != 0 && !on_stack(buf, frames, rule.also_start, rule.also_end) {
            continue;
        }
        if matches!(which, Rules::EgressIcmp)
            && let Some(at) = MATCHED_AT.get_ptr_mut(0)
        {
            // SAFETY: this CPU's slot.
            unsafe { *at = rule.start };
        }
        return Some(rule.cause);
    }
    None
}

/// Whether `EGRESS_ICMP_STACK_RULES` has rules: checked before a stack
/// is taken.
#[inline(always)]
pub fn icmp_rules() -> bool {
    // SAFETY: a read-only global that userspace sets before load.
    unsafe { core::ptr::read_volatile(&EGRESS_ICMP_STACK_RULES.count) != 0 }
}

/// The function of the `Rules::EgressIcmp` rule that matched last on
/// this CPU: where the ICMP error was decided (the drop's location).
/// Kept as it matches: an index into the rules, read back afterwards,
/// lost its bound to 5.10's verifier.
#[map]
static MATCHED_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn matched_at() -> u64 {
    MATCHED_AT.get(0).copied().unwrap_or(0)
}

/// Whether one of the first `frames` return addresses is in [start, end).
///
/// The index goes through memory on each turn: otherwise LLVM turns the
/// loop into a moving pointer and a separate down-counter, which 5.10's
/// verifier can't relate, and it refuses the read as out of bounds.
#[inline(always)]
fn on_stack(buf: *const [u64; STACK_DEPTH], frames: usize, start: u64, end: u64) -> bool {
    let mut next = 0usize;
    for _ in 0..STACK_DEPTH {
        // SAFETY: a local variable.
        let i = unsafe { core::ptr::read_volatile(&next) };
        if i >= frames || i >= STACK_DEPTH {
            break;
        }
        // SAFETY: i < STACK_DEPTH, inside the scratch buffer.
        let ip = unsafe { (*buf)[i] };
        if ip >= start && ip < end {
            return true;
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut next, i + 1) };
    }
    false
}
