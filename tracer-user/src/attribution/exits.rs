//! Who ended a process whose exit reset its connections: the exit code
//! the kernel marked its RSTs with (the killing signal, or none), and the
//! last fatal signal generated for it (`KILLS`, filled by
//! `tracer-ebpf/src/exits.rs`): the sender, or the OOM killer, or the BPF
//! program that sent it with `bpf_send_signal`.

use std::time::Duration;

use serde::Serialize;
use tracer_common::{EXITING, KillRecord, RstEvent};

use crate::{attribution::actor::ActorResolver, kernel::ksyms::Kallsyms, untrusted::Untrusted};

/// The `exit` object of a RST sent while its actor exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The signal that ended the process (`exit_code & 0x7f`); `None`
    /// when it exited by itself (exit(2), the end of main).
    pub signal: Option<u32>,
    pub killed_by: Option<Killer>,
    pub oom: bool,
    /// A BPF program that sent the signal (`bpf_send_signal`, as
    /// Tetragon's Sigkill action does): the kernel shows the victim as its
    /// sender.
    pub bpf_program: Option<KillProgram>,
}

/// The process that sent the fatal signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Killer {
    pub pid: u32,
    pub comm: Untrusted,
    pub exe: Option<Untrusted>,
    /// The security agent this process is, if it is one.
    pub agent: Option<Untrusted>,
}

/// A BPF program that sent a fatal signal, as its kernel symbol names it
/// (`bpf_prog_<tag>_<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KillProgram {
    pub name: Untrusted,
    pub tag: Untrusted,
    /// The program's id, where a process holding it was found.
    pub id: Option<u32>,
}

/// A kill record older than this before the RST is another process's
/// (pids are reused): killed processes exit within milliseconds.
const KILL_MAX_AGE: Duration = Duration::from_secs(60);

/// `SIG*` name of signal `n` (x86-64 numbering, as Linux's generic ABI).
pub fn signal_name(n: u32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(n as usize) {
        Some(name) if !name.is_empty() => (*name).to_string(),
        _ => format!("SIG{n}"),
    }
}

/// The `exit` of `ev`, when its actor was exiting. `kill` looks a
/// process's kill record up (by tgid, then by the thread's own pid: the
/// classic signal_generate and mark_victim key by the target thread),
/// `stack` a stack id.
pub fn exit_of(
    ev: &RstEvent,
    kill: impl Fn(u32) -> Option<KillRecord>,
    stack: impl Fn(i32) -> Option<Vec<u64>>,
    ksyms: Option<&Kallsyms>,
    actors: &ActorResolver,
) -> Option<Exit> {
    if ev.exit & EXITING == 0 {
        return None;
    }
    let sig = ev.exit & 0x7f;
    let mut exit = Exit {
        signal: (sig != 0).then_some(sig),
        killed_by: None,
        oom: false,
        bpf_program: None,
    };
    if sig == 0 {
        return Some(exit);
    }
    let (tgid, tid) = ((ev.pid_tgid >> 32) as u32, ev.pid_tgid as u32);
    let fresh = |k: &KillRecord| {
        k.sig == sig && k.ts_ns <= ev.ts_ns && ev.ts_ns - k.ts_ns <= KILL_MAX_AGE.as_nanos() as u64
    };
    let Some(k) = kill(tgid).filter(fresh).or_else(|| kill(tid).filter(fresh)) else {
        return Some(exit);
    };
    exit.oom = k.oom != 0;
    if exit.oom {
        // The OOM killer, whichever task's allocation ran it.
        return Some(exit);
    }
    let sender = (k.sender_pid_tgid >> 32) as u32;
    let frames = (k.stack_id >= 0)
        .then(|| stack(k.stack_id))
        .flatten()
        .unwrap_or_default();
    if let Some(program) = sending_program(&frames, ksyms) {
        exit.killed_by = program.1.map(|pid| killer(pid, None, actors));
        exit.bpf_program = Some(program.0);
    } else if sender != tgid {
        // A process's own signals (a fault, abort()) have no killer.
        exit.killed_by = Some(killer(sender, Some(Untrusted::from_c(&k.comm)), actors));
    }
    Some(exit)
}

/// The sender as a `Killer`: its name from the kill record (the name it
/// had when it sent), else from /proc.
fn killer(pid: u32, comm: Option<Untrusted>, actors: &ActorResolver) -> Killer {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| Untrusted::from(p.as_path()));
    let comm = comm.unwrap_or_else(|| {
        std::fs::read(format!("/proc/{pid}/comm"))
            .map(|b| Untrusted::from_bytes(b.strip_suffix(b"\n").unwrap_or(&b)))
            .unwrap_or_else(|_| Untrusted::from("?"))
    });
    let agent = actors.agent_of(&comm, exe.as_ref());
    Killer {
        pid,
        comm,
        exe,
        agent,
    }
}

/// The BPF program that sent the signal, when the sender's stack goes
/// through `bpf_send_signal` (or `_thread`): the first frame past it that
/// is a BPF program, and a process holding that program, if found.
fn sending_program(frames: &[u64], ksyms: Option<&Kallsyms>) -> Option<(KillProgram, Option<u32>)> {
    let ksyms = ksyms?;
    let helper = frames.iter().position(|ip| {
        ksyms
            .symbolize(*ip)
            .is_some_and(|(s, _)| s.module.is_none() && s.name.starts_with("bpf_send_signal"))
    })?;
    // BPF programs come and go: their symbols are read now, not at start.
    let progs = bpf_symbols();
    let (tag, name) = frames[helper + 1..]
        .iter()
        .find_map(|ip| bpf_program_at(&progs, *ip))?;
    let holder = holder_of(&tag);
    Some((
        KillProgram {
            name: Untrusted::from(name.as_str()),
            tag: Untrusted::from(tag.as_str()),
            id: holder.map(|h| h.1),
        },
        holder.map(|h| h.0),
    ))
}

/// (tag, name) of the first BPF program among a kernel stack's `frames`
/// (innermost first): a program that sent a RST from inside itself
/// (`bpf_clone_redirect`). Programs come and go, so their symbols are read
/// from /proc/kallsyms, not the start's copy: at most once a second.
pub fn bpf_program_in(frames: &[u64]) -> Option<(String, String)> {
    use std::time::Instant;
    /// When read, and what `bpf_symbols` read.
    type Read = (Instant, std::rc::Rc<Vec<(u64, Option<String>)>>);
    thread_local! {
        static PROGS: std::cell::RefCell<Option<Read>> = const { std::cell::RefCell::new(None) };
    }
    let progs = PROGS.with_borrow_mut(|cached| {
        let stale = cached
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(1));
        if stale {
            *cached = Some((Instant::now(), std::rc::Rc::new(bpf_symbols())));
        }
        cached.as_ref().map(|(_, p)| p.clone()).unwrap_or_default()
    });
    frames.iter().find_map(|ip| bpf_program_at(&progs, *ip))
}

/// Every function in /proc/kallsyms by address, sorted, with its name
/// where it is a BPF program: a program's code ends where the next
/// symbol starts, which may be a module's.
fn bpf_symbols() -> Vec<(u64, Option<String>)> {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut out: Vec<(u64, Option<String>)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            if !matches!(kind, "t" | "T" | "w" | "W") {
                return None;
            }
            let name = f.next()?;
            let bpf = f.next() == Some("[bpf]") && name.starts_with("bpf_prog_");
            Some((addr, bpf.then(|| name.to_string())))
        })
        .collect();
    out.sort_unstable();
    out
}

/// (tag, name) of the BPF program whose code holds `ip`: the function
/// starting last at or before it is one.
fn bpf_program_at(syms: &[(u64, Option<String>)], ip: u64) -> Option<(String, String)> {
    let i = syms.partition_point(|(a, _)| *a <= ip);
    let (_, sym) = syms.get(i.checked_sub(1)?)?;
    parse_prog_symbol(sym.as_deref()?)
}

/// `bpf_prog_<16 hex tag>_<name>` (the name may be empty) -> (tag, name).
pub fn parse_prog_symbol(sym: &str) -> Option<(String, String)> {
    let rest = sym.strip_prefix("bpf_prog_")?;
    let tag = rest.get(..16)?;
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name = rest.get(16..)?.strip_prefix('_').unwrap_or("");
    Some((tag.to_string(), name.to_string()))
}

/// A process holding a BPF program (or a link to it) with `tag`, and the
/// program's id: from the fdinfo of every process's descriptors.
fn holder_of(tag: &str) -> Option<(u32, u32)> {
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if let Some(id) = prog_id_with_tag(&info, tag) {
                return Some((pid, id));
            }
        }
    }
    None
}

/// The `prog_id` of a BPF program or link fdinfo whose `prog_tag` is `tag`.
fn prog_id_with_tag(fdinfo: &str, tag: &str) -> Option<u32> {
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    (field("prog_tag")? == tag).then(|| field("prog_id")?.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(0), "SIG0");
        assert_eq!(signal_name(40), "SIG40");
    }

    #[test]
    fn bpf_program_symbols_and_fdinfo() {
        assert_eq!(
            parse_prog_symbol("bpf_prog_6deef7357e7b4530_kill_it"),
            Some(("6deef7357e7b4530".into(), "kill_it".into()))
        );
        assert_eq!(
            parse_prog_symbol("bpf_prog_6deef7357e7b4530"),
            Some(("6deef7357e7b4530".into(), String::new()))
        );
        assert_eq!(parse_prog_symbol("bpf_prog_short"), None);
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t2\nprog_jited:\t1\n\
                    prog_tag:\t6deef7357e7b4530\nmemlock:\t4096\nprog_id:\t42\n";
        assert_eq!(prog_id_with_tag(info, "6deef7357e7b4530"), Some(42));
        assert_eq!(prog_id_with_tag(info, "0000000000000000"), None);
    }

    fn event(exit: u32, pid: u32) -> RstEvent {
        // SAFETY: plain data; all-zero is valid.
        let mut ev: RstEvent = unsafe { std::mem::zeroed() };
        ev.exit = exit;
        ev.pid_tgid = (u64::from(pid) << 32) | u64::from(pid);
        ev.ts_ns = 100_000_000_000;
        ev
    }

    fn record(sig: u32, sender: u32, comm: &str, oom: u32) -> KillRecord {
        let mut k = KillRecord {
            ts_ns: 99_000_000_000,
            sender_pid_tgid: u64::from(sender) << 32,
            sig,
            stack_id: -1,
            oom,
            ..KillRecord::default()
        };
        k.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        k
    }

    #[test]
    fn exit_codes_and_kill_records_decide_the_exit() {
        let actors = ActorResolver::new(crate::attribution::agents::Agents::default());
        let none = |_| None;
        let of = |ev: &RstEvent, k: Option<KillRecord>| exit_of(ev, |_| k, none, None, &actors);
        // Not exiting: no exit at all.
        assert_eq!(of(&event(0, 5), None), None);
        // exit(3): status in the high byte, no signal, no killer.
        let e = of(&event(EXITING | 3 << 8, 5), Some(record(9, 7, "x", 0))).unwrap();
        assert_eq!((e.signal, e.killed_by, e.oom), (None, None, false));
        // SIGKILL from falcon-sensor (pid 1 << 30 exists nowhere: no exe).
        let e = of(
            &event(EXITING | 9, 5),
            Some(record(9, 1 << 30, "falcon-sensor", 0)),
        )
        .unwrap();
        assert_eq!(e.signal, Some(9));
        let k = e.killed_by.unwrap();
        assert_eq!(
            (k.pid, k.comm.to_string()),
            (1 << 30, "falcon-sensor".into())
        );
        assert_eq!(k.agent, Some("CrowdStrike Falcon".into()));
        // A record of another signal, or too old, is not this death's.
        let e = of(&event(EXITING | 9, 5), Some(record(15, 7, "x", 0))).unwrap();
        assert_eq!(e.killed_by, None);
        let mut old = record(9, 7, "x", 0);
        old.ts_ns = 1;
        assert_eq!(
            of(&event(EXITING | 9, 5), Some(old)).unwrap().killed_by,
            None
        );
        // The OOM killer; and a process's own fatal signal (SIGSEGV).
        let e = of(&event(EXITING | 9, 5), Some(record(9, 5, "x", 1))).unwrap();
        assert_eq!((e.oom, e.killed_by), (true, None));
        let e = of(&event(EXITING | 11 | 0x80, 5), Some(record(11, 5, "x", 0))).unwrap();
        assert_eq!((e.signal, e.killed_by), (Some(11), None));
    }
}
