//! Everything about a RST from outside its kernel record: the actor
//! process and its container (/proc), the security agent it is, the
//! netfilter rule that answered and its author (nftables netlink), the
//! module that built it and the kernel stack (kallsyms). The decode of the
//! record itself is pure (`decode.rs`); this part reads the system.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    rc::Rc,
    time::{Duration, Instant},
};

use tracer_common::{KillRecord, RstEvent, source, tcp_state};

use crate::{
    attribution::{
        actor::ActorResolver,
        agents, bpfprogs,
        cause::{self, Cause},
        decode::{self, Listener, Rst},
        exits,
        listeners::Listeners,
        netfilter,
        nft::{
            matcher::{self, Packet},
            names::{Backend, Named, Namer},
        },
        nftmon::{Author, SharedLog, Verdict},
        ustack::UserStacks,
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
    /// Rules older than the trace, by matching against each namespace's
    /// ruleset.
    pub namer: RefCell<Namer>,
    /// Symbolizes actors' user-space stacks (`--user-stacks`).
    pub user_stacks: UserStacks,
    /// The programs at a device's egress, by (namespace, ifindex), asked
    /// again once `EGRESS_PROGRAMS_FRESH` old: a flood of RSTs from one
    /// program asks netlink and /proc once.
    pub egress_programs: HashMap<(u64, u32), (Instant, Vec<bpfprogs::BpfProgram>)>,
}

const EGRESS_PROGRAMS_FRESH: Duration = Duration::from_secs(2);

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

    /// Who added the rule the ruleset matcher named, if it was added while
    /// we ran (nftables only: iptables-legacy tells no one).
    pub fn author_of(&self, netns: u64, n: &Named) -> Option<Author> {
        if n.backend == "iptables-legacy" {
            return None;
        }
        let mut a = self
            .ruleset
            .lock()
            .ok()?
            .author_of(netns, &n.table, &n.chain, n.handle?)?;
        a.agent = self.actors.agent(&a.comm);
        Some(a)
    }

    /// The rule that rejected or dropped `pkt` at `hook` in `netns`, in
    /// `backend`'s ruleset.
    pub fn name_rule(
        &self,
        netns: u64,
        pkt: &Packet,
        hook: u32,
        want: Verdict,
        backend: Backend,
    ) -> Option<Named> {
        if netns == 0 {
            return None;
        }
        self.namer
            .borrow_mut()
            .name(netns, pkt, hook, want, backend)
    }

    /// The rule that silently dropped (`want` Drop) or rejected with an
    /// ICMP error (`want` Reject) `remote`'s segments in `netns`: at the
    /// hooks a peer's packet meets, else (a RST this host sent, dropped on
    /// its way out) at output.
    pub fn name_drop(
        &self,
        netns: u64,
        remote: std::net::IpAddr,
        want: Verdict,
    ) -> Option<(u32, Named)> {
        let v6 = remote.is_ipv6();
        let inbound = Packet {
            v6,
            src: Some(remote),
            dst: None,
            sport: None,
            dport: None,
            l4proto: libc::IPPROTO_TCP as u8,
        };
        let outbound = Packet {
            src: None,
            dst: Some(remote),
            ..inbound.clone()
        };
        [
            (0, &inbound),
            (1, &inbound),
            (2, &inbound),
            (3, &outbound),
            (4, &outbound),
        ]
        .into_iter()
        .find_map(|(hook, p)| Some((hook, self.name_rule(netns, p, hook, want, Backend::Either)?)))
    }

    /// A RST from its kernel record: decoded, then enriched. `stack` looks
    /// a stack id up in the kernel's stack map, `nft_chain` an nftables
    /// chain's (table, chain) names by its kernel address.
    /// `kill` a process's last fatal signal (`KILLS`), `user_stack` a
    /// user-space stack by its id.
    pub fn rst(
        &mut self,
        ev: &RstEvent,
        stack: impl Fn(i32) -> Option<Vec<u64>>,
        nft_chain: impl FnOnce(u64) -> Option<(Untrusted, Untrusted)>,
        kill: impl Fn(u32) -> Option<KillRecord>,
        user_stack: impl FnOnce(i32) -> Option<Vec<u64>>,
    ) -> Option<Rst> {
        let rst = decode::decode(ev, &self.reasons, &self.clock)?;
        Some(self.enrich(rst, ev, stack, nft_chain, kill, user_stack))
    }

    fn enrich(
        &mut self,
        rst: Rst,
        ev: &RstEvent,
        stack: impl Fn(i32) -> Option<Vec<u64>>,
        nft_chain: impl FnOnce(u64) -> Option<(Untrusted, Untrusted)>,
        kill: impl Fn(u32) -> Option<KillRecord>,
        user_stack: impl FnOnce(i32) -> Option<Vec<u64>>,
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
        if let Some(nf) = netfilter.as_mut() {
            let legacy = nf.backend == Some("iptables-legacy");
            let backend = match nf.backend {
                Some("iptables-legacy") => Backend::Legacy,
                Some(_) => Backend::Nftables,
                None => Backend::Either,
            };
            // The rule, by running the answered segment (the RST reversed)
            // through the ruleset.
            let netns = u64::from(ev.netns);
            let named = nf.hook.and_then(matcher::hook_number).and_then(|hook| {
                let pkt = Packet {
                    v6: rst.remote.is_ipv6(),
                    src: Some(rst.remote.ip()),
                    dst: Some(rst.local.ip()),
                    sport: Some(rst.remote.port()),
                    dport: Some(rst.local.port()),
                    l4proto: libc::IPPROTO_TCP as u8,
                };
                self.name_rule(netns, &pkt, hook, Verdict::Reject, backend)
            });
            // The base chain the kernel evaluated, where kprobes tell it.
            let kernel_chain = (ev.nft_chain != 0)
                .then(|| nft_chain(ev.nft_chain))
                .flatten();
            match (kernel_chain, named) {
                // The kernel's chain wins; the match adds the rule where it
                // agrees.
                (Some((t, c)), Some(n)) if t == n.table && c == n.base_chain => {
                    nf.author = self.author_of(netns, &n);
                    nf.name_rule(&n)
                }
                (Some((t, c)), _) => (nf.table, nf.chain) = (Some(t), Some(c)),
                // The matched rule's author only: another rule added while
                // tracing did not answer this segment.
                (None, Some(n)) => {
                    nf.author = self.author_of(netns, &n);
                    nf.name_rule(&n)
                }
                // Nothing in the ruleset explains it (or it could not be
                // read): the newest reject rule added while tracing, the
                // best guess left (nftables follows its changes; legacy
                // keeps the table and base chain the stack gave).
                (None, None) if legacy => {}
                (None, None) => {
                    nf.author = self.rule_author(netns, Verdict::Reject);
                    if let Some(a) = &nf.author {
                        (nf.table, nf.chain) = (a.table.clone(), a.chain.clone());
                    }
                }
            }
        }
        // A BPF program built it: its frame on the stack (JIT code in the
        // module area, which the module rule matched), else a program at
        // the egress of the device a stack socket's segment left through
        // as a RST.
        let frame = (cause == Cause::Injected)
            .then(|| exits::bpf_program_in(ips.as_deref()?))
            .flatten();
        let netns_path = || bpfprogs::netns_path(u64::from(ev.netns));
        let bpf_program = match frame {
            Some((tag, name)) => Some(bpfprogs::by_frame(netns_path().as_deref(), &tag, &name)),
            None if ev.source == source::EGRESS_BPF => bpfprogs::one_of(egress_programs(
                &mut self.egress_programs,
                u64::from(ev.netns),
                ev.ifindex,
            )),
            None => None,
        };
        // A module built it: the first module frame names it.
        let module = (cause == Cause::Injected && bpf_program.is_none())
            .then(|| named.as_ref()?.iter().find_map(|(_, m)| m.as_deref()))
            .flatten()
            .map(Untrusted::from);
        // Raw and packet sockets send in the injector's process context; a
        // module's or a program's RST may come from any context.
        let mut actor = (cause::has_actor(cause) && module.is_none() && bpf_program.is_none())
            .then(|| self.actors.resolve(ev));
        // Symbolized now, while the process (and its mappings) most likely
        // still exists.
        if let Some(a) = actor.as_mut()
            && ev.user_stack >= 0
        {
            a.stack = user_stack(ev.user_stack).map(|ips| self.user_stacks.symbolize(a.pid, &ips));
        }
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
            .or_else(|| {
                // The owner of the matched rule or set, when a security agent.
                let nf = netfilter.as_ref()?;
                let owner = nf.agent.clone()?;
                self.namer
                    .borrow()
                    .is_security_agent(&owner.lossy())
                    .then_some(owner)
            })
            .or_else(|| agents::module_agent(&module.as_ref()?.lossy()).map(Untrusted::from))
            .or_else(|| bpf_program.as_ref()?.agent.map(Untrusted::from));
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
                    gone_at: Some(rst.ts),
                    backlog: None,
                })
            }
            // A port nobody listens on now: did someone, recently?
            (Cause::ClosedPort, Some(ns)) => self.listeners.had(ns, port, rst.ts),
            // Sent on a listening socket (a full accept queue, or a segment
            // a listener refuses): the listener and who holds it.
            (_, Some(ns)) if rst.state == tcp_state::name(u32::from(tcp_state::LISTEN)) => {
                self.listeners.live(ns, port, &mut self.actors)
            }
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
            bpf_program,
            owner: self.actors.owner_at(ev.sk_ino, rst.ts),
            ..rst
        }
    }
}

/// The programs at the egress of device `ifindex` of namespace `netns`
/// (none where the namespace can't be entered), from `cache` while fresh.
fn egress_programs(
    cache: &mut HashMap<(u64, u32), (Instant, Vec<bpfprogs::BpfProgram>)>,
    netns: u64,
    ifindex: u32,
) -> &[bpfprogs::BpfProgram] {
    let key = (netns, ifindex);
    let fresh = cache
        .get(&key)
        .is_some_and(|(at, _)| at.elapsed() <= EGRESS_PROGRAMS_FRESH);
    if !fresh {
        let progs = bpfprogs::netns_path(netns)
            .map(|path| {
                bpfprogs::at_device_egress(&path, ifindex).unwrap_or_else(|e| {
                    log::debug!("programs at the egress of {ifindex} in netns {netns}: {e}");
                    vec![]
                })
            })
            .unwrap_or_default();
        cache.insert(key, (Instant::now(), progs));
    }
    &cache[&key].1
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
