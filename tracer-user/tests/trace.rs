//! Privileged integration tests: the real `rsttrace` binary traces while
//! each scenario makes RSTs in its own network namespace, from its own
//! remote address, and asserts only on that address. The namespace's Tcp
//! OutRsts counter is the ground truth for every count.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};
use support::{Netns, Trace, connect_from, out_rsts_here, rule_packets};

/// Connects `n` times from `client` to a port nobody listens on; returns
/// the namespace's OutRsts delta.
fn closed_port(ns: &Netns, client: IpAddr, server: SocketAddr, n: u64) -> u64 {
    support::refused_connects(ns, client, server, n)
}

#[test]
fn closed_port_ipv4() {
    let ns = Netns::new("closed4");
    let trace = Trace::watch(&ns, &[]);
    let sent = closed_port(
        &ns,
        "127.3.0.1".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        5,
    );
    let out = trace.stop();
    assert!(sent >= 5, "OutRsts delta in the namespace: {sent}");
    let evs = out.assert_exactly(&ns, "127.3.0.1", sent, "closed-port");
    for e in evs {
        assert_eq!(e["kernel_reason"], support::expected_reason("NO_SOCKET"));
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
    let trace = Trace::watch(&ns, &[]);
    let sent = closed_port(
        &ns,
        "fd72:7374::3".parse().unwrap(),
        "[::1]:9".parse().unwrap(),
        4,
    );
    let out = trace.stop();
    assert!(sent >= 4, "OutRsts delta in the namespace: {sent}");
    let evs = out.assert_exactly(&ns, "fd72:7374::3", sent, "closed-port");
    for e in evs {
        assert_eq!(e["family"], "ipv6");
        assert_eq!(e["local_ip"], "::1");
        assert_eq!(e["local_port"], 9);
    }
}

/// IPv6 and IPv4 closed-port RSTs leaving over a veth pair, then over
/// loopback: each counted once, at send and on the wire alike (IPv6 RSTs
/// leave without a socket, and were once counted a second time there).
#[test]
fn closed_port_over_veth_each_rst_counted_once() {
    let client = Netns::new("veth-c");
    let server = Netns::new("veth-s");
    support::veth(
        (&client, "rv-c", &["fd72:7374:d::1/64", "10.251.0.1/24"]),
        (&server, "rv-s", &["fd72:7374:d::2/64", "10.251.0.2/24"]),
    );
    server.add_addr("fd72:7374:e::3/128");
    let before = server.out_rsts();
    let trace = Trace::watch(&server, &[]);
    closed_port(
        &client,
        "fd72:7374:d::1".parse().unwrap(),
        "[fd72:7374:d::2]:9".parse().unwrap(),
        7,
    );
    closed_port(
        &client,
        "10.251.0.1".parse().unwrap(),
        "10.251.0.2:9".parse().unwrap(),
        5,
    );
    // And on the server's own loopback.
    let sent = closed_port(
        &server,
        "fd72:7374:e::3".parse().unwrap(),
        "[::1]:9".parse().unwrap(),
        3,
    );
    let sent_by_server = server.out_rsts() - before;
    let out = trace.stop();
    assert!(sent >= 3, "{sent}");
    assert!(sent_by_server >= 15, "{sent_by_server}");
    assert_eq!(out.summary["total"], sent_by_server, "{}", out.summary);
    out.assert_exactly(&server, "fd72:7374:d::1", 7, "closed-port");
    out.assert_exactly(&server, "10.251.0.1", 5, "closed-port");
    out.assert_exactly(&server, "fd72:7374:e::3", sent, "closed-port");
}

/// More remotes than the per-remote table holds: the RSTs beyond it are
/// still counted, by cause, and said (`remote_ip_overflow`); nothing is
/// lost from the totals. Scoped to its namespace, so that only its own
/// RSTs fill the table.
#[test]
fn remotes_beyond_the_table_are_counted_by_cause() {
    let ns = Netns::new("remotefull");
    let trace = Trace::watch(&ns, &["--max-remote-ips", "16"]);
    let clients: Vec<IpAddr> = (1..=24)
        .map(|i| format!("127.58.0.{i}").parse().unwrap())
        .collect();
    let sent: u64 = clients
        .iter()
        .map(|c| closed_port(&ns, *c, "127.0.0.1:9".parse().unwrap(), 2))
        .sum();
    let out = trace.stop();
    let s = &out.summary;
    assert!(sent >= 48, "OutRsts delta in the namespace: {sent}");
    assert_eq!(s["total"], sent, "{s}");
    assert_eq!(s["by_cause"], serde_json::json!({ "closed-port": sent }));
    let listed = s["by_remote_ip"].as_array().expect("by_remote_ip");
    assert!(listed.len() <= 16, "{} remotes listed", listed.len());
    let per_remote: u64 = listed.iter().map(|r| r["total"].as_u64().unwrap()).sum();
    let overflow = s["remote_ip_overflow"]
        .as_u64()
        .expect("remote_ip_overflow");
    assert!(overflow > 0, "{s}");
    assert_eq!(per_remote + overflow, sent, "{s}");
}

/// The server closes `n` connections from `client` with the request
/// unread; returns the namespace's OutRsts delta.
fn abort_on_close(ns: &Netns, client: &'static str, n: u64) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        for _ in 0..n {
            let c = connect_from(client.parse().unwrap(), server).unwrap();
            let mut c: std::net::TcpStream = c.into();
            c.write_all(b"unread request").unwrap();
            let (conn, _) = listener.accept().unwrap();
            // Wait until the data sits in the receive queue, unread.
            let mut buf = [0u8; 4];
            assert_eq!(conn.peek(&mut buf).unwrap(), 4);
            drop(conn);
            assert_reset(c);
        }
        out_rsts_here() - before
    })
}

#[test]
fn abort_on_close_with_unread_data() {
    let ns = Netns::new("abort");
    let trace = Trace::watch(&ns, &[]);
    let sent = abort_on_close(&ns, "127.4.0.1", 3);
    let out = trace.stop();
    assert_eq!(sent, 3, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.4.0.1", sent, "abort-on-close");
    for e in evs {
        assert_eq!(
            e["kernel_reason"],
            support::expected_reason("TCP_ABORT_ON_CLOSE")
        );
        assert_eq!(e["local_ip"], "127.0.0.1");
        // The port is gone from the socket's own number by then (its
        // bind is released on CLOSE), not from the RST.
        assert_ne!(e["local_port"], 0, "{e}");
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

/// `n` idle connections from `client` whose server side has a 1 s
/// keepalive; an nft rule in the test's namespace swallows the client's
/// answers so the probes go unanswered. Returns the OutRsts delta.
fn keepalive_timeout_scenario(ns: &Netns, client: &'static str, n: u64) -> u64 {
    let ns_name = ns.name.clone();
    ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mut pairs = vec![];
        for _ in 0..n {
            let c = connect_from(client.parse().unwrap(), server).unwrap();
            let (conn, _) = listener.accept().unwrap();
            SockRef::from(&conn)
                .set_tcp_keepalive(
                    &TcpKeepalive::new()
                        .with_time(Duration::from_secs(1))
                        .with_interval(Duration::from_secs(1))
                        .with_retries(1),
                )
                .unwrap();
            pairs.push((c, conn));
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
        nft(&format!(
            "add rule inet rsttrace_test in ip saddr {client} drop"
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_client, mut conn) in pairs {
            conn.set_read_timeout(Some(deadline - Instant::now()))
                .unwrap();
            let mut buf = [0u8; 1];
            let err = conn.read(&mut buf).expect_err("keepalive must time out");
            assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
        }
        out_rsts_here() - before
    })
}

#[test]
fn keepalive_timeout() {
    let ns = Netns::new("keepalive");
    let trace = Trace::watch(&ns, &[]);
    let sent = keepalive_timeout_scenario(&ns, "127.5.0.1", 2);
    let out = trace.stop();
    assert_eq!(sent, 2, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.5.0.1", sent, "keepalive-timeout");
    for e in evs {
        assert_eq!(
            e["kernel_reason"],
            support::expected_reason("TCP_KEEPALIVE_TIMEOUT")
        );
        assert_eq!(e["actor"], serde_json::Value::Null, "timer path: no actor");
    }
}

#[test]
fn summary_only_prints_exact_counts_and_no_events() {
    let ns = Netns::new("summaryonly");
    let trace = Trace::watch(&ns, &["--summary-only"]);
    let sent = closed_port(
        &ns,
        "127.6.0.1".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        7,
    );
    let out = trace.stop();
    assert!(sent >= 7, "OutRsts delta: {sent}");
    assert!(out.rsts.is_empty(), "--summary-only printed events");
    let entry = out.remote("127.6.0.1").expect("remote in summary");
    assert_eq!(entry["total"], sent);
    assert_eq!(entry["by_cause"], serde_json::json!({"closed-port": sent}));
    assert!(out.summary["total"].as_u64().unwrap() >= sent);
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

/// `killer` (ss or a copy of it) destroys the server side of `n`
/// connections from `client` through sock_diag, the way runtime-security
/// agents do. Returns the OutRsts delta.
fn socket_killed(ns: &Netns, client: &'static str, n: usize, killer: PathBuf) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        let pairs = established(client, n);
        let out = std::process::Command::new(&killer)
            .args(["-K", "dst", client])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", killer.display()));
        assert!(out.status.success(), "{} -K: {out:?}", killer.display());
        for (c, _s) in pairs {
            assert_reset(c);
        }
        out_rsts_here() - before
    })
}

#[test]
fn socket_killed_by_sock_diag_destroy() {
    let ns = Netns::new("killed");
    let trace = Trace::watch(&ns, &[]);
    let sent = socket_killed(&ns, "127.7.0.1", 2, which_ss());
    let out = trace.stop();
    assert_eq!(sent, 2, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.7.0.1", sent, "socket-killed");
    for e in evs {
        assert_eq!(e["kernel_reason"], support::expected_reason("TCP_STATE"));
        // The destroying process is the actor, not the socket's owner.
        assert_eq!(e["actor"]["comm"], "ss", "actor of {e}");
        assert_eq!(
            e["labels"],
            serde_json::json!([]),
            "ss is no security agent"
        );
    }
}

/// The server closes `n` connections from `client` with SO_LINGER 0.
fn linger_abort(ns: &Netns, client: &'static str, n: usize) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        for (c, s) in established(client, n) {
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
            assert_reset(c);
        }
        out_rsts_here() - before
    })
}

#[test]
fn linger_abort_on_close() {
    let ns = Netns::new("linger");
    let trace = Trace::watch(&ns, &[]);
    let sent = linger_abort(&ns, "127.8.0.1", 3);
    let out = trace.stop();
    assert_eq!(sent, 3, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.8.0.1", sent, "linger-abort");
    for e in evs {
        assert_eq!(e["kernel_reason"], support::expected_reason("TCP_STATE"));
        assert_eq!(e["actor"]["pid"], std::process::id(), "actor of {e}");
    }
}

/// The server drops `n` live connections from `client` with
/// connect(AF_UNSPEC).
fn app_disconnect(ns: &Netns, client: &'static str, n: usize) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        for (c, s) in established(client, n) {
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
    })
}

#[test]
fn app_disconnect_with_connect_af_unspec() {
    let ns = Netns::new("disconnect");
    let trace = Trace::watch(&ns, &[]);
    let sent = app_disconnect(&ns, "127.9.0.1", 2);
    let out = trace.stop();
    assert_eq!(sent, 2, "OutRsts delta in the namespace");
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
    let trace = Trace::watch(&ns, &["--agent", "blocklist*"]);
    let sent = socket_killed(&ns, "127.11.0.1", 2, dir.join("crowdsec"))
        + socket_killed(&ns, "127.12.0.1", 1, dir.join("blocklistd"));
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

fn which_ss() -> PathBuf {
    ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("ss (iproute2) is installed")
}

/// Every cause at once under one rsttrace, each scenario in its own
/// namespace and from its own remote: each remote gets exactly its cause.
#[test]
fn mixed_causes_each_remote_gets_exactly_its_own() {
    type Scenario = (
        &'static str,
        &'static str,
        u64,
        fn(&Netns, &'static str) -> u64,
    );
    let scenarios: [Scenario; 9] = [
        ("mix-closed", "127.21.0.1", 4, |ns, c| {
            closed_port(ns, c.parse().unwrap(), "127.0.0.1:9".parse().unwrap(), 4)
        }),
        ("mix-abort", "127.22.0.1", 2, |ns, c| {
            abort_on_close(ns, c, 2)
        }),
        ("mix-linger", "127.23.0.1", 3, |ns, c| {
            linger_abort(ns, c, 3)
        }),
        ("mix-disconnect", "127.24.0.1", 2, |ns, c| {
            app_disconnect(ns, c, 2)
        }),
        ("mix-killed", "127.25.0.1", 3, |ns, c| {
            socket_killed(ns, c, 3, which_ss())
        }),
        ("mix-keepalive", "127.26.0.1", 1, |ns, c| {
            keepalive_timeout_scenario(ns, c, 1)
        }),
        ("mix-closed6", "fd72:7374::26", 2, |ns, c| {
            ns.add_addr(&format!("{c}/128"));
            closed_port(ns, c.parse().unwrap(), "[::1]:9".parse().unwrap(), 2)
        }),
        ("mix-nft", "127.28.0.1", 3, |ns, c| {
            ns.exec(&["nft", "add table inet t"]);
            ns.exec(&[
                "nft",
                "add chain inet t in { type filter hook input priority 0 ; }",
            ]);
            let rule = format!(
                "add rule inet t in ip saddr {c} tcp dport 7 counter reject with tcp reset"
            );
            ns.exec(&["nft", &rule]);
            let tcp = closed_port(ns, c.parse().unwrap(), "127.0.0.1:7".parse().unwrap(), 3);
            assert_eq!(tcp, 0, "netfilter's RSTs are not the TCP stack's");
            rule_packets(&ns.output(&["nft", "list", "chain", "inet", "t", "in"]))
        }),
        ("mix-raw", "127.29.0.1", 2, |ns, _| {
            let (sent, tcp) = inject_rsts(ns, [127, 29, 0, 1], 2);
            assert_eq!(tcp, 0);
            sent
        }),
    ];
    let causes = [
        "closed-port",
        "abort-on-close",
        "linger-abort",
        "app-disconnect",
        "socket-killed",
        "keepalive-timeout",
        "closed-port",
        "netfilter-reject",
        "injected",
    ];
    let namespaces: Vec<Netns> = scenarios.iter().map(|s| Netns::new(s.0)).collect();
    let wires: Vec<support::wire::Wire> = namespaces
        .iter()
        .map(support::wire::Wire::capture)
        .collect();
    let trace = Trace::start(&[]);
    let sent: Vec<u64> = thread::scope(|scope| {
        let handles: Vec<_> = scenarios
            .iter()
            .zip(&namespaces)
            .map(|(s, ns)| scope.spawn(move || (s.3)(ns, s.1)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let out = trace.stop();
    for (ns, wire) in namespaces.iter().zip(wires) {
        out.assert_events_match_wire(ns, &wire.stop(), 0);
    }
    let coverage = &out.summary["coverage"];
    assert_eq!(
        coverage["unknown"], 0,
        "every egress RST explained: {coverage}"
    );
    // The first seven scenarios' RSTs come from the TCP stack.
    let by_stack: u64 = sent[..7].iter().sum();
    assert!(
        coverage["by_tcp_stack"].as_u64().unwrap() >= by_stack,
        "{coverage}"
    );
    for (((s, ns), sent), cause) in scenarios.iter().zip(&namespaces).zip(sent).zip(causes) {
        // At least: a refused connect whose SYN was lost is retried.
        assert!(sent >= s.2, "{sent} RSTs in {}, {} expected", s.0, s.2);
        out.assert_exactly(ns, s.1, sent, cause);
    }
}

/// The (table, base chain) a reject of a rule older than the trace shows.
enum BaseChain {
    /// Known on every kernel.
    Always(&'static str, &'static str),
    /// Where the kernel lets rsttrace read it (`rsttrace doctor` says),
    /// else null.
    WhereReadable(&'static str, &'static str),
    /// Never known.
    Null,
}

fn assert_netfilter(
    out: &support::TraceOutput,
    ns: &Netns,
    remote: &str,
    n: u64,
    hook: &str,
    backend: &str,
    base_chain: BaseChain,
) {
    let (table, chain) = match base_chain {
        BaseChain::Always(t, c) => (t.into(), c.into()),
        BaseChain::WhereReadable(t, c) if support::names_predating_nft_chains() => {
            (t.into(), c.into())
        }
        _ => (serde_json::Value::Null, serde_json::Value::Null),
    };
    for e in out.assert_exactly(ns, remote, n, "netfilter-reject") {
        assert_eq!(e["netfilter"]["hook"], hook, "{e}");
        assert_eq!(e["netfilter"]["backend"], backend, "{e}");
        assert_eq!(e["netfilter"]["table"], table, "{e}");
        assert_eq!(e["netfilter"]["chain"], chain, "{e}");
        assert_eq!(e["kernel_reason"], serde_json::Value::Null);
        // The rule ran in softirq on behalf of the peer: no actor.
        assert_eq!(e["actor"], serde_json::Value::Null, "{e}");
    }
}

#[test]
fn netfilter_reject_nftables_input_output_prerouting() {
    let ns = Netns::new("nft");
    ns.add_addr("fd72:7374::17/128");
    let nft = |args: &str| ns.exec(&["nft", args]);
    nft("add table inet rsttrace_t");
    nft("add chain inet rsttrace_t in { type filter hook input priority 0 ; }");
    nft("add chain inet rsttrace_t out { type filter hook output priority 0 ; }");
    nft("add chain inet rsttrace_t pre { type filter hook prerouting priority 0 ; }");
    nft(
        "add rule inet rsttrace_t pre ip saddr 127.16.0.2 tcp dport 7779 counter reject with tcp reset",
    );
    nft(
        "add rule inet rsttrace_t in ip saddr 127.16.0.1 tcp dport 7777 counter reject with tcp reset",
    );
    nft(
        "add rule inet rsttrace_t out ip6 saddr fd72:7374::17 tcp dport 7778 counter reject with tcp reset",
    );
    let trace = Trace::watch(&ns, &[]);
    let tcp4 = closed_port(
        &ns,
        "127.16.0.1".parse().unwrap(),
        "127.0.0.1:7777".parse().unwrap(),
        3,
    );
    let tcp6 = closed_port(
        &ns,
        "fd72:7374::17".parse().unwrap(),
        "[::1]:7778".parse().unwrap(),
        2,
    );
    let tcp_pre = closed_port(
        &ns,
        "127.16.0.2".parse().unwrap(),
        "127.0.0.1:7779".parse().unwrap(),
        2,
    );
    let out = trace.stop();
    assert_eq!(
        (tcp4, tcp6, tcp_pre),
        (0, 0, 0),
        "the TCP stack sent none of these RSTs"
    );
    let pre = rule_packets(&ns.output(&["nft", "list", "chain", "inet", "rsttrace_t", "pre"]));
    assert!(pre >= 2, "prerouting rule counter: {pre}");
    assert_netfilter(
        &out,
        &ns,
        "127.16.0.2",
        pre,
        "prerouting",
        "nftables",
        BaseChain::WhereReadable("rsttrace_t", "pre"),
    );
    let in4 = rule_packets(&ns.output(&["nft", "list", "chain", "inet", "rsttrace_t", "in"]));
    let out6 = rule_packets(&ns.output(&["nft", "list", "chain", "inet", "rsttrace_t", "out"]));
    assert!(in4 >= 3 && out6 >= 2, "rule counters: {in4} {out6}");
    assert_netfilter(
        &out,
        &ns,
        "127.16.0.1",
        in4,
        "input",
        "nftables",
        BaseChain::WhereReadable("rsttrace_t", "in"),
    );
    assert_netfilter(
        &out,
        &ns,
        "fd72:7374::17",
        out6,
        "output",
        "nftables",
        BaseChain::WhereReadable("rsttrace_t", "out"),
    );
    // The segments the rules answered are not silent drops.
    let drops = out.summary["drops"].as_array().unwrap();
    assert!(
        !drops
            .iter()
            .any(|d| d["remote_ip"] == "127.16.0.1" || d["remote_ip"] == "fd72:7374::17"),
        "{drops:?}"
    );
    // The rules predate the trace: no author is claimed.
    for e in out.rsts_to("127.16.0.1") {
        assert!(e["netfilter"].get("author").is_none(), "{e}");
    }
}

#[test]
fn netfilter_reject_iptables_nft_and_ip6tables() {
    let ns = Netns::new("xtnft");
    ns.add_addr("fd72:7374::18/128");
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-s",
        "127.18.0.1",
        "-p",
        "tcp",
        "--dport",
        "7777",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    ns.exec(&[
        "ip6tables",
        "-A",
        "INPUT",
        "-s",
        "fd72:7374::18",
        "-p",
        "tcp",
        "--dport",
        "7777",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    let trace = Trace::watch(&ns, &[]);
    let tcp4 = closed_port(
        &ns,
        "127.18.0.1".parse().unwrap(),
        "127.0.0.1:7777".parse().unwrap(),
        2,
    );
    let tcp6 = closed_port(
        &ns,
        "fd72:7374::18".parse().unwrap(),
        "[::1]:7777".parse().unwrap(),
        3,
    );
    let out = trace.stop();
    assert_eq!(
        (tcp4, tcp6),
        (0, 0),
        "the TCP stack sent none of these RSTs"
    );
    let n4 = rule_packets(&ns.output(&["iptables", "-L", "INPUT", "-v", "-x", "-n"]));
    let n6 = rule_packets(&ns.output(&["ip6tables", "-L", "INPUT", "-v", "-x", "-n"]));
    assert!(n4 >= 2 && n6 >= 3, "rule counters: {n4} {n6}");
    assert_netfilter(
        &out,
        &ns,
        "127.18.0.1",
        n4,
        "input",
        "iptables-nft",
        BaseChain::WhereReadable("filter", "INPUT"),
    );
    assert_netfilter(
        &out,
        &ns,
        "fd72:7374::18",
        n6,
        "input",
        "iptables-nft",
        BaseChain::WhereReadable("filter", "INPUT"),
    );
}

#[test]
fn netfilter_reject_iptables_legacy() {
    let ns = Netns::new("xtlegacy");
    ns.exec(&[
        "iptables-legacy",
        "-A",
        "INPUT",
        "-s",
        "127.19.0.1",
        "-p",
        "tcp",
        "--dport",
        "7777",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    let trace = Trace::watch(&ns, &[]);
    let tcp = closed_port(
        &ns,
        "127.19.0.1".parse().unwrap(),
        "127.0.0.1:7777".parse().unwrap(),
        2,
    );
    let out = trace.stop();
    assert_eq!(tcp, 0, "the TCP stack sent none of these RSTs");
    let n = rule_packets(&ns.output(&["iptables-legacy", "-L", "INPUT", "-v", "-x", "-n"]));
    assert!(n >= 2, "rule counter: {n}");
    // REJECT exists only in legacy's filter table: named on every kernel.
    assert_netfilter(
        &out,
        &ns,
        "127.19.0.1",
        n,
        "input",
        "iptables-legacy",
        BaseChain::Always("filter", "INPUT"),
    );
}

/// An IPv4 + TCP RST from 127.0.0.1:80 to remote:port (the kernel, or
/// nobody, fills in the checksums: the packet is only traced).
fn rst_packet(remote: [u8; 4], port: u16) -> [u8; 40] {
    let mut pkt = [0u8; 40];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&40u16.to_be_bytes());
    pkt[8] = 64;
    pkt[9] = 6;
    pkt[12..16].copy_from_slice(&[127, 0, 0, 1]);
    pkt[16..20].copy_from_slice(&remote);
    pkt[20..22].copy_from_slice(&80u16.to_be_bytes());
    pkt[22..24].copy_from_slice(&port.to_be_bytes());
    pkt[32] = 5 << 4;
    pkt[33] = 0x04;
    pkt
}

/// Sends `n` RSTs to `remote` on an AF_PACKET socket (SOCK_DGRAM on lo),
/// as userspace IPS and packet tools do; returns the number sent.
fn inject_rsts_packet(ns: &Netns, remote: [u8; 4], n: u16) -> u64 {
    ns.run(move || {
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from(0x0800u16.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a valid NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = 0x0800u16.to_be();
        to.sll_ifindex = lo as i32;
        to.sll_halen = 6;
        let mut sent = 0;
        for i in 0..n {
            let pkt = rst_packet(remote, 6000 + i);
            // SAFETY: buffers valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 40, "sendto: {}", std::io::Error::last_os_error());
            sent += 1;
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        sent
    })
}

/// Sends `n` hand-built RSTs from 127.0.0.1:80 to `remote` on a raw
/// socket, as tcpkill or a userspace IPS do; returns (sent, OutRsts delta).
fn inject_rsts(ns: &Netns, remote: [u8; 4], n: u16) -> (u64, u64) {
    ns.run(move || {
        let before = out_rsts_here();
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket");
        let mut sent = 0;
        for i in 0..n {
            let pkt = rst_packet(remote, 5000 + i);
            let to = SocketAddr::from((remote, 0));
            raw.send_to(&pkt, &to.into()).expect("sendto");
            sent += 1;
        }
        (sent, out_rsts_here() - before)
    })
}

#[test]
fn injected_from_raw_and_packet_sockets() {
    let ns = Netns::new("raw");
    let trace = Trace::watch(&ns, &[]);
    let (sent, tcp) = inject_rsts(&ns, [127, 17, 0, 1], 3);
    let sent_packet = inject_rsts_packet(&ns, [127, 17, 0, 2], 2);
    let out = trace.stop();
    assert_eq!((sent, tcp), (3, 0), "sent by hand, none by the TCP stack");
    for (remote, n) in [("127.17.0.1", sent), ("127.17.0.2", sent_packet)] {
        for e in out.assert_exactly(&ns, remote, n, "injected") {
            assert_eq!(e["local_port"], 80);
            let pid = &e["actor"]["pid"];
            assert_eq!(pid, std::process::id(), "the injector is the actor: {e}");
        }
    }
}

/// Kernels that refuse the BTF tracepoints run the classic tcp_send_reset
/// (reading its record) and the raw net_dev_queue (probe reads): the same
/// RSTs get the same attribution.
#[test]
fn classic_and_raw_builds_attribute_alike() {
    let ns = Netns::new("fallback");
    ns.add_addr("fd72:7374::41/128");
    let trace = Trace::watch_with_env(&ns, &[], ("RSTTRACE_NO_TP_BTF", "1"));
    let closed4 = closed_port(
        &ns,
        "127.41.0.1".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        3,
    );
    let closed6 = closed_port(
        &ns,
        "fd72:7374::41".parse().unwrap(),
        "[::1]:9".parse().unwrap(),
        3,
    );
    let aborted = abort_on_close(&ns, "127.41.0.2", 2);
    let (injected, _) = inject_rsts(&ns, [127, 41, 0, 3], 2);
    let out = trace.stop();
    for e in out.assert_exactly(&ns, "127.41.0.1", closed4, "closed-port") {
        assert_eq!(
            (&e["local_ip"], &e["local_port"]),
            (&"127.0.0.1".into(), &9.into())
        );
    }
    for e in out.assert_exactly(&ns, "fd72:7374::41", closed6, "closed-port") {
        assert_eq!(
            (&e["family"], &e["local_ip"]),
            (&"ipv6".into(), &"::1".into())
        );
    }
    out.assert_exactly(&ns, "127.41.0.2", aborted, "abort-on-close");
    out.assert_exactly(&ns, "127.41.0.3", injected, "injected");
}

/// A connect from `client` (IPv4, any port) to `to`, given up after
/// 300 ms: before the SYN's first retransmission (1 s), so one SYN left.
fn connect_briefly(client: &str, to: &str) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&format!("{client}:0").parse::<SocketAddr>().unwrap().into())?;
    let to: SocketAddr = to.parse().unwrap();
    s.connect_timeout(&to.into(), Duration::from_millis(300))
}

/// Silent drops: no RST, but the peer sees the same failure. Counted per
/// remote IP in the summary's `drops`, with where they were dropped.
#[test]
fn netfilter_drops_are_counted_per_remote() {
    netfilter_drops("drop", 27, None);
}

/// The classic build of the kfree_skb program (kernels where a raw
/// tracepoint's program can be preempted) counts the same drops.
#[test]
fn netfilter_drops_are_counted_by_the_classic_build() {
    netfilter_drops("dropc", 49, Some(("RSTTRACE_NO_TP_BTF", "1")));
}

/// Two clients, 127.`octet`.0.1 and .2, whose SYNs an nft rule and an
/// iptables-legacy rule drop.
fn netfilter_drops(tag: &str, octet: u8, env: Option<(&str, &str)>) {
    let ns = Netns::new(tag);
    let (c1, c2) = (format!("127.{octet}.0.1"), format!("127.{octet}.0.2"));
    ns.exec(&["nft", "add table inet rsttrace_t"]);
    ns.exec(&[
        "nft",
        "add chain inet rsttrace_t in { type filter hook input priority 0 ; }",
    ]);
    ns.exec(&[
        "nft",
        &format!("add rule inet rsttrace_t in ip saddr {c1} tcp dport 7777 counter drop"),
    ]);
    ns.exec(&[
        "iptables-legacy",
        "-A",
        "INPUT",
        "-s",
        &c2,
        "-p",
        "tcp",
        "--dport",
        "7777",
        "-j",
        "DROP",
    ]);
    let trace = match env {
        Some(var) => Trace::watch_with_env(&ns, &[], var),
        None => Trace::watch(&ns, &[]),
    };
    let clients = [c1.clone(), c2.clone()];
    ns.run(move || {
        for client in clients {
            // A SYN into the void: the connect times out.
            let err = connect_briefly(&client, "127.0.0.1:7777").expect_err("dropped");
            assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        }
    });
    let out = trace.stop();
    let nft = rule_packets(&ns.output(&["nft", "list", "chain", "inet", "rsttrace_t", "in"]));
    let legacy = ns.output(&["iptables-legacy", "-L", "INPUT", "-v", "-x", "-n"]);
    let legacy: u64 = legacy
        .lines()
        .find(|l| l.contains("DROP") && l.contains(c2.as_str()))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(nft >= 1 && legacy >= 1, "rules matched: {nft} {legacy}");
    let drops = out.summary["drops"].as_array().unwrap();
    if !support::kernel_names_netfilter_drops() {
        // Before 5.17 a netfilter drop looks like any other drop: none is
        // reported, rather than a wrong one.
        assert!(drops.is_empty(), "{drops:?}");
        assert_eq!(out.summary["drops_total"], 0);
        return;
    }
    for (ip, n) in [(c1.as_str(), nft), (c2.as_str(), legacy)] {
        let d = out.drops_to(ip);
        assert_eq!(d["total"], n, "{d}");
        assert_eq!(d["by_cause"], serde_json::json!({"netfilter-drop": n}));
        assert!(!d["where"].as_object().unwrap().is_empty(), "{d}");
    }
    assert!(out.rsts_to(&c1).is_empty() && out.rsts_to(&c2).is_empty());
}

/// A RST the TCP stack sends but an OUTPUT rule drops never reaches the
/// peer. It is still counted by its cause (the stack sent it, and OutRsts
/// counts it), and the drop shows toward the same peer: together they say
/// the peer never saw it. Coverage differs by kernel: from 6.10
/// tcp_send_reset counts each stack RST for coverage as it is sent, so
/// this one counts as having left; before, only the egress hook counts,
/// and the RST never reached a device.
#[test]
fn rst_dropped_on_output_is_counted_by_cause_and_as_a_drop() {
    let ns = Netns::new("outdrop");
    let client = "127.54.0.1";
    ns.exec(&["nft", "add table inet rsttrace_o"]);
    ns.exec(&[
        "nft",
        "add chain inet rsttrace_o out { type filter hook output priority 0 ; }",
    ]);
    ns.exec(&[
        "nft",
        &format!("add rule inet rsttrace_o out ip daddr {client} tcp flags rst counter drop"),
    ]);
    let wire = support::wire::Wire::capture(&ns);
    let trace = Trace::start_in(Some(&ns), &["--netns", "self"]);
    let sent = ns.run(move || {
        let before = out_rsts_here();
        // One SYN, so one RST.
        let err = connect_briefly(client, "127.0.0.1:9").expect_err("the refusal was dropped");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        out_rsts_here() - before
    });
    let out = trace.stop();
    // Reported, and none on the wire.
    out.assert_events_match_wire(&ns, &wire.stop(), sent);
    let dropped = rule_packets(&ns.output(&["nft", "list", "chain", "inet", "rsttrace_o", "out"]));
    assert!(sent >= 1, "OutRsts delta in the namespace: {sent}");
    assert_eq!(dropped, sent, "every RST the stack sent was dropped");
    out.assert_exactly(&ns, client, sent, "closed-port");
    if support::kernel_names_netfilter_drops() {
        let d = out.drops_to(client);
        assert_eq!(d["total"], sent, "{d}");
    }
    let coverage = &out.summary["coverage"];
    let left = if support::send_reset_has_reason() {
        sent
    } else {
        0
    };
    assert_eq!(coverage["egress_rsts"], left, "{coverage}");
    assert_eq!(coverage["by_tcp_stack"], left, "{coverage}");
}

/// A REJECT rule's answer that an OUTPUT rule drops: at OUTPUT the RST has
/// neither a socket nor a device, and its namespace comes from its route.
/// A sidecar (`--netns self`) sees both drops toward the peer, the RST and
/// the SYN it answered (the peer got no answer), and no RST sent.
#[test]
fn reject_answer_dropped_on_output_is_in_the_sidecars_namespace() {
    let ns = Netns::new("rejdrop");
    let client = "127.56.0.1";
    let nft = |args: &str| ns.exec(&["nft", args]);
    nft("add table inet rsttrace_rd");
    nft("add chain inet rsttrace_rd in { type filter hook input priority 0 ; }");
    nft("add chain inet rsttrace_rd out { type filter hook output priority 0 ; }");
    nft(&format!(
        "add rule inet rsttrace_rd in ip saddr {client} tcp dport 7 counter reject with tcp reset"
    ));
    nft(&format!(
        "add rule inet rsttrace_rd out ip daddr {client} tcp flags rst counter drop"
    ));
    let wire = support::wire::Wire::capture(&ns);
    let trace = Trace::start_in(Some(&ns), &["--netns", "self"]);
    ns.run(move || {
        let err = connect_briefly(client, "127.0.0.1:7").expect_err("the answer was dropped");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    });
    let out = trace.stop();
    out.assert_events_match_wire(&ns, &wire.stop(), 0);
    let chain =
        |c: &str| rule_packets(&ns.output(&["nft", "list", "chain", "inet", "rsttrace_rd", c]));
    let (rejected, dropped) = (chain("in"), chain("out"));
    assert!(rejected >= 1, "SYNs rejected: {rejected}");
    assert_eq!(dropped, rejected, "every answer was dropped");
    assert!(
        out.rsts_to(client).is_empty(),
        "no RST left: {:?}",
        out.rsts
    );
    assert!(out.remote(client).is_none(), "{}", out.summary);
    if support::kernel_names_netfilter_drops() {
        let d = out.drops_to(client);
        assert_eq!(d["total"], rejected + dropped, "{d}");
    }
}

/// A security agent that blocks a peer with a firewall rule: the rule is
/// added while rsttrace runs, so its generation names the process, and
/// RSTs the rule sends carry it, its table and chain, and the label.
#[test]
fn reject_rule_added_by_a_security_agent_is_attributed_to_it() {
    let dir = std::env::temp_dir().join(format!("rsttrace-nftagent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nft (nftables) is installed");
    let agent = dir.join("crowdsec");
    std::fs::copy(&nft, &agent).unwrap();
    let trace = Trace::start(&[]);
    // A namespace created while tracing: rsttrace follows its ruleset
    // within a second.
    let ns = Netns::new("nftagent");
    let wire = support::wire::Wire::capture(&ns);
    thread::sleep(Duration::from_millis(2500));
    let agent_str = agent.to_str().unwrap().to_string();
    for cmd in [
        "add table inet crowdsec_blocklist",
        "add chain inet crowdsec_blocklist in { type filter hook input priority -10 ; }",
        "add rule inet crowdsec_blocklist in ip saddr 127.31.0.1 counter reject with tcp reset",
        "add rule inet crowdsec_blocklist in ip saddr 127.31.0.2 tcp dport 443 drop",
    ] {
        ns.exec(&[&agent_str, cmd]);
    }
    let tcp = closed_port(
        &ns,
        "127.31.0.1".parse().unwrap(),
        "127.0.0.1:443".parse().unwrap(),
        2,
    );
    // A silent drop by the agent's rule: its author shows on the drop too.
    ns.run(|| {
        let _ = connect_briefly("127.31.0.2", "127.0.0.1:443");
    });
    let out = trace.stop();
    out.assert_events_match_wire(&ns, &wire.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
    // Drops are counted from 5.17 on (see netfilter_drops_are_counted_per_remote).
    if support::kernel_names_netfilter_drops() {
        let drop = out.summary["drops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["remote_ip"] == "127.31.0.2")
            .cloned()
            .unwrap_or_else(|| panic!("no drop entry: {}", out.summary));
        assert_eq!(drop["author"]["comm"], "crowdsec", "{drop}");
        assert_eq!(drop["author"]["agent"], "CrowdSec", "{drop}");
    }
    assert_eq!(tcp, 0);
    let n = rule_packets(&ns.output(&["nft", "list", "chain", "inet", "crowdsec_blocklist", "in"]));
    assert!(n >= 2, "rule counter: {n}");
    for e in out.assert_exactly(&ns, "127.31.0.1", n, "netfilter-reject") {
        let nf = &e["netfilter"];
        assert_eq!(nf["author"]["comm"], "crowdsec", "{e}");
        assert_eq!(nf["author"]["agent"], "CrowdSec", "{e}");
        assert_eq!(nf["table"], "crowdsec_blocklist", "{e}");
        assert_eq!(nf["chain"], "in", "{e}");
        assert_eq!(e["labels"], serde_json::json!(["security-agent"]), "{e}");
    }
    let changes = out.summary["ruleset_changes"].as_array().unwrap();
    assert!(
        changes.iter().any(|g| g["netns"] == ns.inode()
            && g["comm"] == "crowdsec"
            && g["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["what"] == "add rule" && c["verdict"] == "reject")),
        "{changes:?}"
    );
}

/// nft `reject` in the netdev family (ingress on the device) builds its
/// RST outside nf_send_reset and hands it straight to the device.
#[test]
fn netfilter_reject_nftables_netdev_ingress() {
    let ns = Netns::new("netdev");
    ns.exec(&["nft", "add table netdev rsttrace_t"]);
    ns.exec(&[
        "nft",
        "add chain netdev rsttrace_t ing { type filter hook ingress device lo priority 0 ; }",
    ]);
    ns.exec(&[
        "nft",
        "add rule netdev rsttrace_t ing ip saddr 127.39.0.1 tcp dport 7777 counter reject with tcp reset",
    ]);
    let trace = Trace::watch(&ns, &[]);
    // On loopback the client does not act on this RST (seen on 6.18: the
    // connect times out), so each attempt gives up after 300 ms, before the
    // SYN is sent again: one RST per attempt.
    let tcp = ns.run(|| {
        let before = out_rsts_here();
        for _ in 0..2 {
            let _ = connect_briefly("127.39.0.1", "127.0.0.1:7777");
        }
        out_rsts_here() - before
    });
    let out = trace.stop();
    assert_eq!(tcp, 0, "the TCP stack sent none of these RSTs");
    let n = rule_packets(&ns.output(&["nft", "list", "chain", "netdev", "rsttrace_t", "ing"]));
    assert!(n >= 2, "rule counter: {n}");
    // Built outside nf_send_reset: the netdev reject is named by hook only.
    assert_netfilter(
        &out,
        &ns,
        "127.39.0.1",
        n,
        "ingress",
        "nftables",
        BaseChain::Null,
    );
    let drops = out.summary["drops"].as_array().unwrap();
    assert!(
        !drops.iter().any(|d| d["remote_ip"] == "127.39.0.1"),
        "{drops:?}"
    );
}

/// A router namespace rejects a forwarded connection: client -- router --
/// server over veth pairs (IPv6 ULA addresses inside the test's own
/// namespaces), with the reject rule in the router's forward chain.
#[test]
fn netfilter_reject_in_the_forward_hook() {
    let client = Netns::new("fwd-c");
    let router = Netns::new("fwd-r");
    let server = Netns::new("fwd-s");
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    ip(&[
        "link",
        "add",
        "rt-c",
        "netns",
        &client.name,
        "type",
        "veth",
        "peer",
        "name",
        "rt-rc",
        "netns",
        &router.name,
    ]);
    ip(&[
        "link",
        "add",
        "rt-s",
        "netns",
        &server.name,
        "type",
        "veth",
        "peer",
        "name",
        "rt-rs",
        "netns",
        &router.name,
    ]);
    for (ns, dev, addr) in [
        (&client, "rt-c", "fd72:7374:c::1/64"),
        (&router, "rt-rc", "fd72:7374:c::2/64"),
        (&router, "rt-rs", "fd72:7374:5::2/64"),
        (&server, "rt-s", "fd72:7374:5::1/64"),
    ] {
        ip(&["-n", &ns.name, "addr", "add", addr, "dev", dev, "nodad"]);
        ip(&["-n", &ns.name, "link", "set", dev, "up"]);
    }
    ip(&[
        "-n",
        &client.name,
        "route",
        "add",
        "default",
        "via",
        "fd72:7374:c::2",
    ]);
    ip(&[
        "-n",
        &server.name,
        "route",
        "add",
        "default",
        "via",
        "fd72:7374:5::2",
    ]);
    router.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    router.exec(&["nft", "add table inet rsttrace_t"]);
    router.exec(&[
        "nft",
        "add chain inet rsttrace_t forwarded { type filter hook forward priority 0 ; }",
    ]);
    router.exec(&[
        "nft",
        "add rule inet rsttrace_t forwarded ip6 saddr fd72:7374:c::1 tcp dport 7777 counter reject with tcp reset",
    ]);
    let trace = Trace::watch(&router, &[]);
    let tcp = closed_port(
        &client,
        "fd72:7374:c::1".parse().unwrap(),
        "[fd72:7374:5::1]:7777".parse().unwrap(),
        2,
    );
    let out = trace.stop();
    assert_eq!(tcp, 0, "the client's TCP stack sent no RST");
    let n =
        rule_packets(&router.output(&["nft", "list", "chain", "inet", "rsttrace_t", "forwarded"]));
    assert!(n >= 2, "rule counter: {n}");
    // The RST leaves the router: its namespace, not the client's.
    assert_netfilter(
        &out,
        &router,
        "fd72:7374:c::1",
        n,
        "forward",
        "nftables",
        BaseChain::WhereReadable("rsttrace_t", "forwarded"),
    );
}

/// A kernel module loaded for one test and removed after it (even when
/// the test fails), through the raw syscalls: no tools needed in the VM.
struct TestModule {
    name: &'static str,
}

impl TestModule {
    fn load(path: &str, name: &'static str, params: &str) -> Self {
        // A run that died half-way may have left it loaded.
        Self::remove(name);
        let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let params = std::ffi::CString::new(params).unwrap();
        // SAFETY: a valid fd and a NUL-terminated string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                params.as_ptr(),
                0,
            )
        };
        assert_eq!(rc, 0, "loading {path}: {}", std::io::Error::last_os_error());
        TestModule { name }
    }

    fn param(&self, p: &str) -> u64 {
        let path = format!("/sys/module/{}/parameters/{p}", self.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().expect("a number")
    }

    fn remove(name: &str) {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: a NUL-terminated string.
        unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    }
}

impl Drop for TestModule {
    fn drop(&mut self) {
        Self::remove(self.name);
    }
}

/// A RST built by a kernel module (in-kernel IPS modules do this): neither
/// the TCP stack nor netfilter's REJECT sent it, so it is `injected`, named
/// after the module, with no actor (it runs in whatever context the SYN
/// arrived in). The module (tests/kmod) answers SYNs to one port.
#[test]
#[ignore = "loads a test module built for the running kernel: `cargo xtask vm-test` builds \
            it and runs this test on the kernels it can build it for"]
fn injected_by_a_kernel_module() {
    let ko = std::env::var("RSTTRACE_TEST_MODULE").expect(
        "RSTTRACE_TEST_MODULE: the path of rst_inject_test.ko (cargo xtask vm-test sets it)",
    );
    let ns = Netns::new("kmod");
    let module = TestModule::load(&ko, "rst_inject_test", "port=7801");
    let trace = Trace::watch(&ns, &[]);
    let stack_rsts = support::refused_connects(
        &ns,
        "127.52.0.1".parse().unwrap(),
        "127.0.0.1:7801".parse().unwrap(),
        3,
    );
    let out = trace.stop();
    let sent = module.param("sent");
    assert_eq!(stack_rsts, 0, "the module answered, not the TCP stack");
    assert!(
        sent >= 3,
        "the module sent {sent} RSTs for 3 refused connects"
    );
    for e in out.assert_exactly(&ns, "127.52.0.1", sent, "injected") {
        assert_eq!(e["module"], "rst_inject_test", "{e}");
        assert!(e.get("actor").is_none_or(|a| a.is_null()), "no actor: {e}");
        assert_eq!(e["local_port"], 7801, "{e}");
    }
}

/// The keep-alive race: the server closes `n` idle connections from
/// `client`, each client's kernel acknowledges the FIN, and the client,
/// not yet aware, sends a request. The server's side is a time-wait socket
/// by then (FIN_WAIT2 substate), which answers new data with a RST: on
/// kernels before 6.10 tcp_send_reset does not fire for it, and the
/// kprobe on tcp_v4_send_reset takes it. Returns the OutRsts delta.
fn data_after_close(ns: &Netns, client: &'static str, n: usize) -> u64 {
    ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut sent, mut tries) = (0, 0);
        while sent < n {
            tries += 1;
            assert!(tries <= 10 * n, "{sent} time-wait sockets in {tries} tries");
            let (mut c, s) = established_with(&listener, client);
            let peer_port = c.local_addr().unwrap().port();
            drop(s);
            if fin_acked(port, peer_port) == Fin2::FullSocket {
                // Closing now makes both sides finish without a RST.
                continue;
            }
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            // The RST makes the client's socket report an error.
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.take_error().unwrap().is_none() {
                assert!(Instant::now() < deadline, "no RST for the late request");
                thread::sleep(Duration::from_millis(5));
            }
            sent += 1;
        }
        out_rsts_here() - before
    })
}

fn established_with(
    listener: &TcpListener,
    client: &str,
) -> (std::net::TcpStream, std::net::TcpStream) {
    let c = connect_from(client.parse().unwrap(), listener.local_addr().unwrap()).unwrap();
    let (s, _) = listener.accept().unwrap();
    (c.into(), s)
}

/// What the server's side became once its FIN was acknowledged.
#[derive(PartialEq, Debug)]
enum Fin2 {
    /// A time-wait socket in its FIN_WAIT2 substate: what the test wants.
    TimeWait,
    /// The full socket kept in FIN_WAIT2 under its keepalive timer: the
    /// kernel does this when the ACK of the FIN is processed while close()
    /// still owns the socket (a slow CPU, the client's ACK not delayed).
    /// New data then gets TCP_ABORT_ON_DATA from the full socket, another
    /// kernel path, for a whole minute.
    FullSocket,
}

/// Waits until the server's side of 127.0.0.1:`port` <-> `peer_port` has
/// its FIN acknowledged: state 05 (FIN_WAIT2) in this thread's
/// /proc/net/tcp, where the timer field tells a time-wait socket (03)
/// from a full one. The client's kernel may delay its ACK of the FIN.
fn fin_acked(port: u16, peer_port: u16) -> Fin2 {
    let (local, remote) = (format!(":{port:04X}"), format!(":{peer_port:04X}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
        let fin2 = tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5 && f[1].ends_with(&local) && f[2].ends_with(&remote) && f[3] == "05").then(
                || match f[5].starts_with("03:") {
                    true => Fin2::TimeWait,
                    false => Fin2::FullSocket,
                },
            )
        });
        if let Some(fin2) = fin2 {
            return fin2;
        }
        assert!(
            Instant::now() < deadline,
            "the client never acknowledged the server's FIN: {tcp}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn data_after_close_on_a_time_wait_socket() {
    let ns = Netns::new("late");
    let trace = Trace::watch(&ns, &[]);
    let sent = data_after_close(&ns, "127.53.0.1", 3);
    let out = trace.stop();
    assert_eq!(sent, 3, "OutRsts delta in the namespace");
    for e in out.assert_exactly(&ns, "127.53.0.1", sent, "data-after-close") {
        assert_eq!(
            e["kernel_reason"],
            support::expected_reason("TCP_TIMEWAIT_SOCKET"),
            "{e}"
        );
        assert_eq!(e["local_ip"], "127.0.0.1");
        // Sent in softirq, on behalf of the peer: nobody to name.
        assert!(e.get("actor").is_none_or(|a| a.is_null()), "no actor: {e}");
    }
}
