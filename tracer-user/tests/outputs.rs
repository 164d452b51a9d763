//! Outputs for machines, read the way their consumers read them: the
//! metrics endpoint through curl and a Prometheus text-format parser.

mod support;

use std::net::SocketAddr;

use support::{Netns, Trace, refused_connects, rule_packets};

fn scrape(ns: &Netns, path: &str) -> String {
    let url = format!("http://127.0.0.1:9477{path}");
    ns.output(&["curl", "-sS", "--fail", "--max-time", "10", &url])
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
}

/// A sidecar serving metrics: a scrape mid-trace gives the exact counts per
/// cause and per top remote IP, and sums the other remotes.
#[test]
fn metrics_endpoint_counts_exactly_what_the_kernel_counted() {
    let ns = Netns::new("metrics");
    ns.exec(&["nft", "add table inet t"]);
    ns.exec(&[
        "nft",
        "add chain inet t in { type filter hook input priority 0 ; }",
    ]);
    ns.exec(&[
        "nft",
        "add rule inet t in ip saddr 127.50.0.2 tcp dport 7 counter reject with tcp reset",
    ]);
    let trace = Trace::start_in(
        Some(&ns),
        &[
            "--netns",
            "self",
            "--metrics",
            "9477",
            "--metrics-remote-ips",
            "1",
        ],
    );
    let closed = refused_connects(
        &ns,
        "127.50.0.1".parse().unwrap(),
        "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
        3,
    );
    let tcp = refused_connects(
        &ns,
        "127.50.0.2".parse().unwrap(),
        "127.0.0.1:7".parse::<SocketAddr>().unwrap(),
        2,
    );
    assert_eq!(tcp, 0, "netfilter's RSTs are not the TCP stack's");
    let listing = ns.output(&["nft", "list", "chain", "inet", "t", "in"]);
    let rejected = rule_packets(&listing);
    assert!(closed >= 3 && rejected >= 2, "{closed} {rejected}");

    let text = scrape(&ns, "/metrics");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&parsed, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    let out = [("direction", "out")];
    assert_eq!(
        v("rsttrace_rsts_total", &[out[0], ("cause", "closed-port")]),
        closed as f64
    );
    assert_eq!(
        v(
            "rsttrace_rsts_total",
            &[out[0], ("cause", "netfilter-reject")]
        ),
        rejected as f64
    );
    // Every cause has a series from the start.
    assert_eq!(
        v("rsttrace_rsts_total", &[out[0], ("cause", "socket-killed")]),
        0.0
    );
    // K = 1: the remote with the most RSTs has its own series, the other
    // remote is summed.
    assert_eq!(
        v(
            "rsttrace_remote_rsts_total",
            &[
                out[0],
                ("remote_ip", "127.50.0.1"),
                ("cause", "closed-port")
            ]
        ),
        closed as f64
    );
    assert_eq!(
        value(
            &parsed,
            "rsttrace_remote_rsts_total",
            &[("remote_ip", "127.50.0.2")]
        ),
        None
    );
    assert_eq!(
        v("rsttrace_other_remotes_rsts", &out),
        rejected as f64,
        "{text}"
    );
    assert_eq!(v("rsttrace_lost_events_total", &[]), 0.0);
    assert_eq!(
        v("rsttrace_egress_rsts_total", &[("explained_by", "none")]),
        0.0
    );
    assert_eq!(
        v(
            "rsttrace_egress_rsts_total",
            &[("explained_by", "egress_rule")]
        ),
        rejected as f64
    );
    for family in ["rsttrace_rsts", "rsttrace_remote_rsts", "rsttrace_drops"] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no help text for {family}:\n{text}"
        );
    }

    // Anything but /metrics is a clear 404, and the trace goes on.
    let miss = ns.run(|| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("http://127.0.0.1:9477/")
            .output()
            .unwrap()
    });
    assert_eq!(String::from_utf8_lossy(&miss.stdout), "404");

    let out = trace.stop();
    assert_eq!(out.summary["total"], closed + rejected);
}

/// A port already taken is a start-up error that names the flag.
#[test]
fn metrics_address_in_use_is_a_clear_error() {
    let ns = Netns::new("metricsbusy");
    let _taken = ns.run(|| std::net::TcpListener::bind("127.0.0.1:9477").unwrap());
    let out = ns.run(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rsttrace"))
            .args(["--metrics", "9477", "--duration", "1"])
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--metrics: can't listen on 127.0.0.1:9477"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// `tshark -T fields` rows of a pcapng file, one per packet.
fn tshark_fields(path: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = std::process::Command::new("tshark");
    cmd.args(["-r", path, "-T", "fields", "-E", "separator=|"]);
    cmd.args([
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("running tshark (Debian package tshark)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Every RST lands in the pcapng file with its cause in the packet comment,
/// as Wireshark's own dissector (tshark) and tcpdump read it.
#[test]
fn pcapng_carries_each_rst_with_its_cause() {
    let ns = Netns::new("pcap");
    ns.add_addr("fd72:7374::50/128");
    ns.exec(&["nft", "add table inet t"]);
    ns.exec(&[
        "nft",
        "add chain inet t in { type filter hook input priority 0 ; }",
    ]);
    let path = format!("/tmp/rsttrace-test-{}.pcapng", std::process::id());
    let trace = Trace::start_in(
        Some(&ns),
        &["--netns", "self", "--summary-only", "--pcap", &path],
    );
    // Added while tracing: the comment names the rule's table and chain.
    ns.exec(&[
        "nft",
        "add rule inet t in ip saddr 127.51.0.2 tcp dport 7 counter reject with tcp reset",
    ]);
    let closed4 = refused_connects(
        &ns,
        "127.51.0.1".parse().unwrap(),
        "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
        2,
    );
    let closed6 = refused_connects(
        &ns,
        "fd72:7374::50".parse().unwrap(),
        "[::1]:9".parse::<SocketAddr>().unwrap(),
        1,
    );
    refused_connects(
        &ns,
        "127.51.0.2".parse().unwrap(),
        "127.0.0.1:7".parse::<SocketAddr>().unwrap(),
        1,
    );
    let listing = ns.output(&["nft", "list", "chain", "inet", "t", "in"]);
    let rejected = rule_packets(&listing) as usize;
    let out = trace.stop();
    assert!(out.rsts.is_empty(), "--summary-only printed events");

    let rows = tshark_fields(
        &path,
        &[
            "ip.dst",
            "ipv6.dst",
            "tcp.srcport",
            "tcp.flags.reset",
            "tcp.checksum.status",
            "frame.comment",
        ],
    );
    let _ = std::fs::remove_file(&path);
    let to = |ip: &str| -> Vec<&Vec<String>> {
        rows.iter().filter(|r| r[0] == ip || r[1] == ip).collect()
    };
    for (ip, n, port, cause) in [
        ("127.51.0.1", closed4 as usize, "9", "closed-port"),
        ("fd72:7374::50", closed6 as usize, "9", "closed-port"),
        ("127.51.0.2", rejected, "7", "netfilter-reject"),
    ] {
        let packets = to(ip);
        assert_eq!(packets.len(), n, "RSTs to {ip} in the file: {rows:?}");
        for r in packets {
            assert_eq!(r[2], port, "{r:?}");
            assert_eq!(r[3], "1", "RST flag: {r:?}");
            assert_eq!(r[4], "1", "checksum good (tshark: 1 good, 0 bad): {r:?}");
            assert!(
                r[5].starts_with(&format!("rsttrace: {cause} ")),
                "comment: {r:?}"
            );
            if cause == "netfilter-reject" {
                assert!(
                    r[5].contains("hook=input backend=nftables table=t chain=in"),
                    "comment: {r:?}"
                );
            }
        }
    }
    assert_eq!(rows.len() as u64, out.summary["total"].as_u64().unwrap());
}

#[test]
fn pcap_file_that_cannot_be_created_is_a_clear_error() {
    support::require_root();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rsttrace"))
        .args(["--pcap", "/nonexistent-dir/x.pcapng", "--duration", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "rsttrace: --pcap: can't create /nonexistent-dir/x.pcapng: No such file or directory (os error 2)"
    );
}
