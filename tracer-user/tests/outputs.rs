//! Outputs for machines, read the way their consumers read them: the
//! metrics endpoint through curl and a Prometheus text-format parser.

mod support;

use std::net::SocketAddr;

use support::{Netns, Trace, refused_connects};

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
    let rejected: u64 = listing
        .split("packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {listing}"));
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
    for family in [
        "rsttrace_rsts",
        "rsttrace_remote_rsts",
        "rsttrace_netfilter_drops",
    ] {
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
