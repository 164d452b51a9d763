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

struct Run {
    exe: String,
    pid: u32,
    port: u16,
    events: Vec<Value>,
    text: String,
}

/// Runs stand-in `name` (built with `flags`) in its own namespace under
/// `rsttrace --user-stacks` (JSON and text), with N connections from
/// `client`, each aborted after its request.
fn run(name: &str, flags: &[&str], netns: &str, client: &str, extra: &[&str]) -> Run {
    let server = support::standin("abort_server.c", name, flags);
    let ns = Netns::new(netns);
    let mut args = vec!["--user-stacks"];
    args.extend_from_slice(extra);
    let trace = Trace::watch(&ns, &args);
    let path = format!("/run/netns/{}", ns.name);
    let text = Trace::start_text_in(None, &["--netns", &path, "--user-stacks"]);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&server.path)
        .arg(N.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let port: u16 = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("standin-port ").map(|p| p.parse().unwrap()))
        .expect("the server's port");
    let client_ip = client.parse().unwrap();
    let sent = ns.run(move || {
        let before = out_rsts_here();
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for i in 0..N {
            let mut c: std::net::TcpStream = connect_from(client_ip, to).unwrap().into();
            write!(c, "GET /{i} HTTP/1.1\r\nHost: shop\r\n\r\n").unwrap();
            assert_reset(c);
        }
        out_rsts_here() - before
    });
    let (raw, _) = text.stop_raw();
    let out = trace.stop();
    // Stopped only now: the stacks were symbolized from its mappings.
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "the server: {status}");
    assert_eq!(sent, N as u64, "OutRsts delta in the namespace");
    let events = out
        .assert_exactly(&ns, client, sent, "linger-abort")
        .into_iter()
        .cloned()
        .collect();
    Run {
        exe: server.path.to_str().unwrap().to_string(),
        pid,
        port,
        events,
        text: String::from_utf8_lossy(&raw).into_owned(),
    }
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
/// order, in its executable, and the stack is complete.
#[test]
fn user_stacks_name_the_functions_behind_the_abort() {
    frame_pointer_stacks("ustack-fp", "127.93.0.1", &[]);
}

/// The same from the classic tracepoint build (kernels without BTF
/// tracepoints).
#[test]
fn user_stacks_from_the_classic_build() {
    frame_pointer_stacks("ustack-fp-tp", "127.93.0.3", &["--debug-no-tp-btf"]);
}

fn frame_pointer_stacks(netns: &str, client: &str, extra: &[&str]) {
    let r = run(
        "abort-server-fp",
        &["-O1", "-fno-omit-frame-pointer"],
        netns,
        client,
        extra,
    );
    for e in &r.events {
        assert_eq!(e["local_port"], r.port, "{e}");
        let a = &e["actor"];
        assert_eq!(a["pid"], r.pid, "{e}");
        let stack = &a["stack"];
        let names = functions(stack);
        assert_eq!(names[..4], SERVER_FRAMES, "{e}");
        for f in &stack["frames"].as_array().unwrap()[..4] {
            assert_eq!(f["file"], r.exe.as_str(), "{e}");
            assert!(f["addr"].as_str().unwrap().starts_with("0x"), "{e}");
        }
        // The walk reached main: libc's start-up below it is not shown.
        assert_eq!(names.len(), SERVER_FRAMES.len(), "{e}");
        assert_eq!(stack["complete"], true, "{e}");
    }
    let lines: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.contains(&format!(" linger-abort      to {client}:")))
        .collect();
    assert_eq!(lines.len(), N, "{}", r.text);
    for l in lines {
        let stack = l.split(" user-stack=").nth(1).expect(l);
        let names: Vec<&str> = stack
            .split("<-")
            .map(|f| f.split('+').next().unwrap())
            .collect();
        assert_eq!(names[..4], SERVER_FRAMES, "{l}");
        assert!(!l.contains("not unwound"), "{l}");
    }
}

/// Built without frame pointers: the innermost frame (the instruction
/// itself) is still right, but the kernel cannot walk to the callers, and
/// the stack says it is incomplete, in JSON and in the text line.
#[test]
fn a_stack_without_frame_pointers_says_it_stops_short() {
    let r = run(
        "abort-server-nofp",
        &["-O2", "-fomit-frame-pointer"],
        "ustack-nofp",
        "127.93.0.2",
        &[],
    );
    for e in &r.events {
        let stack = &e["actor"]["stack"];
        assert_eq!(functions(stack)[0], "abort_connection", "{e}");
        assert_eq!(stack["complete"], false, "{e}");
    }
    let lines: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.contains(" linger-abort      to 127.93.0.2:"))
        .collect();
    assert_eq!(lines.len(), N, "{}", r.text);
    for l in lines {
        assert!(l.contains(" user-stack=abort_connection+0x"), "{l}");
        assert!(l.contains("<-?(not unwound: no frame pointer)"), "{l}");
    }
}
