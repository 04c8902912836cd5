//! Closing the NFS door's descriptors away from the door's thread.
//!
//! Closing a file's last descriptor after its last name is gone is where the kernel frees
//! the file: its inode and, for a file with data, its blocks, after waiting for any of
//! its pages the disk is still writing. A REMOVE holds a descriptor of the file while it
//! unlinks the name, so the unlink itself frees nothing (on ext4 it takes about half as
//! long for an empty file: `scripts/unlink-cost.c`), and hands the descriptor here: a
//! thread of its own closes it, on another CPU if one is free, so the door's thread
//! answers the next call meanwhile (and a REMOVE of a large file no longer needs a
//! thread that may wait). Linux's NFS server closes its files late for the same reason.
//!
//! Handing over must cost less than the close, and a thread woken for each descriptor
//! would cost about as much (on a virtual machine a wake-up of a sleeping CPU is dear),
//! as would one that polled a queue (measured: a thread closing a batch each
//! millisecond made one client's CREATE+REMOVE pairs 15% slower). So descriptors queue
//! up under a mutex and the closing thread is woken once [`BATCH`] of them wait, or by
//! [`Closer::kick`], which the NFS service's sweep calls once a second: a removed file
//! is freed within about a second when REMOVEs are few. The queue is bounded: past
//! [`MAX_QUEUED`] descriptors a caller closes its own.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Descriptors that wake the closing thread when they wait.
const BATCH: usize = 16;
/// Descriptors waiting at most; a caller finding the queue this full closes its own.
const MAX_QUEUED: usize = 4096;

#[derive(Default)]
struct Shared {
    queue: Mutex<Vec<OwnedFd>>,
    /// Held while a batch taken from the queue is being closed: [`Closer::flush`] takes
    /// it to know that no batch is still on its way.
    closing: Mutex<()>,
    wake: Condvar,
    /// Close what waits now, however few (set under `queue`'s lock).
    kicked: AtomicBool,
    /// The closing thread waits to be woken (read and written under `queue`'s lock), so
    /// a wake-up is a system call made only when it is needed.
    waiting: AtomicBool,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Closing descriptors cannot leave the queue inconsistent, even in a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes descriptors on a thread of its own; see the module documentation.
pub struct Closer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("queued", &lock(&self.shared.queue).len())
            .finish()
    }
}

impl Closer {
    /// Starts the closing thread. If it cannot be started, descriptors are closed by
    /// their callers.
    pub fn new() -> Self {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let started = std::thread::Builder::new()
            .name("lockfs-nfs-close".into())
            .spawn(move || run(&theirs));
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread to close NFS descriptors: callers close them");
            shared.stop.store(true, Ordering::Relaxed);
        }
        Self { shared }
    }

    /// Closes `fd` soon, on the closing thread.
    pub fn close_later(&self, fd: OwnedFd) {
        let s = &self.shared;
        let mut q = lock(&s.queue);
        if s.stop.load(Ordering::Relaxed) || q.len() >= MAX_QUEUED {
            drop(q);
            drop(fd);
            return;
        }
        q.push(fd);
        let wake = q.len() >= BATCH && s.waiting.swap(false, Ordering::Relaxed);
        drop(q);
        if wake {
            s.wake.notify_one();
        }
    }

    /// Wakes the closing thread if anything waits.
    pub fn kick(&self) {
        let s = &self.shared;
        let q = lock(&s.queue);
        if q.is_empty() {
            return;
        }
        s.kicked.store(true, Ordering::Relaxed);
        let wake = s.waiting.swap(false, Ordering::Relaxed);
        drop(q);
        if wake {
            s.wake.notify_one();
        }
    }

    /// Closes every descriptor handed over so far before returning: a group going offline
    /// must let go of its files now, so its storage can be unmounted.
    pub fn flush(&self) {
        let s = &self.shared;
        let _closing = lock(&s.closing);
        let batch = std::mem::take(&mut *lock(&s.queue));
        drop(batch);
    }
}

impl Default for Closer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        let s = &self.shared;
        let q = lock(&s.queue);
        s.stop.store(true, Ordering::Relaxed);
        let wake = s.waiting.swap(false, Ordering::Relaxed);
        drop(q);
        if wake {
            s.wake.notify_one();
        }
        // The thread closes what is left and ends; whatever a caller hands over from now
        // on is closed by that caller.
    }
}

fn run(s: &Shared) {
    loop {
        let q = lock(&s.queue);
        let q = s
            .wake
            .wait_while(q, |q| {
                let sleep = q.len() < BATCH
                    && !s.kicked.load(Ordering::Relaxed)
                    && !s.stop.load(Ordering::Relaxed);
                s.waiting.store(sleep, Ordering::Relaxed);
                sleep
            })
            .unwrap_or_else(|e| e.into_inner());
        s.kicked.store(false, Ordering::Relaxed);
        let stop = s.stop.load(Ordering::Relaxed);
        // Taken while `closing` is held, so a flush waits for this batch to be closed.
        drop(q);
        let closing = lock(&s.closing);
        let batch = std::mem::take(&mut *lock(&s.queue));
        drop(batch);
        drop(closing);
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Descriptors of this process whose link in procfs reads `target`.
    fn fds_naming(target: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == target))
            .count()
    }

    fn open(path: &std::path::Path) -> OwnedFd {
        std::fs::File::open(path).unwrap().into()
    }

    #[test]
    fn closes_soon_and_at_once_when_flushed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let c = Closer::new();
        // A few wait until the sweep's kick; a batch's worth is closed at once.
        for n in [1, BATCH - 1, BATCH, 3 * BATCH + 1] {
            for _ in 0..n {
                c.close_later(open(&path));
            }
            if n < BATCH {
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(fds_naming(&path), n, "closed before a batch or a kick");
            }
            if n != BATCH {
                c.kick();
            }
            let started = Instant::now();
            while fds_naming(&path) > 0 {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{n}: not closed"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // A flush closes everything handed over, before it returns.
        for _ in 0..100 {
            c.close_later(open(&path));
        }
        c.flush();
        assert_eq!(fds_naming(&path), 0);
        assert!(lock(&c.shared.queue).is_empty());
        // After the closer is gone, callers close their own.
        let fd = open(&path);
        drop(c);
        let late = Closer {
            shared: Arc::new(Shared::default()),
        };
        late.shared.stop.store(true, Ordering::Relaxed);
        late.close_later(fd);
        assert_eq!(fds_naming(&path), 0);
    }
}
