//! The kernel side as userspace sees it: load the eBPF object with this
//! kernel's offsets, attach, and read the counters back.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        BtfTracePoint, FEntry, KProbe, RawTracePoint, TracePoint, kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use tracer_common::{
    ABSENT, CidrKey, DropKey, EgressOffsets, KfreeSkbLayout, KillRecord, NetnsOffsets,
    NftChainNames, NftOffsets, RemoteKey, RemoteStats, SendResetLayout, SignalLayout,
    SockAddrOffsets, StackRule, StackRules, TaskOffsets, names, stat,
};

use crate::{attribution::cause::ReasonEntry, untrusted::Untrusted};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What the egress program reads packets with and decides causes by.
#[derive(Debug, Clone)]
pub struct Egress {
    pub offsets: EgressOffsets,
    pub rules: StackRules,
    /// `cause::FULL_SOCKET_RESET`; `StackRule::NONE` where a full
    /// socket's packets are not read (`offsets.dev_egress` ABSENT).
    pub full_socket_reset: StackRule,
    /// `cause::REPLY_DESTRUCTOR`'s address, 0 when unknown.
    pub reply_destructor: u64,
}

pub struct Options<'a> {
    pub send_reset: SendResetLayout,
    /// For the BTF build of the tcp_send_reset program; `None`: the
    /// classic tracepoint reads the record.
    pub sock_addrs: Option<SockAddrOffsets>,
    pub reason_causes: Vec<(u32, ReasonEntry)>,
    pub stack_rules: StackRules,
    pub netns: NetnsOffsets,
    /// `None` leaves the egress hook off (no BTF to read packets with).
    pub egress: Option<Egress>,
    /// The egress rules of ICMP rejects; empty when neither
    /// `netfilter-reject-icmp` nor `netfilter-drop` is in scope (the
    /// latter leaves out the segments those rejects answered).
    pub egress_icmp_rules: StackRules,
    /// Drop counting needs the egress offsets (to read packets) too.
    pub kfree_skb: KfreeSkbLayout,
    /// kfree_skb reason value -> drop cause, for the drop causes in scope.
    pub drop_reason_causes: Vec<(u32, crate::attribution::cause::DropCause)>,
    pub emit_events: bool,
    /// Take the actors' user-space stacks (`--user-stacks`).
    pub user_stacks: bool,
    /// Events per second and CPU of the causes whose event is only a line
    /// (`cause::line_only`); 0 = every event.
    pub events_per_sec: u64,
    pub max_remote_ips: u32,
    pub ring_size: u32,
    pub scope: &'a crate::scope::Scope,
    /// Trace RSTs this host sends.
    pub sent: bool,
    /// Trace RSTs it receives, with tcp_receive_reset's layout.
    pub receive_reset: Option<SendResetLayout>,
    /// The kernel attaches kprobes: before 6.10 they take, on
    /// tcp_v4/v6_send_reset, the RSTs the tracepoint skips.
    pub kprobes: bool,
    /// Kernels with kprobes and nf_tables' BTF: the offsets, and the reject
    /// functions present (nf_send_reset, nf_send_reset6), for naming the
    /// chain of REJECT rules that predate the trace.
    pub nft: Option<(NftOffsets, Vec<&'static str>)>,
    /// `--debug-empty-programs`, for `cargo xtask bench` only: every
    /// program returns at once (the hooks' own cost, nothing counted).
    pub bench_empty: bool,
    /// `--debug-start-xmit-probe`, for `cargo xtask bench` only: an empty
    /// program on net:net_dev_start_xmit too.
    pub bench_start_xmit: bool,
    /// task_struct offsets: RSTs of exiting actors are marked, and fatal
    /// signals kept by their target's process; `None`: no exit attribution.
    pub task: Option<TaskOffsets>,
    /// signal_generate's record (its classic build) and mark_victim's
    /// pid; `ABSENT` where this kernel lacks them.
    pub signal: SignalLayout,
    /// The kernel's BTF as aya parsed it (once, at start-up): for the
    /// loader's relocations and the BTF tracepoints; `None`: no BTF.
    pub btf: Option<&'a aya::Btf>,
    /// `--debug-no-tp-btf`: the classic and raw builds of the hot programs.
    pub no_tp_btf: bool,
}

/// Where nftables evaluates a base chain, and where netfilter's REJECT
/// builds a TCP reset (IPv4, IPv6).
/// Entries of the user-space stack map with `--user-stacks`: about 1 KiB
/// each. Events are read within tens of milliseconds; an older stack a new
/// one replaces (a hash bucket taken over) has been read by then.
const USER_STACK_ENTRIES: u32 = 1024;

pub const NFT_DO_CHAIN: &str = "nft_do_chain";
pub const NF_SEND_RESET_FUNCTIONS: [&str; 2] = ["nf_send_reset", "nf_send_reset6"];

/// The functions `send_reset_no_full_socket` is attached to.
pub const SEND_RESET_FUNCTIONS: [&str; 2] = ["tcp_v4_send_reset", "tcp_v6_send_reset"];

enum Link {
    TracePoint(TracePointLinkId),
    RawTracePoint(RawTracePointLinkId),
    BtfTracePoint(BtfTracePointLinkId),
    KProbe(KProbeLinkId),
}

/// What a program is attached for; in the order the start-up line names
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    SendReset,
    /// Before 6.10: the RSTs tcp_send_reset skips (no full socket).
    SendResetKprobes,
    NetDevQueue,
    /// The base chain of REJECT rules older than the trace.
    NftKprobes,
    KfreeSkb,
    ReceiveReset,
    /// Fatal signals and who sent them (exit attribution).
    SignalGenerate,
    /// The OOM killer's victims.
    MarkVictim,
    /// The bench's empty program on a second egress view.
    StartXmitProbe,
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Btf,
    Raw,
    Classic,
    Kprobe,
}

/// One hook `attach` attached: the record the plan and the start-up line
/// are told from, so they can't name a hook that is not attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub hook: Hook,
    pub variant: Variant,
    /// Kprobes: the functions, all attached.
    pub functions: Vec<&'static str>,
}

impl Attached {
    pub fn new(hook: Hook, variant: Variant) -> Self {
        Self {
            hook,
            variant,
            functions: vec![],
        }
    }

    /// The attachment point, as the start-up line names it.
    pub fn point(&self) -> String {
        match self.hook {
            Hook::SendReset => "tcp:tcp_send_reset".into(),
            Hook::NetDevQueue => "net_dev_queue".into(),
            Hook::KfreeSkb => "skb:kfree_skb".into(),
            Hook::ReceiveReset => "tcp:tcp_receive_reset".into(),
            Hook::SignalGenerate => "signal:signal_generate".into(),
            Hook::MarkVictim => "oom:mark_victim".into(),
            Hook::StartXmitProbe => "net:net_dev_start_xmit (empty, bench)".into(),
            Hook::SendResetKprobes | Hook::NftKprobes => {
                format!("kprobes on {}", self.functions.join("/"))
            }
        }
    }

    /// The point with its kind, as doctor names it.
    pub fn describe(&self) -> String {
        let kind = match self.variant {
            Variant::Btf => "BTF tracepoint ",
            Variant::Raw => "raw tracepoint ",
            Variant::Classic => "tracepoint ",
            Variant::Kprobe => "",
        };
        format!("{kind}{}", self.point())
    }
}

/// Which programs `attach` attaches, decided from the options here only:
/// everything else reads the `Attached` record instead of repeating these
/// conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programs {
    pub send_reset: bool,
    pub egress: bool,
    pub drops: bool,
    pub kprobe_resets: bool,
    /// Reject functions to attach the nftables chain kprobes with; none:
    /// those kprobes stay off.
    pub nft_rejects: Vec<&'static str>,
    pub receive_reset: bool,
    /// signal:signal_generate: who sent the fatal signal to a process
    /// whose exit resets connections.
    pub signals: bool,
    /// oom:mark_victim: which of those the OOM killer chose.
    pub oom: bool,
    /// The bench's empty program on net:net_dev_start_xmit.
    pub start_xmit_probe: bool,
}

impl Programs {
    pub fn decide(opts: &Options<'_>) -> Self {
        // Packets are read with the egress offsets: every hook that reads
        // one needs them.
        let egress = opts.sent && opts.egress.is_some();
        // Killers matter only for RSTs sent by an exiting task, which only
        // the task offsets tell. Kept with --summary-only too (whose
        // summary has no exit story): doctor runs so and must show the
        // hook, and a fatal signal costs one map update.
        let signals = opts.sent && opts.task.is_some() && opts.signal.sig != ABSENT;
        Self {
            signals,
            oom: signals && opts.signal.victim_pid != ABSENT,
            send_reset: opts.sent,
            egress,
            drops: egress && opts.scope.drops && opts.kfree_skb.netfilter_drop != ABSENT,
            // From 6.10 (the reason field) the tracepoint sees them all.
            kprobe_resets: egress && opts.kprobes && opts.send_reset.reason == ABSENT,
            nft_rejects: match &opts.nft {
                Some((_, functions)) if egress => functions.clone(),
                _ => vec![],
            },
            receive_reset: opts.receive_reset.is_some(),
            start_xmit_probe: egress && opts.bench_start_xmit,
        }
    }
}

/// Where a loaded program attaches again after `park`.
#[derive(Clone)]
enum Target {
    TracePoint(&'static str, &'static str),
    RawTracePoint(&'static str),
    /// Its tracepoint was fixed when it was loaded.
    BtfTracePoint,
    KProbe(&'static str),
}

/// Which hot programs run as BTF tracepoints (plain loads, no record
/// built) and which fell back to their classic or raw build, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtfHooks {
    pub used: Vec<&'static str>,
    pub refused: Vec<(&'static str, String)>,
    /// Not tried: a BTF or raw program there could be skipped (why).
    pub avoided: Vec<(&'static str, &'static str)>,
}

/// Why a hook that runs in task context keeps its classic tracepoint on
/// kernels where `bpf_runs_preemptible`.
pub const PREEMPTIBLE_RUNS: &str = "on 7.0+ kernels a raw or BTF tracepoint's program can be \
     preempted, and the kernel skips that program's runs on the CPU meanwhile";

/// Whether this kernel runs programs on raw and BTF tracepoints with
/// preemption on. From 7.0 tracepoints call their probes under SRCU-fast
/// instead of with preemption off ("tracing: Guard __DECLARE_TRACE() use
/// of __DO_TRACE_CALL() with SRCU-fast", the trace-v7.0 merge; 6.19 and
/// earlier, RT or not, disable preemption there), and `__bpf_trace_run`
/// only disables migration. A program that runs in task context can then
/// be preempted mid-run, and the kernel skips every other run of it on
/// that CPU (recursion_misses): seen on 7.2 as closed-port RSTs with no
/// event while another task's abort was in tcp_send_reset. Classic
/// tracepoints keep preemption off around their programs. net_dev_queue is
/// exempt: it fires with bottom halves off (in `__dev_queue_xmit`), where
/// no task is preempted. Kernels built without preemptible RCU still run
/// the program with preemption off (its RCU read lock does it); they are
/// counted as preemptible all the same, on the safe side. An unknown
/// version counts as preemptible.
pub fn bpf_runs_preemptible() -> bool {
    aya::util::KernelVersion::current()
        .map_or(true, |v| v >= aya::util::KernelVersion::new(7, 0, 0))
}

pub struct Tracer {
    ebpf: Ebpf,
    /// Attached programs, detached in reverse order.
    links: Vec<(String, Target, Link)>,
    /// Programs `park` detached, to attach again.
    parked: Vec<(String, Target)>,
    programs: Programs,
    /// Filled as the programs are attached.
    btf_hooks: BtfHooks,
    /// Filled as the programs are attached; kept after `detach` (doctor
    /// reports it).
    attached: Vec<Attached>,
    sock_addrs: bool,
    no_tp_btf: bool,
    /// BTF builds verified ahead of `attach_btf_or`, in parallel.
    preloaded: BTreeMap<&'static str, Result<()>>,
}

impl Tracer {
    pub fn load(opts: &Options<'_>) -> Result<Self> {
        let emit = u8::from(opts.emit_events);
        let programs = Programs::decide(opts);
        let kfree_skb = if programs.drops {
            opts.kfree_skb
        } else {
            KfreeSkbLayout::UNSET
        };
        let egress = opts.egress.clone().unwrap_or(Egress {
            offsets: EgressOffsets::UNSET,
            rules: StackRules::EMPTY,
            full_socket_reset: StackRule::NONE,
            reply_destructor: 0,
        });
        let mut ebpf = EbpfLoader::new()
            .btf(opts.btf)
            .override_global(names::EGRESS_OFFSETS, &egress.offsets, true)
            .override_global(
                names::STACK_COUNTED_AT_SEND,
                &u8::from(stack_counted_at_send(opts)),
                true,
            )
            .override_global(names::EGRESS_STACK_RULES, &egress.rules, true)
            .override_global(names::FULL_SOCKET_RESET, &egress.full_socket_reset, true)
            .override_global(names::REPLY_DESTRUCTOR, &egress.reply_destructor, true)
            .override_global(
                names::EGRESS_ICMP_STACK_RULES,
                &opts.egress_icmp_rules,
                true,
            )
            .override_global(
                names::ICMP_REJECTS_COUNTED,
                &u8::from(
                    opts.scope
                        .drop_causes
                        .contains(&crate::attribution::cause::DropCause::NetfilterRejectIcmp),
                ),
                true,
            )
            .override_global(names::KFREE_SKB_LAYOUT, &kfree_skb, true)
            .override_global(names::FILTER, &opts.scope.filter, true)
            .override_global(
                names::RECEIVE_RESET_LAYOUT,
                &opts.receive_reset.unwrap_or(SendResetLayout::UNSET),
                true,
            )
            .override_global(names::SEND_RESET_LAYOUT, &opts.send_reset, true)
            .override_global(
                names::SOCK_ADDR_OFFSETS,
                &opts.sock_addrs.unwrap_or(SockAddrOffsets::UNSET),
                true,
            )
            .override_global(names::EMIT_EVENTS, &emit, true)
            .override_global(names::BENCH_EMPTY, &u8::from(opts.bench_empty), true)
            .override_global(
                names::TASK_OFFSETS,
                &opts.task.unwrap_or(TaskOffsets::UNSET),
                true,
            )
            .override_global(names::SIGNAL_LAYOUT, &opts.signal, true)
            .override_global(
                names::ACTOR_CAUSES,
                &crate::attribution::cause::actor_mask(),
                true,
            )
            .override_global(
                names::FULL_LISTENER_CAUSES,
                &crate::attribution::cause::full_listener_mask(),
                true,
            )
            .override_global(
                names::NO_FULL_SOCKET_CAUSES,
                &crate::attribution::cause::no_full_socket_table(),
                true,
            )
            .override_global(
                names::USER_SOCKET_CAUSE,
                &(crate::attribution::cause::USER_SOCKET as u8),
                true,
            )
            .override_global(names::EVENTS_PER_SEC, &opts.events_per_sec, true)
            .override_global(
                names::BUDGETED_CAUSES,
                &crate::attribution::cause::line_only_mask(),
                true,
            )
            .override_global(names::WAKEUP_EVERY, &wakeup_every(opts.ring_size), true)
            .override_global(names::STACK_RULES, &opts.stack_rules, true)
            .override_global(names::NETNS_OFFSETS, &opts.netns, true)
            .override_global(
                names::NFT_OFFSETS,
                &opts.nft.as_ref().map_or(NftOffsets::UNSET, |(o, _)| *o),
                true,
            )
            .map_max_entries(names::REMOTES, opts.max_remote_ips)
            .map_max_entries(names::EVENTS, opts.ring_size)
            .override_global(names::USER_STACKS, &u8::from(opts.user_stacks), true)
            // A stack map's entries are allocated when it is made: one
            // unless asked for.
            .map_max_entries(
                names::USER_STACK_TRACES,
                if opts.user_stacks {
                    USER_STACK_ENTRIES
                } else {
                    1
                },
            )
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs")?;

        let mut table: Array<_, u8> = Array::try_from(
            ebpf.map_mut(names::REASON_CAUSE)
                .with_context(|| format!("{} map missing", names::REASON_CAUSE))?,
        )?;
        for (reason, entry) in &opts.reason_causes {
            table
                .set(*reason, entry.raw(), 0)
                .with_context(|| format!("filling the reason table (reason {reason})"))?;
        }
        let mut table: Array<_, u8> = Array::try_from(
            ebpf.map_mut(names::DROP_REASON_CAUSE)
                .with_context(|| format!("{} map missing", names::DROP_REASON_CAUSE))?,
        )?;
        if programs.drops {
            for (reason, cause) in &opts.drop_reason_causes {
                table
                    .set(*reason, *cause as u8, 0)
                    .with_context(|| format!("filling the drop reason table (reason {reason})"))?;
            }
        }
        let mut cidrs: LpmTrie<_, CidrKey, u8> = LpmTrie::try_from(
            ebpf.map_mut(names::REMOTE_CIDRS)
                .with_context(|| format!("{} map missing", names::REMOTE_CIDRS))?,
        )?;
        for c in &opts.scope.cidrs {
            let (len, data) = c.key();
            cidrs
                .insert(&Key::new(len, data), 1, 0)
                .context("filling the --remote table")?;
        }
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(
            ebpf.map_mut(names::LOCAL_PORTS)
                .with_context(|| format!("{} map missing", names::LOCAL_PORTS))?,
        )?;
        for p in &opts.scope.ports {
            ports
                .insert(p, 1, 0)
                .context("filling the --local-port table")?;
        }
        Ok(Self {
            ebpf,
            links: Vec::new(),
            parked: Vec::new(),
            programs,
            btf_hooks: BtfHooks::default(),
            attached: Vec::new(),
            sock_addrs: opts.sock_addrs.is_some(),
            no_tp_btf: opts.no_tp_btf,
            preloaded: BTreeMap::new(),
        })
    }

    fn attach_tp(
        &mut self,
        hook: Hook,
        prog: &str,
        category: &'static str,
        name: &'static str,
    ) -> Result<()> {
        load(&mut self.ebpf, prog, TracePoint::load)?;
        self.attach_to(prog, Target::TracePoint(category, name))?;
        self.attached.push(Attached::new(hook, Variant::Classic));
        Ok(())
    }

    fn attach_raw_tp(&mut self, hook: Hook, prog: &str, name: &'static str) -> Result<()> {
        load(&mut self.ebpf, prog, RawTracePoint::load)?;
        self.attach_to(prog, Target::RawTracePoint(name))?;
        self.attached.push(Attached::new(hook, Variant::Raw));
        Ok(())
    }

    /// Attaches loaded program `prog` to `target`.
    fn attach_to(&mut self, prog: &str, target: Target) -> Result<()> {
        let p = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing"))?;
        let link = match target {
            Target::TracePoint(category, name) => {
                let p: &mut TracePoint = p.try_into()?;
                Link::TracePoint(
                    p.attach(category, name)
                        .with_context(|| format!("attaching to tracepoint {category}:{name}"))?,
                )
            }
            Target::RawTracePoint(name) => {
                let p: &mut RawTracePoint = p.try_into()?;
                Link::RawTracePoint(
                    p.attach(name)
                        .with_context(|| format!("attaching to raw tracepoint {name}"))?,
                )
            }
            Target::BtfTracePoint => {
                let p: &mut BtfTracePoint = p.try_into()?;
                Link::BtfTracePoint(
                    p.attach()
                        .with_context(|| format!("attaching {prog} to its BTF tracepoint"))?,
                )
            }
            Target::KProbe(func) => {
                let p: &mut KProbe = p.try_into()?;
                Link::KProbe(
                    p.attach(func, 0)
                        .with_context(|| format!("attaching a kprobe to {func}"))?,
                )
            }
        };
        self.links.push((prog.to_string(), target, link));
        Ok(())
    }

    /// `btf_prog` attached as a BTF tracepoint on `tracepoint`, else
    /// `fallback` (the classic or raw build of the same program); the
    /// outcome goes to `btf_hooks`.
    fn attach_btf_or(
        &mut self,
        hook: Hook,
        btf: &Result<&aya::Btf>,
        btf_prog: &'static str,
        tracepoint: &'static str,
        fallback: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let loaded = match (btf, self.preloaded.remove(btf_prog)) {
            (_, Some(verified)) => verified.and_then(|()| {
                let p = self
                    .ebpf
                    .program_mut(btf_prog)
                    .with_context(|| format!("program {btf_prog} missing"))?;
                Ok(<&mut BtfTracePoint>::try_from(p)?)
            }),
            (Ok(btf), None) => load(&mut self.ebpf, btf_prog, |p: &mut BtfTracePoint| {
                p.load(tracepoint, btf)
            }),
            (Err(e), None) => Err(anyhow::anyhow!("{e:#}")),
        };
        let attached = loaded.and_then(|p| {
            p.attach()
                .with_context(|| format!("attaching to BTF tracepoint {tracepoint}"))
        });
        match attached {
            Ok(link) => {
                self.links.push((
                    btf_prog.into(),
                    Target::BtfTracePoint,
                    Link::BtfTracePoint(link),
                ));
                self.btf_hooks.used.push(tracepoint);
                self.attached.push(Attached::new(hook, Variant::Btf));
            }
            Err(e) => {
                // The verifier's full log, for reports from other kernels
                // (RUST_LOG=debug).
                log::debug!("{btf_prog}: {e:#}");
                fallback(self)?;
                self.btf_hooks.refused.push((tracepoint, first_line(&e)));
            }
        }
        Ok(())
    }

    /// Verifies the BTF builds `attach` is about to try, each on its own
    /// thread: the verifier is most of start-up (on 6.18, 0.4 s and 0.7 s
    /// for these two, one after the other), and it runs on the CPU of the
    /// thread that asks. `attach_btf_or` takes the outcomes.
    fn preload_btf(&mut self, btf: &aya::Btf, builds: &[(&'static str, &'static str)]) {
        let mut wanted = vec![];
        for (name, p) in self.ebpf.programs_mut() {
            if let Some(&(prog, tracepoint)) = builds.iter().find(|(prog, _)| *prog == name) {
                match <&mut BtfTracePoint>::try_from(p) {
                    Ok(p) => wanted.push((prog, tracepoint, p)),
                    Err(e) => {
                        self.preloaded.insert(prog, Err(e.into()));
                    }
                }
            }
        }
        let verified: Vec<(&'static str, Result<()>)> = std::thread::scope(|s| {
            let threads: Vec<_> = wanted
                .into_iter()
                .map(|(prog, tracepoint, p)| {
                    let t = s.spawn(move || {
                        p.load(tracepoint, btf).with_context(|| {
                            format!("the kernel verifier rejected the {prog} program")
                        })
                    });
                    (prog, t)
                })
                .collect();
            threads
                .into_iter()
                .map(|(prog, t)| {
                    let r = t
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("loading {prog} panicked")));
                    (prog, r)
                })
                .collect()
        });
        self.preloaded.extend(verified);
    }

    /// Which programs run as BTF tracepoints, once attached.
    pub fn btf_hooks(&self) -> &BtfHooks {
        &self.btf_hooks
    }

    fn attach_kprobe(&mut self, prog: &str, functions: &[&'static str]) -> Result<()> {
        load(&mut self.ebpf, prog, KProbe::load)?;
        for func in functions {
            self.attach_to(prog, Target::KProbe(func))?;
        }
        Ok(())
    }

    /// Attaches the programs `Programs::decide` chose; returns what it
    /// attached, and how.
    /// `btf`: the kernel's BTF as aya parsed it at start-up.
    pub fn attach(&mut self, btf: Option<&aya::Btf>) -> Result<Vec<Attached>> {
        let programs = self.programs.clone();
        if programs.send_reset {
            // The builds other kernels run (no BTF tracepoints, or programs
            // that can be preempted), on demand: their tests; comparing costs.
            let fallbacks = self.no_tp_btf;
            let btf = if fallbacks {
                Err(anyhow::anyhow!("turned off by --debug-no-tp-btf"))
            } else if programs.egress {
                btf.context("reading kernel BTF: /sys/kernel/btf/vmlinux could not be parsed")
            } else {
                Err(anyhow::anyhow!("not needed"))
            };
            let classic = |t: &mut Self| {
                t.attach_tp(Hook::SendReset, "tcp_send_reset", "tcp", "tcp_send_reset")
            };
            let preemptible = bpf_runs_preemptible();
            if let Ok(btf) = &btf {
                let mut builds = vec![];
                if !preemptible && self.sock_addrs && programs.egress {
                    builds.push(("tcp_send_reset_btf", "tcp_send_reset"));
                }
                if programs.egress {
                    builds.push(("net_dev_queue_btf", "net_dev_queue"));
                }
                self.preload_btf(btf, &builds);
            }
            if preemptible && self.sock_addrs && programs.egress {
                classic(self)?;
                self.btf_hooks
                    .avoided
                    .push(("tcp_send_reset", PREEMPTIBLE_RUNS));
            } else if self.sock_addrs && programs.egress {
                self.attach_btf_or(
                    Hook::SendReset,
                    &btf,
                    "tcp_send_reset_btf",
                    "tcp_send_reset",
                    classic,
                )?;
            } else {
                classic(self)?;
            }
            if programs.egress {
                self.attach_btf_or(
                    Hook::NetDevQueue,
                    &btf,
                    "net_dev_queue_btf",
                    "net_dev_queue",
                    |t| t.attach_raw_tp(Hook::NetDevQueue, "net_dev_queue", "net_dev_queue"),
                )?;
            }
            drop(btf);
            if programs.drops && (preemptible || fallbacks) {
                self.attach_tp(Hook::KfreeSkb, "kfree_skb_tp", "skb", "kfree_skb")?;
                if preemptible {
                    self.btf_hooks.avoided.push(("kfree_skb", PREEMPTIBLE_RUNS));
                }
            } else if programs.drops {
                self.attach_raw_tp(Hook::KfreeSkb, "kfree_skb", "kfree_skb")?;
            }
            if programs.kprobe_resets {
                self.attach_kprobe("send_reset_no_full_socket", &SEND_RESET_FUNCTIONS)?;
                self.attached.push(Attached {
                    functions: SEND_RESET_FUNCTIONS.to_vec(),
                    ..Attached::new(Hook::SendResetKprobes, Variant::Kprobe)
                });
            }
            if !programs.nft_rejects.is_empty() {
                self.attach_kprobe("nft_do_chain_entry", &[NFT_DO_CHAIN])?;
                self.attach_kprobe("nf_send_reset_entry", &programs.nft_rejects)?;
                self.attached.push(Attached {
                    functions: [&[NFT_DO_CHAIN][..], &programs.nft_rejects].concat(),
                    ..Attached::new(Hook::NftKprobes, Variant::Kprobe)
                });
            }
        }
        if programs.signals {
            // The raw build returns on the signal number before any record
            // is built; where raw programs run preemptible (7.0+), or
            // without the task's tgid offset, the classic one.
            if bpf_runs_preemptible() || self.no_tp_btf {
                self.attach_tp(
                    Hook::SignalGenerate,
                    "signal_generate_tp",
                    "signal",
                    "signal_generate",
                )?;
            } else {
                self.attach_raw_tp(Hook::SignalGenerate, "signal_generate", "signal_generate")?;
            }
        }
        if programs.oom {
            self.attach_tp(Hook::MarkVictim, "mark_victim", "oom", "mark_victim")?;
        }
        if programs.receive_reset {
            self.attach_tp(
                Hook::ReceiveReset,
                "tcp_receive_reset",
                "tcp",
                "tcp_receive_reset",
            )?;
        }
        if programs.start_xmit_probe {
            self.attach_raw_tp(
                Hook::StartXmitProbe,
                "net_dev_start_xmit_probe",
                "net_dev_start_xmit",
            )?;
        }
        Ok(self.attached.clone())
    }

    /// Whether fentry programs load and attach here (doctor's fact): a
    /// program on `bpf_fentry_test1`, detached at once.
    pub fn probe_fentry(&mut self, btf: Option<&aya::Btf>) -> Result<()> {
        let btf = btf.context("reading kernel BTF: /sys/kernel/btf/vmlinux could not be parsed")?;
        let p = load(&mut self.ebpf, "fentry_probe", |p: &mut FEntry| {
            p.load("bpf_fentry_test1", btf)
        })?;
        let link = p.attach().context("attaching an fentry program")?;
        p.detach(link)?;
        Ok(())
    }

    /// Stops new events; counters keep what was counted.
    pub fn detach(&mut self) -> Result<()> {
        self.detach_all().map(drop)
    }

    /// Detaches every program, to `unpark` later (the bench measures the
    /// untraced host between traced stretches of one tracer this way:
    /// starting a tracer takes a second, and the host's speed drifts over
    /// seconds). Nothing is counted meanwhile.
    pub fn park(&mut self) -> Result<()> {
        let detached = self.detach_all()?;
        self.parked.extend(detached);
        Ok(())
    }

    /// Attaches again what `park` detached.
    pub fn unpark(&mut self) -> Result<()> {
        while let Some((prog, target)) = self.parked.pop() {
            self.attach_to(&prog, target)?;
        }
        Ok(())
    }

    /// Detaches in reverse order; returns what was detached, in the order
    /// to attach it again when popped.
    fn detach_all(&mut self) -> Result<Vec<(String, Target)>> {
        let mut detached = vec![];
        while let Some((prog, target, link)) = self.links.pop() {
            let p = self
                .ebpf
                .program_mut(&prog)
                .with_context(|| format!("program {prog} missing"))?;
            match link {
                Link::TracePoint(l) => {
                    let p: &mut TracePoint = p.try_into()?;
                    p.detach(l)
                }
                Link::RawTracePoint(l) => {
                    let p: &mut RawTracePoint = p.try_into()?;
                    p.detach(l)
                }
                Link::BtfTracePoint(l) => {
                    let p: &mut BtfTracePoint = p.try_into()?;
                    p.detach(l)
                }
                Link::KProbe(l) => {
                    let p: &mut KProbe = p.try_into()?;
                    p.detach(l)
                }
            }
            .with_context(|| format!("detaching {prog}"))?;
            detached.push((prog, target));
        }
        Ok(detached)
    }

    /// (table, chain) of the nftables base chain at kernel address `addr`,
    /// as read at its last reject.
    pub fn nft_chain(&self, addr: u64) -> Option<(Untrusted, Untrusted)> {
        let map: HashMap<_, u64, NftChainNames> =
            HashMap::try_from(self.ebpf.map(names::NFT_CHAINS)?).ok()?;
        let n = map.get(&addr, 0).ok()?;
        Some((Untrusted::from_c(&n.table), Untrusted::from_c(&n.chain)))
    }

    /// The last fatal signal generated for process `pid`, if kept.
    pub fn kill(&self, pid: u32) -> Option<KillRecord> {
        let map: HashMap<_, u32, KillRecord> =
            HashMap::try_from(self.ebpf.map(names::KILLS)?).ok()?;
        map.get(&pid, 0).ok()
    }

    /// Return addresses of a kernel stack the kernel stored, innermost first.
    pub fn stack(&self, id: i32) -> Option<Vec<u64>> {
        self.stack_in(names::STACK_TRACES, id)
    }

    /// An actor's user-space stack (`--user-stacks`), innermost first.
    pub fn user_stack(&self, id: i32) -> Option<Vec<u64>> {
        self.stack_in(names::USER_STACK_TRACES, id)
    }

    fn stack_in(&self, map: &str, id: i32) -> Option<Vec<u64>> {
        let map = self.ebpf.map(map)?;
        let stacks = StackTraceMap::try_from(map).ok()?;
        let st = stacks.get(&u32::try_from(id).ok()?, 0).ok()?;
        Some(st.frames().iter().map(|f| f.ip).collect())
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .with_context(|| format!("{} map missing", names::EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Runs of our programs the kernel skipped, by program (those with
    /// any). The kernel runs one tracepoint/kprobe BPF program per CPU at a
    /// time (raw tracepoints: each program once per CPU): a RST sent from
    /// a softirq that interrupts a BPF program on that CPU, ours or
    /// another tool's kprobe, is not seen, nor (7.x, where raw tracepoint
    /// programs run preemptible) one sent while another task's run of the
    /// same program is preempted; counts are short by up to this many.
    /// Kernels count these from 6.2 (raw tracepoints) and 6.7 (tracepoints,
    /// kprobes); older ones skip silently.
    pub fn skipped_runs(&self) -> BTreeMap<String, u64> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?;
                let n = recursion_misses(fd.as_fd()).ok()?;
                (n > 0).then(|| (name.to_string(), n))
            })
            .collect()
    }

    /// One read of the `STATS` slots, for the notes of a tick: a slot
    /// that can't be read counts 0 (the summary reads them again, and
    /// fails loudly there).
    /// Events the text output's budget held back, summed over CPUs (0 when
    /// the map can't be read: only the live notes use it).
    pub fn unsent(&self) -> u64 {
        let Some(map) = self.ebpf.map(names::BUDGET) else {
            return 0;
        };
        let Ok(budget) = PerCpuArray::<_, tracer_common::Budget>::try_from(map) else {
            return 0;
        };
        budget
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().map(|b| b.unsent).sum())
            .unwrap_or(0)
    }

    pub fn stat_slots(&self) -> StatSlots {
        self.stats().unwrap_or_default()
    }

    /// The `STATS` slots, summed over CPUs.
    pub fn stats(&self) -> Result<StatSlots> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(names::STATS)
                .with_context(|| format!("{} map missing", names::STATS))?,
        )?;
        let mut out = Vec::new();
        for per_cpu in stats.iter() {
            out.push(per_cpu?.iter().sum());
        }
        Ok(StatSlots(fold_at_send(out)))
    }

    /// Every entry of a per-CPU hash map of `RemoteStats`, with its
    /// per-CPU values.
    fn per_cpu_entries<K: aya::Pod>(&self, name: &str) -> Result<Vec<(K, Vec<RemoteStats>)>> {
        let map: PerCpuHashMap<_, K, RemoteStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map(name)
                .with_context(|| format!("{name} map missing"))?,
        )?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry.with_context(|| format!("reading the {name} map"))?;
            out.push((k, v.iter().copied().collect()));
        }
        Ok(out)
    }

    /// Silent drops per (remote IP, drop cause, location).
    pub fn drops(&self) -> Result<Vec<(DropKey, Vec<RemoteStats>)>> {
        self.per_cpu_entries(names::DROPS)
    }

    /// RSTs received per remote IP.
    pub fn received(&self) -> Result<Vec<(RemoteKey, Vec<RemoteStats>)>> {
        self.per_cpu_entries(names::RECEIVED)
    }

    /// RSTs sent per (remote IP, cause).
    pub fn remotes(&self) -> Result<Vec<(RemoteKey, Vec<RemoteStats>)>> {
        self.per_cpu_entries(names::REMOTES)
    }
}

/// The `STATS` slots, summed over CPUs and with the `AT_SEND` slots
/// folded (see `tracer_common::stat`).
#[derive(Debug, Default)]
pub struct StatSlots(pub(crate) Vec<u64>);

impl StatSlots {
    pub fn get(&self, slot: u32) -> u64 {
        self.0.get(slot as usize).copied().unwrap_or(0)
    }
}

/// The slots as the rest of rsttrace reads them: tcp_send_reset's cause
/// slots at send (`stat::AT_SEND`, 6.10+) added to their cause and to the
/// coverage count they also are.
fn fold_at_send(mut slots: Vec<u64>) -> Vec<u64> {
    for c in 0..tracer_common::Cause::COUNT as u32 {
        let at_send = slots
            .get((stat::AT_SEND + c) as usize)
            .copied()
            .unwrap_or(0);
        if let Some(s) = slots.get_mut(c as usize) {
            *s += at_send;
        }
        if let Some(s) = slots.get_mut(stat::STACK_RSTS_AT_SEND as usize) {
            *s += at_send;
        }
    }
    slots
}

/// `bpf_prog_info.recursion_misses` of a loaded program (0 on kernels
/// without the field: they leave it as passed).
fn recursion_misses(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    /// `bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: a struct of integers and integer arrays: all-zero is valid,
    // and the kernel wants unknown trailing fields zero.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: attr and info outlive the call; the kernel writes at most
    // info_len bytes to info and the length back to attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// Whether tcp_send_reset counts the TCP stack's RSTs for coverage, so the
/// egress hook can pass over the stack's packets unread: it must be
/// attached and see every such RST, which it does where it has a reason
/// (6.10+; before, it misses those sent without a full socket).
fn stack_counted_at_send(opts: &Options<'_>) -> bool {
    opts.sent && opts.egress.is_some() && opts.send_reset.reason != tracer_common::ABSENT
}

/// Events per CPU between wakeups of the reader: all CPUs together wake it
/// once a quarter of the ring (at most 64K) is waiting, so wakeups stay rare
/// under floods and the ring does not fill first; the reader's poll picks
/// up the rest.
fn wakeup_every(ring_size: u32) -> u64 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u64;
    // Each record carries an 8-byte header.
    let record = (std::mem::size_of::<tracer_common::RstEvent>() + 8) as u64;
    (u64::from((ring_size / 4).min(64 * 1024)) / record / cpus).max(1)
}

/// An error's causes on one line, without the verifier's log (doctor
/// and the start-up line quote it).
pub fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .split(". Verifier output")
        .next()
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// `prog` as its program type, loaded into the kernel (the verifier's
/// refusal named); `load_fn` is that type's `load` with its arguments.
fn load<'a, P>(
    ebpf: &'a mut Ebpf,
    prog: &str,
    load_fn: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p: &mut P = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    load_fn(p).with_context(|| format!("the kernel verifier rejected the {prog} program"))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::Cause;

    /// Options as on a 6.10+ kernel with BTF, `--cause` as given.
    fn decide(causes: &[&str], change: impl FnOnce(&mut Options<'_>)) -> Programs {
        let causes: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        let scope = crate::scope::build("all", &[], &[], &causes).unwrap();
        let mut opts = Options {
            send_reset: SendResetLayout {
                reason: 28,
                ..SendResetLayout::UNSET
            },
            sock_addrs: None,
            reason_causes: vec![],
            stack_rules: StackRules::EMPTY,
            netns: NetnsOffsets::UNSET,
            egress: Some(Egress {
                offsets: EgressOffsets::UNSET,
                rules: StackRules::EMPTY,
                full_socket_reset: StackRule::NONE,
                reply_destructor: 0,
            }),
            egress_icmp_rules: StackRules::EMPTY,
            kfree_skb: KfreeSkbLayout {
                netfilter_drop: 12,
                ..KfreeSkbLayout::UNSET
            },
            drop_reason_causes: vec![],
            emit_events: true,
            user_stacks: false,
            events_per_sec: 0,
            max_remote_ips: 16,
            ring_size: 4096,
            scope: &scope,
            sent: true,
            receive_reset: None,
            kprobes: false,
            nft: None,
            bench_empty: false,
            bench_start_xmit: false,
            task: None,
            signal: SignalLayout::UNSET,
            btf: None,
            no_tp_btf: false,
        };
        change(&mut opts);
        Programs::decide(&opts)
    }

    #[test]
    fn the_drop_program_needs_drops_in_scope_the_egress_offsets_and_sent_rsts() {
        assert!(decide(&[], |_| {}).drops);
        assert!(decide(&["netfilter-drop"], |_| {}).drops);
        // The start-up line named skb:kfree_skb in each of these.
        assert!(!decide(&["closed-port"], |_| {}).drops);
        assert!(!decide(&[], |o| o.egress = None).drops);
        let received = decide(&[], |o| {
            o.sent = false;
            o.receive_reset = Some(SendResetLayout::UNSET);
        });
        assert_eq!(
            received,
            Programs {
                receive_reset: true,
                ..Programs::default()
            }
        );
        assert!(!decide(&[], |o| o.kfree_skb = KfreeSkbLayout::UNSET).drops);
    }

    #[test]
    fn kprobes_take_what_the_tracepoint_skips_only_before_its_reason_field() {
        let old = |o: &mut Options<'_>| {
            o.kprobes = true;
            o.send_reset.reason = ABSENT;
        };
        assert!(decide(&[], old).kprobe_resets);
        assert!(!decide(&[], |o| o.kprobes = true).kprobe_resets);
        assert!(
            !decide(&[], |o| {
                old(o);
                o.egress = None;
            })
            .kprobe_resets
        );
        let nft = |o: &mut Options<'_>| o.nft = Some((NftOffsets::UNSET, vec!["nf_send_reset"]));
        assert_eq!(decide(&[], nft).nft_rejects, ["nf_send_reset"]);
        assert!(
            decide(&[], |o| {
                nft(o);
                o.egress = None;
            })
            .nft_rejects
            .is_empty()
        );
    }

    #[test]
    fn killers_are_kept_where_exits_can_be_told() {
        let exits = |o: &mut Options<'_>| {
            o.task = Some(TaskOffsets::UNSET);
            o.signal = SignalLayout {
                sig: 8,
                pid: 36,
                result: 44,
                victim_pid: 8,
            };
        };
        let p = decide(&[], exits);
        assert!(p.signals && p.oom, "{p:?}");
        let received_only = decide(&[], |o| {
            exits(o);
            o.sent = false;
        });
        assert!(!received_only.signals && !received_only.oom);
        let no_btf = decide(&[], |o| {
            exits(o);
            o.task = None;
        });
        assert!(!no_btf.signals && !no_btf.oom);
        let no_oom_tracepoint = decide(&[], |o| {
            exits(o);
            o.signal.victim_pid = ABSENT;
        });
        assert!(no_oom_tracepoint.signals && !no_oom_tracepoint.oom);
    }

    #[test]
    fn attached_names_its_point_and_kind() {
        let kfree = Attached::new(Hook::KfreeSkb, Variant::Raw);
        assert_eq!(kfree.point(), "skb:kfree_skb");
        assert_eq!(kfree.describe(), "raw tracepoint skb:kfree_skb");
        let tp = Attached::new(Hook::SendReset, Variant::Btf);
        assert_eq!(tp.describe(), "BTF tracepoint tcp:tcp_send_reset");
        let kprobes = Attached {
            functions: SEND_RESET_FUNCTIONS.to_vec(),
            ..Attached::new(Hook::SendResetKprobes, Variant::Kprobe)
        };
        assert_eq!(
            kprobes.describe(),
            "kprobes on tcp_v4_send_reset/tcp_v6_send_reset"
        );
    }

    /// aya finds a map or global by the name of its eBPF item, which
    /// tracer-common can't give it: a rename on either side would only
    /// fail at load, or leave a global at its built-in value.
    #[test]
    fn every_map_and_global_of_the_object_has_its_name() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let obj = object::File::parse(EBPF_OBJECT).unwrap();
        let mut in_object: Vec<&str> = obj
            .symbols()
            .filter(|s| s.is_global() && s.kind() == object::SymbolKind::Data)
            .filter(|s| {
                let section = s.section_index().and_then(|i| obj.section_by_index(i).ok());
                section.and_then(|s| s.name().ok()).is_some_and(|n| {
                    n == "maps"
                        || [".rodata", ".data", ".bss"]
                            .iter()
                            .any(|p| n.starts_with(p))
                })
            })
            .map(|s| s.name().unwrap())
            .collect();
        in_object.sort_unstable();
        let mut named = names::ALL.to_vec();
        named.sort_unstable();
        assert_eq!(in_object, named);
    }

    #[test]
    fn counts_at_send_are_cause_totals_and_coverage() {
        let mut raw = vec![0; stat::COUNT as usize];
        // By cause only (the per-remote map was full): 2 rejects from
        // egress, 5 closed-port and 1 keepalive from tcp_send_reset at send;
        // and 3 RSTs at send that --cause left out.
        raw[Cause::NetfilterReject as usize] = 2;
        raw[(stat::AT_SEND + Cause::ClosedPort as u32) as usize] = 5;
        raw[(stat::AT_SEND + Cause::KeepaliveTimeout as u32) as usize] = 1;
        raw[stat::STACK_RSTS_AT_SEND as usize] = 3;
        let s = StatSlots(fold_at_send(raw));
        assert_eq!(s.get(Cause::NetfilterReject as u32), 2);
        assert_eq!(s.get(Cause::ClosedPort as u32), 5);
        assert_eq!(s.get(Cause::KeepaliveTimeout as u32), 1);
        assert_eq!(s.get(stat::STACK_RSTS_AT_SEND), 3 + 5 + 1);
    }
}
