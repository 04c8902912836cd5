//! Starting and stopping the whole lock service: NLM and NSM on UDP and TCP, registration
//! with rpcbind or a built-in portmapper, grace and notifications, the callback worker.
//!
//! The daemon owns the lock table and the share table and hands them in. lockd parks its
//! blocked requests in the table's waiter registry, which wakes them itself; the table's
//! notifier gets the events of requests queued without the registry, and the daemon lets it
//! forward those to an [`EventSink`](crate::lockd::EventSink) created first:
//!
//! ```no_run
//! use lock_table::SharedTable;
//! use lockd_user::service::{LockdConfig, LockdService};
//! use lockd_user::EventSink;
//! use share_reservations::ShareTable;
//! use std::sync::{Arc, Mutex};
//!
//! # async fn run(config: LockdConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let (sink, queue) = EventSink::new();
//! let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
//! let shares = Arc::new(Mutex::new(ShareTable::new()));
//! let service = LockdService::start(config, table, shares, queue).await?;
//! // ... run until told to stop ...
//! service.shutdown().await;
//! # Ok(())
//! # }
//! ```

use crate::exports::{Export, ExportError, Exports};
use crate::fh::{FhKey, FileHandles};
use crate::lockd::{CallbackPolicy, EventQueue, HostReleased, Limits, Lockd};
use crate::nlm::NlmProgram;
use crate::nsm::store::NsmStore;
use crate::nsm::NsmProgram;
use crate::portmap::{self, Portmapper, PMAP_PORT};
use crate::proto::nlm::{NLM4_VERS, NLM_PROG, NLM_VERS, NLM_VERSX};
use crate::proto::nsm::{SM_PROG, SM_VERS};
use crate::server::{RpcServer, ServerConfig, ServerError, Transport};
use lock_table::{ScopeId, SharedTable};
use share_reservations::ShareTable;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How clients find the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortmapMode {
    /// Register with the rpcbind on 127.0.0.1:111 when one answers; otherwise serve the
    /// built-in portmapper on port 111 of every listen address.
    Auto,
    /// Serve the built-in portmapper on these addresses (UDP and TCP), whatever else runs.
    Builtin(Vec<SocketAddr>),
    /// Neither register nor serve a portmapper (tests that know the ports).
    Off,
}

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct LockdConfig {
    /// This server's name, sent in SM_NOTIFY as `mon_name`; clients know the server by it.
    pub node_name: String,
    /// Where the NSM state, client lists, monitors and file handle key live.
    pub state_dir: PathBuf,
    pub exports: Vec<Export>,
    /// Length of each group's grace period after a restart (zero: none).
    pub grace: Duration,
    /// Groups whose grace period has another length than `grace`.
    pub group_grace: HashMap<ScopeId, Duration>,
    /// Groups not served at start (another node may be serving them): no grace, no
    /// notifications, their exports' requests refused until [`LockdService::group_online`].
    /// Their export roots may be absent until then.
    pub offline: Vec<ScopeId>,
    /// Groups that move between nodes, and the directory on each one's storage where its
    /// client list, state number, handle key and clean-offline record are kept
    /// ([`crate::group_state`]).
    pub group_storage: HashMap<ScopeId, PathBuf>,
    /// The names and addresses clients reach a group by: its SM_NOTIFY go out once per
    /// server ID, naming it, from its address when that is on this node.
    pub group_server_ids: HashMap<ScopeId, Vec<(String, IpAddr)>>,
    pub limits: Limits,
    pub callbacks: CallbackPolicy,
    /// NLM and NSM listen addresses (port 0 picks one).
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub portmap: PortmapMode,
    /// Transport limits (TCP connections, record size, duplicate request cache).
    pub server: ServerConfig,
}

impl LockdConfig {
    /// Loopback only, ephemeral ports, rpcbind or the built-in portmapper, 90 s grace.
    pub fn new(node_name: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        let lo = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
        Self {
            node_name: node_name.into(),
            state_dir: state_dir.into(),
            exports: Vec::new(),
            grace: Duration::from_secs(90),
            group_grace: HashMap::new(),
            offline: Vec::new(),
            group_storage: HashMap::new(),
            group_server_ids: HashMap::new(),
            limits: Limits::default(),
            callbacks: CallbackPolicy::default(),
            udp: vec![lo],
            tcp: vec![lo],
            portmap: PortmapMode::Auto,
            server: ServerConfig::default(),
        }
    }
}

/// A group as this node serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStatus {
    pub online: bool,
    pub in_grace: bool,
    /// Clients on its list.
    pub clients: usize,
    /// The state number its notifications carry: its own for a group with storage.
    pub state: i32,
}

/// What the lock agent reports of a group on this node.
pub fn group_status(l: &Lockd, scope: ScopeId) -> GroupStatus {
    GroupStatus {
        online: !l.is_offline(scope),
        in_grace: l.table.read(|t| t.in_grace(scope)),
        clients: l.store.client_count(scope),
        state: l.group_state(scope).unwrap_or_else(|| l.state()),
    }
}

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exports(#[from] ExportError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// The running service.
pub struct LockdService {
    lockd: Arc<Lockd>,
    server: RpcServer,
    portmapper: Option<RpcServer>,
    /// The built-in portmapper's table, for other programs of the daemon to register in.
    builtin: Option<Arc<Portmapper>>,
    registered: bool,
    worker: JoinHandle<()>,
    /// Probes contended holders when the unreachable policy is on.
    liveness: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LockdService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockdService")
            .field("udp", &self.server.udp_addrs())
            .field("tcp", &self.server.tcp_addrs())
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

const PROGRAMS: [(u32, u32); 4] = [
    (NLM_PROG, NLM_VERS),
    (NLM_PROG, NLM_VERSX),
    (NLM_PROG, NLM4_VERS),
    (SM_PROG, SM_VERS),
];

impl LockdService {
    /// Opens the state, advances the state number, starts grace for every group, serves
    /// NLM and NSM, makes them findable, and sends SM_NOTIFY to every recorded client.
    pub async fn start(
        config: LockdConfig,
        table: Arc<SharedTable>,
        shares: Arc<Mutex<ShareTable>>,
        events: EventQueue,
    ) -> Result<Self, ServiceError> {
        let sd = |source| ServiceError::StateDir {
            path: config.state_dir.clone(),
            source,
        };
        let store = NsmStore::open(&config.state_dir)
            .map_err(sd)?
            .with_limits(config.limits.store.clone());
        let key = FhKey::load_or_create(&config.state_dir).map_err(sd)?;
        let exports = Exports::open_allowing_absent(config.exports.clone(), &config.offline)?;
        let state = store.advance().map_err(sd)?;
        let lockd = Arc::new(Lockd {
            name: config.node_name.clone(),
            table,
            shares,
            exports,
            fhs: FileHandles::new(key),
            store,
            limits: config.limits.clone(),
            policy: config.callbacks.clone(),
            jobs: events.tx,
            pending: Mutex::new(Default::default()),
            grant_replies: Mutex::new(Default::default()),
            grace_len: config.grace,
            group_grace: config.group_grace.clone(),
            grace_gen: Mutex::new(Default::default()),
            contention: Default::default(),
            offline: Mutex::new(config.offline.iter().copied().collect()),
            group_storage: config.group_storage.clone(),
            leases: Mutex::new(HashMap::new()),
            server_ids: config.group_server_ids.clone(),
            nfs_files: Default::default(),
            threads: Arc::new(crate::group_threads::GroupThreads::new(
                &config.group_server_ids,
            )),
        });
        // Groups online at start with storage of their own: their list, key and state
        // number come from it.
        let mut group_states = Vec::new();
        for (scope, _) in config
            .group_storage
            .iter()
            .filter(|(s, _)| !config.offline.contains(s))
        {
            let state = crate::recovery::attach_storage(&lockd, *scope).map_err(sd)?;
            group_states.push((*scope, state));
        }
        let worker = tokio::spawn(crate::callbacks::run(lockd.clone(), events.rx));
        let liveness = config
            .callbacks
            .release_unreachable_after
            .map(|limit| tokio::spawn(crate::liveness::run(lockd.clone(), limit)));
        let scopes: Vec<ScopeId> = crate::recovery::all_scopes(&lockd)
            .into_iter()
            .filter(|s| !config.offline.contains(s))
            .collect();
        for s in &scopes {
            crate::recovery::start_grace(&lockd, *s);
        }
        let mut b = RpcServer::builder(config.server.clone())
            .program(Arc::new(NlmProgram::new(lockd.clone())))
            .program(Arc::new(NsmProgram::new(lockd.clone())))
            .placement(lockd.threads.clone());
        for a in &config.udp {
            b = b.udp(*a);
        }
        for a in &config.tcp {
            b = b.tcp(*a);
        }
        let server = match b.start().await {
            Ok(s) => s,
            Err(e) => {
                worker.abort();
                if let Some(l) = &liveness {
                    l.abort();
                }
                return Err(e.into());
            }
        };
        info!(name = %config.node_name, state, udp = ?server.udp_addrs(), tcp = ?server.tcp_addrs(), "lockd serving");
        let mut svc = Self {
            lockd,
            server,
            portmapper: None,
            builtin: None,
            registered: false,
            worker,
            liveness,
        };
        svc.publish(&config).await;
        let local: Vec<ScopeId> = scopes
            .iter()
            .copied()
            .filter(|s| !config.group_storage.contains_key(s))
            .collect();
        crate::recovery::notify_clients(&svc.lockd, &local);
        for (scope, state) in group_states {
            crate::recovery::notify_group(
                &svc.lockd,
                scope,
                state,
                svc.lockd.policy.notify_per_second,
            );
        }
        Ok(svc)
    }

    async fn publish(&mut self, config: &LockdConfig) {
        let builtin_addrs = match &config.portmap {
            PortmapMode::Off => return,
            PortmapMode::Builtin(addrs) => addrs.clone(),
            PortmapMode::Auto => {
                if portmap::rpcbind_answers(portmap::local_rpcbind(), Duration::from_secs(1)).await
                {
                    self.registered = self.register().await;
                    return;
                }
                let mut ips: Vec<IpAddr> = config
                    .udp
                    .iter()
                    .chain(&config.tcp)
                    .map(|a| a.ip())
                    .collect();
                // Each address once: UDP and TCP list the same ones, and a second bind of
                // one would fail the whole portmapper.
                ips.sort();
                ips.dedup();
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, PMAP_PORT))
                    .collect()
            }
        };
        let pm = Arc::new(Portmapper::new());
        for (prog, vers) in PROGRAMS {
            for a in self.server.udp_addrs() {
                pm.set_local(prog, vers, Transport::Udp, *a);
            }
            for a in self.server.tcp_addrs() {
                pm.set_local(prog, vers, Transport::Tcp, *a);
            }
        }
        let mut b = RpcServer::builder(ServerConfig::default()).program(pm.clone());
        for a in &builtin_addrs {
            b = b.udp(*a).tcp(*a);
        }
        match b.start().await {
            Ok(s) => {
                pm.register_self(
                    s.udp_addrs().first().copied(),
                    s.tcp_addrs().first().copied(),
                );
                info!(addrs = ?s.udp_addrs(), "serving the built-in portmapper");
                self.portmapper = Some(s);
                self.builtin = Some(pm);
            }
            Err(e) => {
                warn!(error = %e, "cannot serve the built-in portmapper; clients must be told the ports")
            }
        }
    }

    async fn register(&self) -> bool {
        let rpcb = portmap::local_rpcbind();
        let t = Duration::from_secs(2);
        let mut ok = true;
        for (prog, vers) in PROGRAMS {
            // A stale registration from a previous run would make SET fail.
            let _ = portmap::unregister(rpcb, prog, vers, t).await;
            let addrs = self
                .server
                .udp_addrs()
                .first()
                .map(|a| (Transport::Udp, *a))
                .into_iter()
                .chain(
                    self.server
                        .tcp_addrs()
                        .first()
                        .map(|a| (Transport::Tcp, *a)),
                );
            for (tr, a) in addrs {
                if let Err(e) = portmap::register(rpcb, prog, vers, tr, a, t).await {
                    warn!(prog, vers, error = %e, "rpcbind registration failed");
                    ok = false;
                }
            }
        }
        if ok {
            info!("registered with rpcbind");
        }
        ok
    }

    /// The shared state, for the daemon's admin commands.
    pub fn lockd(&self) -> &Arc<Lockd> {
        &self.lockd
    }

    pub fn udp_addrs(&self) -> &[SocketAddr] {
        self.server.udp_addrs()
    }

    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        self.server.tcp_addrs()
    }

    /// Where the built-in portmapper listens, when it runs.
    pub fn portmapper_addrs(&self) -> Option<&[SocketAddr]> {
        self.portmapper.as_ref().map(|s| s.udp_addrs())
    }

    /// The built-in portmapper's table, when it runs (other programs register there).
    pub fn builtin_portmapper(&self) -> Option<Arc<Portmapper>> {
        self.builtin.clone()
    }

    /// Whether the programs were registered with the system's rpcbind.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// The current NSM state number.
    pub fn state(&self) -> i32 {
        self.lockd.state()
    }

    /// `lockfs clear --host NAME`.
    pub fn clear_host(&self, name: &str) -> HostReleased {
        self.lockd.clear_host(name)
    }

    /// What the lock agent reports of a group on this node.
    pub fn group_status(&self, scope: ScopeId) -> GroupStatus {
        group_status(&self.lockd, scope)
    }

    /// Whether a group's exports are refused on this node.
    pub fn is_offline(&self, scope: ScopeId) -> bool {
        self.lockd.is_offline(scope)
    }

    /// Takes a group offline (refuses its exports' requests, releases its locks and shares).
    pub fn group_offline(&self, scope: ScopeId) -> std::io::Result<()> {
        crate::recovery::group_offline(&self.lockd, scope)
    }

    /// Brings a group online (new state, grace for it alone, SM_NOTIFY to its clients).
    pub fn group_online(&self, scope: ScopeId) -> std::io::Result<i32> {
        crate::recovery::group_online(&self.lockd, scope)
    }

    /// Clean stop: unregisters from rpcbind, stops serving, and marks the state number even.
    pub async fn shutdown(self) {
        if self.registered {
            let t = Duration::from_secs(2);
            for (prog, vers) in PROGRAMS {
                let _ = portmap::unregister(portmap::local_rpcbind(), prog, vers, t).await;
            }
        }
        if let Some(pm) = self.portmapper {
            pm.shutdown().await;
        }
        self.server.shutdown().await;
        self.worker.abort();
        if let Some(l) = &self.liveness {
            l.abort();
        }
        if let Err(e) = self.lockd.store.mark_stopped() {
            warn!(error = %e, "cannot record the clean stop");
        }
        info!("lockd stopped");
    }
}
