//! Programs no trace uses: `rsttrace doctor` loads and attaches them to
//! learn what this kernel allows, and says so.

use aya_ebpf::{macros::fentry, programs::FEntryContext};

/// fentry on the function the kernel keeps for BPF's own tests: never
/// called outside BPF_PROG_TEST_RUN, so attaching it costs nothing.
#[fentry(function = "bpf_fentry_test1")]
pub fn fentry_probe(_ctx: FEntryContext) -> u32 {
    0
}
