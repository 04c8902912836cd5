//! Directory handles and listing: `getdents64` on the daemon's descriptor of
//! the backing directory, whose file position is the kernel's cursor.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::{Errno, FileHandle, FileType, INodeNo, ReplyDirectory};

use super::reply::{OpenedDir, R};
use super::{errno, LockFs};
use crate::attr;
use crate::handles::OpenDir;
use crate::sys;

impl LockFs {
    pub(super) fn opendir(&self, ino: INodeNo) -> R<OpenedDir> {
        let inode = self.inode(ino)?;
        let fd =
            sys::reopen(inode.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(errno)?;
        Ok(OpenedDir(self.shared.dirs.insert(OpenDir {
            fd,
            cursor: Default::default(),
        })))
    }

    /// Fills `reply` with entries of directory `ino` from `offset` on, as many
    /// as fit.
    pub(super) fn readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> R<()> {
        let dir = self.dir(fh)?;
        let _cursor = dir.cursor.lock().unwrap_or_else(|p| p.into_inner());
        sys::lseek(dir.fd.as_fd(), offset as i64, libc::SEEK_SET).map_err(errno)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = sys::getdents(dir.fd.as_fd(), &mut buf).map_err(errno)?;
            if n == 0 {
                return Ok(());
            }
            for ent in Dirents::new(&buf[..n]) {
                if super::entries::is_hidden(ino, ent.name) {
                    continue;
                }
                let kind = match attr::dirent_type(ent.d_type) {
                    Some(k) => k,
                    None => kind_at(&dir.fd, ent.name),
                };
                if reply.add(
                    INodeNo(ent.ino),
                    ent.next as u64,
                    kind,
                    OsStr::from_bytes(ent.name),
                ) {
                    return Ok(());
                }
            }
        }
    }

    pub(super) fn releasedir(&self, fh: FileHandle) -> R<()> {
        self.shared.dirs.remove(fh.0).map(drop).ok_or(Errno::EBADF)
    }

    pub(super) fn fsyncdir(&self, fh: FileHandle, datasync: bool) -> R<()> {
        let dir = self.dir(fh)?;
        sys::fsync(dir.fd.as_fd(), datasync).map_err(errno)
    }
}

/// The type of a directory entry whose `d_type` the backing file system left
/// unknown.
fn kind_at(dir: &OwnedFd, name: &[u8]) -> FileType {
    let Ok(c) = sys::component(OsStr::from_bytes(name)) else {
        return FileType::RegularFile;
    };
    sys::open_path(dir.as_fd(), &c)
        .and_then(|fd| sys::fstat(fd.as_fd()))
        .ok()
        .and_then(|st| attr::file_type(st.st_mode))
        .unwrap_or(FileType::RegularFile)
}

/// One parsed `linux_dirent64` record.
struct Dirent<'a> {
    ino: u64,
    next: i64,
    d_type: u8,
    name: &'a [u8],
}

/// Iterator over the records `getdents64` wrote; stops at the first malformed one
/// instead of trusting a length that would run past the buffer.
struct Dirents<'a> {
    buf: &'a [u8],
}

impl<'a> Dirents<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Dirents { buf }
    }
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Dirent<'a>;

    fn next(&mut self) -> Option<Dirent<'a>> {
        const HEADER: usize = 19;
        let b = self.buf;
        if b.len() < HEADER {
            return None;
        }
        let ino = u64::from_ne_bytes(b[0..8].try_into().ok()?);
        let next = i64::from_ne_bytes(b[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(b[16..18].try_into().ok()?) as usize;
        if reclen < HEADER || reclen > b.len() {
            self.buf = &[];
            return None;
        }
        let d_type = b[18];
        let raw = &b[HEADER..reclen];
        let name = raw.split(|&c| c == 0).next().unwrap_or(raw);
        self.buf = &b[reclen..];
        Some(Dirent {
            ino,
            next,
            d_type,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: i64, ty: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).next_multiple_of(8);
        let mut v = Vec::with_capacity(reclen);
        v.extend_from_slice(&ino.to_ne_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&(reclen as u16).to_ne_bytes());
        v.push(ty);
        v.extend_from_slice(name);
        v.resize(reclen, 0);
        v
    }

    #[test]
    fn dirents_parse_and_stop_at_garbage() {
        let mut buf = record(5, 10, libc::DT_REG, b"a");
        buf.extend(record(6, 20, libc::DT_DIR, b"longer-name"));
        let got: Vec<_> = Dirents::new(&buf)
            .map(|d| (d.ino, d.next, d.d_type, d.name.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, 10, libc::DT_REG, b"a".to_vec()),
                (6, 20, libc::DT_DIR, b"longer-name".to_vec())
            ]
        );
        // A record claiming to be longer than the buffer ends the walk.
        let mut bad = record(7, 30, libc::DT_REG, b"x");
        bad[16..18].copy_from_slice(&1000u16.to_ne_bytes());
        assert_eq!(Dirents::new(&bad).count(), 0);
        // A truncated header too.
        assert_eq!(Dirents::new(&buf[..10]).count(), 0);
        let mut tiny = record(7, 30, libc::DT_REG, b"x");
        tiny[16..18].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(Dirents::new(&tiny).count(), 0);
    }
}
