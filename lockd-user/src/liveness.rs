//! The unreachable-host policy for hosts that only hold locks.
//!
//! `release_unreachable_after` releases a host whose callbacks have failed for that
//! long (see [`crate::callbacks`]). A client cut off by a partition while it merely
//! holds a lock gets no callback, so that path alone would never notice it, while
//! another client is refused the range for as long as the partition lasts. This module
//! closes the gap: a host whose lock another request has met recently (a DENIED LOCK
//! or TEST, or a queued waiter of any door) is probed through its portmapper, and once
//! every probe has failed for the configured time, the host is released, abnormally,
//! exactly as a failed callback would release it.
//!
//! Only contended holders are probed: a partitioned client whose locks nobody wants
//! keeps them, and learns nothing was lost when it returns. A host counts as
//! reachable while its portmapper answers, whatever it says about the NLM program.

use crate::lockd::Lockd;
use crate::portmap::{Mapping, RpcbindClient};
use crate::proto::nlm::{NLM4_VERS, NLM_PROG};
use crate::server::Transport;
use lock_table::HostId;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Holders whose locks others have met, with when that last happened.
#[derive(Debug, Default)]
pub(crate) struct Contention {
    met: Mutex<HashMap<HostId, Instant>>,
}

impl Contention {
    /// Another request was refused or queued because `host` holds a lock.
    pub(crate) fn note(&self, host: HostId) {
        let mut m = self.met.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(host, Instant::now());
    }

    /// Hosts met within `window`; older entries are forgotten.
    fn recent(&self, window: Duration) -> Vec<HostId> {
        let mut m = self.met.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, t| t.elapsed() <= window);
        m.keys().copied().collect()
    }
}

/// How often contended holders are probed for a given release limit.
fn period(limit: Duration) -> Duration {
    (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Whether the host at `addr` answers at all: its portmapper replies to a lookup.
async fn answers(addr: IpAddr, port: u16, timeout: Duration) -> bool {
    let r = async {
        let pm = RpcbindClient::new(SocketAddr::new(addr, port), timeout)
            .await
            .ok()?;
        pm.pmap_getport(&Mapping {
            prog: NLM_PROG,
            vers: NLM4_VERS,
            prot: Transport::Udp.ipproto(),
            port: 0,
        })
        .await
        .ok()
    };
    matches!(tokio::time::timeout(timeout, r).await, Ok(Some(_)))
}

/// Whether any address on record for `name` answers.
async fn reachable(addrs: Vec<IpAddr>, port: u16, timeout: Duration) -> bool {
    for a in addrs {
        if answers(a, port, timeout).await {
            return true;
        }
    }
    false
}

/// Probes contended holders until the service stops; releases those unreachable for
/// `limit`.
pub(crate) async fn run(lockd: Arc<Lockd>, limit: Duration) {
    let every = period(limit);
    let mut failing: HashMap<HostId, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let mut hosts: HashSet<HostId> = lockd.contention.recent(limit * 2).into_iter().collect();
        hosts.extend(lockd.table.read(|t| t.hosts_blocking_waiters()));
        // Only hosts that still hold something; names come from the table's registry.
        let named: Vec<(HostId, String)> = lockd.table.read(|t| {
            hosts
                .iter()
                .filter(|h| t.host_segments(**h) > 0)
                .filter_map(|h| Some((*h, t.registry().host_name(*h)?.to_string())))
                .collect()
        });
        failing.retain(|h, _| named.iter().any(|(n, _)| n == h));
        let mut probes = JoinSet::new();
        for (id, name) in named {
            let Some((_, addrs)) = lockd.store.record(&name) else {
                // Not on any client list (NM_LOCK only): no address to probe.
                continue;
            };
            let port = lockd.policy.client_portmap_port;
            let timeout = lockd
                .policy
                .attempt_timeout
                .min(every.max(Duration::from_millis(500)));
            probes.spawn(async move { (id, name, reachable(addrs, port, timeout).await) });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((id, name, up)) = done else { continue };
            if up {
                if failing.remove(&id).is_some() {
                    info!(client = %name, "contended holder answers again");
                }
                continue;
            }
            let since = *failing.entry(id).or_insert_with(|| {
                debug!(client = %name, "contended holder does not answer");
                Instant::now()
            });
            if since.elapsed() >= limit {
                warn!(client = %name, unreachable_for = ?since.elapsed(), "a holder others wait for is unreachable beyond the configured limit; releasing the host");
                lockd.clear_host(&name);
                failing.remove(&id);
            }
        }
    }
}
