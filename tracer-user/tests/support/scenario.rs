//! The scenarios the integration tests share: each makes RSTs of one kind
//! in a namespace and returns the ground truth to compare rsttrace with
//! (the namespace's Tcp OutRsts delta, a rule's counter, packets sent).

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};

use super::{Netns, connect_from, out_rsts_here};

/// Connects `n` times from `client` to a port nobody listens on; returns
/// the namespace's OutRsts delta.
pub fn closed_port(ns: &Netns, client: &str, server: &str, n: u64) -> u64 {
    let client: IpAddr = client.parse().expect("client address");
    let server: SocketAddr = server.parse().expect("server address");
    super::refused_connects(ns, client, server, n)
}

/// The server closes `n` connections from `client` with the request
/// unread; returns the namespace's OutRsts delta.
pub fn abort_on_close(ns: &Netns, client: &'static str, n: u64) -> u64 {
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

/// This process's cgroup v2 path ("0::/path" in /proc/self/cgroup).
pub fn own_cgroup2_path() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 entry")
        .to_string()
}

/// `n` idle connections from `client` whose server side has a 1 s
/// keepalive; an nft rule in the test's namespace swallows the client's
/// answers so the probes go unanswered. Returns the OutRsts delta.
pub fn keepalive_timeout_scenario(ns: &Netns, client: &'static str, n: u64) -> u64 {
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

/// Opens `n` connections from `client` to a listener in the calling
/// thread's namespace; returns (client, server side) pairs.
pub fn established(client: &str, n: usize) -> Vec<(std::net::TcpStream, std::net::TcpStream)> {
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

pub fn assert_reset(mut client: std::net::TcpStream) {
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
pub fn socket_killed(ns: &Netns, client: &'static str, n: usize, killer: PathBuf) -> u64 {
    socket_killed_kept(ns, client, n, killer).0
}

/// The same, returning the destroyed server sockets still open: their
/// holder is named only while it holds them.
pub fn socket_killed_kept(
    ns: &Netns,
    client: &'static str,
    n: usize,
    killer: PathBuf,
) -> (u64, Vec<std::net::TcpStream>) {
    ns.run(move || {
        let before = out_rsts_here();
        let pairs = established(client, n);
        let out = std::process::Command::new(&killer)
            .args(["-K", "dst", client])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", killer.display()));
        assert!(out.status.success(), "{} -K: {out:?}", killer.display());
        let mut kept = vec![];
        for (c, s) in pairs {
            assert_reset(c);
            kept.push(s);
        }
        (out_rsts_here() - before, kept)
    })
}

/// The server closes `n` connections from `client` with SO_LINGER 0.
pub fn linger_abort(ns: &Netns, client: &'static str, n: usize) -> u64 {
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

/// The server drops `n` live connections from `client` with
/// connect(AF_UNSPEC).
pub fn app_disconnect(ns: &Netns, client: &'static str, n: usize) -> u64 {
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

pub fn which_ss() -> PathBuf {
    ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("ss (iproute2) is installed")
}

/// The (table, base chain) a reject of a rule older than the trace shows.
pub enum BaseChain {
    /// Known on every kernel.
    Always(&'static str, &'static str),
    /// An nftables rule (iptables-nft's too) that predates the trace:
    /// named on every kernel, by the kernel where kprobes let rsttrace read
    /// the base chain (`rsttrace doctor` says), by matching the answered
    /// segment against the ruleset elsewhere; both must agree.
    Matched(&'static str, &'static str),
    /// Never known.
    Null,
}

pub fn assert_netfilter(
    out: &super::TraceOutput,
    ns: &Netns,
    remote: &str,
    n: u64,
    hook: &str,
    backend: &str,
    base_chain: BaseChain,
) {
    let matched = matches!(base_chain, BaseChain::Matched(..));
    let (table, chain) = match base_chain {
        BaseChain::Always(t, c) => (t.into(), c.into()),
        BaseChain::Matched(t, c) => (t.into(), c.into()),
        _ => (serde_json::Value::Null, serde_json::Value::Null),
    };
    for e in out.assert_exactly(ns, remote, n, "netfilter-reject") {
        assert_eq!(e["netfilter"]["hook"], hook, "{e}");
        assert_eq!(e["netfilter"]["backend"], backend, "{e}");
        assert_eq!(e["netfilter"]["table"], table, "{e}");
        assert_eq!(e["netfilter"]["chain"], chain, "{e}");
        if matched {
            // The rule itself, from the ruleset.
            assert!(e["netfilter"]["handle"].is_u64(), "{e}");
            assert!(e["netfilter"]["rule"].is_string(), "{e}");
        }
        assert_eq!(e["kernel_reason"], serde_json::Value::Null);
        // The rule ran in softirq on behalf of the peer: no actor.
        assert_eq!(e["actor"], serde_json::Value::Null, "{e}");
    }
}

/// An IPv4 + TCP RST from 127.0.0.1:80 to remote:port (the kernel, or
/// nobody, fills in the checksums: the packet is only traced).
pub fn rst_packet(remote: [u8; 4], port: u16) -> [u8; 40] {
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
pub fn inject_rsts_packet(ns: &Netns, remote: [u8; 4], n: u16) -> u64 {
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
pub fn inject_rsts(ns: &Netns, remote: [u8; 4], n: u16) -> (u64, u64) {
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

/// A connect from `client` (IPv4, any port) to `to`, given up after
/// 300 ms: before the SYN's first retransmission (1 s), so one SYN left.
pub fn connect_briefly(client: &str, to: &str) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&format!("{client}:0").parse::<SocketAddr>().unwrap().into())?;
    let to: SocketAddr = to.parse().unwrap();
    s.connect_timeout(&to.into(), Duration::from_millis(300))
}

/// The keep-alive race: the server closes `n` idle connections from
/// `client`, each client's kernel acknowledges the FIN, and the client,
/// not yet aware, sends a request. The server's side is a time-wait socket
/// by then (FIN_WAIT2 substate), which answers new data with a RST: on
/// kernels before 6.10 tcp_send_reset does not fire for it, and the
/// kprobe on tcp_v4_send_reset takes it. Returns the OutRsts delta.
pub fn data_after_close(ns: &Netns, client: &'static str, n: usize) -> u64 {
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

pub fn established_with(
    listener: &TcpListener,
    client: &str,
) -> (std::net::TcpStream, std::net::TcpStream) {
    let c = connect_from(client.parse().unwrap(), listener.local_addr().unwrap()).unwrap();
    let (s, _) = listener.accept().unwrap();
    (c.into(), s)
}

/// What the server's side became once its FIN was acknowledged.
#[derive(PartialEq, Debug)]
pub enum Fin2 {
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
pub fn fin_acked(port: u16, peer_port: u16) -> Fin2 {
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
