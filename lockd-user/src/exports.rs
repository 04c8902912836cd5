//! What lockd serves: exported directories, the service group each belongs to, and who may
//! lock in them.
//!
//! An export's files are identified in the lock table by the device and inode of the backing
//! file (`FileId::new(st_dev, st_ino)`), exactly as the FUSE door identifies them, so a
//! remote lock and a local lock on the same file meet. The export id is part of every NLM
//! file handle and must therefore be stable across restarts: it comes from configuration.
//!
//! Allowed clients are CIDR blocks matched against the address a request came from. An
//! empty list means every client may lock; restricting an export is always explicit.

use lock_table::ScopeId;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// A block of addresses, `192.0.2.0/24`, `::1/128` or a bare address (a full-length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR block that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid CIDR block {0:?} (expected ADDRESS or ADDRESS/PREFIX)")]
pub struct CidrError(pub String);

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError(format!("{addr}/{prefix}")));
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in this block. IPv4-mapped IPv6 peers match IPv4 blocks, since a
    /// dual-stack socket reports IPv4 clients that way.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.trim().parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One exported directory as configured.
#[derive(Debug, Clone)]
pub struct Export {
    /// Stable id, carried in every file handle of the export.
    pub id: u32,
    /// The backing directory whose files are locked.
    pub root: PathBuf,
    /// The service group (lock table scope) of the export.
    pub scope: ScopeId,
    /// Clients allowed to lock here; empty means every client.
    pub allowed: Vec<Cidr>,
    /// Exclusive locks and write shares are refused (NLM4_ROFS).
    pub read_only: bool,
}

impl Export {
    /// An export open to everyone, writable, in the default group.
    pub fn new(id: u32, root: impl Into<PathBuf>) -> Self {
        Self {
            id,
            root: root.into(),
            scope: ScopeId::DEFAULT,
            allowed: Vec::new(),
            read_only: false,
        }
    }

    /// Whether a client at `ip` may lock in this export.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|c| c.contains(ip))
    }
}

/// Why the exports could not be opened.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("export id {0} configured twice")]
    DuplicateId(u32),
    #[error("cannot open export root {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("export root {0} is not a directory")]
    NotADirectory(PathBuf),
}

/// An export with its root directory held open (the anchor for `open_by_handle_at`).
///
/// The root of an export whose group is offline is not held: its storage may be on
/// another node, and an open directory would keep the storage from being unmounted
/// when the group moves. It is opened again when the group comes online.
#[derive(Debug)]
pub struct OpenExport {
    pub export: Export,
    root: Mutex<Option<Root>>,
}

/// An open export root and its device and inode numbers, read when it was opened: every
/// handle the NFS door seals or opens is checked against them.
#[derive(Debug, Clone)]
struct Root {
    file: Arc<File>,
    id: (u64, u64),
}

fn open_root(e: &Export) -> Result<Root, ExportError> {
    let root = File::open(&e.root).map_err(|source| ExportError::Open {
        path: e.root.clone(),
        source,
    })?;
    let meta = root.metadata().map_err(|source| ExportError::Open {
        path: e.root.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ExportError::NotADirectory(e.root.clone()));
    }
    use std::os::unix::fs::MetadataExt;
    Ok(Root {
        file: Arc::new(root),
        id: (meta.dev(), meta.ino()),
    })
}

impl OpenExport {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Root>> {
        self.root.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open root directory, unless the export is closed (its group offline).
    pub fn root(&self) -> Option<Arc<File>> {
        self.slot().as_ref().map(|r| r.file.clone())
    }

    /// The device and inode numbers of the open root, unless the export is closed.
    pub fn root_id(&self) -> Option<(u64, u64)> {
        self.slot().as_ref().map(|r| r.id)
    }

    /// Opens the root again (its group comes online, maybe on storage mounted anew).
    pub fn reopen(&self) -> Result<(), ExportError> {
        let r = open_root(&self.export)?;
        *self.slot() = Some(r);
        Ok(())
    }

    /// Lets go of the root (its group goes offline).
    pub fn close(&self) {
        *self.slot() = None;
    }
}

/// Every export of the service, by id.
#[derive(Debug, Default)]
pub struct Exports {
    list: Vec<OpenExport>,
}

impl Exports {
    /// Opens every export root.
    pub fn open(exports: Vec<Export>) -> Result<Self, ExportError> {
        Self::open_allowing_absent(exports, &[])
    }

    /// Opens every export root but those of the groups in `offline`, which are opened when
    /// their group comes online ([`OpenExport::reopen`]).
    pub fn open_allowing_absent(
        exports: Vec<Export>,
        offline: &[ScopeId],
    ) -> Result<Self, ExportError> {
        let mut list: Vec<OpenExport> = Vec::with_capacity(exports.len());
        for e in exports {
            if list.iter().any(|o| o.export.id == e.id) {
                return Err(ExportError::DuplicateId(e.id));
            }
            let root = if offline.contains(&e.scope) {
                None
            } else {
                Some(open_root(&e)?)
            };
            list.push(OpenExport {
                export: e,
                root: Mutex::new(root),
            });
        }
        Ok(Self { list })
    }

    /// The exports of one group.
    pub fn of_group(&self, scope: ScopeId) -> impl Iterator<Item = &OpenExport> {
        self.list.iter().filter(move |o| o.export.scope == scope)
    }

    pub fn get(&self, id: u32) -> Option<&OpenExport> {
        self.list.iter().find(|o| o.export.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &OpenExport> {
        self.list.iter()
    }

    /// The distinct service groups of the exports, in configuration order.
    pub fn scopes(&self) -> Vec<ScopeId> {
        let mut out: Vec<ScopeId> = Vec::new();
        for o in &self.list {
            if !out.contains(&o.export.scope) {
                out.push(o.export.scope);
            }
        }
        out
    }

    /// The export whose root contains `path` (the longest matching root), for `lockfs fh`.
    pub fn containing(&self, path: &Path) -> Option<&OpenExport> {
        self.list
            .iter()
            .filter(|o| path.starts_with(&o.export.root))
            .max_by_key(|o| o.export.root.components().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "127.0.0.2".parse().unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.3".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("::2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "::/129", "x/1", "1.2.3.4/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(c.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn empty_allow_list_is_everyone() {
        let mut e = Export::new(1, "/");
        assert!(e.allows("203.0.113.9".parse().unwrap()));
        e.allowed = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(e.allows("127.0.0.3".parse().unwrap()));
        assert!(!e.allows("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn open_checks_roots() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            Exports::open(vec![Export::new(1, &f)]),
            Err(ExportError::NotADirectory(_))
        ));
        assert!(matches!(
            Exports::open(vec![Export::new(1, d.path()), Export::new(1, d.path())]),
            Err(ExportError::DuplicateId(1))
        ));
        let ex = Exports::open(vec![Export::new(7, d.path())]).unwrap();
        assert_eq!(ex.containing(&f).unwrap().export.id, 7);
        assert!(ex.containing(Path::new("/nonexistent-elsewhere")).is_none());
        assert_eq!(ex.scopes(), vec![ScopeId::DEFAULT]);
    }
}
