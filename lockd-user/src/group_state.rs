//! What a service group that moves between nodes keeps on its own storage, so the node it
//! moves to finds it there: under `STORAGE/.lockfs/`,
//!
//! - `clients/`: the group's client list, one file per client and a link per alias
//!   ([`crate::nsm::store`], attached with [`crate::nsm::store::NsmStore::attach_group`]);
//! - `state`: the group's NSM state number, in decimal, advanced (odd) every time the group
//!   comes online and made even by a clean offline, so clients see a larger number after
//!   every move whichever node served the group before;
//! - `fh.key`: the key of the group's file handles ([`crate::fh::FhKey`]), so a client's
//!   handles stay valid on the node the group moves to;
//! - `clean-offline`: present while the group's last offline was clean; removed when it
//!   comes online, so its absence at the next online means the last node crashed, unless
//!   the group was never online at all (no state number yet);
//! - `lease`: locked exclusively (`flock`) by the daemon serving the group, for as long as it
//!   serves it, and naming that daemon; a second daemon is refused, so two nodes never
//!   serve a group at once even if the cluster manager errs. The lock dies with the
//!   process, so a crashed node's lease does not outlive it. It holds across nodes as far
//!   as the storage's own locking does (a cluster file system's, or one node's at a time
//!   for a file system on a shared disk).
//!
//! Every change is durable (file synced, renamed into place, directory synced) before the
//! caller goes on. The storage directory itself is never created here: its absence means
//! the group's storage is not mounted on this node, and the group must not come online.

use crate::fh::FhKey;
use crate::nsm::store::write_atomic;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The hidden directory under a group's storage.
pub const DIR: &str = ".lockfs";
const STATE: &str = "state";
const CLIENTS: &str = "clients";
const CLEAN: &str = "clean-offline";
const LEASE: &str = "lease";

/// How a group's last stint online ended, as its storage tells at the next online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastOffline {
    /// Never online before: a fresh storage, with nothing to recover.
    Never,
    /// Taken offline cleanly: its locks released, its clients' reclaims expected.
    Clean,
    /// Online before and not taken offline cleanly: its last node crashed.
    Unclean,
}

/// The exclusive right to serve a group, held while the file stays open.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

/// A group's state directory on its storage.
#[derive(Debug, Clone)]
pub struct GroupState {
    dir: PathBuf,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn mkdir_durably(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

impl GroupState {
    /// Opens (creating if needed) `storage/.lockfs`. `storage` must already exist.
    pub fn open(storage: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(storage).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("group storage {}: {e}", storage.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("group storage {} is not a directory", storage.display()),
            ));
        }
        let dir = storage.join(DIR);
        mkdir_durably(&dir)?;
        mkdir_durably(&dir.join(CLIENTS))?;
        Ok(Self { dir })
    }

    /// Takes the group's lease for `holder` (written into it, for whoever is refused).
    /// Fails with [`io::ErrorKind::WouldBlock`], naming the holder, when another daemon
    /// holds it.
    pub fn acquire_lease(&self, holder: &str) -> io::Result<Lease> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(LEASE);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        // SAFETY: `f` is an open descriptor for the duration of the call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut who = String::new();
                let _ = f.read_to_string(&mut who);
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "the group is online elsewhere (lease held by {})",
                        who.trim()
                    ),
                ));
            }
            return Err(e);
        }
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{holder}")?;
        f.sync_all()?;
        Ok(Lease { _file: f })
    }

    /// `STORAGE/.lockfs`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the group's client list lives.
    pub fn clients_dir(&self) -> PathBuf {
        self.dir.join(CLIENTS)
    }

    /// The group's file handle key, created on first use.
    pub fn fh_key(&self) -> io::Result<FhKey> {
        FhKey::load_or_create(&self.dir)
    }

    /// The group's state number (0 before its first online).
    pub fn state(&self) -> io::Result<i32> {
        match std::fs::read_to_string(self.dir.join(STATE)) {
            Ok(s) => s.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a state number: {s:?}",
                        self.dir.join(STATE).display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Makes the state number odd and larger than any given out before (the group comes
    /// online); durable when it returns.
    pub fn advance(&self) -> io::Result<i32> {
        let n = self.state()?;
        let next = if n % 2 != 0 {
            n.wrapping_add(2)
        } else {
            n.wrapping_add(1)
        };
        let next = if next <= 0 { 1 } else { next };
        write_atomic(&self.dir, STATE, format!("{next}\n").as_bytes())?;
        Ok(next)
    }

    /// How the group's last stint online ended; the clean record is removed (durably), so a
    /// crash from now on shows at the next online. A group with no state number was never
    /// online: nothing it never held can have been lost.
    pub fn take_last_offline(&self) -> io::Result<LastOffline> {
        match std::fs::remove_file(self.dir.join(CLEAN)) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(LastOffline::Clean)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(if self.state()? == 0 {
                LastOffline::Never
            } else {
                LastOffline::Unclean
            }),
            Err(e) => Err(e),
        }
    }

    /// Records a clean offline: the state number made even, then the record written.
    pub fn record_clean_offline(&self) -> io::Result<()> {
        let n = self.state()?;
        if n % 2 != 0 {
            write_atomic(
                &self.dir,
                STATE,
                format!("{}\n", n.wrapping_add(1).max(0)).as_bytes(),
            )?;
        }
        write_atomic(&self.dir, CLEAN, b"clean\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_key_and_clean_record_live_on_the_storage() {
        let d = tempfile::tempdir().unwrap();
        assert!(GroupState::open(&d.path().join("absent")).is_err());
        let g = GroupState::open(d.path()).unwrap();
        assert!(g.clients_dir().is_dir());
        assert_eq!(g.state().unwrap(), 0);
        assert_eq!(
            g.take_last_offline().unwrap(),
            LastOffline::Never,
            "a fresh storage was never online"
        );
        assert_eq!(g.take_last_offline().unwrap(), LastOffline::Never);
        assert_eq!(g.advance().unwrap(), 1);
        g.record_clean_offline().unwrap();
        assert_eq!(g.state().unwrap(), 2);
        // Another node opens the same storage: it sees what this one left.
        let other = GroupState::open(d.path()).unwrap();
        assert_eq!(other.take_last_offline().unwrap(), LastOffline::Clean);
        assert_eq!(
            other.take_last_offline().unwrap(),
            LastOffline::Unclean,
            "taken once: online since, and not offline cleanly"
        );
        assert_eq!(other.advance().unwrap(), 3);
        // A crash (no clean record) still advances past every number given out.
        assert_eq!(GroupState::open(d.path()).unwrap().advance().unwrap(), 5);
        let k1 = g.fh_key().unwrap();
        let k2 = other.fh_key().unwrap();
        let sealed = k1.seal(7, 1, &[1, 2, 3, 4]);
        assert_eq!(k2.open(&sealed).unwrap().0, 7, "one key for the group");
        let lease = g.acquire_lease("node-a pid 1").unwrap();
        let e = other.acquire_lease("node-b pid 2").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("node-a pid 1"), "{e}");
        drop(lease);
        drop(other.acquire_lease("node-b pid 2").unwrap());
        std::fs::write(g.dir().join(STATE), "junk").unwrap();
        assert!(
            g.advance().is_err(),
            "a damaged number is an error, not a reset"
        );
    }
}
