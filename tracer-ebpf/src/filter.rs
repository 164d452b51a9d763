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
pub fn get() -> &'static Filter {
    crate::global::get(&FILTER)
}

/// The namespace, read only when needed now (a --netns scope, or
/// `always`); `None` when it is out of scope, `Some(0)` when not read.
#[inline(always)]
pub fn netns(f: &Filter, always: bool, read: impl FnOnce() -> u32) -> Option<u32> {
    if f.netns == 0 && !always {
        return Some(0);
    }
    let ns = read();
    (f.netns == 0 || ns == f.netns).then_some(ns)
}

/// An event's namespace: the one `netns` read, else read now.
#[inline(always)]
pub fn netns_or_read(scoped: u32, read: impl FnOnce() -> u32) -> u32 {
    match scoped {
        0 => read(),
        ns => ns,
    }
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
pub fn cause_ok(f: &Filter, cause: u8) -> bool {
    f.causes == 0 || (cause < 32 && f.causes & (1 << cause) != 0)
}

#[inline(always)]
pub fn port_ok(f: &Filter, local_port: u16) -> bool {
    // SAFETY: a lookup of a plain key.
    f.local_port == 0 || unsafe { LOCAL_PORTS.get(local_port) }.is_some()
}
