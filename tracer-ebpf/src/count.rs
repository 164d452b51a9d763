//! In-kernel counting: the numbers the summary reports come from these maps,
//! never from the event stream, so they stay exact when events are lost.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    },
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{RemoteKey, RemoteStats, RstEvent, TASK_COMM_LEN, stat};

/// Per-cause totals, lost events and remote-map overflows (see `stat`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per (remote IP, cause) counters. Userspace may resize it before load.
#[map]
static REMOTES: PerCpuHashMap<RemoteKey, RemoteStats> = PerCpuHashMap::with_max_entries(65536, 0);

/// Per remote IP, RSTs this host received (`--direction in|both`).
#[map]
static RECEIVED: PerCpuHashMap<RemoteKey, RemoteStats> = PerCpuHashMap::with_max_entries(16384, 0);

/// One record per RST for the live output. Userspace may resize it.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Set to 0 by userspace when nobody reads events (`--summary-only`).
#[unsafe(no_mangle)]
static EMIT_EVENTS: u8 = 1;

/// Bit `c` set: cause `c` is sent in process context, so the current task
/// is its actor (the rule is `Cause::has_actor` in userspace).
#[unsafe(no_mangle)]
static ACTOR_CAUSES: u32 = 0;

/// Events a CPU emits between two wakeups of the reader (set by
/// userspace: a share of the ring per CPU, so that all CPUs together wake
/// it before the ring fills).
#[unsafe(no_mangle)]
static WAKEUP_EVERY: u64 = 1;

/// Events this CPU emitted since it last woke the reader.
#[map]
static SINCE_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Events a CPU sends per second of the causes in `BUDGETED_CAUSES`; 0 =
/// every event. Set for the text output, which prints a few lines a
/// second: under a flood the rest would cross the ring only to be dropped
/// by the reader, and the ring is most of what tracing a RST costs.
#[unsafe(no_mangle)]
static EVENTS_PER_SEC: u64 = 0;

/// Bit `c` set: events of cause `c` carry nothing beyond their line (no
/// actor, owner or stack that the summary needs), so they may be left in
/// the kernel (the rule is `Cause::line_only` in userspace).
#[unsafe(no_mangle)]
static BUDGETED_CAUSES: u32 = 0;

#[repr(C)]
struct Budget {
    window_start_ns: u64,
    sent: u64,
}

#[map]
static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// Whether events are read at all: what only events carry (namespace,
/// stacks, owners) is not worth its helper calls otherwise.
#[inline(always)]
pub fn emitting() -> bool {
    // SAFETY: a read-only global that userspace sets before load.
    unsafe { core::ptr::read_volatile(&EMIT_EVENTS) != 0 }
}

/// Whether `cause` has an actor worth naming.
#[inline(always)]
pub fn has_actor(cause: u8) -> bool {
    // SAFETY: as above.
    in_mask(unsafe { core::ptr::read_volatile(&ACTOR_CAUSES) }, cause)
}

/// Whether bit `cause` is set in one of the cause masks userspace sets
/// (`cause::COUNT` fits in 32 bits).
#[inline(always)]
fn in_mask(mask: u32, cause: u8) -> bool {
    cause < 32 && mask & (1 << cause) != 0
}

/// Names the current task in `ev` when its cause has an actor and events
/// are read (each helper call costs). Written in place: no copy of the
/// name through the stack.
#[inline(always)]
pub fn set_actor(ev: &mut RstEvent, emit: bool) {
    if !(emit && has_actor(ev.cause)) {
        return;
    }
    // SAFETY: plain helper calls; the name goes to the event's own array
    // of exactly the size passed.
    unsafe {
        ev.cgroup_id = bpf_get_current_cgroup_id();
        ev.pid_tgid = bpf_get_current_pid_tgid();
        bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32);
    }
}

const EEXIST: i32 = 17;

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a live map value, 8-byte aligned.
        unsafe { add_one(p) };
    }
}

/// Adds one to a per-CPU counter in a single instruction. A program does
/// not migrate, but it can be interrupted (a softirq's program counting
/// in the same slot) and, where tracepoints leave preemption on (7.x runs
/// raw tracepoint programs preemptible), preempted: a load, add and store
/// would lose the other count. The result is unused, so this is the plain
/// atomic add every kernel's verifier takes (no fetch variant).
///
/// # Safety
/// `p` points to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
unsafe fn add_one(p: *mut u64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    // SAFETY: as the caller promises.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(p, 1) };
}

/// Whether this second's budget has room for `ev`. An event held back is
/// counted as unsent, so the output can say how many it did not show.
/// Decided once per event, last, and only when events are read (`emit`):
/// with events off, or no budget, the verifier then knows the answer and
/// walks one way (a value it cannot know, live across the event's
/// branches, made 5.10's walk explode).
#[inline(always)]
fn within_budget(ev: &RstEvent) -> bool {
    // SAFETY: read-only globals that userspace sets before load.
    let (per_sec, budgeted) = unsafe {
        (
            core::ptr::read_volatile(&EVENTS_PER_SEC),
            core::ptr::read_volatile(&BUDGETED_CAUSES),
        )
    };
    if per_sec == 0 || !in_mask(budgeted, ev.cause) {
        return true;
    }
    let Some(b) = BUDGET.get_ptr_mut(0) else {
        return true;
    };
    let now = ev.ts_ns;
    // SAFETY: this CPU's slot. Where programs run preemptible, two may
    // interleave here: the budget is then off by one, which only moves
    // how many lines are shown; every count stays exact.
    unsafe {
        if now.wrapping_sub((*b).window_start_ns) >= 1_000_000_000 {
            (*b).window_start_ns = now;
            (*b).sent = 0;
        }
        if (*b).sent < per_sec {
            (*b).sent += 1;
            return true;
        }
    }
    bump(stat::UNSENT_EVENTS);
    false
}

/// Counts one RST this host received and, when events are read (`emit`)
/// and the budget has room, emits its event.
#[inline(always)]
pub fn record_received(ev: &RstEvent, emit: bool) {
    bump(stat::RECEIVED_RSTS);
    let key = RemoteKey {
        addr: ev.remote_addr,
        family: ev.family,
        cause: ev.cause,
        _pad: [0; 2],
    };
    if !bump_map(&RECEIVED, &key, ev.ts_ns) {
        bump(stat::RECEIVED_MAP_FULL);
    }
    if emit && within_budget(ev) {
        send(ev);
    }
}

/// Counts one RST and, when events are read (`emit`) and the budget has
/// room, emits its event.
#[inline(always)]
pub fn record(ev: &RstEvent, emit: bool) {
    bump(ev.cause as u32);

    let key = RemoteKey {
        addr: ev.remote_addr,
        family: ev.family,
        cause: ev.cause,
        _pad: [0; 2],
    };
    if !bump_remote(&key, ev.ts_ns) {
        bump(stat::REMOTE_MAP_FULL);
    }
    if emit && within_budget(ev) {
        send(ev);
    }
}

#[inline(always)]
fn send(ev: &RstEvent) {
    // Waking the reader for every event costs an interrupt (in a VM, an
    // exit) per RST: wake it once a batch is waiting; it also polls. Counted
    // per CPU: asking the ring how full it is reads a line the reader
    // writes, on every event.
    let mut flags = BPF_RB_NO_WAKEUP;
    if let Some(n) = SINCE_WAKEUP.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a tracing program does not migrate.
        unsafe {
            *n += 1;
            if *n >= core::ptr::read_volatile(&WAKEUP_EVERY) {
                *n = 0;
                flags = BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    if EVENTS.output::<RstEvent>(ev, flags as u64).is_err() {
        bump(stat::LOST_EVENTS);
    }
}

#[inline(always)]
fn bump_remote(key: &RemoteKey, now: u64) -> bool {
    bump_map(&REMOTES, key, now)
}

/// Counts one event under `key` in a per-CPU map of `RemoteStats`; false
/// when the map is full.
#[inline(always)]
pub fn bump_map<K>(map: &PerCpuHashMap<K, RemoteStats>, key: &K, now: u64) -> bool {
    if let Some(v) = map.get_ptr_mut(key) {
        add(v, now);
        return true;
    }
    let fresh = RemoteStats {
        count: 1,
        first_ns: now,
        last_ns: now,
    };
    match map.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => true,
        // Another CPU inserted the key first; our copy starts at zero.
        Err(e) if e == -EEXIST => match map.get_ptr_mut(key) {
            Some(v) => {
                add(v, now);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

#[inline(always)]
fn add(v: *mut RemoteStats, now: u64) {
    // SAFETY: a pointer to this CPU's copy of a live map value.
    unsafe {
        if (*v).count == 0 {
            (*v).first_ns = now;
        }
        add_one(&raw mut (*v).count);
        (*v).last_ns = now;
    }
}
