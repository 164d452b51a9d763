//! Segments dropped without a RST: netfilter drops per remote, and RSTs
//! dropped on their way out.

mod support;

use std::io::ErrorKind;

use support::{Netns, Trace, fdinfo_field, load_program, out_rsts_here, rule_packets, scenario::*};

/// Silent drops: no RST, but the peer sees the same failure. Counted per
/// remote IP in the summary's `drops`, with where they were dropped.
#[test]
fn netfilter_drops_are_counted_per_remote() {
    netfilter_drops("drop", 27, &[]);
}

/// The classic build of the kfree_skb program (kernels where a raw
/// tracepoint's program can be preempted) counts the same drops.
#[test]
fn netfilter_drops_are_counted_by_the_classic_build() {
    netfilter_drops("dropc", 49, &["--debug-no-tp-btf"]);
}

/// Two clients, 127.`octet`.0.1 and .2, whose SYNs an nft rule and an
/// iptables-legacy rule drop.
fn netfilter_drops(tag: &str, octet: u8, extra: &[&str]) {
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
    let trace = Trace::watch(&ns, extra);
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

/// Classic BPF bytecode for `tc filter ... bpf da`: TC_ACT_SHOT (2) for an
/// IPv4 TCP SYN (no ACK) from `src`, TC_ACT_OK (0) for anything else. The
/// packet starts at its Ethernet header at tc ingress.
fn drop_syns_from(src: [u8; 4]) -> String {
    let src = u32::from_be_bytes(src);
    let prog: [(u16, u8, u8, u32); 12] = [
        (0x28, 0, 0, 12),    // ldh [12]: ethertype
        (0x15, 0, 8, 0x800), // IPv4, else pass
        (0x20, 0, 0, 26),    // ld [26]: source address
        (0x15, 0, 6, src),   // from src, else pass
        (0x30, 0, 0, 23),    // ldb [23]: protocol
        (0x15, 0, 4, 6),     // TCP, else pass
        (0xb1, 0, 0, 14),    // ldxb 4*([14]&0xf): IP header length
        (0x50, 0, 0, 27),    // ldb [x+27]: TCP flags
        (0x54, 0, 0, 0x12),  // and #(SYN|ACK)
        (0x15, 1, 0, 0x02),  // SYN alone: drop
        (0x06, 0, 0, 0),     // pass: ret TC_ACT_OK
        (0x06, 0, 0, 2),     // drop: ret TC_ACT_SHOT
    ];
    let mut s = prog.len().to_string();
    for (code, jt, jf, k) in prog {
        s.push_str(&format!(",{code} {jt} {jf} {k}"));
    }
    s
}

/// A tc ingress BPF filter on the server's veth drops one client's SYNs:
/// each dropped SYN (the first and its retransmissions, counted by the
/// client's own Tcp OutSegs and RetransSegs) is a `tc-drop` of that
/// client, none of the other client's, whose connection goes through. The
/// filter is a classic program (`bytecode`): the kernel gives it no id,
/// name or tag, and no process holds it.
#[test]
fn tc_ingress_bpf_drops_are_counted_per_remote() {
    let out = tc_drops("tcd", 181, |server, dev| {
        server.exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            dev,
            "ingress",
            "bpf",
            "da",
            "bytecode",
            &drop_syns_from([10, 181, 0, 1]),
        ]);
    });
    let Some((d, syns)) = out else { return };
    assert_eq!(
        d["programs"],
        serde_json::json!([{
            "id": null, "name": null, "tag": null, "attach": "tc-ingress", "device": "rtd181-s",
            "holder": null, "pin": null, "agent": null,
        }]),
        "{d}"
    );
    assert!(syns >= 1);
}

/// The same drop by an eBPF program this test loads, pins under a bpffs
/// of its own and keeps open: named with its id, name and tag (as the
/// kernel gives them for the test's own fd), its pin and this process
/// as its holder.
#[test]
fn tc_ebpf_drops_name_the_program_its_holder_and_pin() {
    let bpffs = support::kit::BpfFs::mount("tce");
    let prog = load_sched_cls_dropping_syns_from([10, 182, 0, 1], "rsttrace_t_drop");
    let pin = bpffs.pin(&prog, "drop_syns");
    let out = tc_drops("tce", 182, |server, dev| {
        server.exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            dev,
            "ingress",
            "bpf",
            "da",
            "object-pinned",
            pin.to_str().unwrap(),
        ]);
    });
    let Some((d, _)) = out else { return };
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        d["programs"],
        serde_json::json!([{
            "id": fdinfo_field(&prog, "prog_id:").parse::<u32>().unwrap(),
            "name": "rsttrace_t_drop",
            "tag": fdinfo_field(&prog, "prog_tag:"),
            "attach": "tc-ingress",
            "device": "rtd182-s",
            "holder": {"pid": std::process::id(), "comm": comm.trim()},
            "pin": pin.to_str().unwrap(),
            "agent": null,
        }]),
        "{d}"
    );
    drop(prog);
}

/// Client 10.`net`.0.1 (dropped by the filter `add_filter` installs on
/// the server's veth ingress) and 10.`net`.0.3 (not dropped) connect to
/// the server 10.`net`.0.2. Returns the dropped client's drops row and
/// the SYNs it sent, or None where the kernel names no tc drop.
fn tc_drops(
    tag: &str,
    net: u8,
    add_filter: impl FnOnce(&Netns, &str),
) -> Option<(serde_json::Value, u64)> {
    let client = Netns::new(&format!("{tag}-c"));
    let server = Netns::new(&format!("{tag}-s"));
    let (dropped, passed, srv) = (
        format!("10.{net}.0.1"),
        format!("10.{net}.0.3"),
        format!("10.{net}.0.2"),
    );
    let (cdev, sdev) = (format!("rtd{net}-c"), format!("rtd{net}-s"));
    support::veth(
        (
            &client,
            &cdev,
            &[&format!("{dropped}/24"), &format!("{passed}/24")],
        ),
        (&server, &sdev, &[&format!("{srv}/24")]),
    );
    server.exec(&["tc", "qdisc", "add", "dev", &sdev, "clsact"]);
    add_filter(&server, &sdev);
    let to = format!("{srv}:7171");
    let listener = server.run({
        let to = to.clone();
        move || std::net::TcpListener::bind(&to).unwrap()
    });
    let trace = Trace::watch(&server, &[]);
    let syns = client.run({
        let (dropped, passed) = (dropped.clone(), passed.clone());
        move || {
            // OutSegs leaves retransmissions out: RetransSegs has them.
            let segs = || support::tcp_mib_here("OutSegs") + support::tcp_mib_here("RetransSegs");
            let before = segs();
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(
                &format!("{dropped}:0")
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
            let to: std::net::SocketAddr = to.parse().unwrap();
            // The first SYN and its retransmissions.
            let err = s
                .connect_timeout(&to.into(), std::time::Duration::from_millis(2500))
                .expect_err("SYNs dropped");
            assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
            drop(s);
            let syns = segs() - before;
            connect_briefly(&passed, &to.to_string()).expect("not dropped");
            syns
        }
    });
    let out = trace.stop();
    drop(listener);
    assert!(syns >= 1, "SYNs the client sent: {syns}");
    let drops = out.summary["drops"].as_array().unwrap();
    if !support::kernel_names_netfilter_drops() {
        // No drop reason before 5.17: no drop is counted.
        assert!(drops.is_empty(), "{drops:?}");
        return None;
    }
    let d = out.drops_to(&dropped).clone();
    assert_eq!(d["total"], syns, "{d}");
    assert_eq!(d["by_cause"], serde_json::json!({"tc-drop": syns}), "{d}");
    assert!(drops.iter().all(|d| d["remote_ip"] != *passed), "{drops:?}");
    assert_eq!(out.summary["drops_total"], syns, "{}", out.summary);
    Some((d, syns))
}

/// An eBPF tc program (BPF_PROG_TYPE_SCHED_CLS) named `name`, returning
/// TC_ACT_SHOT for an IPv4 TCP SYN from `src` and TC_ACT_OK otherwise:
/// the classic program above, in eBPF (LD_ABS/LD_IND read the packet from
/// its Ethernet header, in host order).
fn load_sched_cls_dropping_syns_from(src: [u8; 4], name: &str) -> std::os::fd::OwnedFd {
    let src = u32::from_be_bytes(src) as i32;
    // (code, dst, src, off, imm)
    let prog: [(u8, u8, u8, i16, i32); 18] = [
        (0xbf, 6, 1, 0, 0),      // r6 = r1 (the skb, for LD_ABS)
        (0x28, 0, 0, 0, 12),     // r0 = ethertype
        (0x55, 0, 0, 13, 0x800), // IPv4, else pass
        (0x20, 0, 0, 0, 26),     // r0 = source address
        (0x55, 0, 0, 11, src),   // from src, else pass
        (0x30, 0, 0, 0, 23),     // r0 = protocol
        (0x55, 0, 0, 9, 6),      // TCP, else pass
        (0x30, 0, 0, 0, 14),     // r0 = version and IHL
        (0x57, 0, 0, 0, 0x0f),   // r0 &= 0xf
        (0x67, 0, 0, 0, 2),      // r0 <<= 2: the IP header's length
        (0xbf, 7, 0, 0, 0),      // r7 = r0
        (0x50, 0, 7, 0, 27),     // r0 = TCP flags at [r7 + 14 + 13]
        (0x57, 0, 0, 0, 0x12),   // r0 &= SYN|ACK
        (0x55, 0, 0, 2, 0x02),   // SYN alone: drop, else pass
        (0xb7, 0, 0, 0, 2),      // r0 = TC_ACT_SHOT
        (0x95, 0, 0, 0, 0),      // exit
        (0xb7, 0, 0, 0, 0),      // pass: r0 = TC_ACT_OK
        (0x95, 0, 0, 0, 0),      // exit
    ];
    load_program(3, &prog, name) // BPF_PROG_TYPE_SCHED_CLS
}

/// An accept queue that overflows without tcp_abort_on_overflow: the
/// segment completing the handshake is dropped, and the kernel's own
/// ListenOverflows counter of the namespace says how many. With
/// TCP_DEFER_ACCEPT the late client's handshake waits in the SYN queue
/// until its data comes, after two early clients filled the queue of a
/// backlog-1 listener that never accepts: every data segment it sends
/// (and retransmits) is dropped. From 6.18 (TCP_LISTEN_OVERFLOW) they are
/// `listen-overflow` drops with the port and the listener's process;
/// SYNs dropped for a full queue go through consume_skb, with no reason,
/// on every kernel: this scenario makes none.
#[test]
fn listen_overflow_drops_name_the_listener() {
    let ns = Netns::new("lsnovf");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_abort_on_overflow=0"]);
    let (early, late) = (["127.181.0.1", "127.181.0.2"], "127.181.0.3");
    let listener = ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        defer_accept(&s, 30);
        s.bind(
            &"127.0.0.1:7272"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.listen(1).unwrap();
        s
    });
    let trace = Trace::watch(&ns, &[]);
    // The listener is dumped once a second: seen before the first drop.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (overflows, listen_drops) = ns.run(move || {
        use std::io::Write as _;
        let before = (
            support::kit::tcp_ext_here("ListenOverflows"),
            support::kit::tcp_ext_here("ListenDrops"),
        );
        let connect = |from: &str| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(
                &format!("{from}:0")
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
            s.connect(
                &"127.0.0.1:7272"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
            std::net::TcpStream::from(s)
        };
        let mut waiting = connect(late);
        let mut queued: Vec<_> = early.iter().map(|e| connect(e)).collect();
        for q in &mut queued {
            q.write_all(b"x").unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        waiting.write_all(b"y").unwrap();
        // Its data and a few retransmissions, then no more: an abortive
        // close (its RST is this namespace's own linger-abort).
        std::thread::sleep(std::time::Duration::from_millis(1500));
        socket2::SockRef::from(&waiting)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(waiting);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = (
            support::kit::tcp_ext_here("ListenOverflows"),
            support::kit::tcp_ext_here("ListenDrops"),
        );
        drop(queued);
        (after.0 - before.0, after.1 - before.1)
    });
    let out = trace.stop();
    drop(listener);
    assert!(overflows >= 1, "ListenOverflows delta: {overflows}");
    assert_eq!(listen_drops, overflows, "every drop was an overflow");
    let drops = out.summary["drops"].as_array().unwrap();
    assert!(
        drops
            .iter()
            .all(|d| early.iter().all(|e| d["remote_ip"] != *e)),
        "{drops:?}"
    );
    if !support::kernel_has_drop_reason("TCP_LISTEN_OVERFLOW") {
        // No reason names it: not counted, rather than counted wrong.
        assert!(drops.is_empty(), "{drops:?}");
        return;
    }
    let d = out.drops_to(late);
    assert_eq!(d["total"], overflows, "{d}");
    assert_eq!(
        d["by_cause"],
        serde_json::json!({"listen-overflow": overflows}),
        "{d}"
    );
    let listeners = d["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 1, "{d}");
    let l = &listeners[0];
    assert_eq!(l["port"], 7272, "{l}");
    assert_eq!(l["count"], overflows, "{l}");
    assert_eq!(l["pid"], std::process::id(), "{l}");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(l["comm"], comm.trim(), "{l}");
}

/// TCP_DEFER_ACCEPT (socket2 has no setter): a bare handshake ACK leaves
/// the connection in the SYN queue until data comes.
fn defer_accept(s: &socket2::Socket, secs: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and an int option of its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
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
}

/// A cgroup egress program (cgroup2, BPF_CGROUP_INET_EGRESS) that drops
/// everything its cgroup sends: a client process moved into that cgroup
/// connects, and each SYN it sends (the client namespace's OutSegs and
/// RetransSegs) is a `cgroup-drop` toward the server. The cgroup2
/// hierarchy is mounted by the test itself (this host runs cgroup v1 and
/// v2 side by side; the VMs mount none).
#[test]
fn cgroup_egress_drops_are_counted_per_remote() {
    let client = Netns::new("cgd-c");
    let server = Netns::new("cgd-s");
    let (from, srv) = ("10.186.0.1", "10.186.0.2");
    support::veth(
        (&client, "rtd186-c", &["10.186.0.1/24"]),
        (&server, "rtd186-s", &["10.186.0.2/24"]),
    );
    let cg = support::kit::Cgroup2::new("cgdrop");
    let prog = load_program(
        8,
        &[(0xb7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)],
        "rsttrace_t_cg",
    );
    cg.attach_egress(&prog);
    let listener = server.run(move || std::net::TcpListener::bind("10.186.0.2:7171").unwrap());
    let trace = Trace::watch(&client, &[]);
    let procs = cg.procs();
    let syns = client.run(move || {
        let segs = || support::tcp_mib_here("OutSegs") + support::tcp_mib_here("RetransSegs");
        let before = segs();
        support::kit::connect_in_cgroup(&procs, from, srv, 7171, 2500);
        segs() - before
    });
    let out = trace.stop();
    drop(listener);
    assert!(syns >= 1, "SYNs the client sent: {syns}");
    let drops = out.summary["drops"].as_array().unwrap();
    if !support::kernel_names_netfilter_drops() {
        assert!(drops.is_empty(), "{drops:?}");
        return;
    }
    let d = out.drops_to(srv);
    assert_eq!(d["total"], syns, "{d}");
    assert_eq!(
        d["by_cause"],
        serde_json::json!({"cgroup-drop": syns}),
        "{d}"
    );
    assert_eq!(out.summary["drops_total"], syns, "{}", out.summary);
    // Named with its cgroup, among whatever else the host attached at
    // cgroup egress elsewhere.
    let id: u32 = fdinfo_field(&prog, "prog_id:").parse().unwrap();
    let programs = d["programs"].as_array().expect("programs");
    let ours = programs
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("program {id} not in {d}"));
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        *ours,
        serde_json::json!({
            "id": id,
            "name": "rsttrace_t_cg",
            "tag": fdinfo_field(&prog, "prog_tag:"),
            "attach": "cgroup-egress",
            "cgroup": format!("/{}", cg.dir.file_name().unwrap().to_str().unwrap()),
            "holder": {"pid": std::process::id(), "comm": comm.trim()},
            "pin": null,
            "agent": null,
        }),
        "{d}"
    );
    assert!(
        programs.iter().all(|p| p["attach"] == "cgroup-egress"),
        "{d}"
    );
    drop(prog);
}

/// What the kernel reports of an XDP program's drops: nothing. A generic
/// XDP program returning XDP_DROP for one client's SYNs makes its connect
/// time out, but the kernel frees those packets without a drop reason
/// (`do_xdp_generic`, NOT_SPECIFIED; native XDP has no skb at all): no
/// drop is counted, rather than one under another cause. The XDP reason
/// (`xdp-drop`) marks generic XDP's failed redirects only.
#[test]
fn xdp_drops_have_no_reason_and_are_not_counted() {
    let bpffs = support::kit::BpfFs::mount("xdp");
    let src = i32::from_ne_bytes([10, 187, 0, 1]);
    // (code, dst, src, off, imm): XDP_DROP (1) for an IPv4 TCP SYN from
    // src with a 20-byte IP header, XDP_PASS (2) otherwise.
    let prog = [
        (0x61, 2, 1, 0, 0),  // r2 = data
        (0x61, 3, 1, 4, 0),  // r3 = data_end
        (0xbf, 4, 2, 0, 0),  // r4 = r2
        (0x07, 4, 0, 0, 54), // r4 += Ethernet + IP + TCP headers
        (0x2d, 4, 3, 13, 0), // shorter: pass
        (0x69, 5, 2, 12, 0), // r5 = ethertype (as it lies)
        (0x55, 5, 0, 11, 0x0008),
        (0x71, 5, 2, 23, 0), // r5 = protocol
        (0x55, 5, 0, 9, 6),
        (0x61, 5, 2, 26, 0), // r5 = source address (as it lies)
        (0x55, 5, 0, 7, src),
        (0x71, 5, 2, 14, 0), // r5 = version and IHL
        (0x55, 5, 0, 5, 0x45),
        (0x71, 5, 2, 47, 0),   // r5 = TCP flags
        (0x57, 5, 0, 0, 0x12), // &= SYN|ACK
        (0x55, 5, 0, 2, 0x02), // SYN alone: drop
        (0xb7, 0, 0, 0, 1),    // XDP_DROP
        (0x95, 0, 0, 0, 0),
        (0xb7, 0, 0, 0, 2), // XDP_PASS
        (0x95, 0, 0, 0, 0),
    ];
    let fd = load_program(6, &prog, "rsttrace_t_xdp"); // BPF_PROG_TYPE_XDP
    let pin = bpffs.pin(&fd, "xdp_drop");
    let client = Netns::new("xdp-c");
    let server = Netns::new("xdp-s");
    support::veth(
        (&client, "rtd187-c", &["10.187.0.1/24"]),
        (&server, "rtd187-s", &["10.187.0.2/24"]),
    );
    server.exec(&[
        "ip",
        "link",
        "set",
        "dev",
        "rtd187-s",
        "xdpgeneric",
        "pinned",
        pin.to_str().unwrap(),
    ]);
    let listener = server.run(|| std::net::TcpListener::bind("10.187.0.2:7171").unwrap());
    let trace = Trace::watch(&server, &[]);
    client.run(|| {
        let err = connect_briefly("10.187.0.1", "10.187.0.2:7171").expect_err("SYN dropped");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    });
    let out = trace.stop();
    drop(listener);
    let drops = out.summary["drops"].as_array().unwrap();
    assert!(drops.is_empty(), "{drops:?}");
    assert_eq!(out.summary["drops_total"], 0, "{}", out.summary);
    drop(fd);
}
