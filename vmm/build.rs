//! Builds the built-in guest (`vmm/guest/`, see `vmm/guest/CONTRACT.md`) into
//! `$OUT_DIR/guest.elf` with the same `rustc` that builds the workspace: a freestanding
//! `no_std` program for the host target, linked statically at 2 MiB by `vmm/guest/guest.ld`.
//! SSE is switched off so the guest only uses instructions that an instruction emulator (KVM's,
//! under nested PVM) knows; core's prebuilt formatting code still has SSE but the guest never
//! calls it. On success it sets `cfg(switchyard_guest)` so `vmm` can `include_bytes!` the ELF.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest = manifest.join("guest");
    let src = guest.join("src");
    let script = guest.join("guest.ld");
    let out = out_dir.join("guest.elf");

    println!("cargo::rustc-check-cfg=cfg(switchyard_guest)");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed={}", src.display());
    for entry in std::fs::read_dir(&src).expect("read vmm/guest/src") {
        println!(
            "cargo:rerun-if-changed={}",
            entry.expect("dir entry").path().display()
        );
    }
    // The guest includes the shared virtio vocabulary by path.
    let virtio_spec = manifest.join("../switch/virtio-spec/src/spec.rs");
    println!("cargo:rerun-if-changed={}", virtio_spec.display());
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("--edition=2021")
        .args(["--crate-type", "bin", "--crate-name", "switchyard_guest"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=s",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "relocation-model=static", "-C", "code-model=small"])
        .args(["-C", "target-feature=-sse,-sse2"])
        .args([
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
            "-C",
            "link-arg=-no-pie",
        ])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", script.display()))
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .args(["--cap-lints", "warn"])
        .arg(src.join("main.rs"))
        .arg("-o")
        .arg(&out)
        // Flags meant for the workspace (e.g. coverage or sanitizers) do not apply to the guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");
    let output = cmd.output().expect("run rustc for the built-in guest");
    if !output.status.success() {
        panic!(
            "building the built-in guest failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Surface the guest's own warnings (not the expected one about switching SSE off).
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines() {
        if line.starts_with("warning:")
            && !line.contains("sse2")
            && !line.contains("warning emitted")
            && !line.contains("warnings emitted")
        {
            println!("cargo:warning=guest: {}", &line["warning: ".len()..]);
        }
    }
    println!("cargo:rustc-cfg=switchyard_guest");
}
