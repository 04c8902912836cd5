//! Attributes of one file and of the file system: GETATTR, SETATTR, ACCESS, FSSTAT,
//! FSINFO and PATHCONF, and how `sattr3` is applied (also by the procedures that create).
//!
//! They are together because they read or change what `fstat`, `fstatvfs` and
//! `fpathconf` report of an object without touching its contents or its name.

use super::*;

impl Door {
    pub(super) fn getattr(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        match self.node(c, fh).map(|n| n.st) {
            Ok(st) => {
                enc_stat(e, Stat::Ok);
                Fattr::from_stat(&st).encode(e);
            }
            Err(s) => enc_stat(e, s),
        }
    }

    pub(super) fn setattr(
        &self,
        c: &Caller,
        fh: &[u8],
        sattr: &Sattr,
        guard: Option<Time>,
        e: &mut Encoder,
    ) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = Fattr::from_stat(&node.st).wcc();
        let r = (|| {
            let st = node.st;
            if let Some(g) = guard {
                if Fattr::from_stat(&st).ctime != g {
                    return Err(Stat::NotSync);
                }
            }
            self.writable(node.export)?;
            let _pass = self.resize_gate(c, node.export, &st, sattr.size)?;
            let _as = self.become_caller(c, node.export)?;
            apply_sattr(node.raw(), &st, sattr)
        })();
        if r.is_ok() {
            self.changed(c, &node.st);
        }
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_wcc(e, Some(&pre), attr_of(node.raw()).as_ref());
    }

    pub(super) fn access(&self, c: &Caller, fh: &[u8], want: u32, e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = node.st;
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFLNK {
                return Ok(want & access::READ);
            }
            let _as = self.become_caller(c, node.export)?;
            let can = |m| check_access(node.raw(), m).is_ok();
            let mut got = 0;
            if want & access::READ != 0 && can(libc::R_OK) {
                got |= access::READ;
            }
            let w = can(libc::W_OK);
            let x = can(libc::X_OK);
            if kind == libc::S_IFDIR {
                if want & access::LOOKUP != 0 && x {
                    got |= access::LOOKUP;
                }
                if w && x {
                    got |= want & (access::MODIFY | access::EXTEND | access::DELETE);
                }
            } else {
                if w {
                    got |= want & (access::MODIFY | access::EXTEND);
                }
                if want & access::EXECUTE != 0 && x {
                    got |= access::EXECUTE;
                }
            }
            if node.export.export.read_only {
                got &= !(access::MODIFY | access::EXTEND | access::DELETE);
            }
            Ok(got)
        })();
        reply_with_attr(e, node.raw(), r, |e, got| {
            e.put_u32(got);
        });
    }

    pub(super) fn fsstat(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        // SAFETY: an all-zero statvfs is valid; `fstatvfs` fills it.
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and out pointer.
        let r = errno_of(unsafe { libc::fstatvfs(node.raw(), &mut sv) });
        reply_with_attr(e, node.raw(), r, |e, ()| {
            let f = sv.f_frsize;
            for v in [
                sv.f_blocks * f,
                sv.f_bfree * f,
                sv.f_bavail * f,
                sv.f_files,
                sv.f_ffree,
                sv.f_favail,
            ] {
                e.put_u64(v);
            }
            e.put_u32(0);
        });
    }

    pub(super) fn fsinfo(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        match self.node(c, fh) {
            Ok(node) => {
                let max = self.max_io(c);
                enc_stat(e, Stat::Ok);
                put_post_attr(e, attr_of(node.raw()).as_ref());
                // rtmax, rtpref, rtmult, wtmax, wtpref, wtmult, dtpref
                for v in [max, max, 4096, max, max, 4096, max.min(64 * 1024)] {
                    e.put_u32(v);
                }
                e.put_u64(i64::MAX as u64);
                Time { sec: 0, nsec: 1 }.encode(e);
                // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
                e.put_u32(0x1b);
            }
            Err(s) => {
                enc_stat(e, s);
                put_post_attr(e, None);
            }
        }
    }

    pub(super) fn pathconf(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        match self.node(c, fh) {
            Ok(node) => {
                // SAFETY: plain queries of a valid descriptor.
                let (links, names) = unsafe {
                    (
                        libc::fpathconf(node.raw(), libc::_PC_LINK_MAX),
                        libc::fpathconf(node.raw(), libc::_PC_NAME_MAX),
                    )
                };
                enc_stat(e, Stat::Ok);
                put_post_attr(e, attr_of(node.raw()).as_ref());
                e.put_u32(if links > 0 { links as u32 } else { 1 });
                e.put_u32(if names > 0 { names as u32 } else { 255 });
                e.put_bool(true); // no_trunc: longer names are refused
                e.put_bool(true); // chown_restricted
                e.put_bool(false); // case_insensitive
                e.put_bool(true); // case_preserving
            }
            Err(s) => {
                enc_stat(e, s);
                put_post_attr(e, None);
            }
        }
    }
}

/// `faccessat` with the thread's file-system identity (AT_EACCESS checks with it).
pub(super) fn check_access(fd: RawFd, mode: i32) -> Result<(), Stat> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated.
    errno_of(unsafe { libc::faccessat(libc::AT_FDCWD, p.as_ptr(), mode, libc::AT_EACCESS) })
}

pub(super) fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// Applies `sattr3` to a file, as the calling thread: size first, then owner, then mode
/// (a change of owner clears set-id bits), then times.
pub(super) fn apply_sattr(fd: RawFd, st: &libc::stat, s: &Sattr) -> Result<(), Stat> {
    if *s == Sattr::default() {
        return Ok(());
    }
    let path = proc_path(fd);
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    if let Some(size) = s.size {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                Stat::IsDir
            } else {
                Stat::Inval
            });
        }
        if size > i64::MAX as u64 {
            return Err(Stat::Fbig);
        }
        if size != st.st_size as u64 {
            // SAFETY: `path` is NUL-terminated.
            errno_of(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) })?;
        }
    }
    if s.uid.is_some() || s.gid.is_some() {
        let uid = s.uid.unwrap_or(u32::MAX);
        let gid = s.gid.unwrap_or(u32::MAX);
        // SAFETY: the empty path with AT_EMPTY_PATH names the descriptor itself.
        errno_of(unsafe { libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    }
    if let Some(mode) = s.mode {
        if !is_link {
            // SAFETY: `path` is NUL-terminated.
            errno_of(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
        }
    }
    let t = |t: &SetTime| match t {
        SetTime::DontChange => timespec(0, libc::UTIME_OMIT),
        SetTime::ServerTime => timespec(0, libc::UTIME_NOW),
        SetTime::ClientTime(t) => timespec(i64::from(t.sec), i64::from(t.nsec)),
    };
    if (s.atime != SetTime::DontChange || s.mtime != SetTime::DontChange) && !is_link {
        let ts = [t(&s.atime), t(&s.mtime)];
        // SAFETY: `path` is NUL-terminated and `ts` holds two timespecs.
        errno_of(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), ts.as_ptr(), 0) })?;
    }
    Ok(())
}
