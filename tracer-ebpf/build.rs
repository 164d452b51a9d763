use which::which;

/// Building this crate for bpfel-unknown-none links with bpf-linker; without
/// it the failure cargo prints is cryptic, so name the fix here.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!(
                "cargo:warning=bpf-linker not found in PATH: run `cargo xtask setup` to install it"
            );
        }
    }
}
