//! The VM's initramfs: Debian's static busybox for the shell, the host's
//! own network tools (with their libraries) that the tests run, the kernel
//! modules they need, the workspace's test binaries and an /init that
//! mounts what rsttrace reads, runs the job and powers off.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{cpio::Archive, kernel::ModulePlan};

/// Tools the tests exec (tests/*.rs, tests/support), found on the host as
/// the Debian packages .ci/run installs provide them. (name, required)
/// The host's sh (dash) too: Debian's busybox shell runs its own applets
/// before anything in PATH, so `ip` in a script would be busybox's.
const TOOLS: &[(&str, bool)] = &[
    ("sh", true),
    ("ip", true),
    ("tc", true),
    ("ss", true),
    ("nft", true),
    ("iptables", true),
    ("ip6tables", true),
    ("iptables-legacy", true),
    ("ip6tables-legacy", false),
    // fail2ban's iptables-ipset action's sets (tests/blocklists.rs).
    ("ipset", true),
    ("setpriv", true),
    ("unshare", true),
    // busybox has one too.
    ("sysctl", false),
    ("bpftool", false),
    // The OCI runtime tests/containers.rs runs the image with (Debian's
    // crun, as a node's container runtime would).
    ("crun", false),
];
/// iptables loads its matches and targets from here with dlopen.
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// Host configuration the tools read (protocol and service names,
/// iproute2's tables).
const HOST_ETC: [&str; 4] = [
    "/etc/protocols",
    "/etc/services",
    "/etc/ethertypes",
    "/etc/iproute2",
];
const PATH: &str = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the VM runs after booting.
pub enum Job {
    /// Every test binary, each with these arguments.
    Tests { args: Vec<String> },
    /// A shell command.
    Exec(String),
}

/// The host files that do not depend on the kernel: tools, libraries,
/// busybox, the workspace's binaries. Built once, extended per kernel.
/// `bins` are the test binaries (name, path).
pub fn base(
    busybox: &Path,
    rsttrace: &Path,
    bins: &[(String, PathBuf)],
    job: &Job,
    image: Option<&Path>,
) -> Result<Archive> {
    let mut a = Archive::default();
    // Merged /usr as on the host, before anything lands below these.
    for link in ["/bin", "/sbin", "/lib", "/lib64"] {
        if let Ok(target) = std::fs::read_link(link) {
            a.symlink(link, target);
        }
    }
    a.symlink("/var/run", "../run");
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/root",
        "/usr/local/bin",
    ] {
        a.dir(d);
    }
    // The kernel opens it for init's stdio before devtmpfs is mounted.
    a.char_dev("/dev/console", 5, 1);

    let mut elves = vec![];
    for &(name, required) in TOOLS {
        match find_on_host(name) {
            Some(p) => {
                a.copy_host_path(&p)?;
                elves.push(p);
            }
            None if required => bail!(
                "{name} is not installed on this host, and the VM tests run it: \
                 install the packages .ci/run lists"
            ),
            None => eprintln!("xtask: vm: warning: {name} not on this host, left out of the VM"),
        }
    }
    if Path::new(XTABLES).is_dir() {
        a.copy_host_path(Path::new(XTABLES))?;
        for e in std::fs::read_dir(XTABLES)? {
            let p = e?.path();
            a.copy_host_path(&p)?;
            if p.extension().is_some_and(|x| x == "so") {
                elves.push(p);
            }
        }
    }
    for etc in HOST_ETC {
        let p = Path::new(etc);
        if p.is_dir() {
            for e in walk(p)? {
                a.copy_host_path(&e)?;
            }
        } else if p.exists() {
            a.copy_host_path(p)?;
        }
    }
    etc_files(&mut a);

    a.host_file(rsttrace, rsttrace, 0o755);
    a.symlink("/usr/local/bin/rsttrace", rsttrace);
    elves.push(rsttrace.to_path_buf());
    for (name, exe) in bins {
        a.host_file(exe, exe, 0o755);
        // Short names for --exec: `test-stack_causes closed_port`.
        a.symlink(format!("/usr/local/bin/test-{name}"), exe);
        elves.push(exe.clone());
    }
    match standins()? {
        Some(built) => {
            for (vm_path, host) in built {
                a.host_file(vm_path, &host, 0o755);
                elves.push(host);
            }
        }
        None => eprintln!(
            "xtask: vm: warning: no C compiler on this host (.ci/run installs gcc-12): the \
             stand-ins of tests/standin/ are left out, and agents_in_process and user_stacks \
             fail in the VM"
        ),
    }
    for lib in shared_libraries(&elves)? {
        a.copy_host_path(&lib)?;
    }

    // busybox last: its applets only fill names no real tool has.
    a.host_file("/usr/bin/busybox", busybox, 0o755);
    for applet in busybox_applets(busybox)? {
        let taken = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| a.contains(&Path::new(d).join(&applet)));
        if !taken {
            a.symlink(format!("/usr/bin/{applet}"), "busybox");
        }
    }
    if let Some(layout) = image {
        for f in walk(layout)? {
            let rel = f.strip_prefix(layout).expect("under the layout");
            a.host_file(Path::new(super::IMAGE_IN_VM).join(rel), &f, 0o644);
        }
    }
    a.data("/init", INIT, 0o755);
    a.data("/etc/rsttrace-vm/job", job_script(bins, job), 0o755);
    Ok(a)
}

/// Adds one kernel's modules (in load order) to a copy of the base.
///
/// `skip`: tests this kernel can't run (see `vm::NEEDS_MODULE`); `kmod`:
/// the test module built for it, whose (ignored) test then runs too.
pub fn write(
    mut a: Archive,
    release: &str,
    modules: &ModulePlan,
    skip: &[&str],
    kmod: Option<&Path>,
    out: &Path,
) -> Result<()> {
    let mut list = String::new();
    for ko in &modules.load {
        let name = ko.file_name().expect("file").to_string_lossy();
        let path = format!("/usr/lib/modules/{release}/{name}");
        a.host_file(&path, ko, 0o644);
        list.push_str(&path);
        list.push('\n');
    }
    a.data("/etc/rsttrace-vm/modules", list, 0o644);
    let mut args: String = skip.iter().map(|t| format!("--skip {t}\n")).collect();
    if let Some(ko) = kmod {
        use super::testmod::{ENV, VM_PATH};
        a.host_file(VM_PATH, ko, 0o644);
        a.data(
            "/etc/rsttrace-vm/env",
            format!("export {ENV}={VM_PATH}\n"),
            0o644,
        );
        args.push_str("--include-ignored\n");
    }
    a.data("/etc/rsttrace-vm/args", args, 0o644);
    let tmp = out.with_extension("tmp");
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    a.write(f)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// The stand-ins of tracer-user/tests/standin/ the tests find in the VM
/// (which has no compiler), built as the tests build them on a host
/// (`support::standin`): VM path, source, compiler flags.
const STANDINS: &[(&str, &str, &[&str])] = &[
    // tests/agents_in_process.rs's stand-in ModSecurity.
    (
        "/usr/lib/rsttrace-vm/libmodsecurity.so.3",
        "modsecurity.c",
        &["-shared", "-fPIC", "-O2"],
    ),
    // tests/user_stacks.rs's server, with and without frame pointers.
    (
        "/usr/lib/rsttrace-vm/abort-server-fp",
        "abort_server.c",
        &["-O1", "-fno-omit-frame-pointer"],
    ),
    (
        "/usr/lib/rsttrace-vm/abort-server-nofp",
        "abort_server.c",
        &["-O2", "-fomit-frame-pointer"],
    ),
];

/// The stand-ins built with the host's C compiler, or None without one.
fn standins() -> Result<Option<Vec<(&'static str, PathBuf)>>> {
    let root = crate::workspace_root();
    let out_dir = root.join("target/vm/standin");
    std::fs::create_dir_all(&out_dir)?;
    let Some(cc) = ["cc", "gcc", "gcc-12"].into_iter().find(|cc| {
        Command::new(cc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        return Ok(None);
    };
    let mut built = Vec::new();
    for (vm_path, src, flags) in STANDINS {
        let src = root.join("tracer-user/tests/standin").join(src);
        let out = out_dir.join(Path::new(vm_path).file_name().expect("a file name"));
        let status = Command::new(cc)
            .args(*flags)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .with_context(|| format!("running {cc}"))?;
        if !status.success() {
            bail!("{cc} failed on {}", src.display());
        }
        built.push((*vm_path, out));
    }
    Ok(Some(built))
}

fn find_on_host(name: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Users, groups and names the tools and tests look up.
fn etc_files(a: &mut Archive) {
    a.data(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    a.data("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    a.data(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n",
        0o644,
    );
    a.data("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    // The scope tests pass it as a file that is not a namespace.
    a.data("/etc/hostname", "rsttrace-vm\n", 0o644);
}

/// The shared-library closure of `elves` (the dynamic loader included),
/// as the host's ldd resolves it.
fn shared_libraries(elves: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for elf in elves {
        let out = Command::new("ldd")
            .arg(elf)
            .output()
            .context("can't run ldd (libc-bin)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // Static executables (and busybox) have nothing to add.
            let err = String::from_utf8_lossy(&out.stderr);
            if text.contains("statically linked") || err.contains("not a dynamic executable") {
                continue;
            }
            bail!("ldd {} failed: {}", elf.display(), err.trim());
        }
        for line in text.lines() {
            let line = line.trim();
            if line.contains("=> not found") {
                bail!("{}: library {line}", elf.display());
            }
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = line
                .split_once("=> ")
                .map_or(line, |(_, p)| p)
                .split(" (")
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libs)
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("can't run {}", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "busybox")
        .map(str::to_string)
        .collect())
}

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn job_script(bins: &[(String, PathBuf)], job: &Job) -> String {
    let mut s = String::from("#!/bin/sh\n# Written by `cargo xtask vm-test`.\ncd /tmp\n");
    match job {
        Job::Exec(cmd) => {
            s.push_str(cmd);
            s.push_str(
                "\nrc=$?\n[ $rc -eq 0 ] || echo \"exit $rc\" > /run/rsttrace-vm-fail\nexit $rc\n",
            );
        }
        Job::Tests { args } => {
            // Word-split on purpose: this kernel's arguments (`--skip NAME`
            // pairs, `--include-ignored`), one per line.
            s.push_str("fail=\"\"\nkargs=$(cat /etc/rsttrace-vm/args 2>/dev/null)\n");
            for (name, exe) in bins {
                let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
                s.push_str(&format!(
                    "echo \"RSTTRACE-VM: test binary {name}: start\"\n\
                     t0=$(date +%s)\n\
                     {} {} $kargs\n\
                     rc=$?\n\
                     echo \"RSTTRACE-VM: test binary {name}: exit $rc after $(( $(date +%s) - t0 ))s\"\n\
                     [ $rc -eq 0 ] || fail=\"$fail {name}(exit $rc)\"\n",
                    quote(&exe.to_string_lossy()),
                    args.join(" ")
                ));
            }
            s.push_str(
                "[ -z \"$fail\" ] && exit 0\necho \"failed:$fail\" > /run/rsttrace-vm-fail\nexit 1\n",
            );
        }
    }
    s
}

const INIT: &str = r#"#!/bin/sh
# /init of the rsttrace test VM, written by `cargo xtask vm-test`: mount what
# rsttrace and the tests read, load the modules, run the job, power off.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
say() { echo "RSTTRACE-VM: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
# /tmp stays on the initramfs (already a writable tmpfs): a tmpfs over it
# would hide a workspace checked out under /tmp, and the binaries in it.
chmod 1777 /tmp
mount -t debugfs debugfs /sys/kernel/debug || say "warning: debugfs not mounted"
mount -t tracefs tracefs /sys/kernel/tracing || say "warning: tracefs not mounted"
mount -t bpf bpf /sys/fs/bpf || say "warning: bpffs not mounted"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || say "warning: cgroup2 not mounted"
mkdir -p /run/netns
hostname rsttrace-vm
while read -r m; do
    insmod "$m" || say "warning: insmod $m failed"
done < /etc/rsttrace-vm/modules
ip link set lo up
# This kernel's environment for the tests (the test module's path).
[ -f /etc/rsttrace-vm/env ] && . /etc/rsttrace-vm/env
say "booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime)s"
sh /etc/rsttrace-vm/job
if [ $? -eq 0 ]; then
    echo "RSTTRACE-VM-RESULT: PASS"
else
    echo "RSTTRACE-VM-RESULT: FAIL $(cat /run/rsttrace-vm-fail 2>/dev/null)"
fi
sync
poweroff -f
"#;
