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

    // Block the signals before any thread starts so that only sigwait sees them.
    // SAFETY: an empty sigset is initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only modify it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }

    match fuse_lockfs::raise_fd_limit() {
        Ok(n) => tracing::debug!(limit = n, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let mut mounted = fuse_lockfs::prepare(source, mountpoint, options)?;
    let unmounter = mounted.unmounter();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid sigset_t and `sig` a valid out-pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!(signal = sig, "unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    println!("ready");
    mounted.run()?;
    println!("unmounted");
    Ok(())
}
