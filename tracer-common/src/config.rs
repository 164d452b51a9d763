//! What userspace hands the kernel programs before they load, as read-only
//! globals and maps: offsets of this kernel's structures and records, the
//! cause tables (reasons, stack rules) and the user's scope.

#[allow(unused_imports)]
use super::*;

/// Size of the table mapping a kernel `sk_rst_reason` value to a cause.
/// Values at or above this map to `Cause::Unknown`.
pub const MAX_REASONS: u32 = 64;

/// Flag in a `REASON_CAUSE` entry: the reason alone is ambiguous, so the
/// kernel stack decides through `StackRules`; the low bits hold the cause
/// to use when no rule matches.
pub const NEEDS_STACK: u8 = 0x80;

/// Flag in a `REASON_CAUSE` entry: sent on a listening socket whose accept
/// queue is full, this reason is `Cause::ListenOverflow` (the rule is
/// `full_listener_reason` in userspace).
pub const BY_LISTENER: u8 = 0x40;

/// Size of the table mapping a kernel drop reason (`skb:kfree_skb`) to a
/// `DropCause` id. Values at or above it (a subsystem's reasons, in the
/// upper bits) are not counted.
pub const MAX_DROP_REASONS: u32 = 256;

/// Frames of the kernel stack examined for a stack rule.
pub const STACK_DEPTH: usize = 24;
// Every slot costs verification, used or not: 5.10's verifier under
// emulation took over three minutes to load the classic tcp_send_reset
// program at 12 slots and 20 s at 9. Keep it at the largest table's size
// (the build fails when a table outgrows it).
pub const MAX_STACK_RULES: usize = 9;

/// "A return address inside [start, end) means `cause`": a kernel function
/// on the stack of an ambiguous RST, resolved by userspace from kallsyms.
/// Optionally also a second function on the stack (`also_start` != 0) and
/// a TCP state (`state_mask` bit per state; 0 = any): kernels without an
/// RST reason need both to tell their paths apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackRule {
    pub start: u64,
    pub end: u64,
    pub also_start: u64,
    pub also_end: u64,
    pub cause: u32,
    pub state_mask: u32,
}

impl StackRule {
    pub const NONE: Self = Self {
        start: 0,
        end: 0,
        also_start: 0,
        also_end: 0,
        cause: 0,
        state_mask: 0,
    };
}

/// Entry of the kprobes' table of causes by state (`NO_FULL_SOCKET_CAUSES`)
/// for the states of a full socket: tcp_send_reset reports those RSTs.
pub const FULL_SOCKET: u8 = 0xff;

/// Cause value of an egress stack rule that means "the TCP stack sent it"
/// (IPv6 replies leave without a socket): counted for coverage only.
pub const RULE_TCP_STACK: u32 = 0xff;

/// Rules in priority order: the first rule with a frame on the stack wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRules {
    pub count: u32,
    pub _pad: u32,
    pub rules: [StackRule; MAX_STACK_RULES],
}

impl StackRules {
    pub const EMPTY: Self = Self {
        count: 0,
        _pad: 0,
        rules: [StackRule::NONE; MAX_STACK_RULES],
    };
}

/// Bytes of the `tcp:tcp_send_reset` record the program copies; every
/// field it reads must end within them (88 on 6.10+, 74 on 6.1).
pub const SEND_RESET_RECORD_MAX: u32 = 128;

/// Marker for a field the running kernel's tracepoint does not have.
pub const ABSENT: u32 = u32::MAX;

/// How the `tcp:tcp_send_reset` record stores the addresses.
pub mod addr_layout {
    /// 6.10+: `saddr[28]`/`daddr[28]` hold a `sockaddr_in` or `sockaddr_in6`
    /// (family, port and address together).
    pub const SOCKADDR: u32 = 1;
    /// Before 6.10: `sport`, `dport` (host order), `saddr[4]`, `daddr[4]`,
    /// `saddr_v6[16]`, `daddr_v6[16]`, and from 6.1 a `family` field.
    pub const SPLIT: u32 = 2;
}

/// Offsets into the `tcp:tcp_send_reset` record, read from the running
/// kernel's format file by userspace and handed to the eBPF program as a
/// read-only global. `ABSENT` marks a field this kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResetLayout {
    pub addr_layout: u32,
    pub skbaddr: u32,
    pub skaddr: u32,
    pub state: u32,
    pub reason: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u32,
    pub dport: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

impl SendResetLayout {
    /// The value the eBPF object is built with: nothing known, so the
    /// program refuses to read anything until userspace fills it in.
    pub const UNSET: Self = Self {
        addr_layout: 0,
        skbaddr: ABSENT,
        skaddr: ABSENT,
        state: ABSENT,
        reason: ABSENT,
        family: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
    };
}

/// Offsets (from BTF) of a socket's endpoints in `sock_common`, for the BTF
/// build of the tcp_send_reset program, which reads the socket (or the
/// segment it answers) instead of the tracepoint's record. `sport == ABSENT`
/// leaves that build off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockAddrOffsets {
    /// `skc_rcv_saddr`, `skc_daddr`: IPv4, network order.
    pub rcv_saddr: u32,
    pub daddr: u32,
    /// `inet_sock.inet_sport` and `skc_dport`: ports, network order. Not
    /// `skc_num`: `inet_put_port()` zeroes it when the socket moves to
    /// CLOSE, before the RSTs of close() and disconnect() are sent (the
    /// kernel's own tracepoint reads `inet_sport` too).
    pub sport: u32,
    pub dport: u32,
    /// `skc_v6_rcv_saddr`, `skc_v6_daddr`: 16 bytes each.
    pub v6_rcv_saddr: u32,
    pub v6_daddr: u32,
    /// 1 when tcp_send_reset has a reason argument (6.10+), 0 when its
    /// arguments are only (sk, skb).
    pub reason_arg: u32,
}

impl SockAddrOffsets {
    pub const UNSET: Self = Self {
        rcv_saddr: ABSENT,
        daddr: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        v6_rcv_saddr: ABSENT,
        v6_daddr: ABSENT,
        reason_arg: 0,
    };
}

/// Offsets (from BTF) along the pointer chains that lead from a socket or
/// an skb to its network namespace's inode number. `ABSENT` when the
/// kernel has no BTF or no network namespaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsOffsets {
    /// `sock.__sk_common.skc_net` (a `struct net *`).
    pub sock_net: u32,
    /// `sk_buff.dev`.
    pub skb_dev: u32,
    /// `net_device.nd_net` (a `struct net *`).
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sk_buff._skb_refdst` (the route, with a flag in bit 0).
    pub skb_refdst: u32,
    /// `dst_entry.dev`.
    pub dst_dev: u32,
    /// `net.ipv4.sysctl_tcp_abort_on_overflow` (its low byte: a u8 since
    /// 5.14, an int before): a full accept queue's drop was answered with
    /// a RST when set.
    pub net_abort_on_overflow: u32,
}

impl NetnsOffsets {
    pub const UNSET: Self = Self {
        sock_net: ABSENT,
        skb_dev: ABSENT,
        dev_net: ABSENT,
        net_inum: ABSENT,
        skb_refdst: ABSENT,
        dst_dev: ABSENT,
        net_abort_on_overflow: ABSENT,
    };
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Offsets (from BTF) the egress program needs to read an outgoing packet
/// and its socket. `ABSENT` disables the egress program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressOffsets {
    pub skb_sk: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    /// `sk_buff.protocol`. When `protocol`, `network_header` and `head` lie
    /// within `SKB_BLOCK` bytes from `protocol` (they do on every kernel
    /// seen), one read fetches all three; `skb_block` is then 1.
    pub skb_protocol: u32,
    pub skb_block: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_type: u32,
    pub sk_protocol: u32,
    pub sk_socket: u32,
    pub socket_file: u32,
    /// `sk_buff.skb_iif`: non-zero once a packet was received.
    pub skb_iif: u32,
    /// From a `struct socket` to its inode number (`socket_alloc.vfs_inode`
    /// + `inode.i_ino`): names the process that owns a socket.
    pub socket_ino: u32,
    /// `sock.sk_ack_backlog` and `sock.sk_max_ack_backlog` (u32 each, 5.5+):
    /// a listener's accept queue is full when the first exceeds the second.
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// `sk_buff.dev`, `net_device.ifindex`.
    pub skb_dev: u32,
    pub dev_ifindex: u32,
    /// The device's egress BPF pointer: `net_device.tcx_egress` (6.6+) or
    /// `miniq_egress` (before), NULL while no tc/tcx egress program can
    /// run there. `ABSENT` (no such field: a kernel without tc egress
    /// classifiers): a full socket's segments are never read.
    pub dev_egress: u32,
    /// `sk_buff.destructor`: the TCP stack's replies on behalf of a full
    /// socket are owned by it through `sock_edemux` (`REPLY_DESTRUCTOR`).
    pub skb_destructor: u32,
}

/// Offsets into nf_tables' structures (its module BTF), for naming the
/// chain of a REJECT rule that predates the trace. `ABSENT` leaves the
/// nftables kprobes off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NftOffsets {
    /// `nft_pktinfo.skb`
    pub pktinfo_skb: u32,
    /// `nft_chain.table`, `nft_chain.name`, `nft_table.name`: pointers.
    pub chain_table: u32,
    pub chain_name: u32,
    pub table_name: u32,
}

impl NftOffsets {
    pub const UNSET: Self = Self {
        pktinfo_skb: ABSENT,
        chain_table: ABSENT,
        chain_name: ABSENT,
        table_name: ABSENT,
    };
}

/// Bytes read at `sk_buff.protocol` when `EgressOffsets::skb_block` is 1.
pub const SKB_BLOCK: u32 = 32;

impl EgressOffsets {
    pub const UNSET: Self = Self {
        skb_sk: ABSENT,
        skb_head: ABSENT,
        skb_network_header: ABSENT,
        skb_protocol: ABSENT,
        skb_block: 0,
        sk_family: ABSENT,
        sk_state: ABSENT,
        sk_type: ABSENT,
        sk_protocol: ABSENT,
        sk_socket: ABSENT,
        socket_file: ABSENT,
        skb_iif: ABSENT,
        socket_ino: ABSENT,
        sk_ack_backlog: ABSENT,
        sk_max_ack_backlog: ABSENT,
        skb_dev: ABSENT,
        dev_ifindex: ABSENT,
        dev_egress: ABSENT,
        skb_destructor: ABSENT,
    };
}

/// `skb:kfree_skb` on this kernel. Read as a raw tracepoint, its arguments
/// are (skb, location, reason[, rx_sk]) on every kernel with a drop reason
/// (5.17+; the format file's record mirrors them); read as a classic one,
/// its record's fields are at these offsets. `netfilter_drop` is the
/// NETFILTER_DROP reason's value here (it moves: 7, 11, 12, ...); `ABSENT`
/// leaves drop counting off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfreeSkbLayout {
    pub netfilter_drop: u32,
    pub skbaddr: u32,
    pub location: u32,
    pub reason: u32,
}

/// Index of the drop reason among kfree_skb's raw tracepoint arguments.
pub const KFREE_SKB_REASON_ARG: usize = 2;

impl KfreeSkbLayout {
    pub const UNSET: Self = Self {
        netfilter_drop: ABSENT,
        skbaddr: ABSENT,
        location: ABSENT,
        reason: ABSENT,
    };
}

/// What the user asked to see (`--netns`, `--remote`, `--local-port`,
/// `--cause`), decided in the kernel so that the rest costs nothing and
/// never reaches userspace. Zero fields mean "everything".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Inode of the only network namespace to report; 0 = all.
    pub netns: u32,
    /// Bit per cause id; 0 = all causes.
    pub causes: u32,
    /// 1: only remotes in the `REMOTE_CIDRS` trie.
    pub remote: u32,
    /// 1: only local ports in the `LOCAL_PORTS` set.
    pub local_port: u32,
}

/// Key data of the `REMOTE_CIDRS` trie: the family byte, then the address
/// (IPv4 in the first four bytes); prefix lengths count the family's 8 bits.
pub type CidrKey = [u8; 17];

/// Offsets (from BTF) in `task_struct`: whether the task that sent a RST
/// was exiting and with what code, and the process a signal is for.
/// `ABSENT` leaves exit attribution off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub flags: u32,
    pub exit_code: u32,
    pub tgid: u32,
    /// `task_struct.sighand`, `sighand_struct.action`, the size of a
    /// `k_sigaction` and its `sa.sa_handler`: whether the target handles
    /// the signal (then it does not die of it). `ABSENT`: every fatal
    /// signal is kept.
    pub sighand: u32,
    pub action: u32,
    pub action_size: u32,
    pub handler: u32,
}

impl TaskOffsets {
    pub const UNSET: Self = Self {
        flags: ABSENT,
        exit_code: ABSENT,
        tgid: ABSENT,
        sighand: ABSENT,
        action: ABSENT,
        action_size: ABSENT,
        handler: ABSENT,
    };
}

/// `task_struct.flags`: the task is in `do_exit` (stable since 2.6).
pub const PF_EXITING: u32 = 0x4;

/// Offsets into the records of `signal:signal_generate` (for its classic
/// tracepoint build) and `oom:mark_victim`, from their format files.
/// `ABSENT`: the field (or the tracepoint) is missing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalLayout {
    pub sig: u32,
    pub pid: u32,
    pub result: u32,
    /// `oom:mark_victim`'s `pid`.
    pub victim_pid: u32,
}

impl SignalLayout {
    pub const UNSET: Self = Self {
        sig: ABSENT,
        pid: ABSENT,
        result: ABSENT,
        victim_pid: ABSENT,
    };
}

/// The signals whose default action ends a process, by bit: HUP, INT,
/// QUIT, ILL, TRAP, ABRT, BUS, FPE, KILL, USR1, SEGV, USR2, PIPE, ALRM,
/// TERM, XCPU, XFSZ, SYS. Others never kill, and are passed over at once.
pub const FATAL_SIGNALS: u32 = (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 24)
    | (1 << 25)
    | (1 << 31);

/// `signal_generate`'s `result` for a signal that was queued
/// (TRACE_SIGNAL_DELIVERED): ignored and already-pending ones are not.
pub const SIGNAL_DELIVERED: u32 = 0;

/// Index of the target task among signal_generate's raw tracepoint
/// arguments (sig, info, task, group, result).
pub const SIGNAL_TASK_ARG: usize = 2;
pub const SIGNAL_RESULT_ARG: usize = 4;
