//! RSTs netfilter rules answer with: nftables, iptables-nft, ip6tables,
//! iptables-legacy, at input, output, prerouting, forward and netdev
//! ingress, with the rule's own counter as the truth.

mod support;

use std::{path::PathBuf, thread, time::Duration};

use support::{Netns, Trace, out_rsts_here, rule_packets, scenario::*};

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
    let tcp4 = closed_port(&ns, "127.16.0.1", "127.0.0.1:7777", 3);
    let tcp6 = closed_port(&ns, "fd72:7374::17", "[::1]:7778", 2);
    let tcp_pre = closed_port(&ns, "127.16.0.2", "127.0.0.1:7779", 2);
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
        BaseChain::Matched("rsttrace_t", "pre"),
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
        BaseChain::Matched("rsttrace_t", "in"),
    );
    assert_netfilter(
        &out,
        &ns,
        "fd72:7374::17",
        out6,
        "output",
        "nftables",
        BaseChain::Matched("rsttrace_t", "out"),
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
    let tcp4 = closed_port(&ns, "127.18.0.1", "127.0.0.1:7777", 2);
    let tcp6 = closed_port(&ns, "fd72:7374::18", "[::1]:7777", 3);
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
        BaseChain::Matched("filter", "INPUT"),
    );
    assert_netfilter(
        &out,
        &ns,
        "fd72:7374::18",
        n6,
        "input",
        "iptables-nft",
        BaseChain::Matched("filter", "INPUT"),
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
    let tcp = closed_port(&ns, "127.19.0.1", "127.0.0.1:7777", 2);
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
    let tcp = closed_port(&ns, "127.31.0.1", "127.0.0.1:443", 2);
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
    let tcp = closed_port(&client, "fd72:7374:c::1", "[fd72:7374:5::1]:7777", 2);
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
        BaseChain::Matched("rsttrace_t", "forwarded"),
    );
}
