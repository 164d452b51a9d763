//! One RST as userspace reports it, decoded from the kernel's `RstEvent`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use tracer_common::{ABSENT, AF_INET, AF_INET6, RstEvent, tcp_state};

use crate::{
    attribution::actor::{Actor, Owner},
    attribution::cause::Cause,
    attribution::exits::Exit,
    attribution::netfilter::Netfilter,
    clock::BootClock,
    untrusted::Untrusted,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rst {
    pub ts: SystemTime,
    pub cause: Cause,
    pub kernel_reason: Option<String>,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: Option<&'static str>,
    pub netns: Option<u64>,
    pub actor: Option<Actor>,
    /// The security agent behind it, decided here once: the actor, the
    /// rule's author or the module that built it; `labels` says so too.
    pub agent: Option<Untrusted>,
    pub labels: Vec<String>,
    /// Kernel stack, symbolized (`function+0xoff [module]`), for RSTs no
    /// rule explains and RSTs built by a module: whoever loaded the module
    /// named its symbols.
    pub stack: Option<Vec<Untrusted>>,
    pub netfilter: Option<Netfilter>,
    /// The kernel module that built an injected RST.
    pub module: Option<Untrusted>,
    /// The BPF program that built an injected RST: its frame on the
    /// stack, else the program at the egress of the device it left
    /// through (what several there share, when several are).
    pub bpf_program: Option<crate::attribution::bpfprogs::BpfProgram>,
    /// For `socket-killed`: the process that held the destroyed socket.
    pub owner: Option<Owner>,
    /// The listening socket behind the RST: for `listener-closed` the one
    /// whose accept queue held the connection, for `closed-port` the one
    /// the port had, for RSTs sent on a listener (`listen-overflow`, and
    /// `invalid-segment` ones) that listener.
    pub listener: Option<Listener>,
    /// For a RST sent while its actor exited: the signal, the killer.
    pub exit: Option<Exit>,
}

/// A listening socket behind a RST: its port, the process that held it,
/// when it was seen gone (None: still listening), and its backlog (the
/// accept queue's length) where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub pid: Option<u32>,
    pub comm: Option<Untrusted>,
    pub gone_at: Option<SystemTime>,
    pub backlog: Option<u32>,
}

#[cfg(test)]
impl Rst {
    /// A closed-port RST with nothing else known, for tests to change
    /// what they test (`Rst { cause, ..Rst::example() }`).
    pub fn example() -> Self {
        Rst {
            ts: std::time::UNIX_EPOCH,
            cause: Cause::ClosedPort,
            kernel_reason: None,
            family: Family::Ipv4,
            local: "127.0.0.1:9".parse().unwrap(),
            remote: "127.0.0.2:40000".parse().unwrap(),
            state: None,
            netns: None,
            actor: None,
            agent: None,
            labels: vec![],
            stack: None,
            netfilter: None,
            module: None,
            bpf_program: None,
            owner: None,
            listener: None,
            exit: None,
        }
    }
}

pub fn ip_from(family: u8, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*addr))),
        _ => None,
    }
}

/// The kernel's record, read: addresses, cause, the reason's name, state,
/// namespace and time. Nothing from outside the record but the reason
/// names of this kernel's format file; `enrich` adds the rest.
pub fn decode(ev: &RstEvent, reasons: &BTreeMap<u64, String>, clock: &BootClock) -> Option<Rst> {
    let family = match ev.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        _ => return None,
    };
    let local = ip_from(ev.family, &ev.local_addr)?;
    let remote = ip_from(ev.family, &ev.remote_addr)?;
    let kernel_reason = (ev.reason != ABSENT).then(|| {
        reasons
            .get(&u64::from(ev.reason))
            .cloned()
            .unwrap_or_else(|| format!("REASON_{}", ev.reason))
    });
    Some(Rst {
        ts: clock.to_system_time(ev.ts_ns),
        cause: Cause::from_id(ev.cause),
        kernel_reason,
        family,
        local: SocketAddr::new(local, ev.local_port),
        remote: SocketAddr::new(remote, ev.remote_port),
        state: tcp_state::name(ev.state),
        netns: (ev.netns != 0).then_some(u64::from(ev.netns)),
        actor: None,
        agent: None,
        labels: vec![],
        stack: None,
        netfilter: None,
        module: None,
        bpf_program: None,
        owner: None,
        listener: None,
        exit: None,
    })
}
