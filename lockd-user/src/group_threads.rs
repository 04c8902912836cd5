//! A thread of its own for each service group that has server IDs.
//!
//! The daemon serves NLM and NSM on one runtime worker, chosen for the tail latency of
//! steady traffic (see `lockfs serve`). A group coming online after a failover brings a
//! burst with it: its SM_NOTIFY round, and every client reconnecting and reclaiming its
//! locks, thousands of calls in a second or two. On the shared worker every other group's
//! calls waited behind that burst, which is exactly the disturbance per-group failover is
//! meant to spare them. So a group with server IDs gets a runtime of its own (one worker,
//! created the first time it is needed, kept until the daemon ends): the TCP connections
//! made to its server IDs, the UDP sockets bound to them and its notification rounds run
//! there, and the kernel shares the CPUs between the groups' threads. The lock table stays
//! one; its lock is held for microseconds per call.
//!
//! What stays on the daemon's worker: connections to the node's own addresses (groups
//! without server IDs), UDP sockets bound to a wildcard address, callbacks (GRANTED) and
//! the grace timers.

use crate::server::Placement;
use lock_table::ScopeId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use tokio::runtime::{Handle, Runtime};
use tracing::warn;

/// The runtimes of the groups with server IDs, by group, and which group each server ID
/// address belongs to.
pub struct GroupThreads {
    by_addr: HashMap<IpAddr, ScopeId>,
    runtimes: Mutex<HashMap<ScopeId, Runtime>>,
}

impl GroupThreads {
    /// `server_ids`: each group's (name, address) pairs; groups without any get no thread.
    pub fn new(server_ids: &HashMap<ScopeId, Vec<(String, IpAddr)>>) -> Self {
        let by_addr = server_ids
            .iter()
            .flat_map(|(s, ids)| ids.iter().map(move |(_, a)| (a.to_canonical(), *s)))
            .collect();
        Self {
            by_addr,
            runtimes: Mutex::new(HashMap::new()),
        }
    }

    /// The group whose server ID `addr` is.
    pub fn group_at(&self, addr: IpAddr) -> Option<ScopeId> {
        self.by_addr.get(&addr.to_canonical()).copied()
    }

    /// The runtime of `scope`, started now if it is not running yet; `None` for a group
    /// without server IDs (its work stays where it is), or if no thread could be started
    /// (logged; the work then stays on the caller's runtime, as before groups had threads).
    pub fn handle(&self, scope: ScopeId) -> Option<Handle> {
        if !self.by_addr.values().any(|s| *s == scope) {
            return None;
        }
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = runtimes.get(&scope) {
            return Some(rt.handle().clone());
        }
        // Multi-thread with one worker, as the daemon's own runtime: a durable write can
        // then step off the worker (`block_in_place`) without stalling the group's
        // other connections.
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("lockfs-group-{}", scope.0))
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let h = rt.handle().clone();
                runtimes.insert(scope, rt);
                Some(h)
            }
            Err(e) => {
                warn!(group = scope.0, error = %e, "cannot start the group's thread; its calls share the daemon's");
                None
            }
        }
    }
}

impl Placement for GroupThreads {
    fn place(&self, local: SocketAddr) -> Option<(u64, Handle)> {
        let scope = self.group_at(local.ip())?;
        self.handle(scope).map(|h| (u64::from(scope.0), h))
    }
}

impl Drop for GroupThreads {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which is not allowed from inside another
        // runtime (where the daemon's last reference usually goes): let them end on their own.
        let runtimes = std::mem::take(self.runtimes.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (_, rt) in runtimes {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for GroupThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupThreads")
            .field("addresses", &self.by_addr.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_id_addresses_map_to_their_groups_runtime() {
        let mut ids = HashMap::new();
        ids.insert(
            ScopeId(1),
            vec![("g1".to_string(), "10.0.0.1".parse().unwrap())],
        );
        ids.insert(
            ScopeId(2),
            vec![("g2".to_string(), "10.0.0.2".parse().unwrap())],
        );
        ids.insert(ScopeId(3), Vec::new());
        let t = GroupThreads::new(&ids);
        let at = |a: &str| SocketAddr::new(a.parse().unwrap(), 4045);
        let (k1, h1) = t.place(at("10.0.0.1")).expect("g1 placed");
        let (k1b, h1b) = t.place(at("::ffff:10.0.0.1")).expect("mapped form placed");
        let (k2, h2) = t.place(at("10.0.0.2")).expect("g2 placed");
        assert_eq!((k1, k1b, k2), (1, 1, 2));
        assert_eq!(h1.id(), h1b.id(), "one runtime per group, reused");
        assert_ne!(h1.id(), h2.id(), "each group its own runtime");
        assert!(
            t.place(at("10.0.0.3")).is_none(),
            "the node's own address stays put"
        );
        assert!(t.handle(ScopeId(3)).is_none(), "no server IDs, no thread");
        // The runtime really runs work on a thread named for its group.
        let name = h2
            .block_on(async {
                tokio::spawn(async { std::thread::current().name().map(String::from) }).await
            })
            .unwrap();
        assert_eq!(name.as_deref(), Some("lockfs-group-2"));
        drop(t);
    }
}
