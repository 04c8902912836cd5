//! Finding names and reading directories: LOOKUP, READLINK, READDIR and READDIRPLUS.
//!
//! They are together because they all resolve names relative to a directory descriptor
//! of the export as the caller, where `..` of the export root is the root itself, and
//! READDIR's cookies and their verifier are kept in one place.

use super::attrs::check_access;
use super::*;

impl Door {
    /// The handle and status of `name` in `dir` (whose status is `dir_st`), as the
    /// calling thread.
    fn lookup_in(
        &self,
        dir: &Node<'_>,
        dir_st: &libc::stat,
        name: &[u8],
    ) -> Result<(Vec<u8>, libc::stat), Stat> {
        if name == b"." || (name == b".." && is_root(dir.export, dir_st)) {
            let fh = self
                .backing
                .handle_of(&self.lockd, dir.export, dir.raw(), dir_st)?;
            return Ok((fh, *dir_st));
        }
        let cname = component(name)?;
        self.backing
            .lookup(&self.lockd, dir.export, dir.raw(), &cname)
    }

    pub(super) fn lookup(&self, c: &Caller, at: &DirOp, e: &mut Encoder) {
        let Some(dir) = self.node_or_fail(c, &at.dir, e, Empty::PostAttr) else {
            return;
        };
        // A lookup changes nothing, so the directory's attributes taken when its handle
        // was resolved are also its post-operation attributes.
        let r = (|| {
            let dst = dir.st;
            if dst.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stat::NotDir);
            }
            let found = {
                let _as = self.become_caller(c, dir.export)?;
                // Opening the name as the caller is itself checked for search
                // permission on the directory (the kernel checks it for every
                // component it walks); only "." and the root's "..", answered
                // without opening anything, need the check made here.
                if at.name == b"." || at.name == b".." {
                    check_access(dir.raw(), libc::X_OK)?;
                }
                self.lookup_in(&dir, &dst, &at.name)?
            };
            Ok(found)
        })();
        match r {
            Ok((fh, st)) => {
                enc_stat(e, Stat::Ok);
                e.put_opaque(&fh);
                put_post_attr(e, Some(&Fattr::from_stat(&st)));
            }
            Err(s) => enc_stat(e, s),
        }
        put_post_attr(e, Some(&Fattr::from_stat(&dir.st)));
    }

    pub(super) fn readlink(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = node.st;
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                return Err(Stat::Inval);
            }
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: the empty path names the O_PATH descriptor of the link itself; the
            // buffer is valid for its length.
            let n = unsafe {
                libc::readlinkat(node.raw(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n < 0 {
                return Err(ioerr(io::Error::last_os_error()));
            }
            buf.truncate(n as usize);
            Ok(buf)
        })();
        reply_with_attr(e, node.raw(), r, |e, target| {
            e.put_opaque(&target);
        });
    }

    /// The cookie verifier of a directory: it changes when the daemon restarts, so cookies
    /// of an earlier run are refused with BAD_COOKIE instead of being trusted.
    fn cookie_verf(&self, st: &libc::stat) -> [u8; 8] {
        let mut v = u64::from_be_bytes(self.write_verf);
        v ^= st.st_ino.rotate_left(17) ^ st.st_dev.rotate_left(41);
        v.to_be_bytes()
    }

    /// READDIR and READDIRPLUS (`plus`); `counts` are the call's dircount and maxcount.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn readdir(
        &self,
        c: &Caller,
        fh: &[u8],
        cookie: u64,
        verf: [u8; 8],
        (dircount, maxcount): (u32, u32),
        plus: bool,
        e: &mut Encoder,
    ) {
        let maxcount = maxcount.min(self.max_io(c)) as usize;
        let dircount = (dircount as usize).min(maxcount);
        let Some(dir) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = dir.st;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stat::NotDir);
            }
            let ours = self.cookie_verf(&st);
            if cookie != 0 && verf != [0; 8] && verf != ours {
                return Err(Stat::BadCookie);
            }
            let root = is_root(dir.export, &st);
            let _as = self.become_caller(c, dir.export)?;
            let list = read_entries(dir.raw(), cookie)?;
            let mut body = Encoder::new();
            // Status, attributes and verifier take about 100 bytes, the list's end 8.
            let mut total = 120usize;
            let mut names = 0usize;
            let mut eof = true;
            let mut any = false;
            for (ino, name, next) in list.entries {
                let name_len = (name.len() + 3) & !3;
                let entry = 24 + name_len;
                let mut sub = Encoder::new();
                sub.put_bool(true);
                let ino = if name == b".." && root {
                    st.st_ino
                } else {
                    ino
                };
                sub.put_u64(ino);
                sub.put_opaque(&name);
                sub.put_u64(next);
                if plus {
                    // ".." is answered only at the root (where it is the root itself):
                    // elsewhere it would name a file outside what was asked.
                    let found = (name.as_slice() != b".." || root)
                        .then(|| self.lookup_in(&dir, &st, &name).ok())
                        .flatten();
                    match found {
                        Some((fh, fst)) => {
                            put_post_attr(&mut sub, Some(&Fattr::from_stat(&fst)));
                            put_post_fh(&mut sub, Some(&fh));
                        }
                        None => {
                            put_post_attr(&mut sub, None);
                            put_post_fh(&mut sub, None);
                        }
                    }
                }
                if total + sub.len() > maxcount || names + entry > dircount {
                    eof = false;
                    break;
                }
                total += sub.len();
                names += entry;
                body.put_raw(sub.as_slice());
                any = true;
            }
            if !any && !eof {
                return Err(Stat::TooSmall);
            }
            eof &= list.eof;
            body.put_bool(false);
            body.put_bool(eof);
            Ok((ours, body))
        })();
        reply_with_attr(e, dir.raw(), r, |e, (v, body)| {
            e.put_fixed_opaque(&v);
            e.put_raw(body.as_slice());
        });
    }
}

struct Entries {
    /// (inode, name, cookie of the next entry)
    entries: Vec<(u64, Vec<u8>, u64)>,
    eof: bool,
}

/// Reads a directory from `cookie` on (a `telldir` position; 0 is the start), at most a
/// bounded number of entries, as the calling thread.
fn read_entries(dir: RawFd, cookie: u64) -> Result<Entries, Stat> {
    const MAX_ENTRIES: usize = 4096;
    let f = reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fdopendir takes ownership of the descriptor (released from `f`); closedir
    // below closes it.
    let dp = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(f)) };
    if dp.is_null() {
        return Err(ioerr(io::Error::last_os_error()));
    }
    struct Closer(*mut libc::DIR);
    impl Drop for Closer {
        fn drop(&mut self) {
            // SAFETY: the stream was opened by fdopendir and is closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let _c = Closer(dp);
    if cookie != 0 {
        // SAFETY: valid stream; positions come from earlier d_off values.
        unsafe { libc::seekdir(dp, cookie as libc::c_long) };
    }
    let mut entries = Vec::new();
    loop {
        if entries.len() >= MAX_ENTRIES {
            return Ok(Entries {
                entries,
                eof: false,
            });
        }
        // SAFETY: valid stream; errno is cleared first to tell the end from an error.
        let ent = unsafe {
            *libc::__errno_location() = 0;
            libc::readdir64(dp)
        };
        if ent.is_null() {
            // SAFETY: reading errno.
            let errno = unsafe { *libc::__errno_location() };
            if errno != 0 {
                return Err(Stat::from_errno(errno));
            }
            return Ok(Entries { entries, eof: true });
        }
        // SAFETY: readdir returned a valid entry, alive until the next call.
        let (ino, off, name) = unsafe {
            let e = &*ent;
            let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                .to_bytes()
                .to_vec();
            (e.d_ino, e.d_off as u64, name)
        };
        entries.push((ino, name, off));
    }
}
