//! The start and end of a FUSE session: what the daemon asks of the kernel at
//! init, and what a mount leaves behind in the shared tables when it ends.

use std::sync::atomic::Ordering;

use fuser::{InitFlags, KernelConfig};

use super::LockFs;
use crate::options::Mandatory;

impl LockFs {
    /// `INIT`: negotiates lock forwarding, KILLPRIV_V2, mmap of direct-I/O files
    /// and passthrough.
    pub(super) fn start_session(&mut self, config: &mut KernelConfig) {
        let caps = config.capabilities();
        if self.forward_locks {
            let want = InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS;
            if let Err(missing) = config.add_capabilities(want) {
                tracing::warn!(?missing, "kernel cannot forward lock requests");
            }
        }
        if caps.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            && config
                .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
                .is_ok()
        {
            // Without it the kernel cannot mark inodes S_NOSEC on a FUSE mount
            // and asks the daemon for `security.capability` before every write
            // (a full round trip, half the cost of a passthrough write). With
            // it, the daemon drops set-ID bits itself: see `kill_set_id`.
            self.shared.killpriv.store(true, Ordering::Relaxed);
        }
        if caps.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) && self.mandatory == Mandatory::Off {
            // Shared mmap of direct-I/O files would otherwise fail with ENODEV. With
            // mandatory locking it must fail: a shared mapping would read and write
            // the file behind the lock checks' back.
            let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        if self.want_passthrough {
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            if !root {
                self.log_fallback("passthrough needs CAP_SYS_ADMIN (run as root)");
            } else if !caps.contains(InitFlags::FUSE_PASSTHROUGH) {
                self.log_fallback("the kernel does not offer FUSE_PASSTHROUGH");
            } else if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok()
            {
                self.shared.passthrough.store(true, Ordering::Relaxed);
                tracing::info!("FUSE passthrough enabled");
            } else {
                self.log_fallback("passthrough could not be configured");
            }
        }
    }

    /// `DESTROY` (or the end of the connection): parked requests are dropped and
    /// files the kernel never released give up their locks.
    pub(super) fn end_session(&mut self) {
        if let Some(lk) = &self.locking {
            let n = lk.end_waits();
            if n > 0 {
                tracing::info!(waiters = n, "dropped parked lock requests");
            }
            // Files the kernel never released (the connection was aborted) must
            // not leave their locks in a table other front doors share.
            let left = self.shared.files.drain();
            if !left.is_empty() {
                tracing::warn!(files = left.len(), "releasing locks of files never closed");
            }
            for (fh, f) in left {
                lk.release_abandoned(&f, fh);
            }
            crate::lvb::on_unmount(lk, &self.shared);
            lk.ctx.remove_mount(lk.mount);
        }
        tracing::info!("lockfs session ends");
    }
}
