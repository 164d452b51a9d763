//! The counts read from the kernel's maps, assembled into the summary
//! every output reports (`summary`), with a diagnosis per remote IP
//! (`diagnosis`).

pub mod diagnosis;
pub mod summary;
