//! Changes of names: CREATE (UNCHECKED, GUARDED, EXCLUSIVE), MKDIR, SYMLINK, MKNOD,
//! REMOVE, RMDIR, RENAME and LINK.
//!
//! They are together because each changes a directory: the frame that creates an object
//! and answers its handle, attributes and the directory's wcc data is shared, and every
//! change tells the other doors' caches which name changed.

use super::attrs::{apply_sattr, timespec};
use super::*;

/// What a call that makes a name made: the object, opened; whether the name is new; the
/// object's status, if taken after the last change made to it.
type Made = (OwnedFd, bool, Option<libc::stat>);

impl Door {
    /// The frame of CREATE, MKDIR, SYMLINK and MKNOD: resolve the directory, check it is
    /// writable, run `make` as the caller, answer the new object's handle and attributes
    /// and the directory's wcc data. `make` answers the object, whether it made the name
    /// (a CREATE may open a file that was there), and the object's status if it took
    /// one that nothing changed since. The object's descriptor is kept in the cache.
    fn make_in(
        &self,
        c: &Caller,
        fh: &[u8],
        e: &mut Encoder,
        make: impl FnOnce(RawFd, &CString, &OpenExport) -> Result<Made, Stat>,
        name: &[u8],
    ) {
        let Some(dir) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = Fattr::from_stat(&dir.st).wcc();
        let r = (|| {
            let st = dir.st;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stat::NotDir);
            }
            self.writable(dir.export)?;
            let cname = component(name)?;
            let (made, new, known) = {
                let _as = self.become_caller(c, dir.export)?;
                make(dir.raw(), &cname, dir.export)?
            };
            let st = known.or_else(|| fstat(made.as_raw_fd()).ok());
            if new {
                self.entry_changed(c, &dir, name, Was::Free);
            } else if let Some(st) = &st {
                // An existing file, opened: its size or mode may have been set.
                self.changed(c, st);
            }
            let fh = st.and_then(|st| {
                self.backing
                    .handle_keeping(&self.lockd, dir.export, made, &st)
                    .ok()
            });
            Ok((fh, st.map(|st| Fattr::from_stat(&st))))
        })();
        match r {
            Ok((fh, attr)) => {
                enc_stat(e, Stat::Ok);
                put_post_fh(e, fh.as_deref());
                put_post_attr(e, attr.as_ref());
            }
            Err(s) => enc_stat(e, s),
        }
        put_wcc(e, Some(&pre), attr_of(dir.raw()).as_ref());
    }

    pub(super) fn create(&self, c: &Caller, at: &DirOp, how: CreateHow, e: &mut Encoder) {
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, export| {
                let base = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_CREAT;
                match how {
                    CreateHow::Unchecked(s) | CreateHow::Guarded(s) => {
                        let guarded = matches!(how, CreateHow::Guarded(_));
                        let mode = s.mode.unwrap_or(0o644) & 0o7777;
                        // Made anew or opened: a file this call made with the mode it
                        // asked for needs no chmod, which the daemon's umask may call for.
                        let (f, made) = match open_at(dir, name, base | libc::O_EXCL, mode) {
                            Ok(f) => (f, true),
                            Err(err) if err.raw_os_error() == Some(libc::EEXIST) && !guarded => {
                                (open_at(dir, name, base, mode).map_err(ioerr)?, false)
                            }
                            Err(err) => return Err(ioerr(err)),
                        };
                        let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                            return Err(Stat::Exist);
                        }
                        let s = if made && st.st_mode & 0o7777 == mode {
                            Sattr { mode: None, ..s }
                        } else {
                            s
                        };
                        // Over an existing file, a size is a truncation like SETATTR's.
                        let _pass = self.resize_gate(c, export, &st, s.size)?;
                        apply_sattr(f.as_raw_fd(), &st, &s)?;
                        let unchanged = (s == Sattr::default()).then_some(st);
                        Ok((f, made, unchanged))
                    }
                    CreateHow::Exclusive(verf) => {
                        // The verifier is kept in the new file's access and modification
                        // times (RFC 1813 3.3.8); the client sets the real ones afterwards.
                        let (a, m) = verf_times(&verf);
                        match open_at(dir, name, base | libc::O_EXCL, 0o600) {
                            Ok(f) => {
                                let ts = [timespec(a, 0), timespec(m, 0)];
                                // SAFETY: `ts` holds two valid timespecs.
                                errno_of(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })?;
                                Ok((f, true, None))
                            }
                            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                                let st = stat_at(dir, name).map_err(ioerr)?;
                                let replay = st.st_mode & libc::S_IFMT == libc::S_IFREG
                                    && st.st_atime == a
                                    && st.st_mtime == m
                                    && st.st_atime_nsec == 0
                                    && st.st_mtime_nsec == 0;
                                if !replay {
                                    return Err(Stat::Exist);
                                }
                                Ok((open_path_at(dir, name).map_err(ioerr)?, false, None))
                            }
                            Err(err) => Err(ioerr(err)),
                        }
                    }
                }
            },
            &at.name,
        );
    }

    pub(super) fn mkdir(&self, c: &Caller, at: &DirOp, s: Sattr, e: &mut Encoder) {
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, _| {
                // SAFETY: `name` is NUL-terminated.
                errno_of(unsafe {
                    libc::mkdirat(dir, name.as_ptr(), s.mode.unwrap_or(0o755) & 0o7777)
                })?;
                let f = open_path_at(dir, name).map_err(ioerr)?;
                let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                apply_sattr(f.as_raw_fd(), &st, &s)?;
                Ok((f, true, None))
            },
            &at.name,
        );
    }

    pub(super) fn symlink(
        &self,
        c: &Caller,
        at: &DirOp,
        s: Sattr,
        target: Vec<u8>,
        e: &mut Encoder,
    ) {
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, _| {
                let t = CString::new(target).map_err(|_| Stat::Inval)?;
                // SAFETY: both strings are NUL-terminated.
                errno_of(unsafe { libc::symlinkat(t.as_ptr(), dir, name.as_ptr()) })?;
                let f = open_path_at(dir, name).map_err(ioerr)?;
                if s.uid.is_some() || s.gid.is_some() {
                    let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                    apply_sattr(f.as_raw_fd(), &st, &Sattr { mode: None, ..s })?;
                }
                Ok((f, true, None))
            },
            &at.name,
        );
    }

    pub(super) fn mknod(&self, c: &Caller, at: &DirOp, what: MknodWhat, e: &mut Encoder) {
        let (kind, s, dev) = match what {
            MknodWhat::Device {
                block,
                sattr,
                major,
                minor,
            } => {
                let k = if block { libc::S_IFBLK } else { libc::S_IFCHR };
                (Some(k), sattr, libc::makedev(major, minor))
            }
            MknodWhat::Socket(s) => (Some(libc::S_IFSOCK), s, 0),
            MknodWhat::Fifo(s) => (Some(libc::S_IFIFO), s, 0),
            MknodWhat::BadType(_) => (None, Sattr::default(), 0),
        };
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, _| {
                let kind = kind.ok_or(Stat::BadType)?;
                let mode = kind | (s.mode.unwrap_or(0o644) & 0o7777);
                // SAFETY: `name` is NUL-terminated.
                errno_of(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) })?;
                let f = open_path_at(dir, name).map_err(ioerr)?;
                let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                apply_sattr(f.as_raw_fd(), &st, &s)?;
                Ok((f, true, None))
            },
            &at.name,
        );
    }

    /// REMOVE and RMDIR. The file the name names is held (its cached descriptor, or one
    /// opened `O_PATH`) while the name goes, so the unlink frees nothing, even the last
    /// name of a file whose blocks are still being written: the close that frees the file
    /// is left to the closing thread ([`crate::nfs3::closer`]), and neither call waits
    /// here.
    pub(super) fn remove(&self, c: &Caller, at: &DirOp, e: &mut Encoder, dir_too: bool) {
        let name = &at.name;
        let Some(dir) = self.node_or_fail(c, &at.dir, e, Empty::Wcc) else {
            return;
        };
        let pre = Fattr::from_stat(&dir.st).wcc();
        let r = (|| {
            self.writable(dir.export)?;
            if name == b"." || name == b".." {
                return Err(if dir_too { Stat::Inval } else { Stat::Acces });
            }
            let cname = component(name)?;
            // What the name names, found as the daemon for these uses alone: held, and
            // its status, by which the other doors' cached name of it is dropped only if
            // they know that file.
            let (held, old) = self.backing.hold(dir.export, dir.raw(), &cname).unzip();
            let _as = self.become_caller(c, dir.export)?;
            let flags = if dir_too { libc::AT_REMOVEDIR } else { 0 };
            // SAFETY: `cname` is NUL-terminated.
            errno_of(unsafe { libc::unlinkat(dir.raw(), cname.as_ptr(), flags) })?;
            if let Some(st) = old.as_ref().filter(|st| dir_too || st.st_nlink <= 1) {
                self.backing.forget(dir.export, st);
            }
            let was = old.map_or(Was::Unknown, |st| Was::File(st.st_dev, st.st_ino));
            self.entry_changed(c, &dir, name, was);
            if let Some(f) = held {
                self.backing.close_later(&self.lockd, dir.export, f);
            }
            Ok(())
        })();
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_wcc(e, Some(&pre), attr_of(dir.raw()).as_ref());
    }

    pub(super) fn rename(&self, c: &Caller, from_at: &DirOp, to_at: &DirOp, e: &mut Encoder) {
        let (from_name, to_name) = (&from_at.name, &to_at.name);
        let from = self.node(c, &from_at.dir);
        let to = self.node(c, &to_at.dir);
        let pre_from = from.as_ref().ok().map(|n| n.st);
        let pre_to = to.as_ref().ok().map(|n| n.st);
        let r = (|| {
            let from = from.as_ref().map_err(|s| *s)?;
            let to = to.as_ref().map_err(|s| *s)?;
            if from.export.export.id != to.export.export.id {
                return Err(Stat::Xdev);
            }
            self.writable(from.export)?;
            for n in [from_name, to_name] {
                if n.as_slice() == b"." || n.as_slice() == b".." {
                    return Err(Stat::Inval);
                }
            }
            let (a, b) = (component(from_name)?, component(to_name)?);
            let _as = self.become_caller(c, from.export)?;
            // SAFETY: both names are NUL-terminated.
            errno_of(unsafe { libc::renameat(from.raw(), a.as_ptr(), to.raw(), b.as_ptr()) })?;
            self.entry_changed(c, from, from_name, Was::Unknown);
            self.entry_changed(c, to, to_name, Was::Unknown);
            Ok(())
        })();
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        let post = |n: &Result<Node<'_>, Stat>| n.as_ref().ok().and_then(|n| attr_of(n.raw()));
        put_wcc(
            e,
            pre_from.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            post(&from).as_ref(),
        );
        put_wcc(
            e,
            pre_to.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            post(&to).as_ref(),
        );
    }

    pub(super) fn link(&self, c: &Caller, fh: &[u8], at: &DirOp, e: &mut Encoder) {
        let name = &at.name;
        let file = self.node(c, fh);
        let dir = self.node(c, &at.dir);
        let pre = dir.as_ref().ok().map(|n| n.st);
        let r = (|| {
            let file = file.as_ref().map_err(|s| *s)?;
            let dir = dir.as_ref().map_err(|s| *s)?;
            if file.export.export.id != dir.export.export.id {
                return Err(Stat::Xdev);
            }
            self.writable(dir.export)?;
            let cname = component(name)?;
            let _as = self.become_caller(c, dir.export)?;
            let src = proc_path(file.raw());
            // SAFETY: both paths are NUL-terminated; following the procfs link names the
            // descriptor's own file (linkat with AT_EMPTY_PATH would need a privilege).
            errno_of(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    dir.raw(),
                    cname.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })?;
            self.entry_changed(c, dir, name, Was::Free);
            self.changed(c, &file.st);
            Ok(())
        })();
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_post_attr(
            e,
            file.as_ref().ok().and_then(|n| attr_of(n.raw())).as_ref(),
        );
        put_wcc(
            e,
            pre.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            dir.as_ref().ok().and_then(|n| attr_of(n.raw())).as_ref(),
        );
    }
}

fn verf_times(v: &[u8; 8]) -> (i64, i64) {
    let a = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    let m = u32::from_be_bytes([v[4], v[5], v[6], v[7]]);
    (i64::from(a), i64::from(m))
}
