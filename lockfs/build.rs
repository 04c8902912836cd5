//! Records the source commit for `lockfs --version`.
//!
//! `LOCKFS_COMMIT` in the build environment wins (a build from a source
//! tarball can name its commit); otherwise `git rev-parse` asks the checkout
//! the crate is built from, and a tree outside git says "unknown".

use std::path::PathBuf;
use std::process::Command;

/// The crate's directory, as cargo gives it to this run of the script. Not
/// `env!("CARGO_MANIFEST_DIR")`: that is fixed when the script is compiled, and
/// cargo may reuse a compiled build script for a copy of the same tree at
/// another path (a clone sharing the build directory), which would then ask a
/// checkout that may no longer exist.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LOCKFS_COMMIT");
    let commit = match std::env::var("LOCKFS_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a branch switch), the ref it
            // points at (a commit) and packed-refs (a ref that was packed).
            for name in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", name]) {
                    watch(&p);
                }
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &r]) {
                    watch(&p);
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=LOCKFS_COMMIT={commit}");
}

/// `git rev-parse --git-path` answers relative to the crate directory.
fn watch(path: &str) {
    let p = manifest_dir().join(path);
    if p.exists() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
