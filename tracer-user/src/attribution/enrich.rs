//! Everything about a RST from outside its kernel record: the actor
//! process and its container (/proc), the security agent it is, the
//! netfilter rule that answered and its author (nftables netlink), the
//! module that built it and the kernel stack (kallsyms). The decode of the
//! record itself is pure (`decode.rs`); this part reads the system.

use std::{collections::BTreeMap, rc::Rc};

use tracer_common::{KillRecord, RstEvent};

use crate::{
    attribution::{
        actor::ActorResolver,
        agents,
        cause::{self, Cause},
        decode::{self, Listener, Rst},
        exits,
        listeners::Listeners,
        netfilter,
        nftmon::{Author, SharedLog, Verdict},
    },
    clock::BootClock,
    kernel::ksyms::Kallsyms,
    untrusted::Untrusted,
};

/// What the session learns from outside the kernel's records, kept
/// across RSTs: the nftables ruleset log, the kernel's reason names and
/// symbols, the actors (and their agents) seen so far.
pub struct Enricher {
    pub ruleset: SharedLog,
    pub clock: BootClock,
    pub reasons: BTreeMap<u64, String>,
    pub actors: ActorResolver,
    pub ksyms: Option<Rc<Kallsyms>>,
    /// Listening sockets seen while tracing, for closed-port RSTs.
    pub listeners: Listeners,
}

impl Enricher {
    /// Who added a rule with `verdict` in namespace `netns` while we ran,
    /// and the security agent that process is, if any.
    pub fn rule_author(&self, netns: u64, verdict: Verdict) -> Option<Author> {
        if netns == 0 {
            return None;
        }
        let mut a = self.ruleset.lock().ok()?.author(netns, verdict)?;
        a.agent = self.actors.agent(&a.comm);
        Some(a)
    }

    /// A RST from its kernel record: decoded, then enriched. `stack` looks
    /// a stack id up in the kernel's stack map, `nft_chain` an nftables
    /// chain's (table, chain) names by its kernel address.
    /// `kill` a process's last fatal signal (`KILLS`).
    pub fn rst(
        &mut self,
        ev: &RstEvent,
        stack: impl Fn(i32) -> Option<Vec<u64>>,
        nft_chain: impl FnOnce(u64) -> Option<(Untrusted, Untrusted)>,
        kill: impl Fn(u32) -> Option<KillRecord>,
    ) -> Option<Rst> {
        let rst = decode::decode(ev, &self.reasons, &self.clock)?;
        Some(self.enrich(rst, ev, stack, nft_chain, kill))
    }

    fn enrich(
        &mut self,
        rst: Rst,
        ev: &RstEvent,
        stack: impl Fn(i32) -> Option<Vec<u64>>,
        nft_chain: impl FnOnce(u64) -> Option<(Untrusted, Untrusted)>,
        kill: impl Fn(u32) -> Option<KillRecord>,
    ) -> Rst {
        let cause = rst.cause;
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
            nf.author = self.rule_author(u64::from(ev.netns), Verdict::Reject);
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
        // An actor that was exiting: why, and who ended it.
        let exit = actor
            .as_ref()
            .and_then(|_| exits::exit_of(ev, kill, &stack, ksyms, &self.actors));
        // The security agent behind the RST: the actor, else the process
        // that killed it, else the author of the rule that fired, else the
        // module that built it.
        let agent = actor
            .as_ref()
            .and_then(|a| a.agent.clone())
            .or_else(|| exit.as_ref()?.killed_by.as_ref()?.agent.clone())
            .or_else(|| netfilter.as_ref()?.author.as_ref()?.agent.clone())
            .or_else(|| agents::module_agent(&module.as_ref()?.lossy()).map(Untrusted::from));
        let labels = if agent.is_some() {
            vec!["security-agent".to_string()]
        } else {
            Vec::new()
        };
        let port = rst.local.port();
        let listener = match (cause, rst.netns) {
            // The listener's holder closed it, exiting or not: the task at
            // the hook held it.
            (Cause::ListenerClosed, _) => {
                if let Some(ns) = rst.netns {
                    self.listeners.closed(ns, port, rst.ts);
                }
                Some(Listener {
                    port,
                    pid: actor.as_ref().map(|a| a.pid),
                    comm: actor.as_ref().map(|a| a.comm.clone()),
                    gone_at: rst.ts,
                })
            }
            // A port nobody listens on now: did someone, recently?
            (Cause::ClosedPort, Some(ns)) => self.listeners.had(ns, port, rst.ts),
            _ => None,
        };
        Rst {
            listener,
            exit,
            actor,
            agent,
            labels,
            stack: ips
                .filter(|_| matches!(cause, Cause::Unknown | Cause::Injected))
                .map(|ips| ips.into_iter().map(|ip| symbolize(ksyms, ip)).collect()),
            netfilter,
            module,
            owner: self.actors.owner(ev.sk_ino),
            ..rst
        }
    }
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
