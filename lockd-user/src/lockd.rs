//! The state lockd's NLM and NSM programs share: the lock table and share table handed in by
//! the daemon, the exports, file handles, the status monitor's durable store, the limits, and
//! the queue of callback work. Releasing everything a host holds lives here too, since a
//! reboot notification, FREE_ALL, an administrator and the unreachable-host policy all do it.

use crate::callbacks::{CallbackJob, Pending};
use crate::exports::Exports;
use crate::fh::FileHandles;
use crate::nsm::store::{NsmStore, StoreLimits};
use crate::proto::nlm::v4;
use lock_table::{Event, OwnerKind, Release, Released, ScopeId, SharedTable};
use share_reservations::ShareTable;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Limits on what remote clients may hold; beyond them requests get DENIED_NOLOCKS.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Distinct NLM lock owners (client processes) one host may have.
    pub max_owners_per_host: usize,
    /// Locks one host may hold, counted as lock-table segments
    /// ([`lock_table::LockTable::host_segments`]).
    pub max_locks_per_host: u64,
    /// Blocked requests queued in the whole table (local ones included) before NLM blocking
    /// requests are refused.
    pub max_waiters: usize,
    /// Caps on the client lists and SM_MON registrations.
    pub store: StoreLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_owners_per_host: 4096,
            max_locks_per_host: 1 << 20,
            max_waiters: 65_536,
            store: StoreLimits::default(),
        }
    }
}

/// Default of [`CallbackPolicy::group_notify_per_second`].
pub const GROUP_NOTIFY_PER_SECOND: u32 = 600;

/// Timing of callbacks and notifications.
#[derive(Debug, Clone)]
pub struct CallbackPolicy {
    /// Port of the clients' portmappers, where their NLM and status services are looked up.
    /// 111 everywhere but in tests that run several clients on one machine.
    pub client_portmap_port: u16,
    /// How long one callback attempt (lookup and call) may take.
    pub attempt_timeout: Duration,
    /// First retry delay; doubled after every failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// SM_NOTIFY to a client is abandoned after this long.
    pub notify_give_up: Duration,
    /// Clients a restart's SM_NOTIFY round starts per second.
    pub notify_per_second: u32,
    /// Clients a group's SM_NOTIFY starts per second when it comes online (all its server
    /// IDs together). Only that group is in grace, and its clients' reclaims are all the
    /// group can grant until they are in, so it is paced on its own.
    pub group_notify_per_second: u32,
    /// SM_NOTIFY requests (portmapper lookups included) awaiting a reply at once.
    pub notify_in_flight: usize,
    /// Opt-in: release everything a host holds once its callbacks have failed this long,
    /// or, while another request wants its locks, it has not answered for this long.
    pub release_unreachable_after: Option<Duration>,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        Self {
            client_portmap_port: crate::portmap::PMAP_PORT,
            attempt_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            notify_give_up: Duration::from_secs(3600),
            notify_per_second: 500,
            group_notify_per_second: GROUP_NOTIFY_PER_SECOND,
            notify_in_flight: 1024,
            release_unreachable_after: None,
        }
    }
}

/// Forwards the lock table's events for NLM owners to lockd. Create it before the table, so
/// the table's notifier can hold a clone; hand it to the service when it starts.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<CallbackJob>,
}

/// The receiving end of an [`EventSink`], consumed by the service.
#[derive(Debug)]
pub struct EventQueue {
    pub(crate) tx: mpsc::UnboundedSender<CallbackJob>,
    pub(crate) rx: mpsc::UnboundedReceiver<CallbackJob>,
}

impl EventSink {
    /// A sink and the queue the service will read.
    pub fn new() -> (Self, EventQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx: tx.clone() }, EventQueue { tx, rx })
    }

    /// Queues an event of the lock table; cheap and non-blocking, so it may be called from
    /// the table's notifier. lockd parks its own blocked requests in the table's waiter
    /// registry, whose continuations queue their callbacks directly; the notifier only
    /// sees events of requests queued without the registry, and of those this forwards
    /// the ones of NLM lock owners (a GRANTED for a token lockd does not know is not sent).
    pub fn on_table_event(&self, ev: Event) {
        let job = match ev {
            Event::Granted { owner, token, .. } if owner.kind == OwnerKind::Nlm => {
                CallbackJob::Granted { token }
            }
            Event::Dropped { owner, token, .. } if owner.kind == OwnerKind::Nlm => {
                CallbackJob::Dropped { token }
            }
            _ => return,
        };
        // A closed queue means the service stopped; there is nobody left to call back.
        let _ = self.tx.send(job);
    }
}

/// Everything lockd's programs share.
pub struct Lockd {
    pub(crate) name: String,
    pub(crate) table: Arc<SharedTable>,
    pub(crate) shares: Arc<Mutex<ShareTable>>,
    pub(crate) exports: Exports,
    pub(crate) fhs: FileHandles,
    pub(crate) store: NsmStore,
    pub(crate) limits: Limits,
    pub(crate) policy: CallbackPolicy,
    pub(crate) jobs: mpsc::UnboundedSender<CallbackJob>,
    /// What a GRANTED callback needs of each blocked request, under the token the table's
    /// waiter registry gave it; kept from the LOCK until the client answers the callback
    /// (or the request is cancelled, dropped or its host released).
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    /// GRANTED_MSG callbacks waiting for the client's GRANTED_RES, by token.
    pub(crate) grant_replies: Mutex<HashMap<u64, oneshot::Sender<v4::Stats>>>,
    pub(crate) grace_len: Duration,
    /// Per-group grace lengths that differ from `grace_len`.
    pub(crate) group_grace: HashMap<ScopeId, Duration>,
    /// Bumped at each grace start of a group, so an older timer does not end a newer grace.
    pub(crate) grace_gen: Mutex<HashMap<ScopeId, u64>>,
    /// Holders others met, for the unreachable policy (see [`crate::liveness`]).
    pub(crate) contention: crate::liveness::Contention,
    /// Groups this node does not serve now: requests for their exports are refused with
    /// DENIED_GRACE_PERIOD, which clients retry, as they would a server that is starting.
    pub(crate) offline: Mutex<std::collections::HashSet<ScopeId>>,
    /// Storage directories of the groups that move between nodes.
    pub(crate) group_storage: HashMap<ScopeId, std::path::PathBuf>,
    /// Server IDs (name, address) of the groups that have them.
    pub(crate) server_ids: HashMap<ScopeId, Vec<(String, IpAddr)>>,
    /// Leases of the groups with storage served here, with their state numbers.
    pub(crate) leases: Mutex<HashMap<ScopeId, (crate::group_state::Lease, i32)>>,
    /// The threads on which the groups with server IDs are served.
    pub(crate) threads: Arc<crate::group_threads::GroupThreads>,
    /// The NFS door's cache of open descriptors, once NFS is served: a group going
    /// offline closes those of its exports, or its storage could not be unmounted.
    pub(crate) nfs_files: std::sync::OnceLock<Arc<crate::nfs3::backing::Backing>>,
}

impl std::fmt::Debug for Lockd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockd")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What releasing a host removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostReleased {
    /// Lock presences (owner, file) and queued requests.
    pub locks: Released,
    pub shares: usize,
    /// Whether the host was on any group's client list.
    pub was_monitored: bool,
}

impl Lockd {
    pub(crate) fn shares(&self) -> MutexGuard<'_, ShareTable> {
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn grant_replies(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<v4::Stats>>> {
        self.grant_replies.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn grace_gen(&self) -> MutexGuard<'_, HashMap<ScopeId, u64>> {
        self.grace_gen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the group `scope` is offline on this node.
    pub fn is_offline(&self, scope: ScopeId) -> bool {
        self.offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&scope)
    }

    /// Closes the NFS door's cached descriptors of `scope`'s exports.
    pub(crate) fn forget_nfs_files(&self, scope: ScopeId) {
        if let Some(b) = self.nfs_files.get() {
            for e in self.exports.of_group(scope) {
                b.forget_export(e.export.id);
            }
        }
    }

    pub(crate) fn set_offline(&self, scope: ScopeId, offline: bool) {
        let mut o = self.offline.lock().unwrap_or_else(|e| e.into_inner());
        if offline {
            o.insert(scope);
        } else {
            o.remove(&scope);
        }
    }

    /// The state number of a group with storage served here (holding its lease).
    pub fn group_state(&self, scope: ScopeId) -> Option<i32> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&scope)
            .map(|(_, s)| *s)
    }

    /// This server's name, as sent in SM_NOTIFY.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current NSM state number.
    pub fn state(&self) -> i32 {
        self.store.state()
    }

    /// Releases every lock, queued request and share reservation of the host called `name`
    /// (its NLM `caller_name`), forgets its pending callbacks and drops it from every
    /// group's client list. Waiters of other hosts that were blocked by it are granted.
    pub fn release_host(&self, name: &str, how: Release) -> HostReleased {
        self.release_host_in(name, None, how)
    }

    /// [`Self::release_host`] limited to the groups `only` (every group when `None`): its
    /// locks, waiters and shares in other groups, and its place on their lists, stay.
    pub(crate) fn release_host_in(
        &self,
        name: &str,
        only: Option<&[ScopeId]>,
        how: Release,
    ) -> HostReleased {
        let locks = self
            .table
            .with(|t| match (t.registry().find_host(name), only) {
                (Some(h), None) => t.release_host(h, how),
                (Some(h), Some(scopes)) => t.release_host_in(h, scopes, how),
                (None, _) => Released::default(),
            });
        let host = self.table.read(|t| t.registry().find_host(name));
        let shares = match (host, only) {
            (Some(h), None) => self.shares().release_host(h),
            (Some(h), Some(scopes)) => self.shares().release_host_in(h, scopes),
            (None, _) => 0,
        };
        // Pending callbacks carry no group: a partial release leaves them, and the table's
        // Dropped events remove those of the waiters it released.
        if only.is_none() {
            self.pending().retain(|_, p| p.host != name);
        }
        let was_monitored = match off_the_workers(|| self.store.remove_client_from(name, only)) {
            Ok(groups) => !groups.is_empty(),
            Err(e) => {
                warn!(client = name, error = %e, "cannot update client lists");
                true
            }
        };
        info!(
            client = name,
            files = locks.files,
            waiters = locks.waiters,
            shares,
            "released host"
        );
        HostReleased {
            locks,
            shares,
            was_monitored,
        }
    }

    /// FREE_ALL from `from`: the host `name` says it rebooted. Refused (and logged) when the
    /// host is on a client list but `from` is not one of its addresses on record: only a
    /// host itself may end its locks.
    pub(crate) fn free_all(&self, name: &str, from: IpAddr) -> Option<HostReleased> {
        if let Some((_, addrs)) = self.store.record(name) {
            if !addrs.contains(&from) {
                warn!(client = name, %from, on_record = ?addrs, "FREE_ALL from an address not on record for that host; refused, nothing released");
                return None;
            }
        }
        Some(self.release_host(name, Release::Normal))
    }

    /// The paths under their exports' roots of files clients named by handle lately (see
    /// [`crate::fh::FileHandles::source_paths`]), for the lock listing.
    pub fn source_paths_of(
        &self,
        files: &[lock_table::FileId],
    ) -> std::collections::HashMap<lock_table::FileId, std::path::PathBuf> {
        self.fhs.source_paths(&self.exports, files)
    }

    /// The administrative remedy for a partitioned client (`lockfs clear --host NAME`): what
    /// a reboot notification from it would do. Lock value blocks treat it as abnormal.
    pub fn clear_host(&self, name: &str) -> HostReleased {
        self.release_host(name, Release::Abnormal)
    }
}

/// Runs `f`, a durable write (fsync), without holding up the runtime's other tasks.
///
/// The RPC server runs on one runtime worker (`lockfs serve`); an fsync on it would stall
/// every connection until the disk answers, tenths of a millisecond here and milliseconds
/// on a real disk. On a multi-thread runtime the worker hands its queue to another thread
/// meanwhile; the calling connection still waits, so its requests stay in order.
pub(crate) fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
