//! Running a piece of work inside another network namespace: on a thread
//! of its own that enters it and ends, so the rest of rsttrace stays in
//! its namespace. Sockets opened there stay bound to that namespace.

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

use crate::untrusted::Untrusted;

/// `work`, run on a thread that has entered the namespace at `path`.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let f = File::open(&path).map_err(|e| format!("{}: {e}", Untrusted::from(&*path)))?;
        // SAFETY: a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "entering {}: {}",
                Untrusted::from(&*path),
                std::io::Error::last_os_error()
            ));
        }
        work()
    })
    .join()
    .map_err(|_| "a thread entering a namespace died".to_string())?
}
