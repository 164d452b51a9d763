//! RSTs the TCP stack sends, each cause in its own namespace from its own
//! remote address: closed ports, aborts, linger, disconnect, sockets
//! killed, keepalive, data after close, and all of them at once. Tcp
//! OutRsts of the namespace and the packets that left it are the truth.

mod support;

use std::{net::TcpListener, thread};

use support::{Netns, Trace, connect_from, out_rsts_here, rule_packets, scenario::*};

#[test]
fn closed_port_ipv4() {
    let ns = Netns::new("closed4");
    let trace = Trace::watch(&ns, &[]);
    let sent = closed_port(&ns, "127.3.0.1", "127.0.0.1:9", 5);
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
    let sent = closed_port(&ns, "fd72:7374::3", "[::1]:9", 4);
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
    closed_port(&client, "fd72:7374:d::1", "[fd72:7374:d::2]:9", 7);
    closed_port(&client, "10.251.0.1", "10.251.0.2:9", 5);
    // And on the server's own loopback.
    let sent = closed_port(&server, "fd72:7374:e::3", "[::1]:9", 3);
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
    let sent: u64 = (1..=24)
        .map(|i| closed_port(&ns, &format!("127.58.0.{i}"), "127.0.0.1:9", 2))
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
    let sent = closed_port(&ns, "127.6.0.1", "127.0.0.1:9", 7);
    let out = trace.stop();
    assert!(sent >= 7, "OutRsts delta: {sent}");
    assert!(out.rsts.is_empty(), "--summary-only printed events");
    let entry = out.remote("127.6.0.1").expect("remote in summary");
    assert_eq!(entry["total"], sent);
    assert_eq!(entry["by_cause"], serde_json::json!({"closed-port": sent}));
    assert!(out.summary["total"].as_u64().unwrap() >= sent);
}

#[test]
fn socket_killed_by_sock_diag_destroy() {
    let ns = Netns::new("killed");
    let trace = Trace::watch(&ns, &[]);
    let (sent, kept) = support::scenario::socket_killed_kept(&ns, "127.7.0.1", 2, which_ss());
    let out = trace.stop();
    drop(kept);
    assert_eq!(sent, 2, "OutRsts delta in the namespace");
    let evs = out.assert_exactly(&ns, "127.7.0.1", sent, "socket-killed");
    for e in evs {
        assert_eq!(e["kernel_reason"], support::expected_reason("TCP_STATE"));
        // The destroying process is the actor, not the socket's owner.
        assert_eq!(e["actor"]["comm"], "ss", "actor of {e}");
        // The owner: this test process, which holds the destroyed sockets
        // until the trace stops (a holder that closed them before rsttrace
        // read the event is not found: /proc no longer lists them).
        assert_eq!(e["owner"]["pid"], std::process::id(), "owner of {e}");
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
            closed_port(ns, c, "127.0.0.1:9", 4)
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
            closed_port(ns, c, "[::1]:9", 2)
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
            let tcp = closed_port(ns, c, "127.0.0.1:7", 3);
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

/// `n` connections from `client` wait in a listener's accept queue, never
/// accepted; `close` closes the listener. Returns the listening port and
/// the OutRsts delta; every client must have been reset.
fn listener_closed(
    ns: &Netns,
    client: &'static str,
    n: usize,
    close: impl FnOnce(TcpListener) + Send + 'static,
) -> (u16, u64) {
    ns.run(move || {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let clients: Vec<std::net::TcpStream> = (0..n)
            .map(|_| {
                connect_from(client.parse().unwrap(), server)
                    .unwrap()
                    .into()
            })
            .collect();
        close(listener);
        for c in clients {
            assert_reset(c);
        }
        (server.port(), out_rsts_here() - before)
    })
}

/// A server closes its listening socket with connections still queued:
/// each is reset, and the RSTs name the listener, not an abortive close
/// (they were once `linger-abort`, sending the operator the wrong way).
#[test]
fn listener_closed_with_connections_in_its_accept_queue() {
    let ns = Netns::new("lclosed");
    let trace = Trace::watch(&ns, &[]);
    let (port, sent) = listener_closed(&ns, "127.60.0.1", 4, drop);
    let out = trace.stop();
    assert_eq!(sent, 4, "OutRsts delta in the namespace");
    for e in out.assert_exactly(&ns, "127.60.0.1", sent, "listener-closed") {
        assert_eq!(e["local_port"], port, "{e}");
        assert_eq!(e["actor"]["pid"], std::process::id(), "{e}");
        let l = &e["listener"];
        assert_eq!(l["port"], port, "{e}");
        assert_eq!(l["pid"], std::process::id(), "{e}");
        assert_eq!(l["comm"], e["actor"]["comm"], "{e}");
    }
}

/// The process holding the listener exits with connections queued: the
/// RSTs come from its exit path, and name it.
#[test]
fn listener_closed_when_its_process_exits() {
    let ns = Netns::new("lexit");
    let trace = Trace::watch(&ns, &[]);
    let (port, sent, child) = ns.run(|| {
        let before = out_rsts_here();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let clients: Vec<std::net::TcpStream> = (0..3)
            .map(|_| {
                connect_from("127.61.0.1".parse().unwrap(), server)
                    .unwrap()
                    .into()
            })
            .collect();
        // A child that holds the listener alone: it exits once the
        // parent has closed its own copy (only async-signal-safe calls
        // after fork), so the last close is the child's exit.
        let mut pipe = [0i32; 2];
        // SAFETY: a valid array of two fds.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child calls read and _exit only.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            let mut b = 0u8;
            // SAFETY: a valid one-byte buffer.
            unsafe {
                libc::read(pipe[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0)
            };
        }
        drop(listener);
        // SAFETY: a valid one-byte buffer; the pipe is ours.
        unsafe {
            libc::write(pipe[1], b"x".as_ptr().cast(), 1);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        for c in clients {
            assert_reset(c);
        }
        (server.port(), out_rsts_here() - before, child as u32)
    });
    let out = trace.stop();
    assert_eq!(sent, 3, "OutRsts delta in the namespace");
    for e in out.assert_exactly(&ns, "127.61.0.1", sent, "listener-closed") {
        assert_eq!(e["local_port"], port, "{e}");
        assert_eq!(e["actor"]["pid"], child, "the exiting process: {e}");
        assert_eq!(e["listener"]["pid"], child, "{e}");
        assert_eq!(e["listener"]["port"], port, "{e}");
    }
}

/// A server stops listening; connections to its port after that are
/// refused with RSTs that name it and when it went, apart from a port
/// nobody listened on during the trace.
#[test]
fn closed_port_that_had_a_listener_names_it() {
    let ns = Netns::new("lgone");
    let trace = Trace::watch(&ns, &[]);
    // Listening for longer than rsttrace's one-second look at listeners.
    let port = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        thread::sleep(std::time::Duration::from_millis(2500));
        l.local_addr().unwrap().port()
    });
    let refused = closed_port(&ns, "127.62.0.1", &format!("127.0.0.1:{port}"), 3);
    let never = closed_port(&ns, "127.62.0.2", "127.0.0.1:9", 2);
    let out = trace.stop();
    for e in out.assert_exactly(&ns, "127.62.0.1", refused, "closed-port") {
        let l = &e["listener"];
        assert_eq!(l["port"], port, "{e}");
        assert_eq!(l["pid"], std::process::id(), "the test held it: {e}");
        assert!(l["comm"].is_string() && l["gone_at"].is_string(), "{e}");
    }
    for e in out.assert_exactly(&ns, "127.62.0.2", never, "closed-port") {
        assert!(e.get("listener").is_none(), "nobody listened on 9: {e}");
    }
}

/// A listener whose accept queue is full, with `tcp_abort_on_overflow=1`
/// in its namespace, answers each further completed handshake with a RST:
/// `listen-overflow`, naming the listener, its holder and its backlog, not
/// `invalid-segment`. The handshakes are held as requests with
/// TCP_DEFER_ACCEPT (on loopback the client's ACK would otherwise arrive
/// inside connect(), one at a time, never meeting a full queue), while
/// the backlog is large enough for the SYN queue; then the backlog drops
/// to 1 (listen() again) and each client's first data completes its
/// handshake: two children fill the queue (full is more than the
/// backlog), every later one is reset.
#[test]
fn listen_overflow_with_tcp_abort_on_overflow() {
    listen_overflow("loverflow", 63, &[], false);
}

/// The same on a device with tc egress programs (a Cilium or Calico host),
/// where rsttrace reads a full socket's RSTs to find those a program made:
/// from 6.13 the listener owns its reset, which is still the stack's own,
/// counted once (it was counted again as `injected`).
#[test]
fn listen_overflow_on_a_device_with_egress_programs() {
    listen_overflow("loverflowx", 67, &[], true);
}

/// The same, seen by the classic tracepoint build (kernels without BTF
/// tracepoints): the record holds the listener's own ends, the segment the
/// connection's.
#[test]
fn listen_overflow_seen_by_the_classic_build() {
    listen_overflow("loverflowc", 65, &["--debug-no-tp-btf"], false);
}

/// Clients 127.`octet`.0.2 fill the queue, 127.`octet`.0.1 overflow it;
/// `egress_filter`: on a loopback with a tc egress filter that passes all.
fn listen_overflow(tag: &str, octet: u8, extra: &[&str], egress_filter: bool) {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    const N: usize = 4;
    // 'static: the scenario runs on the namespace's thread.
    let fill_ip: &'static str = format!("127.{octet}.0.2").leak();
    let over_ip: &'static str = format!("127.{octet}.0.1").leak();
    let ns = Netns::new(tag);
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_abort_on_overflow", "1").unwrap());
    if egress_filter {
        ns.exec(&["tc", "qdisc", "add", "dev", "lo", "clsact"]);
        // Classic BPF, direct action: `ret #0`, TC_ACT_OK for every packet.
        ns.exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            "lo",
            "egress",
            "bpf",
            "da",
            "bytecode",
            "1,6 0 0 0",
        ]);
    }
    let trace = Trace::watch(&ns, extra);
    let path = format!("/run/netns/{}", ns.name);
    let mut args = vec!["--netns", path.as_str()];
    args.extend_from_slice(extra);
    let text = Trace::start_text_in(None, &args);
    let (port, sent, listener, fill) = ns.run(move || {
        let before = out_rsts_here();
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let secs: libc::c_int = 30;
        // SAFETY: a valid int option on our own socket.
        let r = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            r,
            0,
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        );
        l.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        l.listen(16).unwrap();
        let server = l.local_addr().unwrap().as_socket().unwrap();
        let connect = |from: &str| -> Vec<std::net::TcpStream> {
            (0..if from == fill_ip { 2 } else { N })
                .map(|_| connect_from(from.parse().unwrap(), server).unwrap().into())
                .collect()
        };
        let (mut fill, mut over) = (connect(fill_ip), connect(over_ip));
        l.listen(1).unwrap();
        // Listening for longer than rsttrace's one-second look at listeners.
        thread::sleep(std::time::Duration::from_millis(2500));
        for c in fill.iter_mut().chain(over.iter_mut()) {
            c.write_all(b"x").unwrap();
        }
        for c in over {
            assert_reset(c);
        }
        (server.port(), out_rsts_here() - before, l, fill)
    });
    // Queued children and the listener stay open until both traces stop.
    let (raw, _) = text.stop_raw();
    let out = trace.stop();
    drop((listener, fill));
    assert_eq!(sent, N as u64, "OutRsts delta in the namespace");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let comm = comm.trim_end();
    for e in out.assert_exactly(&ns, over_ip, sent, "listen-overflow") {
        assert_eq!(e["local_port"], port, "{e}");
        assert_eq!(e["local_ip"], "127.0.0.1", "{e}");
        assert_eq!(e["state"], "TCP_LISTEN", "{e}");
        assert_eq!(
            e["kernel_reason"],
            support::expected_reason("INVALID_SYN"),
            "{e}"
        );
        assert!(e["actor"].is_null(), "sent in softirq: no actor: {e}");
        let l = &e["listener"];
        assert_eq!(l["port"], port, "{e}");
        assert_eq!(l["pid"], std::process::id(), "the test holds it: {e}");
        assert_eq!(l["comm"], comm, "{e}");
        assert_eq!(l["backlog"], 1, "{e}");
        assert!(l["gone_at"].is_null(), "still listening: {e}");
    }
    assert!(
        out.rsts_to(fill_ip).is_empty(),
        "the queued ones were not reset"
    );
    // The kernel drops each reset segment too (TCP_LISTEN_OVERFLOW, 6.x):
    // answered with a RST, it is no silent drop.
    let drops = out.summary["drops"].as_array().expect("drops array");
    assert!(
        !drops.iter().any(|d| d["remote_ip"] == over_ip),
        "reset segments counted as silent drops too: {drops:?}"
    );
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!(" listen-overflow   to {over_ip}:")))
        .collect();
    assert_eq!(lines.len(), N, "{text}");
    let pid = std::process::id();
    for l in &lines {
        assert!(
            l.contains(&format!("127.0.0.1:{port}"))
                && l.contains(&format!(
                    "listener={pid}/{comm} accept-queue-full backlog=1"
                )),
            "{l}"
        );
    }
    let diagnosis = format!(
        "listen-overflow ({N} of {N}): {comm}'s accept queue on port {port} was full (backlog 1): \
         {N} connections were reset (tcp_abort_on_overflow=1)"
    );
    assert!(text.contains(&diagnosis), "{diagnosis:?} in:\n{text}");
}
