//! The actor's user-space stack (`--user-stacks`): the kernel unwinds it
//! at the RST through frame pointers (`bpf_get_stackid` with
//! `BPF_F_USER_STACK`); it is symbolized here, from the process's own
//! mappings, when the event is read.
//!
//! Frame pointers are the kernel's only unwinder for BPF: code built
//! without them (most distributions' libc) leaves a saved `rbp` that is
//! not a frame, and the walk goes on through whatever it points to. So a
//! stack is only `complete` when it reached the process's or thread's entry
//! point, and the walk is cut at the first address mapped nowhere in the
//! process: what follows is not a frame, and is never shown as one.

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};
use std::os::unix::ffi::OsStrExt as _;

use serde::{Serialize, Serializer};

use crate::untrusted::Untrusted;

/// Where a program or thread starts (glibc, musl): a walk that reaches
/// one of these has reached the stack's bottom. `main` counts: what lies
/// below it is libc's start-up, whose static functions a stripped libc
/// (most distributions') does not name.
const ENTRY_POINTS: &[&str] = &[
    "main",
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "libc_start_main_stage2",
];

/// One frame: the return address (the current instruction for the
/// innermost), and the function and file it lies in, when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub function: Option<Untrusted>,
    /// From the start of `function`.
    pub offset: Option<u64>,
    /// The executable or library.
    pub file: Option<Untrusted>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStack {
    pub frames: Vec<Frame>,
    /// The walk reached the process's or thread's entry point; false when
    /// it stopped short (a caller without frame pointers, or a process gone
    /// before its stack was read).
    pub complete: bool,
}

fn hex<S: Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{addr:#x}"))
}

/// Symbolizes stacks; keeps each process's parsed files between events.
pub struct UserStacks {
    symbolizer: Symbolizer,
}

impl Default for UserStacks {
    fn default() -> Self {
        Self::new()
    }
}

impl UserStacks {
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
        }
    }

    /// Process `pid`'s stack `ips` (innermost first), read from its
    /// mappings now: a process gone by then keeps its addresses only.
    pub fn symbolize(&self, pid: u32, ips: &[u64]) -> UserStack {
        let mut src = Process::new(pid.into());
        // A perf map is a file in /tmp the traced process writes: read as
        // root, a symlink there would print another file's lines as names.
        src.perf_map = false;
        // Return addresses point past their call; the call is what names
        // the caller (a call at a function's end would name the next one).
        let lookups: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
            .collect();
        let syms = self
            .symbolizer
            .symbolize(&Source::Process(src), Input::AbsAddr(&lookups))
            .ok();
        let Some(syms) = syms else {
            let frames = ips.iter().map(|&addr| Frame::bare(addr)).collect();
            return UserStack {
                frames,
                complete: false,
            };
        };
        walk(ips, syms.iter().map(Resolved::from))
    }
}

impl Frame {
    fn bare(addr: u64) -> Self {
        Frame {
            addr,
            function: None,
            offset: None,
            file: None,
        }
    }
}

/// What symbolizing one address gave, apart from blazesym's types.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    Sym {
        name: String,
        file: Option<Vec<u8>>,
        offset: u64,
    },
    /// Mapped, but no symbol names it (a stripped file, JIT code).
    Nameless,
    /// Not mapped in the process: not a frame.
    Unmapped,
}

impl From<&Symbolized<'_>> for Resolved {
    fn from(s: &Symbolized<'_>) -> Self {
        match s {
            Symbolized::Sym(s) => Resolved::Sym {
                name: s.name.to_string(),
                file: s.module.as_ref().map(|m| m.as_bytes().to_vec()),
                offset: s.offset as u64,
            },
            Symbolized::Unknown(blazesym::symbolize::Reason::Unmapped) => Resolved::Unmapped,
            Symbolized::Unknown(_) => Resolved::Nameless,
        }
    }
}

/// The frames up to the entry point or the first address mapped nowhere.
fn walk(ips: &[u64], resolved: impl Iterator<Item = Resolved>) -> UserStack {
    let mut frames = Vec::new();
    for (i, (&addr, r)) in ips.iter().zip(resolved).enumerate() {
        let frame = match r {
            Resolved::Unmapped => break,
            Resolved::Nameless => Frame::bare(addr),
            Resolved::Sym { name, file, offset } => {
                // Looked up one byte before a return address (above).
                let offset = offset + u64::from(i > 0);
                let entry = ENTRY_POINTS.contains(&name.as_str());
                frames.push(Frame {
                    addr,
                    function: Some(Untrusted::from(name)),
                    offset: Some(offset),
                    file: file.map(Untrusted::from_bytes),
                });
                if entry {
                    return UserStack {
                        frames,
                        complete: true,
                    };
                }
                continue;
            }
        };
        frames.push(frame);
    }
    UserStack {
        frames,
        complete: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, offset: u64) -> Resolved {
        Resolved::Sym {
            name: name.into(),
            file: Some(b"/srv/app".to_vec()),
            offset,
        }
    }

    #[test]
    fn a_walk_ends_at_the_entry_point_and_drops_what_follows() {
        let s = walk(
            &[0x10, 0x21, 0x31, 0x41, 0x51],
            [
                sym("abort_conn", 4),
                sym("serve", 8),
                sym("main", 0x7f),
                Resolved::Nameless,
                Resolved::Unmapped,
            ]
            .into_iter(),
        );
        assert!(s.complete);
        let names: Vec<_> = s
            .frames
            .iter()
            .map(|f| f.function.as_ref().unwrap().lossy())
            .collect();
        assert_eq!(names, ["abort_conn", "serve", "main"]);
        // The innermost frame is the instruction itself; callers are
        // return addresses, looked up one byte before.
        assert_eq!(s.frames[0].offset, Some(4));
        assert_eq!(s.frames[1].offset, Some(9));
    }

    #[test]
    fn an_unmapped_address_ends_the_walk_incomplete() {
        let s = walk(
            &[0x10, 0x20, 0xdead, 0x30],
            [
                sym("abort_conn", 0),
                Resolved::Nameless,
                Resolved::Unmapped,
                sym("serve", 0),
            ]
            .into_iter(),
        );
        assert!(!s.complete);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.frames[1], Frame::bare(0x20));
    }

    #[test]
    fn frames_serialize_with_hex_addresses() {
        let f = Frame {
            addr: 0x55d0_0000_1234,
            function: Some("main".into()),
            offset: Some(0x1c),
            file: Some("/srv/app".into()),
        };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"addr": "0x55d000001234", "function": "main", "offset": 28, "file": "/srv/app"})
        );
    }
}
