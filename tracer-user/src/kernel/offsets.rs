//! Offsets of kernel structures the eBPF programs read, from BTF and the
//! tracepoints' format files; each is `Err` with why where this kernel
//! lacks what it needs, and the program that needs it stays off.

use anyhow::{Context as _, Result};

use super::{btf::Btf, format::Format, ksyms::Kallsyms};

/// Where silent drops show on this kernel and their reasons, or why they
/// can't be told apart.
pub fn kfree_skb_layout(
    tracefs: &std::path::Path,
) -> Result<super::format::KfreeSkbFormat, String> {
    let text = super::preflight::tracepoint_format(tracefs, "skb", "kfree_skb")
        .map_err(|e| format!("{e:#}"))?;
    kfree_skb_from_format(&text)
}

/// The same, from the format file's text.
pub fn kfree_skb_from_format(text: &str) -> Result<super::format::KfreeSkbFormat, String> {
    let format = Format::parse(text).and_then(|f| super::format::kfree_skb_format(&f));
    match format {
        Ok(f) if f.layout.netfilter_drop != tracer_common::ABSENT => Ok(f),
        Ok(_) => Err(
            "this kernel's skb:kfree_skb has no drop reason (5.17 or later has them): \
             silent drops (netfilter, tc, XDP, cgroup, full accept queues) can't be told \
             from other drops"
                .into(),
        ),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Offsets for reading outgoing packets at the egress hook; without them
/// only the TCP stack's RSTs are seen, and rsttrace says so.
pub fn egress_offsets(b: &Btf) -> Result<tracer_common::EgressOffsets> {
    let m = |s: &str, p: &[&str], size: u32| b.offset(s, p, size);
    let (head, nh, proto) = (
        m("sk_buff", &["head"], 8)?,
        m("sk_buff", &["network_header"], 2)?,
        m("sk_buff", &["protocol"], 2)?,
    );
    // One read for the three when they sit together after `protocol`.
    let block = nh > proto
        && head > proto
        && head + 8 - proto <= tracer_common::SKB_BLOCK
        && nh + 2 - proto <= tracer_common::SKB_BLOCK;
    Ok(tracer_common::EgressOffsets {
        skb_sk: m("sk_buff", &["sk"], 8)?,
        skb_head: head,
        skb_network_header: nh,
        skb_protocol: proto,
        skb_block: u32::from(block),
        sk_family: m("sock", &["__sk_common", "skc_family"], 2)?,
        sk_state: m("sock", &["__sk_common", "skc_state"], 1)?,
        sk_type: m("sock", &["sk_type"], 2)?,
        sk_protocol: m("sock", &["sk_protocol"], 2)?,
        sk_socket: m("sock", &["sk_socket"], 8)?,
        socket_file: m("socket", &["file"], 8)?,
        skb_iif: m("sk_buff", &["skb_iif"], 4)?,
        socket_ino: {
            let sock = b.member("socket_alloc", &["socket"])?.offset;
            let inode = b.member("socket_alloc", &["vfs_inode"])?.offset;
            let ino = m("inode", &["i_ino"], 8)?;
            anyhow::ensure!(inode > sock, "socket_alloc has its inode first");
            inode - sock + ino
        },
        sk_ack_backlog: m("sock", &["sk_ack_backlog"], 4)?,
        sk_max_ack_backlog: m("sock", &["sk_max_ack_backlog"], 4)?,
        skb_dev: m("sk_buff", &["dev"], 8)?,
        dev_ifindex: m("net_device", &["ifindex"], 4)?,
        dev_egress: dev_egress_offset(b).unwrap_or(tracer_common::ABSENT),
        skb_destructor: m("sk_buff", &["destructor"], 8)?,
    })
}

/// Where a device says whether tc or tcx egress programs may run on it:
/// `tcx_egress` from 6.6 (tcx links and clsact's filters alike hang
/// there), `miniq_egress` before (clsact's egress filters). Neither: a
/// kernel built without tc egress classifiers (`CONFIG_NET_XGRESS` /
/// `CONFIG_NET_CLS_ACT`), where no program can rewrite a segment there.
pub fn dev_egress_offset(b: &Btf) -> Result<u32> {
    b.offset("net_device", &["tcx_egress"], 8)
        .or_else(|_| b.offset("net_device", &["miniq_egress"], 8))
}

/// Where a socket keeps its endpoints, for the BTF build of the
/// tcp_send_reset program; its arguments follow the record's reason field.
pub fn sock_addr_offsets(
    b: &Btf,
    layout: &tracer_common::SendResetLayout,
) -> Result<tracer_common::SockAddrOffsets> {
    let m = |name: &str, size: u32| b.offset("sock", &["__sk_common", name], size);
    // Kernels without IPv6 have no v6 fields: IPv4 still works.
    let v6 = |name: &str| m(name, 16).unwrap_or(tracer_common::ABSENT);
    Ok(tracer_common::SockAddrOffsets {
        rcv_saddr: m("skc_rcv_saddr", 4)?,
        daddr: m("skc_daddr", 4)?,
        sport: b.offset("inet_sock", &["inet_sport"], 2)?,
        dport: m("skc_dport", 2)?,
        v6_rcv_saddr: v6("skc_v6_rcv_saddr"),
        v6_daddr: v6("skc_v6_daddr"),
        reason_arg: u32::from(layout.reason != tracer_common::ABSENT),
    })
}

/// What naming the chain of a REJECT rule older than the trace takes:
/// nf_tables loaded (its module's BTF, nft_do_chain) and a reject function
/// to hook; returns the offsets and the reject functions present.
pub fn nft_offsets(
    kernel_btf: &mut Result<Btf>,
    ksyms: &Result<Kallsyms>,
) -> Result<(tracer_common::NftOffsets, Vec<&'static str>)> {
    let ksyms = ksyms
        .as_ref()
        .map_err(|e| anyhow::anyhow!("kernel symbols are needed: {e:#}"))?;
    anyhow::ensure!(
        ksyms.range(crate::loader::NFT_DO_CHAIN).is_some(),
        "nf_tables was not loaded when rsttrace started (no nftables or iptables-nft rules)"
    );
    let functions: Vec<&'static str> = crate::loader::NF_SEND_RESET_FUNCTIONS
        .into_iter()
        .filter(|f| ksyms.range(f).is_some())
        .collect();
    anyhow::ensure!(
        !functions.is_empty(),
        "no reject module (nf_reject_ipv4/ipv6) was loaded when rsttrace started"
    );
    let b = kernel_btf
        .as_mut()
        .map_err(|e| anyhow::anyhow!("kernel BTF is needed: {e:#}"))?;
    if b.member("nft_chain", &["name"]).is_err() {
        b.add_module("nf_tables")?;
    }
    let ptr = |s: &str, m: &str| b.offset(s, &[m], 8);
    Ok((
        tracer_common::NftOffsets {
            pktinfo_skb: ptr("nft_pktinfo", "skb")?,
            chain_table: ptr("nft_chain", "table")?,
            chain_name: ptr("nft_chain", "name")?,
            table_name: ptr("nft_table", "name")?,
        },
        functions,
    ))
}

/// Offsets for reading a RST's network namespace; without BTF the trace
/// still runs, with `netns` null.
pub fn netns_offsets(b: &Btf) -> Result<tracer_common::NetnsOffsets> {
    let ptr = |s: &str, p: &[&str]| b.offset(s, p, 8);
    Ok(tracer_common::NetnsOffsets {
        sock_net: ptr("sock", &["__sk_common", "skc_net", "net"])?,
        skb_dev: ptr("sk_buff", &["dev"])?,
        dev_net: ptr("net_device", &["nd_net", "net"])?,
        net_inum: b.offset("net", &["ns", "inum"], 4)?,
        // Only for segments with neither socket nor device (see
        // netns.rs): without them, those alone have no namespace.
        skb_refdst: ptr("sk_buff", &["_skb_refdst"]).unwrap_or(tracer_common::ABSENT),
        dst_dev: ptr("dst_entry", &["dev"]).unwrap_or(tracer_common::ABSENT),
        // Only to tell a full accept queue's drops from those it answered
        // with a RST (drop.rs).
        net_abort_on_overflow: [1, 4]
            .into_iter()
            .find_map(|size| {
                b.offset("net", &["ipv4", "sysctl_tcp_abort_on_overflow"], size)
                    .ok()
            })
            .unwrap_or(tracer_common::ABSENT),
    })
}

/// Where a task keeps its flags (PF_EXITING), exit code and process id:
/// whether a RST's actor was exiting, and why.
pub fn task_offsets(b: &Btf) -> Result<tracer_common::TaskOffsets> {
    let m = |name: &str| b.offset("task_struct", &[name], 4);
    // The handlers, to pass over signals the target handles; without
    // them every fatal signal is kept.
    let handlers = || -> Result<(u32, u32, u32, u32)> {
        let action = b.member("sighand_struct", &["action"])?;
        // `action[_NSIG]`, _NSIG = 64 on every architecture rsttrace runs on.
        anyhow::ensure!(action.size % 64 == 0, "sighand_struct.action is not [64]");
        Ok((
            b.offset("task_struct", &["sighand"], 8)?,
            action.offset,
            action.size / 64,
            b.offset("k_sigaction", &["sa", "sa_handler"], 8)?,
        ))
    };
    let (sighand, action, action_size, handler) = handlers().unwrap_or((
        tracer_common::ABSENT,
        tracer_common::ABSENT,
        tracer_common::ABSENT,
        tracer_common::ABSENT,
    ));
    Ok(tracer_common::TaskOffsets {
        flags: m("flags")?,
        exit_code: m("exit_code")?,
        tgid: m("tgid")?,
        sighand,
        action,
        action_size,
        handler,
    })
}

/// `signal:signal_generate`'s record (for its classic build): the signal,
/// the target's pid and the result. Every kernel since 3.x has them.
pub fn signal_generate_layout(tracefs: &std::path::Path) -> Result<tracer_common::SignalLayout> {
    let text = super::preflight::tracepoint_format(tracefs, "signal", "signal_generate")?;
    signal_generate_from_format(&text)
}

pub fn signal_generate_from_format(text: &str) -> Result<tracer_common::SignalLayout> {
    let f = Format::parse(text)?;
    let int = |name: &str| -> Result<u32> {
        let field = f
            .field(name)
            .with_context(|| format!("signal_generate has no {name} field"))?;
        anyhow::ensure!(field.size == 4, "signal_generate's {name} is not 4 bytes");
        Ok(field.offset)
    };
    Ok(tracer_common::SignalLayout {
        sig: int("sig")?,
        pid: int("pid")?,
        result: int("result")?,
        victim_pid: tracer_common::ABSENT,
    })
}

/// `oom:mark_victim`'s `pid` (the OOM killer's victim): at 8 on every
/// kernel of the matrix, from 5.10's (pid) alone to 6.18's (pid, comm,
/// memory counters, uid, ...).
pub fn mark_victim_pid(tracefs: &std::path::Path) -> Result<u32> {
    let text = super::preflight::tracepoint_format(tracefs, "oom", "mark_victim")?;
    mark_victim_from_format(&text)
}

pub fn mark_victim_from_format(text: &str) -> Result<u32> {
    let f = Format::parse(text)?;
    let pid = f.field("pid").context("mark_victim has no pid field")?;
    anyhow::ensure!(pid.size == 4, "mark_victim's pid is not 4 bytes");
    Ok(pid.offset)
}
