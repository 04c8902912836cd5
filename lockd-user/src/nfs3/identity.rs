//! Running one NFS operation as the caller: the AUTH_SYS uid, gid and supplementary groups
//! become the file-system identity of the thread doing the work, so the kernel makes every
//! permission decision exactly as it would for a local process of that user.
//!
//! The credentials are per thread: `setfsuid`, `setfsgid` and the raw `setgroups` system
//! call change only the calling thread (the libc `setgroups` wrapper would change every
//! thread of the daemon, FUSE workers included). An operation runs between [`assume`] and
//! the drop of its [`Assumed`], with no await in between (on a blocking-pool thread, or on
//! the runtime's own thread for the procedures that run inline), and the drop restores the
//! daemon's own identity even when the operation panics.
//!
//! Root squash: uid 0 becomes the export's anonymous uid and gid, with no supplementary
//! groups, unless the export says `no_root_squash`. AUTH_NONE callers are anonymous.

use crate::rpc::Credential;

/// Who an operation runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// How an export maps its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Squash {
    /// Root keeps its identity (no root squash).
    pub no_root_squash: bool,
    pub anon_uid: u32,
    pub anon_gid: u32,
}

impl Default for Squash {
    fn default() -> Self {
        Self {
            no_root_squash: false,
            anon_uid: 65534,
            anon_gid: 65534,
        }
    }
}

impl Squash {
    /// The identity a credential gets on this export.
    pub fn identity(&self, cred: &Credential) -> Identity {
        let anon = Identity {
            uid: self.anon_uid,
            gid: self.anon_gid,
            groups: Vec::new(),
        };
        match cred {
            Credential::Sys(s) if s.uid == 0 && !self.no_root_squash => anon,
            Credential::Sys(s) => Identity {
                uid: s.uid,
                gid: if s.uid == 0 && !self.no_root_squash {
                    self.anon_gid
                } else {
                    s.gid
                },
                groups: s.gids.clone(),
            },
            _ => anon,
        }
    }
}

/// The thread runs as an [`Identity`] until this is dropped. Only what [`assume`] changed
/// is put back.
#[derive(Debug)]
pub struct Assumed {
    /// The daemon's own uid and gid, when the file-system ids were changed.
    ids: Option<(u32, u32)>,
    /// The thread's own supplementary groups, when they were changed.
    groups: Option<Groups>,
}

/// Room for the supplementary groups of a thread without a heap allocation in the common
/// case (AUTH_SYS carries at most 16; a daemon usually has none or a few).
const INLINE_GROUPS: usize = 32;

/// A list of group ids, kept inline when short.
#[derive(Debug, Clone)]
enum Groups {
    Inline(usize, [libc::gid_t; INLINE_GROUPS]),
    Heap(Vec<libc::gid_t>),
}

impl Groups {
    fn as_slice(&self) -> &[libc::gid_t] {
        match self {
            Groups::Inline(n, a) => &a[..*n],
            Groups::Heap(v) => v,
        }
    }
}

fn raw_getgroups(buf: &mut [libc::gid_t]) -> std::io::Result<usize> {
    // SAFETY: the buffer holds `buf.len()` entries; the raw call reads this thread's list
    // (and with a length of 0 only counts it).
    let n = unsafe {
        libc::syscall(
            libc::SYS_getgroups,
            buf.len() as libc::c_long,
            buf.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn thread_groups() -> std::io::Result<Groups> {
    let mut a = [0 as libc::gid_t; INLINE_GROUPS];
    match raw_getgroups(&mut a) {
        Ok(n) => Ok(Groups::Inline(n, a)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // More than fit inline: count them, then read them.
            let n = raw_getgroups(&mut [])?;
            let mut v = vec![0 as libc::gid_t; n];
            let got = raw_getgroups(&mut v)?;
            v.truncate(got);
            Ok(Groups::Heap(v))
        }
        Err(e) => Err(e),
    }
}

fn raw_setgroups(groups: &[libc::gid_t]) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `groups`, which outlives the call; the raw
    // system call changes the supplementary groups of this thread only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::c_long,
            groups.as_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The identity a thread has between operations: the daemon's effective ids and the
/// thread's supplementary groups.
#[derive(Debug, Clone)]
struct Own {
    uid: u32,
    gid: u32,
    groups: Groups,
}

thread_local! {
    /// Read once per thread: nothing in the daemon changes a thread's credentials but
    /// [`assume`], and the drop of its [`Assumed`] puts them back, so three system calls
    /// per operation would only read the same values again.
    static OWN: std::cell::OnceCell<Own> = const { std::cell::OnceCell::new() };
}

fn own_identity() -> std::io::Result<Own> {
    OWN.with(|o| {
        if let Some(own) = o.get() {
            return Ok(own.clone());
        }
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let own = Own {
            uid,
            gid,
            groups: thread_groups()?,
        };
        Ok(o.get_or_init(|| own).clone())
    })
}

/// Makes this thread act as `id` for file-system access. Fails (changing nothing that is
/// not restored) if the daemon may not take that identity.
///
/// Each credential change replaces the thread's credentials in the kernel (and the old
/// ones are freed after an RCU grace period), so only what differs from the thread's own
/// identity is changed: a caller who maps to the daemon's own ids (root without root
/// squashing, for a daemon running as root) costs no system call at all.
pub fn assume(id: &Identity) -> std::io::Result<Assumed> {
    let Own {
        uid,
        gid,
        groups: own,
    } = own_identity()?;
    let mut restore = Assumed {
        ids: None,
        groups: None,
    };
    if own.as_slice() != id.groups.as_slice() {
        raw_setgroups(&id.groups)?;
        restore.groups = Some(own);
    }
    if (uid, gid) != (id.uid, id.gid) {
        restore.ids = Some((uid, gid));
        // SAFETY: setfsgid/setfsuid change this thread's credentials only; they return the
        // previous value and never fail in a way that corrupts state. Success is checked by
        // reading the value back (a call with an invalid id changes nothing and returns it).
        unsafe {
            libc::setfsgid(id.gid);
            libc::setfsuid(id.uid);
            let now_uid = libc::setfsuid(u32::MAX) as u32;
            let now_gid = libc::setfsgid(u32::MAX) as u32;
            if now_uid != id.uid || now_gid != id.gid {
                drop(restore);
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
        }
    }
    Ok(restore)
}

impl Drop for Assumed {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.ids {
            // SAFETY: as in `assume`; going back to the daemon's own ids always succeeds.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
            }
        }
        if let Some(g) = &self.groups {
            if let Err(e) = raw_setgroups(g.as_slice()) {
                tracing::error!(error = %e, "cannot drop supplementary groups after an NFS call");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::AuthSys;

    fn sys(uid: u32, gid: u32) -> Credential {
        Credential::Sys(AuthSys {
            stamp: 0,
            machinename: "c".into(),
            uid,
            gid,
            gids: vec![5, 6],
        })
    }

    #[test]
    fn root_is_squashed_unless_the_export_says_otherwise() {
        let s = Squash::default();
        assert_eq!(
            s.identity(&sys(0, 0)),
            Identity {
                uid: 65534,
                gid: 65534,
                groups: vec![]
            }
        );
        assert_eq!(s.identity(&sys(1000, 100)).uid, 1000);
        assert_eq!(s.identity(&sys(1000, 100)).groups, vec![5, 6]);
        assert_eq!(s.identity(&Credential::None).uid, 65534);
        let open = Squash {
            no_root_squash: true,
            ..Squash::default()
        };
        assert_eq!(open.identity(&sys(0, 0)).uid, 0);
    }

    #[test]
    fn identity_is_per_thread_and_restored() {
        // SAFETY: reading our own ids.
        if unsafe { libc::geteuid() } != 0 {
            lockfs_testkit::skip!("identity switching needs root");
        }
        let d = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = d.path().join("f");
        let p2 = path.clone();
        std::thread::spawn(move || {
            let _a = assume(&Identity {
                uid: 4242,
                gid: 4242,
                groups: vec![],
            })
            .unwrap();
            std::fs::write(&p2, b"x").unwrap();
        })
        .join()
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4242));
        // This thread was never changed, and the other one was restored on drop.
        std::fs::write(d.path().join("g"), b"y").unwrap();
        assert_eq!(std::fs::metadata(d.path().join("g")).unwrap().uid(), 0);
    }

    #[test]
    fn only_what_differs_is_changed_and_put_back() {
        // SAFETY: reading our own ids.
        if unsafe { libc::geteuid() } != 0 {
            lockfs_testkit::skip!("identity switching needs root");
        }
        std::thread::spawn(|| {
            // SAFETY: reading our own ids.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            let own = thread_groups().unwrap().as_slice().to_vec();
            // The daemon's own identity: nothing to change, nothing to put back.
            let same = assume(&Identity {
                uid,
                gid,
                groups: own.clone(),
            })
            .unwrap();
            assert!(same.ids.is_none() && same.groups.is_none());
            drop(same);
            // Other groups only: the ids stay, the groups change and come back.
            let mut other = own.clone();
            other.push(4243);
            let groups_only = assume(&Identity {
                uid,
                gid,
                groups: other.clone(),
            })
            .unwrap();
            assert!(groups_only.ids.is_none());
            assert_eq!(thread_groups().unwrap().as_slice(), other.as_slice());
            drop(groups_only);
            assert_eq!(thread_groups().unwrap().as_slice(), own.as_slice());
            // Another uid: the file-system ids change and come back.
            let as_other = assume(&Identity {
                uid: 4243,
                gid: 4243,
                groups: own.clone(),
            })
            .unwrap();
            // SAFETY: an invalid id changes nothing and returns the current one.
            assert_eq!(unsafe { libc::setfsuid(u32::MAX) } as u32, 4243);
            drop(as_other);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::setfsuid(u32::MAX) } as u32, uid);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::setfsgid(u32::MAX) } as u32, gid);
        })
        .join()
        .unwrap();
    }
}
