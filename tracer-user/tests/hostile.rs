//! Names chosen by whoever triggers a RST reach the root operator's
//! terminal, pcap tools and metrics scrapers: a process name set with
//! prctl(PR_SET_NAME), an executable path with a newline, nftables table
//! and chain names with control bytes (the nft CLI refuses them, the
//! kernel does not), the path of a library the server has loaded. rsttrace
//! must show them escaped and nothing raw.

mod support;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::PathBuf,
    time::Duration,
};

use support::{Netns, Trace, connect_from};

/// Clears the screen, retitles the terminal to "pwn", rings the bell; the
/// last byte is not UTF-8. 14 bytes: a whole thread name.
const COMM: &[u8] = b"\x1b[2J\x1b]0;pwn\x07X\xff";
const COMM_TEXT: &str = r"\x1b[2J\x1b]0;pwn\x07X\xff";
/// The killer's file name, hence its process name.
const KILLER: &[u8] = b"ss\x1b[1m";
const KILLER_TEXT: &str = r"ss\x1b[1m";
const TABLE: &[u8] = b"t\x1b]0;nft\x07";
const TABLE_TEXT: &str = r"t\x1b]0;nft\x07";
const CHAIN: &[u8] = b"c\x1b[2J\n";
const CHAIN_TEXT: &str = r"c\x1b[2J\x0a";
/// The directory of a library loaded in the aborting server under
/// ModSecurity's file name: its path is shown as `agent-via`.
const WAF_DIR: &[u8] = b"w\x1b]0;waf\x07";
const WAF_DIR_TEXT: &str = r"w\x1b]0;waf\x07";

const ABORTED: &str = "127.77.0.1";
const KILLED: &str = "127.77.0.2";
const REJECTED: &str = "127.77.0.3";

/// Names the calling thread, as the kernel then reports it as `comm`.
fn set_thread_name(name: &[u8]) {
    let mut buf = [0u8; 16];
    buf[..name.len()].copy_from_slice(name);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
    assert_eq!(rc, 0, "prctl: {}", std::io::Error::last_os_error());
}

fn assert_reset(mut c: TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let err = c.read(&mut [0u8; 1]).expect_err("reset expected");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

/// Loads the stand-in ModSecurity library (tests/standin/modsecurity.c)
/// from `dir`/`WAF_DIR` into this process: rsttrace names the module by
/// that path.
fn load_waf_library(dir: &std::path::Path) {
    let standin = support::standin(
        "modsecurity.c",
        "libmodsecurity.so.3",
        &["-shared", "-fPIC", "-O2"],
    );
    let waf = dir.join(std::ffi::OsStr::from_bytes(WAF_DIR));
    std::fs::create_dir_all(&waf).unwrap();
    let lib = waf.join("libmodsecurity.so.3");
    std::fs::copy(&standin.path, &lib).unwrap();
    let path = std::ffi::CString::new(lib.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the library stays loaded (no dlclose).
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {lib:?} failed");
}

/// A server thread named `COMM` closes a connection with unread data:
/// the kernel resets it in that thread's close().
fn abort_on_close(ns: &Netns) {
    ns.run(|| {
        set_thread_name(COMM);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = connect_from(ABORTED.parse().unwrap(), l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut c: TcpStream = c.into();
        c.write_all(b"unread").unwrap();
        // Close only once the data is queued, or no RST is due.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut peek = [0u8; 1];
        assert_eq!(s.peek(&mut peek).unwrap(), 1);
        drop(s);
        assert_reset(c);
    })
}

/// A copy of ss in a directory whose name has a newline, under a file name
/// with an ESC, destroys a connection from `KILLED`.
fn socket_killed(ns: &Netns, killer: PathBuf) {
    ns.run(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = connect_from(KILLED.parse().unwrap(), l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let out = std::process::Command::new(&killer)
            .args(["-K", "dst", KILLED])
            .output()
            .unwrap_or_else(|e| panic!("running {killer:?}: {e}"));
        assert!(out.status.success(), "{killer:?} -K: {out:?}");
        assert_reset(c.into());
    })
}

// Netlink and nf_tables constants (linux/netlink.h, linux/netfilter/*.h).
const NETLINK_NETFILTER: i32 = 12;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 1 << 15;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NF_INET_LOCAL_IN: u32 = 1;

fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 4) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    nla(ty | NLA_F_NESTED, &parts.concat())
}

fn cstr(name: &[u8]) -> Vec<u8> {
    [name, b"\0"].concat()
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// One netfilter netlink message: header, nfgenmsg, attributes.
fn nfmsg(ty: u16, flags: u16, seq: u32, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body = attrs.concat();
    let mut m = ((16 + 4 + body.len()) as u32).to_ne_bytes().to_vec();
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0);
    m.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    m.extend_from_slice(&body);
    m
}

fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
    nested(1, &[nla(1, &cstr(name.as_bytes())), nested(2, data)])
}

/// table ip TABLE { chain CHAIN { type filter hook input priority 0;
/// ip saddr REJECTED reject with tcp reset } }, in one transaction sent
/// over netlink by the calling thread (whose name the commit records).
fn add_hostile_ruleset() {
    let ack = NLM_F_REQUEST | NLM_F_ACK;
    let table = nla(1, &cstr(TABLE));
    let saddr: std::net::Ipv4Addr = REJECTED.parse().unwrap();
    let rule = vec![
        // payload load 4b @ network header + 12 => reg 1
        expr(
            "payload",
            &[
                nla(1, &be32(1)),
                nla(2, &be32(1)),
                nla(3, &be32(12)),
                nla(4, &be32(4)),
            ],
        ),
        // cmp eq reg 1 saddr
        expr(
            "cmp",
            &[
                nla(1, &be32(1)),
                nla(2, &be32(0)),
                nested(3, &[nla(1, &saddr.octets())]),
            ],
        ),
        // reject type tcp-rst
        expr("reject", &[nla(1, &be32(1))]),
    ];
    let msgs = [
        nfmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, &[]),
        nfmsg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE,
            ack | NLM_F_CREATE,
            2,
            NFPROTO_IPV4,
            std::slice::from_ref(&table),
        ),
        nfmsg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
            ack | NLM_F_CREATE,
            3,
            NFPROTO_IPV4,
            &[
                table.clone(),
                nla(3, &cstr(CHAIN)),
                nested(4, &[nla(1, &be32(NF_INET_LOCAL_IN)), nla(2, &be32(0))]),
                nla(7, b"filter\0"),
            ],
        ),
        nfmsg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
            ack | NLM_F_CREATE | NLM_F_APPEND,
            4,
            NFPROTO_IPV4,
            &[table.clone(), nla(2, &cstr(CHAIN)), nested(4, &rule)],
        ),
        nfmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 5, 0, &[]),
    ]
    .concat();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_NETFILTER) };
    assert!(fd >= 0, "netlink: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: msgs is valid for its length; the kernel is the default
    // destination of an unbound netlink socket.
    let n = unsafe { libc::send(fd.as_raw_fd(), msgs.as_ptr().cast(), msgs.len(), 0) };
    assert_eq!(
        n,
        msgs.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
    // One ACK (an NLMSG_ERROR with error 0) per request message.
    let mut acks = 0;
    let mut buf = vec![0u8; 1 << 16];
    while acks < 3 {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "recv: {}", std::io::Error::last_os_error());
        let mut m = &buf[..n as usize];
        while m.len() >= 20 {
            let len = u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(m[4..6].try_into().unwrap());
            if ty == libc::NLMSG_ERROR as u16 {
                let err = i32::from_ne_bytes(m[16..20].try_into().unwrap());
                assert_eq!(
                    err,
                    0,
                    "nf_tables refused the ruleset: {}",
                    std::io::Error::from_raw_os_error(-err)
                );
                acks += 1;
            }
            m = &m[len.next_multiple_of(4).min(m.len())..];
        }
    }
}

/// `GET /metrics` from inside the namespace, the body byte for byte.
fn scrape(ns: &Netns, port: u16) -> Vec<u8> {
    ns.run(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = Vec::new();
        c.read_to_end(&mut r).unwrap();
        let at = r
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP header");
        assert!(
            r.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&r)
        );
        r.split_off(at + 4)
    })
}

/// No raw control byte (0x00-0x1f but those in `keep`, 0x7f) and no C1
/// control character in `what`.
fn assert_clean(name: &str, what: &[u8], keep: &[u8]) {
    for (i, b) in what.iter().enumerate() {
        assert!(
            !((*b < 0x20 && !keep.contains(b)) || *b == 0x7f),
            "{name}: raw byte {b:#04x} at {i}:\n{}",
            String::from_utf8_lossy(what)
        );
    }
    let text = std::str::from_utf8(what).unwrap_or_else(|e| panic!("{name}: not UTF-8: {e}"));
    assert!(
        !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)),
        "{name}: raw C1 control in {text:?}"
    );
}

/// Each line of a Prometheus text exposition, checked against the format
/// strictly: `# ...`, or `name{label="value",...} number` where a value
/// holds no raw control character and only the escapes \\ \" \n. The
/// prometheus-parse crate splits label sets at ',' and '}' and does not
/// unescape, so it can't vouch for hostile values; this can.
fn strict_exposition(text: &str) {
    for line in text.lines() {
        if line.starts_with("# ") {
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        assert!(name_end > 0, "no metric name: {line:?}");
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            let mut chars = labels.char_indices();
            loop {
                let (_, first) = chars.next().unwrap_or_else(|| panic!("open: {line:?}"));
                if first == '}' {
                    break;
                }
                assert!(first.is_ascii_alphabetic() || first == '_', "{line:?}");
                let mut c = chars.next().map(|(_, c)| c);
                while c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    c = chars.next().map(|(_, c)| c);
                }
                assert_eq!(c, Some('='), "{line:?}");
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('"') => break,
                        Some('\\') => assert!(
                            matches!(chars.next(), Some((_, '\\' | '"' | 'n'))),
                            "bad escape in {line:?}"
                        ),
                        Some(c) => assert!(!c.is_control(), "raw control in {line:?}"),
                        None => panic!("unterminated value: {line:?}"),
                    }
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        rest = &labels[i + 1..];
                        break;
                    }
                    other => panic!("{other:?} after a value: {line:?}"),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "value {value:?}: {line:?}");
    }
}

/// The comment option of every Enhanced Packet Block.
fn pcapng_comments(file: &[u8]) -> Vec<Vec<u8>> {
    let u32_at = |i: usize| u32::from_le_bytes(file[i..i + 4].try_into().unwrap()) as usize;
    let mut out = vec![];
    let mut at = 0;
    while at + 12 <= file.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4));
        assert!(len >= 12 && at + len <= file.len(), "block at {at}");
        if kind == 6 {
            let caplen = u32_at(at + 20);
            let mut opt = at + 28 + caplen.next_multiple_of(4);
            while opt + 4 <= at + len - 4 {
                let code = u16::from_le_bytes([file[opt], file[opt + 1]]);
                let olen = u16::from_le_bytes([file[opt + 2], file[opt + 3]]) as usize;
                if code == 0 {
                    break;
                }
                if code == 1 {
                    out.push(file[opt + 4..opt + 4 + olen].to_vec());
                }
                opt += 4 + olen.next_multiple_of(4);
            }
        }
        at += len;
    }
    out
}

#[test]
fn hostile_names_are_escaped_in_text_pcapng_and_metrics() {
    let ns = Netns::new("hostile");
    let dir = std::env::temp_dir().join(format!("rsttrace-hostile-{}", std::process::id()));
    let killer_dir = dir.join("a\nb");
    std::fs::create_dir_all(&killer_dir).unwrap();
    let killer = killer_dir.join(std::ffi::OsStr::from_bytes(KILLER));
    let ss = ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("ss (iproute2) is installed");
    std::fs::copy(ss, &killer).unwrap();
    load_waf_library(&dir);
    let pcap = dir.join("out.pcapng");
    let trace = Trace::start_text_in(
        Some(&ns),
        &[
            "--netns",
            "self",
            "--pcap",
            pcap.to_str().unwrap(),
            "--metrics",
            "9477",
            // The killer is an agent named by its process name (its
            // executable is gone by the time the event is read).
            "--agent",
            "ss*",
        ],
    );

    ns.run(|| {
        set_thread_name(COMM);
        add_hostile_ruleset();
    });
    // rsttrace learns the rule's author from the commit notification.
    std::thread::sleep(Duration::from_millis(500));
    abort_on_close(&ns);
    socket_killed(&ns, killer);
    let refused = ns.run(|| {
        connect_from(
            REJECTED.parse().unwrap(),
            "127.0.0.1:7".parse::<SocketAddr>().unwrap(),
        )
        .expect_err("the rule rejects")
        .kind()
    });
    assert_eq!(refused, ErrorKind::ConnectionRefused);
    // Let the reader pick the last events up before the scrape and stop.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = scrape(&ns, 9477);
    let (out, stderr) = trace.stop_raw();
    let file = std::fs::read(&pcap).expect("pcapng file");
    let _ = std::fs::remove_dir_all(&dir);

    // Text: every line readable, names escaped where they appear.
    assert_clean("text output", &out, b"\n");
    let text = String::from_utf8(out).unwrap();
    let line_to = |ip: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" to {ip}:")))
            .unwrap_or_else(|| panic!("no RST to {ip} in:\n{text}\nstderr:\n{stderr}"))
    };
    let aborted = line_to(ABORTED);
    assert!(aborted.contains(" abort-on-close "), "{aborted}");
    assert!(aborted.contains(&format!("/{COMM_TEXT}")), "{aborted}");
    assert!(
        aborted.contains(&format!(
            "[security-agent: ModSecurity] agent-via={}/{WAF_DIR_TEXT}/libmodsecurity.so.3",
            dir.display()
        )),
        "{aborted}"
    );
    let killed = line_to(KILLED);
    assert!(killed.contains(" socket-killed "), "{killed}");
    assert!(killed.contains(&format!("/{KILLER_TEXT} ")), "{killed}");
    assert!(
        killed.contains(&format!("[security-agent: {KILLER_TEXT}]")),
        "{killed}"
    );
    let rejected = line_to(REJECTED);
    assert!(
        rejected.contains(&format!(" table={TABLE_TEXT} chain={CHAIN_TEXT} rule-by=")),
        "{rejected}"
    );
    assert!(rejected.contains(&format!("/{COMM_TEXT}")), "{rejected}");
    for want in [
        format!(": add table ip {TABLE_TEXT}\n"),
        format!(": add chain ip {TABLE_TEXT} {CHAIN_TEXT}\n"),
        format!(": add rule ip {TABLE_TEXT} {CHAIN_TEXT} handle "),
        format!("): {COMM_TEXT} (ModSecurity loaded) closed 1 connections without reading"),
        format!("): process {KILLER_TEXT} (security agent: {KILLER_TEXT}) destroyed"),
        format!("): a REJECT rule added by {COMM_TEXT} answered"),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    assert!(
        text.contains(&format!(" by {COMM_TEXT} (pid ")),
        "the commit's process in:\n{text}"
    );

    // pcapng: the comments are the same escaped text, and the hostile
    // sequences are nowhere in the file.
    let comments = pcapng_comments(&file);
    assert!(comments.len() >= 3, "{comments:?}");
    for c in &comments {
        assert_clean("pcapng comment", c, &[]);
    }
    let all = comments.concat();
    for want in [COMM_TEXT, KILLER_TEXT, TABLE_TEXT, CHAIN_TEXT, WAF_DIR_TEXT] {
        assert!(
            all.windows(want.len()).any(|w| w == want.as_bytes()),
            "{want} in no comment: {comments:?}"
        );
    }
    // Whole names only: two bytes such as ESC '[' turn up by chance in
    // the packets' binary headers (the comments are checked above).
    for raw in [COMM, KILLER, TABLE, CHAIN, WAF_DIR] {
        assert!(
            !file.windows(raw.len()).any(|w| w == raw),
            "raw {raw:?} in the pcapng file"
        );
    }

    // Metrics: one sample per line, read by a strict checker and by a
    // Prometheus parser.
    assert_clean("metrics", &metrics, b"\n");
    let metrics = String::from_utf8(metrics).unwrap();
    strict_exposition(&metrics);
    let parsed = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{metrics}"));
    for cause in ["abort-on-close", "socket-killed", "netfilter-reject"] {
        let n = parsed
            .samples
            .iter()
            .find(|s| {
                s.metric == "rsttrace_rsts_total"
                    && s.labels.get("cause") == Some(cause)
                    && s.labels.get("direction") == Some("out")
            })
            .map(|s| s.value.clone());
        assert!(
            // The parser types `_total` samples as untyped (the TYPE line
            // names the family without the suffix).
            matches!(
                n,
                Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v))
                    if v >= 1.0
            ),
            "{cause}: {n:?} in:\n{metrics}"
        );
    }
}
