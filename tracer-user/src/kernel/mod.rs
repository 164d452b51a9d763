//! What the running kernel offers, read from it: tracefs format files,
//! BTF, kernel symbols, capabilities and limits. Nothing here decides what
//! to attach (see `plan`).

pub mod btf;
pub mod format;
pub mod ksyms;
pub mod preflight;
