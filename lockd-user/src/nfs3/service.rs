//! Starting the NFS door: NFS version 3 on its port (2049 unless configured otherwise) and
//! MOUNT on a fixed port of its own, both over UDP and TCP, sharing the lock service's
//! exports, file-handle keys, lock table and share table, and registered wherever the
//! lock service registered NLM (the system's rpcbind or lockfs's own portmapper).

use super::backing::{Backing, DEFAULT_ENTRY_IDLE, WRITER_IDLE};
use super::ops::Door;
use super::program::Nfs3Program;
use super::proto::{NFS_PROG, NFS_V3};
use super::{ChangeSink, ExportOptions};
use crate::lockd::Lockd;
use crate::mountd::{MountProgram, MOUNT_PROG, MOUNT_V1, MOUNT_V3};
use crate::portmap::{self, Portmapper};
use crate::server::{RpcServer, ServerConfig, ServerError, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The port NFS listens on unless configured otherwise.
pub const NFS_PORT: u16 = 2049;
/// Default largest READ and WRITE, advertised in FSINFO.
pub const DEFAULT_MAX_IO: u32 = 1024 * 1024;
/// Default number of backing descriptors kept open behind handles.
pub const DEFAULT_OPEN_FILES: usize = 4096;

/// What the NFS door needs to start.
#[derive(Debug, Clone)]
pub struct NfsConfig {
    /// NFS listen addresses, each served over UDP and TCP.
    pub nfs: Vec<SocketAddr>,
    /// MOUNT listen addresses, each served over UDP and TCP.
    pub mount: Vec<SocketAddr>,
    /// Per export id; an export without an entry gets the defaults (root squash, no
    /// mandatory locking, its source path as MOUNT path).
    pub exports: HashMap<u32, ExportOptions>,
    pub open_files: usize,
    /// How long one of those descriptors stays open without use.
    pub open_file_idle: Duration,
    pub max_io: u32,
    /// Transport limits; the record size is raised to hold the largest WRITE.
    pub server: ServerConfig,
    /// Told of every change, for the local mounts' caches.
    pub changes: Option<Changes>,
}

/// A [`ChangeSink`] in the configuration.
#[derive(Clone)]
pub struct Changes(pub Arc<dyn ChangeSink>);

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Changes(..)")
    }
}

impl NfsConfig {
    /// NFS and MOUNT on the given addresses, defaults for the rest.
    pub fn new(nfs: Vec<SocketAddr>, mount: Vec<SocketAddr>) -> Self {
        Self {
            nfs,
            mount,
            exports: HashMap::new(),
            open_files: DEFAULT_OPEN_FILES,
            open_file_idle: DEFAULT_ENTRY_IDLE,
            max_io: DEFAULT_MAX_IO,
            server: ServerConfig::default(),
            changes: None,
        }
    }
}

/// The running NFS and MOUNT services.
pub struct NfsService {
    nfs: RpcServer,
    mount: RpcServer,
    registered: bool,
    door: Arc<Door>,
    /// Closes the write descriptors clients stopped using.
    sweeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NfsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsService")
            .field("nfs_tcp", &self.nfs.tcp_addrs())
            .field("mount_tcp", &self.mount.tcp_addrs())
            .finish_non_exhaustive()
    }
}

const REGISTERED: [(u32, u32); 3] = [
    (NFS_PROG, NFS_V3),
    (MOUNT_PROG, MOUNT_V1),
    (MOUNT_PROG, MOUNT_V3),
];

fn fresh_verifier() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let v =
        (t.as_secs() << 32) ^ u64::from(t.subsec_nanos()) ^ (u64::from(std::process::id()) << 20);
    v.to_be_bytes()
}

impl NfsService {
    /// Serves NFS and MOUNT for the lock service's exports. `portmapper`: lockfs's own
    /// portmapper when the lock service runs one; otherwise the programs are registered
    /// with the system's rpcbind when it answers.
    pub async fn start(
        config: NfsConfig,
        lockd: Arc<Lockd>,
        portmapper: Option<Arc<Portmapper>>,
    ) -> Result<Self, ServerError> {
        let mut exports = config.exports.clone();
        for o in lockd.exports.iter() {
            exports.entry(o.export.id).or_default();
            let e = exports.get_mut(&o.export.id).expect("just inserted");
            if e.paths.is_empty() {
                e.paths.push(o.export.root.display().to_string());
            }
        }
        let exports = Arc::new(exports);
        let backing = Arc::new(Backing::new(config.open_files, config.open_file_idle));
        // One NFS service per lock service; a second one's descriptors are not the ones
        // a group's offline must close, so it keeps the first's registration.
        let _ = lockd.nfs_files.set(backing.clone());
        let max_io = config.max_io.clamp(4096, 16 * 1024 * 1024);
        let door = Arc::new(Door {
            lockd: lockd.clone(),
            exports: (*exports).clone(),
            backing: backing.clone(),
            write_verf: fresh_verifier(),
            max_io,
            changes: config.changes.as_ref().map(|c| c.0.clone()),
            handed_on: Default::default(),
            args_copied: Default::default(),
            sent_from_file: Default::default(),
        });
        let mut sc = config.server.clone();
        sc.max_record_size = sc.max_record_size.max(max_io as usize + 64 * 1024);
        let nfs_prog = Nfs3Program::new(door.clone(), sc.drc_capacity, sc.drc_ttl);
        let mut b = RpcServer::builder(sc.clone()).program(Arc::new(nfs_prog));
        for a in &config.nfs {
            b = b.udp(*a).tcp(*a);
        }
        let nfs = b.start().await?;
        let mut b = RpcServer::builder(config.server.clone()).program(Arc::new(MountProgram::new(
            lockd.clone(),
            exports.clone(),
            backing,
        )));
        for a in &config.mount {
            b = b.udp(*a).tcp(*a);
        }
        let mount = match b.start().await {
            Ok(m) => m,
            Err(e) => {
                nfs.shutdown().await;
                return Err(e);
            }
        };
        info!(nfs = ?nfs.tcp_addrs(), mount = ?mount.tcp_addrs(), "NFS and MOUNT serving");
        let sweeper = tokio::spawn({
            let backing = door.backing.clone();
            async move {
                let mut every = tokio::time::interval(WRITER_IDLE / 2);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    backing.sweep(Instant::now());
                }
            }
        });
        let mut svc = Self {
            nfs,
            mount,
            registered: false,
            door,
            sweeper,
        };
        svc.publish(portmapper).await;
        Ok(svc)
    }

    fn endpoints(&self) -> Vec<(u32, u32, Transport, SocketAddr)> {
        let mut v = Vec::new();
        for (prog, vers) in REGISTERED {
            let s = if prog == NFS_PROG {
                &self.nfs
            } else {
                &self.mount
            };
            if let Some(a) = s.udp_addrs().first() {
                v.push((prog, vers, Transport::Udp, *a));
            }
            if let Some(a) = s.tcp_addrs().first() {
                v.push((prog, vers, Transport::Tcp, *a));
            }
        }
        v
    }

    async fn publish(&mut self, portmapper: Option<Arc<Portmapper>>) {
        if let Some(pm) = portmapper {
            for (prog, vers, t, a) in self.endpoints() {
                pm.set_local(prog, vers, t, a);
            }
            return;
        }
        let rpcb = portmap::local_rpcbind();
        let t = Duration::from_secs(2);
        if !portmap::rpcbind_answers(rpcb, Duration::from_secs(1)).await {
            return;
        }
        for (prog, vers) in REGISTERED {
            let _ = portmap::unregister(rpcb, prog, vers, t).await;
        }
        let mut ok = true;
        for (prog, vers, tr, a) in self.endpoints() {
            if let Err(e) = portmap::register(rpcb, prog, vers, tr, a, t).await {
                warn!(prog, vers, error = %e, "rpcbind registration failed");
                ok = false;
            }
        }
        self.registered = ok;
    }

    pub fn nfs_tcp(&self) -> &[SocketAddr] {
        self.nfs.tcp_addrs()
    }

    pub fn nfs_udp(&self) -> &[SocketAddr] {
        self.nfs.udp_addrs()
    }

    pub fn mount_tcp(&self) -> &[SocketAddr] {
        self.mount.tcp_addrs()
    }

    pub fn mount_udp(&self) -> &[SocketAddr] {
        self.mount.udp_addrs()
    }

    /// Backing descriptors held open behind handles now.
    pub fn open_files(&self) -> usize {
        self.door.backing.open_count()
    }

    /// Calls tried at once that were run on the blocking pool instead, where they may
    /// wait for the disk (see [`super::program`]).
    pub fn handed_on(&self) -> u64 {
        self.door
            .handed_on
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls run on the blocking pool whose arguments were copied there, rather than
    /// shared in the record they came in (records up to 64 KiB, and UDP).
    pub fn args_copied(&self) -> u64 {
        self.door
            .args_copied
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Files held open for clients' unstable WRITEs now.
    pub fn writing_files(&self) -> usize {
        self.door.backing.writing_count()
    }

    /// READs whose data was sent from the page cache rather than copied into the reply.
    pub fn sent_from_file(&self) -> u64 {
        self.door
            .sent_from_file
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// READs whose data went out from the blocking pool, several clients reading at once.
    pub fn sent_from_pool(&self) -> u64 {
        self.nfs.file_replies_from_pool()
    }

    /// Stops serving and withdraws the rpcbind registrations it made.
    pub async fn shutdown(self) {
        if self.registered {
            let t = Duration::from_secs(2);
            for (prog, vers) in REGISTERED {
                let _ = portmap::unregister(portmap::local_rpcbind(), prog, vers, t).await;
            }
        }
        self.sweeper.abort();
        self.nfs.shutdown().await;
        self.mount.shutdown().await;
    }
}
