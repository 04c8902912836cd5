//! The MOUNT program (versions 1 and 3, RFC 1813 appendix I): how an NFS client gets the
//! root file handle of an export, and how `showmount` lists exports and mounts.
//!
//! MNT answers the root handle of the export whose path (its source directory, or
//! `/NAME`) is asked for, if the client's address is on the export's client list; the
//! handle is the NLM/NFS handle of the root, so everything below it is reached by LOOKUP.
//! Version 1 MNT answers like version 3 but with the fixed 32-byte handle of NFS version
//! 2 (RFC 1094 `fhstatus`): the root's handle zero-padded, which NLM versions 1 and 3
//! accept as the handle itself ([`crate::fh::FhKey::open`]). NFS version 2 itself is not
//! served. A handle longer than 32 bytes (an export on a file system with long kernel
//! handles, such as tmpfs or btrfs) cannot be carried: version 1 MNT then answers
//! EACCES, as nfs-utils' mountd does when the kernel cannot make a handle that small,
//! and such an export is reached through MOUNT version 3 only.
//! The mount list DUMP reports is kept in memory only (it is advisory in every
//! implementation: clients that crash never send UMNT).

use crate::fh::v2_handle;
use crate::lockd::Lockd;
use crate::nfs3::backing::Backing;
use crate::nfs3::ExportOptions;
use crate::server::{CallContext, ProcError, Reply, RpcProgram};
use crate::xdr::{Decoder, Encoder};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

pub const MOUNT_PROG: u32 = 100_005;
pub const MOUNT_V1: u32 = 1;
pub const MOUNT_V3: u32 = 3;
/// `MNTPATHLEN`.
pub const MNTPATHLEN: usize = 1024;
/// Most entries kept in the mount list.
const MAX_MOUNTS: usize = 65_536;

pub mod proc_ {
    pub const NULL: u32 = 0;
    pub const MNT: u32 = 1;
    pub const DUMP: u32 = 2;
    pub const UMNT: u32 = 3;
    pub const UMNTALL: u32 = 4;
    pub const EXPORT: u32 = 5;
}

/// `mountstat3` values used here.
pub mod stat {
    pub const OK: u32 = 0;
    pub const NOENT: u32 = 2;
    pub const IO: u32 = 5;
    pub const ACCES: u32 = 13;
}

/// The arguments of one MOUNT call (the same in versions 1 and 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArgs {
    Null,
    Mnt(String),
    Dump,
    Umnt(String),
    UmntAll,
    Export,
}

/// Decodes the arguments of MOUNT procedure `proc`: `ProcUnavail` for a procedure the
/// program does not have, `GarbageArgs` for a path that is not a string of at most
/// [`MNTPATHLEN`] bytes.
pub fn decode_args(proc: u32, args: &mut Decoder<'_>) -> Result<MountArgs, ProcError> {
    Ok(match proc {
        proc_::NULL => MountArgs::Null,
        proc_::MNT => MountArgs::Mnt(args.get_string(MNTPATHLEN)?),
        proc_::DUMP => MountArgs::Dump,
        proc_::UMNT => MountArgs::Umnt(args.get_string(MNTPATHLEN)?),
        proc_::UMNTALL => MountArgs::UmntAll,
        proc_::EXPORT => MountArgs::Export,
        _ => return Err(ProcError::ProcUnavail),
    })
}

/// MOUNT versions 1 and 3.
pub struct MountProgram {
    lockd: Arc<Lockd>,
    exports: Arc<HashMap<u32, ExportOptions>>,
    backing: Arc<Backing>,
    mounts: Mutex<BTreeSet<(String, String)>>,
}

impl MountProgram {
    pub fn new(
        lockd: Arc<Lockd>,
        exports: Arc<HashMap<u32, ExportOptions>>,
        backing: Arc<Backing>,
    ) -> Self {
        Self {
            lockd,
            exports,
            backing,
            mounts: Mutex::new(BTreeSet::new()),
        }
    }

    fn mounts(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The export ids in configuration order with the path each is listed under.
    fn listed(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self
            .lockd
            .exports
            .iter()
            .map(|o| {
                let path = self
                    .exports
                    .get(&o.export.id)
                    .and_then(|x| x.paths.first().cloned())
                    .unwrap_or_else(|| o.export.root.display().to_string());
                (o.export.id, path)
            })
            .collect();
        v.sort();
        v
    }

    fn find(&self, path: &str) -> Option<u32> {
        let trimmed = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        self.lockd.exports.iter().map(|o| o.export.id).find(|id| {
            let e = self.lockd.exports.get(*id);
            self.exports
                .get(id)
                .is_some_and(|x| x.paths.iter().any(|p| p == trimmed))
                || e.is_some_and(|e| e.export.root.as_os_str() == trimmed)
        })
    }

    fn mnt(&self, ctx: &CallContext, path: &str, e: &mut Encoder) {
        let Some(id) = self.find(path) else {
            e.put_u32(stat::NOENT);
            return;
        };
        let Some(export) = self.lockd.exports.get(id) else {
            e.put_u32(stat::NOENT);
            return;
        };
        if !export.export.allows(ctx.peer.ip()) {
            e.put_u32(stat::ACCES);
            return;
        }
        match self.backing.root_handle(&self.lockd, export) {
            Ok(fh) => {
                if ctx.vers == MOUNT_V1 {
                    // fhstatus: a fixed-size handle and nothing else.
                    let Some(v2) = v2_handle(&fh) else {
                        e.put_u32(stat::ACCES);
                        return;
                    };
                    e.put_u32(stat::OK);
                    e.put_fixed_opaque(&v2);
                } else {
                    e.put_u32(stat::OK);
                    e.put_opaque(&fh);
                    // auth_flavors: AUTH_SYS (AUTH_NONE callers are served as anonymous).
                    e.put_array(&[crate::rpc::flavor::AUTH_SYS, crate::rpc::flavor::AUTH_NONE]);
                }
                let host = client_name(ctx);
                let mut m = self.mounts();
                if m.len() < MAX_MOUNTS {
                    m.insert((host, path.to_string()));
                }
            }
            Err(_) => e.put_u32(stat::IO),
        }
    }
}

fn client_name(ctx: &CallContext) -> String {
    match ctx.cred.machinename() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => ctx.peer.ip().to_string(),
    }
}

impl RpcProgram for MountProgram {
    fn program(&self) -> u32 {
        MOUNT_PROG
    }

    fn versions(&self) -> (u32, u32) {
        (MOUNT_V1, MOUNT_V3)
    }

    fn has_version(&self, vers: u32) -> bool {
        vers == MOUNT_V1 || vers == MOUNT_V3
    }

    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        let args = decode_args(ctx.proc_, args)?;
        let mut e = Encoder::new();
        match args {
            MountArgs::Null => {}
            MountArgs::Mnt(path) => self.mnt(ctx, &path, &mut e),
            MountArgs::Dump => {
                for (host, dir) in self.mounts().iter() {
                    e.put_bool(true);
                    e.put_string(host);
                    e.put_string(dir);
                }
                e.put_bool(false);
            }
            MountArgs::Umnt(path) => {
                self.mounts().remove(&(client_name(ctx), path));
            }
            MountArgs::UmntAll => {
                let host = client_name(ctx);
                self.mounts().retain(|(h, _)| *h != host);
            }
            MountArgs::Export => {
                for (id, path) in self.listed() {
                    e.put_bool(true);
                    e.put_string(&path);
                    if let Some(x) = self.lockd.exports.get(id) {
                        for c in &x.export.allowed {
                            e.put_bool(true);
                            e.put_string(&c.to_string());
                        }
                    }
                    e.put_bool(false);
                }
                e.put_bool(false);
            }
        }
        Ok(Reply::Now(e.into_inner()))
    }
}
