//! In-kernel counting: the numbers the summary reports come from these maps,
//! never from the event stream, so they stay exact when events are lost.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{RemoteKey, RemoteStats, RstEvent, stat};

/// Per-cause totals, lost events and remote-map overflows (see `stat`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per (remote IP, cause) counters. Userspace may resize it before load.
#[map]
static REMOTES: PerCpuHashMap<RemoteKey, RemoteStats> = PerCpuHashMap::with_max_entries(65536, 0);

/// One record per RST for the live output. Userspace may resize it.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Set to 0 by userspace when nobody reads events (`--summary-only`).
#[unsafe(no_mangle)]
static EMIT_EVENTS: u8 = 1;

const EEXIST: i32 = 17;

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; a tracepoint program does not migrate.
        unsafe { *p += 1 };
    }
}

/// Counts one RST and, unless nobody listens, emits its event.
#[inline(always)]
pub fn record(ev: &RstEvent) {
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

    // SAFETY: a read-only global that userspace sets before load.
    if unsafe { core::ptr::read_volatile(&EMIT_EVENTS) } != 0
        && EVENTS.output::<RstEvent>(ev, 0).is_err()
    {
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
        (*v).count += 1;
        (*v).last_ns = now;
    }
}
