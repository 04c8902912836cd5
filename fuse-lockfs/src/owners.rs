//! Telling POSIX lock owners from OFD lock owners.
//!
//! FUSE gives every lock request a 64-bit `lock_owner`: for a POSIX (`F_SETLK`)
//! lock it names the process's descriptor table (threads share it, a forked child
//! gets its own), for an OFD (`F_OFD_SETLK`) lock the open file description. The
//! kernel scrambles both the same way and sends no flag, so the daemon has to
//! infer which it is:
//!
//! - Every `close()` sends `FLUSH` with the closer's POSIX owner, and direct-I/O
//!   reads and writes carry it too. A value seen there is a POSIX owner, and the
//!   pid that sent it tells us that process's POSIX owner.
//! - A lock request from a process whose POSIX owner is known, under a different
//!   value, is an OFD lock of the open file it names.
//! - Anything else is taken as POSIX (the common case: a process's first lock
//!   before it ever closed a file on the mount).
//!
//! What this decides, and what does not depend on it:
//! - Close semantics are right either way. `FLUSH` drops the closer's POSIX locks
//!   on the file; `RELEASE` (last close of the open file) drops the locks of every
//!   owner used through it that never showed up as a POSIX owner. A real POSIX
//!   owner always shows up before that `RELEASE`, since its own close sent a
//!   `FLUSH`; an OFD owner never does.
//! - Fork is right either way: a child has another POSIX owner but the same open
//!   files, so it inherits OFD and flock locks and no POSIX ones.
//! - A mandatory-lock check counts every not-POSIX owner used through the open
//!   file the I/O goes through as the caller's own, so an OFD holder never blocks
//!   its own writes.
//! - What can be wrong for an OFD lock taken as POSIX: it takes part in deadlock
//!   detection (Linux exempts OFD locks) and listings call it POSIX. A pid reused by
//!   a new process can make a POSIX lock look like OFD until that process closes a
//!   file on the mount, when the mistake is corrected.

use std::sync::{Mutex, MutexGuard};

use rustc_hash::{FxHashMap, FxHashSet};

/// Bound on remembered POSIX owners; owner values are reused after processes
/// exit, so the set is simply started over when it grows past this.
const MAX_KNOWN: usize = 1 << 16;

/// What a lock owner value stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// A process's POSIX owner (known or assumed).
    Posix,
    /// The OFD owner of open file `fh`.
    Ofd { fh: u64 },
}

#[derive(Default)]
struct Inner {
    /// Values seen as POSIX owners (FLUSH, direct I/O).
    posix: FxHashSet<u64>,
    /// The last POSIX owner each pid showed.
    by_pid: FxHashMap<u32, u64>,
    /// Values classified as OFD owners, with their open file.
    ofd: FxHashMap<u64, u64>,
}

/// Owner classification of one mount.
#[derive(Default)]
pub(crate) struct Owners {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners").finish_non_exhaustive()
    }
}

impl Owners {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `pid` showed `owner` as its POSIX owner (FLUSH, direct I/O). Returns the open
    /// file whose OFD owner `owner` was wrongly taken for, if any.
    pub(crate) fn seen_posix(&self, pid: u32, owner: u64) -> Option<u64> {
        let mut i = self.inner();
        if i.by_pid.get(&pid) != Some(&owner) {
            if i.by_pid.len() >= MAX_KNOWN {
                i.by_pid.clear();
            }
            i.by_pid.insert(pid, owner);
        }
        if !i.posix.contains(&owner) {
            if i.posix.len() >= MAX_KNOWN {
                i.posix.clear();
            }
            i.posix.insert(owner);
        }
        i.ofd.remove(&owner)
    }

    /// Whether `owner` has shown up as a POSIX owner.
    pub(crate) fn is_known_posix(&self, owner: u64) -> bool {
        self.inner().posix.contains(&owner)
    }

    /// The class of a lock request's `owner`, made through open file `fh` by a
    /// process known as `pids` (the request's thread id and the lock's pid).
    /// The answer for a value is sticky until its open file is released.
    pub(crate) fn classify(&self, owner: u64, fh: u64, pids: [u32; 2]) -> Class {
        let mut i = self.inner();
        if let Some(&f) = i.ofd.get(&owner) {
            if f == fh {
                return Class::Ofd { fh };
            }
            // One open file description, one owner: seen through two files,
            // it is a process's owner after all.
            return Class::Posix;
        }
        if i.posix.contains(&owner) {
            return Class::Posix;
        }
        let known = pids.iter().find_map(|p| i.by_pid.get(p).copied());
        match known {
            Some(p) if p != owner => {
                i.ofd.insert(owner, fh);
                Class::Ofd { fh }
            }
            _ => Class::Posix,
        }
    }

    /// The POSIX owner process `pid` last showed, if any.
    pub(crate) fn posix_of(&self, pid: u32) -> Option<u64> {
        self.inner().by_pid.get(&pid).copied()
    }

    /// The class already decided for `owner`, without deciding one.
    pub(crate) fn classify_known(&self, owner: u64) -> Option<Class> {
        let i = self.inner();
        if let Some(&fh) = i.ofd.get(&owner) {
            return Some(Class::Ofd { fh });
        }
        i.posix.contains(&owner).then_some(Class::Posix)
    }

    /// Forgets the OFD owners of a released open file.
    pub(crate) fn forget_file(&self, fh: u64) {
        self.inner().ofd.retain(|_, f| *f != fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_owners_are_posix_and_flush_teaches_the_pid() {
        let o = Owners::default();
        assert_eq!(o.classify(100, 1, [7, 7]), Class::Posix);
        assert_eq!(o.seen_posix(7, 100), None);
        assert!(o.is_known_posix(100));
        // Another value from the same process through file 2: an OFD lock.
        assert_eq!(o.classify(200, 2, [7, 7]), Class::Ofd { fh: 2 });
        assert_eq!(o.classify(200, 2, [7, 7]), Class::Ofd { fh: 2 }, "sticky");
        // The same value through another file is a process owner after all.
        assert_eq!(o.classify(200, 3, [7, 7]), Class::Posix);
        // Thread ids differ from the lock's pid: either one teaches.
        assert_eq!(o.classify(300, 4, [99, 7]), Class::Ofd { fh: 4 });
        o.forget_file(4);
        assert_eq!(o.classify(300, 5, [98, 98]), Class::Posix);
    }

    #[test]
    fn a_flush_corrects_a_pid_reuse_mistake() {
        let o = Owners::default();
        o.seen_posix(7, 100);
        // A new process reusing pid 7 has owner 500: taken for OFD at first.
        assert_eq!(o.classify(500, 9, [7, 7]), Class::Ofd { fh: 9 });
        // Its first close shows the truth and names the file to fix up.
        assert_eq!(o.seen_posix(7, 500), Some(9));
        assert_eq!(o.classify(500, 9, [7, 7]), Class::Posix);
    }
}
