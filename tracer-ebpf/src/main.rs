//! The kernel programs. Userspace finds each map and global by its item's
//! name: renaming one means renaming it in `tracer_common::names` too
//! (tracer-user's tests compare the two lists).
#![no_std]
#![no_main]
// An atomic add for per-CPU counters: core has no atomic types for BPF.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod count;
mod drop;
mod egress;
mod exits;
mod filter;
mod global;
mod netns;
mod nft_chain;
mod packet;
mod probe;
mod receive_reset;
mod send_reset;
mod send_reset_kprobe;
mod stack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: ring buffer output and stack helpers require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
