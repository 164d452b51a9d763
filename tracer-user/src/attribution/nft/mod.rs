//! The nftables rule and set element behind a reject or drop, for rules
//! older than the trace: a per-namespace snapshot of the ruleset over
//! netlink (`snapshot`, `netlink`), its expressions (`expr`), a matcher
//! that runs the answered packet through it (`matcher`), and the rule in
//! nft syntax (`render`). `names` ties them together for the session and
//! `rsttrace why`; `owners` knows which tool owns a table, chain or set.

pub mod expr;
pub mod legacy;
pub mod matcher;
pub mod names;
pub mod netlink;
pub mod owners;
pub mod render;
pub mod snapshot;
