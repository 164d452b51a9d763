//! What the running kernel offers, read from it once at start-up into
//! `Facts`: tracefs format files, BTF offsets, kernel symbols, kprobes and
//! this process's capabilities. Nothing here decides what to attach: the
//! plan does, from these facts alone.

pub mod btf;
pub mod format;
pub mod ksyms;
pub mod netns;
pub mod offsets;
pub mod preflight;

use std::{path::PathBuf, rc::Rc};

use anyhow::{Context as _, Result};
use tracer_common::{
    EgressOffsets, NetnsOffsets, NftOffsets, SendResetLayout, SignalLayout, SockAddrOffsets,
    TaskOffsets,
};

use self::{
    format::{Format, SendResetFormat},
    ksyms::Kallsyms,
};

/// A probe that can fail: why, in words for the plan and the warnings.
pub type Probe<T> = std::result::Result<T, String>;

fn probe<T>(r: Result<T>) -> Probe<T> {
    r.map_err(|e| format!("{e:#}"))
}

/// The capabilities that decide what rsttrace can name beyond attaching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub syslog: bool,
    pub net_admin: bool,
    pub sys_admin: bool,
    pub ptrace: bool,
}

/// Everything the plan depends on, probed once.
pub struct Facts {
    /// The kernel's release, as doctor names it.
    pub release: String,
    pub tracefs: PathBuf,
    /// tcp:tcp_send_reset's layout and reason names.
    pub send_reset: SendResetFormat,
    pub receive_reset: Probe<SendResetLayout>,
    pub kfree_skb: Probe<format::KfreeSkbFormat>,
    pub btf_present: bool,
    pub egress: Probe<EgressOffsets>,
    pub sock_addrs: Probe<SockAddrOffsets>,
    pub netns: Probe<NetnsOffsets>,
    /// task_struct's flags, exit code and tgid: exit attribution.
    pub task: Probe<TaskOffsets>,
    /// signal:signal_generate's record: who sent a fatal signal.
    pub signal_generate: Probe<SignalLayout>,
    /// oom:mark_victim's pid field: the OOM killer's victims.
    pub mark_victim: Probe<u32>,
    /// Naming the base chain of REJECT rules older than the trace.
    pub nft: Probe<(NftOffsets, Vec<&'static str>)>,
    /// Shared with the enricher, which symbolizes stacks with it.
    pub ksyms: Probe<Rc<Kallsyms>>,
    pub kprobes: bool,
    /// The kernel's BTF as aya parsed it, for the loader's relocations and
    /// the BTF tracepoints; `None` without BTF.
    pub aya_btf: Option<aya::Btf>,
    pub caps: Caps,
}

impl Facts {
    /// Reads the running kernel. Fails only where nothing could be traced
    /// (no tracefs, no tcp_send_reset); a missing optional piece is a
    /// probe's `Err`, said by the plan.
    pub fn probe() -> Result<Self> {
        let tracefs = preflight::tracefs()?;
        // After tracefs: where both are missing, tracefs is the first to fix.
        preflight::check_perf_paranoid()?;
        let send_reset = tracepoint(&tracefs, "tcp_send_reset")?;
        let receive_reset = probe(tracepoint(&tracefs, "tcp_receive_reset").map(|f| f.layout));
        let kprobes = kprobes_available();
        let ksyms = Kallsyms::load();
        // Read once: every offset set, the loader and the BTF tracepoints
        // take it from here.
        let (mut btf, aya_btf) = btf::load_vmlinux();
        let nft = if kprobes {
            offsets::nft_offsets(&mut btf, &ksyms)
        } else {
            Err(anyhow::anyhow!("naming them needs kprobes, absent here"))
        };
        let from_btf = || btf.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"));
        Ok(Facts {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            receive_reset,
            kfree_skb: offsets::kfree_skb_layout(&tracefs),
            btf_present: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            egress: probe(from_btf().and_then(offsets::egress_offsets)),
            sock_addrs: probe(
                from_btf().and_then(|b| offsets::sock_addr_offsets(b, &send_reset.layout)),
            ),
            netns: probe(from_btf().and_then(offsets::netns_offsets)),
            task: probe(from_btf().and_then(offsets::task_offsets)),
            signal_generate: probe(offsets::signal_generate_layout(&tracefs)),
            mark_victim: probe(offsets::mark_victim_pid(&tracefs)),
            nft: probe(nft),
            ksyms: probe(ksyms).map(Rc::new),
            kprobes,
            aya_btf,
            caps: Caps {
                syslog: preflight::has_cap(preflight::CAP_SYSLOG),
                net_admin: preflight::has_cap(preflight::CAP_NET_ADMIN),
                sys_admin: preflight::has_cap(preflight::CAP_SYS_ADMIN),
                ptrace: preflight::has_cap(preflight::CAP_SYS_PTRACE),
            },
            send_reset,
            tracefs,
        })
    }

    /// Whether tcp_send_reset has a reason field (6.10+).
    pub fn reason(&self) -> bool {
        !self.send_reset.reasons.is_empty()
    }
}

/// A tcp tracepoint's format, with the layout rsttrace reads it by.
fn tracepoint(tracefs: &std::path::Path, name: &str) -> Result<SendResetFormat> {
    let text = preflight::tracepoint_format(tracefs, "tcp", name)?;
    Format::parse(&text)
        .and_then(|f| SendResetFormat::from_format(&f))
        .with_context(|| format!("reading the tcp:{name} format file"))
}

/// Whether this kernel can attach kprobes (the PMU is registered).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}
