//! Identities both sides name alike: causes, directions, TCP states, the
//! eBPF object's map and global names, and the `STATS` slots.

#[allow(unused_imports)]
use super::*;

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
        "a RST built outside the TCP stack: raw or AF_PACKET socket (tcpkill, a userspace IPS), a kernel module, or a tc egress BPF program";
    /// Not a cause of this host's: a RST it received (`--direction in|both`).
    Received = 14, "received",
        "a RST this host received";
    ListenerClosed = 15, "listener-closed",
        "a listening socket closed (its process exited, was killed, or closed it) with connections still in its accept queue";
    ListenOverflow = 16, "listen-overflow",
        "a listener whose accept queue was full answered a completed handshake with a reset (`net.ipv4.tcp_abort_on_overflow=1`)";
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

/// Why a TCP segment was dropped silently (the drops section): the
/// policies and limits a kernel drop reason names. Ordinary TCP stack drops
/// (old data, checksum, no socket, ...) have no drop cause and are not
/// counted. Id 0 (`DROP_NONE`) in the reason table means "not counted".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum DropCause {
    NetfilterDrop = 1,
    TcDrop = 2,
    XdpDrop = 3,
    CgroupDrop = 4,
    ListenOverflow = 5,
    /// Not a drop: a netfilter REJECT that answered the segment with an
    /// ICMP error (port or host unreachable) instead of a RST. Seen at the
    /// egress hook, counted with the drops: the peer's connect fails all
    /// the same, and no RST is ever sent.
    NetfilterRejectIcmp = 6,
}

/// A reason-table entry meaning "not a drop rsttrace counts".
pub const DROP_NONE: u8 = 0;

impl DropCause {
    pub const ALL: [DropCause; 6] = [
        DropCause::NetfilterDrop,
        DropCause::TcDrop,
        DropCause::XdpDrop,
        DropCause::CgroupDrop,
        DropCause::ListenOverflow,
        DropCause::NetfilterRejectIcmp,
    ];
    /// Slots of an array indexed by drop cause id (slot 0 unused).
    pub const SLOTS: usize = 7;

    /// The stable name of text, JSON, metrics and `--cause`.
    pub const fn name(self) -> &'static str {
        match self {
            DropCause::NetfilterDrop => "netfilter-drop",
            DropCause::TcDrop => "tc-drop",
            DropCause::XdpDrop => "xdp-drop",
            DropCause::CgroupDrop => "cgroup-drop",
            DropCause::ListenOverflow => "listen-overflow",
            DropCause::NetfilterRejectIcmp => "netfilter-reject-icmp",
        }
    }

    /// What happened, as README's drop table says it.
    pub const fn description(self) -> &'static str {
        match self {
            DropCause::NetfilterDrop => "a netfilter rule dropped the segment (no RST sent)",
            DropCause::TcDrop => {
                "a tc/tcx program or action at ingress or egress dropped it (`TC_ACT_SHOT`)"
            }
            DropCause::XdpDrop => {
                "generic XDP could not redirect the segment as an XDP program asked (an XDP program's own `XDP_DROP` has no reason: not seen)"
            }
            DropCause::CgroupDrop => {
                "a cgroup BPF program (egress; ingress and socket filters show as SOCKET_FILTER) dropped it"
            }
            DropCause::ListenOverflow => {
                "a listener's accept queue was full (`tcp_abort_on_overflow` off): the handshake-completing segment was dropped"
            }
            DropCause::NetfilterRejectIcmp => {
                "a netfilter REJECT answered the segment with an ICMP error (port/host unreachable, ICMPv6 for IPv6) instead of a RST"
            }
        }
    }

    /// The drop cause with kernel id `id`; None for `DROP_NONE` or an id
    /// no drop cause has.
    pub const fn from_id(id: u8) -> Option<DropCause> {
        match id {
            1 => Some(DropCause::NetfilterDrop),
            2 => Some(DropCause::TcDrop),
            3 => Some(DropCause::XdpDrop),
            4 => Some(DropCause::CgroupDrop),
            5 => Some(DropCause::ListenOverflow),
            6 => Some(DropCause::NetfilterRejectIcmp),
            _ => None,
        }
    }
}

impl core::fmt::Display for DropCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "user")]
impl serde::Serialize for DropCause {
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
        EGRESS_ICMP_STACK_RULES,
        EGRESS_OFFSETS,
        EGRESS_STACK_RULES,
        EMIT_EVENTS,
        EVENTS_PER_SEC,
        FILTER,
        FULL_SOCKET_RESET,
        REPLY_DESTRUCTOR,
        FULL_LISTENER_CAUSES,
        ICMP_REJECTS_COUNTED,
        KFREE_SKB_LAYOUT,
        NETNS_OFFSETS,
        NFT_OFFSETS,
        NO_FULL_SOCKET_CAUSES,
        RECEIVE_RESET_LAYOUT,
        SEND_RESET_LAYOUT,
        SIGNAL_LAYOUT,
        SOCK_ADDR_OFFSETS,
        STACK_COUNTED_AT_SEND,
        STACK_RULES,
        TASK_OFFSETS,
        USER_SOCKET_CAUSE,
        USER_STACKS,
        WAKEUP_EVERY,
        // Maps userspace sizes, fills or reads.
        BUDGET,
        DROPS,
        DROP_REASON_CAUSE,
        EVENTS,
        KILLS,
        LOCAL_PORTS,
        NFT_CHAINS,
        REASON_CAUSE,
        RECEIVED,
        REMOTE_CIDRS,
        REMOTES,
        STACK_TRACES,
        STATS,
        USER_STACK_TRACES,
        // Maps of the kernel programs' own: per-CPU scratch and state.
        CLOCK,
        LAST_CHAIN,
        LAST_REJECT,
        MATCHED,
        MATCHED_AT,
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
    /// TCP segments dropped silently, all drop causes (one atomic add per
    /// drop: per-cause totals come from the drop map's entries).
    pub const DROPS: u32 = CAUSES + 5;
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
