use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the eBPF object with nightly (as aya-template does) so that a plain
/// `cargo build` yields a `rsttrace` with the object embedded.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("tracer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if nightly rust-src or bpf-linker is missing)")
}
