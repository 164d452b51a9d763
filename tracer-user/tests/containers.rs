//! The image `cargo xtask image` builds, run by a real OCI runtime (crun)
//! with the settings deploy/kubernetes/*.yaml give it, as a node would.
//!
//! Only `cargo xtask vm-test --tests containers` runs this (Cargo.toml:
//! `test = false`): its VMs mount cgroup2 and carry crun and the image as an
//! OCI image layout. Anywhere else it fails, never passes by skipping.
//!
//! Each container's runtime config is generated here from the manifest
//! (capabilities, privileges, host namespaces, hostPath mounts, args,
//! ports, memory limit) and the image's own config (entrypoint, env), the
//! way a kubelet and containerd would; a manifest field the generator does
//! not model fails the test, so the manifests cannot drift from what runs.

mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use serde_yaml::Value as Yaml;
use support::{ATTACH_WITHIN, Netns, scenario, wire::Wire};

/// Where `cargo xtask vm-test` puts the image (xtask/src/vm.rs IMAGE_IN_VM).
const IMAGE: &str = "/usr/share/rsttrace-vm/image";
const SIDECAR: &str = include_str!("../../deploy/kubernetes/sidecar.yaml");
const DAEMONSET: &str = include_str!("../../deploy/kubernetes/daemonset.yaml");
/// The scratch space for bundles and the unpacked image.
const WORK: &str = "/tmp/rsttrace-containers";

/// One container test at a time: the node agent sees every namespace's
/// RSTs, and kernel.perf_event_paranoid is the whole machine's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails loudly outside vm-test's VM.
fn require_vm() {
    support::require_root();
    assert!(
        Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "no cgroup2 at /sys/fs/cgroup (crun needs the unified hierarchy): \
         these tests run in `cargo xtask vm-test --tests containers`"
    );
    assert!(
        Path::new(IMAGE).join("index.json").exists(),
        "no image at {IMAGE}: these tests run in `cargo xtask vm-test --tests containers`, \
         which builds the image and puts it there"
    );
}

// ---- The manifests -------------------------------------------------------

/// What the test takes from a pod spec and its rsttrace container.
#[derive(Debug, Clone)]
struct PodSettings {
    host_network: bool,
    host_pid: bool,
    args: Vec<String>,
    env: Vec<String>,
    caps: Vec<String>,
    no_new_privs: bool,
    read_only_root: bool,
    mounts: Vec<HostMount>,
    ports: Vec<u16>,
    memory_limit: Option<u64>,
}

#[derive(Debug, Clone)]
struct HostMount {
    host: String,
    container: String,
    read_only: bool,
    propagation: &'static str,
    create: bool,
}

/// Fails on a key the generator does not model: a new manifest setting
/// must be taught here before it ships untested.
fn only_keys(map: &Yaml, allowed: &[&str], what: &str) {
    let m = map
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: not a map"));
    for k in m.keys() {
        let k = k.as_str().unwrap_or("?");
        assert!(
            allowed.contains(&k),
            "{what}.{k}: a setting tests/containers.rs does not model; teach it before shipping it"
        );
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// "512Mi", "64M", "1Gi" in bytes.
fn quantity(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a quantity") * mult;
        }
    }
    q.parse().expect("a quantity")
}

/// The rsttrace container of a Pod or of a DaemonSet's pod template.
fn pod_settings(manifest: &str) -> PodSettings {
    let doc: Yaml = serde_yaml::from_str(manifest).expect("the manifest is YAML");
    let spec = match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        Some("DaemonSet") => &doc["spec"]["template"]["spec"],
        other => panic!("manifest kind {other:?}"),
    };
    only_keys(
        spec,
        &[
            "hostNetwork",
            "hostPID",
            "tolerations",
            "containers",
            "volumes",
        ],
        "spec",
    );
    let c = spec["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "rsttrace")
        .expect("a container named rsttrace");
    only_keys(
        c,
        &[
            "name",
            "image",
            "args",
            "env",
            "ports",
            "securityContext",
            "volumeMounts",
            "resources",
        ],
        "container",
    );
    let sc = &c["securityContext"];
    only_keys(
        sc,
        &[
            "privileged",
            "allowPrivilegeEscalation",
            "capabilities",
            "readOnlyRootFilesystem",
        ],
        "securityContext",
    );
    assert_ne!(
        sc["privileged"].as_bool(),
        Some(true),
        "a privileged container: the generator models unprivileged ones only"
    );
    let drop = strings(&sc["capabilities"]["drop"]);
    assert_eq!(
        drop,
        ["ALL"],
        "capabilities.drop: only [ALL] is modelled (the runtime's defaults otherwise)"
    );
    let caps = strings(&sc["capabilities"]["add"])
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let volumes: BTreeMap<String, &Yaml> = spec["volumes"]
        .as_sequence()
        .map(|v| v.iter().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|v| {
            only_keys(v, &["name", "hostPath"], "volume");
            (v["name"].as_str().expect("volume name").to_string(), v)
        })
        .collect();
    let mounts = c["volumeMounts"]
        .as_sequence()
        .map(|v| v.iter().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            only_keys(
                m,
                &["name", "mountPath", "readOnly", "mountPropagation"],
                "volumeMount",
            );
            let name = m["name"].as_str().expect("volumeMount name");
            let v = volumes
                .get(name)
                .unwrap_or_else(|| panic!("no volume {name}"));
            let hp = &v["hostPath"];
            only_keys(hp, &["path", "type"], "hostPath");
            let create = match hp["type"].as_str() {
                None | Some("Directory") => false,
                Some("DirectoryOrCreate") => true,
                Some(t) => panic!("hostPath type {t} not modelled"),
            };
            HostMount {
                host: hp["path"].as_str().expect("hostPath.path").to_string(),
                container: m["mountPath"].as_str().expect("mountPath").to_string(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                // The kubelet's mapping to OCI propagation flags.
                propagation: match m["mountPropagation"].as_str() {
                    None | Some("None") => "rprivate",
                    Some("HostToContainer") => "rslave",
                    Some("Bidirectional") => "rshared",
                    Some(p) => panic!("mountPropagation {p}"),
                },
                create,
            }
        })
        .collect();
    let ports = c["ports"]
        .as_sequence()
        .map(|p| {
            p.iter()
                .map(|p| p["containerPort"].as_u64().expect("containerPort") as u16)
                .collect()
        })
        .unwrap_or_default();
    let env = c["env"]
        .as_sequence()
        .map(|e| {
            e.iter()
                .map(|e| {
                    format!(
                        "{}={}",
                        e["name"].as_str().expect("env name"),
                        e["value"]
                            .as_str()
                            .expect("env value (valueFrom is not modelled)")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    PodSettings {
        host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
        host_pid: spec["hostPID"].as_bool().unwrap_or(false),
        args: strings(&c["args"]),
        env,
        caps,
        no_new_privs: !sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true),
        read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        mounts,
        ports,
        memory_limit: c["resources"]["limits"]["memory"].as_str().map(quantity),
    }
}

// ---- The image -----------------------------------------------------------

/// The image unpacked from its OCI layout: its layers, in order, into one
/// root, and the config the runtime takes the command from.
struct Image {
    rootfs: PathBuf,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
}

fn blob(digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("algorithm:hex digest");
    Path::new(IMAGE).join("blobs").join(alg).join(hex)
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn image() -> Image {
    let index = json_file(&Path::new(IMAGE).join("index.json"));
    let manifests = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(manifests.len(), 1, "one image in the layout: {index}");
    let manifest = json_file(&blob(manifests[0]["digest"].as_str().unwrap()));
    let config = json_file(&blob(manifest["config"]["digest"].as_str().unwrap()));
    let rootfs = Path::new(WORK).join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs).unwrap();
    for layer in manifest["layers"].as_array().expect("layers") {
        let media = layer["mediaType"].as_str().unwrap_or("");
        let z = if media.ends_with("+gzip") {
            "-xzf"
        } else {
            assert!(media.ends_with(".tar"), "layer type {media}");
            "-xf"
        };
        let path = blob(layer["digest"].as_str().unwrap());
        let out = Command::new("tar")
            .arg(z)
            .arg(&path)
            .arg("-C")
            .arg(&rootfs)
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "unpacking {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let c = &config["config"];
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    Image {
        rootfs,
        entrypoint: list(&c["Entrypoint"]),
        cmd: list(&c["Cmd"]),
        env: list(&c["Env"]),
    }
}

// ---- The runtime config --------------------------------------------------

/// How the container's network is set.
enum Net<'a> {
    /// The node's (hostNetwork: no network namespace of its own).
    Host,
    /// The pod's, which its containers share.
    Pod(&'a Netns),
}

/// The OCI runtime config containerd and the kubelet would give this
/// container (their defaults for an unprivileged one: masked and read-only
/// /proc paths, a read-only sysfs, a cgroup namespace; no seccomp profile,
/// Kubernetes' default being Unconfined).
fn oci_config(
    img: &Image,
    pod: &PodSettings,
    args: &[String],
    net: &Net<'_>,
    cgroup: &str,
) -> Value {
    // Kubernetes' args replace the image's CMD; none keep it.
    let args = if args.is_empty() { &img.cmd } else { args };
    let mut argv = img.entrypoint.clone();
    argv.extend(args.iter().cloned());
    let mut env = img.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env.extend(pod.env.iter().cloned());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &pod.mounts {
        if m.create {
            std::fs::create_dir_all(&m.host).unwrap();
        }
        let mut options = vec!["rbind", m.propagation];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.container, "type": "bind",
                           "source": m.host, "options": options}));
    }
    let mut namespaces = vec![
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if !pod.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    match (net, pod.host_network) {
        (Net::Host, true) => {}
        (Net::Pod(ns), false) => {
            namespaces.push(json!({"type": "network", "path": format!("/run/netns/{}", ns.name)}))
        }
        (Net::Host, false) => panic!("the manifest has no hostNetwork: run it in a pod"),
        (Net::Pod(_), true) => panic!("the manifest has hostNetwork: run it on the node's"),
    }
    let mut resources = json!({});
    if let Some(limit) = pod.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": pod.caps,
                "effective": pod.caps,
                "permitted": pod.caps,
            },
            "noNewPrivileges": pod.no_new_privs,
        },
        "root": {"path": img.rootfs, "readonly": pod.read_only_root},
        "hostname": "rsttrace",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroup,
            "resources": resources,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ],
        },
    })
}

// ---- Running containers --------------------------------------------------

/// A container started with `crun run`, its stdio piped through crun;
/// crun's own log in a file beside the bundle, both in every failure.
struct Container {
    id: String,
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: PathBuf,
}

fn bundle(id: &str, config: &Value) -> PathBuf {
    let dir = Path::new(WORK).join(id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    dir
}

fn crun(log: &Path) -> Command {
    let mut c = Command::new("crun");
    c.arg(format!("--log=file:{}", log.display()));
    c
}

/// How `crun run` starts: in a mount namespace of its own, chrooted into
/// a bind mount of /. The VM's / is the initramfs itself, a mount with no
/// parent, out of which pivot_root refuses to move (EINVAL; 6.1 does,
/// newer kernels may not); a node's root is a mount like any other, as the
/// bind mount is. Mounts stay shared as they are (/run/netns propagates).
fn crun_run(log: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "unchanged", "--", "sh", "-c"])
        .arg(concat!(
            "set -e; r=/tmp/rsttrace-containers/root; mkdir -p \"$r\"; ",
            "mount -o rbind / \"$r\"; cd \"$r\"; exec chroot . crun \"$@\""
        ))
        .arg("crun-run")
        .arg(format!("--log=file:{}", log.display()));
    c
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_else(|e| format!("(no crun log: {e})"))
}

impl Container {
    fn spawn(id: &str, config: &Value) -> Self {
        let dir = bundle(id, config);
        let log = dir.join("crun.log");
        // One left over from an interrupted run would hold the id.
        let _ = crun(&log).args(["delete", "--force", id]).output();
        let mut child = crun_run(&log)
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running crun (Debian package crun)");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Container {
            id: id.to_string(),
            child,
            stderr: rx,
            log,
        }
    }

    /// Starts rsttrace and waits for its "attached" line.
    fn start(id: &str, config: &Value) -> Self {
        let mut c = Self::spawn(id, config);
        let mut seen = String::new();
        let deadline = Instant::now() + ATTACH_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.stderr.recv_timeout(left) {
                Ok(line) if line.contains("attached") => return c,
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = c.child.kill();
                    let status = c.child.wait();
                    panic!(
                        "container {id}: rsttrace did not attach (crun: {status:?}); \
                         stderr (rsttrace's and crun's):\n{seen}\ncrun log:\n{}",
                        read_log(&c.log)
                    );
                }
            }
        }
    }

    /// SIGTERM, as the kubelet stops a container; rsttrace's stdout and
    /// stderr. Panics unless it exits 0.
    fn stop(mut self) -> (String, String) {
        let out = crun(&self.log)
            .args(["kill", &self.id, "TERM"])
            .output()
            .expect("crun kill");
        assert!(
            out.status.success(),
            "crun kill {}: {}",
            self.id,
            String::from_utf8_lossy(&out.stderr)
        );
        self.finish()
    }

    /// Waits for the container to exit; its stdout and stderr.
    fn finish(&mut self) -> (String, String) {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.iter().collect::<Vec<_>>().join("\n");
        assert!(
            status.success(),
            "container {} exited with {status}; stderr (rsttrace's and crun's):\n{stderr}\n\
             crun log:\n{}",
            self.id,
            read_log(&self.log)
        );
        (stdout, stderr)
    }

    /// Runs a container to its end: (exit code, stdout, stderr with crun's
    /// log appended).
    fn run(id: &str, config: &Value) -> (Option<i32>, String, String) {
        let mut c = Self::spawn(id, config);
        let mut stdout = String::new();
        c.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = c.child.wait().unwrap();
        let stderr = c.stderr.iter().collect::<Vec<_>>().join("\n");
        let log = read_log(&c.log);
        (status.code(), stdout, format!("{stderr}\ncrun log:\n{log}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = crun(&self.log)
            .args(["kill", &self.id, "KILL"])
            .stderr(Stdio::null())
            .output();
        let _ = self.child.wait();
        let _ = crun(&self.log)
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .output();
    }
}

// ---- Node settings -------------------------------------------------------

/// kernel.perf_event_paranoid, restored on drop.
struct Paranoid {
    was: String,
}

impl Paranoid {
    const PATH: &str = "/proc/sys/kernel/perf_event_paranoid";

    fn get() -> i32 {
        std::fs::read_to_string(Self::PATH)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn set(level: i32) -> Self {
        let was = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, level.to_string()).unwrap();
        Paranoid { was }
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.was.trim());
    }
}

/// Whether this kernel charges eBPF maps to RLIMIT_MEMLOCK (before 5.11).
fn charges_memlock() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (5, 11)
}

/// A run of the manifest that rsttrace must refuse at start, saying why.
fn refused(id: &str, img: &Image, pod: &PodSettings, net: &Net<'_>, says: &[&str]) {
    let cfg = oci_config(img, pod, &pod.args, net, &format!("/rsttrace-t/{id}"));
    let (code, _, stderr) = Container::run(id, &cfg);
    assert_eq!(code, Some(1), "{id}: refused at start; stderr:\n{stderr}");
    for s in says {
        assert!(
            stderr.contains(s),
            "{id}: rsttrace must say {s:?} when it can't start:\n{stderr}"
        );
    }
}

/// What a node needs beyond the manifest on this kernel, as the manifests'
/// comments and the README tell an operator; each is first shown refused,
/// with rsttrace saying why:
/// - before 5.11, eBPF maps count against RLIMIT_MEMLOCK, which only
///   CAP_SYS_RESOURCE raises (no runtime raises it by default): add it;
/// - above perf_event_paranoid 2 (Debian's default, 3), perf events need
///   CAP_SYS_ADMIN: a pod without it needs the node set to 2 (restored
///   when the guard drops).
fn prepare_node(id: &str, img: &Image, pod: &mut PodSettings, net: &Net<'_>) -> Option<Paranoid> {
    let has = |pod: &PodSettings, c: &str| pod.caps.iter().any(|x| x == c);
    if charges_memlock() && !has(pod, "CAP_SYS_RESOURCE") {
        refused(
            &format!("{id}-memlock"),
            img,
            pod,
            net,
            &["can't raise RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE)"],
        );
        pod.caps.push("CAP_SYS_RESOURCE".into());
    }
    if Paranoid::get() > 2 && !has(pod, "CAP_SYS_ADMIN") {
        refused(
            &format!("{id}-paranoid"),
            img,
            pod,
            net,
            &[
                "kernel.perf_event_paranoid is 3",
                "sysctl kernel.perf_event_paranoid=2",
            ],
        );
        return Some(Paranoid::set(2));
    }
    None
}

// ---- Reading its metrics -------------------------------------------------

/// `GET /metrics` on `port`, from the pod's namespace (as a scraper
/// reaches the pod) or from the node's; the parsed samples.
fn scrape(pod: Option<&Netns>, port: u16) -> (String, prometheus_parse::Scrape) {
    let get = move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    };
    let r = match pod {
        Some(ns) => ns.run(get),
        None => get(),
    };
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body = r.split_once("\r\n\r\n").expect("HTTP header").1.to_string();
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{body}"));
    (body, parsed)
}

fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
        .sum()
}

/// The metrics port: the manifest's containerPort, which its args serve.
fn metrics_port(pod: &PodSettings) -> u16 {
    assert_eq!(pod.ports.len(), 1, "one port: {:?}", pod.ports);
    let port = pod.ports[0];
    let i = pod
        .args
        .iter()
        .position(|a| a == "--metrics")
        .expect("--metrics in args");
    assert!(
        pod.args[i + 1].ends_with(&format!(":{port}")),
        "--metrics {} serves containerPort {port}",
        pod.args[i + 1]
    );
    port
}

// ---- doctor --------------------------------------------------------------

/// `rsttrace doctor` in the container, as the manifest runs it: its
/// capability lines (name -> yes/no).
fn doctor(id: &str, img: &Image, pod: &PodSettings, net: &Net<'_>) -> BTreeMap<String, bool> {
    let cfg = oci_config(
        img,
        pod,
        &["doctor".to_string()],
        net,
        &format!("/rsttrace-t/{id}"),
    );
    let (code, out, err) = Container::run(id, &cfg);
    assert_eq!(code, Some(0), "doctor in {id}:\n{out}\n{err}");
    assert!(out.contains("yes  tracefs"), "doctor in {id}:\n{out}");
    out.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (yes, rest) = l.split_once(char::is_whitespace)?;
            let name = rest.split_whitespace().next()?;
            name.starts_with("CAP_")
                .then(|| (name.to_string(), yes == "yes"))
        })
        .collect()
}

/// doctor's capability lines against the manifest: each capability doctor
/// checks is present exactly when the manifest grants it.
fn assert_doctor_agrees(id: &str, img: &Image, pod: &PodSettings, net: &Net<'_>) {
    let caps = doctor(id, img, pod, net);
    assert!(!caps.is_empty(), "doctor printed no capability lines");
    for (cap, present) in &caps {
        assert_eq!(
            *present,
            pod.caps.contains(cap),
            "doctor in {id} says {cap} is {}; the manifest grants {:?}",
            if *present { "there" } else { "missing" },
            pod.caps
        );
    }
}

// ---- The tests -----------------------------------------------------------

/// The sidecar: rsttrace's container joins the app's pod namespace with
/// exactly the manifest's settings, and reports the app's RSTs, counted
/// on the wire, and none of another namespace sending the same at once.
#[test]
fn sidecar_reports_exactly_its_pods_rsts() {
    require_vm();
    let _serial = serial();
    let mut pod = pod_settings(SIDECAR);
    let img = image();
    let app = Netns::new("ctr-pod");
    let other = Netns::new("ctr-other");
    let net = Net::Pod(&app);
    let _node = prepare_node("sidecar", &img, &mut pod, &net);
    assert_doctor_agrees("sidecar-doctor", &img, &pod, &net);

    let port = metrics_port(&pod);
    let wire = Wire::capture(&app);
    let cfg = oci_config(&img, &pod, &pod.args, &net, "/rsttrace-t/sidecar");
    let c = Container::start("sidecar", &cfg);
    // The app: refused connects and aborted requests; the neighbour: the
    // same refused connects, from the same address, in its own namespace.
    let refused = scenario::closed_port(&app, "127.47.0.1", "127.0.0.1:9", 3);
    let aborted = scenario::abort_on_close(&app, "127.47.0.2", 2);
    let theirs = scenario::closed_port(&other, "127.47.0.1", "127.0.0.1:9", 4);
    assert!(refused >= 3 && aborted == 2 && theirs >= 4);
    let (text, m) = scrape(Some(&app), port);
    let (stdout, stderr) = c.stop();
    let on_wire = wire.stop();

    let out = [("direction", "out")];
    let cause = |c: &str| sample(&m, "rsttrace_rsts_total", &[out[0], ("cause", c)]);
    assert_eq!(cause("closed-port"), refused as f64, "{text}");
    assert_eq!(cause("abort-on-close"), aborted as f64, "{text}");
    assert_eq!(
        sample(&m, "rsttrace_rsts_total", &out),
        on_wire.len() as f64,
        "every RST the pod sent and nothing else: wire {on_wire:?}\n{text}"
    );
    assert_eq!(on_wire.len() as u64, refused + aborted);
    assert_eq!(
        sample(
            &m,
            "rsttrace_remote_rsts_total",
            &[out[0], ("remote_ip", "127.47.0.1")]
        ),
        refused as f64,
        "{text}"
    );
    assert_eq!(sample(&m, "rsttrace_lost_events_total", &[]), 0.0);
    assert!(
        stdout.contains("127.47.0.1") && !stderr.contains("panicked"),
        "the summary at SIGTERM:\n{stdout}\n{stderr}"
    );
}

/// The node agent: host network and PID namespaces, the DaemonSet's mounts
/// and capabilities; it sees the RSTs of every namespace, pods' created
/// before and after it started, and serves /metrics on the node.
#[test]
fn node_agent_sees_every_namespace_and_serves_metrics_on_the_node() {
    require_vm();
    let _serial = serial();
    let mut pod = pod_settings(DAEMONSET);
    assert!(pod.host_network && pod.host_pid);
    let img = image();
    let _node = prepare_node("agent", &img, &mut pod, &Net::Host);
    assert_doctor_agrees("agent-doctor", &img, &pod, &Net::Host);

    let port = metrics_port(&pod);
    let before = Netns::new("ctr-pod-a");
    let cfg = oci_config(&img, &pod, &pod.args, &Net::Host, "/rsttrace-t/agent");
    let c = Container::start("agent", &cfg);
    // A pod created while the agent runs.
    let after = Netns::new("ctr-pod-b");
    let a = scenario::closed_port(&before, "127.48.0.1", "127.0.0.1:9", 3);
    let b = scenario::closed_port(&after, "127.48.0.2", "127.0.0.1:9", 2);
    let aborted = scenario::abort_on_close(&after, "127.48.0.3", 2);
    assert!(a >= 3 && b >= 2 && aborted == 2);
    // From the node, as Prometheus scrapes a hostNetwork pod.
    let (text, m) = scrape(None, port);
    let (_stdout, _stderr) = c.stop();

    let out = [("direction", "out")];
    let remote = |ip: &str, cause: &str| {
        sample(
            &m,
            "rsttrace_remote_rsts_total",
            &[out[0], ("remote_ip", ip), ("cause", cause)],
        )
    };
    assert_eq!(remote("127.48.0.1", "closed-port"), a as f64, "{text}");
    assert_eq!(remote("127.48.0.2", "closed-port"), b as f64, "{text}");
    assert_eq!(
        remote("127.48.0.3", "abort-on-close"),
        aborted as f64,
        "{text}"
    );
    assert_eq!(sample(&m, "rsttrace_lost_events_total", &[]), 0.0);
}

/// Least privilege: without any one of the capabilities the manifests
/// grant, rsttrace refuses to start (CAP_BPF, CAP_PERFMON; CAP_SYS_ADMIN
/// where perf events need it) or doctor, run in the container, names what
/// is lost; so none is granted for nothing.
#[test]
fn every_granted_capability_is_needed() {
    require_vm();
    let _serial = serial();
    let img = image();
    let app = Netns::new("ctr-least");
    for (name, manifest) in [("sidecar", SIDECAR), ("agent", DAEMONSET)] {
        let mut pod = pod_settings(manifest);
        let net = if pod.host_network {
            Net::Host
        } else {
            Net::Pod(&app)
        };
        let _node = prepare_node(&format!("least-{name}"), &img, &mut pod, &net);
        for cap in &pod.caps {
            let mut less = pod.clone();
            less.caps.retain(|c| c != cap);
            let id = format!("least-{name}-{}", cap.to_lowercase());
            let has = |c: &str| less.caps.iter().any(|x| x == c);
            // The kernel's rules: CAP_SYS_ADMIN covers CAP_BPF and
            // CAP_PERFMON (and perf events at any paranoid level); the
            // memlock limit needs CAP_SYS_RESOURCE.
            let can_attach = (has("CAP_SYS_ADMIN")
                || (has("CAP_BPF") && has("CAP_PERFMON") && Paranoid::get() <= 2))
                && (!charges_memlock() || has("CAP_SYS_RESOURCE"));
            if can_attach {
                let caps = doctor(&id, &img, &less, &net);
                assert_eq!(
                    caps.get(cap),
                    Some(&false),
                    "{name} without {cap}: doctor must name it lost: {caps:?}"
                );
            } else {
                let cfg = oci_config(&img, &less, &less.args, &net, &format!("/rsttrace-t/{id}"));
                let (code, _, err) = Container::run(&id, &cfg);
                assert_eq!(code, Some(1), "{name} without {cap}:\n{err}");
                assert!(err.contains(cap.as_str()), "{name} without {cap}:\n{err}");
            }
        }
    }
}

/// A 64-hex container id, as containerd names containers, unique per call.
fn container_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{t:016x}{:016x}{:016x}{n:016x}",
        std::process::id(),
        t.rotate_left(17)
    )
}

/// What the app does with the connection busybox's nc hands it (as its
/// stdin and stdout): after a second (the request has arrived), closes it
/// unread, an abort-on-close RST sent by the app itself; then lives on a
/// while, so its cgroup outlives the RST (a container's cgroup is removed
/// as soon as it exits, and rsttrace reads the path after the event).
const APP_CLOSES: &str = "sleep 1; exec 0<&- 1>&-; sleep 3";

/// An app container in pod `ns`, in a kubelet-style cgroup named for its
/// container id: busybox's nc, listening (on IPv6, dual-stack), running
/// `APP_CLOSES` for the one connection it accepts.
fn app_container(ns: &Netns, id: &str, port: u16) -> Container {
    let rootfs = Path::new(WORK).join("app-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    // Debian's static busybox, as the VM's /init has it.
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
    let img = Image {
        rootfs,
        entrypoint: vec![],
        cmd: vec![],
        env: vec![],
    };
    let app = PodSettings {
        host_network: false,
        host_pid: false,
        args: ["/bin/busybox", "nc", "-l", "-p", &port.to_string()]
            .into_iter()
            .chain(["-e", "/bin/busybox", "sh", "-c", APP_CLOSES])
            .map(String::from)
            .collect(),
        env: vec![],
        caps: vec![],
        no_new_privs: true,
        read_only_root: false,
        mounts: vec![],
        ports: vec![port],
        memory_limit: None,
    };
    let cgroup = format!("/kubepods/besteffort/pod{}/{id}", &id[..32]);
    let cfg = oci_config(&img, &app, &app.args, &Net::Pod(ns), &cgroup);
    let c = Container::spawn(id, &cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    let filter = format!("sport = :{port}");
    while ns.output(&["ss", "-Hltn", &filter]).trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the app did not listen on {port}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    c
}

/// The node agent names the container of the process behind an RST (its
/// cgroup, resolved on the node's cgroup tree, which the DaemonSet mounts
/// over its own cgroup namespace's view; without that mount, shown here,
/// the path and id are out of its sight). Its output flags are the
/// operator's choice: JSON events instead of --summary-only.
#[test]
fn node_agent_names_the_container_of_an_actor() {
    require_vm();
    let _serial = serial();
    let mut pod = pod_settings(DAEMONSET);
    let img = image();
    let _node = prepare_node("names", &img, &mut pod, &Net::Host);
    let cgroup_mount = pod
        .mounts
        .iter()
        .position(|m| m.container == "/sys/fs/cgroup")
        .expect("the DaemonSet mounts the node's /sys/fs/cgroup");
    let mut args: Vec<String> = pod
        .args
        .iter()
        .filter(|a| *a != "--summary-only")
        .cloned()
        .collect();
    args.extend(["--output".to_string(), "json".to_string()]);
    let ns = Netns::new("ctr-app");
    for with_mount in [true, false] {
        let mut agent = pod.clone();
        if !with_mount {
            agent.mounts.remove(cgroup_mount);
        }
        let name = format!("names-{with_mount}");
        let cfg = oci_config(
            &img,
            &agent,
            &args,
            &Net::Host,
            &format!("/rsttrace-t/{name}"),
        );
        let c = Container::start(&name, &cfg);
        let id = container_id();
        let mut app = app_container(&ns, &id, 8080);
        let before = ns.out_rsts();
        ns.run(|| {
            let s = support::connect_from(
                "127.49.0.1".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
            )
            .unwrap();
            let mut s: TcpStream = s.into();
            s.write_all(b"unread request").unwrap();
            scenario::assert_reset(s);
        });
        assert_eq!(ns.out_rsts() - before, 1);
        app.finish();
        let (stdout, stderr) = c.stop();
        // Shown with a failure.
        println!("agent {name}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let out = support::parse_output(&stdout, stderr);
        // nc's socket is IPv6: the client's address is IPv4-mapped.
        let evs = out.assert_exactly(&ns, "::ffff:127.49.0.1", 1, "abort-on-close");
        let actor = &evs[0]["actor"];
        // sh is busybox's applet: the task is named for the binary.
        assert_eq!(actor["comm"], "busybox", "{}", evs[0]);
        let cgroup = format!("/kubepods/besteffort/pod{}/{id}", &id[..32]);
        if with_mount {
            assert_eq!(actor["cgroup"], cgroup.as_str(), "{}", evs[0]);
            assert_eq!(actor["container_id"], id.as_str(), "{}", evs[0]);
        } else {
            assert_eq!(actor["container_id"], Value::Null, "{}", evs[0]);
        }
    }
}
