//! The FUSE mounts of the exports served on this node, which come and go with their
//! service groups.
//!
//! A group's exports live on the group's storage, which moves with the group. So they are
//! mounted when the group comes online (at start when it is online at start, else by
//! `lockfs group online`) and released when it goes offline: unmounted when nothing uses
//! them, else cut off (the FUSE connection aborted, so the processes using them get
//! `ENOTCONN`, "Transport endpoint is not connected", instead of files whose locks are
//! gone) and detached, so nothing of this node keeps the storage busy.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use fuse_lockfs::{LockContext, MountHandle, MountOptions};
use lock_table::ScopeId;

use crate::config::{Config, Export};
use crate::nfs::MountCaches;

/// Where the kernel lists FUSE connections (the `fusectl` file system).
const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// The exports this node may mount and the mounts it holds.
pub struct ExportMounts {
    /// Each export with its group's scope.
    exports: Vec<(Export, ScopeId)>,
    base: LockContext,
    /// By export name.
    held: Mutex<BTreeMap<String, MountHandle>>,
    /// Where NFS changes drop the mounts' kernel caches.
    caches: Arc<MountCaches>,
}

impl ExportMounts {
    pub fn new(cfg: &Config, base: LockContext, caches: Arc<MountCaches>) -> Self {
        let exports = cfg
            .exports
            .iter()
            .map(|e| {
                let scope = ScopeId(cfg.group(&e.group).map_or(0, |g| g.scope));
                (e.clone(), scope)
            })
            .collect();
        Self {
            exports,
            base,
            held: Mutex::new(BTreeMap::new()),
            caches,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MountHandle>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts every export of `group` that is not mounted yet. On a failure the ones this
    /// call mounted are released again.
    pub fn mount_group(&self, group: &str) -> Result<()> {
        let mut done = Vec::new();
        for (e, scope) in self.exports.iter().filter(|(e, _)| e.group == group) {
            if self.held().contains_key(&e.name) {
                continue;
            }
            match self.mount_one(e, *scope) {
                Ok(m) => {
                    self.held().insert(e.name.clone(), m);
                    done.push(e.name.clone());
                }
                Err(err) => {
                    for name in done {
                        if let Some(m) = self.held().remove(&name) {
                            let _ = self.let_go(m, true);
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Releases one mount, first forgetting its cache invalidator.
    fn let_go(&self, m: MountHandle, cut_off: bool) -> Result<()> {
        self.caches.remove(m.mountpoint());
        release(m, cut_off)
    }

    fn mount_one(&self, e: &Export, scope: ScopeId) -> Result<MountHandle> {
        if !e.mountpoint.exists() {
            std::fs::create_dir_all(&e.mountpoint)
                .with_context(|| format!("creating {}", e.mountpoint.display()))?;
        }
        let mut ctx = self.base.clone();
        ctx.scope = scope;
        let options = MountOptions {
            forward_locks: true,
            locks: Some(ctx),
            read_only: e.read_only,
            mandatory: e.mandatory,
            flock: e.flock,
            fsname: e.source.display().to_string().replace(',', "_"),
            ..MountOptions::default()
        };
        let handle = fuse_lockfs::mount(&e.source, &e.mountpoint, options).with_context(|| {
            format!("mounting export {:?} on {}", e.name, e.mountpoint.display())
        })?;
        eprintln!(
            "lockfs: export {:?}: {} mounted at {}",
            e.name,
            e.source.display(),
            e.mountpoint.display()
        );
        if let Some(i) = handle.invalidator() {
            self.caches.add(handle.mountpoint(), i);
        }
        Ok(handle)
    }

    /// Releases every mounted export of `group` (see the module doc). Fails, naming the
    /// mount points, if one could be neither unmounted nor detached.
    pub fn release_group(&self, group: &str) -> Result<()> {
        let names: Vec<String> = self
            .exports
            .iter()
            .filter(|(e, _)| e.group == group)
            .map(|(e, _)| e.name.clone())
            .collect();
        let mut failed = Vec::new();
        for name in names {
            let Some(m) = self.held().remove(&name) else {
                continue;
            };
            let at = m.mountpoint().to_path_buf();
            if let Err(e) = self.let_go(m, true) {
                failed.push(format!("{}: {e:#}", at.display()));
            }
        }
        if !failed.is_empty() {
            bail!("exports not released: {}", failed.join("; "));
        }
        Ok(())
    }

    /// Unmounts everything as the daemon stops: a mount still in use is detached and its
    /// open files fail once the daemon is gone. False if one could not be detached.
    pub fn release_all(&self) -> bool {
        let all = std::mem::take(&mut *self.held());
        let mut ok = true;
        for (_, m) in all {
            let at = m.mountpoint().to_path_buf();
            if let Err(e) = self.let_go(m, false) {
                eprintln!("lockfs: {}: {e:#}", at.display());
                ok = false;
            }
        }
        ok
    }
}

/// Unmounts `m`; if it is in use, detaches it, first cutting its connection when `cut_off`.
fn release(m: MountHandle, cut_off: bool) -> Result<()> {
    let at = m.mountpoint().to_path_buf();
    // The connection's number is the mount's device number, read while it still answers.
    let dev = std::fs::metadata(&at).map(|md| md.dev()).ok();
    let Err(e) = m.unmount() else {
        return Ok(());
    };
    eprintln!(
        "lockfs: unmounting {}: {e}; {}detaching it",
        at.display(),
        if cut_off { "cutting it off and " } else { "" }
    );
    if cut_off {
        match dev {
            Some(dev) => {
                if let Err(e) = abort_connection(dev) {
                    eprintln!(
                        "lockfs: aborting the FUSE connection of {}: {e:#}",
                        at.display()
                    );
                }
            }
            None => eprintln!(
                "lockfs: {}: no device number, connection not aborted",
                at.display()
            ),
        }
    }
    detach(&at).with_context(|| format!("detaching {}", at.display()))
}

/// Aborts the FUSE connection of the file system on device `dev`: every request pending
/// or to come on it fails with `ENOTCONN`.
fn abort_connection(dev: u64) -> Result<()> {
    // The kernel names a connection by its device number as the kernel encodes it
    // (major << 20 | minor); stat's st_dev encodes it another way.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    let name = (major << 20) | minor;
    let dir = Path::new(FUSE_CONNECTIONS);
    if !dir.join(name.to_string()).exists() {
        mount_fusectl(dir)?;
    }
    let abort: PathBuf = dir.join(name.to_string()).join("abort");
    std::fs::write(&abort, b"1").with_context(|| format!("writing {}", abort.display()))
}

/// Mounts the `fusectl` file system where the kernel expects it, if it is not there.
fn mount_fusectl(dir: &Path) -> Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes())?;
    let fstype = CString::new("fusectl")?;
    // SAFETY: valid NUL-terminated strings for the duration of the call; no data.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e).context("mounting fusectl on /sys/fs/fuse/connections");
        }
    }
    Ok(())
}

/// A lazy unmount (`umount -l`).
fn detach(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
