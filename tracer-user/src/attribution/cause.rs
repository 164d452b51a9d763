//! Where a cause is decided. The kernel programs only look causes up in the
//! tables built here (by reason, by stack, by socket state, and the cause of
//! a user's raw socket); every rule that maps kernel evidence to a cause
//! lives in this file.

use std::collections::BTreeMap;

use tracer_common::tcp_state;
pub use tracer_common::{Cause, DropCause};

/// Whether the RST is sent in process context on behalf of a syscall,
/// so that the current task is the one that asked for it. Receive-path
/// and timer RSTs run in softirq context, where on loopback `current` is
/// the *peer* process: reporting it would lie.
pub fn has_actor(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::AbortOnClose
            | Cause::LingerAbort
            | Cause::ListenerClosed
            | Cause::AppDisconnect
            | Cause::SocketKilled
            | Cause::Injected
    )
}

/// Whether an event of this cause is only a line of output: the
/// summary takes nothing from it (no actor to tally, no owner, no
/// rule author, no stack to show), so the text output may leave it in
/// the kernel past its lines per second.
pub fn line_only(cause: Cause) -> bool {
    // A full listener's RSTs name it, for the summary's diagnosis.
    !has_actor(cause)
        && !matches!(
            cause,
            Cause::Unknown | Cause::NetfilterReject | Cause::ListenOverflow
        )
}

// A RST sent on a listening socket whose accept queue is full
// (`sk_ack_backlog > sk_max_ack_backlog`, the kernel's own
// `sk_acceptq_is_full`) is the listener refusing a completed handshake:
// tcp_check_req's `listen_overflow` -> `embryonic_reset` with
// `tcp_abort_on_overflow=1`, sent on the listener itself. From 6.10 its
// reason is INVALID_SYN (`full_listener_reason`); before, it has none and
// no stack rule matches it (`full_listener_turns`, the cause the
// reasonless path leaves it). The listener's other RSTs (an ACK to a
// LISTEN socket, a bad SYN cookie: TCP_FLAGS) are never turned: a full
// queue while one is sent is not their cause. Such a RST is
// `listen-overflow`.

/// Kernels with reasons: the reason of the overflow path.
pub fn full_listener_reason(name: &str) -> bool {
    name == "INVALID_SYN"
}

/// Kernels without reasons: the cause the stack rules leave the overflow
/// path's RST.
pub fn full_listener_turns(cause: Cause) -> bool {
    cause == Cause::Unknown
}

/// `full_listener_turns` as a bit mask by cause id, for the kernel programs.
pub fn full_listener_mask() -> u32 {
    mask(full_listener_turns)
}

/// `has_actor` as a bit mask by cause id, for the kernel programs.
pub fn actor_mask() -> u32 {
    mask(has_actor)
}

/// `line_only` as a bit mask by cause id, for the kernel programs.
pub fn line_only_mask() -> u32 {
    mask(line_only)
}

fn mask(pred: fn(Cause) -> bool) -> u32 {
    Cause::ALL
        .into_iter()
        .filter(|c| pred(*c))
        .fold(0, |m, c| m | 1 << (c as u32))
}

/// The cause a kernel `sk_rst_reason` name decides on its own. Reasons the
/// kernel reuses on several paths are in `ambiguous_reason` instead.
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

/// Reasons sent on several paths: the kernel stack decides through
/// `STACK_RULES`; the value is the cause when no rule matches. TCP_STATE
/// with none of the functions below on the stack is a segment that was
/// invalid for the socket's state.
pub fn ambiguous_reason(name: &str) -> Option<Cause> {
    match name {
        "TCP_STATE" => Some(Cause::InvalidSegment),
        "TCP_DISCONNECT_WITH_DATA" | "NOT_SPECIFIED" => Some(Cause::Unknown),
        _ => None,
    }
}

/// Kernel functions that decide an ambiguous RST when on its stack, in
/// priority order (the first that matches wins).
pub const STACK_RULES: &[(&str, Cause)] = &[
    // sock_diag SOCK_DESTROY (`ss -K`, runtime-security agents) and
    // bpf_sock_destroy both end in tcp_abort.
    ("tcp_abort", Cause::SocketKilled),
    // A listener closing resets the connections in its accept queue:
    // __tcp_close -> inet_csk_listen_stop -> inet_child_forget ->
    // tcp_disconnect. Before the close rules: __tcp_close is on its stack.
    ("inet_csk_listen_stop", Cause::ListenerClosed),
    // close() with SO_LINGER {on, 0}: tcp_close -> tcp_disconnect.
    ("__tcp_close", Cause::LingerAbort),
    ("tcp_close", Cause::LingerAbort),
    // connect(AF_UNSPEC) on a live connection: tcp_disconnect alone.
    ("tcp_disconnect", Cause::AppDisconnect),
];

/// A stack rule for kernels whose tcp_send_reset has no reason (before
/// 6.10): `func` on the stack, and `also` when given, with the socket in
/// one of `states` when given, means `cause`.
#[derive(Debug, Clone, Copy)]
pub struct ReasonlessRule {
    pub func: &'static str,
    pub also: Option<&'static str>,
    pub states: &'static [u8],
    pub cause: Cause,
}

/// Without a reason every RST of a full socket is decided by the stack:
/// tcp_send_active_reset's callers tell the paths apart (the first rule that
/// matches wins). tcp_close is on the stack of every close(), through
/// __tcp_close where that exists; unmatched RSTs (segments invalid for the
/// socket's state) stay `unknown`.
pub const REASONLESS_STACK_RULES: &[ReasonlessRule] = &[
    rule("tcp_abort", None, &[], Cause::SocketKilled),
    // A listener closing disconnects its queued children from inside
    // tcp_close too (see STACK_RULES).
    rule("inet_csk_listen_stop", None, &[], Cause::ListenerClosed),
    // close() with SO_LINGER {on, 0} disconnects from inside tcp_close.
    rule("tcp_disconnect", Some("tcp_close"), &[], Cause::LingerAbort),
    rule("tcp_disconnect", None, &[], Cause::AppDisconnect),
    // An orphan in FIN_WAIT2 with tcp_fin_timeout/TCP_LINGER2 < 0.
    rule(
        "tcp_close",
        None,
        &[tcp_state::FIN_WAIT2],
        Cause::Linger2Timeout,
    ),
    rule("tcp_close", None, &[], Cause::AbortOnClose),
    rule(
        "tcp_keepalive_timer",
        None,
        &[tcp_state::FIN_WAIT2],
        Cause::Linger2Timeout,
    ),
    rule("tcp_keepalive_timer", None, &[], Cause::KeepaliveTimeout),
    rule("tcp_out_of_resources", None, &[], Cause::MemoryPressure),
];

const fn rule(
    func: &'static str,
    also: Option<&'static str>,
    states: &'static [u8],
    cause: Cause,
) -> ReasonlessRule {
    ReasonlessRule {
        func,
        also,
        states,
        cause,
    }
}

/// The cause of a RST the TCP stack sends without a full socket, as the
/// kprobes on tcp_v4/v6_send_reset see it (kernels before 6.10, whose
/// tracepoint skips these), by the state of the socket it is sent on
/// (`None`: no socket). `None` for a full socket: tcp_send_reset reports it.
pub fn no_full_socket_cause(state: Option<u8>) -> Option<Cause> {
    match state {
        None => Some(Cause::ClosedPort),
        // A segment for a connection this host has closed.
        Some(tcp_state::TIME_WAIT) => Some(Cause::DataAfterClose),
        // A handshake's segment the request socket could not accept.
        Some(tcp_state::NEW_SYN_RECV) => Some(Cause::InvalidSegment),
        Some(_) => None,
    }
}

/// `no_full_socket_cause` as the kprobe program takes it, indexed by state.
pub fn no_full_socket_table() -> [u8; tcp_state::SLOTS] {
    std::array::from_fn(|slot| {
        let state = (slot != 0).then_some(slot as u8);
        no_full_socket_cause(state).map_or(tracer_common::FULL_SOCKET, |c| c as u8)
    })
}

/// An egress RST sent through a user's raw or AF_PACKET socket (tcpkill, an
/// IPS): built outside the TCP stack.
pub const USER_SOCKET: Cause = Cause::Injected;

/// A RST that a tc or tcx egress program made of a TCP stack's segment
/// (rewrote its flags, or built one in its place, as Calico does for
/// unknown mid-flow packets): built outside the TCP stack, whichever
/// program it was (`bpf_program` names it).
pub const BPF_EGRESS: Cause = Cause::Injected;

/// Kernel functions that decide an egress RST that has no socket, in
/// priority order. Modules come last: a RST built by a module that is not
/// netfilter's reject is `injected`.
pub const EGRESS_STACK_RULES: &[(&str, EgressRule)] = &[
    // iptables/ip6tables REJECT --reject-with tcp-reset (xtables, legacy or
    // through nft_compat) and nft `reject with tcp reset` all build the RST
    // here.
    ("nf_send_reset", EgressRule::Cause(Cause::NetfilterReject)),
    ("nf_send_reset6", EgressRule::Cause(Cause::NetfilterReject)),
    // nft `reject` in the netdev (ingress/egress) and bridge families builds
    // the RST itself and hands it to the device.
    (
        "nft_reject_netdev_eval",
        EgressRule::Cause(Cause::NetfilterReject),
    ),
    (
        "nft_reject_bridge_eval",
        EgressRule::Cause(Cause::NetfilterReject),
    ),
    // The TCP stack's IPv6 replies (closed port, time-wait) leave without
    // a socket; tcp_send_reset has counted them already.
    ("tcp_v6_send_response", EgressRule::TcpStack),
    ("tcp_v6_send_reset", EgressRule::TcpStack),
    ("tcp_v4_send_reset", EgressRule::TcpStack),
];

/// The TCP stack's send path for a full socket's own RST (aborts, resets
/// on close, timeouts): on the kernel stack at the egress hook, a full
/// socket's RST is the stack's, which tcp_send_reset reported; without
/// it, a program at the device's egress made it (`BPF_EGRESS`).
pub const FULL_SOCKET_RESET: &str = "tcp_send_active_reset";

/// The destructor of the TCP stack's replies sent on behalf of a full
/// socket (6.13+: `ip_send_unicast_reply` makes the socket they answer for
/// their owner, a listener with a full queue, a socket that got data after
/// close): with it, a full socket's RST at the egress hook is the stack's,
/// already counted at send, whatever the kernel stack shows.
pub const REPLY_DESTRUCTOR: &str = "sock_edemux";

/// `REPLY_DESTRUCTOR`'s address; 0 where this kernel's symbols lack it (it
/// then matches no packet: kernels before it leave such replies to their
/// control socket).
pub fn resolve_reply_destructor(ksyms: &crate::kernel::ksyms::Kallsyms) -> u64 {
    ksyms.range(REPLY_DESTRUCTOR).map_or(0, |(start, _)| start)
}

/// `FULL_SOCKET_RESET` as the egress program takes it; None where this
/// kernel's symbols lack it (a full socket's packets are then not read).
pub fn resolve_full_socket_reset(
    ksyms: &crate::kernel::ksyms::Kallsyms,
) -> Option<tracer_common::StackRule> {
    let (start, end) = ksyms.range(FULL_SOCKET_RESET)?;
    Some(tracer_common::StackRule {
        start,
        end,
        cause: BPF_EGRESS as u32,
        ..tracer_common::StackRule::NONE
    })
}

/// Kernel functions of a netfilter REJECT that answers with an ICMP
/// (ICMPv6) error, for the destination unreachables quoting a TCP segment
/// that leave a device: one on the stack makes it `netfilter-reject-icmp`.
/// The ICMP is sent within the reject's call. nf_send_unreach may reach
/// icmp_send by a tail call and leave the stack: its callers are here too.
pub const EGRESS_ICMP_STACK_RULES: &[&str] = &[
    "nf_send_unreach",
    "nf_send_unreach6",
    // nft `reject` in the ip, ip6 and inet families.
    "nft_reject_ipv4_eval",
    "nft_reject_ipv6_eval",
    "nft_reject_inet_eval",
    // ... in the netdev and bridge families, which build the error itself.
    "nft_reject_netdev_eval",
    "nft_reject_bridge_eval",
    // iptables/ip6tables REJECT (legacy, or through nft_compat).
    "reject_tg",
    "reject_tg6",
];

// The kernel takes each table in a fixed array: a rule past its end would
// be left out without a word and turn its cause off, so a table that does
// not fit fails the build. The egress table also holds the module area.
const _: () = {
    use tracer_common::MAX_STACK_RULES;
    assert!(STACK_RULES.len() <= MAX_STACK_RULES, "STACK_RULES overflow");
    assert!(
        REASONLESS_STACK_RULES.len() <= MAX_STACK_RULES,
        "REASONLESS_STACK_RULES overflow"
    );
    assert!(
        EGRESS_STACK_RULES.len() < MAX_STACK_RULES,
        "EGRESS_STACK_RULES and the module area overflow"
    );
    assert!(
        EGRESS_ICMP_STACK_RULES.len() <= MAX_STACK_RULES,
        "EGRESS_ICMP_STACK_RULES overflow"
    );
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressRule {
    Cause(Cause),
    /// Sent by the TCP stack: coverage only.
    TcpStack,
}

impl EgressRule {
    fn raw(self) -> u32 {
        match self {
            EgressRule::Cause(c) => c as u32,
            EgressRule::TcpStack => tracer_common::RULE_TCP_STACK,
        }
    }
}

/// One entry of the table the kernel program indexes by reason value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonEntry {
    pub cause: Cause,
    /// Stack rules decide; `cause` applies when none matches.
    pub by_stack: bool,
    /// Sent on a full listener, it is `listen-overflow`.
    pub by_listener: bool,
}

impl ReasonEntry {
    pub fn raw(self) -> u8 {
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        self.cause as u8
            | flag(self.by_stack, tracer_common::NEEDS_STACK)
            | flag(self.by_listener, tracer_common::BY_LISTENER)
    }
}

pub fn reason_table(reasons: &BTreeMap<u64, String>) -> Vec<(u32, ReasonEntry)> {
    reasons
        .iter()
        .filter(|(v, _)| **v < u64::from(tracer_common::MAX_REASONS))
        .map(|(v, n)| {
            let entry = match ambiguous_reason(n) {
                Some(fallback) => ReasonEntry {
                    cause: fallback,
                    by_stack: true,
                    by_listener: full_listener_reason(n),
                },
                None => ReasonEntry {
                    cause: cause_for_reason(n),
                    by_stack: false,
                    by_listener: full_listener_reason(n),
                },
            };
            (*v as u32, entry)
        })
        .collect()
}

/// The drop cause a kernel `skb_drop_reason` name decides: policies and
/// limits only. Every other reason (the TCP stack's own: old data,
/// checksum, no socket, ...) is not a silent drop rsttrace counts.
pub fn drop_cause_for_reason(name: &str) -> Option<DropCause> {
    match name {
        "NETFILTER_DROP" => Some(DropCause::NetfilterDrop),
        "TC_INGRESS" | "TC_EGRESS" => Some(DropCause::TcDrop),
        "XDP" => Some(DropCause::XdpDrop),
        // Cgroup ingress programs and socket filters drop through
        // sk_filter: the kernel names both SOCKET_FILTER.
        "BPF_CGROUP_EGRESS" | "SOCKET_FILTER" => Some(DropCause::CgroupDrop),
        "TCP_LISTEN_OVERFLOW" => Some(DropCause::ListenOverflow),
        _ => None,
    }
}

/// The kfree_skb reason table as the kernel program takes it, for the
/// drop causes in `wanted` only (the `--cause` scope): (reason value, drop
/// cause).
pub fn drop_reason_table(
    reasons: &BTreeMap<u64, String>,
    wanted: &[DropCause],
) -> Vec<(u32, DropCause)> {
    reasons
        .iter()
        .filter(|(v, _)| **v < u64::from(tracer_common::MAX_DROP_REASONS))
        .filter_map(|(v, n)| Some((*v as u32, drop_cause_for_reason(n)?)))
        .filter(|(_, c)| wanted.contains(c))
        .collect()
}

/// The hooks whose BPF programs may have made a drop of `cause`, from the
/// dropping function (`location`, symbolized): tc's ingress runs in
/// `__netif_receive_skb_core`, its egress on the way to a device's queue;
/// a cgroup's egress program drops in `ip_finish_output` (BPF_CGROUP_EGRESS),
/// its ingress program through `sk_filter` (SOCKET_FILTER).
pub fn drop_hooks(cause: DropCause, location: &str) -> Vec<super::bpfprogs::Hook> {
    use super::bpfprogs::Hook;
    match cause {
        DropCause::TcDrop if location.contains("netif_receive") => vec![Hook::TcIngress],
        DropCause::TcDrop if location.contains("xmit") || location.contains("egress") => {
            vec![Hook::TcEgress]
        }
        DropCause::TcDrop => vec![Hook::TcIngress, Hook::TcEgress],
        DropCause::XdpDrop => vec![Hook::Xdp],
        DropCause::CgroupDrop if location.contains("output") => vec![Hook::CgroupEgress],
        DropCause::CgroupDrop if location.contains("filter") => vec![Hook::CgroupIngress],
        DropCause::CgroupDrop => vec![Hook::CgroupEgress, Hook::CgroupIngress],
        _ => vec![],
    }
}

/// The drop causes a kernel with these kfree_skb reasons can report.
pub fn drop_causes_named(reasons: &BTreeMap<u64, String>) -> Vec<DropCause> {
    DropCause::ALL
        .into_iter()
        .filter(|c| {
            reasons
                .values()
                .any(|n| drop_cause_for_reason(n) == Some(*c))
        })
        .collect()
}

/// The stack rules as the kernel program takes them; rules whose function
/// this kernel lacks are left out and returned by name.
pub fn resolve_stack_rules(
    ksyms: &crate::kernel::ksyms::Kallsyms,
) -> (tracer_common::StackRules, Vec<&'static str>) {
    let rules: Vec<Spec> = STACK_RULES
        .iter()
        .map(|(f, c)| (*f, None, 0, *c as u32))
        .collect();
    resolve(ksyms, &rules)
}

/// The rules for kernels without an RST reason (see
/// `REASONLESS_STACK_RULES`).
pub fn resolve_reasonless_rules(
    ksyms: &crate::kernel::ksyms::Kallsyms,
) -> (tracer_common::StackRules, Vec<&'static str>) {
    let rules: Vec<Spec> = REASONLESS_STACK_RULES
        .iter()
        .map(|r| {
            let mask = r.states.iter().fold(0u32, |m, s| m | 1 << s);
            (r.func, r.also, mask, r.cause as u32)
        })
        .collect();
    resolve(ksyms, &rules)
}

/// The egress rules; a final rule covers the module area (`injected`).
/// nf_send_reset lives in a module (nf_reject_ipv4) on most distribution
/// kernels, so it is looked up in modules too and must come first.
pub fn resolve_egress_rules(
    ksyms: &crate::kernel::ksyms::Kallsyms,
) -> (tracer_common::StackRules, Vec<&'static str>) {
    let table: Vec<Spec> = EGRESS_STACK_RULES
        .iter()
        .map(|(f, r)| (*f, None, 0, r.raw()))
        .collect();
    let (mut rules, missing) = resolve(ksyms, &table);
    if let Some((start, end)) = ksyms.module_area() {
        rules.rules[rules.count as usize] = tracer_common::StackRule {
            start,
            end,
            cause: Cause::Injected as u32,
            ..tracer_common::StackRule::NONE
        };
        rules.count += 1;
    }
    (rules, missing)
}

/// The ICMP reject rules (see `EGRESS_ICMP_STACK_RULES`), and the
/// functions not in the kernel now (their module not loaded). Their cause
/// is not read: a match is `netfilter-reject-icmp`, at the matched function.
pub fn resolve_egress_icmp_rules(
    ksyms: &crate::kernel::ksyms::Kallsyms,
) -> (tracer_common::StackRules, Vec<&'static str>) {
    let table: Vec<Spec> = EGRESS_ICMP_STACK_RULES
        .iter()
        .map(|f| (*f, None, 0, 0))
        .collect();
    resolve(ksyms, &table)
}

/// (function, second function, state mask, raw cause).
type Spec = (&'static str, Option<&'static str>, u32, u32);

fn resolve(
    ksyms: &crate::kernel::ksyms::Kallsyms,
    table: &[Spec],
) -> (tracer_common::StackRules, Vec<&'static str>) {
    let mut rules = tracer_common::StackRules::EMPTY;
    let mut missing = vec![];
    for (func, also, state_mask, cause) in table {
        let Some((start, end)) = ksyms.range(func) else {
            missing.push(*func);
            continue;
        };
        let (also_start, also_end) = match also.map(|a| (a, ksyms.range(a))) {
            None => (0, 0),
            Some((_, Some(r))) => r,
            Some((a, None)) => {
                missing.push(a);
                continue;
            }
        };
        // Room for every rule: the tables' sizes are checked when compiling.
        rules.rules[rules.count as usize] = tracer_common::StackRule {
            start,
            end,
            also_start,
            also_end,
            cause: *cause,
            state_mask: *state_mask,
        };
        rules.count += 1;
    }
    missing.dedup();
    (rules, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_the_summary_needs_nothing_from_are_budgeted() {
        let m = line_only_mask();
        let has = |c: Cause| m & (1 << c as u32) != 0;
        for c in [Cause::ClosedPort, Cause::KeepaliveTimeout, Cause::Received] {
            assert!(has(c), "{c}");
        }
        // Actors are tallied, rule authors named, stacks shown.
        for c in [
            Cause::Unknown,
            Cause::NetfilterReject,
            Cause::AbortOnClose,
            Cause::SocketKilled,
            Cause::Injected,
        ] {
            assert!(!has(c), "{c}");
        }
        assert_eq!(m & actor_mask(), 0);
    }

    #[test]
    fn the_kprobes_decide_only_rsts_without_a_full_socket() {
        let t = no_full_socket_table();
        assert_eq!(t[0], Cause::ClosedPort as u8);
        assert_eq!(
            t[usize::from(tcp_state::TIME_WAIT)],
            Cause::DataAfterClose as u8
        );
        assert_eq!(
            t[usize::from(tcp_state::NEW_SYN_RECV)],
            Cause::InvalidSegment as u8
        );
        for s in [tcp_state::ESTABLISHED, tcp_state::CLOSE, tcp_state::LISTEN] {
            assert_eq!(t[usize::from(s)], tracer_common::FULL_SOCKET, "state {s}");
        }
    }

    #[test]
    fn every_reason_of_the_6_18_kernel_maps_as_designed() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/6.18/tcp_send_reset"
        ))
        .unwrap();
        let f = crate::kernel::format::Format::parse(&text).unwrap();
        let table: BTreeMap<u32, Cause> = reason_table(&f.symbols("reason"))
            .into_iter()
            .map(|(v, e)| (v, e.cause))
            .collect();
        let stack: Vec<u32> = reason_table(&f.symbols("reason"))
            .into_iter()
            .filter(|(_, e)| e.by_stack)
            .map(|(v, _)| v)
            .collect();
        assert_eq!(
            stack,
            vec![0, 14, 16],
            "NOT_SPECIFIED, TCP_STATE, TCP_DISCONNECT_WITH_DATA"
        );
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
            (14, Cause::InvalidSegment),
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
    fn stack_rules_resolve_in_priority_order() {
        let k = crate::kernel::ksyms::Kallsyms::parse(
            "ffffffff8206b520 T tcp_abort\nffffffff820711c0 T __tcp_close\n\
             ffffffff820715f0 T tcp_close\nffffffff820719a0 T tcp_disconnect\n\
             ffffffff820719f0 T after\nffffffff82080000 T inet_csk_listen_stop\n\
             ffffffff82080400 T inet_csk_listen_start\n",
        )
        .unwrap();
        let (rules, missing) = resolve_stack_rules(&k);
        assert!(missing.is_empty());
        assert_eq!(rules.count, 5);
        assert_eq!(rules.rules[0].cause, Cause::SocketKilled as u32);
        assert_eq!(rules.rules[0].start, 0xffffffff8206b520);
        assert_eq!(rules.rules[0].end, 0xffffffff820711c0);
        // A closing listener's stack holds __tcp_close too: it comes first.
        assert_eq!(rules.rules[1].cause, Cause::ListenerClosed as u32);
        assert_eq!(rules.rules[2].cause, Cause::LingerAbort as u32);
        assert_eq!(rules.rules[4].cause, Cause::AppDisconnect as u32);
        let entry = ReasonEntry {
            cause: Cause::InvalidSegment,
            by_stack: true,
            by_listener: false,
        };
        assert_eq!(
            entry.raw(),
            Cause::InvalidSegment as u8 | tracer_common::NEEDS_STACK
        );
    }

    #[test]
    fn reasonless_rules_need_both_functions_and_the_state() {
        let k = crate::kernel::ksyms::Kallsyms::parse(
            "ffffffff81000000 T tcp_abort\nffffffff81000100 T tcp_close\n\
             ffffffff81000200 T tcp_disconnect\nffffffff81000300 T tcp_keepalive_timer\n\
             ffffffff81000400 T tcp_out_of_resources\nffffffff81000500 T after\n\
             ffffffff81000600 T inet_csk_listen_stop\nffffffff81000700 T after2\n",
        )
        .unwrap();
        let (rules, missing) = resolve_reasonless_rules(&k);
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(rules.count as usize, REASONLESS_STACK_RULES.len());
        assert_eq!(rules.rules[1].cause, Cause::ListenerClosed as u32);
        let linger = rules.rules[2];
        assert_eq!(linger.cause, Cause::LingerAbort as u32);
        assert_eq!(
            (linger.start, linger.also_start),
            (0xffffffff81000200, 0xffffffff81000100)
        );
        assert_eq!(
            rules.rules[3].also_start, 0,
            "app-disconnect: tcp_disconnect alone"
        );
        assert_eq!(rules.rules[4].state_mask, 1 << tcp_state::FIN_WAIT2);
        assert_eq!(rules.rules[5].state_mask, 0);
        assert!(rules.rules.len() >= REASONLESS_STACK_RULES.len());
    }

    #[test]
    fn only_syscall_paths_have_an_actor() {
        assert!(has_actor(Cause::AbortOnClose));
        for c in [
            Cause::ClosedPort,
            Cause::KeepaliveTimeout,
            Cause::DataAfterClose,
            Cause::InvalidSegment,
            Cause::Unknown,
        ] {
            assert!(!has_actor(c), "{c}");
        }
    }

    #[test]
    fn drop_hooks_follow_the_dropping_function() {
        use crate::attribution::bpfprogs::Hook as H;
        let h = drop_hooks;
        assert_eq!(
            h(DropCause::TcDrop, "__netif_receive_skb_core.constprop.0"),
            [H::TcIngress]
        );
        assert_eq!(h(DropCause::TcDrop, "__dev_queue_xmit"), [H::TcEgress]);
        assert_eq!(h(DropCause::TcDrop, "?"), [H::TcIngress, H::TcEgress]);
        assert_eq!(h(DropCause::XdpDrop, "do_xdp_generic"), [H::Xdp]);
        assert_eq!(
            h(DropCause::CgroupDrop, "ip_finish_output"),
            [H::CgroupEgress]
        );
        assert_eq!(
            h(DropCause::CgroupDrop, "sk_filter_trim_cap"),
            [H::CgroupIngress]
        );
        // Not BPF: nothing to name.
        assert!(h(DropCause::NetfilterDrop, "nft_do_chain [nf_tables]").is_empty());
        assert!(h(DropCause::ListenOverflow, "tcp_v4_rcv").is_empty());
        // Ordinary stack drops are no drop cause at all.
        for r in ["NO_SOCKET", "TCP_CSUM", "TCP_OLD_DATA", "NOT_SPECIFIED"] {
            assert_eq!(drop_cause_for_reason(r), None, "{r}");
        }
    }

    /// The README's example session is what users compare their own with:
    /// it must come from a build that prints the facts right (the local
    /// port of an abort was once printed as 0 there for weeks), and name
    /// only causes that exist; its cause table names every cause.
    #[test]
    fn readme_example_and_cause_table_are_honest() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let names: Vec<&str> = Cause::ALL.iter().map(|c| c.name()).collect();
        let example = readme
            .split("## What it shows")
            .nth(1)
            .and_then(|s| s.split("```").nth(1))
            .expect("an example session in README's 'What it shows'");
        let mut lines = 0;
        for line in example.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            // Event lines: "12:28:33.503268 cause to A:P from A:P ...".
            if words.len() < 6 || words[0].matches(':').count() != 2 || words[2] != "to" {
                continue;
            }
            lines += 1;
            assert!(names.contains(&words[1]), "unknown cause in: {line}");
            assert_eq!(words[4], "from", "{line}");
            for end in [words[3], words[5]] {
                let port = end.rsplit(':').next().unwrap();
                assert_ne!(
                    port.parse::<u16>().unwrap_or(0),
                    0,
                    "port of {end} in: {line}"
                );
            }
        }
        assert!(lines >= 5, "{lines} event lines in the README example");
        let table = readme
            .split("## Causes")
            .nth(1)
            .expect("a Causes section")
            .split("\n\n")
            .find(|b| b.starts_with("| cause"))
            .expect("the cause table");
        // Rows: "| `name` | what happened | decided by |".
        let listed: Vec<(&str, &str)> = table
            .lines()
            .filter_map(|l| {
                let mut cells = l.strip_prefix("| `")?.split(" | ");
                Some((cells.next()?.strip_suffix('`')?, cells.next()?))
            })
            .collect();
        for c in Cause::ALL {
            if c == Cause::Received {
                continue;
            }
            match listed.iter().find(|(name, _)| *name == c.name()) {
                Some((_, what)) => assert_eq!(*what, c.description(), "README's row of {c}"),
                None => panic!("README's cause table lacks {c}"),
            }
        }
        for (name, _) in &listed {
            assert!(
                names.contains(name),
                "README names a cause that does not exist: {name}"
            );
        }
        let drops = readme
            .split("| drop cause |")
            .nth(1)
            .expect("the drop cause table")
            .split("\n\n")
            .next()
            .unwrap();
        let listed: Vec<(&str, &str)> = drops
            .lines()
            .filter_map(|l| {
                let mut cells = l.strip_prefix("| `")?.split(" | ");
                Some((cells.next()?.strip_suffix('`')?, cells.next()?))
            })
            .collect();
        let want: Vec<(&str, &str)> = DropCause::ALL
            .iter()
            .map(|c| (c.name(), c.description()))
            .collect();
        assert_eq!(listed, want, "README's drop cause table");
    }
}
