//! The test-kit the integration tests and `cargo xtask bench` share: the
//! pieces that set up namespaces and read the kernel's own counters, with
//! no test framework in them (std and libc only). The bench includes this
//! file with `#[path]`; the tests as `support::kit`. Both fail loudly: a
//! counter that can't be read is a broken run, never a 0.
#![allow(dead_code)]

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    thread,
};

/// Runs `ip` with `args`; panics with its stderr unless it succeeds.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates network namespace `name` with its loopback up; one left over
/// from a run that was killed is deleted first.
pub fn netns_add(name: &str) {
    netns_delete(name);
    ip(&["netns", "add", name]);
    ip(&["-n", name, "link", "set", "lo", "up"]);
}

/// Deletes network namespace `name` (quietly: it may be gone already).
pub fn netns_delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "delete", name])
        .stderr(Stdio::null())
        .status();
}

/// Moves the calling thread into namespace `name`.
pub fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread that has entered namespace `name`: sockets it
/// creates belong to the namespace.
pub fn run_in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_string();
    thread::spawn(move || {
        enter_netns(&name);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Tcp OutRsts of the calling thread's namespace: exactly the RSTs its TCP
/// stack sent.
pub fn out_rsts_here() -> u64 {
    tcp_mib_here("OutRsts")
}

/// A counter of the Tcp lines of /proc/net/snmp, in the calling thread's
/// namespace. Hand-read rather than with procfs: procfs has no reader for
/// `/proc/thread-self/net/snmp` (a thread's namespace), and two lines of
/// names and values are all there is to it.
pub fn tcp_mib_here(name: &str) -> u64 {
    mib_here("snmp", "Tcp:", name)
}

/// A counter of the TcpExt lines of /proc/net/netstat (ListenOverflows,
/// ListenDrops, ...), in the calling thread's namespace.
pub fn tcp_ext_here(name: &str) -> u64 {
    mib_here("netstat", "TcpExt:", name)
}

fn mib_here(file: &str, prefix: &str, name: &str) -> u64 {
    let path = format!("/proc/thread-self/net/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut tcp = text.lines().filter(|l| l.starts_with(prefix));
    let names: Vec<&str> = tcp.next().expect("header").split_whitespace().collect();
    let values: Vec<&str> = tcp.next().expect("values").split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no {prefix} {name} in {path}"));
    values[i]
        .parse()
        .unwrap_or_else(|e| panic!("{prefix} {name}: {:?}: {e}", values[i]))
}

/// A bpffs mounted for one test (in a directory of its own under /tmp,
/// never /sys/fs/bpf), unmounted on drop.
pub struct BpfFs {
    pub dir: std::path::PathBuf,
}

impl BpfFs {
    pub fn mount(tag: &str) -> Self {
        let dir = std::path::PathBuf::from(format!(
            "/tmp/rsttrace-t-bpffs-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a bpffs on {}", dir.display());
        BpfFs { dir }
    }

    /// Pins the program or map `fd` as `name`; its path.
    pub fn pin(&self, fd: &impl std::os::fd::AsRawFd, name: &str) -> std::path::PathBuf {
        let path = self.dir.join(name);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // union bpf_attr, BPF_OBJ_PIN: pathname, bpf_fd, file_flags.
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        // SAFETY: a zeroed bpf_attr with a valid path.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_mut_ptr(), attr.len()) };
        assert!(
            r == 0,
            "pinning {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A cgroup of its own in a cgroup2 hierarchy the test mounts (under
/// /tmp, never /sys/fs/cgroup), removed and unmounted on drop.
pub struct Cgroup2 {
    pub mount: std::path::PathBuf,
    pub dir: std::path::PathBuf,
}

impl Cgroup2 {
    pub fn new(tag: &str) -> Self {
        let mount =
            std::path::PathBuf::from(format!("/tmp/rsttrace-t-cg2-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&mount)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting cgroup2 on {}", mount.display());
        let dir = mount.join(format!("rsttrace-t-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Cgroup2 { mount, dir }
    }

    pub fn procs(&self) -> std::path::PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Attaches program `fd` as the cgroup's BPF_CGROUP_INET_EGRESS program.
    pub fn attach_egress(&self, fd: &impl std::os::fd::AsRawFd) {
        let dir = std::fs::File::open(&self.dir).unwrap();
        // union bpf_attr, BPF_PROG_ATTACH: target_fd, attach_bpf_fd,
        // attach_type, attach_flags.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(dir.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&1u32.to_ne_bytes()); // BPF_CGROUP_INET_EGRESS
        // SAFETY: a zeroed bpf_attr with valid fds.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 8, attr.as_mut_ptr(), attr.len()) };
        assert!(
            r == 0,
            "BPF_PROG_ATTACH: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// In a child process (forked from the calling thread, so in its network
/// namespace) that first moves itself into the cgroup of `procs`: a TCP
/// connect from `from` to `to`:`port`, given up after `ms`. The child
/// makes only raw system calls; the parent waits for it.
pub fn connect_in_cgroup(procs: &std::path::Path, from: &str, to: &str, port: u16, ms: u64) {
    let procs = std::ffi::CString::new(procs.to_str().unwrap()).unwrap();
    let sa = |ip: &str, port: u16| {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        }
    };
    let (local, remote) = (sa(from, 0), sa(to, port));
    let timeout = libc::timeval {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the child makes only async-signal-safe calls on memory
    // prepared before the fork, and ends with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            // "0": the writing process itself.
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(2);
            }
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::bind(s, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
                libc::_exit(3);
            }
            libc::connect(s, (&remote as *const libc::sockaddr_in).cast(), len);
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the connecting child: status {status:#x}"
        );
    }
}
