//! Security modules inside the server process: a server that has a
//! stand-in ModSecurity library loaded (a real shared object named
//! `libmodsecurity.so.3`, built from tests/standin/modsecurity.c) aborts
//! blocked requests through it, and rsttrace names the module as the
//! agent behind the RSTs, read from the server's memory maps.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::fd::IntoRawFd as _,
    process::{Command, Stdio},
};

use support::{Netns, Trace, connect_from, out_rsts_here, scenario::assert_reset};

/// Set for the server process: the library it loads.
const SERVER_ENV: &str = "RSTTRACE_STANDIN_LIBRARY";
const CLIENT: &str = "127.64.0.1";
const N: usize = 5;

/// The server, run as its own process (so that no other test's process
/// has the library mapped) by `modsecurity_loaded_in_the_server_is_named`:
/// named httpd, it loads the library, prints its port, and for each of N
/// connections reads the request, then has the library abort it; it exits
/// when its standard input closes.
#[test]
#[ignore = "the stand-in server process of modsecurity_loaded_in_the_server_is_named"]
fn standin_server() {
    let Some(library) = std::env::var_os(SERVER_ENV) else {
        return;
    };
    let mut name = [0u8; 16];
    name[..5].copy_from_slice(b"httpd");
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of 16 bytes.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(library.as_os_str()))
        .unwrap();
    // SAFETY: a NUL-terminated path; the handle stays open until exit.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null(), "dlopen {library:?} failed");
    // SAFETY: a valid handle and a NUL-terminated name.
    let sym = unsafe { libc::dlsym(handle, c"msc_standin_abort".as_ptr()) };
    assert!(!sym.is_null(), "no msc_standin_abort in {library:?}");
    // SAFETY: the C function's type, as tests/standin/modsecurity.c defines it.
    let abort: extern "C" fn(libc::c_int) -> libc::c_int = unsafe { std::mem::transmute(sym) };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("standin-port {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    for _ in 0..N {
        let (mut s, _) = listener.accept().unwrap();
        // The whole request, so the abort finds nothing unread.
        let mut req = Vec::new();
        let mut buf = [0u8; 256];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the client closed early");
            req.extend_from_slice(&buf[..n]);
        }
        assert_eq!(abort(s.into_raw_fd()), 0, "msc_standin_abort");
    }
    // Alive, as a server is, until the test has read the trace: rsttrace
    // reads an actor's /proc when its event arrives.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A server with ModSecurity loaded aborts blocked requests (SO_LINGER 0
/// after reading them): `linger-abort`, the actor's agent ModSecurity seen
/// by the library's path, labelled security-agent, and said so in the text
/// line and the diagnosis.
#[test]
fn modsecurity_loaded_in_the_server_is_named() {
    let standin = support::standin(
        "modsecurity.c",
        "libmodsecurity.so.3",
        &["-shared", "-fPIC", "-O2"],
    );
    let library = &standin.path;
    let ns = Netns::new("modsec");
    let trace = Trace::watch(&ns, &[]);
    let path = format!("/run/netns/{}", ns.name);
    let text = Trace::start_text_in(None, &["--netns", &path]);
    let exe = std::env::current_exe().unwrap();
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args(["standin_server", "--exact", "--ignored", "--nocapture"])
        .env(SERVER_ENV, library)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = server.id();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("standin-port ").map(|p| p.parse().unwrap()))
        .expect("the server's port");
    let sent = ns.run(move || {
        let before = out_rsts_here();
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for i in 0..N {
            let mut c: std::net::TcpStream =
                connect_from(CLIENT.parse().unwrap(), to).unwrap().into();
            write!(c, "GET /?q=%3Cscript%3E{i} HTTP/1.1\r\nHost: shop\r\n\r\n").unwrap();
            assert_reset(c);
        }
        out_rsts_here() - before
    });
    let (raw, _) = text.stop_raw();
    let out = trace.stop();
    drop(server.stdin.take());
    let status = server.wait().unwrap();
    assert!(status.success(), "the server: {status}");
    assert_eq!(sent, N as u64, "OutRsts delta in the namespace");
    let via = library.to_str().unwrap();
    for e in out.assert_exactly(&ns, CLIENT, sent, "linger-abort") {
        assert_eq!(e["local_port"], port, "{e}");
        let a = &e["actor"];
        assert_eq!(a["pid"], pid, "{e}");
        assert_eq!(a["comm"], "httpd", "{e}");
        assert_eq!(a["agent"], "ModSecurity", "{e}");
        assert_eq!(a["agent_via"], via, "{e}");
        assert_eq!(e["labels"], serde_json::json!(["security-agent"]), "{e}");
    }
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!(" linger-abort      to {CLIENT}:")))
        .collect();
    assert_eq!(lines.len(), N, "{text}");
    for l in &lines {
        assert!(
            l.contains(&format!("actor={pid}/httpd"))
                && l.contains(&format!("[security-agent: ModSecurity] agent-via={via}")),
            "{l}"
        );
    }
    let diagnosis = format!(
        "linger-abort ({N} of {N}): httpd (ModSecurity loaded) aborted {N} connections with \
         SO_LINGER 0 after reading their requests"
    );
    assert!(text.contains(&diagnosis), "{diagnosis:?} in:\n{text}");
}
