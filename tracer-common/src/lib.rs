//! Types shared by the eBPF programs and the `rsttrace` binary.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes it,
//! userspace reads it byte for byte. Field order keeps every struct free of
//! implicit padding so the verifier never sees uninitialised stack bytes.
#![no_std]

/// Generates `Cause` from one table: its id (the kernel's value and its
/// `STATS` slot), its name (the stable string of text, JSON and metrics)
/// and what it means. Ids are dense from 0 (checked below): `ALL` is
/// indexed by id.
macro_rules! causes {
    ($($(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $description:literal;)*) => {
        /// What made a RST, as the kernel programs count it and users read it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum Cause {
            $($(#[$doc])* $variant = $id,)*
        }

        impl Cause {
            /// Every cause, in id order.
            pub const ALL: [Cause; Cause::COUNT] = [$(Cause::$variant,)*];
            /// Number of causes; arrays indexed by cause have this size.
            pub const COUNT: usize = [$($id),*].len();

            pub const fn name(self) -> &'static str {
                match self {
                    $(Cause::$variant => $name,)*
                }
            }

            /// What happened, as README's cause table says it.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Cause::$variant => $description,)*
                }
            }
        }
    };
}

causes! {
    Unknown = 0, "unknown",
        "nothing above matched; shown with its symbolized kernel stack so the gap can be closed";
    ClosedPort = 1, "closed-port",
        "segment for which no socket exists (closed port, state already gone)";
    AbortOnClose = 2, "abort-on-close",
        "the application closed with unread data in its receive queue";
    LingerAbort = 3, "linger-abort",
        "the application closed with `SO_LINGER {on, 0}`";
    AppDisconnect = 4, "app-disconnect",
        "the application dropped a live connection (`connect(AF_UNSPEC)`)";
    SocketKilled = 5, "socket-killed",
        "another process destroyed the socket (sock_diag destroy: `ss -K`, security agents; `bpf_sock_destroy`)";
    KeepaliveTimeout = 6, "keepalive-timeout",
        "keepalive probes went unanswered";
    DataAfterClose = 7, "data-after-close",
        "the peer sent data after this host closed (the keep-alive race)";
    Linger2Timeout = 8, "linger2-timeout",
        "FIN_WAIT2 abort (`tcp_fin_timeout`/`TCP_LINGER2` < 0)";
    MemoryPressure = 9, "memory-pressure",
        "orphan or memory limits forced an abort";
    InvalidSegment = 10, "invalid-segment",
        "protocol violation: bad ACK, PAWS, bad flags, invalid SYN, wrong state";
    Mptcp = 11, "mptcp",
        "MPTCP subflow reset";
    NetfilterReject = 12, "netfilter-reject",
        "a netfilter rule answered with a reset (iptables/ip6tables `REJECT --reject-with tcp-reset`, nft `reject with tcp reset`)";
    Injected = 13, "injected",
        "a RST built outside the TCP stack: raw or AF_PACKET socket (tcpkill, a userspace IPS), or a kernel module";
    /// Not a cause of this host's: a RST it received (`--direction in|both`).
    Received = 14, "received",
        "a RST this host received";
    ListenerClosed = 15, "listener-closed",
        "a listening socket closed (its process exited, was killed, or closed it) with connections still in its accept queue";
}

const _: () = {
    let mut i = 0;
    while i < Cause::COUNT {
        assert!(
            Cause::ALL[i] as usize == i,
            "cause ids must be dense from 0"
        );
        i += 1;
    }
    // The kernel programs keep sets of causes in u32 bit masks.
    assert!(Cause::COUNT <= 32);
};

impl Cause {
    /// The cause with kernel id `id`; `Unknown` for an id no cause has.
    pub const fn from_id(id: u8) -> Cause {
        if (id as usize) < Cause::COUNT {
            Cause::ALL[id as usize]
        } else {
            Cause::Unknown
        }
    }

    /// Which way a RST of this cause went: only received RSTs have their
    /// own cause.
    pub const fn direction(self) -> Direction {
        match self {
            Cause::Received => Direction::In,
            _ => Direction::Out,
        }
    }
}

impl core::fmt::Display for Cause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "user")]
impl serde::Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Which way a RST went, as `--direction`, JSON's `direction` and the
/// metrics' `direction` label name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by this host.
    Out,
    /// Received by this host.
    In,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// Generates the TCP states of include/net/tcp_states.h: stable ABI, whose
/// numbers the kernel's format files do not print.
macro_rules! tcp_states {
    ($($state:ident = $value:literal;)*) => {
        $(pub const $state: u8 = $value;)*

        /// The kernel's name of TCP state `state` (`TCP_ESTABLISHED`, ...).
        pub const fn name(state: u32) -> Option<&'static str> {
            match state {
                $($value => Some(concat!("TCP_", stringify!($state))),)*
                _ => None,
            }
        }
    };
}

/// TCP states as the kernel numbers them (`sk_state`, the tracepoints'
/// `state` field).
pub mod tcp_state {
    tcp_states! {
        ESTABLISHED = 1;
        SYN_SENT = 2;
        SYN_RECV = 3;
        FIN_WAIT1 = 4;
        FIN_WAIT2 = 5;
        TIME_WAIT = 6;
        CLOSE = 7;
        CLOSE_WAIT = 8;
        LAST_ACK = 9;
        LISTEN = 10;
        CLOSING = 11;
        NEW_SYN_RECV = 12;
    }

    /// Slots of a table indexed by state: slot 0 (no state) stands for
    /// no socket at all.
    pub const SLOTS: usize = 16;
}

/// Names of the eBPF object's maps and globals, as userspace asks for them.
/// The eBPF side's items take their names from their identifiers (aya
/// names a map or global after its item), so there they are spelt again;
/// tracer-user's tests hold the object to this list both ways.
pub mod names {
    macro_rules! names {
        ($($(#[$doc:meta])* $name:ident,)*) => {
            $($(#[$doc])* pub const $name: &str = stringify!($name);)*
            /// Every name above.
            pub const ALL: &[&str] = &[$($name),*];
        };
    }

    names! {
        // Read-only globals userspace sets before load.
        ACTOR_CAUSES,
        BENCH_EMPTY,
        BUDGETED_CAUSES,
        EGRESS_OFFSETS,
        EGRESS_STACK_RULES,
        EMIT_EVENTS,
        EVENTS_PER_SEC,
        FILTER,
        KFREE_SKB_LAYOUT,
        NETNS_OFFSETS,
        NFT_OFFSETS,
        NO_FULL_SOCKET_CAUSES,
        RECEIVE_RESET_LAYOUT,
        SEND_RESET_LAYOUT,
        SOCK_ADDR_OFFSETS,
        STACK_COUNTED_AT_SEND,
        STACK_RULES,
        USER_SOCKET_CAUSE,
        WAKEUP_EVERY,
        // Maps userspace sizes, fills or reads.
        BUDGET,
        DROPS,
        EVENTS,
        LOCAL_PORTS,
        NFT_CHAINS,
        REASON_CAUSE,
        RECEIVED,
        REMOTE_CIDRS,
        REMOTES,
        STACK_TRACES,
        STATS,
        // Maps of the kernel programs' own: per-CPU scratch and state.
        CLOCK,
        LAST_CHAIN,
        LAST_REJECT,
        MATCHED,
        NAMES_BUF,
        RECORD,
        REJECT,
        SINCE_WAKEUP,
        STACK_BUF,
    }
}

/// Slots of the per-CPU `STATS` array. Slots `0..Cause::COUNT` count, per
/// cause, the RSTs that found the per-remote map full (`REMOTE_MAP_FULL`):
/// a cause's total is its slot plus its entries in that map, so a RST
/// costs one atomic add, not two.
pub mod stat {
    use super::Cause;
    const CAUSES: u32 = Cause::COUNT as u32;
    /// Events the ring buffer had no room for (counts stay exact).
    pub const LOST_EVENTS: u32 = CAUSES;
    /// RSTs whose remote IP found the per-remote map full (counted by cause
    /// only).
    pub const REMOTE_MAP_FULL: u32 = CAUSES + 1;
    /// RSTs seen leaving through a device (coverage).
    pub const EGRESS_RSTS: u32 = CAUSES + 2;
    /// ... of which the TCP stack sent (and tcp_send_reset attributed).
    pub const EGRESS_TCP_STACK: u32 = CAUSES + 3;
    /// ... of which no rule explains (counted as `unknown`, with a stack).
    pub const EGRESS_UNEXPLAINED: u32 = CAUSES + 4;
    /// TCP segments netfilter dropped silently.
    pub const NETFILTER_DROPS: u32 = CAUSES + 5;
    /// ... of which found the per-remote drop map full.
    pub const DROP_MAP_FULL: u32 = CAUSES + 6;
    /// RSTs this host received that found their map full: with that map's
    /// entries, the received total (one atomic add per RST, as for sent
    /// ones).
    pub const RECEIVED_MAP_FULL: u32 = CAUSES + 7;
    /// RSTs tcp_send_reset saw but could not read (a fault, or offsets
    /// this kernel lacks): in no other count.
    pub const UNREADABLE_RSTS: u32 = CAUSES + 8;
    /// RSTs of the TCP stack that tcp_send_reset counted for coverage, as
    /// if seen leaving (one slot for both `EGRESS_RSTS` and
    /// `EGRESS_TCP_STACK`: each count costs an atomic add per RST). From
    /// 6.10 the kernel bumps it only for RSTs `--cause` leaves out: the
    /// others are in the `AT_SEND` slots.
    pub const STACK_RSTS_AT_SEND: u32 = CAUSES + 9;
    /// The cause slots of tcp_send_reset where it also counts the stack's
    /// RSTs for coverage (6.10+): slots `AT_SEND + cause`, and its
    /// per-remote entries have `at_send` set, so that one add per RST
    /// counts both. Userspace folds them into the cause slots and
    /// `STACK_RSTS_AT_SEND` when it reads them.
    pub const AT_SEND: u32 = CAUSES + 10;
    /// Total number of slots.
    pub const COUNT: u32 = CAUSES * 2 + 10;
}

/// Size of the table mapping a kernel `sk_rst_reason` value to a cause.
/// Values at or above this map to `Cause::Unknown`.
pub const MAX_REASONS: u32 = 64;

/// Flag in a `REASON_CAUSE` entry: the reason alone is ambiguous, so the
/// kernel stack decides through `StackRules`; the low bits hold the cause
/// to use when no rule matches.
pub const NEEDS_STACK: u8 = 0x80;

/// Frames of the kernel stack examined for a stack rule.
pub const STACK_DEPTH: usize = 24;
// The verifier walks only the rules a table holds (its count is a
// constant to it): room costs nothing.
pub const MAX_STACK_RULES: usize = 12;

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
}

impl NetnsOffsets {
    pub const UNSET: Self = Self {
        sock_net: ABSENT,
        skb_dev: ABSENT,
        dev_net: ABSENT,
        net_inum: ABSENT,
        skb_refdst: ABSENT,
        dst_dev: ABSENT,
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

/// Bytes kept of a table's or chain's name (nftables allows 256).
pub const NFT_NAME_LEN: usize = 64;

/// The names of an nftables base chain, by the chain's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NftChainNames {
    pub table: [u8; NFT_NAME_LEN],
    pub chain: [u8; NFT_NAME_LEN],
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

/// Key of the netfilter-drop counters: remote address and the code
/// address that dropped (symbolized by userspace: nft, xtables, a module).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network namespace inode (names the rule's author), 0 if unknown.
    pub netns: u32,
    pub location: u64,
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
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), made of integers and byte arrays, with
    // no implicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::SendResetLayout {}
    unsafe impl aya::Pod for super::SockAddrOffsets {}
    unsafe impl aya::Pod for super::RemoteKey {}
    unsafe impl aya::Pod for super::RemoteStats {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::RstEvent {}
    unsafe impl aya::Pod for super::StackRules {}
    unsafe impl aya::Pod for super::NetnsOffsets {}
    unsafe impl aya::Pod for super::EgressOffsets {}
    unsafe impl aya::Pod for super::NftOffsets {}
    unsafe impl aya::Pod for super::NftChainNames {}
    unsafe impl aya::Pod for super::KfreeSkbLayout {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::Filter {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn cause_ids_round_trip() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_id(c as u8), c);
        }
        assert_eq!(Cause::from_id(200), Cause::Unknown);
    }

    #[test]
    fn cause_names_are_unique_kebab_case() {
        for c in Cause::ALL {
            let n = c.name();
            assert!(
                n.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '-' || ch == '2'),
                "{n}"
            );
            for d in Cause::ALL {
                assert!(c == d || n != d.name(), "{n} twice");
            }
        }
    }

    #[test]
    fn tcp_states_have_the_kernels_names() {
        assert_eq!(tcp_state::name(1), Some("TCP_ESTABLISHED"));
        assert_eq!(tcp_state::name(7), Some("TCP_CLOSE"));
        assert_eq!(
            tcp_state::name(u32::from(tcp_state::NEW_SYN_RECV)),
            Some("TCP_NEW_SYN_RECV")
        );
        assert_eq!(tcp_state::name(0), None);
        assert_eq!(tcp_state::name(13), None);
        assert!(usize::from(tcp_state::NEW_SYN_RECV) < tcp_state::SLOTS);
    }

    #[test]
    fn only_received_rsts_go_in() {
        for c in Cause::ALL {
            let want = if c == Cause::Received {
                Direction::In
            } else {
                Direction::Out
            };
            assert_eq!(c.direction(), want, "{c}");
        }
    }

    #[test]
    fn structs_have_no_implicit_padding() {
        assert_eq!(size_of::<SendResetLayout>(), 12 * 4);
        assert_eq!(size_of::<NetnsOffsets>(), 6 * 4);
        assert_eq!(size_of::<EgressOffsets>(), 13 * 4);
        assert_eq!(size_of::<DropKey>(), 32);
        assert_eq!(size_of::<KfreeSkbLayout>(), 4 * 4);
        assert_eq!(size_of::<SockAddrOffsets>(), 7 * 4);
        assert_eq!(size_of::<RemoteKey>(), 20);
        assert_eq!(size_of::<StackRules>(), 8 + MAX_STACK_RULES * 40);
        assert_eq!(size_of::<RemoteStats>(), 24);
        assert_eq!(size_of::<Budget>(), 24);
        assert_eq!(size_of::<RstEvent>(), 6 * 8 + 4 * 4 + 32 + 2 * 2 + 4 + 16);
        assert_eq!(size_of::<NftOffsets>(), 4 * 4);
        assert_eq!(size_of::<NftChainNames>(), 2 * NFT_NAME_LEN);
    }
}
