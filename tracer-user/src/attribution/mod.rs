//! Where a cause is decided and a RST is made readable: the cause tables
//! handed to the kernel programs (`cause`), the pure decode of a kernel
//! record (`decode`), and the enrichment from outside the record
//! (`enrich`): the actor process (`actor`), known agents (`agents`), netfilter rules and
//! their authors (`netfilter`, `nftmon`).

pub mod actor;
pub mod agents;
pub mod cause;
pub mod decode;
pub mod enrich;
pub mod exits;
pub mod listeners;
pub mod netfilter;
pub mod nftmon;
