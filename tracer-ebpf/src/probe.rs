//! Programs no trace uses: `rsttrace doctor` loads and attaches them to
//! learn what this kernel allows, and says so.

use aya_ebpf::{
    macros::{fentry, raw_tracepoint},
    programs::{FEntryContext, RawTracePointContext},
};

/// fentry on the function the kernel keeps for BPF's own tests: never
/// called outside BPF_PROG_TEST_RUN, so attaching it costs nothing.
#[fentry(function = "bpf_fentry_test1")]
pub fn fentry_probe(_ctx: FEntryContext) -> u32 {
    0
}

/// An empty program on `net:net_dev_start_xmit`, for the bench only
/// (`--debug-start-xmit-probe`): what a second egress view, one that also
/// sees AF_PACKET's qdisc bypass and generic XDP_TX, would cost before any
/// work of its own. Attached as a raw tracepoint, the cheapest way in.
#[raw_tracepoint(tracepoint = "net_dev_start_xmit")]
pub fn net_dev_start_xmit_probe(_ctx: RawTracePointContext) -> i32 {
    0
}
