//! `--user-stacks`: the actor's user-space stack at the RST, symbolized.
//! A stand-in server (tests/standin/abort_server.c) aborts connections from
//! known functions, `main -> serve -> handle_request -> abort_connection`:
//! built with frame pointers the stack is exactly those, down to `main`; built without them, the kernel's walk stops short, and
//! rsttrace must say so rather than guess.

mod support;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use serde_json::Value;
use support::{Netns, Trace, connect_from, out_rsts_here, scenario::assert_reset};

const N: usize = 3;

/// The functions of the server's path to the abort, innermost first.
const SERVER_FRAMES: [&str; 4] = ["abort_connection", "handle_request", "serve", "main"];

/// A stand-in server: its file name, compiler flags and client address.
struct Server {
    name: &'static str,
    flags: &'static [&'static str],
    client: &'static str,
}

const WITH_FRAME_POINTERS: Server = Server {
    name: "abort-server-fp",
    flags: &["-O1", "-fno-omit-frame-pointer"],
    client: "127.93.0.1",
};

const WITHOUT_FRAME_POINTERS: Server = Server {
    name: "abort-server-nofp",
    flags: &["-O2", "-fomit-frame-pointer"],
    client: "127.93.0.2",
};

/// What one server's aborts gave.
struct Run {
    exe: String,
    pid: u32,
    port: u16,
    events: Vec<Value>,
    /// Its text lines.
    lines: Vec<String>,
}

/// Runs the stand-in `servers` in one namespace under `rsttrace
/// --user-stacks` (JSON and text, both with `extra`), each server aborting
/// N connections from its client after their requests.
fn run(netns: &str, servers: &[Server], extra: &[&str]) -> Vec<Run> {
    let ns = Netns::new(netns);
    let mut args = vec!["--user-stacks"];
    args.extend_from_slice(extra);
    let trace = Trace::watch(&ns, &args);
    let path = format!("/run/netns/{}", ns.name);
    args.extend_from_slice(&["--netns", &path]);
    let text = Trace::start_text_in(None, &args);
    let mut started = Vec::new();
    for s in servers {
        let built = support::standin("abort_server.c", s.name, s.flags);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&built.path)
            .arg(N.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let port: u16 = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("standin-port ").map(|p| p.parse().unwrap()))
            .expect("the server's port");
        let client: std::net::IpAddr = s.client.parse().unwrap();
        let sent = ns.run(move || {
            let before = out_rsts_here();
            let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            for i in 0..N {
                let mut c: std::net::TcpStream = connect_from(client, to).unwrap().into();
                write!(c, "GET /{i} HTTP/1.1\r\nHost: shop\r\n\r\n").unwrap();
                assert_reset(c);
            }
            out_rsts_here() - before
        });
        assert_eq!(sent, N as u64, "OutRsts delta in the namespace");
        started.push((built, child, port));
    }
    let (raw, _) = text.stop_raw();
    let out = trace.stop();
    let text = String::from_utf8_lossy(&raw);
    started
        .into_iter()
        .zip(servers)
        .map(|((built, mut child, port), s)| {
            // Stopped only now: the stacks were symbolized from its mappings.
            drop(child.stdin.take());
            let status = child.wait().unwrap();
            assert!(status.success(), "the server {}: {status}", s.name);
            let events = out
                .assert_exactly(&ns, s.client, N as u64, "linger-abort")
                .into_iter()
                .cloned()
                .collect();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains(&format!(" linger-abort      to {}:", s.client)))
                .map(str::to_string)
                .collect();
            assert_eq!(lines.len(), N, "{text}");
            Run {
                exe: built.path.to_str().unwrap().to_string(),
                pid: child.id(),
                port,
                events,
                lines,
            }
        })
        .collect()
}

fn functions(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect()
}

/// Built with frame pointers: exactly the four functions of the server in
/// order, in its executable, and the stack is complete. Built without
/// them: the innermost frame (the instruction itself) is still right, but
/// the kernel cannot walk to the callers, and the stack says it is
/// incomplete, in JSON and in the text line.
#[test]
fn user_stacks_name_the_functions_behind_the_abort() {
    let runs = run(
        "ustack",
        &[WITH_FRAME_POINTERS, WITHOUT_FRAME_POINTERS],
        &[],
    );
    assert_complete(&runs[0]);
    let r = &runs[1];
    for e in &r.events {
        assert_eq!(e["actor"]["pid"], r.pid, "{e}");
        let stack = &e["actor"]["stack"];
        assert_eq!(functions(stack)[0], "abort_connection", "{e}");
        assert_eq!(stack["frames"][0]["file"], r.exe.as_str(), "{e}");
        assert_eq!(stack["complete"], false, "{e}");
    }
    for l in &r.lines {
        assert!(l.contains(" user-stack=abort_connection+0x"), "{l}");
        assert!(l.contains("<-?(not unwound: no frame pointer)"), "{l}");
    }
}

/// The same from the classic tracepoint build (kernels without BTF
/// tracepoints).
#[test]
fn user_stacks_from_the_classic_build() {
    let runs = run(
        "ustack-tp",
        &[WITH_FRAME_POINTERS_TP],
        &["--debug-no-tp-btf"],
    );
    assert_complete(&runs[0]);
}

const WITH_FRAME_POINTERS_TP: Server = Server {
    client: "127.93.0.3",
    ..WITH_FRAME_POINTERS
};

fn assert_complete(r: &Run) {
    for e in &r.events {
        assert_eq!(e["local_port"], r.port, "{e}");
        let a = &e["actor"];
        assert_eq!(a["pid"], r.pid, "{e}");
        let stack = &a["stack"];
        assert_eq!(functions(stack), SERVER_FRAMES, "{e}");
        for f in stack["frames"].as_array().unwrap() {
            assert_eq!(f["file"], r.exe.as_str(), "{e}");
            assert!(f["addr"].as_str().unwrap().starts_with("0x"), "{e}");
        }
        // The walk reached main: libc's start-up below it is not shown.
        assert_eq!(stack["complete"], true, "{e}");
    }
    for l in &r.lines {
        let stack = l.split(" user-stack=").nth(1).expect(l);
        let names: Vec<&str> = stack
            .split("<-")
            .map(|f| f.split('+').next().unwrap())
            .collect();
        assert_eq!(names[..4], SERVER_FRAMES, "{l}");
        assert!(!l.contains("not unwound"), "{l}");
    }
}
