//! RSTs a process sends as it dies: killed by a security agent's SIGKILL,
//! exiting by itself, killed by the OOM killer, killed by a BPF program
//! (`bpf_send_signal`). Each server holds accepted connections with unread
//! requests (abort-on-close at exit) and others still queued
//! (listener-closed), each kind from its own remote address, in its own
//! namespace; Tcp OutRsts and the wire are the truth.

mod support;

use std::{
    net::TcpListener,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use support::{Netns, Trace, connect_from, out_rsts_here, scenario::assert_reset};

/// How the server child ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// A child named `falcon-sensor` sends it SIGKILL.
    KilledByAgent,
    /// It calls `_exit(0)`.
    Exits,
    /// It allocates past its memory cgroup's limit (`cgroup.procs`).
    Oom,
    /// A BPF program on `sys_enter` sends it SIGKILL (`bpf_send_signal`).
    BpfProgram,
}

/// What the scenario did: the server's pid, the killer's pid (a process
/// that sent the signal, or the holder of the BPF program), OutRsts delta.
struct Died {
    server: u32,
    killer: Option<u32>,
    sent: u64,
    /// Kept attached until rsttrace has read the events: it names the
    /// program's holder when it reads them.
    _program: Option<KillerProgram>,
}

const SERVER_COMM: &[u8] = b"orders-api\0";
const KILLER_COMM: &[u8] = b"falcon-sensor\0";

/// A server child holds `accepted` connections from `accepted_from` with
/// their requests unread and `queued` ones from `queued_from` in its
/// listener's accept queue, then ends as `end` says. `cgroup_procs`: the
/// memory cgroup for `End::Oom`.
fn doomed_server(
    ns: &Netns,
    accepted_from: &'static str,
    accepted: usize,
    queued_from: &'static str,
    queued: usize,
    end: End,
    cgroup_procs: Option<PathBuf>,
) -> Died {
    ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mut clients = vec![];
        let mut conns = vec![];
        for _ in 0..accepted {
            let c = connect_from(accepted_from.parse().unwrap(), server).unwrap();
            let mut c: std::net::TcpStream = c.into();
            std::io::Write::write_all(&mut c, b"GET / unread").unwrap();
            let (conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            assert_eq!(conn.peek(&mut buf).unwrap(), 4, "request in the queue");
            clients.push(c);
            conns.push(conn);
        }
        for _ in 0..queued {
            let c = connect_from(queued_from.parse().unwrap(), server).unwrap();
            clients.push(c.into());
        }
        let (go_r, go_w) = pipe();
        let (ready_r, ready_w) = pipe();
        // SAFETY: the child calls prctl, read, write, mmap and _exit only
        // (async-signal-safe: the test process has other threads).
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: syscalls on valid arguments; the child never returns.
            unsafe { server_child(go_r.as_raw_fd(), ready_w.as_raw_fd()) };
        }
        // Named, and waiting for its word.
        let mut b = 0u8;
        // SAFETY: a valid one-byte buffer.
        assert_eq!(
            unsafe { libc::read(ready_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) },
            1
        );
        // The child holds the listener and the accepted sockets alone.
        drop(listener);
        drop(conns);
        let mut killer = None;
        let mut program = None;
        match end {
            End::KilledByAgent => killer = Some(kill_as_agent(child)),
            End::Exits => poke(&go_w, b'x'),
            End::Oom => {
                let procs = cgroup_procs.expect("a memory cgroup");
                std::fs::write(&procs, child.to_string())
                    .unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
                poke(&go_w, b'm');
            }
            End::BpfProgram => {
                let prog = KillerProgram::attach(child as u32);
                // The child's next system call runs the program.
                poke(&go_w, b'b');
                wait_dead(child, Some(libc::SIGKILL));
                program = Some(prog);
                killer = Some(std::process::id());
            }
        }
        let want = match end {
            End::Exits => None,
            _ => Some(libc::SIGKILL),
        };
        if end != End::BpfProgram {
            wait_dead(child, want);
        }
        for c in clients {
            assert_reset(c);
        }
        Died {
            server: child as u32,
            killer,
            sent: out_rsts_here() - before,
            _program: program,
        }
    })
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: just opened, owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn poke(w: &OwnedFd, what: u8) {
    // SAFETY: a valid one-byte buffer.
    assert_eq!(
        unsafe { libc::write(w.as_raw_fd(), (&what as *const u8).cast(), 1) },
        1
    );
}

/// The server: named orders-api, it waits for a word on `go`: `x` exit,
/// `m` allocate until the OOM killer ends it, anything else wait again.
///
/// # Safety
/// Only in a freshly forked child.
unsafe fn server_child(go: i32, ready: i32) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_NAME, SERVER_COMM.as_ptr());
        // A test that fails before ending it must not leave it behind
        // (holding the harness's output pipe open).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::write(ready, b"r".as_ptr().cast(), 1);
        loop {
            let mut b = 0u8;
            if libc::read(go, (&mut b as *mut u8).cast(), 1) != 1 {
                libc::_exit(2);
            }
            match b {
                b'x' => libc::_exit(0),
                b'm' => {
                    const SIZE: usize = 1 << 30;
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        SIZE,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        libc::_exit(3);
                    }
                    let mut i = 0;
                    while i < SIZE {
                        std::ptr::write_volatile(p.cast::<u8>().add(i), 1);
                        i += 4096;
                    }
                    // Not killed within a gigabyte: the limit did not hold.
                    libc::_exit(4);
                }
                _ => {}
            }
        }
    }
}

/// A child named like CrowdStrike's sensor sends `victim` SIGKILL; returns
/// its pid.
fn kill_as_agent(victim: i32) -> u32 {
    // SAFETY: the child calls prctl, kill and _exit only.
    let k = unsafe { libc::fork() };
    assert!(k >= 0);
    if k == 0 {
        // SAFETY: syscalls on valid arguments.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, KILLER_COMM.as_ptr());
            libc::kill(victim, libc::SIGKILL);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(k, &mut status, 0) }, k);
    k as u32
}

/// Waits for `child`; asserts it died of `signal`, or exited 0.
fn wait_dead(child: i32, signal: Option<i32>) {
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    match signal {
        Some(sig) => assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == sig,
            "server status {status:#x}, not killed by {sig}"
        ),
        None => assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "server status {status:#x}"
        ),
    }
}

/// Asserts the exactly `accepted` abort-on-close and `queued`
/// listener-closed RSTs of the server's death, each with `exit` as given;
/// returns the events.
fn assert_died<'a>(
    out: &'a support::TraceOutput,
    ns: &Netns,
    (accepted_from, accepted): (&str, u64),
    (queued_from, queued): (&str, u64),
    server: u32,
    exit: &Value,
) -> Vec<&'a Value> {
    let mut evs = out.assert_exactly(ns, accepted_from, accepted, "abort-on-close");
    evs.extend(out.assert_exactly(ns, queued_from, queued, "listener-closed"));
    for e in &evs {
        assert_eq!(e["actor"]["pid"], server, "the dying server: {e}");
        assert_eq!(e["actor"]["comm"], "orders-api", "{e}");
        assert_eq!(&e["exit"], exit, "{e}");
    }
    evs
}

/// The motivating case of exits: a security agent SIGKILLs a server that
/// holds requests unread and connections queued. Every RST names the
/// agent as the killer, is labelled, and the diagnosis tells the story.
#[test]
fn server_killed_by_a_security_agent() {
    killed_by_an_agent("exkill", ("127.70.0.1", "127.70.0.2"), &[]);
}

/// The same with the classic builds (signal_generate's record, as 7.0+
/// kernels run it).
#[test]
fn server_killed_by_a_security_agent_classic_tracepoints() {
    killed_by_an_agent(
        "exkillc",
        ("127.75.0.1", "127.75.0.2"),
        &["--debug-no-tp-btf"],
    );
}

fn killed_by_an_agent(
    tag: &str,
    (accepted_from, queued_from): (&'static str, &'static str),
    extra: &[&str],
) {
    let ns = Netns::new(tag);
    let trace = Trace::watch(&ns, extra);
    let netns = format!("/run/netns/{}", ns.name);
    let mut args = vec!["--netns", netns.as_str()];
    args.extend_from_slice(extra);
    let text = Trace::start_text_in(None, &args);
    let died = doomed_server(
        &ns,
        accepted_from,
        3,
        queued_from,
        2,
        End::KilledByAgent,
        None,
    );
    let out = trace.stop();
    let (human, _) = text.stop_raw();
    let human = String::from_utf8(human).unwrap();
    assert_eq!(died.sent, 5, "OutRsts delta in the namespace");
    let killer = died.killer.unwrap();
    let evs = assert_died(
        &out,
        &ns,
        (accepted_from, 3),
        (queued_from, 2),
        died.server,
        &json!({
            "signal": "SIGKILL",
            // The killer has exited by the time the events are read.
            "killed_by": {"pid": killer, "comm": "falcon-sensor", "exe": null,
                          "agent": "CrowdStrike Falcon"},
            "oom": false,
        }),
    );
    for e in evs {
        assert_eq!(e["labels"], json!(["security-agent"]), "{e}");
    }
    let actor = format!(" actor={}/orders-api ", died.server);
    let killed =
        format!(" [security-agent: CrowdStrike Falcon] killed-by={killer}/falcon-sensor(SIGKILL)");
    let lines = human
        .lines()
        .filter(|l| l.contains(&actor) && l.ends_with(&killed))
        .count();
    assert_eq!(lines, 5, "{human}");
    let story = format!(
        "orders-api (pid {}) was killed by falcon-sensor (SIGKILL) [security-agent: \
         CrowdStrike Falcon]",
        died.server
    );
    assert!(
        human.contains(&format!(
            "{accepted_from}: abort-on-close (3 of 3): {story}: 3 connections reset"
        )),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            "{queued_from}: listener-closed (2 of 2): {story}: 2 connections reset"
        )),
        "{human}"
    );
}

/// A server that exits by itself: exit is there, with no signal and no
/// killer.
#[test]
fn server_that_exits_by_itself() {
    let ns = Netns::new("exself");
    let trace = Trace::watch(&ns, &[]);
    let died = doomed_server(&ns, "127.71.0.1", 2, "127.71.0.2", 1, End::Exits, None);
    let out = trace.stop();
    assert_eq!(died.sent, 3, "OutRsts delta in the namespace");
    for e in assert_died(
        &out,
        &ns,
        ("127.71.0.1", 2),
        ("127.71.0.2", 1),
        died.server,
        &json!({"signal": null, "killed_by": null, "oom": false}),
    ) {
        assert_eq!(e["labels"], json!([]), "{e}");
    }
}

/// The RSTs of a close outside any exit carry no `exit`.
#[test]
fn a_living_server_has_no_exit() {
    let ns = Netns::new("exlive");
    let trace = Trace::watch(&ns, &[]);
    let sent = support::scenario::abort_on_close(&ns, "127.72.0.1", 2);
    let out = trace.stop();
    assert_eq!(sent, 2);
    for e in out.assert_exactly(&ns, "127.72.0.1", 2, "abort-on-close") {
        assert!(e.get("exit").is_none(), "{e}");
    }
}

/// A memory cgroup of 64 MiB for the OOM test, removed on drop: the v1
/// memory hierarchy where one is mounted (hybrid hosts, as the one these
/// tests were written on), else a cgroup2 mount with the memory controller
/// (mounted here when the system has none, as in the test VMs). Panics
/// with why when neither can be had: the test must not pass without it.
struct MemCgroup {
    dir: PathBuf,
    mounted: Option<PathBuf>,
}

impl MemCgroup {
    const LIMIT: &str = "67108864";

    fn new(tag: &str) -> Self {
        let name = format!("rsttrace-t-{tag}-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("memory.limit_in_bytes"), Self::LIMIT).unwrap();
            // With swap, a limit alone would page out instead of killing.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                std::fs::write(memsw, Self::LIMIT).unwrap();
            }
            return Self { dir, mounted: None };
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let v2 = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        });
        let (root, mounted) = match v2 {
            Some(root) => (root, None),
            None => {
                let root = std::env::temp_dir().join(format!("{name}-mnt"));
                std::fs::create_dir_all(&root).unwrap();
                let status = std::process::Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&root)
                    .status()
                    .expect("running mount");
                assert!(status.success(), "mounting cgroup2 at {}", root.display());
                (root.clone(), Some(root))
            }
        };
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
        assert!(
            controllers.split_whitespace().any(|c| c == "memory"),
            "no memory controller in {} ({controllers:?}) and no v1 memory hierarchy: \
             an OOM kill can't be made here",
            root.display()
        );
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), Self::LIMIT).unwrap();
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Self { dir, mounted }
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(m) = &self.mounted {
            let _ = std::process::Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

/// The OOM killer ends a server in a small memory cgroup: exit says so,
/// with no killer (whichever task's allocation ran the OOM killer).
#[test]
fn server_killed_by_the_oom_killer() {
    let ns = Netns::new("exoom");
    let cg = MemCgroup::new("oom");
    let trace = Trace::watch(&ns, &[]);
    let died = doomed_server(
        &ns,
        "127.73.0.1",
        2,
        "127.73.0.2",
        1,
        End::Oom,
        Some(cg.procs()),
    );
    let out = trace.stop();
    drop(cg);
    assert_eq!(died.sent, 3, "OutRsts delta in the namespace");
    assert_died(
        &out,
        &ns,
        ("127.73.0.1", 2),
        ("127.73.0.2", 1),
        died.server,
        &json!({"signal": "SIGKILL", "killed_by": null, "oom": true}),
    );
}

/// A BPF program sends the SIGKILL, as Tetragon's Sigkill action does:
/// the kernel shows the victim as the sender; rsttrace names the program
/// from the sender's stack and the process holding it (this test).
#[test]
fn server_killed_by_a_bpf_program() {
    let ns = Netns::new("exbpf");
    let trace = Trace::watch(&ns, &[]);
    let died = doomed_server(&ns, "127.74.0.1", 2, "127.74.0.2", 1, End::BpfProgram, None);
    let out = trace.stop();
    drop(died._program);
    assert_eq!(died.sent, 3, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.74.0.1", 2, "abort-on-close");
    for e in evs {
        let exit = &e["exit"];
        assert_eq!(exit["signal"], "SIGKILL", "{e}");
        assert_eq!(exit["oom"], false, "{e}");
        assert_eq!(exit["bpf_program"]["name"], "rst_killer", "{e}");
        assert!(exit["bpf_program"]["id"].is_u64(), "{e}");
        assert_eq!(
            exit["killed_by"]["pid"],
            died.killer.unwrap(),
            "holder: {e}"
        );
    }
    out.assert_exactly(&ns, "127.74.0.2", 1, "listener-closed");
}

/// A raw tracepoint program on `sys_enter` that sends SIGKILL to one
/// process (`bpf_send_signal`), detached on drop. Hand-assembled: the
/// tests build no eBPF of their own.
struct KillerProgram {
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl KillerProgram {
    fn attach(victim: u32) -> Self {
        // (code, regs, off, imm) as the kernel's struct bpf_insn.
        let insns: [(u8, u8, i16, i32); 7] = [
            (0x85, 0, 0, 14),            // call bpf_get_current_pid_tgid
            (0x77, 0, 0, 32),            // r0 >>= 32 (tgid)
            (0x55, 0, 2, victim as i32), // if r0 != victim goto +2
            (0xb7, 1, 0, libc::SIGKILL), // r1 = SIGKILL
            (0x85, 0, 0, 109),           // call bpf_send_signal
            (0xb7, 0, 0, 0),             // r0 = 0
            (0x95, 0, 0, 0),             // exit
        ];
        let code: Vec<u64> = insns
            .iter()
            .map(|&(op, regs, off, imm)| {
                u64::from(op)
                    | u64::from(regs) << 8
                    | u64::from(off as u16) << 16
                    | u64::from(imm as u32) << 32
            })
            .collect();
        let license = b"GPL\0";
        // bpf_attr for BPF_PROG_LOAD, up to prog_name.
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
        }
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"rst_killer");
        let attr = ProgLoad {
            prog_type: 17, // BPF_PROG_TYPE_RAW_TRACEPOINT
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
        };
        // Before 5.11 a program's memory counts against RLIMIT_MEMLOCK
        // (EPERM past it: 64 KiB by default).
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // Best effort: where the hard limit can't be raised (this host's
        // sandbox), the kernel is new enough not to need it, and a refusal
        // below says why all the same.
        // SAFETY: a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
        let prog = bpf(5, &attr); // BPF_PROG_LOAD
        #[repr(C)]
        struct RawTpOpen {
            name: u64,
            prog_fd: u32,
            _pad: u32,
        }
        let tp = b"sys_enter\0";
        let link = bpf(
            17, // BPF_RAW_TRACEPOINT_OPEN
            &RawTpOpen {
                name: tp.as_ptr() as u64,
                prog_fd: prog.as_raw_fd() as u32,
                _pad: 0,
            },
        );
        Self {
            _prog: prog,
            _link: link,
        }
    }
}

/// The bpf(2) call `cmd` with `attr`; the fd it returns.
fn bpf<T>(cmd: i64, attr: &T) -> OwnedFd {
    // SAFETY: attr is a bpf_attr prefix that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    // SAFETY: a new fd, owned here.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}
