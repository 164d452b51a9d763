//! Strings that come from outside rsttrace: process names, executable and
//! cgroup paths, nftables table/chain names, kernel symbols and module
//! names. Any unprivileged process picks its own name (prctl PR_SET_NAME)
//! and its executable's path, so these bytes are the attacker's: printed
//! raw, ESC and BEL sequences would clear or retitle the operator's
//! terminal and newlines would forge output lines.
//!
//! `Untrusted` keeps the raw bytes (matching needs them) and has no way to
//! hand them to a formatter as they are: `Display` and `Serialize` are the
//! only renderings, each escaping once, at the output boundary.
//!
//! Text (`Display`): a backslash is `\\`; control characters (C0, DEL, C1),
//! Unicode bidirectional controls and line/paragraph separators are `\xNN`
//! per UTF-8 byte; bytes that are not UTF-8 are `\xNN`. The result is one
//! line of valid UTF-8 and the original bytes can be read back from it.
//!
//! JSON (`Serialize`): the same, except that control characters stay
//! characters, which the JSON encoder writes as `\u001b` and the like; a
//! decoded value therefore has `\xNN` only for bytes that are not UTF-8 and
//! `\\` for a backslash.

use std::{borrow::Cow, fmt, os::unix::ffi::OsStrExt as _};

use serde::{Serialize, Serializer};

#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Untrusted(Box<[u8]>);

impl Untrusted {
    pub fn from_bytes(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// A C string from a fixed-size kernel buffer (`comm`, nft names): up
    /// to the first NUL.
    pub fn from_c(bytes: &[u8]) -> Self {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        Self::from_bytes(&bytes[..end])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// For matching (agent names, patterns), never for output: bytes that
    /// are not UTF-8 become U+FFFD.
    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    fn escape(&self, out: &mut impl fmt::Write, controls: bool) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '\\' {
                    out.write_str("\\\\")?;
                } else if controls && hostile_char(c) {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        write!(out, "\\x{b:02x}")?;
                    }
                } else {
                    out.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(out, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Characters a terminal or a line-oriented reader acts on rather than
/// shows: controls (ESC, BEL, CR, LF, DEL, the C1 set with CSI), the bidi
/// overrides and isolates that reorder what follows (CVE-2021-42574), and
/// the Unicode line and paragraph separators.
fn hostile_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}'
        )
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() {
            return self.escape(f, true);
        }
        // Column alignment applies to the escaped text.
        let mut s = String::with_capacity(self.0.len());
        self.escape(&mut s, true)?;
        f.pad(&s)
    }
}

impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for Untrusted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(self.0.len());
        // Writing to a String cannot fail.
        let _ = self.escape(&mut out, false);
        s.serialize_str(&out)
    }
}

impl From<&str> for Untrusted {
    fn from(s: &str) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<String> for Untrusted {
    fn from(s: String) -> Self {
        Self::from_bytes(s.into_bytes())
    }
}

impl From<&std::path::Path> for Untrusted {
    fn from(p: &std::path::Path) -> Self {
        Self::from_bytes(p.as_os_str().as_bytes())
    }
}

impl PartialEq<str> for Untrusted {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Untrusted {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == other.as_bytes()
    }
}

/// A sample's comm, exe and nft names as an attacker would pick them, for
/// the tests of every output.
#[cfg(test)]
pub mod hostile {
    use super::Untrusted;

    /// Clears the screen, retitles the terminal to "pwn", rings the bell,
    /// and ends with a byte that is not UTF-8.
    pub const COMM: &[u8] = b"\x1b[2J\x1b]0;pwn\x07X\xff";
    pub const COMM_TEXT: &str = "\\x1b[2J\\x1b]0;pwn\\x07X\\xff";

    pub fn comm() -> Untrusted {
        Untrusted::from_bytes(COMM)
    }

    /// An executable path with a newline that would forge an output line.
    pub fn exe() -> Untrusted {
        Untrusted::from("/tmp/a\n00:00:00.000000 forged/ss")
    }

    pub fn table() -> Untrusted {
        Untrusted::from_bytes(&b"t\x1b[31m\r\x00"[..])
    }

    pub fn chain() -> Untrusted {
        Untrusted::from_bytes(&b"c\x7f\x9b\n"[..])
    }

    /// A RST whose every string from outside is hostile: actor, agent,
    /// owner, rule author, table, chain, module, stack, killer, the
    /// killing BPF program and the RST's BPF program.
    pub fn rst() -> crate::attribution::decode::Rst {
        use crate::{
            attribution::actor::Actor, attribution::cause::Cause, attribution::decode::Family,
            attribution::nftmon::Author,
        };
        crate::attribution::decode::Rst {
            ts: std::time::UNIX_EPOCH,
            cause: Cause::NetfilterReject,
            kernel_reason: None,
            family: Family::Ipv4,
            local: "127.0.0.1:80".parse().unwrap(),
            remote: "127.77.0.1:5000".parse().unwrap(),
            state: None,
            netns: Some(4026531840),
            actor: Some(Actor {
                pid: 17884,
                tid: 17884,
                comm: comm(),
                exe: Some(exe()),
                cgroup: Some(Untrusted::from("/user.slice/\x1b]0;cg\x07")),
                container_id: None,
                // A user pattern matched: the agent is named by its comm.
                agent: Some(comm()),
                agent_via: None,
                // Symbol and file names come from the process's own files.
                stack: Some(crate::attribution::ustack::UserStack {
                    frames: vec![crate::attribution::ustack::Frame {
                        addr: 0x5555_0000_1000,
                        function: Some(comm()),
                        offset: Some(0x1c),
                        file: Some(exe()),
                    }],
                    complete: false,
                }),
            }),
            agent: Some(comm()),
            labels: vec!["security-agent".into()],
            stack: Some(vec![Untrusted::from_bytes(
                &b"evil\x1b[A+0x1 [mod\x07]"[..],
            )]),
            netfilter: Some(crate::attribution::netfilter::Netfilter {
                hook: Some("input"),
                backend: Some("nftables"),
                table: Some(table()),
                chain: Some(chain()),
                author: Some(Author {
                    pid: 7,
                    comm: comm(),
                    generation: 3,
                    agent: Some(comm()),
                    table: Some(table()),
                    chain: Some(chain()),
                }),
                ..Default::default()
            }),
            module: Some(Untrusted::from("mod\x1b[8m")),
            bpf_program: Some(crate::attribution::bpfprogs::BpfProgram {
                id: Some(5),
                name: Some(chain()),
                tag: Some("0123456789abcdef".into()),
                attach: "tc-egress",
                device: Some(table()),
                cgroup: None,
                holder: Some((6, comm())),
                pin: Some(exe()),
                agent: None,
            }),
            owner: Some(crate::attribution::actor::Owner {
                pid: 9,
                comm: comm(),
            }),
            listener: Some(crate::attribution::decode::Listener {
                port: 80,
                pid: Some(17884),
                comm: Some(comm()),
                gone_at: Some(std::time::UNIX_EPOCH),
                backlog: None,
            }),
            exit: Some(crate::attribution::exits::Exit {
                signal: Some(9),
                killed_by: Some(crate::attribution::exits::Killer {
                    pid: 8,
                    comm: comm(),
                    exe: Some(exe()),
                    agent: Some(comm()),
                }),
                oom: false,
                bpf_program: Some(crate::attribution::exits::KillProgram {
                    name: comm(),
                    tag: table(),
                    id: Some(3),
                }),
            }),
        }
    }

    /// No raw control byte (0x00-0x1f but `keep`, 0x7f) in `out`, and no
    /// C1 control character.
    pub fn assert_clean(out: &[u8], keep: &[u8]) {
        for (i, b) in out.iter().enumerate() {
            assert!(
                !((*b < 0x20 && !keep.contains(b)) || *b == 0x7f),
                "raw byte {b:#04x} at {i} in {:?}",
                String::from_utf8_lossy(out)
            );
        }
        let text = String::from_utf8_lossy(out);
        assert!(
            !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)),
            "raw C1 control in {text:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_controls_invalid_bytes_and_backslash() {
        assert_eq!(hostile::comm().to_string(), hostile::COMM_TEXT);
        assert_eq!(Untrusted::from("a\\x1b").to_string(), "a\\\\x1b");
        assert_eq!(
            Untrusted::from("a\nb\tc\u{7f}").to_string(),
            "a\\x0ab\\x09c\\x7f"
        );
        // C1 CSI and a bidi override, as their UTF-8 bytes.
        assert_eq!(
            Untrusted::from("\u{9b}x\u{202e}").to_string(),
            "\\xc2\\x9bx\\xe2\\x80\\xae"
        );
        // Ordinary non-ASCII text is shown as it is.
        assert_eq!(Untrusted::from("café/日本").to_string(), "café/日本");
        assert_eq!(Untrusted::from_c(b"nginx\0\0junk").to_string(), "nginx");
        assert_eq!(format!("[{:<5}]", Untrusted::from("\x07")), "[\\x07 ]");
        hostile::assert_clean(hostile::comm().to_string().as_bytes(), &[]);
        hostile::assert_clean(format!("{:?}", hostile::chain()).as_bytes(), &[]);
    }

    #[test]
    fn json_keeps_controls_as_characters_and_marks_invalid_bytes() {
        let v = serde_json::to_string(&hostile::comm()).unwrap();
        assert_eq!(v, r#""\u001b[2J\u001b]0;pwn\u0007X\\xff""#);
        let back: String = serde_json::from_str(&v).unwrap();
        assert_eq!(back, "\x1b[2J\x1b]0;pwn\x07X\\xff");
        assert_eq!(
            serde_json::to_string(&Untrusted::from("a\\b")).unwrap(),
            r#""a\\\\b""#
        );
        hostile::assert_clean(v.as_bytes(), &[]);
    }
}
