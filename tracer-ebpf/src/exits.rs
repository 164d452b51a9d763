//! Who ended a process that resets its connections as it exits: the last
//! fatal signal generated for each process (`signal:signal_generate`, whose
//! sender is the current task) and the OOM killer's choice
//! (`oom:mark_victim`), kept by target pid for userspace to read when the
//! exiting process's RSTs arrive. The RST side (`count::send`) marks RSTs
//! sent by an exiting task with its exit code.
//!
//! signal_generate fires for every signal on the host: the raw build looks
//! at the signal number and the result in its arguments and returns before
//! anything else for every signal that does not end a process or was not
//! queued; the classic build (kernels where raw tracepoint programs run
//! preemptible) pays for its record first.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{map, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext},
};
use tracer_common::{
    ABSENT, FATAL_SIGNALS, KillRecord, SIGNAL_DELIVERED, SIGNAL_RESULT_ARG, SIGNAL_TASK_ARG,
    SignalLayout, TASK_COMM_LEN, TaskOffsets,
};

use crate::{packet, stack};

#[unsafe(no_mangle)]
pub static TASK_OFFSETS: TaskOffsets = TaskOffsets::UNSET;

#[unsafe(no_mangle)]
static SIGNAL_LAYOUT: SignalLayout = SignalLayout::UNSET;

/// The last fatal signal per target process. LRU: a host that kills many
/// processes keeps the recent ones, which are those whose RSTs are read.
#[map]
static KILLS: LruHashMap<u32, KillRecord> = LruHashMap::with_max_entries(4096, 0);

/// Whether `sig` ends a process by default.
#[inline(always)]
fn fatal(sig: u32) -> bool {
    sig < 32 && FATAL_SIGNALS & (1 << sig) != 0
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    if crate::global::bench_empty() {
        return 0;
    }
    // Arguments are (sig, info, task, group, result); ints: their 32 bits.
    let sig = ctx.arg::<u64>(0) as u32;
    if !fatal(sig) || ctx.arg::<u64>(SIGNAL_RESULT_ARG) as u32 != SIGNAL_DELIVERED {
        return 0;
    }
    let o = crate::global::get(&TASK_OFFSETS);
    if o.tgid == ABSENT {
        return 0;
    }
    let task: u64 = ctx.arg(SIGNAL_TASK_ARG);
    if handled(task, sig, o) {
        return 0;
    }
    let Ok(tgid) = packet::read::<u32>(task + u64::from(o.tgid)) else {
        return 0;
    };
    note(&ctx, sig, tgid, stack::Rules::Signal);
    0
}

/// Whether `task` has a handler for `sig`: then the signal does not end
/// it (SIGKILL has none), and a program whose processes signal each other
/// costs two reads per signal, not a map update.
#[inline(always)]
fn handled(task: u64, sig: u32, o: &TaskOffsets) -> bool {
    if o.sighand == ABSENT || o.action_size == ABSENT || sig == 0 || sig > 64 {
        return false;
    }
    let Ok(sighand) = packet::read::<u64>(task + u64::from(o.sighand)) else {
        return false;
    };
    if sighand == 0 {
        return false;
    }
    let at = sighand
        + u64::from(o.action)
        + u64::from(sig - 1) * u64::from(o.action_size)
        + u64::from(o.handler);
    // SIG_DFL is 0; SIG_IGN's signals are not queued (their result is
    // not DELIVERED).
    packet::read::<u64>(at).is_ok_and(|h| h != 0)
}

/// The classic build: the record names the target thread's pid (for
/// kill(2) the process's leader, whose pid is the process's).
#[tracepoint]
pub fn signal_generate_tp(ctx: TracePointContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let l = crate::global::get(&SIGNAL_LAYOUT);
    if l.sig == ABSENT || l.pid == ABSENT || l.result == ABSENT {
        return 0;
    }
    // SAFETY (the three reads): offsets from this tracepoint's own format
    // file, checked against the record's size by the kernel.
    let Ok(sig) = (unsafe { ctx.read_at::<u32>(l.sig as usize) }) else {
        return 0;
    };
    if !fatal(sig) {
        return 0;
    }
    let Ok(result) = (unsafe { ctx.read_at::<u32>(l.result as usize) }) else {
        return 0;
    };
    let Ok(pid) = (unsafe { ctx.read_at::<u32>(l.pid as usize) }) else {
        return 0;
    };
    if result == SIGNAL_DELIVERED {
        note(&ctx, sig, pid, stack::Rules::SignalTp);
    }
    0
}

/// Keeps who sent `sig` to `target`, and from where. The stack (the
/// costly part) only for a process's signals to itself: a BPF program's
/// `bpf_send_signal` makes its victim the sender, and only the stack
/// names the program; another process's signal names its sender alone.
#[inline(always)]
fn note<C: StackIdContext>(ctx: &C, sig: u32, target: u32, rules: stack::Rules) {
    // SAFETY: plain helper call.
    let sender = unsafe { bpf_get_current_pid_tgid() };
    let stack_id = if (sender >> 32) as u32 == target {
        stack::stack_id(ctx, rules)
    } else {
        -1
    };
    let _ = KILLS.insert(target, record(sender, sig, stack_id, 0), 0);
}

/// A record of `sig` sent now by the current task (`sender`).
#[inline(always)]
fn record(sender: u64, sig: u32, stack_id: i32, oom: u32) -> KillRecord {
    let mut rec = KillRecord {
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        sender_pid_tgid: sender,
        sig,
        stack_id,
        oom,
        _pad: 0,
        comm: [0; TASK_COMM_LEN],
    };
    // SAFETY: the record's own array, of exactly the size passed.
    unsafe { bpf_get_current_comm(rec.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) };
    rec
}

/// The OOM killer chose `pid`: it sent SIGKILL just before (noted above,
/// sent by whichever task ran out of memory), marked here as the OOM's.
#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    if crate::global::bench_empty() {
        return 0;
    }
    let l = crate::global::get(&SIGNAL_LAYOUT);
    if l.victim_pid == ABSENT {
        return 0;
    }
    // SAFETY: an offset from this tracepoint's own format file.
    let Ok(pid) = (unsafe { ctx.read_at::<u32>(l.victim_pid as usize) }) else {
        return 0;
    };
    if let Some(rec) = KILLS.get_ptr_mut(pid) {
        // SAFETY: a live map value.
        unsafe { (*rec).oom = 1 };
        return 0;
    }
    // SIGKILL: what the OOM killer sends.
    // SAFETY: plain helper call.
    let sender = unsafe { bpf_get_current_pid_tgid() };
    let _ = KILLS.insert(pid, record(sender, 9, -1, 1), 0);
    0
}
