//! Answers a READ of a direct-I/O file (one the daemon serves itself, such as a
//! mandatory-locked file) once the lock checks have admitted it.
//!
//! Copying the data through the daemon costs two copies: `pread` from the page
//! cache into a daemon buffer, and the kernel's copy from that buffer into the
//! reader's. A spliced reply (see the patched fuser's `ReplyData::splice_from`)
//! moves page references from the backing file into a pipe and lets the kernel
//! copy them once, straight into the reader's buffer. The reply is complete
//! when the splice into the device returns, so an admitted read is finished
//! within the call, exactly as with `pread`.
//!
//! Splicing is tried first; when it cannot be done (a file that does not
//! support splice, a read larger than the pipes, no pipes) or fails before any
//! data, the read falls back to the copy, which also answers with the errno of
//! a read that fails outright.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fuser::ReplyData;

use crate::fs::{with_read_at, Shared};
use crate::handles::OpenFile;

/// The READ path's setting and counters of one mount.
#[derive(Debug)]
pub(crate) struct ReadReplies {
    splice: AtomicBool,
    spliced: AtomicU64,
}

impl ReadReplies {
    pub(crate) fn new(splice: bool) -> Self {
        ReadReplies {
            splice: AtomicBool::new(splice),
            spliced: AtomicU64::new(0),
        }
    }

    /// READ replies sent spliced since the mount.
    pub(crate) fn spliced(&self) -> u64 {
        self.spliced.load(Ordering::Relaxed)
    }
}

/// Replies to an admitted READ of `size` bytes at `offset` of `file`.
pub(crate) fn reply(shared: &Shared, file: &OpenFile, offset: u64, size: u32, reply: ReplyData) {
    let reply = if shared.reads.splice.load(Ordering::Relaxed) {
        // Counted before the reply goes out, as the copy counts before its
        // pread: a reader that has its data must find its read counted.
        shared.daemon_io.fetch_add(1, Ordering::Relaxed);
        shared.reads.spliced.fetch_add(1, Ordering::Relaxed);
        match reply.splice_from(file.fd.as_fd(), offset, size) {
            Ok(_) => return,
            Err((reply, e)) => {
                // Nothing was sent; the copy below counts its own request.
                shared.daemon_io.fetch_sub(1, Ordering::Relaxed);
                shared.reads.spliced.fetch_sub(1, Ordering::Relaxed);
                tracing::trace!(error = %e, offset, size, "read not spliced, copying");
                reply
            }
        }
    } else {
        reply
    };
    // The reply is sent from inside the read so that the data need not be
    // copied out of the thread's buffer; on failure it comes back unused.
    let mut reply = Some(reply);
    let sent = with_read_at(shared, file, offset, size, |data| {
        if let Some(reply) = reply.take() {
            reply.data(data);
        }
    });
    if let (Err(e), Some(reply)) = (sent, reply) {
        reply.error(e);
    }
}
