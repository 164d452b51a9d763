//! Segments dropped without a RST: netfilter drops per remote, and RSTs
//! dropped on their way out.

mod support;

use std::io::ErrorKind;

use support::{Netns, Trace, out_rsts_here, rule_packets, scenario::*};

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
