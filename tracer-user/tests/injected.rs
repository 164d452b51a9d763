//! RSTs built outside the TCP stack: raw and packet sockets, a kernel
//! module of the tests' own, and a tc egress program of the tests' own.

mod support;

use std::io::{ErrorKind, Read as _, Write as _};

use support::{Netns, Trace, fdinfo_field, load_program, scenario::*};

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
    let trace = Trace::watch(&ns, &["--debug-no-tp-btf"]);
    let closed4 = closed_port(&ns, "127.41.0.1", "127.0.0.1:9", 3);
    let closed6 = closed_port(&ns, "fd72:7374::41", "[::1]:9", 3);
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

/// A tc egress program on the server's veth rewrites the flags of the
/// server's data segments to one client into RST|ACK as they leave (in
/// place: the TCP stack sent a data segment of a full socket, the wire
/// carries a RST). The client's read fails with ECONNRESET; each copy of
/// the segment that left (the first, and the stack's retransmissions of
/// it, counted by the server namespace's RetransSegs) is `injected` with
/// the program named: its id, name and tag as the kernel gives them for
/// the test's own fd, the device, this process as its holder and its pin.
/// The server then aborts with SO_LINGER 0 through the same device: the
/// stack's own RST, `linger-abort`, with no program.
#[test]
fn rst_made_by_a_tc_egress_program_names_the_program() {
    // The BTF build must be the one that ran: a refused one falls back to
    // the raw build without failing the trace.
    let doctor = support::rsttrace_command(None)
        .arg("doctor")
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.contains("net_dev_queue read kernel structures with plain loads")
            && !doctor.contains("net_dev_queue refused"),
        "{doctor}"
    );
    tc_egress_rewrite("tcrst", 214, &[]);
}

/// The same through the raw build of net_dev_queue (probe reads).
#[test]
fn rst_made_by_a_tc_egress_program_in_the_raw_build() {
    tc_egress_rewrite("tcrsr", 215, &["--debug-no-tp-btf"]);
}

fn tc_egress_rewrite(tag: &str, net: u8, extra: &[&str]) {
    const PORT: u16 = 7272;
    let (cli, srv) = (format!("10.{net}.0.1"), format!("10.{net}.0.2"));
    let bpffs = support::kit::BpfFs::mount(tag);
    let prog = load_sched_cls_resetting_data_to(
        cli.parse::<std::net::Ipv4Addr>().unwrap().octets(),
        PORT,
        "rsttrace_t_rst",
    );
    let pin = bpffs.pin(&prog, "reset_data");
    let client = Netns::new(&format!("{tag}-c"));
    let server = Netns::new(&format!("{tag}-s"));
    let (cdev, sdev) = (format!("rtr{net}-c"), format!("rtr{net}-s"));
    support::veth(
        (&client, &cdev, &[&format!("{cli}/24")]),
        (&server, &sdev, &[&format!("{srv}/24")]),
    );
    server.exec(&["tc", "qdisc", "add", "dev", &sdev, "clsact"]);
    server.exec(&[
        "tc",
        "filter",
        "add",
        "dev",
        &sdev,
        "egress",
        "bpf",
        "da",
        "object-pinned",
        pin.to_str().unwrap(),
    ]);
    let to = format!("{srv}:{PORT}");
    let listener = server.run({
        let to = to.clone();
        move || std::net::TcpListener::bind(&to).unwrap()
    });
    let trace = Trace::watch(&server, extra);
    let retrans = || server.run(|| support::tcp_mib_here("RetransSegs"));
    let mut conn = client.run({
        let to = to.clone();
        move || std::net::TcpStream::connect(&to).unwrap()
    });
    let (mut accepted, _) = listener.accept().unwrap();
    let before = retrans();
    accepted.write_all(b"reset by a tc program").unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let err = conn.read(&mut [0u8; 64]).expect_err("reset expected");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    // The stack's own RST now, before a retransmission timer fires again.
    socket2::SockRef::from(&accepted)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(accepted);
    let injected = 1 + retrans() - before;
    let out = trace.stop();
    drop(listener);
    let evs = out.rsts_to(&cli);
    let by_cause = |c: &str| evs.iter().filter(|e| e["cause"] == c).count() as u64;
    assert_eq!(
        (
            by_cause("injected"),
            by_cause("linger-abort"),
            evs.len() as u64
        ),
        (injected, 1, injected + 1),
        "{evs:?}"
    );
    assert_eq!(
        out.remote(&cli).unwrap()["by_cause"],
        serde_json::json!({"injected": injected, "linger-abort": 1}),
        "{}",
        out.summary
    );
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let program = serde_json::json!({
        "id": fdinfo_field(&prog, "prog_id:").parse::<u32>().unwrap(),
        "name": "rsttrace_t_rst",
        "tag": fdinfo_field(&prog, "prog_tag:"),
        "attach": "tc-egress",
        "device": sdev,
        "holder": {"pid": std::process::id(), "comm": comm.trim()},
        "pin": pin.to_str().unwrap(),
        "agent": null,
    });
    for e in &evs {
        assert_eq!(
            (&e["local_ip"], &e["local_port"], &e["remote_port"]),
            (
                &srv.as_str().into(),
                &PORT.into(),
                &conn.local_addr().unwrap().port().into()
            ),
            "{e}"
        );
        assert_eq!(e["netns"], server.inode(), "{e}");
        if e["cause"] == "injected" {
            assert_eq!(e["bpf_program"], program, "{e}");
            assert_eq!(
                e["actor"],
                serde_json::Value::Null,
                "the program, not a process: {e}"
            );
        } else {
            assert_eq!(e.get("bpf_program"), None, "the stack's own: {e}");
        }
    }
    drop(prog);
}

/// An eBPF tc program (BPF_PROG_TYPE_SCHED_CLS) named `name` that sets the
/// TCP flags of IPv4 segments from port `sport` to `dst` with PSH set
/// (data) to RST|ACK, by direct packet access, and passes every packet
/// (TC_ACT_OK). The checksum is left alone: on a veth the TCP stack's
/// segments are CHECKSUM_PARTIAL, which the peer accepts unchecked.
fn load_sched_cls_resetting_data_to(dst: [u8; 4], sport: u16, name: &str) -> std::os::fd::OwnedFd {
    // Header bytes as a little-endian load of them reads them.
    let dst = u32::from_le_bytes(dst) as i32;
    let sport = i32::from(u16::from_le_bytes(sport.to_be_bytes()));
    const PASS: i16 = 19;
    let to_pass = |at: i16| PASS - (at + 1);
    // (code, dst, src, off, imm)
    let prog: [(u8, u8, u8, i16, i32); 21] = [
        (0x61, 2, 1, 76, 0),              // r2 = skb->data
        (0x61, 3, 1, 80, 0),              // r3 = skb->data_end
        (0xbf, 4, 2, 0, 0),               // r4 = r2
        (0x07, 4, 0, 0, 54),              // r4 += Ethernet, IP and TCP headers
        (0x2d, 4, 3, to_pass(4), 0),      // shorter: pass
        (0x69, 5, 2, 12, 0),              // r5 = ethertype
        (0x55, 5, 0, to_pass(6), 0x0008), // IPv4, else pass
        (0x71, 5, 2, 14, 0),              // r5 = version and IHL
        (0x55, 5, 0, to_pass(8), 0x45),   // no IP options, else pass
        (0x71, 5, 2, 23, 0),              // r5 = protocol
        (0x55, 5, 0, to_pass(10), 6),     // TCP, else pass
        (0x61, 5, 2, 30, 0),              // r5 = destination address
        (0x55, 5, 0, to_pass(12), dst),   // to dst, else pass
        (0x69, 5, 2, 34, 0),              // r5 = source port
        (0x55, 5, 0, to_pass(14), sport), // from sport, else pass
        (0x71, 5, 2, 47, 0),              // r5 = TCP flags
        (0x57, 5, 0, 0, 0x08),            // r5 &= PSH
        (0x15, 5, 0, to_pass(17), 0),     // no data: pass
        (0x72, 2, 0, 47, 0x14),           // TCP flags = RST|ACK
        (0xb7, 0, 0, 0, 0),               // pass: r0 = TC_ACT_OK
        (0x95, 0, 0, 0, 0),               // exit
    ];
    load_program(3, &prog, name) // BPF_PROG_TYPE_SCHED_CLS
}

/// A tc ingress program answers one client's SYNs itself, as a BPF
/// dataplane answers a packet it refuses: it turns each SYN into a RST|ACK
/// (ends swapped, ack = seq + 1), sends that back out the device with
/// `bpf_clone_redirect` and drops the SYN. The RST has no socket and the
/// program's frame is on the kernel stack where it leaves: each connect
/// refused is one `injected` RST with the program named by its frame, as
/// attached (tc-ingress of the server's device), this process its holder.
#[test]
fn rst_sent_by_a_tc_program_with_clone_redirect_names_it() {
    const PORT: u16 = 7373;
    let (cli, srv) = ("10.216.0.1", "10.216.0.2");
    let bpffs = support::kit::BpfFs::mount("tccr");
    let prog = load_sched_cls_answering_syns_from(
        cli.parse::<std::net::Ipv4Addr>().unwrap().octets(),
        "rsttrace_t_syn",
    );
    let pin = bpffs.pin(&prog, "answer_syns");
    let client = Netns::new("tccr-c");
    let server = Netns::new("tccr-s");
    let sdev = "rtb216-s";
    support::veth(
        (&client, "rtb216-c", &[&format!("{cli}/24")]),
        (&server, sdev, &[&format!("{srv}/24")]),
    );
    server.exec(&["tc", "qdisc", "add", "dev", sdev, "clsact"]);
    server.exec(&[
        "tc",
        "filter",
        "add",
        "dev",
        sdev,
        "ingress",
        "bpf",
        "da",
        "object-pinned",
        pin.to_str().unwrap(),
    ]);
    let trace = Trace::watch(&server, &[]);
    let ports = client.run(move || {
        (0..2)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                let to: std::net::SocketAddr = format!("{srv}:{PORT}").parse().unwrap();
                let err = s
                    .connect_timeout(&to.into(), std::time::Duration::from_secs(10))
                    .expect_err("refused by the program's RST");
                assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
                s.local_addr().unwrap().as_socket().unwrap().port()
            })
            .collect::<Vec<u16>>()
    });
    let out = trace.stop();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let program = serde_json::json!({
        "id": fdinfo_field(&prog, "prog_id:").parse::<u32>().unwrap(),
        "name": "rsttrace_t_syn",
        "tag": fdinfo_field(&prog, "prog_tag:"),
        "attach": "tc-ingress",
        "device": sdev,
        "holder": {"pid": std::process::id(), "comm": comm.trim()},
        "pin": pin.to_str().unwrap(),
        "agent": null,
    });
    let evs = out.assert_exactly(&server, cli, 2, "injected");
    let mut got: Vec<u16> = evs
        .iter()
        .map(|e| {
            assert_eq!(
                (&e["local_ip"], &e["local_port"]),
                (&srv.into(), &PORT.into()),
                "{e}"
            );
            assert_eq!(e["bpf_program"], program, "{e}");
            assert_eq!(e["actor"], serde_json::Value::Null, "{e}");
            e["remote_port"].as_u64().unwrap() as u16
        })
        .collect();
    got.sort_unstable();
    let mut want = ports;
    want.sort_unstable();
    assert_eq!(got, want);
    drop(prog);
}

/// An eBPF tc program named `name` that answers each IPv4 SYN from `src`
/// with a RST|ACK built in its place (Ethernet, IP and port ends swapped,
/// seq 0, ack the SYN's seq + 1), sent out the device it came in on with
/// `bpf_clone_redirect`, and drops the SYN (TC_ACT_SHOT); every other
/// packet passes. Checksums are left alone: swapping the ends keeps the
/// IP header's, and on a veth the peer takes the TCP one unchecked
/// (CHECKSUM_PARTIAL).
fn load_sched_cls_answering_syns_from(src: [u8; 4], name: &str) -> std::os::fd::OwnedFd {
    let src = u32::from_le_bytes(src) as i32;
    const PASS: i16 = 45;
    let to_pass = |at: i16| PASS - (at + 1);
    // (code, dst, src, off, imm)
    let prog: [(u8, u8, u8, i16, i32); 47] = [
        (0xbf, 6, 1, 0, 0),               // r6 = r1 (the skb, for the helper)
        (0x61, 2, 1, 76, 0),              // r2 = skb->data
        (0x61, 3, 1, 80, 0),              // r3 = skb->data_end
        (0xbf, 4, 2, 0, 0),               // r4 = r2
        (0x07, 4, 0, 0, 54),              // r4 += Ethernet, IP and TCP headers
        (0x2d, 4, 3, to_pass(5), 0),      // shorter: pass
        (0x69, 5, 2, 12, 0),              // r5 = ethertype
        (0x55, 5, 0, to_pass(7), 0x0008), // IPv4, else pass
        (0x71, 5, 2, 14, 0),              // r5 = version and IHL
        (0x55, 5, 0, to_pass(9), 0x45),   // no IP options, else pass
        (0x71, 5, 2, 23, 0),              // r5 = protocol
        (0x55, 5, 0, to_pass(11), 6),     // TCP, else pass
        (0x61, 5, 2, 26, 0),              // r5 = source address
        (0x55, 5, 0, to_pass(13), src),   // from src, else pass
        (0x71, 5, 2, 47, 0),              // r5 = TCP flags
        (0x55, 5, 0, to_pass(15), 0x02),  // SYN alone, else pass
        (0x61, 7, 2, 0, 0),               // swap the MAC addresses' first 4 bytes
        (0x61, 8, 2, 6, 0),
        (0x63, 2, 8, 0, 0),
        (0x63, 2, 7, 6, 0),
        (0x69, 7, 2, 4, 0), // and their last 2
        (0x69, 8, 2, 10, 0),
        (0x6b, 2, 8, 4, 0),
        (0x6b, 2, 7, 10, 0),
        (0x61, 7, 2, 26, 0), // swap the IP addresses
        (0x61, 8, 2, 30, 0),
        (0x63, 2, 8, 26, 0),
        (0x63, 2, 7, 30, 0),
        (0x69, 7, 2, 34, 0), // swap the ports
        (0x69, 8, 2, 36, 0),
        (0x6b, 2, 8, 34, 0),
        (0x6b, 2, 7, 36, 0),
        (0x61, 7, 2, 38, 0),    // r7 = seq
        (0xdc, 7, 0, 0, 32),    // to host order
        (0x07, 7, 0, 0, 1),     // r7 += 1
        (0xdc, 7, 0, 0, 32),    // to network order
        (0x63, 2, 7, 42, 0),    // ack = seq + 1
        (0x62, 2, 0, 38, 0),    // seq = 0
        (0x72, 2, 0, 47, 0x14), // TCP flags = RST|ACK
        (0xbf, 1, 6, 0, 0),     // r1 = skb
        (0x61, 2, 6, 40, 0),    // r2 = skb->ifindex
        (0xb7, 3, 0, 0, 0),     // r3 = 0: to its egress
        (0x85, 0, 0, 0, 13),    // bpf_clone_redirect
        (0xb7, 0, 0, 0, 2),     // r0 = TC_ACT_SHOT: the SYN goes no further
        (0x95, 0, 0, 0, 0),     // exit
        (0xb7, 0, 0, 0, 0),     // pass: r0 = TC_ACT_OK
        (0x95, 0, 0, 0, 0),     // exit
    ];
    load_program(3, &prog, name) // BPF_PROG_TYPE_SCHED_CLS
}
