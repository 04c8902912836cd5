//! Serves a lockfs passthrough mount until SIGINT or SIGTERM, then unmounts.
//!
//! Usage: `lockfs-passthrough SOURCE MOUNTPOINT [--direct-io]`
//!
//! A standalone server for trying and debugging the file system on its own; the
//! lockfs binary wires the same pieces together with the lock table.
//!
//! This is the shape a front-end binary needs: block the termination signals in
//! every thread, mount, hand an `Unmounter` to a thread that waits for a signal,
//! and serve on the main thread until the unmount ends the session.

use std::sync::Arc;

use fuse_lockfs::{FileAttr, IoMode, MountOptions};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(source), Some(mountpoint)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: lockfs-passthrough SOURCE MOUNTPOINT [--direct-io]");
    };
    let mut options = MountOptions::default();
    if args.iter().any(|a| a == "--direct-io") {
        options.io_policy = Some(Arc::new(|_ino: u64, _attr: &FileAttr| IoMode::DirectIo));
    }

    // Before any thread starts, so that only the waiting thread sees the signals.
    let set = fuse_lockfs::block_termination();

    match fuse_lockfs::raise_fd_limit() {
        Ok(n) => tracing::info!(limit = n, "descriptor limit (RLIMIT_NOFILE) {n}"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let mut mounted = fuse_lockfs::prepare(source, mountpoint, options)?;
    fuse_lockfs::unmount_on_termination(set, mounted.unmounter());
    println!("ready");
    mounted.run()?;
    println!("unmounted");
    Ok(())
}
