//! Details of a netfilter reject, read off the kernel stack of the RST:
//! which hook the rule sat in and which backend ran it.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Netfilter {
    /// prerouting, input, forward or output; null when the stack does not say.
    pub hook: Option<&'static str>,
    /// nftables, iptables-nft (xtables through nft_compat) or iptables-legacy.
    pub backend: Option<&'static str>,
    /// Table and chain: from nftables netlink for rules added while
    /// tracing; for older rules, the base chain from kprobes (nftables
    /// backends) or from the hook (iptables-legacy); null otherwise.
    pub table: Option<crate::untrusted::Untrusted>,
    /// The table's family (ip, ip6, inet, ...), when the rule is named.
    pub family: Option<&'static str>,
    /// The chain the rule sits in (a base chain, or one it jumps to).
    pub chain: Option<crate::untrusted::Untrusted>,
    /// The rule, from matching the answered packet against the
    /// namespace's ruleset (`attribution::nft`): its handle (null for a
    /// base chain's drop policy) and its text as `nft list` prints it.
    pub handle: Option<u64>,
    pub rule: Option<crate::untrusted::Untrusted>,
    /// The set element the rule matched the peer through.
    pub set: Option<crate::attribution::nft::names::SetMatch>,
    /// Who added the rule, when it was added while rsttrace ran (nftables
    /// backends only: followed over netlink).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<crate::attribution::nftmon::Author>,
    /// The tool that owns the table, chain or set, when a known one.
    pub agent: Option<crate::untrusted::Untrusted>,
    /// Facts the match depended on that rsttrace lacks: the rule is a
    /// candidate, not certain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<crate::untrusted::Untrusted>,
    /// Other rules that may have answered instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<crate::attribution::nft::names::Candidate>,
}

impl Netfilter {
    /// Takes the matched rule's names.
    pub fn name_rule(&mut self, n: &crate::attribution::nft::names::Named) {
        self.table = Some(n.table.clone());
        self.chain = Some(n.chain.clone());
        self.family = Some(n.family);
        self.handle = n.handle;
        self.rule = Some(n.rule.clone());
        self.set = n.set.clone();
        self.agent = n.agent.clone();
        self.unknown = n.unknown.clone();
        self.candidates = n.candidates.clone();
    }
}

/// The function that calls into netfilter names the hook (NF_HOOK is
/// inlined into it).
fn hook_of(caller: &str) -> Option<&'static str> {
    Some(match caller {
        "ip_rcv" | "ip_rcv_core" | "ip_list_rcv" | "ipv6_rcv" | "ipv6_list_rcv" => "prerouting",
        "ip_local_deliver" | "ip6_input" => "input",
        "ip_forward" | "ip6_forward" => "forward",
        // TCP over IPv6 sends through ip6_xmit, which runs the hook itself.
        "__ip_local_out" | "ip_local_out" | "__ip6_local_out" | "ip6_local_out" | "ip6_xmit" => {
            "output"
        }
        "ip_output" | "ip6_output" | "ip_finish_output" | "ip6_finish_output" => "postrouting",
        // netdev family
        "__netif_receive_skb_core" | "__netif_receive_skb_core.constprop.0" => "ingress",
        "__dev_queue_xmit" | "nf_hook_egress" => "egress",
        // bridge family
        "br_handle_frame" => "prerouting",
        "br_pass_frame_up" | "br_handle_frame_finish" => "input",
        "__br_forward" => "forward",
        _ => return None,
    })
}

/// `frames`: function names, innermost first.
pub fn from_stack<'a>(frames: impl IntoIterator<Item = &'a str>) -> Netfilter {
    let frames: Vec<&str> = frames.into_iter().collect();
    let mut nf = Netfilter {
        hook: None,
        backend: None,
        table: None,
        family: None,
        chain: None,
        handle: None,
        rule: None,
        set: None,
        author: None,
        agent: None,
        unknown: vec![],
        candidates: vec![],
    };
    // Frames inside nf_send_reset are the RST's own way out (its own
    // OUTPUT hook among them); the rule that fired is outward of it.
    let Some(start) = frames.iter().position(|f| {
        matches!(
            *f,
            "nf_send_reset"
                | "nf_send_reset6"
                | "nft_reject_netdev_eval"
                | "nft_reject_bridge_eval"
        )
    }) else {
        return nf;
    };
    // The netdev and bridge families' reject is itself the rule's
    // expression: look from it outward, itself included.
    let start = if frames[start].starts_with("nft_reject_") {
        start.saturating_sub(1)
    } else {
        start
    };
    let outer = &frames[start + 1..];
    let hook_at = outer.iter().position(|f| *f == "nf_hook_slow");
    let rule_frames = &outer[..hook_at.unwrap_or(outer.len())];
    let has = |names: &[&str]| rule_frames.iter().any(|f| names.contains(f));
    nf.backend = if has(&["ipt_do_table", "ip6t_do_table"]) {
        Some("iptables-legacy")
    } else if has(&["nft_target_eval_xt", "nft_target_eval_bridge"])
        || (has(&["reject_tg", "reject_tg6"]) && has(&["nft_do_chain"]))
    {
        Some("iptables-nft")
    } else if has(&["nft_do_chain"]) {
        Some("nftables")
    } else {
        None
    };
    nf.hook = hook_at
        .and_then(|i| outer.get(i + 1))
        .and_then(|caller| hook_of(caller));
    // iptables-legacy's REJECT target exists only in the filter table, on
    // INPUT, FORWARD and OUTPUT: table and base chain follow from the hook
    // on every kernel (a rule in a chain reached by -j is named by the
    // base chain, as for nftables).
    if nf.backend == Some("iptables-legacy") {
        nf.table = Some("filter".into());
        nf.chain = match nf.hook {
            Some("input") => Some("INPUT".into()),
            Some("forward") => Some("FORWARD".into()),
            Some("output") => Some("OUTPUT".into()),
            _ => None,
        };
    }
    nf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_input_as_observed_on_6_18() {
        // DESIGN.md: __dev_queue_xmit <- ip_finish_output2 <- ip_output <-
        // nf_send_reset <- nft_reject_inet_eval <- nft_do_chain <-
        // nf_hook_slow <- ip_local_deliver
        let nf = from_stack([
            "__dev_queue_xmit",
            "ip_finish_output2",
            "ip_output",
            "__ip_local_out",
            "nf_send_reset",
            "nft_reject_inet_eval",
            "nft_do_chain",
            "nft_do_chain_inet",
            "nf_hook_slow",
            "ip_local_deliver",
            "ip_rcv",
        ]);
        assert_eq!(nf.hook, Some("input"));
        assert_eq!(nf.backend, Some("nftables"));
    }

    #[test]
    fn xtables_through_nft_compat_and_legacy() {
        let compat = from_stack([
            "ip_output",
            "nf_send_reset",
            "reject_tg",
            "nft_target_eval_xt",
            "nft_do_chain",
            "nf_hook_slow",
            "ip_rcv",
        ]);
        assert_eq!(
            (compat.hook, compat.backend),
            (Some("prerouting"), Some("iptables-nft"))
        );
        let legacy = from_stack([
            "nf_send_reset6",
            "reject_tg6",
            "ip6t_do_table",
            "nf_hook_slow",
            "__ip6_local_out",
        ]);
        assert_eq!(
            (legacy.hook, legacy.backend),
            (Some("output"), Some("iptables-legacy"))
        );
        assert_eq!(
            (legacy.table, legacy.chain),
            (Some("filter".into()), Some("OUTPUT".into()))
        );
        // nftables backends name nothing from the stack alone.
        assert_eq!((compat.table, compat.chain), (None, None));
    }

    #[test]
    fn ipv6_output_as_observed_on_6_18() {
        let nf = from_stack([
            "bpf_trace_run1",
            "__dev_queue_xmit",
            "ip6_finish_output",
            "ip6_output",
            "nf_send_reset6",
            "nft_reject_inet_eval",
            "nft_do_chain",
            "nft_do_chain_inet",
            "nf_hook_slow",
            "ip6_xmit",
            "inet6_csk_xmit",
            "__tcp_transmit_skb",
        ]);
        assert_eq!((nf.hook, nf.backend), (Some("output"), Some("nftables")));
    }

    #[test]
    fn forwarded_segments_name_the_forward_hook() {
        let nf = from_stack([
            "ip_output",
            "nf_send_reset",
            "nft_reject_inet_eval",
            "nft_do_chain",
            "nf_hook_slow",
            "ip_forward",
            "ip_rcv",
        ]);
        assert_eq!(nf.hook, Some("forward"));
        let nf6 = from_stack([
            "nf_send_reset6",
            "nft_do_chain",
            "nf_hook_slow",
            "ip6_forward",
        ]);
        assert_eq!(nf6.hook, Some("forward"));
    }

    #[test]
    fn netdev_ingress_reject_as_observed_on_6_18() {
        let nf = from_stack([
            "bpf_trace_run1",
            "__dev_queue_xmit",
            "nft_reject_netdev_eval",
            "nft_do_chain",
            "nft_do_chain_netdev",
            "nf_hook_slow",
            "__netif_receive_skb_core.constprop.0",
            "__netif_receive_skb_one_core",
        ]);
        assert_eq!((nf.hook, nf.backend), (Some("ingress"), Some("nftables")));
    }

    #[test]
    fn no_reject_frame_means_no_detail() {
        let nf = from_stack(["ip_output", "nf_hook_slow", "ip_local_deliver"]);
        assert_eq!((nf.hook, nf.backend), (None, None));
    }
}
