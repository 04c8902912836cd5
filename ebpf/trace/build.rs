//! Compiles the kernel-side programs in `../kernel` for the BPF target.
//!
//! The kernel crate is a workspace of its own (it needs `-Z build-std=core`
//! and bpf-linker), so aya-build is run from its directory. Stable rustc is
//! used with `RUSTC_BOOTSTRAP=1` for `-Z build-std`; no nightly toolchain is
//! needed. `AYA_BUILD_SKIP=1` skips the build, and the loader then reports
//! that the programs were not built instead of failing to compile.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("lockfs-trace has no parent directory")?
        .to_path_buf();
    let kernel_dir = ebpf_dir.join("kernel");
    // The programs compile the shared types and the probe event layout too.
    for dep in ["common", "probes"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(dep).display());
    }
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let object = out_dir.join("lockfs-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&object, b"").context("writing the empty program placeholder")?;
        return Ok(());
    }

    // aya-build passes `-Z build-std=core` only when it sees RUSTC_BOOTSTRAP,
    // and its cargo child inherits our environment.
    env::set_var("RUSTC_BOOTSTRAP", "1");
    // Keep the nested cargo's progress lines out of the outer build's output
    // (aya-build forwards its stderr as warnings); compiler diagnostics for
    // the programs still come through.
    env::set_var("CARGO_TERM_QUIET", "true");
    env::set_current_dir(&kernel_dir)
        .with_context(|| format!("entering {}", kernel_dir.display()))?;
    let root_dir = kernel_dir
        .to_str()
        .context("the kernel crate path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "lockfs-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
    .context(
        "building the eBPF programs failed; run scripts/setup-ebpf.sh (rust-src, bpf-linker 0.10.0)",
    )?;
    Ok(())
}
