//! The one place where handler results become FUSE replies.
//!
//! Handlers return `Result<T, Errno>` and never touch a reply, so their bodies
//! can use `?`; [`Answer::send`] writes the value or the errno in the shape
//! each request's reply wants. Handlers whose I/O may have to wait for a
//! mandatory lock return a [`Step`] instead: the adapter passes the request
//! through the gate and answers when the work has run, now or from the thread
//! that later wakes the parked request.

use std::sync::Arc;
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FopenFlags, Generation, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};

use crate::locking::{Gate, Locking};

pub(crate) type R<T> = Result<T, Errno>;

/// A reply that can carry a handler's result of type `T`.
pub(crate) trait Answer<T>: Send + 'static {
    fn send(self, res: R<T>);
}

/// An entry or attributes, with how long the kernel may cache them.
pub(crate) struct Attr {
    pub(crate) ttl: Duration,
    pub(crate) attr: FileAttr,
}

/// A new open file: its handle, and the backing id when the kernel does its I/O.
pub(crate) struct Opened {
    pub(crate) fh: u64,
    pub(crate) backing: Option<Arc<BackingId>>,
}

/// What `getxattr` and `listxattr` answer: the size a buffer needs, or the data.
pub(crate) enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// The first conflicting lock of `F_GETLK`: start, end, type and pid.
pub(crate) struct Conflict {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) typ: i32,
    pub(crate) pid: u32,
}

/// `statfs` of the backing file system, as the kernel wants it.
pub(crate) struct Statfs {
    pub(crate) blocks: u64,
    pub(crate) bfree: u64,
    pub(crate) bavail: u64,
    pub(crate) files: u64,
    pub(crate) ffree: u64,
    pub(crate) bsize: u32,
    pub(crate) namelen: u32,
    pub(crate) frsize: u32,
}

/// What a handler of checked I/O decided: the answer now, or the gate the
/// request must pass and the work to run once it is admitted.
pub(crate) enum Step<T> {
    Done(T),
    Gated(Gate, Work<T>),
}

/// I/O that runs once the gate admits it, on whichever thread admits it.
pub(crate) type Work<T> = Box<dyn FnOnce() -> R<T> + Send>;

/// Answers a [`Step`]: at once, or after the gate admitted or refused it.
pub(crate) fn send_step<T: 'static, A: Answer<T>>(reply: A, step: R<Step<T>>) {
    match step {
        Ok(Step::Done(v)) => reply.send(Ok(v)),
        Err(e) => reply.send(Err(e)),
        Ok(Step::Gated(gate, work)) => {
            Locking::pass(gate, Box::new(move |r| reply.send(r.and_then(|()| work()))))
        }
    }
}

impl Answer<()> for ReplyEmpty {
    fn send(self, res: R<()>) {
        match res {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<()> for ReplyDirectory {
    fn send(self, res: R<()>) {
        match res {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Vec<u8>> for ReplyData {
    fn send(self, res: R<Vec<u8>>) {
        match res {
            Ok(data) => self.data(&data),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<super::ReadOut> for ReplyData {
    fn send(self, res: R<super::ReadOut>) {
        match res {
            Ok(r) => crate::read_reply::reply(&r.shared, &r.file, r.offset, r.size, self),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<u32> for ReplyWrite {
    fn send(self, res: R<u32>) {
        match res {
            Ok(n) => self.written(n),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Attr> for ReplyEntry {
    fn send(self, res: R<Attr>) {
        match res {
            Ok(a) => self.entry(&a.ttl, &a.attr, Generation(0)),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Attr> for ReplyAttr {
    fn send(self, res: R<Attr>) {
        match res {
            Ok(a) => self.attr(&a.ttl, &a.attr),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Opened> for ReplyOpen {
    fn send(self, res: R<Opened>) {
        match res {
            Ok(Opened {
                fh,
                backing: Some(b),
            }) => self.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
            Ok(Opened { fh, backing: None }) => {
                self.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => self.error(e),
        }
    }
}

/// A directory handle: opened without direct I/O.
pub(crate) struct OpenedDir(pub(crate) u64);

impl Answer<OpenedDir> for ReplyOpen {
    fn send(self, res: R<OpenedDir>) {
        match res {
            Ok(OpenedDir(fh)) => self.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<(Attr, Opened)> for ReplyCreate {
    fn send(self, res: R<(Attr, Opened)>) {
        match res {
            Ok((a, Opened { fh, backing })) => match backing {
                Some(b) => self.created_passthrough(
                    &a.ttl,
                    &a.attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    &b,
                ),
                None => self.created(
                    &a.ttl,
                    &a.attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_DIRECT_IO,
                ),
            },
            Err(e) => self.error(e),
        }
    }
}

impl Answer<i64> for ReplyLseek {
    fn send(self, res: R<i64>) {
        match res {
            Ok(off) => self.offset(off),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Statfs> for ReplyStatfs {
    fn send(self, res: R<Statfs>) {
        match res {
            Ok(s) => self.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Xattr> for ReplyXattr {
    fn send(self, res: R<Xattr>) {
        match res {
            Ok(Xattr::Size(n)) => self.size(n),
            Ok(Xattr::Data(d)) => self.data(&d),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Conflict> for ReplyLock {
    fn send(self, res: R<Conflict>) {
        match res {
            Ok(c) => self.locked(c.start, c.end, c.typ, c.pid),
            Err(e) => self.error(e),
        }
    }
}

impl Answer<Vec<u8>> for ReplyIoctl {
    fn send(self, res: R<Vec<u8>>) {
        match res {
            Ok(out) => self.ioctl(0, &out),
            Err(e) => self.error(e),
        }
    }
}
