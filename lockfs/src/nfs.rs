//! Starting the NFS door of `lockfs serve`: NFS version 3 and MOUNT on the configured ports
//! of the listen addresses, for the same exports, handles and tables as NLM.

use crate::config::{Config, MandatoryPolicy};
use fuse_lockfs::{FileKey, Invalidator, Stale, Was as MountWas};
use lockd_user::nfs3::service::Changes;
use lockd_user::nfs3::{
    ChangeSink, ExportOptions, Invalidation, MandatoryMode, NfsConfig, NfsService, Squash, Was,
};
use lockd_user::LockdService;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The FUSE mounts whose kernel caches a change over NFS makes stale; the mounts are
/// added as they come up (after NFS starts, so that no change is missed).
#[derive(Default)]
pub struct MountCaches(Mutex<Vec<(PathBuf, Invalidator)>>);

impl MountCaches {
    /// The mount at `at` now caches what NFS may change.
    pub fn add(&self, at: &Path, i: Invalidator) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at.to_path_buf(), i));
    }

    /// The mount at `at` is gone (its group went offline): forget it, and with it the
    /// mount's inode table the invalidator kept alive.
    pub fn remove(&self, at: &Path) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| p != at);
    }

    fn each(&self, mut f: impl FnMut(&Invalidator)) {
        for (_, i) in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            f(i);
        }
    }
}

/// Each stale thing of a mount, told when the NFS door runs it.
fn to_invalidations(stale: Vec<Stale>, out: &mut Vec<Invalidation>) {
    out.extend(
        stale
            .into_iter()
            .map(|s| Box::new(move || s.tell()) as Invalidation),
    );
}

impl ChangeSink for MountCaches {
    fn file_changed(&self, dev: u64, ino: u64, out: &mut Vec<Invalidation>) {
        let mut stale = Vec::new();
        self.each(|i| i.file_changed(FileKey { dev, ino }, &mut stale));
        to_invalidations(stale, out);
    }

    fn entry_changed(
        &self,
        dev: u64,
        ino: u64,
        name: &[u8],
        was: Was,
        out: &mut Vec<Invalidation>,
    ) {
        let was = match was {
            Was::Free => MountWas::Free,
            Was::File(dev, ino) => MountWas::File(FileKey { dev, ino }),
            Was::Unknown => MountWas::Unknown,
        };
        let name = OsStr::from_bytes(name);
        let mut stale = Vec::new();
        self.each(|i| i.entry_changed(FileKey { dev, ino }, name, was, &mut stale));
        to_invalidations(stale, out);
    }
}

/// The NFS door's configuration, or `None` when `nfs_port` is 0.
pub fn nfs_config(cfg: &Config) -> Option<NfsConfig> {
    let port = cfg.nfs_port?;
    let at = |p: u16| -> Vec<SocketAddr> {
        cfg.listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, p))
            .collect()
    };
    let mut n = NfsConfig::new(at(port), at(cfg.mount_port));
    n.open_files = cfg.open_files;
    n.max_io = cfg.nfs_max_io;
    n.server.max_tcp_connections = cfg.connections;
    n.server.max_tcp_connections_per_peer = cfg.net.connections_per_address;
    n.server.max_unfinished_record_bytes = cfg.net.unfinished_record_bytes;
    n.server.busy_poll = cfg.busy_poll;
    for e in &cfg.exports {
        let mandatory = match e.mandatory {
            MandatoryPolicy::Off => MandatoryMode::Off,
            MandatoryPolicy::File => MandatoryMode::File,
            MandatoryPolicy::All => MandatoryMode::All,
        };
        n.exports.insert(
            e.id,
            ExportOptions {
                paths: vec![e.source.display().to_string(), format!("/{}", e.name)],
                squash: Squash {
                    no_root_squash: e.no_root_squash,
                    anon_uid: e.anon_uid,
                    anon_gid: e.anon_gid,
                },
                mandatory,
            },
        );
    }
    Some(n)
}

/// The NFS door as it runs: its service and the runtime it runs on.
pub struct NfsDoor {
    service: NfsService,
    runtime: tokio::runtime::Runtime,
}

impl NfsDoor {
    /// Stops serving NFS and MOUNT and ends the door's thread.
    pub fn shutdown(self) {
        self.runtime.block_on(self.service.shutdown());
    }
}

/// Starts NFS and MOUNT next to the lock service. A port that cannot be bound (another
/// NFS server runs) is reported and the daemon goes on without NFS: locks and the local
/// mounts do not depend on it.
///
/// The door has a runtime of its own, with one worker, apart from the lock service's: its
/// read-only calls run right on that worker (see `lockd_user::nfs3::program`), and a
/// READ or LOOKUP waiting for a disk must not hold up an NLM UNLOCK or a GRANTED callback.
pub fn start(cfg: &Config, lockd: &LockdService, caches: Arc<MountCaches>) -> Option<NfsDoor> {
    let mut config = nfs_config(cfg)?;
    config.changes = Some(Changes(caches));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lockfs-nfs")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockfs: NFS not served: cannot start its thread: {e}");
            return None;
        }
    };
    match runtime.block_on(NfsService::start(
        config,
        lockd.lockd().clone(),
        lockd.builtin_portmapper(),
    )) {
        Ok(s) => {
            eprintln!(
                "lockfs: NFS v3 on {:?}, MOUNT v1/v3 on {:?}",
                s.nfs_tcp(),
                s.mount_tcp()
            );
            Some(NfsDoor {
                service: s,
                runtime,
            })
        }
        Err(e) => {
            eprintln!("lockfs: NFS not served: {e}");
            None
        }
    }
}
