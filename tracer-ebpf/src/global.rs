//! Read-only globals that userspace sets before load (offsets, layouts,
//! the scope). The compiler must not fold their initial values into the
//! code, yet each field should be loaded only where it is used: a volatile
//! read of a whole struct loads, and spills, every field on every packet.

/// `g` as userspace set it. To the verifier, each field is still a
/// constant (a load from a frozen read-only map).
#[inline(always)]
pub fn get<T>(g: &'static T) -> &'static T {
    let p: *const T = g;
    // SAFETY: the same pointer read back, opaque to the compiler, so it
    // can't assume the global's initializer.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// Set by userspace for `cargo xtask bench` only (`--debug-empty-programs`):
/// every program returns at once, so the bench can measure what the hooks
/// themselves cost, the floor under rsttrace's own work.
#[unsafe(no_mangle)]
static BENCH_EMPTY: u8 = 0;

/// Whether programs should return at once (see `BENCH_EMPTY`). A constant
/// to the verifier, which walks only the branch taken.
#[inline(always)]
pub fn bench_empty() -> bool {
    // SAFETY: a read-only global that userspace sets before load.
    unsafe { core::ptr::read_volatile(&BENCH_EMPTY) != 0 }
}
