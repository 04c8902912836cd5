//! Replies parked until something else decides them.
//!
//! A request loop must never sit waiting for a lock: with a few loops, a few blocked
//! `F_SETLKW` callers would stall the whole mount. Instead a handler parks its
//! reply object here under the request's unique id and returns at once; whoever
//! decides later (a lock grant from the table's notifier, a cancel, an interrupt or a
//! watchdog noticing a signal, or unmount) takes the reply out by id and answers it
//! from its own thread. fuser's reply objects are `Send + 'static`, and a reply that
//! is dropped unanswered reaches the caller as `EIO`.

use std::sync::Mutex;

use fuser::Errno;
use rustc_hash::FxHashMap;

/// A reply that can be answered with an error.
pub trait FailReply: Send + 'static {
    /// Answers the request with `errno`.
    fn fail(self, errno: Errno);
}

macro_rules! fail_reply {
    ($($t:ty),*) => {$(
        impl FailReply for $t {
            fn fail(self, errno: Errno) {
                self.error(errno);
            }
        }
    )*};
}
fail_reply!(
    fuser::ReplyEmpty,
    fuser::ReplyLock,
    fuser::ReplyOpen,
    fuser::ReplyWrite,
    fuser::ReplyData,
    fuser::ReplyAttr
);

/// Parked replies keyed by the kernel's unique request id.
#[derive(Debug)]
pub struct Deferred<R> {
    parked: Mutex<FxHashMap<u64, R>>,
}

impl<R> Default for Deferred<R> {
    fn default() -> Self {
        Deferred {
            parked: Mutex::default(),
        }
    }
}

impl<R: FailReply> Deferred<R> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parks `reply` under request id `unique`.
    ///
    /// The kernel never has two live requests with one id, so a clash means a
    /// bookkeeping bug: the older reply is answered `EIO` rather than lost silently.
    pub fn park(&self, unique: u64, reply: R) {
        let old = self
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(unique, reply);
        if let Some(old) = old {
            tracing::error!(unique, "two parked replies for one request id");
            old.fail(Errno::EIO);
        }
    }

    /// Takes the reply parked under `unique`, if it is still waiting.
    ///
    /// Exactly one caller gets it, so a grant racing with an interrupt answers once.
    pub fn take(&self, unique: u64) -> Option<R> {
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&unique)
    }

    /// Answers every parked reply with `errno` (used at unmount).
    pub fn fail_all(&self, errno: Errno) -> usize {
        let all: Vec<R> = self
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        let n = all.len();
        for r in all {
            r.fail(errno);
        }
        n
    }

    /// Number of parked replies.
    pub fn len(&self) -> usize {
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;

    struct Probe(mpsc::Sender<Result<(), Errno>>);
    impl FailReply for Probe {
        fn fail(self, errno: Errno) {
            let _ = self.0.send(Err(errno));
        }
    }
    impl Probe {
        fn ok(self) {
            let _ = self.0.send(Ok(()));
        }
    }

    #[test]
    fn a_parked_reply_is_answered_once_from_another_thread() {
        let d = Arc::new(Deferred::new());
        let (tx, rx) = mpsc::channel();
        d.park(7, Probe(tx));
        assert_eq!(d.len(), 1);
        let d2 = d.clone();
        std::thread::spawn(move || d2.take(7).expect("parked").ok())
            .join()
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Ok(()));
        assert!(d.take(7).is_none(), "a second taker gets nothing");
        assert!(d.is_empty());
    }

    #[test]
    fn fail_all_answers_every_waiter_and_clash_fails_the_older() {
        let d = Deferred::new();
        let (tx, rx) = mpsc::channel();
        d.park(1, Probe(tx.clone()));
        d.park(1, Probe(tx.clone()));
        assert_eq!(rx.try_recv().unwrap(), Err(Errno::EIO));
        d.park(2, Probe(tx));
        assert_eq!(d.fail_all(Errno::EINTR), 2);
        assert_eq!(rx.recv().unwrap(), Err(Errno::EINTR));
        assert_eq!(rx.recv().unwrap(), Err(Errno::EINTR));
        assert!(d.is_empty());
    }
}
