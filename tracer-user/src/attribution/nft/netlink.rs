//! Request/response nftables netlink: dumps of a namespace's ruleset and
//! single-element lookups, on a socket opened inside that namespace (a
//! netlink socket stays in the namespace it was created in, so the
//! thread that enters it is short-lived).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// ipset's nfnetlink subsystem: the same socket asks it too.
pub const NFNL_SUBSYS_IPSET: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;

pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_GETSET: u16 = 10;
pub const NFT_MSG_GETSETELEM: u16 = 13;
pub const NFT_MSG_GETGEN: u16 = 16;

/// One nftables message of a reply, owned.
#[derive(Debug, Clone)]
pub struct Reply {
    pub family: u8,
    pub attrs: Vec<u8>,
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A socket in the namespace at `path` (None: this one).
    pub fn open_in(path: Option<&Path>) -> Result<Self, String> {
        let Some(path) = path else {
            return Self::open();
        };
        crate::kernel::netns::run_in(path, Self::open)
    }

    fn open() -> Result<Self, String> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(format!(
                "netfilter netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: a timeval option value of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Self { fd, seq: 1 })
    }

    /// Sends one nftables request and collects its replies: a dump until
    /// its end, else the answer and the acknowledgement. Err(errno) on a
    /// netlink error.
    pub fn request(
        &mut self,
        kind: u16,
        family: u8,
        dump: bool,
        attrs: &[u8],
    ) -> Result<Vec<Reply>, i32> {
        self.request_to(NFNL_SUBSYS_NFTABLES, kind, family, dump, attrs)
    }

    /// `request` to another nfnetlink subsystem (ipset's); its errors
    /// may be the subsystem's own codes (ipset's are 4096 and up).
    pub fn request_to(
        &mut self,
        subsys: u16,
        kind: u16,
        family: u8,
        dump: bool,
        attrs: &[u8],
    ) -> Result<Vec<Reply>, i32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((subsys << 8) | kind).to_ne_bytes());
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[family, 0, 0, 0]);
        msg.extend_from_slice(attrs);
        // SAFETY: msg is valid for its length; the kernel is the peer.
        let sent = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(errno());
        }
        let mut out = vec![];
        let mut buf = vec![0u8; 1 << 17];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if mlen < 16 || mlen > rest.len() {
                    return Err(libc::EPROTO);
                }
                let this = &rest[..mlen];
                rest = &rest[mlen.next_multiple_of(4).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = this
                            .get(16..20)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(-libc::EPROTO);
                        return if code == 0 { Ok(out) } else { Err(-code) };
                    }
                    // Replies of our subsystem to our request (nfgenmsg,
                    // then attributes).
                    _ if ty >> 8 == subsys && this.len() >= 20 => out.push(Reply {
                        family: this[16],
                        attrs: this[20..].to_vec(),
                    }),
                    _ => {}
                }
            }
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A netlink attribute.
pub fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 4) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

pub const NLA_F_NESTED: u16 = 1 << 15;

/// A NUL-terminated string attribute.
pub fn nla_str(ty: u16, s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    nla(ty, &b)
}

/// The file of the network namespace with this inode: ours, a named one
/// (/run/netns), or any process's (a container's or sidecar's).
pub fn netns_path(inode: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &Path| std::fs::metadata(p).ok().map(|m| m.ino());
    let own = PathBuf::from("/proc/self/ns/net");
    if ino(&own) == Some(inode) {
        return Some(own);
    }
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(procs).find(|p| ino(p) == Some(inode))
}
