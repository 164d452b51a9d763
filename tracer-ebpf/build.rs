use which::which;

/// Building this crate for bpfel-unknown-none links with bpf-linker; without
/// it the failure cargo prints is cryptic, so name the fix here.
fn main() {
    // bpf-linker defers memset/memcpy expansion to BPF's in-order expander
    // by default, which leaves every memset a call to a byte loop (adjacent
    // zero fields of an event become one). The generic expansion writes
    // them as a few word stores, on the hot path of every RST.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!(
                "cargo:warning=bpf-linker not found in PATH: run `cargo xtask setup` to install it"
            );
        }
    }
}
