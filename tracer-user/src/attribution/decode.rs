//! One RST as userspace reports it, decoded from the kernel's `RstEvent`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use tracer_common::{ABSENT, AF_INET, AF_INET6, RstEvent, tcp_state};

use crate::{
    attribution::actor::{Actor, ActorResolver, Owner},
    attribution::cause::{self, Cause},
    attribution::netfilter::{self, Netfilter},
    attribution::nftmon::Author,
    clock::BootClock,
    kernel::ksyms::Kallsyms,
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
    /// For `socket-killed`: the process that held the destroyed socket.
    pub owner: Option<Owner>,
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
            owner: None,
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

pub struct Decoder {
    pub ruleset: crate::attribution::nftmon::SharedLog,
    pub clock: BootClock,
    pub reasons: BTreeMap<u64, String>,
    pub actors: ActorResolver,
    pub ksyms: Option<std::rc::Rc<Kallsyms>>,
}

/// `function+0xoff [module]`, or the bare address when unresolvable.
pub fn symbolize(ksyms: Option<&Kallsyms>, ip: u64) -> Untrusted {
    Untrusted::from(match ksyms.and_then(|k| k.symbolize(ip)) {
        Some((s, off)) => match &s.module {
            Some(m) => format!("{}+{off:#x} [{m}]", s.name),
            None => format!("{}+{off:#x}", s.name),
        },
        None => format!("{ip:#x}"),
    })
}

/// `function [module]` without the offset: names a code location in a
/// summary, where one row stands for many addresses in the function.
pub fn symbolize_function(ksyms: Option<&Kallsyms>, ip: u64) -> Untrusted {
    Untrusted::from(match ksyms.and_then(|k| k.symbolize(ip)) {
        Some((s, _)) => match &s.module {
            Some(m) => format!("{} [{m}]", s.name),
            None => s.name.clone(),
        },
        None => format!("{ip:#x}"),
    })
}

/// Function and module of each frame, innermost first.
fn frames(ksyms: Option<&Kallsyms>, ips: &[u64]) -> Vec<(String, Option<String>)> {
    ips.iter()
        .map(|ip| match ksyms.and_then(|k| k.symbolize(*ip)) {
            Some((s, _)) => (s.name.clone(), s.module.clone()),
            None => (format!("{ip:#x}"), None),
        })
        .collect()
}

impl Decoder {
    /// Who added a rule with `verdict` in namespace `netns` while we ran,
    /// and the security agent that process is, if any.
    pub fn rule_author(
        &self,
        netns: u64,
        verdict: crate::attribution::nftmon::Verdict,
    ) -> Option<Author> {
        if netns == 0 {
            return None;
        }
        let mut a = self.ruleset.lock().ok()?.author(netns, verdict)?;
        a.agent = self.actors.agent(&a.comm);
        Some(a)
    }

    /// `stack` looks a stack id up in the kernel's stack map, `nft_chain`
    /// an nftables chain's (table, chain) names by its kernel address.
    pub fn decode(
        &mut self,
        ev: &RstEvent,
        stack: impl FnOnce(i32) -> Option<Vec<u64>>,
        nft_chain: impl FnOnce(u64) -> Option<(Untrusted, Untrusted)>,
    ) -> Option<Rst> {
        let family = match ev.family {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            _ => return None,
        };
        let local = ip_from(ev.family, &ev.local_addr)?;
        let remote = ip_from(ev.family, &ev.remote_addr)?;
        let cause = Cause::from_id(ev.cause);
        let kernel_reason = (ev.reason != ABSENT).then(|| {
            self.reasons
                .get(&u64::from(ev.reason))
                .cloned()
                .unwrap_or_else(|| format!("REASON_{}", ev.reason))
        });
        let ksyms = self.ksyms.as_deref();
        let ips = if ev.stack_id >= 0 {
            stack(ev.stack_id).map(|ips| match ksyms {
                Some(k) => k.without_own_frames(ips),
                None => ips,
            })
        } else {
            None
        };
        let named = ips.as_deref().map(|ips| frames(ksyms, ips));
        let mut netfilter = (cause == Cause::NetfilterReject)
            .then(|| {
                named
                    .as_ref()
                    .map(|f| netfilter::from_stack(f.iter().map(|(n, _)| n.as_str())))
            })
            .flatten();
        // nftables backends: who added the rule, if it was added while we ran.
        if let Some(nf) = netfilter.as_mut()
            && nf.backend != Some("iptables-legacy")
        {
            nf.author = self.rule_author(
                u64::from(ev.netns),
                crate::attribution::nftmon::Verdict::Reject,
            );
            if let Some(a) = &nf.author {
                nf.table = a.table.clone();
                nf.chain = a.chain.clone();
            } else if ev.nft_chain != 0
                && let Some((table, chain)) = nft_chain(ev.nft_chain)
            {
                // A rule older than the trace: its base chain, as the
                // kernel evaluated it.
                (nf.table, nf.chain) = (Some(table), Some(chain));
            }
        }
        // A module built it: the first module frame names it.
        let module = (cause == Cause::Injected)
            .then(|| named.as_ref()?.iter().find_map(|(_, m)| m.as_deref()))
            .flatten()
            .map(Untrusted::from);
        // Raw and packet sockets send in the injector's process context; a
        // module's RST may come from any context.
        let actor = (cause::has_actor(cause) && module.is_none()).then(|| self.actors.resolve(ev));
        // The security agent behind the RST: the actor, else the author of
        // the rule that fired, else the module that built it.
        let agent = actor
            .as_ref()
            .and_then(|a| a.agent.clone())
            .or_else(|| netfilter.as_ref()?.author.as_ref()?.agent.clone())
            .or_else(|| {
                crate::attribution::agents::module_agent(&module.as_ref()?.lossy())
                    .map(Untrusted::from)
            });
        let labels = if agent.is_some() {
            vec!["security-agent".to_string()]
        } else {
            Vec::new()
        };
        Some(Rst {
            ts: self.clock.to_system_time(ev.ts_ns),
            cause,
            kernel_reason,
            family,
            local: SocketAddr::new(local, ev.local_port),
            remote: SocketAddr::new(remote, ev.remote_port),
            state: tcp_state::name(ev.state),
            netns: (ev.netns != 0).then_some(u64::from(ev.netns)),
            actor,
            agent,
            labels,
            stack: ips
                .filter(|_| matches!(cause, Cause::Unknown | Cause::Injected))
                .map(|ips| ips.into_iter().map(|ip| symbolize(ksyms, ip)).collect()),
            netfilter,
            module,
            owner: self.actors.owner(ev.sk_ino),
        })
    }
}
