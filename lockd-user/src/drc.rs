//! Duplicate request cache for datagram transports.
//!
//! UDP clients retransmit when a reply is late or lost. NLM procedures are not idempotent
//! (a retransmitted LOCK after an UNLOCK, or a second CANCEL, would change the table), so a
//! retransmission must get the original reply bytes instead of running the handler again.
//! A request is identified by client address, xid, program, version, procedure, the length
//! of its arguments and a hash of their first [`HASHED_ARGS`] bytes (so an xid reused for
//! different arguments is a new request). While the original is still being served,
//! duplicates are dropped: the client will retry. The cache holds at most `capacity`
//! entries, evicting the least recently used, and forgets entries older than `ttl`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many leading argument bytes identify a request with its length. They hold every
/// field of an NLM or NFS call but a WRITE's data, of which they hold the first few hundred
/// bytes: a client reusing an xid changes far more than data deep inside a WRITE, and
/// hashing a whole megabyte cost more than the write itself (the Linux server checksums a
/// prefix for the same reason).
pub const HASHED_ARGS: usize = 1024;

/// Identity of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrcKey {
    pub peer: SocketAddr,
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub args_len: usize,
    pub args_hash: u64,
    /// A keyed hash of all the fields above, made once with the key: the cache's map
    /// hashes a key two or three times per request, and hashing every field each time
    /// with SipHash showed in the profile of every non-idempotent NFS call.
    fingerprint: u64,
}

impl std::hash::Hash for DrcKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

/// The map's hasher: the keys arrive hashed already ([`DrcKey::fingerprint`]).
#[derive(Default)]
struct Fingerprint(u64);

impl std::hash::Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes, if slowly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type FingerprintMap<V> = HashMap<DrcKey, V, std::hash::BuildHasherDefault<Fingerprint>>;

/// What the cache knows about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrcLookup {
    /// Not seen (or forgotten): the caller now owns it and must call `complete` or `abandon`.
    New,
    /// The original is still being served: drop this copy.
    InProgress,
    /// Already served: resend these bytes, or nothing when the original had no reply.
    Replay(Option<Arc<[u8]>>),
}

#[derive(Debug)]
enum State {
    InProgress,
    Done(Option<Arc<[u8]>>),
}

#[derive(Debug)]
struct Entry {
    state: State,
    stamp: u64,
    born: Instant,
}

#[derive(Debug)]
struct Inner {
    map: FingerprintMap<Entry>,
    // Use order; an element whose stamp no longer matches its entry is stale and skipped.
    order: VecDeque<(u64, DrcKey)>,
    next_stamp: u64,
}

/// A bounded duplicate request cache, safe to share between tasks.
#[derive(Debug)]
pub struct DuplicateCache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
    hasher: RandomState,
}

impl DuplicateCache {
    /// A cache of at most `capacity` requests (at least one), each remembered for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: FingerprintMap::default(),
                order: VecDeque::new(),
                next_stamp: 0,
            }),
            capacity: capacity.max(1),
            ttl,
            // Randomly keyed so a client cannot craft argument collisions offline.
            hasher: RandomState::new(),
        }
    }

    /// Builds the key for a request from its header fields and raw argument bytes (their
    /// length, and a hash of their first [`HASHED_ARGS`] bytes).
    pub fn key(
        &self,
        peer: SocketAddr,
        xid: u32,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> DrcKey {
        let args_hash = self.hasher.hash_one(&args[..args.len().min(HASHED_ARGS)]);
        let fingerprint =
            self.hasher
                .hash_one((peer, xid, prog, vers, proc_, args.len(), args_hash));
        DrcKey {
            peer,
            xid,
            prog,
            vers,
            proc_,
            args_len: args.len(),
            args_hash,
            fingerprint,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map inconsistent in a way that matters here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a request up, registering it as in progress when it is new.
    pub fn begin(&self, key: &DrcKey) -> DrcLookup {
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        inner.next_stamp += 1;
        let stamp = inner.next_stamp;
        if let Some(e) = inner.map.get_mut(key) {
            if now.duration_since(e.born) <= self.ttl {
                let found = match &e.state {
                    State::InProgress => DrcLookup::InProgress,
                    State::Done(r) => DrcLookup::Replay(r.clone()),
                };
                e.stamp = stamp;
                inner.order.push_back((stamp, key.clone()));
                self.compact(inner);
                return found;
            }
            inner.map.remove(key);
        }
        while inner.map.len() >= self.capacity {
            if !self.evict_one(inner) {
                break;
            }
        }
        inner.map.insert(
            key.clone(),
            Entry {
                state: State::InProgress,
                stamp,
                born: now,
            },
        );
        inner.order.push_back((stamp, key.clone()));
        self.compact(inner);
        DrcLookup::New
    }

    /// Records the reply sent for a request (`None` when the procedure sends no reply).
    pub fn complete(&self, key: &DrcKey, reply: Option<Arc<[u8]>>) {
        if let Some(e) = self.lock().map.get_mut(key) {
            e.state = State::Done(reply);
        }
    }

    /// Forgets a request whose handling failed in a way a retransmission may fix.
    pub fn abandon(&self, key: &DrcKey) {
        self.lock().map.remove(key);
    }

    /// Number of remembered requests.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict_one(&self, inner: &mut Inner) -> bool {
        while let Some((stamp, key)) = inner.order.pop_front() {
            if inner.map.get(&key).is_some_and(|e| e.stamp == stamp) {
                inner.map.remove(&key);
                return true;
            }
        }
        false
    }

    fn compact(&self, inner: &mut Inner) {
        if inner.order.len() > 2 * self.capacity + 16 {
            let map = &inner.map;
            inner
                .order
                .retain(|(stamp, key)| map.get(key).is_some_and(|e| e.stamp == *stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn lifecycle() {
        let c = DuplicateCache::new(8, Duration::from_secs(60));
        let k = c.key(peer(1), 42, 100021, 4, 2, b"args");
        assert_eq!(c.begin(&k), DrcLookup::New);
        assert_eq!(c.begin(&k), DrcLookup::InProgress);
        let reply: Arc<[u8]> = Arc::from(&b"reply"[..]);
        c.complete(&k, Some(reply.clone()));
        assert_eq!(c.begin(&k), DrcLookup::Replay(Some(reply)));
        // Same xid, other arguments, other peer, other proc: all new requests.
        assert_eq!(
            c.begin(&c.key(peer(1), 42, 100021, 4, 2, b"argz")),
            DrcLookup::New
        );
        assert_eq!(
            c.begin(&c.key(peer(2), 42, 100021, 4, 2, b"args")),
            DrcLookup::New
        );
        assert_eq!(
            c.begin(&c.key(peer(1), 42, 100021, 4, 3, b"args")),
            DrcLookup::New
        );
        let silent = c.key(peer(1), 43, 100021, 4, 7, b"msg");
        assert_eq!(c.begin(&silent), DrcLookup::New);
        c.complete(&silent, None);
        assert_eq!(c.begin(&silent), DrcLookup::Replay(None));
        let failed = c.key(peer(1), 44, 100021, 4, 2, b"x");
        assert_eq!(c.begin(&failed), DrcLookup::New);
        c.abandon(&failed);
        assert_eq!(c.begin(&failed), DrcLookup::New);
    }

    #[test]
    fn bounded_with_lru_eviction() {
        let c = DuplicateCache::new(3, Duration::from_secs(60));
        let keys: Vec<_> = (0..4).map(|x| c.key(peer(1), x, 1, 1, 1, b"")).collect();
        for k in &keys[..3] {
            assert_eq!(c.begin(k), DrcLookup::New);
            c.complete(k, None);
        }
        // Touch key 0 so key 1 is the least recently used.
        assert_eq!(c.begin(&keys[0]), DrcLookup::Replay(None));
        assert_eq!(c.begin(&keys[3]), DrcLookup::New);
        assert_eq!(c.len(), 3);
        assert_eq!(c.begin(&keys[0]), DrcLookup::Replay(None));
        assert_eq!(c.begin(&keys[1]), DrcLookup::New, "key 1 was evicted");
        for i in 0..1000 {
            let k = c.key(peer(1), 1000 + i, 1, 1, 1, b"");
            c.begin(&k);
            c.begin(&k);
        }
        assert_eq!(c.len(), 3);
        assert!(c.lock().order.len() <= 2 * 3 + 16 + 1);
    }

    #[test]
    fn entries_expire() {
        let c = DuplicateCache::new(3, Duration::from_millis(0));
        let k = c.key(peer(1), 1, 1, 1, 1, b"");
        assert_eq!(c.begin(&k), DrcLookup::New);
        c.complete(&k, None);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.begin(&k), DrcLookup::New);
    }
}
