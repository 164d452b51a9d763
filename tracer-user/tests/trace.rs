//! Privileged integration tests: the real `rsttrace` binary traces while
//! each scenario makes RSTs in its own network namespace, from its own
//! remote address, and asserts only on that address. The namespace's Tcp
//! OutRsts counter is the ground truth for every count.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};
use support::{Netns, Trace, connect_from, out_rsts_here};

/// Connects `n` times from `client` to a port nobody listens on; returns
/// the namespace's OutRsts delta.
fn closed_port(ns: &Netns, client: IpAddr, server: SocketAddr, n: u64) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        for _ in 0..n {
            let err = connect_from(client, server).expect_err("port 9 must be closed");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        }
        out_rsts_here() - before
    })
}

#[test]
fn closed_port_ipv4() {
    let ns = Netns::new("closed4");
    let trace = Trace::start(&[]);
    let sent = closed_port(
        &ns,
        "127.3.0.1".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        5,
    );
    let out = trace.stop();
    assert_eq!(sent, 5, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.3.0.1", sent, "closed-port");
    for e in evs {
        assert_eq!(e["kernel_reason"], "NO_SOCKET");
        assert_eq!(e["family"], "ipv4");
        assert_eq!(e["local_ip"], "127.0.0.1");
        assert_eq!(e["local_port"], 9);
        assert_eq!(e["state"], serde_json::Value::Null);
        assert_eq!(
            e["actor"],
            serde_json::Value::Null,
            "receive path: no actor"
        );
    }
}

#[test]
fn closed_port_ipv6() {
    let ns = Netns::new("closed6");
    ns.add_addr("fd72:7374::3/128");
    let trace = Trace::start(&[]);
    let sent = closed_port(
        &ns,
        "fd72:7374::3".parse().unwrap(),
        "[::1]:9".parse().unwrap(),
        4,
    );
    let out = trace.stop();
    assert_eq!(sent, 4, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "fd72:7374::3", sent, "closed-port");
    for e in evs {
        assert_eq!(e["family"], "ipv6");
        assert_eq!(e["local_ip"], "::1");
        assert_eq!(e["local_port"], 9);
    }
}

#[test]
fn abort_on_close_with_unread_data() {
    let ns = Netns::new("abort");
    let trace = Trace::start(&[]);
    let n = 3;
    let sent = ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        for _ in 0..n {
            let client = connect_from("127.4.0.1".parse().unwrap(), server).unwrap();
            let mut client: std::net::TcpStream = client.into();
            client.write_all(b"unread request").unwrap();
            let (conn, _) = listener.accept().unwrap();
            // Wait until the data sits in the receive queue, unread.
            let mut buf = [0u8; 4];
            assert_eq!(conn.peek(&mut buf).unwrap(), 4);
            drop(conn);
            // The client sees the reset.
            let mut rest = Vec::new();
            let err = client.read_to_end(&mut rest).expect_err("reset expected");
            assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        }
        out_rsts_here() - before
    });
    let out = trace.stop();
    assert_eq!(sent, n, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.4.0.1", sent, "abort-on-close");
    for e in evs {
        assert_eq!(e["kernel_reason"], "TCP_ABORT_ON_CLOSE");
        assert_eq!(e["local_ip"], "127.0.0.1");
        // tcp_close() moves the socket to CLOSE before it sends the reset.
        assert_eq!(e["state"], "TCP_CLOSE");
        // close() runs in the test's own process: it is the actor.
        assert_eq!(e["actor"]["pid"], std::process::id(), "actor of {e}");
        assert_eq!(e["actor"]["cgroup"], own_cgroup2_path(), "actor of {e}");
    }
}

/// This process's cgroup v2 path ("0::/path" in /proc/self/cgroup).
fn own_cgroup2_path() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 entry")
        .to_string()
}

#[test]
fn keepalive_timeout() {
    let ns = Netns::new("keepalive");
    // Swallow everything the client sends once connected, so that the
    // server's keepalive probes go unanswered (this namespace only).
    let trace = Trace::start(&[]);
    let n = 2;
    let ns_name = ns.name.clone();
    let sent = ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mut pairs = vec![];
        for _ in 0..n {
            let client = connect_from("127.5.0.1".parse().unwrap(), server).unwrap();
            let (conn, _) = listener.accept().unwrap();
            SockRef::from(&conn)
                .set_tcp_keepalive(
                    &TcpKeepalive::new()
                        .with_time(Duration::from_secs(1))
                        .with_interval(Duration::from_secs(1))
                        .with_retries(1),
                )
                .unwrap();
            pairs.push((client, conn));
        }
        let nft = |rule: &str| {
            let st = std::process::Command::new("nft")
                .args(rule.split(' '))
                .status()
                .expect("running nft (nftables)");
            assert!(st.success(), "nft {rule} in {ns_name}");
        };
        // nft runs in this thread's namespace: the test's own.
        nft("add table inet rsttrace_test");
        nft("add chain inet rsttrace_test in { type filter hook input priority 0 ; }");
        nft("add rule inet rsttrace_test in ip saddr 127.5.0.1 drop");
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_client, mut conn) in pairs {
            conn.set_read_timeout(Some(deadline - Instant::now()))
                .unwrap();
            let mut buf = [0u8; 1];
            let err = conn.read(&mut buf).expect_err("keepalive must time out");
            assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
        }
        out_rsts_here() - before
    });
    // Let the kernel's events reach the tracer's ring before stopping.
    thread::sleep(Duration::from_millis(100));
    let out = trace.stop();
    assert_eq!(sent, n, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.5.0.1", sent, "keepalive-timeout");
    for e in evs {
        assert_eq!(e["kernel_reason"], "TCP_KEEPALIVE_TIMEOUT");
        assert_eq!(e["actor"], serde_json::Value::Null, "timer path: no actor");
    }
}

#[test]
fn summary_only_prints_exact_counts_and_no_events() {
    let ns = Netns::new("summaryonly");
    let trace = Trace::start(&["--summary-only"]);
    let sent = closed_port(
        &ns,
        "127.6.0.1".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        7,
    );
    let out = trace.stop();
    assert_eq!(sent, 7);
    assert!(out.rsts.is_empty(), "--summary-only printed events");
    let entry = out.remote("127.6.0.1").expect("remote in summary");
    assert_eq!(entry["total"], 7);
    assert_eq!(entry["by_cause"], serde_json::json!({"closed-port": 7}));
    assert!(out.summary["total"].as_u64().unwrap() >= 7);
}

/// Opens `n` connections from `client` to a listener in the calling
/// thread's namespace; returns (client, server side) pairs.
fn established(client: &str, n: usize) -> Vec<(std::net::TcpStream, std::net::TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let c = connect_from(client.parse().unwrap(), server).unwrap();
            let (s, _) = listener.accept().unwrap();
            (c.into(), s)
        })
        .collect()
}

fn assert_reset(mut client: std::net::TcpStream) {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    let err = client.read(&mut buf).expect_err("reset expected");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn socket_killed_by_sock_diag_destroy() {
    let ns = Netns::new("killed");
    let trace = Trace::start(&[]);
    let n = 2;
    let sent = ns.run(move || {
        let before = out_rsts_here();
        let pairs = established("127.7.0.1", n);
        // `ss -K` destroys the server-side sockets through sock_diag, the
        // way runtime-security agents do; it runs in this namespace.
        let out = std::process::Command::new("ss")
            .args(["-K", "dst", "127.7.0.1"])
            .output()
            .expect("running ss (iproute2)");
        assert!(out.status.success(), "ss -K: {out:?}");
        for (c, _s) in pairs {
            assert_reset(c);
        }
        out_rsts_here() - before
    });
    let out = trace.stop();
    assert_eq!(sent, n as u64, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.7.0.1", sent, "socket-killed");
    for e in evs {
        assert_eq!(e["kernel_reason"], "TCP_STATE");
        // The destroying process is the actor, not the socket's owner.
        assert_eq!(e["actor"]["comm"], "ss", "actor of {e}");
        assert_eq!(
            e["labels"],
            serde_json::json!([]),
            "ss is no security agent"
        );
    }
}

#[test]
fn linger_abort_on_close() {
    let ns = Netns::new("linger");
    let trace = Trace::start(&[]);
    let n = 3;
    let sent = ns.run(move || {
        let before = out_rsts_here();
        for (c, s) in established("127.8.0.1", n) {
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
            assert_reset(c);
        }
        out_rsts_here() - before
    });
    let out = trace.stop();
    assert_eq!(sent, n as u64, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.8.0.1", sent, "linger-abort");
    for e in evs {
        assert_eq!(e["kernel_reason"], "TCP_STATE");
        assert_eq!(e["actor"]["pid"], std::process::id(), "actor of {e}");
    }
}

#[test]
fn app_disconnect_with_connect_af_unspec() {
    let ns = Netns::new("disconnect");
    let trace = Trace::start(&[]);
    let n = 2;
    let sent = ns.run(move || {
        let before = out_rsts_here();
        for (c, s) in established("127.9.0.1", n) {
            let unspec = libc::sockaddr {
                sa_family: libc::AF_UNSPEC as libc::sa_family_t,
                sa_data: [0; 14],
            };
            // SAFETY: a valid socket and a sockaddr of the size given.
            let rc = unsafe {
                libc::connect(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    &unspec,
                    size_of::<libc::sockaddr>() as libc::socklen_t,
                )
            };
            assert_eq!(
                rc,
                0,
                "connect(AF_UNSPEC): {}",
                std::io::Error::last_os_error()
            );
            assert_reset(c);
        }
        out_rsts_here() - before
    });
    let out = trace.stop();
    assert_eq!(sent, n as u64, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.9.0.1", sent, "app-disconnect");
    for e in evs {
        assert_eq!(e["actor"]["pid"], std::process::id(), "actor of {e}");
    }
}

/// The motivating case: a runtime-security agent blocks a peer by
/// destroying its sockets. A known agent's name and an in-house one given
/// with --agent both earn the `security-agent` label.
#[test]
fn socket_killed_by_a_security_agent_is_labelled() {
    let ns = Netns::new("agent");
    let dir = std::env::temp_dir().join(format!("rsttrace-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ss = which_ss();
    // Copies of ss whose process names are those of agents.
    for name in ["crowdsec", "blocklistd"] {
        std::fs::copy(&ss, dir.join(name)).unwrap();
    }
    let trace = Trace::start(&["--agent", "blocklist*"]);
    let dir2 = dir.clone();
    let sent = ns.run(move || {
        let before = out_rsts_here();
        let a = established("127.11.0.1", 2);
        let b = established("127.12.0.1", 1);
        for (agent, peer) in [("crowdsec", "127.11.0.1"), ("blocklistd", "127.12.0.1")] {
            let out = std::process::Command::new(dir2.join(agent))
                .args(["-K", "dst", peer])
                .output()
                .unwrap();
            assert!(out.status.success(), "{agent} -K: {out:?}");
        }
        for (c, _s) in a.into_iter().chain(b) {
            assert_reset(c);
        }
        out_rsts_here() - before
    });
    let out = trace.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(sent, 3, "OutRsts delta in the namespace");
    for e in out.assert_exactly(&ns, "127.11.0.1", 2, "socket-killed") {
        assert_eq!(e["actor"]["comm"], "crowdsec");
        assert_eq!(e["actor"]["agent"], "CrowdSec");
        assert_eq!(e["labels"], serde_json::json!(["security-agent"]));
    }
    for e in out.assert_exactly(&ns, "127.12.0.1", 1, "socket-killed") {
        assert_eq!(e["actor"]["agent"], "blocklistd");
        assert_eq!(e["labels"], serde_json::json!(["security-agent"]));
    }
}

fn which_ss() -> std::path::PathBuf {
    ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("ss (iproute2) is installed")
}
