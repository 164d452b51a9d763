//! Command-line interface.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "rsttrace",
    version,
    about = "Attribute every TCP RST this host sends to the kernel path that produced it",
    long_about = "Attribute every TCP RST this host sends to the kernel path that produced it \
(closed port, application abort, keepalive timeout, ...), name the process behind it where \
there is one, and aggregate per remote IP. Stops on Ctrl-C, SIGTERM or --duration and then \
prints a per-remote-IP summary.\n\nNeeds root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Output format: human-readable lines, or JSON lines (one object per RST, then a summary).
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Print only the summary at the end, no line per RST.
    #[arg(long)]
    pub summary_only: bool,

    /// Stop after this long: `30` (seconds), `30s`, `5m`, `1h`.
    #[arg(long, short, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Text output: print at most this many RST lines per second and one
    /// "N more" line for the rest (all are counted in the summary; past the
    /// limit, RSTs whose line is all their event carries stay in the kernel,
    /// which keeps a flood cheap); 0 = no limit.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub rate: u32,

    /// Text output: show this many remote IPs in the summary (JSON lists all).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,

    /// Which RSTs: `out` (sent by this host, the default), `in` (received,
    /// from tcp:tcp_receive_reset) or `both`; the summary keeps them apart.
    #[arg(long, value_enum, default_value_t = Direction::Out)]
    pub direction: Direction,

    /// Network namespace to report: `all` (default), `self` (a sidecar's own),
    /// a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`) or `pid:N`.
    /// Decided in the kernel: other namespaces cost nothing and never show.
    #[arg(long, default_value = "all", value_name = "NETNS")]
    pub netns: String,

    /// Only RSTs to (and drops from) remotes in CIDR (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = crate::scope::parse_cidr)]
    pub remote: Vec<crate::scope::Cidr>,

    /// Only RSTs sent from this local port (repeatable).
    #[arg(long, value_name = "PORT", value_parser = crate::scope::parse_port)]
    pub local_port: Vec<u16>,

    /// Only these causes (repeatable); drop causes (`netfilter-drop`,
    /// `tc-drop`, `xdp-drop`, `cgroup-drop`, `listen-overflow`) select
    /// silent drops.
    #[arg(long, value_name = "NAME", value_parser = crate::scope::parse_cause)]
    pub cause: Vec<String>,

    /// Size of the event ring buffer between the kernel and rsttrace: a
    /// power of two, at least 4K (`256K`, `1M`, or bytes). Events that find
    /// it full are counted as lost; every count stays exact.
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Label RSTs whose actor matches PATTERN (process name or executable
    /// path; `*` and `?` wildcards) as `security-agent`, in addition to the
    /// built-in list of well-known agents. Repeatable.
    #[arg(long, value_name = "PATTERN", value_parser = crate::attribution::agents::parse_pattern)]
    pub agent: Vec<String>,

    /// Label RSTs whose actor has a library or Java agent loaded whose file
    /// name (or path) matches PATTERN (`*` and `?` wildcards) as
    /// `security-agent`, named by that file, in addition to the built-in
    /// list of in-process security modules (ModSecurity, NAXSI, RASP
    /// agents, ...). Repeatable.
    #[arg(long, value_name = "PATTERN", value_parser = crate::attribution::agents::parse_pattern)]
    pub agent_library: Vec<String>,

    /// Name the owner of nftables tables, chains or sets: `set:blocklist*=blocklistd`
    /// (KIND is table, chain or set; `*` and `?` wildcards). Their rejects
    /// and drops get the `security-agent` label, like the built-in list
    /// (CrowdSec, fail2ban, SSHGuard). Repeatable.
    #[arg(long, value_name = "KIND:PATTERN=NAME", value_parser = crate::attribution::nft::owners::parse_owner)]
    pub ruleset_owner: Vec<(crate::attribution::nft::owners::Kind, String, String)>,

    /// Record the user-space stack of the process behind each RST that has
    /// an actor (abort-on-close, linger-abort, app-disconnect,
    /// listener-closed, socket-killed, injected), symbolized from its
    /// executable and libraries. The kernel unwinds through frame
    /// pointers: a stack that stops short at code built without them says
    /// so (`complete: false`), it is not guessed at.
    #[arg(long)]
    pub user_stacks: bool,

    /// Also write each RST to FILE as pcapng (headers only), the cause and
    /// attribution in each packet's comment: open it in Wireshark or tcpdump.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics: a port alone binds
    /// loopback (`9477`); give an address to listen elsewhere (`0.0.0.0:9477`).
    #[arg(long, value_name = "ADDR", value_parser = crate::output::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Remote IPs given their own metrics series (the most RSTs first); the
    /// others are summed in rsttrace_other_remotes_rsts.
    #[arg(long, default_value_t = 20, value_name = "K",
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub metrics_remote_ips: u32,

    /// Distinct (remote IP, cause) pairs counted in the kernel; RSTs beyond are
    /// still counted per cause and reported as `remote_ip_overflow`.
    #[arg(long, default_value_t = 65536, value_name = "N",
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_remote_ips: u32,

    /// How long a listening socket that went is remembered: closed-port
    /// RSTs to its port within that time name it (`listener`), apart from
    /// ports nobody listened on (`30s`, `10m`, `1h`).
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub listener_memory: Duration,

    /// More on stderr: -v for the start-up decisions, -vv for every detail
    /// (verifier logs). RUST_LOG, where set, decides instead.
    #[arg(long, short, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Debug (the bench's floor): every program is attached as usual but
    /// returns at once; nothing is counted, and the trace says so.
    #[arg(long, hide = true)]
    pub debug_empty_programs: bool,

    /// Debug (the bench's cost of a second egress view): also attach an
    /// empty program to net:net_dev_start_xmit.
    #[arg(long, hide = true)]
    pub debug_start_xmit_probe: bool,

    /// Debug (the bench's instrument): SIGUSR1 detaches every program and
    /// SIGUSR2 attaches them again; counts miss what happens in between.
    #[arg(long, hide = true)]
    pub debug_toggle_signals: bool,

    /// Debug (tests, cost comparisons): run the classic and raw builds of
    /// the hot programs, the ones kernels without BTF tracepoints run.
    #[arg(long, hide = true)]
    pub debug_no_tp_btf: bool,
}

impl Args {
    pub fn doctor(&self) -> bool {
        matches!(self.command, Some(Command::Doctor))
    }

    /// `rsttrace doctor` loads and attaches every program and prints the
    /// plan, nothing per RST.
    pub fn for_command(mut self) -> Self {
        if self.doctor() {
            self.direction = Direction::Both;
            self.summary_only = true;
            self.pcap = None;
            self.metrics = None;
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Check what this kernel and these permissions allow: load and attach
    /// every program, print the plan (each signal, the hook that sees it,
    /// what is lost where a hook or permission is missing), then exit.
    Doctor,
    /// Which nftables rules and set elements would reject or drop packets
    /// from ADDR (to local PORT): table, chain, handle, set, expiry and
    /// owner, read from the kernel now. No tracing.
    Why {
        /// The peer: `198.18.0.10`, `198.18.0.10:22` or `[2001:db8::1]:22`
        /// (the port is the local port it connects to).
        #[arg(value_parser = crate::why::parse_target, value_name = "ADDR[:PORT]")]
        target: crate::why::Target,
        /// Transport protocol of its packets.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// Namespace: `all` (default), `self`, a namespace file or `pid:N`.
        #[arg(long, default_value = "all", value_name = "NETNS")]
        netns: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Out,
    In,
    Both,
}

impl Direction {
    pub fn sent(self) -> bool {
        self != Direction::In
    }

    pub fn received(self) -> bool {
        self != Direction::Out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())?
    } else {
        humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30, 30s, 5m, 1h)"))?
    };
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (examples: 256K, 1M, 65536)"))?;
    let bytes = n.checked_mul(mult).ok_or("too large")?;
    if !(4096..=1 << 30).contains(&bytes) || !bytes.is_power_of_two() {
        return Err("must be a power of two between 4K and 1G".into());
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "0", "-5", "5x", "s", "99999999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4K"), Ok(4096));
        assert_eq!(parse_ring_size("1M"), Ok(1 << 20));
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        for bad in ["3K", "0", "1000", "2G", "x", "", "-4K"] {
            assert!(parse_ring_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_parse_and_reject() {
        let a = Args::try_parse_from(["rsttrace", "--output", "json", "--duration", "5m"]).unwrap();
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(a.duration, Some(Duration::from_secs(300)));
        assert!(Args::try_parse_from(["rsttrace", "--output", "xml"]).is_err());
        assert!(Args::try_parse_from(["rsttrace", "--duration", "soon"]).is_err());
        assert!(Args::try_parse_from(["rsttrace", "--top", "0"]).is_err());
        assert!(Args::try_parse_from(["rsttrace", "--max-remote-ips", "1"]).is_err());
    }

    #[test]
    fn debug_flags_parse_and_stay_out_of_help() {
        let a = Args::try_parse_from([
            "rsttrace",
            "--debug-empty-programs",
            "--debug-toggle-signals",
            "--debug-no-tp-btf",
            "--debug-start-xmit-probe",
        ])
        .unwrap();
        assert!(a.debug_empty_programs && a.debug_toggle_signals && a.debug_no_tp_btf);
        assert!(a.debug_start_xmit_probe);
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(!help.contains("--debug"), "{help}");
    }
}

/// The deployment examples in deploy/ run this binary: their arguments must
/// parse, and each must keep its shape (sidecar: its own namespace, no
/// CAP_SYS_ADMIN; node agent: every namespace).
#[cfg(test)]
mod deploy_examples {
    use super::*;

    fn read(rel: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/");
        std::fs::read_to_string(format!("{path}{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Arguments of the first `<key> [..]` line (a YAML flow sequence or a
    /// Dockerfile exec form, both JSON arrays of strings here).
    fn args_of(text: &str, key: &str) -> Args {
        let line = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line"));
        let args: Vec<String> = serde_json::from_str(line.trim()).expect("a JSON array");
        Args::try_parse_from(std::iter::once("rsttrace".to_string()).chain(args))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn sidecar() {
        let y = read("kubernetes/sidecar.yaml");
        let a = args_of(&y, "args:");
        assert_eq!(a.netns, "self");
        assert!(a.metrics.is_some_and(|m| m.port() == 9477));
        assert!(y.contains("containerPort: 9477"));
        assert!(!y.contains("- SYS_ADMIN") && y.contains("privileged: false"));
        for cap in ["BPF", "PERFMON", "SYSLOG", "NET_ADMIN"] {
            assert!(y.contains(&format!("- {cap} ")), "{cap}");
        }
    }

    #[test]
    fn node_agent() {
        let y = read("kubernetes/daemonset.yaml");
        let a = args_of(&y, "args:");
        assert_eq!(a.netns, "all");
        assert!(a.metrics.is_some_and(|m| m.port() == 9477));
        assert!(y.contains("hostPID: true") && y.contains("hostNetwork: true"));
    }

    #[test]
    fn image_default_command() {
        let a = args_of(&read("Dockerfile"), "CMD");
        assert!(a.summary_only && a.metrics.is_some());
    }
}
