//! Where a cause is decided and a RST is made readable: the cause tables
//! handed to the kernel programs (`cause`), the pure decode of a kernel
//! record (`decode`), and the enrichment from outside the record
//! (`enrich`): the actor process (`actor`), known agents (`agents`), the BPF
//! programs at a hook that dropped (`bpfprogs`), netfilter rules and
//! their authors (`netfilter`, `nftmon`), and the rule and set element
//! behind a reject or drop that predates the trace (`nft`), and the actor's
//! user-space stack (`ustack`).

pub mod actor;
pub mod agents;
pub mod bpfprogs;
pub mod cause;
pub mod decode;
pub mod enrich;
pub mod exits;
pub mod ipset;
pub mod listeners;
pub mod netfilter;
pub mod nft;
pub mod nftmon;
pub mod ustack;
