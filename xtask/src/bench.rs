//! `cargo xtask bench`: rsttrace's cost as ratios against the untraced
//! host measured in the same invocation, its exactness under a flood, its
//! memory at scale and its start-up time.
//!
//! Throughput and latency: one rsttrace (started with
//! `--debug-toggle-signals`) runs under a steady load while the bench
//! detaches its programs and attaches them again a few hundred
//! milliseconds apart; each traced stretch is compared with the untraced
//! ones around it. Whole runs a second apart, each with a tracer started
//! for it, could not resolve a few percent here: this VM's speed moves by
//! tens of percent over seconds, and its two vCPUs run at different
//! speeds (the load is kept on one).
//! Everything runs in a private network namespace on loopback. Results go
//! to stdout and to bench/RESULTS.md.

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

// The test-kit shared with the integration tests (namespaces, the
// kernel's TCP counters).
#[path = "../../tracer-user/tests/support/kit.rs"]
mod kit;

const NS: &str = "rsttrace-bench";

pub struct Options {
    /// Extra rsttrace arguments for every traced round.
    pub args: Vec<String>,
    pub rounds: usize,
    pub seconds: f64,
    pub soak_seconds: u64,
    /// Empty: every part, and the results file is written.
    pub only: Vec<Part>,
    /// Another rsttrace binary to measure (a variant under study).
    pub rsttrace: Option<PathBuf>,
}

/// The parts of the bench, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    Flood,
    PingPong,
    Signals,
    Http,
    Scale,
    Startup,
    Soak,
}

impl Options {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

struct Netns;

impl Netns {
    fn new() -> Result<Self> {
        kit::netns_add(NS);
        Ok(Netns)
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        kit::run_in_netns(NS, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kit::netns_delete(NS);
    }
}

/// Moves the calling thread into the bench namespace.
fn enter() {
    kit::enter_netns(NS);
}

/// Tcp OutRsts of the calling thread's namespace; panics when unreadable
/// (a 0 would read as "rsttrace counted more than the kernel sent").
fn out_rsts() -> u64 {
    kit::out_rsts_here()
}

fn connect_from(local: Ipv4Addr, to: SocketAddr) -> std::io::Result<()> {
    // SAFETY: plain socket calls on an fd we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from(local).to_be();
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let r = libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), 16);
        if r != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let SocketAddr::V4(to) = to else {
            unreachable!()
        };
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as u16;
        da.sin_port = to.port().to_be();
        da.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let r = libc::connect(fd, (&da as *const libc::sockaddr_in).cast(), 16);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if r == 0 { Ok(()) } else { Err(e) }
    }
}

/// connect() to a closed port in a loop for `secs`: (RSTs/s, OutRsts
/// delta).
fn rst_flood(ns: &Netns, client: Ipv4Addr, secs: f64) -> (f64, u64) {
    ns.run(move || flood_here(client, secs))
}

/// The flood of `rst_flood` on the calling thread, in its namespace.
fn flood_here(client: Ipv4Addr, secs: f64) -> (f64, u64) {
    let before = out_rsts();
    let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let _ = connect_from(client, to);
        n += 1;
    }
    (
        n as f64 / start.elapsed().as_secs_f64(),
        out_rsts() - before,
    )
}

/// Keeps the calling thread on the host's last CPU. The two vCPUs of this
/// VM run at speeds that differ and drift apart by tens of percent; a load
/// the scheduler moves between them measures that, not the tracer. The
/// tracer stays free to run anywhere.
fn pin_to_last_cpu() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(last_cpu(), &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The host's last CPU, where the loads run.
fn last_cpu() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// `last_cpu` as nginx's `worker_cpu_affinity` mask: binary, CPU 0
/// rightmost.
fn last_cpu_mask() -> String {
    format!("1{}", "0".repeat(last_cpu()))
}

/// A load on its own threads until dropped: `done` counts operations,
/// `lat` collects latencies (ns) when the load has them.
struct Load {
    done: Arc<AtomicU64>,
    lat: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Runs `step` in a loop on a thread in the namespace; `step` returns
    /// the operation's latency, if it measures one.
    fn start<F>(make: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: FnMut() -> Option<Duration>,
    {
        let done = Arc::new(AtomicU64::new(0));
        let lat = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, l, st) = (done.clone(), lat.clone(), stop.clone());
        let t = thread::spawn(move || {
            enter();
            pin_to_last_cpu();
            let mut step = make();
            while !st.load(Ordering::Relaxed) {
                if let Some(took) = step() {
                    l.lock()
                        .unwrap()
                        .push(took.as_nanos().min(u32::MAX as u128) as u32);
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Load {
            done,
            lat,
            stop,
            threads: vec![t],
        }
    }

    /// The RST flood from `client`.
    fn flood(client: Ipv4Addr) -> Self {
        Self::start(move || {
            let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
            move || {
                let _ = connect_from(client, to);
                None
            }
        })
    }

    /// 1-byte ping-pong on one loopback connection.
    fn ping_pong() -> Self {
        let (tx, rx) = mpsc::channel();
        // The server shares the client's CPU: across the two vCPUs each
        // round trip waits for two cross-CPU wakeups, which cost this VM
        // tens of microseconds and scatter the traced stretches over tens
        // of percent, hiding a per-packet cost of tens of nanoseconds. On
        // one CPU a round trip is the packets' own path (about 4 us here),
        // the worst case for a per-packet hook, and resolves it.
        let server = thread::spawn(move || {
            enter();
            pin_to_last_cpu();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        });
        let addr = rx.recv().unwrap();
        let mut load = Self::start(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            let mut b = [7u8; 1];
            move || {
                let t = Instant::now();
                c.write_all(&b).ok()?;
                c.read_exact(&mut b).ok()?;
                Some(t.elapsed())
            }
        });
        load.threads.push(server);
        load
    }

    /// Signal ping-pong between two processes: this thread sends SIGUSR1
    /// to a child, which answers with SIGUSR2; each waits for the other's
    /// (blocked and taken with sigtimedwait). Both are default-fatal, so
    /// signal_generate looks further than the signal number: each process
    /// has a handler for the signal it receives, as programs that signal
    /// each other do, and the program passes over handled signals after
    /// reading the handler (a signal left to its default action would be
    /// kept in a map: that process dies of it).
    fn signal_ping_pong() -> Self {
        Self::start(|| {
            // SAFETY: signal masks and a fork; the child calls only
            // sigtimedwait, syscall(tgkill) and _exit (async-signal-safe),
            // and exits when a second passes without a signal.
            unsafe {
                let mut usr = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut usr);
                libc::sigaddset(&mut usr, libc::SIGUSR1);
                libc::sigaddset(&mut usr, libc::SIGUSR2);
                libc::pthread_sigmask(libc::SIG_BLOCK, &usr, std::ptr::null_mut());
                let (parent, tid) = (libc::getpid(), libc::gettid());
                let mut sa = std::mem::zeroed::<libc::sigaction>();
                sa.sa_sigaction = ignore_signal as *const () as usize;
                libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
                let child = libc::fork();
                assert!(child >= 0, "fork");
                if child == 0 {
                    libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
                    let mut one = std::mem::zeroed::<libc::sigset_t>();
                    libc::sigemptyset(&mut one);
                    libc::sigaddset(&mut one, libc::SIGUSR1);
                    let second = libc::timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    };
                    loop {
                        if libc::sigtimedwait(&one, std::ptr::null_mut(), &second) < 0 {
                            libc::_exit(0);
                        }
                        libc::syscall(libc::SYS_tgkill, parent, tid, libc::SIGUSR2);
                    }
                }
                let mut two = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut two);
                libc::sigaddset(&mut two, libc::SIGUSR2);
                move || {
                    let t = Instant::now();
                    libc::kill(child, libc::SIGUSR1);
                    let second = libc::timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    };
                    if libc::sigtimedwait(&two, std::ptr::null_mut(), &second) < 0 {
                        return None;
                    }
                    Some(t.elapsed())
                }
            }
        })
    }

    /// HTTP/1.1 keep-alive GETs on `conns` connections to `addr`, all
    /// sent, then all answered (as many in flight as connections).
    fn http(addr: SocketAddr, conns: usize) -> Self {
        Self::start(move || {
            let mut socks: Vec<TcpStream> = (0..conns)
                .map(|_| {
                    let s = TcpStream::connect(addr).expect("connecting to nginx");
                    s.set_nodelay(true).unwrap();
                    s
                })
                .collect();
            let req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
            // nginx answers every request with the same bytes: learn their
            // length once, then read exactly that.
            socks[0].write_all(req).unwrap();
            let len = http_response_len(&mut socks[0]);
            let mut buf = vec![0u8; len];
            move || {
                let t = Instant::now();
                for s in &mut socks {
                    s.write_all(req).ok()?;
                }
                for s in &mut socks {
                    s.read_exact(&mut buf).ok()?;
                }
                // One operation per batch; its latency is the batch's.
                Some(t.elapsed())
            }
        })
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Latencies recorded since the last call.
    fn take_lat(&self) -> Vec<u32> {
        std::mem::take(&mut *self.lat.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The ping-pong server ends when its client's connection closes.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The signal ping-pong's handler: never runs (the signals are blocked
/// and taken with sigtimedwait), but makes them handled.
extern "C" fn ignore_signal(_: libc::c_int) {}

/// Reads one HTTP response (headers and a Content-Length body) and
/// returns its length in bytes.
fn http_response_len(s: &mut TcpStream) -> usize {
    let mut head = vec![];
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("reading nginx's answer");
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "nginx answered {text}");
    let body: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("nginx's answer has a Content-Length");
    let mut rest = vec![0u8; body];
    s.read_exact(&mut rest).expect("reading nginx's body");
    head.len() + body
}

/// Untraced and traced stretches alternate this long (after `SETTLE`):
/// a fraction of a second apart, where the host's speed has not yet
/// drifted (on this shared VM it moves by tens of percent over seconds).
/// Short stretches buy many of them: each stretch's ratio scatters by
/// several points here whatever its length (150 ms or 400 ms alike), so
/// the median gets steadier only with more stretches.
const PHASE: Duration = Duration::from_millis(150);
/// Left out after each detach or attach (text patching, RCU grace periods).
const SETTLE: Duration = Duration::from_millis(50);

/// One tracer, detached and attached again `pairs` times under `load`:
/// each traced stretch is compared with the mean of the untraced ones
/// around it. Rates and p99 latencies (us; 0 without latencies).
fn toggled(tracer: &mut Tracer, load: &Load, pairs: usize) -> Result<(Paired, Paired)> {
    let mut stretch = |attach: bool| -> Result<(f64, f64)> {
        tracer.toggle(attach)?;
        thread::sleep(SETTLE);
        let (c0, t0) = (load.done(), Instant::now());
        load.take_lat();
        thread::sleep(PHASE);
        let (c1, t1) = (load.done(), Instant::now());
        let mut lat = load.take_lat();
        lat.sort_unstable();
        let p99 = lat
            .get(lat.len() * 99 / 100)
            .map_or(0.0, |v| f64::from(*v) / 1000.0);
        Ok(((c1 - c0) as f64 / (t1 - t0).as_secs_f64(), p99))
    };
    let (mut rate, mut p99) = (Paired::default(), Paired::default());
    let mut before = stretch(false)?;
    for _ in 0..pairs {
        let traced = stretch(true)?;
        let after = stretch(false)?;
        rate.push(before.0, traced.0, after.0);
        p99.push(before.1, traced.1, after.1);
        before = after;
    }
    Ok((rate, p99))
}

/// A running tracer (rsttrace or bpftrace), attached.
struct Tracer {
    child: Child,
    out: PathBuf,
    attached_after: Duration,
    /// The lines it writes after the one saying it attached.
    lines: mpsc::Receiver<String>,
}

/// `--rsttrace`, else this tree's release build.
static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn rsttrace_bin() -> PathBuf {
    BIN.get()
        .cloned()
        .unwrap_or_else(|| crate::workspace_root().join("target/release/rsttrace"))
}

impl Tracer {
    /// rsttrace with full attribution, JSON lines to a file.
    fn rsttrace(extra: &[&str]) -> Result<Self> {
        Self::rsttrace_with(extra, &[])
    }

    /// `rsttrace` with debug flags (`EMPTY_PROGRAMS`).
    fn rsttrace_with(extra: &[&str], flags: &[&str]) -> Result<Self> {
        Self::spawn(
            Self::rsttrace_cmd(extra, flags),
            Self::rsttrace_out(),
            "attached",
            true,
        )
    }

    /// The same, detached and attached again on `toggle`, with more
    /// debug flags (`EMPTY_PROGRAMS`).
    fn rsttrace_toggled(extra: &[&str], flags: &[&str]) -> Result<Self> {
        let mut cmd = Self::rsttrace_cmd(extra, flags);
        cmd.arg("--debug-toggle-signals");
        Self::spawn(cmd, Self::rsttrace_out(), "attached", true)
    }

    /// JSON output unless `extra` names one.
    fn rsttrace_cmd(extra: &[&str], flags: &[&str]) -> Command {
        let mut cmd = Command::new(rsttrace_bin());
        cmd.args(flags);
        if !extra.contains(&"--output") {
            cmd.args(["--output", "json"]);
        }
        cmd.args(extra);
        cmd.args(EXTRA_ARGS.get().into_iter().flatten());
        cmd
    }

    fn rsttrace_out() -> PathBuf {
        std::env::temp_dir().join(format!("rsttrace-bench-{}.json", std::process::id()))
    }

    fn bpftrace() -> Result<Self> {
        let out = std::env::temp_dir().join("rsttrace-bench-bpftrace.txt");
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-e", "tracepoint:tcp:tcp_send_reset { @c = count(); }"]);
        Self::spawn(cmd, out, "Attaching", false)
    }

    fn spawn(mut cmd: Command, out: PathBuf, ready: &str, ready_on_stderr: bool) -> Result<Self> {
        let file = File::create(&out)?;
        let started = Instant::now();
        let mut child = if ready_on_stderr {
            cmd.stdout(file).stderr(Stdio::piped()).spawn()
        } else {
            cmd.stdout(Stdio::piped()).stderr(file).spawn()
        }
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let pipe: Box<dyn Read + Send> = if ready_on_stderr {
            Box::new(child.stderr.take().unwrap())
        } else {
            Box::new(child.stdout.take().unwrap())
        };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let wait = Duration::from_secs(60);
        loop {
            let left = wait.saturating_sub(started.elapsed());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(ready) => break,
                Ok(_) => {}
                Err(_) => bail!("tracer did not attach within 60 s"),
            }
        }
        let attached_after = started.elapsed();
        // Let the tracer settle into its loop before measuring.
        thread::sleep(Duration::from_millis(200));
        Ok(Self {
            child,
            out,
            attached_after,
            lines,
        })
    }

    /// Detaches rsttrace's programs or attaches them again (see
    /// `rsttrace_toggled`), and waits until it is done.
    fn toggle(&mut self, attach: bool) -> Result<()> {
        let (sig, said) = if attach {
            (libc::SIGUSR2, "bench: attached again")
        } else {
            (libc::SIGUSR1, "bench: detached")
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(said) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("rsttrace did not say \"{said}\" within 10 s"),
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Kernel memory of its BPF maps (the fdinfo memlock of each map).
    fn map_bytes(&self) -> u64 {
        self.fdinfo_sum("map_type:", "memlock:")
    }

    /// The run time of all its BPF programs so far, in ns (counted while
    /// `RunTimeStats` is on).
    fn program_run_time(&self) -> u64 {
        self.fdinfo_sum("prog_type:", "run_time_ns:")
    }

    /// `field` summed over its fds whose fdinfo has `kind`.
    fn fdinfo_sum(&self, kind: &str, field: &str) -> u64 {
        let mut total = 0;
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fdinfo", self.child.id())) else {
            return 0;
        };
        for fd in dir.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if info.contains(kind) {
                total += info
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Stops the tracer with SIGINT and returns its output file's text.
    /// SIGINT is sent again every 5 s: bpftrace has been seen to miss one
    /// (the bench then waited on it for good); rsttrace ignores any after
    /// the first. A tracer still running after a minute is killed.
    fn stop(mut self) -> Result<String> {
        let started = Instant::now();
        let st = 'stopped: loop {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_secs(5) {
                if let Some(st) = self.child.try_wait()? {
                    break 'stopped st;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the tracer did not stop within a minute of SIGINT: killed");
            }
        };
        ensure!(st.success(), "tracer exited with {st}");
        let text = std::fs::read_to_string(&self.out)?;
        let _ = std::fs::remove_file(&self.out);
        Ok(text)
    }
}

fn summary(json: &str) -> Result<serde_json::Value> {
    let line = json
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"summary\""))
        .context("no summary line")?;
    Ok(serde_json::from_str(line)?)
}

fn remote_total(summary: &serde_json::Value, ip: &str) -> u64 {
    summary["by_remote_ip"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["remote_ip"] == ip))
        .and_then(|r| r["total"].as_u64())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Traced runs, each with the mean of the untraced runs around it.
#[derive(Default)]
struct Paired {
    untraced: Vec<f64>,
    traced: Vec<f64>,
    ratios: Vec<f64>,
}

impl Paired {
    fn push(&mut self, before: f64, traced: f64, after: f64) {
        let u = (before + after) / 2.0;
        self.untraced.push(u);
        self.traced.push(traced);
        self.ratios.push(traced / u);
    }

    /// The median of the per-run ratios (robust to a run the host slowed).
    fn ratio(&self) -> f64 {
        median(&mut self.ratios.clone())
    }

    /// The middle half of the per-stretch ratios, for the log.
    fn spread(&self) -> String {
        let mut r = self.ratios.clone();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (lo, hi) = (r[r.len() / 4], r[r.len() * 3 / 4]);
        format!("middle half {:.1}%..{:.1}%", 100.0 * lo, 100.0 * hi)
    }

    /// A throughput row: met when the median ratio is `min` or above.
    fn row(&self, what: &str, min: f64) -> Row {
        let r = self.ratio();
        Row {
            ratio: format!("{:.1}%", 100.0 * r),
            met: Some(r >= min),
            ..Row::rate(
                what,
                median(&mut self.untraced.clone()),
                median(&mut self.traced.clone()),
                min,
            )
        }
    }

    /// A rate row shown without a target (the floor, the JSON mode).
    fn info_row(&self, what: &str) -> Row {
        Row {
            target: "-".into(),
            met: None,
            ..self.row(what, 0.0)
        }
    }

    /// A latency row: the traced one may exceed the untraced one by `max`.
    fn latency_row(&self, what: &str, max: f64) -> Row {
        let r = self.ratio();
        Row {
            ratio: format!("{:+.1}%", 100.0 * (r - 1.0)),
            met: Some(r <= 1.0 + max),
            ..Row::latency(
                what,
                median(&mut self.untraced.clone()),
                median(&mut self.traced.clone()),
                max,
            )
        }
    }
}

struct Row {
    what: String,
    untraced: String,
    traced: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    /// A throughput: traced / untraced, met at `min` or above.
    fn rate(what: &str, u: f64, t: f64, min: f64) -> Self {
        Row {
            what: what.into(),
            untraced: format!("{u:.0}"),
            traced: format!("{t:.0}"),
            ratio: format!("{:.1}%", 100.0 * t / u),
            target: format!(">= {:.0}%", 100.0 * min),
            met: Some(t / u >= min),
        }
    }

    /// A latency: the traced one may exceed the untraced one by `max`.
    fn latency(what: &str, u: f64, t: f64, max: f64) -> Self {
        Row {
            what: what.into(),
            untraced: format!("{u:.1}"),
            traced: format!("{t:.1}"),
            ratio: format!("{:+.1}%", 100.0 * (t / u - 1.0)),
            target: format!("within {:.0}%", 100.0 * max),
            met: Some(t <= u * (1.0 + max)),
        }
    }

    /// A figure of the traced run alone, with its target (if any).
    fn traced(what: &str, traced: String, target: &str, met: Option<bool>) -> Self {
        Row {
            what: what.into(),
            untraced: "-".into(),
            traced,
            ratio: "-".into(),
            target: target.into(),
            met,
        }
    }
}

/// `--args` of the bench, for every traced round.
static EXTRA_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

pub fn run(opts: &Options) -> Result<()> {
    let _ = EXTRA_ARGS.set(opts.args.clone());
    if let Some(bin) = &opts.rsttrace {
        let _ = BIN.set(bin.clone());
    }
    ensure!(
        crate::is_root(),
        "the bench needs root (it traces and makes namespaces)"
    );
    ensure!(
        rsttrace_bin().exists(),
        "build first: {}",
        rsttrace_bin().display()
    );
    let ns = Netns::new()?;
    let mut rows: Vec<Row> = vec![];
    let secs = opts.seconds;
    let rounds = opts.rounds;
    eprintln!("bench: {rounds} rounds of {secs} s runs, each traced run between untraced ones");

    if opts.runs(Part::Flood) {
        rows.append(&mut flood_rows(&ns, rounds, secs)?);
    }
    if opts.runs(Part::PingPong) {
        rows.append(&mut ping_pong_rows(rounds)?);
    }
    if opts.runs(Part::Signals) {
        rows.append(&mut signal_rows(rounds)?);
    }
    if opts.runs(Part::Http) {
        if which("nginx") {
            match http_rows(rounds) {
                Ok(mut r) => rows.append(&mut r),
                Err(e) => eprintln!("bench: HTTP load skipped: {e:#}"),
            }
        } else {
            eprintln!("bench: HTTP load skipped: install nginx (Debian package)");
        }
    }
    if opts.runs(Part::Scale) {
        rows.append(&mut scale_rows(&ns)?);
    }
    if opts.runs(Part::Startup) {
        rows.append(&mut startup_rows(&ns)?);
    }
    if opts.runs(Part::Soak) && opts.soak_seconds > 0 {
        rows.append(&mut soak_rows(&ns, opts.soak_seconds)?);
    }

    report(&rows, opts)
}

/// Traced stretches per toggled measurement: ten per `--rounds` (two
/// seconds of stretches).
fn pairs(rounds: usize) -> usize {
    10 * rounds
}

/// The floor's row under each load.
const FLOOR_ROW: &str = "  floor: the same hooks, every program returning at once";

/// rsttrace's flag for the floor: the same hooks, every program
/// returning at once.
const EMPTY_PROGRAMS: &[&str] = &["--debug-empty-programs"];

/// The floor with one more empty program, on net:net_dev_start_xmit: what
/// a second egress view (one that would also see AF_PACKET's qdisc bypass
/// and generic XDP_TX) would cost each packet before doing anything.
const START_XMIT_ROW: &str =
    "  floor + an empty program on net:net_dev_start_xmit (a second egress view)";
const EMPTY_PROGRAMS_START_XMIT: &[&str] = &["--debug-empty-programs", "--debug-start-xmit-probe"];

/// One row of the flood: rsttrace's arguments and debug flags.
struct FloodMode {
    what: &'static str,
    /// For the log.
    name: &'static str,
    extra: &'static [&'static str],
    flags: &'static [&'static str],
    target: Option<f64>,
}

/// The RST flood in each output mode (toggled), under the same hooks with
/// programs that return at once (the floor), its exactness (whole runs
/// against OutRsts), and the bpftrace reference.
fn flood_rows(ns: &Netns, rounds: usize, secs: f64) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let modes = [
        FloodMode {
            what: "RST flood (connect to a closed port), RSTs/s: default text output",
            name: "text",
            extra: &["--output", "text"],
            flags: &[],
            target: Some(0.97),
        },
        // Not a target: the cost of carrying every event to a reader is
        // the consumer's choice, and shown as such.
        FloodMode {
            what: "  the same, --output json (every event to userspace)",
            name: "json",
            extra: &[],
            flags: &[],
            target: None,
        },
        FloodMode {
            what: "  the same, --summary-only (counts, no events)",
            name: "--summary-only",
            extra: &["--summary-only"],
            flags: &[],
            target: Some(0.97),
        },
        // What the hooks cost before any of rsttrace's work: the kernel
        // runs every attached program at each of its events, whatever the
        // program does. The rows above can't rise above this one.
        FloodMode {
            what: FLOOR_ROW,
            name: "floor",
            extra: &["--summary-only"],
            flags: EMPTY_PROGRAMS,
            target: None,
        },
        FloodMode {
            what: START_XMIT_ROW,
            name: "floor + net_dev_start_xmit",
            extra: &["--summary-only"],
            flags: EMPTY_PROGRAMS_START_XMIT,
            target: None,
        },
    ];
    let mut full_ratio = 0.0;
    for (i, m) in modes.into_iter().enumerate() {
        let FloodMode {
            what,
            name,
            extra,
            flags,
            target,
        } = m;
        let mut t = Tracer::rsttrace_toggled(extra, flags)?;
        let load = Load::flood(Ipv4Addr::new(127, 199, i as u8, 1));
        let (rate, _) = toggled(&mut t, &load, pairs(rounds))?;
        drop(load);
        t.stop()?;
        eprintln!(
            "bench: flood, {name}: {:.1}% (traced stretches: {})",
            100.0 * rate.ratio(),
            rate.spread()
        );
        if i == 0 {
            full_ratio = rate.ratio();
        }
        rows.push(match target {
            Some(min) => rate.row(what, min),
            None => rate.info_row(what),
        });
    }

    rows.append(&mut program_time_rows(ns, rounds, secs)?);

    // bpftrace can't be detached and attached again: its runs are whole
    // runs between untraced ones, which the host's drift blurs more.
    if which("bpftrace") {
        let mut bpf = Paired::default();
        let client = Ipv4Addr::new(127, 198, 0, 1);
        let mut before = rst_flood(ns, client, secs).0;
        for r in 0..rounds {
            let b = Tracer::bpftrace()?;
            let rate = rst_flood(ns, client, secs).0;
            b.stop()?;
            let after = rst_flood(ns, client, secs).0;
            bpf.push(before, rate, after);
            before = after;
            eprintln!("bench: bpftrace round {r}: {:.1}%", 100.0 * bpf.ratios[r]);
        }
        rows.push(Row {
            target: "(to beat)".into(),
            met: Some(full_ratio >= bpf.ratio()),
            ..bpf.row(
                "  reference: bpftrace count-only one-liner (whole runs)",
                0.0,
            )
        });
    }

    // Exactness: whole traced runs, every count against OutRsts.
    let mut exact = 0;
    for r in 0..rounds {
        let client = Ipv4Addr::new(127, 200, r as u8, 1);
        for extra in [&[][..], &["--summary-only"][..]] {
            let t = Tracer::rsttrace(extra)?;
            let (_, delta) = rst_flood(ns, client, secs);
            let s = summary(&t.stop()?)?;
            let counted = remote_total(&s, &client.to_string());
            if counted == delta {
                exact += 1;
            } else {
                eprintln!("bench: round {r}: rsttrace counted {counted}, OutRsts says {delta}");
            }
        }
    }
    rows.push(Row::traced(
        "exact count under the flood (rsttrace == OutRsts)",
        format!("{exact}/{} runs", 2 * rounds),
        "every run",
        Some(exact == 2 * rounds),
    ));
    Ok(rows)
}

/// The time rsttrace's programs take per RST under the flood, from the
/// kernel's own run-time stats, against an untraced RST's time measured
/// just before: the part of the flood's cost that rsttrace's code decides.
/// Steadier than the rate rows, whose run-to-run spread on this VM is
/// about a point. Each run of a program also pays the stats' two clock
/// reads, and the hooks' dispatch is not in it.
fn program_time_rows(ns: &Netns, rounds: usize, secs: f64) -> Result<Vec<Row>> {
    let _stats = RunTimeStats::enable()?;
    let client = Ipv4Addr::new(127, 197, 0, 1);
    let mut rows = vec![];
    for (what, extra, flags) in [
        ("text output", &["--output", "text"][..], &[][..]),
        ("--summary-only", &["--summary-only"][..], &[][..]),
        // The stats' own clock reads and the programs' entry and exit:
        // what the rows above take beyond this is rsttrace's work.
        (
            "floor (every program returning at once)",
            &["--summary-only"][..],
            EMPTY_PROGRAMS,
        ),
    ] {
        let (mut untraced_ns, mut prog_ns, mut shares) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let rate = pinned_flood(ns, client, secs).0;
            let t = Tracer::rsttrace_with(extra, flags)?;
            let before = t.program_run_time();
            let (_, rsts) = pinned_flood(ns, client, secs);
            let after = t.program_run_time();
            t.stop()?;
            ensure!(rsts > 0, "no RSTs under the flood");
            let per_rst = after.saturating_sub(before) as f64 / rsts as f64;
            untraced_ns.push(1e9 / rate);
            prog_ns.push(per_rst);
            shares.push(per_rst * rate / 1e9);
        }
        let share = median(&mut shares);
        eprintln!(
            "bench: programs per RST, {what}: {:.1}% of an untraced RST",
            100.0 * share
        );
        rows.push(Row {
            what: format!("  rsttrace's programs per RST, {what} (kernel run-time stats): ns"),
            untraced: format!("{:.0}", median(&mut untraced_ns)),
            traced: format!("{:.0}", median(&mut prog_ns)),
            ratio: format!("{:.1}%", 100.0 * share),
            target: "-".into(),
            met: None,
        });
    }
    Ok(rows)
}

/// The kernel's BPF run-time stats, on while this lives (BPF_ENABLE_STATS:
/// nothing is left on if the bench dies).
struct RunTimeStats {
    _on: std::os::fd::OwnedFd,
}

impl RunTimeStats {
    fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let attr = BPF_STATS_RUN_TIME;
        // SAFETY: the bpf syscall with an attribute of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const u32,
                size_of::<u32>(),
            )
        };
        ensure!(
            fd >= 0,
            "enabling BPF run-time stats: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd the kernel just returned to us.
        Ok(Self {
            _on: unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32)
            },
        })
    }
}

/// connect() to a closed port in a loop for `secs` on the last CPU (as the
/// toggled loads): (RSTs/s, OutRsts delta).
fn pinned_flood(ns: &Netns, client: Ipv4Addr, secs: f64) -> (f64, u64) {
    ns.run(move || {
        pin_to_last_cpu();
        flood_here(client, secs)
    })
}

/// RST-free traffic: 1-byte ping-pong, toggled, with the cost of a second
/// egress view: every segment is a packet both views would run on.
fn ping_pong_rows(rounds: usize) -> Result<Vec<Row>> {
    let mut measure = |flags: &[&str]| under_toggled_tracer(Load::ping_pong, rounds, flags);
    let mut rows = rst_free_rows(
        "ping-pong",
        (
            "1-byte ping-pong, round trips/s",
            "1-byte ping-pong, p99 latency (us)",
        ),
        &mut measure,
    )?;
    let (rate, p99) = measure(EMPTY_PROGRAMS_START_XMIT)?;
    say_toggled("ping-pong, floor + net_dev_start_xmit", &rate, &p99);
    rows.push(rate.info_row(START_XMIT_ROW));
    Ok(rows)
}

/// Signals between two processes (signal_generate's cost), toggled.
fn signal_rows(rounds: usize) -> Result<Vec<Row>> {
    rst_free_rows(
        "signal ping-pong",
        (
            "SIGUSR1/SIGUSR2 ping-pong between processes, round trips/s",
            "SIGUSR1/SIGUSR2 ping-pong, p99 latency (us)",
        ),
        |flags| under_toggled_tracer(Load::signal_ping_pong, rounds, flags),
    )
}

/// An RST-free load's rows: its rate and p99 under rsttrace, then its rate
/// under the floor. `measure` runs the load under a toggled tracer with
/// the given debug flags.
fn rst_free_rows(
    name: &str,
    (rate_what, p99_what): (&str, &str),
    mut measure: impl FnMut(&[&str]) -> Result<(Paired, Paired)>,
) -> Result<Vec<Row>> {
    let (rate, p99) = measure(&[])?;
    say_toggled(name, &rate, &p99);
    let (floor, floor_p99) = measure(EMPTY_PROGRAMS)?;
    say_toggled(&format!("{name}, floor"), &floor, &floor_p99);
    Ok(vec![
        rate.row(rate_what, 0.99),
        p99.latency_row(p99_what, 0.02),
        floor.info_row(FLOOR_ROW),
    ])
}

/// Starts one toggled tracer (with `flags`, see `EMPTY_PROGRAMS`), then the
/// load, and measures: (rate, p99).
fn under_toggled_tracer(
    load: impl FnOnce() -> Load,
    rounds: usize,
    flags: &[&str],
) -> Result<(Paired, Paired)> {
    let mut t = Tracer::rsttrace_toggled(&[], flags)?;
    let load = load();
    let measured = toggled(&mut t, &load, pairs(rounds));
    drop(load);
    t.stop()?;
    measured
}

fn say_toggled(name: &str, rate: &Paired, p99: &Paired) {
    eprintln!(
        "bench: {name}: {:.1}%, p99 {:+.1}% (traced stretches: {})",
        100.0 * rate.ratio(),
        100.0 * (p99.ratio() - 1.0),
        rate.spread()
    );
}

/// An HTTP keep-alive load against nginx, toggled.
fn http_rows(rounds: usize) -> Result<Vec<Row>> {
    const CONNS: usize = 8;
    let dir = std::env::temp_dir().join("rsttrace-bench-nginx");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("index.html"), "ok\n")?;
    let conf = dir.join("nginx.conf");
    // nginx's worker on the load's CPU, for the reason the ping-pong
    // server is there (see `Load::ping_pong`).
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; worker_cpu_affinity {mask};\n\
             pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:8080; root {d}; }} }}\n",
            d = dir.display(),
            mask = last_cpu_mask(),
        ),
    )?;
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", NS, "nginx", "-c"])
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()?;
    thread::sleep(Duration::from_millis(500));
    let rows = rst_free_rows(
        "http",
        (
            "HTTP keep-alive (nginx, 8 connections), requests/s",
            "HTTP keep-alive, p99 latency of 8 requests in flight (us)",
        ),
        |flags| {
            let (mut rate, p99) = under_toggled_tracer(
                || Load::http("127.0.0.1:8080".parse().unwrap(), CONNS),
                rounds,
                flags,
            )?;
            // The load counts batches of one request per connection.
            for v in [&mut rate.untraced, &mut rate.traced] {
                v.iter_mut().for_each(|r| *r *= CONNS as f64);
            }
            Ok((rate, p99))
        },
    );
    // SIGTERM lets the master stop its workers (SIGKILL would orphan them).
    // SAFETY: signalling our own child (ip netns exec execs nginx in place).
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    let _ = nginx.wait();
    rows
}

/// Start-ups measured for the start-up row.
const STARTUP_RUNS: usize = 9;

/// Exec to the "attached" line, `STARTUP_RUNS` times (median and range:
/// the verifier's time varies from run to run), and from a RST to its
/// event in the last run.
fn startup_rows(ns: &Netns) -> Result<Vec<Row>> {
    let mut attach = vec![];
    for _ in 1..STARTUP_RUNS {
        let t = Tracer::rsttrace(&[])?;
        attach.push(t.attached_after.as_secs_f64() * 1000.0);
        t.stop()?;
    }
    let t = Tracer::rsttrace(&[])?;
    attach.push(t.attached_after.as_secs_f64() * 1000.0);
    let first = {
        let started = Instant::now();
        ns.run(|| {
            let _ = connect_from(
                Ipv4Addr::new(127, 201, 0, 1),
                "127.0.0.1:9".parse().unwrap(),
            );
        });
        let out = t.out.clone();
        loop {
            if std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("\"type\":\"rst\"")
            {
                break started.elapsed();
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "no event within 10 s"
            );
            thread::sleep(Duration::from_millis(1));
        }
    };
    t.stop()?;
    let (lo, hi) = attach
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let mid = median(&mut attach);
    eprintln!("bench: start-up: median {mid:.0} ms, {lo:.0}-{hi:.0} ms over {STARTUP_RUNS} runs");
    Ok(vec![
        Row::traced(
            &format!("start-up: exec to attached (ms), median (range) of {STARTUP_RUNS} runs"),
            format!("{mid:.0} ({lo:.0}-{hi:.0})"),
            "report",
            None,
        ),
        Row::traced(
            "first event: RST to event written (ms)",
            format!("{:.1}", first.as_secs_f64() * 1000.0),
            "report",
            None,
        ),
    ])
}

fn scale_rows(ns: &Netns) -> Result<Vec<Row>> {
    const N: u32 = 100_000;
    let mut rows = vec![];
    for (label, max) in [
        ("default table (65536)", None),
        ("--max-remote-ips 131072", Some("131072")),
    ] {
        let args: Vec<&str> = match max {
            Some(m) => vec!["--summary-only", "--max-remote-ips", m],
            None => vec!["--summary-only"],
        };
        let t = Tracer::rsttrace(&args)?;
        let started = Instant::now();
        let delta = ns.run(|| {
            let before = out_rsts();
            for i in 0..N {
                // 127.10.0.0 + i: distinct remote addresses on loopback.
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 10, 0, 0)) + i);
                let _ = connect_from(ip, "127.0.0.1:9".parse().unwrap());
            }
            out_rsts() - before
        });
        let rate = N as f64 / started.elapsed().as_secs_f64();
        let (rss, maps) = (t.rss_kib(), t.map_bytes());
        let s = summary(&t.stop()?)?;
        let ips = s["by_remote_ip"].as_array().map_or(0, |a| a.len());
        let total = s["total"].as_u64().unwrap_or(0);
        let overflow = s["remote_ip_overflow"].as_u64().unwrap_or(0);
        eprintln!(
            "bench: scale ({label}): {N} remotes at {rate:.0}/s, {ips} listed, {overflow} by cause only, RSS {rss} KiB, maps {maps} B"
        );
        let what = |x: &str| format!("100k remote IPs, {label}: {x}");
        rows.push(Row::traced(
            &what("rsttrace peak RSS (MiB)"),
            format!("{:.1}", rss as f64 / 1024.0),
            "bounded",
            None,
        ));
        rows.push(Row::traced(
            &what("kernel map memory (MiB)"),
            format!("{:.1}", maps as f64 / (1 << 20) as f64),
            "bounded",
            None,
        ));
        // One RST per remote: each is listed or counted by cause only.
        rows.push(Row::traced(
            &what("listed / counted by cause only / total vs OutRsts"),
            format!("{ips} / {overflow} / {total} vs {delta}"),
            "nothing hidden",
            Some(total == delta && ips as u64 + overflow == delta),
        ));
    }
    Ok(rows)
}

/// Mixed causes at a moderate rate for `secs`; memory sampled each 10 s.
fn soak_rows(ns: &Netns, secs: u64) -> Result<Vec<Row>> {
    let t = Tracer::rsttrace(&[])?;
    let pid = t.child.id();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let start = Instant::now();
    let mut samples = vec![];
    let mut sent = 0u64;
    let mut i = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        sent += ns.run(move || {
            let before = out_rsts();
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 90, 0, 0)) + (i % 5000));
            // closed port
            let _ = connect_from(ip, "127.0.0.1:9".parse().unwrap());
            // abort on close
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            if let Ok(mut c) = TcpStream::connect(l.local_addr().unwrap()) {
                let _ = c.write_all(b"x");
                if let Ok((s, _)) = l.accept() {
                    let mut b = [0u8; 1];
                    let _ = s.peek(&mut b);
                    drop(s);
                }
            }
            out_rsts() - before
        });
        i += 1;
        if i.is_multiple_of(200) {
            samples.push(rss());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let s = summary(&t.stop()?)?;
    let first = samples.get(samples.len() / 10).copied().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    let total = s["total"].as_u64().unwrap_or(0);
    Ok(vec![
        Row::traced(
            &format!("soak {secs} s, mixed causes: RSS early -> end (MiB)"),
            format!(
                "{:.1} -> {:.1}",
                first as f64 / 1024.0,
                last as f64 / 1024.0
            ),
            "stable",
            Some(last <= first + first / 10 + 1024),
        ),
        Row::traced(
            &format!("soak {secs} s: rsttrace total vs OutRsts"),
            format!("{total} vs {sent}"),
            "exact",
            Some(total == sent),
        ),
    ])
}

/// A row as a line of the results table.
fn table_line(r: &Row) -> String {
    let met = match r.met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    };
    format!(
        "| {} | {} | {} | {} | {} | {met} |",
        r.what, r.untraced, r.traced, r.ratio, r.target
    )
}

/// The results file with `rows` (as `lines`) in place of the rows of the
/// same measurement, found by the measurement's first words (up to its
/// first parenthesis, so a reworded unit or run count still matches: rows
/// of one load say what sets them apart before any parenthesis); rows not
/// there yet go after the table's last row.
fn merge_rows(old: &str, rows: &[Row], lines: &[String]) -> String {
    let key = |what: &str| what.split('(').next().unwrap_or(what).trim().to_string();
    let what = |l: &str| -> Option<String> {
        Some(l.strip_prefix("| ")?.split(" | ").next()?.to_string())
    };
    // An indented row ("  floor: ...") belongs to the row above it: several
    // loads have one with the same words.
    let indented = |w: &str| w.starts_with(' ');
    let mut out: Vec<String> = old.lines().map(str::to_string).collect();
    // The row the last main row was merged at.
    let mut parent = 0;
    for (r, line) in rows.iter().zip(lines) {
        let k = key(&r.what);
        let found = if indented(&r.what) {
            (parent + 1..out.len())
                .take_while(|&i| what(&out[i]).is_some_and(|w| indented(&w)))
                .find(|&i| what(&out[i]).is_some_and(|w| key(&w) == k))
        } else {
            out.iter()
                .position(|l| what(l).is_some_and(|w| !indented(&w) && key(&w) == k))
        };
        let at = match found {
            Some(i) => {
                out[i] = line.clone();
                i
            }
            None => {
                let at = if indented(&r.what) {
                    (parent + 1..out.len())
                        .take_while(|&i| what(&out[i]).is_some_and(|w| indented(&w)))
                        .last()
                        .map_or(parent + 1, |i| i + 1)
                } else {
                    out.iter()
                        .rposition(|l| l.starts_with('|'))
                        .map_or(out.len(), |i| i + 1)
                };
                out.insert(at, line.clone());
                at
            }
        };
        if !indented(&r.what) {
            parent = at;
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn report(rows: &[Row], opts: &Options) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    writeln!(md, "# rsttrace benchmark results\n")?;
    writeln!(
        md,
        "Kernel {kernel}, {cpus} CPUs, {date}. `cargo xtask bench --rounds {}`. Throughput and \
         latency rows: one rsttrace runs under a steady load while the bench detaches its \
         programs and attaches them again every {} ms ({} traced stretches, each compared with \
         the mean of the untraced stretches around it; the load, with the ping-pong server \
         and nginx's worker, runs on the last CPU, the tracer anywhere). The ratio is the \
         median of those per-stretch ratios, the untraced and traced columns medians of the \
         stretches. This VM's speed moves by tens of \
         percent over seconds, so whole runs a second apart can't resolve a few percent. \
         bpftrace can't be detached and attached again: its row compares whole {} s runs \
         between untraced ones, as do the exactness runs. rsttrace runs with full \
         attribution (`--output json` to a file) unless the row says otherwise.\n",
        opts.rounds,
        (PHASE + SETTLE).as_millis(),
        pairs(opts.rounds),
        opts.seconds
    )?;
    writeln!(
        md,
        "| measurement | untraced | traced | ratio | target | met |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for r in rows {
        writeln!(md, "{}", table_line(r))?;
    }
    print!("{md}");
    let path = crate::workspace_root().join("bench/RESULTS.md");
    if opts.only.is_empty() {
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &md)?;
        eprintln!("bench: written to {}", path.display());
    } else if opts.rsttrace.is_none() {
        // A part alone: its rows replace theirs in the results, the other
        // rows (and the header of the run that measured them) stay.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = rows.iter().map(table_line).collect();
        std::fs::write(&path, merge_rows(&old, rows, &lines))?;
        eprintln!("bench: these rows updated in {}", path.display());
    }
    if rows.iter().any(|r| r.met == Some(false)) {
        bail!("some targets were not met (see the table)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_alone_replaces_its_rows_and_keeps_the_others() {
        let old = "# results\n\ntext\n\n| measurement | untraced | traced | ratio | target | met |\n\
                   |---|---|---|---|---|---|\n\
                   | flood | 1 | 2 | 3 | - | - |\n\
                   | start-up: exec to attached (ms) | - | 1168 | - | report | - |\n";
        let rows = [
            Row::traced(
                "start-up: exec to attached (ms), median (range) of 9 runs",
                "400 (390-420)".into(),
                "report",
                None,
            ),
            Row::traced(
                "first event: RST to event written (ms)",
                "1.5".into(),
                "report",
                None,
            ),
        ];
        let lines: Vec<String> = rows.iter().map(table_line).collect();
        let new = merge_rows(old, &rows, &lines);
        assert!(new.contains("| flood | 1 | 2 | 3 | - | - |\n"), "{new}");
        assert!(!new.contains("1168"), "{new}");
        assert!(new.contains("of 9 runs | - | 400 (390-420) |"), "{new}");
        assert!(
            new.ends_with(
                "| first event: RST to event written (ms) | - | 1.5 | - | report | - |\n"
            ),
            "{new}"
        );
        assert!(new.starts_with("# results\n\ntext\n"), "{new}");
    }

    /// Floor rows share their words: each load's is the one under it.
    #[test]
    fn a_floor_row_replaces_the_floor_of_its_own_load() {
        let old = "| measurement | untraced | traced | ratio | target | met |\n\
                   |---|---|---|---|---|---|\n\
                   | flood | 1 | 2 | 3 | - | - |\n\
                   |   floor: the same | 4 | 5 | 6 | - | - |\n\
                   | ping-pong | 7 | 8 | 9 | - | - |\n\
                   |   floor: the same | 10 | 11 | 12 | - | - |\n";
        let rows = [
            Row::traced("ping-pong", "80".into(), "report", None),
            Row::traced("  floor: the same", "110".into(), "report", None),
        ];
        let lines: Vec<String> = rows.iter().map(table_line).collect();
        let new = merge_rows(old, &rows, &lines);
        assert!(
            new.contains("|   floor: the same | 4 | 5 | 6 | - | - |\n"),
            "{new}"
        );
        assert!(new.contains("| ping-pong | - | 80 |"), "{new}");
        assert!(
            new.ends_with("|   floor: the same | - | 110 | - | report | - |\n"),
            "{new}"
        );
        assert_eq!(new.lines().count(), old.lines().count(), "{new}");
    }

    /// The programs-per-RST rows of each output stay apart.
    #[test]
    fn rows_of_one_load_stay_apart() {
        let per = |what: &str| format!("  programs per RST, {what} (run-time stats): ns");
        let old = format!(
            "| measurement | untraced | traced | ratio | target | met |\n\
             |---|---|---|---|---|---|\n\
             | flood | 1 | 2 | 3 | - | - |\n\
             | {} | 4 | 5 | 6 | - | - |\n\
             | {} | 7 | 8 | 9 | - | - |\n",
            per("text"),
            per("floor (empty)")
        );
        let rows = [
            Row::traced("flood", "10".into(), "report", None),
            Row::traced(&per("text"), "40".into(), "report", None),
            Row::traced(&per("floor (empty)"), "70".into(), "report", None),
        ];
        let lines: Vec<String> = rows.iter().map(table_line).collect();
        let new = merge_rows(&old, &rows, &lines);
        assert_eq!(new.lines().count(), old.lines().count(), "{new}");
        assert!(
            new.contains(&format!("| {} | - | 40 |", per("text"))),
            "{new}"
        );
        assert!(
            new.contains(&format!("| {} | - | 70 |", per("floor (empty)"))),
            "{new}"
        );
    }
}
