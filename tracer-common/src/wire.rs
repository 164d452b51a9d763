//! What the kernel programs write back: events, the keys and values of the
//! counting maps, chain names.

#[allow(unused_imports)]
use super::*;

/// Bytes kept of a table's or chain's name (nftables allows 256).
pub const NFT_NAME_LEN: usize = 64;

/// The names of an nftables base chain, by the chain's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NftChainNames {
    pub table: [u8; NFT_NAME_LEN],
    pub chain: [u8; NFT_NAME_LEN],
}

/// Key of the silent-drop counters: remote address, drop cause and the
/// code address that dropped (symbolized by userspace: nft, xtables, a
/// module, `__netif_receive_skb_core` for tc, `tcp_v4_rcv` for a full
/// accept queue).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub addr: [u8; 16],
    pub family: u8,
    /// `DropCause` id.
    pub cause: u8,
    /// The listening port of a `listen-overflow` drop, else 0.
    pub local_port: u16,
    /// Network namespace inode (names the rule's author), 0 if unknown.
    pub netns: u32,
    pub location: u64,
}

/// Where an event was observed.
pub mod source {
    /// `tcp:tcp_send_reset`: the TCP stack.
    pub const TCP_STACK: u8 = 0;
    /// kprobes on tcp_v4_send_reset / tcp_v6_send_reset: the TCP stack's
    /// RSTs without a full socket, on kernels whose tracepoint skips them.
    pub const TCP_STACK_KPROBE: u8 = 3;
    /// The egress hook: a RST the TCP stack did not send.
    pub const EGRESS: u8 = 1;
    /// `tcp:tcp_receive_reset`: a RST this host received, the only source
    /// whose events carry `Cause::Received` (`Direction::In`).
    pub const RECEIVED: u8 = 2;
    /// The egress hook: a full TCP socket's segment that left as a
    /// RST the stack did not send, through a device with tc/tcx egress
    /// programs: one of them built or rewrote it.
    pub const EGRESS_BPF: u8 = 4;
}

/// Key of the per-remote-IP counters: one entry per (remote address, cause,
/// at_send).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteKey {
    /// IPv4 in the first four bytes (rest zero), or IPv6.
    pub addr: [u8; 16],
    pub family: u8,
    pub cause: u8,
    /// 1: counted by tcp_send_reset where its counts are also coverage
    /// counts (6.10+, see `stat::AT_SEND`).
    pub at_send: u8,
    pub _pad: u8,
}

/// Per-CPU state of the text output's budget (`EVENTS_PER_SEC`): the
/// events sent in the current second, and the events it ever held back
/// (counted as usual, not lost: the output says "N more").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub window_start_ns: u64,
    pub sent: u64,
    pub unsent: u64,
}

/// Per-CPU value of the per-remote-IP counters. Times are CLOCK_BOOTTIME
/// nanoseconds, to the jiffy (the eBPF side's `count::coarse_now`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

pub const TASK_COMM_LEN: usize = 16;

/// One RST, as delivered through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RstEvent {
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket, 0 when there was none.
    pub skaddr: u64,
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the high half.
    pub pid_tgid: u64,
    /// Kernel `sk_rst_reason` value, `ABSENT` when the kernel has none.
    pub reason: u32,
    /// TCP state of the socket, 0 when there was no socket.
    pub state: u32,
    /// Inode of the network namespace, 0 when unknown.
    pub netns: u32,
    /// Kernel stack in the `STACK_TRACES` map, taken for `unknown` RSTs so
    /// the gap can be closed; negative when none was taken.
    pub stack_id: i32,
    /// Inode of the socket's file, for `socket-killed` (its owner is
    /// looked up by it); 0 otherwise.
    pub sk_ino: u64,
    /// For a netfilter REJECT: the kernel address of the nftables base
    /// chain that rejected, a key of the `NFT_CHAINS` map; 0 when unknown.
    pub nft_chain: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    pub cause: u8,
    /// `source::*`.
    pub source: u8,
    pub _pad: u8,
    pub comm: [u8; TASK_COMM_LEN],
    /// For an actor that was exiting (PF_EXITING) when it sent the RST:
    /// `EXITING` | its `exit_code` (the killing signal in the low 7 bits,
    /// or the exit status << 8); 0 otherwise.
    pub exit: u32,
    /// The actor's user-space stack in `USER_STACK_TRACES` (`--user-stacks`);
    /// negative when none was taken.
    pub user_stack: i32,
    /// For `source::EGRESS_BPF`: the device the RST left through; 0
    /// otherwise.
    pub ifindex: u32,
    pub _pad2: u32,
}

/// Flag in `RstEvent::exit`: the actor was exiting.
pub const EXITING: u32 = 1 << 31;

/// The last fatal signal generated for a process (`signal:signal_generate`)
/// or its choice by the OOM killer (`oom:mark_victim`), by target pid: who
/// sent it and from where, for the RSTs the process sends as it exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillRecord {
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()` of the sender.
    pub sender_pid_tgid: u64,
    pub sig: u32,
    /// The sender's kernel stack in `STACK_TRACES` (a signal a BPF program
    /// sent shows its program there); negative when none.
    pub stack_id: i32,
    /// 1: the OOM killer chose this process.
    pub oom: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
