//! Helpers for the privileged integration tests: a private network
//! namespace per scenario, the real `rsttrace` binary, and the netns's own
//! TCP counters as ground truth.
#![allow(dead_code)]

pub mod kit;
pub mod scenario;
pub mod wire;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

/// Privileged tests must fail loudly, never pass by skipping.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged integration test: run as root (`cargo xtask test` does this through sudo)"
    );
}

use kit::ip;
pub use kit::{out_rsts_here, tcp_mib_here};

/// A network namespace that exists for one test and is deleted on drop,
/// also when the test panics.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root();
        let name = format!("rsttrace-t-{tag}");
        kit::netns_add(&name);
        Netns { name }
    }

    /// Adds an address to the namespace's loopback (no duplicate detection,
    /// so IPv6 addresses are usable at once).
    pub fn add_addr(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "lo", "nodad"]);
    }

    /// Runs a command inside the namespace, asserts it succeeds and
    /// returns its standard output.
    pub fn output(&self, argv: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside the namespace and asserts it succeeds.
    pub fn exec(&self, argv: &[&str]) {
        self.output(argv);
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates belong to the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        kit::run_in_netns(&self.name, f)
    }

    /// The namespace's inode number, as rsttrace reports it in `netns`.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }

    /// Tcp OutRsts of this namespace: exactly the RSTs its TCP stack sent.
    pub fn out_rsts(&self) -> u64 {
        self.run(out_rsts_here)
    }
}

/// A veth pair between `a` and `b`, up, with these addresses on each end.
pub fn veth(a: (&Netns, &str, &[&str]), b: (&Netns, &str, &[&str])) {
    ip(&[
        "link", "add", a.1, "netns", &a.0.name, "type", "veth", "peer", "name", b.1, "netns",
        &b.0.name,
    ]);
    for (ns, dev, addrs) in [a, b] {
        for addr in addrs {
            ip(&["-n", &ns.name, "addr", "add", addr, "dev", dev, "nodad"]);
        }
        ip(&["-n", &ns.name, "link", "set", dev, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kit::netns_delete(&self.name);
    }
}

/// `n` connects from `client` refused by an RST from `server` (a closed
/// port, or a netfilter reject); returns the namespace's OutRsts delta.
///
/// A SYN or its RST can be lost under load (a full backlog): the SYN is
/// retransmitted and answered again, so the TCP stack's RSTs are `n` plus
/// the retransmissions, or none at all when netfilter answered.
pub fn refused_connects(ns: &Netns, client: IpAddr, server: SocketAddr, n: u64) -> u64 {
    ns.run(move || {
        let (rsts, retrans) = (out_rsts_here(), tcp_mib_here("RetransSegs"));
        for _ in 0..n {
            let err = connect_from(client, server).expect_err("connect must be refused");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
        let (rsts, retrans) = (
            out_rsts_here() - rsts,
            tcp_mib_here("RetransSegs") - retrans,
        );
        assert!(
            rsts == 0 || rsts == n + retrans,
            "{rsts} RSTs for {n} refused connects and {retrans} retransmissions"
        );
        rsts
    })
}

/// A socket bound to `local` (port 0), connected or not to `remote`.
pub fn connect_from(local: IpAddr, remote: SocketAddr) -> std::io::Result<Socket> {
    let domain = if remote.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::new(local, 0).into())?;
    s.connect(&remote.into())?;
    Ok(s)
}

/// How long a test waits for rsttrace's "attached" line. Loading means
/// verifying every program: a second or so here, 7 s for one tracer on 5.10
/// under qemu without KVM, and several start at once there (test threads).
/// Generous: only a hang should fail, and no test measures start-up.
pub const ATTACH_WITHIN: Duration = Duration::from_secs(180);

/// rsttrace, inside namespace `ns` (the sidecar shape) or in the test's
/// own, with its stdout and stderr piped.
pub fn rsttrace_command(ns: Option<&Netns>) -> Command {
    let mut cmd = match ns {
        // ip netns exec execs rsttrace in place: signals reach it.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_rsttrace")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_rsttrace")),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// A running `rsttrace --output json` (or text: `start_text_in`),
/// stopped with SIGINT.
pub struct Trace {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

#[derive(Debug)]
pub struct TraceOutput {
    pub rsts: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
}

impl Trace {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_in(None, extra)
    }

    /// Runs rsttrace inside namespace `ns` (the sidecar shape), or in the
    /// test's own.
    pub fn start_in(ns: Option<&Netns>, extra: &[&str]) -> Self {
        Self::spawn(ns, extra)
    }

    /// rsttrace with its default text output; read it with `stop_raw`.
    pub fn start_text_in(ns: Option<&Netns>, extra: &[&str]) -> Self {
        Self::spawn_as(ns, "text", extra)
    }

    fn spawn(ns: Option<&Netns>, extra: &[&str]) -> Self {
        Self::spawn_as(ns, "json", extra)
    }

    fn spawn_as(ns: Option<&Netns>, output: &str, extra: &[&str]) -> Self {
        require_root();
        let mut cmd = rsttrace_command(ns);
        let mut child = cmd
            .args(["--output", output])
            .args(extra)
            .spawn()
            .expect("spawning rsttrace");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        if let Err(seen) = wait_for(&rx, "attached") {
            let _ = child.kill();
            panic!("rsttrace did not attach within {ATTACH_WITHIN:?}; stderr:\n{seen}");
        }
        Trace { child, stderr: rx }
    }

    /// Sends `sig` and waits for rsttrace to write a line containing
    /// `said` on stderr.
    pub fn signal_and_wait(&mut self, sig: i32, said: &str) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        if let Err(seen) = wait_for(&self.stderr, said) {
            panic!("rsttrace did not say {said:?} within {ATTACH_WITHIN:?}; stderr:\n{seen}");
        }
    }

    pub fn stop(self) -> TraceOutput {
        let (out, stderr) = self.stop_raw();
        let out = String::from_utf8(out).expect("rsttrace's output is UTF-8");
        parse_output(&out, stderr)
    }

    /// Stops rsttrace: its standard output byte for byte, and its stderr.
    pub fn stop_raw(mut self) -> (Vec<u8>, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut out = Vec::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_end(&mut out)
            .expect("reading rsttrace output");
        let status = self.child.wait().expect("waiting for rsttrace");
        let stderr: String = self.stderr.try_iter().collect::<Vec<_>>().join("\n");
        assert!(
            status.success(),
            "rsttrace exited with {status}; stderr:\n{stderr}"
        );
        (out, stderr)
    }
}

/// A trace scoped to one namespace with its wire captured beside it:
/// stopping it checks every RST rsttrace reported against the packets that
/// left (`wire.rs`), so no scenario can pass with a wrong port or count.
pub struct Watched<'a> {
    ns: &'a Netns,
    wire: wire::Wire,
    trace: Trace,
}

impl Trace {
    /// `rsttrace --netns NS` and a capture of what leaves `ns`'s devices.
    pub fn watch<'a>(ns: &'a Netns, extra: &[&str]) -> Watched<'a> {
        let wire = wire::Wire::capture(ns);
        let path = format!("/run/netns/{}", ns.name);
        let mut args = vec!["--netns", path.as_str()];
        args.extend_from_slice(extra);
        let trace = Trace::start(&args);
        Watched { ns, wire, trace }
    }
}

impl Watched<'_> {
    /// Stops both; every RST reported left a device.
    pub fn stop(self) -> TraceOutput {
        self.stop_with_off_wire(0)
    }

    /// Stops both; `off_wire` RSTs were sent but dropped before any device
    /// (an OUTPUT rule), and are reported all the same.
    pub fn stop_with_off_wire(self, off_wire: u64) -> TraceOutput {
        self.stop_with_unreachables(off_wire).0
    }

    /// `stop_with_off_wire`, and the ICMP destination unreachables quoting
    /// TCP that left `ns`'s devices.
    pub fn stop_with_unreachables(self, off_wire: u64) -> (TraceOutput, Vec<wire::WireUnreach>) {
        let out = self.trace.stop();
        let (wire, unreach) = self.wire.stop_all();
        out.assert_matches_wire(self.ns, &wire, off_wire);
        (out, unreach)
    }

    pub fn signal_and_wait(&mut self, sig: i32, said: &str) {
        self.trace.signal_and_wait(sig, said);
    }
}

/// Waits up to `ATTACH_WITHIN` for a stderr line containing `said`; on
/// time-out, the lines seen meanwhile.
fn wait_for(rx: &mpsc::Receiver<String>, said: &str) -> Result<(), String> {
    let mut seen = String::new();
    let deadline = Instant::now() + ATTACH_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| seen.clone())?;
        if line.contains(said) {
            return Ok(());
        }
        seen.push_str(&line);
        seen.push('\n');
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_output(out: &str, stderr: String) -> TraceOutput {
    let mut rsts = vec![];
    let mut summary = None;
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        match v["type"].as_str() {
            Some("rst") => rsts.push(v),
            Some("summary") => {
                assert!(summary.is_none(), "two summaries");
                summary = Some(v);
            }
            other => panic!("unexpected type {other:?} in {line}"),
        }
    }
    TraceOutput {
        rsts,
        summary: summary.unwrap_or_else(|| panic!("no summary line in:\n{out}")),
        stderr,
    }
}

impl TraceOutput {
    /// RST events sent to `remote`.
    pub fn rsts_to(&self, remote: &str) -> Vec<&Value> {
        self.rsts
            .iter()
            .filter(|r| r["remote_ip"] == remote)
            .collect()
    }

    /// The summary's by_remote_ip entry for `remote`.
    pub fn remote(&self, remote: &str) -> Option<&Value> {
        self.summary["by_remote_ip"]
            .as_array()
            .expect("by_remote_ip array")
            .iter()
            .find(|r| r["remote_ip"] == remote)
    }

    /// The summary's silent drops toward `remote`; panics, naming what is
    /// there, when it has none.
    pub fn drops_to(&self, remote: &str) -> &Value {
        let drops = self.summary["drops"].as_array().expect("drops array");
        drops
            .iter()
            .find(|d| d["remote_ip"] == remote)
            .unwrap_or_else(|| panic!("{remote} missing from drops: {drops:?}"))
    }

    /// Asserts that `remote` received exactly `n` RSTs, all of `cause` and
    /// all from namespace `ns`, in both the event stream and the summary,
    /// and returns its events.
    pub fn assert_exactly(&self, ns: &Netns, remote: &str, n: u64, cause: &str) -> Vec<&Value> {
        assert_eq!(
            self.summary["lost"], 0,
            "events were lost: {}",
            self.summary
        );
        assert_eq!(
            self.summary["unreadable"], 0,
            "RSTs could not be read: {}",
            self.summary
        );
        let evs = self.rsts_to(remote);
        let causes: BTreeMap<&str, usize> = evs.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e["cause"].as_str().unwrap_or("?")).or_default() += 1;
            m
        });
        let others: Vec<String> = evs
            .iter()
            .filter(|e| e["cause"] != cause)
            .take(3)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            evs.len() as u64,
            n,
            "events to {remote}: {causes:?}; not {cause}: {others:?}; \
             program runs the kernel skipped: {}",
            self.summary["skipped_runs"]
        );
        assert_eq!(
            causes,
            BTreeMap::from([(cause, n as usize)]),
            "causes of the RSTs to {remote}"
        );
        for e in &evs {
            assert_eq!(e["netns"], ns.inode(), "netns of {e}");
        }
        let entry = self
            .remote(remote)
            .unwrap_or_else(|| panic!("{remote} missing from summary {}", self.summary));
        assert_eq!(entry["total"], n, "summary total for {remote}: {entry}");
        assert_eq!(
            entry["by_cause"],
            serde_json::json!({ cause: n }),
            "summary causes for {remote}"
        );
        evs
    }
}

/// What `kernel_reason` must be for a RST the kernel gives reason `name`:
/// the name, or null on kernels whose tcp_send_reset has no reason field
/// (before 6.10; `rsttrace doctor` says so).
pub fn expected_reason(name: &str) -> Value {
    if send_reset_has_reason() {
        Value::from(name)
    } else {
        Value::Null
    }
}

/// Whether this kernel's tcp_send_reset has a reason (6.10+): there it
/// fires for every RST the TCP stack sends, and rsttrace counts them for
/// coverage as they are sent.
pub fn send_reset_has_reason() -> bool {
    tracepoint_format("tcp/tcp_send_reset").contains(" reason;")
}

/// The running kernel's format file of tracepoint `event` ("group/name"),
/// wherever tracefs is mounted.
fn tracepoint_format(event: &str) -> String {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| std::fs::read_to_string(format!("{t}/events/{event}/format")).ok())
        .unwrap_or_else(|| panic!("{event} format file"))
}

/// The capabilities that attaching needs on this kernel, for setpriv's
/// --bounding-set: CAP_BPF and CAP_PERFMON, plus CAP_SYS_ADMIN where
/// kernel.perf_event_paranoid is above 2 (Debian's default, 3), plus
/// CAP_SYS_RESOURCE before 5.11 (eBPF maps count against RLIMIT_MEMLOCK).
pub fn attach_caps() -> String {
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2);
    let mut caps = String::from("+bpf,+perfmon");
    if paranoid > 2 {
        caps.push_str(",+sys_admin");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (5, 11) {
        caps.push_str(",+sys_resource");
    }
    caps
}

/// Whether this kernel's skb:kfree_skb names NETFILTER_DROP (5.17+): where
/// it does not, netfilter drops can't be counted (`rsttrace doctor` says so).
pub fn kernel_names_netfilter_drops() -> bool {
    tracepoint_format("skb/kfree_skb").contains("NETFILTER_DROP")
}

/// Whether this kernel's skb:kfree_skb has drop reason `name`
/// (TCP_LISTEN_OVERFLOW: 6.18 has it, 6.12 does not).
pub fn kernel_has_drop_reason(name: &str) -> bool {
    tracepoint_format("skb/kfree_skb").contains(&format!("\"{name}\""))
}

/// Packets a netfilter rule matched, from its counter: the ground truth
/// for netfilter's RSTs, which Tcp OutRsts does not count.
pub fn rule_packets(listing: &str) -> u64 {
    // nft: "... counter packets 3 bytes 180 reject ..."
    if let Some(rest) = listing.split("packets ").nth(1) {
        return rest.split_whitespace().next().unwrap().parse().unwrap();
    }
    // iptables -v -x -n: the REJECT line starts with its packet count.
    listing
        .lines()
        .find(|l| l.contains("REJECT"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no REJECT rule in:\n{listing}"))
        .parse()
        .unwrap()
}

/// Whether rsttrace names the nftables base chain of a REJECT rule that
/// predates the trace: kprobes, and nf_tables' types in BTF (its module's
/// BTF, from 5.11; or built in). `rsttrace doctor` says the same.
pub fn names_predating_nft_chains() -> bool {
    let exists = |p: &str| std::path::Path::new(p).exists();
    let nf_tables_builtin =
        exists("/sys/module/nf_tables") && !exists("/sys/module/nf_tables/initstate");
    exists("/sys/bus/event_source/devices/kprobe/type")
        && (exists("/sys/kernel/btf/nf_tables") || nf_tables_builtin)
}

/// A stand-in program or library built from tests/standin/`src` with the C
/// compiler `flags`, named `name`: the VM's copy under /usr/lib/rsttrace-vm
/// (`cargo xtask vm-test` builds it on the host with the same flags, its
/// `STANDINS`: the VM has no compiler), else built here with the host's C
/// compiler (.ci/run installs gcc-12) in a directory of this test process's
/// own, which `Standin` removes; no compiler fails the test.
pub fn standin(src: &str, name: &str, flags: &[&str]) -> Standin {
    let vm = Path::new("/usr/lib/rsttrace-vm").join(name);
    if vm.exists() {
        return Standin {
            path: vm,
            dir: None,
        };
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/standin")
        .join(src);
    // One directory per build: tests of one binary run at once, and each
    // removes its own when done.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rsttrace-standin-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let cc = ["cc", "gcc", "gcc-12"]
        .into_iter()
        .find(|cc| {
            Command::new(cc)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a C compiler (cc, gcc or gcc-12) builds the stand-ins");
    let status = Command::new(cc)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "{cc} failed on {}", src.display());
    Standin {
        path: out,
        dir: Some(dir),
    }
}

/// A built stand-in; a host build's directory goes with it.
pub struct Standin {
    pub path: PathBuf,
    dir: Option<PathBuf>,
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Loads a program of `prog_type` named `name` from (code, dst, src, off,
/// imm) instructions.
pub fn load_program(
    prog_type: u32,
    prog: &[(u8, u8, u8, i16, i32)],
    name: &str,
) -> std::os::fd::OwnedFd {
    let mut insns = Vec::with_capacity(prog.len() * 8);
    for &(code, dst, src, off, imm) in prog {
        insns.push(code);
        insns.push(dst | (src << 4));
        insns.extend_from_slice(&off.to_ne_bytes());
        insns.extend_from_slice(&imm.to_ne_bytes());
    }
    let license = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
    // log_level, log_size, log_buf, kern_version, prog_flags, prog_name.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    // Before 5.11 a program's memory counts against RLIMIT_MEMLOCK (EPERM
    // past it: 64 KiB by default). Best effort: where the hard limit can't
    // be raised, the kernel is new enough not to need it, and a refusal
    // below says why all the same.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let fd = bpf(5, &mut attr); // BPF_PROG_LOAD
    // SAFETY: a fresh fd the kernel gave us.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// The bpf(2) syscall; panics with the error.
pub fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> i32 {
    // SAFETY: a zeroed bpf_attr of the size given, with valid pointers.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    assert!(r >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    r as i32
}

/// Field `name` ("prog_id:") of the fdinfo of our own fd `fd`.
pub fn fdinfo_field(fd: &impl std::os::fd::AsRawFd, name: &str) -> String {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} in {fdinfo}"))
        .trim()
        .to_string()
}
