//! Where a cause is decided. The kernel program only looks a cause up in the
//! reason table built here; every rule that maps kernel evidence to a cause
//! lives in this file.

use std::{collections::BTreeMap, fmt};

use serde::{Serialize, Serializer};
use tracer_common::cause as id;

/// The stable cause identifiers of DESIGN.md, used in text, JSON and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Cause {
    Unknown = id::UNKNOWN,
    ClosedPort = id::CLOSED_PORT,
    AbortOnClose = id::ABORT_ON_CLOSE,
    LingerAbort = id::LINGER_ABORT,
    AppDisconnect = id::APP_DISCONNECT,
    SocketKilled = id::SOCKET_KILLED,
    KeepaliveTimeout = id::KEEPALIVE_TIMEOUT,
    DataAfterClose = id::DATA_AFTER_CLOSE,
    Linger2Timeout = id::LINGER2_TIMEOUT,
    MemoryPressure = id::MEMORY_PRESSURE,
    InvalidSegment = id::INVALID_SEGMENT,
    Mptcp = id::MPTCP,
    NetfilterReject = id::NETFILTER_REJECT,
    Injected = id::INJECTED,
}

impl Cause {
    pub const ALL: [Cause; id::COUNT as usize] = [
        Cause::Unknown,
        Cause::ClosedPort,
        Cause::AbortOnClose,
        Cause::LingerAbort,
        Cause::AppDisconnect,
        Cause::SocketKilled,
        Cause::KeepaliveTimeout,
        Cause::DataAfterClose,
        Cause::Linger2Timeout,
        Cause::MemoryPressure,
        Cause::InvalidSegment,
        Cause::Mptcp,
        Cause::NetfilterReject,
        Cause::Injected,
    ];

    pub fn from_id(v: u8) -> Cause {
        Self::ALL.get(v as usize).copied().unwrap_or(Cause::Unknown)
    }

    pub fn name(self) -> &'static str {
        match self {
            Cause::Unknown => "unknown",
            Cause::ClosedPort => "closed-port",
            Cause::AbortOnClose => "abort-on-close",
            Cause::LingerAbort => "linger-abort",
            Cause::AppDisconnect => "app-disconnect",
            Cause::SocketKilled => "socket-killed",
            Cause::KeepaliveTimeout => "keepalive-timeout",
            Cause::DataAfterClose => "data-after-close",
            Cause::Linger2Timeout => "linger2-timeout",
            Cause::MemoryPressure => "memory-pressure",
            Cause::InvalidSegment => "invalid-segment",
            Cause::Mptcp => "mptcp",
            Cause::NetfilterReject => "netfilter-reject",
            Cause::Injected => "injected",
        }
    }

    /// Whether the RST is sent in process context on behalf of a syscall,
    /// so that the current task is the one that asked for it. Receive-path
    /// and timer RSTs run in softirq context, where on loopback `current` is
    /// the *peer* process: reporting it would lie.
    pub fn has_actor(self) -> bool {
        matches!(
            self,
            Cause::AbortOnClose
                | Cause::LingerAbort
                | Cause::AppDisconnect
                | Cause::SocketKilled
                | Cause::Injected
        )
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The cause a kernel `sk_rst_reason` name decides on its own. TCP_STATE
/// and TCP_DISCONNECT_WITH_DATA need the kernel stack to tell close, linger,
/// disconnect and socket destruction apart, so they stay `unknown` here.
pub fn cause_for_reason(name: &str) -> Cause {
    match name {
        "NO_SOCKET" => Cause::ClosedPort,
        "TCP_ABORT_ON_CLOSE" => Cause::AbortOnClose,
        "TCP_KEEPALIVE_TIMEOUT" => Cause::KeepaliveTimeout,
        "TCP_ABORT_ON_DATA" | "TCP_TIMEWAIT_SOCKET" => Cause::DataAfterClose,
        "TCP_ABORT_ON_LINGER" => Cause::Linger2Timeout,
        "TCP_ABORT_ON_MEMORY" => Cause::MemoryPressure,
        "TCP_INVALID_ACK_SEQUENCE"
        | "TCP_RFC7323_PAWS"
        | "TCP_TOO_OLD_ACK"
        | "TCP_ACK_UNSENT_DATA"
        | "TCP_FLAGS"
        | "TCP_OLD_ACK"
        | "INVALID_SYN" => Cause::InvalidSegment,
        n if n.starts_with("MPTCP_") => Cause::Mptcp,
        _ => Cause::Unknown,
    }
}

/// The table the kernel program indexes by reason value.
pub fn reason_table(reasons: &BTreeMap<u64, String>) -> Vec<(u32, Cause)> {
    reasons
        .iter()
        .filter(|(v, _)| **v < u64::from(tracer_common::MAX_REASONS))
        .map(|(v, n)| (*v as u32, cause_for_reason(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_id(c as u8), c);
        }
        assert_eq!(Cause::from_id(200), Cause::Unknown);
    }

    #[test]
    fn names_are_unique_kebab_case() {
        let mut names: Vec<_> = Cause::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Cause::ALL.len());
        assert!(names.iter().all(|n| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c == '2')
        }));
    }

    #[test]
    fn every_reason_of_the_6_18_kernel_maps_as_designed() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/6.18/tcp_send_reset"
        ))
        .unwrap();
        let f = crate::format::Format::parse(&text).unwrap();
        let table: BTreeMap<u32, Cause> = reason_table(&f.symbols("reason")).into_iter().collect();
        let expect = [
            (0, Cause::Unknown),
            (1, Cause::ClosedPort),
            (2, Cause::InvalidSegment),
            (3, Cause::InvalidSegment),
            (4, Cause::InvalidSegment),
            (5, Cause::InvalidSegment),
            (6, Cause::InvalidSegment),
            (7, Cause::InvalidSegment),
            (8, Cause::DataAfterClose),
            (9, Cause::DataAfterClose),
            (10, Cause::InvalidSegment),
            (11, Cause::AbortOnClose),
            (12, Cause::Linger2Timeout),
            (13, Cause::MemoryPressure),
            (14, Cause::Unknown),
            (15, Cause::KeepaliveTimeout),
            (16, Cause::Unknown),
            (17, Cause::Mptcp),
            (23, Cause::Mptcp),
            (24, Cause::Unknown),
        ];
        for (v, c) in expect {
            assert_eq!(table.get(&v), Some(&c), "reason {v}");
        }
    }

    #[test]
    fn only_syscall_paths_have_an_actor() {
        assert!(Cause::AbortOnClose.has_actor());
        for c in [
            Cause::ClosedPort,
            Cause::KeepaliveTimeout,
            Cause::DataAfterClose,
            Cause::InvalidSegment,
            Cause::Unknown,
        ] {
            assert!(!c.has_actor(), "{c}");
        }
    }
}
