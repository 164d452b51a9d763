//! In-kernel counting: the numbers the summary reports come from these maps,
//! never from the event stream, so they stay exact when events are lost.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_jiffies64, bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{
    ABSENT, Budget, EXITING, PF_EXITING, RemoteKey, RemoteStats, RstEvent, TASK_COMM_LEN, stat,
};

/// Per-cause counts of the RSTs `REMOTES` had no room for, lost events,
/// coverage and the other slots of `stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per (remote IP, cause) counters: with the cause slots of `STATS`, the
/// cause totals too (`record`). Never deleted from, so the sums are exact.
/// Userspace may resize it before load.
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

#[map]
static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's last reading of the boot clock, and the jiffy it was taken in.
#[repr(C)]
struct Reading {
    jiffies: u64,
    ns: u64,
}

#[map]
static CLOCK: PerCpuArray<Reading> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn exact_now() -> u64 {
    // SAFETY: plain helper call with no arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The boot clock to the jiffy (1 to 10 ms): what counts are stamped with
/// (a remote's first and last RST, the budget's second; events are stamped
/// exactly when sent). Reading the clock is a helper call and a clocksource
/// read per RST; the jiffy counter is one load (the verifier inlines
/// `bpf_jiffies64` on 64-bit JITs, and allows it in tracing programs since
/// 5.9), so the clock is read once per jiffy per CPU.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: plain helper call with no arguments.
    let jiffy = unsafe { bpf_jiffies64() };
    let Some(r) = CLOCK.get_ptr_mut(0) else {
        return exact_now();
    };
    // SAFETY: this CPU's slot. A program that interrupts this one between
    // the two stores finds the old jiffy (the reading goes first) and
    // reads the clock itself; one that reads between the two loads takes
    // a newer reading. Either way the stamp is a real time of this jiffy
    // or later, never an old one.
    unsafe {
        if core::ptr::read_volatile(&raw const (*r).jiffies) == jiffy {
            return core::ptr::read_volatile(&raw const (*r).ns);
        }
        let ns = exact_now();
        core::ptr::write_volatile(&raw mut (*r).ns, ns);
        core::ptr::write_volatile(&raw mut (*r).jiffies, jiffy);
        ns
    }
}

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
/// (`Cause::COUNT` fits in 32 bits).
#[inline(always)]
pub fn in_mask(mask: u32, cause: u8) -> bool {
    cause < 32 && mask & (1 << cause) != 0
}

/// Names the current task in `ev` when its cause has an actor (each
/// helper call costs). Written in place: no copy of the name through the
/// stack.
#[inline(always)]
fn set_actor(ev: &mut RstEvent) {
    if !has_actor(ev.cause) {
        return;
    }
    // SAFETY: plain helper calls; the name goes to the event's own array
    // of exactly the size passed.
    unsafe {
        ev.cgroup_id = bpf_get_current_cgroup_id();
        ev.pid_tgid = bpf_get_current_pid_tgid();
        bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32);
    }
    set_exit(ev);
}

/// Marks `ev` when its actor is exiting (PF_EXITING: in `do_exit`, where
/// a killed or exiting process closes its sockets), with its exit code:
/// the signal that ended it, or its exit status. Userspace looks up who
/// sent that signal (`exits.rs`).
#[inline(always)]
fn set_exit(ev: &mut RstEvent) {
    let o = crate::global::get(&crate::exits::TASK_OFFSETS);
    if o.flags == ABSENT || o.exit_code == ABSENT {
        return;
    }
    // SAFETY: plain helper call; the task is read with probe reads.
    let task = unsafe { bpf_get_current_task() };
    let flags: u32 = crate::packet::read(task + u64::from(o.flags)).unwrap_or(0);
    if flags & PF_EXITING == 0 {
        return;
    }
    let code: u32 = crate::packet::read(task + u64::from(o.exit_code)).unwrap_or(0);
    ev.exit = EXITING | (code & 0xffff);
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
fn within_budget(rst: &Counted) -> bool {
    // SAFETY: read-only globals that userspace sets before load.
    let (per_sec, budgeted) = unsafe {
        (
            core::ptr::read_volatile(&EVENTS_PER_SEC),
            core::ptr::read_volatile(&BUDGETED_CAUSES),
        )
    };
    if per_sec == 0 || !in_mask(budgeted, rst.cause) {
        return true;
    }
    let Some(b) = BUDGET.get_ptr_mut(0) else {
        return true;
    };
    let now = rst.ts_ns;
    // SAFETY: this CPU's slot. Plain adds, not atomic ones (a locked add
    // per RST was a measurable part of the flood's cost): where two of
    // rsttrace's programs interleave on a CPU (one in a softirq over one
    // in a task, or preempted ones where programs run preemptible), the
    // budget may be off by one and a "N more" note one short. That moves
    // only what the live output says; every count stays exact.
    unsafe {
        if now.wrapping_sub((*b).window_start_ns) >= 1_000_000_000 {
            (*b).window_start_ns = now;
            (*b).sent = 0;
        }
        if (*b).sent < per_sec {
            (*b).sent += 1;
            return true;
        }
        (*b).unsent += 1;
    }
    false
}

/// What counting a RST takes. Everything else its event carries is read
/// only when the event is sent (`record`'s `event`).
pub struct Counted {
    /// `coarse_now()`.
    pub ts_ns: u64,
    pub remote: [u8; 16],
    pub family: u8,
    pub cause: u8,
}

impl Counted {
    #[inline(always)]
    fn key(&self, at_send: bool) -> RemoteKey {
        RemoteKey {
            addr: self.remote,
            family: self.family,
            cause: self.cause,
            at_send: u8::from(at_send),
            _pad: 0,
        }
    }
}

/// Counts one RST this host received and, when events are read (`emit`)
/// and the budget has room, builds and emits its event. One atomic add, as
/// in `record`: the total is the map's entries plus its full slot.
#[inline(always)]
pub fn record_received(rst: &Counted, emit: bool, event: impl FnOnce() -> RstEvent) {
    if !bump_map(&RECEIVED, &rst.key(false), rst.ts_ns) {
        bump(stat::RECEIVED_MAP_FULL);
    }
    if emit && within_budget(rst) {
        send(event);
    }
}

/// Counts one RST and, when events are read (`emit`) and the budget has
/// room, builds and emits its event. Built only then: under a flood the
/// text output sends a few events a second and --summary-only none, and
/// building one anyway (its namespace, 136 bytes of stores, a copy) was a
/// good part of tcp_send_reset's time per RST (bpf_stats on 6.18, text
/// output: 180-190 ns a run before this, `coarse_now` and `AT_SEND`;
/// 130-145 after).
///
/// One atomic add per RST: its remote's entry, whose key names its cause,
/// counts it for the cause's total too; the cause's slot counts it only
/// when the map is full (see `stat`). `at_send`: tcp_send_reset where it
/// also counts the stack's RSTs for coverage (6.10+): its entries and
/// slots are marked so (`stat::AT_SEND`), and count for coverage as well.
#[inline(always)]
pub fn record(rst: &Counted, at_send: bool, emit: bool, event: impl FnOnce() -> RstEvent) {
    if !bump_remote(&rst.key(at_send), rst.ts_ns) {
        bump(stat::REMOTE_MAP_FULL);
        bump(if at_send { stat::AT_SEND } else { 0 } + u32::from(rst.cause));
    }
    if emit && within_budget(rst) {
        send(event);
    }
}

/// Builds an event in its place on the ring (no copy through the stack,
/// which a program that parses packets has little of), stamps it with the
/// exact time, names its actor, and sends it.
#[inline(always)]
fn send(event: impl FnOnce() -> RstEvent) {
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
    let Some(mut entry) = EVENTS.reserve::<RstEvent>(0) else {
        bump(stat::LOST_EVENTS);
        return;
    };
    let ev = entry.write(event());
    ev.ts_ns = exact_now();
    set_actor(ev);
    entry.submit(flags as u64);
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
