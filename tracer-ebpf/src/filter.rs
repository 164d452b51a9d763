//! The user's scope (`--netns`, `--remote`, `--local-port`, `--cause`),
//! applied before anything is counted: out-of-scope RSTs cost a few
//! comparisons and never leave the kernel (a sidecar sees only its own
//! namespace although the programs see the whole host).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use tracer_common::{CidrKey, Filter};

#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    netns: 0,
    causes: 0,
    remote: 0,
    local_port: 0,
};

#[map]
static REMOTE_CIDRS: LpmTrie<CidrKey, u8> = LpmTrie::with_max_entries(256, 0);

#[map]
static LOCAL_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

#[inline(always)]
pub fn get() -> Filter {
    // SAFETY: a read-only global that userspace sets before load.
    unsafe { core::ptr::read_volatile(&FILTER) }
}

/// Whether the namespace is in scope; `netns` is only read when it matters.
#[inline(always)]
pub fn netns_ok(f: &Filter, netns: impl FnOnce() -> u32) -> bool {
    f.netns == 0 || netns() == f.netns
}

#[inline(always)]
pub fn remote_ok(f: &Filter, family: u8, addr: &[u8; 16]) -> bool {
    if f.remote == 0 {
        return true;
    }
    let mut data = [0u8; 17];
    data[0] = family;
    data[1..].copy_from_slice(addr);
    REMOTE_CIDRS.get(Key::new(8 + 128, data)).is_some()
}

#[inline(always)]
pub fn rst_ok(f: &Filter, cause: u8, local_port: u16) -> bool {
    if f.causes != 0 && (cause >= 32 || f.causes & (1 << cause) == 0) {
        return false;
    }
    // SAFETY: a lookup of a plain key.
    f.local_port == 0 || unsafe { LOCAL_PORTS.get(local_port) }.is_some()
}
