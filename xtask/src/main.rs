//! Developer tasks: `cargo xtask setup|build|run|test|vm-test|lint`.

mod bench;
mod image;
mod setup;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rsttrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building needs (nightly rust-src, bpf-linker) and mount
    /// tracefs; does nothing that is already done.
    Setup,
    /// Set up, then build target/release/rsttrace with the eBPF object embedded.
    Build {
        /// Link statically (for the container image), into
        /// target/x86_64-unknown-linux-gnu/release/rsttrace.
        #[arg(long = "static")]
        static_: bool,
    },
    /// Build the container image of deploy/Dockerfile with podman: the
    /// static binary with the Dockerfile's build-stage command, then its
    /// final stage; checks the binary in the image runs.
    Image {
        #[arg(long, default_value = "localhost/rsttrace:latest")]
        tag: String,
    },
    /// Set up, build and start tracing (through `sudo -E` when not root).
    /// Arguments after `--` go to rsttrace, e.g. `cargo xtask run -- --duration 10`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build and run every test: unit and privileged integration
    /// (test binaries run through `sudo -E` when not root).
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- closed_port`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure rsttrace's cost against untraced runs (needs root), print a
    /// table and write bench/RESULTS.md.
    Bench {
        /// Whole traced runs for bpftrace and for exactness (each between
        /// untraced ones); rsttrace's throughput rows take ten traced
        /// stretches per round.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Seconds per whole run.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Seconds of the mixed-cause soak (memory stability); 0 skips it.
        #[arg(long, default_value_t = 600)]
        soak_seconds: u64,
        /// Extra rsttrace arguments for the traced rounds, to compare
        /// variants (e.g. `--args=--summary-only`).
        #[arg(long, allow_hyphen_values = true)]
        args: Vec<String>,
        /// Measure only these parts (comma-separated), to compare variants
        /// quickly; only their rows are replaced in bench/RESULTS.md.
        #[arg(long, value_delimiter = ',', value_enum)]
        only: Vec<bench::Part>,
        /// Measure this rsttrace binary instead of this tree's build
        /// (a variant under study; needs `--only`).
        #[arg(long, requires = "only")]
        rsttrace: Option<std::path::PathBuf>,
    },
    /// Run the privileged integration tests on Debian kernels under qemu
    /// (downloads the kernels once into target/vm/; needs root for nothing
    /// but the first `apt-get install qemu-system-x86`).
    VmTest {
        /// 5.10, 6.1, 6.12, sid (or bullseye, bookworm, trixie); all four
        /// when none is given.
        kernels: Vec<String>,
        /// tracer-user integration test targets to run, comma-separated
        /// (robustness and cli are left out by default).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "stack_causes,netfilter,blocklists,injected,drops,scope,exits,agents_in_process,user_stacks"
        )]
        tests: Vec<String>,
        #[arg(long, default_value_t = 2)]
        test_threads: usize,
        /// Minutes one kernel may take before its VM is killed.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        /// Boot and run this shell command instead of the tests, streaming
        /// the console (e.g. `--exec 'rsttrace --duration 5'`).
        #[arg(long)]
        exec: Option<String>,
        /// Stream the whole console, not only test progress.
        #[arg(long, short)]
        verbose: bool,
        /// vCPUs of the VM.
        #[arg(long, default_value_t = 2)]
        smp: usize,
        /// Memory of the VM in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: usize,
        /// auto: KVM when /dev/kvm opens and boots a guest, else TCG
        /// (remembered per host kernel in target/vm/kvm-unusable).
        #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
        accel: String,
        /// Arguments for every test binary after `--`, e.g. `-- closed_port`.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace
    /// (the eBPF crate included).
    Lint,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Cmd::Build { static_ } => {
            setup::run()?;
            if static_ {
                image::build_static()?;
            } else {
                build()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Image { tag } => {
            setup::run()?;
            image::image(&tag)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { args } => {
            setup::run()?;
            build()?;
            let bin = workspace_root().join("target/release/rsttrace");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                eprintln!("xtask: not root: running rsttrace through `sudo -E`");
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.args(&args);
            Ok(exit_code(status(&mut cmd)?))
        }
        Cmd::Test { args } => {
            setup::run()?;
            build()?;
            let mut cmd = cargo();
            cmd.args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
            ]);
            cmd.args(&args);
            if !is_root() {
                eprintln!("xtask: not root: test binaries run through `sudo -E`");
                cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
            }
            let st = status(&mut cmd)?;
            if !st.success() {
                bail!("tests failed ({st})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            rounds,
            seconds,
            soak_seconds,
            args,
            only,
            rsttrace,
        } => {
            setup::run()?;
            build()?;
            bench::run(&bench::Options {
                args,
                rounds: rounds.max(1),
                seconds,
                soak_seconds,
                only,
                rsttrace,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::VmTest {
            kernels,
            tests,
            test_threads,
            timeout,
            exec,
            verbose,
            smp,
            memory,
            accel,
            test_args,
        } => {
            setup::run()?;
            let pass = vm::run(&vm::Options {
                kernels,
                tests,
                test_threads,
                timeout: std::time::Duration::from_secs(timeout * 60),
                exec,
                verbose,
                smp,
                memory_mib: memory,
                accel,
                test_args,
            })?;
            Ok(if pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Lint => {
            setup::run()?;
            check(cargo().args(["fmt", "--all", "--check"]))?;
            check(cargo().args([
                "clippy",
                "--release",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // tests/containers.rs is `test = false` (only vm-test runs it),
            // so --all-targets leaves it out.
            check(cargo().args([
                "clippy",
                "--release",
                "--package",
                "tracer-user",
                "--test",
                "containers",
                "--",
                "-D",
                "warnings",
            ]))?;
            // The eBPF crate only compiles for the BPF target, with nightly.
            check(
                Command::new("cargo")
                    .args([
                        "+nightly",
                        "clippy",
                        "--release",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .current_dir(workspace_root().join("tracer-ebpf")),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn build() -> Result<()> {
    check(cargo().args(["build", "--release", "--package", "tracer-user"]))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn status(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    cmd.status()
        .with_context(|| format!("can't run {:?}", cmd.get_program()))
}

pub fn check(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn exit_code(st: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8)
}
