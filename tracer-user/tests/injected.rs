//! RSTs built outside the TCP stack: raw and packet sockets, and a kernel
//! module of the tests' own.

mod support;

use support::{Netns, Trace, scenario::*};

#[test]
fn injected_from_raw_and_packet_sockets() {
    let ns = Netns::new("raw");
    let trace = Trace::watch(&ns, &[]);
    let (sent, tcp) = inject_rsts(&ns, [127, 17, 0, 1], 3);
    let sent_packet = inject_rsts_packet(&ns, [127, 17, 0, 2], 2);
    let out = trace.stop();
    assert_eq!((sent, tcp), (3, 0), "sent by hand, none by the TCP stack");
    for (remote, n) in [("127.17.0.1", sent), ("127.17.0.2", sent_packet)] {
        for e in out.assert_exactly(&ns, remote, n, "injected") {
            assert_eq!(e["local_port"], 80);
            let pid = &e["actor"]["pid"];
            assert_eq!(pid, std::process::id(), "the injector is the actor: {e}");
        }
    }
}

/// Kernels that refuse the BTF tracepoints run the classic tcp_send_reset
/// (reading its record) and the raw net_dev_queue (probe reads): the same
/// RSTs get the same attribution.
#[test]
fn classic_and_raw_builds_attribute_alike() {
    let ns = Netns::new("fallback");
    ns.add_addr("fd72:7374::41/128");
    let trace = Trace::watch(&ns, &["--debug-no-tp-btf"]);
    let closed4 = closed_port(&ns, "127.41.0.1", "127.0.0.1:9", 3);
    let closed6 = closed_port(&ns, "fd72:7374::41", "[::1]:9", 3);
    let aborted = abort_on_close(&ns, "127.41.0.2", 2);
    let (injected, _) = inject_rsts(&ns, [127, 41, 0, 3], 2);
    let out = trace.stop();
    for e in out.assert_exactly(&ns, "127.41.0.1", closed4, "closed-port") {
        assert_eq!(
            (&e["local_ip"], &e["local_port"]),
            (&"127.0.0.1".into(), &9.into())
        );
    }
    for e in out.assert_exactly(&ns, "fd72:7374::41", closed6, "closed-port") {
        assert_eq!(
            (&e["family"], &e["local_ip"]),
            (&"ipv6".into(), &"::1".into())
        );
    }
    out.assert_exactly(&ns, "127.41.0.2", aborted, "abort-on-close");
    out.assert_exactly(&ns, "127.41.0.3", injected, "injected");
}

/// A kernel module loaded for one test and removed after it (even when
/// the test fails), through the raw syscalls: no tools needed in the VM.
struct TestModule {
    name: &'static str,
}

impl TestModule {
    fn load(path: &str, name: &'static str, params: &str) -> Self {
        // A run that died half-way may have left it loaded.
        Self::remove(name);
        let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let params = std::ffi::CString::new(params).unwrap();
        // SAFETY: a valid fd and a NUL-terminated string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                params.as_ptr(),
                0,
            )
        };
        assert_eq!(rc, 0, "loading {path}: {}", std::io::Error::last_os_error());
        TestModule { name }
    }

    fn param(&self, p: &str) -> u64 {
        let path = format!("/sys/module/{}/parameters/{p}", self.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().expect("a number")
    }

    fn remove(name: &str) {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: a NUL-terminated string.
        unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    }
}

impl Drop for TestModule {
    fn drop(&mut self) {
        Self::remove(self.name);
    }
}

/// A RST built by a kernel module (in-kernel IPS modules do this): neither
/// the TCP stack nor netfilter's REJECT sent it, so it is `injected`, named
/// after the module, with no actor (it runs in whatever context the SYN
/// arrived in). The module (tests/kmod) answers SYNs to one port.
#[test]
#[ignore = "loads a test module built for the running kernel: `cargo xtask vm-test` builds \
            it and runs this test on the kernels it can build it for"]
fn injected_by_a_kernel_module() {
    let ko = std::env::var("RSTTRACE_TEST_MODULE").expect(
        "RSTTRACE_TEST_MODULE: the path of rst_inject_test.ko (cargo xtask vm-test sets it)",
    );
    let ns = Netns::new("kmod");
    let module = TestModule::load(&ko, "rst_inject_test", "port=7801");
    let trace = Trace::watch(&ns, &[]);
    let stack_rsts = support::refused_connects(
        &ns,
        "127.52.0.1".parse().unwrap(),
        "127.0.0.1:7801".parse().unwrap(),
        3,
    );
    let out = trace.stop();
    let sent = module.param("sent");
    assert_eq!(stack_rsts, 0, "the module answered, not the TCP stack");
    assert!(
        sent >= 3,
        "the module sent {sent} RSTs for 3 refused connects"
    );
    for e in out.assert_exactly(&ns, "127.52.0.1", sent, "injected") {
        assert_eq!(e["module"], "rst_inject_test", "{e}");
        assert!(e.get("actor").is_none_or(|a| a.is_null()), "no actor: {e}");
        assert_eq!(e["local_port"], 7801, "{e}");
    }
}
