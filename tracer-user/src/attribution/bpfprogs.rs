//! The BPF programs attached at the hook that dropped a segment (tc and
//! tcx on a device, XDP, cgroup_skb on a cgroup), or at the egress of the
//! device a program's RST left through (`at_device_egress`, `by_frame`),
//! named once at report time, never per packet: the
//! kernel's drop reason says which hook dropped, not which program, so
//! every program attached there in the drop's namespace is listed with its
//! id, name, tag, the process holding it (an fd or a link) and its pin
//! under bpffs, labelled with a known agent's name where its name or pin
//! belongs to one.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::untrusted::Untrusted;

/// Where a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    TcIngress,
    TcEgress,
    Xdp,
    /// cgroup_skb programs (BPF_CGROUP_INET_EGRESS / _INGRESS), on any
    /// cgroup of the host's cgroup2 hierarchy.
    CgroupEgress,
    CgroupIngress,
}

/// One program attached at a hook of a device or a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfProgram {
    /// None: a classic BPF program (`tc ... bpf bytecode`), which the
    /// kernel gives no id, name or tag.
    pub id: Option<u32>,
    pub name: Option<Untrusted>,
    pub tag: Option<String>,
    /// `tc-ingress`, `tc-egress`, `tcx-ingress`, `tcx-egress`, `xdp`,
    /// `cgroup-egress`, `cgroup-ingress`; `bpf` for a program named by its
    /// frame on a kernel stack and found at none of them; `egress` for what
    /// tc and tcx programs at one device's egress share (`one_of`).
    pub attach: &'static str,
    pub device: Option<Untrusted>,
    /// The cgroup's path in the cgroup2 hierarchy (`/system.slice/x`).
    pub cgroup: Option<Untrusted>,
    /// The process holding it (an fd of the program or of its link).
    pub holder: Option<(u32, Untrusted)>,
    /// Where it is pinned under a bpffs mount.
    pub pin: Option<Untrusted>,
    /// The security agent or network-policy product it belongs to.
    pub agent: Option<&'static str>,
}

/// Programs of network-policy and runtime-security products, by program
/// name prefix (the kernel keeps 15 bytes of it) as their sources name
/// them: Cilium's datapath (`cil_from_container`, `cil_to_netdev`, ...),
/// Calico's eBPF dataplane (`cali_tc_preamble`, `calico_tc_*`).
pub const KNOWN_PROGRAM_PREFIXES: &[(&str, &str)] = &[
    ("cil_", "Cilium"),
    ("cali_", "Calico"),
    ("calico_", "Calico"),
];

/// ... and by a directory of their pins (Tetragon's `--bpf-dir`,
/// `tetragon` by default).
pub const KNOWN_PIN_DIRS: &[(&str, &str)] =
    &[("tetragon", "Cilium Tetragon"), ("cilium", "Cilium")];

/// The product a program belongs to, from its name, its pin or its holder.
pub fn agent_of(
    name: Option<&Untrusted>,
    pin: Option<&Untrusted>,
    holder: Option<&Untrusted>,
) -> Option<&'static str> {
    let by_name = name.and_then(|n| {
        let n = n.as_bytes();
        KNOWN_PROGRAM_PREFIXES
            .iter()
            .find(|(p, _)| n.starts_with(p.as_bytes()))
            .map(|(_, a)| *a)
    });
    let by_pin = pin.and_then(|p| {
        let p = String::from_utf8_lossy(p.as_bytes()).into_owned();
        KNOWN_PIN_DIRS
            .iter()
            .find(|(d, _)| p.split('/').any(|part| part == *d))
            .map(|(_, a)| *a)
    });
    let by_holder = holder.and_then(|comm| {
        super::agents::KNOWN_AGENTS
            .iter()
            .find(|(c, _)| comm.as_bytes() == c.as_bytes())
            .map(|(_, a)| *a)
    });
    by_name.or(by_pin).or(by_holder)
}

/// The namespace file of network namespace `inode`: rsttrace's own or one
/// under /run/netns (None: neither, its programs are not named).
pub fn netns_path(inode: u64) -> Option<PathBuf> {
    let own = Path::new("/proc/self/ns/net");
    if std::fs::metadata(own).is_ok_and(|m| m.ino() == inode) {
        return Some(own.to_path_buf());
    }
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode))
}

/// What was found attached, before the ids are named.
struct Attached {
    id: Option<u32>,
    name: Option<Untrusted>,
    tag: Option<String>,
    attach: &'static str,
    device: Option<Untrusted>,
    cgroup: Option<Untrusted>,
}

/// Every program at `hooks` on the devices of namespace `netns` (a
/// namespace file), named.
pub fn at_hooks(netns: &Path, hooks: &[Hook]) -> Result<Vec<BpfProgram>, String> {
    at(netns, hooks, None)
}

/// The tc and tcx programs at the egress of device `ifindex` of namespace
/// `netns`, named: the programs that may have built a RST it sent.
pub fn at_device_egress(netns: &Path, ifindex: u32) -> Result<Vec<BpfProgram>, String> {
    at(netns, &[Hook::TcEgress], Some(ifindex))
}

/// The program whose frame is on a RST's kernel stack (it sent the RST
/// from inside itself, with `bpf_clone_redirect`), by its tag and name
/// (`bpf_prog_<tag>_<name>`): as attached at a tc or XDP hook of namespace
/// `netns` where it is found there, else as loaded, its `attach` `bpf`
/// (attached where rsttrace does not look).
pub fn by_frame(netns: Option<&Path>, tag: &str, name: &str) -> BpfProgram {
    let hooks = [Hook::TcIngress, Hook::TcEgress, Hook::Xdp];
    if let Some(p) = netns
        .and_then(|ns| at_hooks(ns, &hooks).ok())
        .and_then(|ps| ps.into_iter().find(|p| p.tag.as_deref() == Some(tag)))
    {
        return p;
    }
    let id = program_names()
        .into_iter()
        .find(|(_, (_, t))| t == tag)
        .map(|(id, _)| id);
    let name = Some(Untrusted::from(name)).filter(|n| !n.as_bytes().is_empty());
    let holder = id.and_then(|id| holders().remove(&id));
    let pin = id.and_then(|id| pins().remove(&id));
    let agent = agent_of(name.as_ref(), pin.as_ref(), holder.as_ref().map(|h| &h.1));
    BpfProgram {
        id,
        name,
        tag: Some(tag.to_string()),
        attach: "bpf",
        device: None,
        cgroup: None,
        holder,
        pin,
        agent,
    }
}

/// What several programs at one hook share, none of them named: any of
/// them may have built the RST.
pub fn one_of(progs: &[BpfProgram]) -> Option<BpfProgram> {
    match progs {
        [] => None,
        [p] => Some(p.clone()),
        [p, ..] => Some(BpfProgram {
            id: None,
            name: None,
            tag: None,
            attach: if progs.iter().all(|q| q.attach == p.attach) {
                p.attach
            } else {
                "egress"
            },
            device: p.device.clone(),
            cgroup: None,
            holder: None,
            pin: None,
            agent: progs
                .iter()
                .map(|q| q.agent)
                .reduce(|a, b| if a == b { a } else { None })
                .flatten(),
        }),
    }
}

/// At `hooks`, on every device or only on device `only`.
fn at(netns: &Path, hooks: &[Hook], only: Option<u32>) -> Result<Vec<BpfProgram>, String> {
    let cgroups = cgroup_programs(hooks);
    let hooks = hooks.to_vec();
    let attached = crate::kernel::netns::run_in(netns, move || attached_here(&hooks, only))?;
    let attached: Vec<Attached> = attached.into_iter().chain(cgroups).collect();
    if attached.is_empty() {
        return Ok(vec![]);
    }
    let names = program_names();
    let holders = holders();
    let pins = pins();
    Ok(attached
        .into_iter()
        .map(|a| {
            let (name, tag) = match a.id.and_then(|id| names.get(&id)) {
                // The kernel's name of the program: a cls_bpf filter's
                // TCA_BPF_NAME is its loader's label (tc's "file:[section]").
                Some((n, t)) => (n.clone().or(a.name), Some(t.clone())),
                None => (a.name, a.tag),
            };
            let holder = a.id.and_then(|id| holders.get(&id).cloned());
            let pin = a.id.and_then(|id| pins.get(&id).cloned());
            let agent = agent_of(name.as_ref(), pin.as_ref(), holder.as_ref().map(|h| &h.1));
            BpfProgram {
                id: a.id,
                name,
                tag,
                attach: a.attach,
                device: a.device,
                cgroup: a.cgroup,
                holder,
                pin,
                agent,
            }
        })
        .collect())
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_OPS: u16 = 5;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_TAG: u16 = 10;
const TCA_BPF_ID: u16 = 11;
/// clsact's ingress and egress parents (TC_H_CLSACT with
/// TC_H_MIN_INGRESS / TC_H_MIN_EGRESS).
const TC_INGRESS_PARENT: u32 = 0xFFFF_FFF2;
const TC_EGRESS_PARENT: u32 = 0xFFFF_FFF3;

/// In the calling thread's namespace.
fn attached_here(hooks: &[Hook], only: Option<u32>) -> Result<Vec<Attached>, String> {
    let fd = route_socket()?;
    let mut out = vec![];
    let mut links = vec![];
    // struct ifinfomsg: 16 bytes, all zero (every device).
    for (kind, body) in dump(&fd, RTM_GETLINK, &[0u8; 16])? {
        if kind != RTM_NEWLINK || body.len() < 16 {
            continue;
        }
        let index = i32::from_ne_bytes(body[4..8].try_into().unwrap());
        let mut name = None;
        let mut xdp = None;
        for (kind, v) in attrs(&body[16..]) {
            match kind {
                IFLA_IFNAME => name = Some(cstr(v)),
                IFLA_XDP => {
                    xdp = attrs(v)
                        .find(|(k, _)| *k == IFLA_XDP_PROG_ID)
                        .and_then(|(_, v)| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)))
                        .filter(|id| *id != 0)
                }
                _ => {}
            }
        }
        let Some(name) = name else { continue };
        if only.is_some_and(|only| i64::from(only) != i64::from(index)) {
            continue;
        }
        if let (Some(id), true) = (xdp, hooks.contains(&Hook::Xdp)) {
            out.push(Attached {
                id: Some(id),
                name: None,
                tag: None,
                attach: "xdp",
                device: Some(name.clone()),
                cgroup: None,
            });
        }
        links.push((index, name));
    }
    for (index, device) in &links {
        for (hook, parent, tc, tcx) in [
            (
                Hook::TcIngress,
                TC_INGRESS_PARENT,
                "tc-ingress",
                "tcx-ingress",
            ),
            (Hook::TcEgress, TC_EGRESS_PARENT, "tc-egress", "tcx-egress"),
        ] {
            if !hooks.contains(&hook) {
                continue;
            }
            // struct tcmsg: family, pads, ifindex, handle, parent, info.
            let mut req = [0u8; 20];
            req[4..8].copy_from_slice(&index.to_ne_bytes());
            req[12..16].copy_from_slice(&parent.to_ne_bytes());
            // A device without clsact refuses the dump: nothing there.
            for (kind, body) in dump(&fd, RTM_GETTFILTER, &req).unwrap_or_default() {
                if kind != RTM_NEWTFILTER || body.len() < 20 {
                    continue;
                }
                if let Some(a) = bpf_filter(&body[20..], tc, device) {
                    out.push(a);
                }
            }
            // tcx (6.6+): links on the device, no qdisc.
            let ty = match hook {
                Hook::TcIngress => aya::programs::TcAttachType::Ingress,
                _ => aya::programs::TcAttachType::Egress,
            };
            let name = String::from_utf8_lossy(device.as_bytes()).into_owned();
            if let Ok((_, progs)) = aya::programs::SchedClassifier::query_tcx(&name, ty) {
                for p in progs {
                    out.push(Attached {
                        id: Some(p.id()),
                        name: p.name_as_str().map(Untrusted::from),
                        tag: Some(format!("{:016x}", p.tag())),
                        attach: tcx,
                        device: Some(device.clone()),
                        cgroup: None,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Programs attached to cgroups at `hooks` (cgroup ones only), walking
/// the first cgroup2 mount (bounded): BPF_PROG_QUERY on each cgroup,
/// without inherited programs, so each is listed where it is attached.
fn cgroup_programs(hooks: &[Hook]) -> Vec<Attached> {
    const MAX_CGROUPS: usize = 4096;
    // BPF_CGROUP_INET_INGRESS (0), BPF_CGROUP_INET_EGRESS (1).
    let types: Vec<(u32, &'static str)> = hooks
        .iter()
        .filter_map(|h| match h {
            Hook::CgroupIngress => Some((0, "cgroup-ingress")),
            Hook::CgroupEgress => Some((1, "cgroup-egress")),
            _ => None,
        })
        .collect();
    if types.is_empty() {
        return vec![];
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(root) = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let dir = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(unescape(dir)))
    }) else {
        return vec![];
    };
    let mut out = vec![];
    let mut dirs = vec![root.clone()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        seen += 1;
        if seen > MAX_CGROUPS {
            break;
        }
        if let Ok(f) = File::open(&dir) {
            for (ty, attach) in &types {
                for id in query_cgroup(&f, *ty) {
                    let rel = dir.strip_prefix(&root).unwrap_or(&dir);
                    let path = Path::new("/").join(rel);
                    out.push(Attached {
                        id: Some(id),
                        name: None,
                        tag: None,
                        attach,
                        device: None,
                        cgroup: Some(Untrusted::from(path.as_path())),
                    });
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// The ids of the programs attached to cgroup `f` at `attach_type`.
fn query_cgroup(f: &File, attach_type: u32) -> Vec<u32> {
    let mut ids = [0u32; 64];
    // union bpf_attr, BPF_PROG_QUERY: target_fd, attach_type, query_flags,
    // attach_flags, prog_ids, prog_cnt.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(f.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    // SAFETY: a zeroed bpf_attr with a valid fd and a buffer of the size
    // given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 16, attr.as_mut_ptr(), attr.len()) };
    if r != 0 {
        return vec![];
    }
    let n = u32::from_ne_bytes(attr[24..28].try_into().unwrap()) as usize;
    ids[..n.min(ids.len())].to_vec()
}

/// A cls_bpf filter's program from its TCA_OPTIONS.
fn bpf_filter(attrs_of: &[u8], attach: &'static str, device: &Untrusted) -> Option<Attached> {
    let mut is_bpf = false;
    let mut options: &[u8] = &[];
    for (kind, v) in attrs(attrs_of) {
        match kind {
            TCA_KIND => is_bpf = cstr(v).as_bytes() == b"bpf",
            TCA_OPTIONS => options = v,
            _ => {}
        }
    }
    // The dump also lists each chain's head, without options.
    if !is_bpf || options.is_empty() {
        return None;
    }
    let mut a = Attached {
        id: None,
        name: None,
        tag: None,
        attach,
        device: Some(device.clone()),
        cgroup: None,
    };
    let mut classic = false;
    for (kind, v) in attrs(options) {
        match kind {
            TCA_BPF_ID => a.id = Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)),
            TCA_BPF_NAME => a.name = Some(cstr(v)),
            TCA_BPF_TAG => a.tag = Some(v.iter().map(|b| format!("{b:02x}")).collect()),
            TCA_BPF_OPS => classic = true,
            _ => {}
        }
    }
    (a.id.is_some() || classic).then_some(a)
}

fn route_socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(format!(
            "netlink route socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A netlink dump request of `kind` with `body`: each answer's (type,
/// body).
fn dump(fd: &OwnedFd, kind: u16, body: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let mut req = vec![0u8; 16];
    req.extend_from_slice(body);
    let len = req.len() as u32;
    req[..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: a valid buffer of its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(format!("netlink: {}", std::io::Error::last_os_error()));
    }
    let mut out = vec![];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: a valid buffer of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return Err(format!("netlink: {}", std::io::Error::last_os_error()));
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            if len < 16 || len > msgs.len() {
                break;
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => return Err("netlink: the kernel refused the dump".into()),
                _ => out.push((ty, msgs[16..len].to_vec())),
            }
            msgs = msgs.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }
}

/// Netlink attributes: (type without flags, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, v))
    })
}

fn cstr(v: &[u8]) -> Untrusted {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    Untrusted::from_bytes(&v[..end])
}

/// Every loaded program's name and tag, by id.
fn program_names() -> HashMap<u32, (Option<Untrusted>, String)> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| {
            let name = Some(Untrusted::from_bytes(p.name())).filter(|n| !n.as_bytes().is_empty());
            (p.id(), (name, format!("{:016x}", p.tag())))
        })
        .collect()
}

/// The process holding each program, by id: an fd of the program or of a
/// link to it (its fdinfo's `prog_id`). rsttrace's own are not holders.
fn holders() -> HashMap<u32, (u32, Untrusted)> {
    let me = std::process::id();
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.as_os_str().as_encoded_bytes();
            if t != b"anon_inode:bpf-prog" && t != b"anon_inode:bpf_link" {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            let Some(id) = std::fs::read_to_string(info).ok().and_then(|s| prog_id(&s)) else {
                continue;
            };
            out.entry(id).or_insert_with(|| {
                let comm = std::fs::read(p.path().join("comm")).unwrap_or_default();
                let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
                (pid, Untrusted::from_bytes(comm))
            });
        }
    }
    out
}

/// `prog_id:\tN` of an fdinfo.
fn prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Programs pinned under every bpffs mount, by id (the first pin found).
/// Bounded: a bpffs with many pins is not walked whole.
fn pins() -> HashMap<u32, Untrusted> {
    const MAX_ENTRIES: usize = 4096;
    let mut out = HashMap::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut dirs: Vec<(PathBuf, u32)> = mounts
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let dir = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "bpf").then(|| PathBuf::from(unescape(dir)))
        })
        .map(|d| (d, 0))
        .collect();
    let mut seen = 0;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return out;
            }
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() {
                if depth < 6 {
                    dirs.push((e.path(), depth + 1));
                }
            } else if let Ok(info) = aya::programs::ProgramInfo::from_pin(e.path()) {
                out.entry(info.id())
                    .or_insert_with(|| Untrusted::from(e.path().as_path()));
            }
        }
    }
    out
}

/// A mountinfo path: octal escapes (`\040` for a space) decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_programs_at_a_hook_name_none() {
        let p = |id: u32, attach: &'static str| BpfProgram {
            id: Some(id),
            name: Some(Untrusted::from("cil_to_netdev")),
            tag: Some(format!("{id:016x}")),
            attach,
            device: Some(Untrusted::from("eth0")),
            cgroup: None,
            holder: Some((1, Untrusted::from("cilium-agent"))),
            pin: None,
            agent: Some("Cilium"),
        };
        assert_eq!(one_of(&[]), None);
        assert_eq!(one_of(&[p(1, "tc-egress")]), Some(p(1, "tc-egress")));
        assert_eq!(
            one_of(&[p(1, "tc-egress"), p(2, "tcx-egress")]),
            Some(BpfProgram {
                id: None,
                name: None,
                tag: None,
                attach: "egress",
                device: Some(Untrusted::from("eth0")),
                cgroup: None,
                holder: None,
                pin: None,
                agent: Some("Cilium"),
            })
        );
    }

    #[test]
    fn agents_by_program_name_pin_and_holder() {
        let u = |s: &str| Untrusted::from(s);
        assert_eq!(
            agent_of(Some(&u("cil_from_contai")), None, None),
            Some("Cilium")
        );
        assert_eq!(
            agent_of(Some(&u("cali_tc_preambl")), None, None),
            Some("Calico")
        );
        assert_eq!(
            agent_of(Some(&u("calico_tc_main")), None, None),
            Some("Calico")
        );
        assert_eq!(
            agent_of(Some(&u("x")), Some(&u("/sys/fs/bpf/tetragon/prog")), None),
            Some("Cilium Tetragon")
        );
        assert_eq!(
            agent_of(None, None, Some(&u("falcon-sensor"))),
            Some("CrowdStrike Falcon")
        );
        assert_eq!(
            agent_of(Some(&u("my_filter")), Some(&u("/sys/fs/bpf/x")), None),
            None
        );
        // A pin directory merely containing the name is not it.
        assert_eq!(
            agent_of(None, Some(&u("/sys/fs/bpf/not-tetragon/p")), None),
            None
        );
    }

    #[test]
    fn fdinfo_prog_id_and_mountinfo_paths() {
        assert_eq!(
            prog_id("pos:\t0\nflags:\t02000002\nprog_type:\t3\nprog_id:\t812\n"),
            Some(812)
        );
        assert_eq!(
            prog_id("link_type:\ttcx\nlink_id:\t4\nprog_id:\t9\n"),
            Some(9)
        );
        assert_eq!(prog_id("pos:\t0\n"), None);
        assert_eq!(unescape(r"/run/my\040bpf"), "/run/my bpf");
        assert_eq!(unescape("/sys/fs/bpf"), "/sys/fs/bpf");
    }

    #[test]
    fn netlink_attributes_and_cls_bpf_options() {
        // TCA_KIND "bpf", TCA_OPTIONS { TCA_BPF_ID 7, TCA_BPF_NAME "p",
        // TCA_BPF_TAG 8 bytes }.
        let attr = |kind: u16, v: &[u8]| {
            let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(v);
            while !a.len().is_multiple_of(4) {
                a.push(0);
            }
            a
        };
        let mut opts = attr(TCA_BPF_ID, &7u32.to_ne_bytes());
        opts.extend(attr(TCA_BPF_NAME, b"p\0"));
        opts.extend(attr(TCA_BPF_TAG, &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]));
        let mut msg = attr(TCA_KIND, b"bpf\0");
        msg.extend(attr(TCA_OPTIONS | 0x8000, &opts));
        let a = bpf_filter(&msg, "tc-ingress", &"eth0".into()).unwrap();
        assert_eq!(a.device.unwrap(), "eth0");
        assert_eq!(a.id, Some(7));
        assert_eq!(a.name.unwrap(), "p");
        assert_eq!(a.tag.as_deref(), Some("deadbeef00010203"));
        // A classic program: its ops, no id.
        let mut msg = attr(TCA_KIND, b"bpf\0");
        msg.extend(attr(TCA_OPTIONS, &attr(TCA_BPF_OPS, &[0; 8])));
        let a = bpf_filter(&msg, "tc-egress", &"eth0".into()).unwrap();
        assert_eq!((a.id, a.attach), (None, "tc-egress"));
        // Another classifier, or a chain head without options.
        assert!(bpf_filter(&attr(TCA_KIND, b"u32\0"), "tc-ingress", &"e".into()).is_none());
        assert!(bpf_filter(&attr(TCA_KIND, b"bpf\0"), "tc-ingress", &"e".into()).is_none());
    }
}
