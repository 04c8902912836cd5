//! The RPC server: UDP and TCP listeners feeding one dispatcher of registered programs.
//!
//! Programs see decoded call context and an argument decoder, and answer with a [`Reply`]:
//! now, never (the NLM `_MSG` procedures), or later through a [`ReplySender`] (a reply that
//! waits on something else). Everything that RFC 5531 says the RPC layer answers by itself
//! (unknown program, version or procedure, undecodable arguments, wrong RPC version, bad or
//! unsupported credentials) is answered here, so program code never builds RPC headers.
//!
//! Robustness: malformed messages are dropped or answered with an error reply, TCP records
//! beyond the configured size close their connection, a panicking handler produces
//! SYSTEM_ERR instead of taking the listener down, and UDP retransmissions are answered
//! from the [`DuplicateCache`]. TCP connections are bounded per peer address (a further one
//! from that address is closed at once) and in total (when the table is full, the idlest
//! connection is closed to make room, so one peer cannot lock others out until its
//! connections time out); the bytes of unfinished records are bounded over all connections
//! ([`crate::record::RecordBudget`]: the connection whose record would pass the budget is
//! closed).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;

mod dispatch;
mod file_reply;
mod program;
mod tcp;
mod udp;

use crate::drc::DuplicateCache;
use dispatch::Dispatcher;
pub use program::{
    decode_args, handle, handle_silent, CallContext, FileTail, ProcError, Reply, ReplySender,
    RpcProgram, SharedArgs,
};

/// The transport a call arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The rpcbind network id (`udp`/`tcp`, IPv4) or its IPv6 form.
    pub fn netid(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Transport::Udp, false) => "udp",
            (Transport::Tcp, false) => "tcp",
            (Transport::Udp, true) => "udp6",
            (Transport::Tcp, true) => "tcp6",
        }
    }

    /// The IP protocol number used by portmapper version 2.
    pub fn ipproto(self) -> u32 {
        match self {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        }
    }
}

/// Server limits and cache sizes.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest TCP record accepted; a larger one closes the connection.
    pub max_record_size: usize,
    /// Most TCP connections served at once; when the table is full, a new connection closes
    /// the one that has been idle longest.
    pub max_tcp_connections: usize,
    /// Most TCP connections from one peer address; further ones are closed on accept.
    pub max_tcp_connections_per_peer: usize,
    /// Bytes of unfinished TCP records all connections may hold together, beyond the
    /// first [`crate::record::RecordBudget::FREE_PER_RECORD`] bytes of each record.
    pub max_unfinished_record_bytes: usize,
    /// A TCP connection silent this long is closed.
    pub tcp_idle_timeout: Option<Duration>,
    /// After answering, keep polling for the next call this long before sleeping (per UDP
    /// socket, and one connection per TCP listener at a time). A client that calls back to
    /// back then finds the server awake instead of paying a CPU wake-up per call; the price
    /// is up to this much CPU time per reply while such clients are active. `None` disables
    /// it.
    pub busy_poll: Option<Duration>,
    /// Entries in the UDP duplicate request cache; 0 disables it.
    pub drc_capacity: usize,
    /// How long a UDP reply stays in the duplicate request cache.
    pub drc_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_record_size: 256 * 1024,
            max_tcp_connections: 1024,
            max_tcp_connections_per_peer: 64,
            max_unfinished_record_bytes: 32 * 1024 * 1024,
            tcp_idle_timeout: Some(Duration::from_secs(360)),
            busy_poll: Some(Duration::from_micros(200)),
            drc_capacity: 4096,
            drc_ttl: Duration::from_secs(120),
        }
    }
}

/// Which runtime serves a connection, by the local address it reached: lets the work of
/// one set of addresses (a service group's server IDs) run on a thread of its own.
pub trait Placement: Send + Sync {
    /// The runtime for a TCP connection accepted at, or a UDP socket bound to, `local`,
    /// with a key that names it (connections with one key share their busy poll); `None`
    /// keeps it on the listener's runtime.
    fn place(&self, local: SocketAddr) -> Option<(u64, tokio::runtime::Handle)>;
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("program {0} registered twice")]
    DuplicateProgram(u32),
    #[error("cannot bind {transport:?} {addr}: {source}")]
    Bind {
        transport: Transport,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// Collects programs and listen addresses, then starts an [`RpcServer`].
pub struct ServerBuilder {
    config: ServerConfig,
    programs: Vec<Arc<dyn RpcProgram>>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    udp_sockets: Vec<std::net::UdpSocket>,
    tcp_listeners: Vec<std::net::TcpListener>,
    placement: Option<Arc<dyn Placement>>,
}

impl ServerBuilder {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            programs: Vec::new(),
            udp: Vec::new(),
            tcp: Vec::new(),
            udp_sockets: Vec::new(),
            tcp_listeners: Vec::new(),
            placement: None,
        }
    }

    /// Serves connections and sockets where `p` places them instead of all on the
    /// runtime that starts the server.
    pub fn placement(mut self, p: Arc<dyn Placement>) -> Self {
        self.placement = Some(p);
        self
    }

    /// Serves a program.
    pub fn program(mut self, p: Arc<dyn RpcProgram>) -> Self {
        self.programs.push(p);
        self
    }

    /// Listens for UDP on `addr` (port 0 picks a free port).
    pub fn udp(mut self, addr: SocketAddr) -> Self {
        self.udp.push(addr);
        self
    }

    /// Listens for TCP on `addr` (port 0 picks a free port).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp.push(addr);
        self
    }

    /// Serves on an already bound UDP socket (for example one bound to a chosen port).
    pub fn udp_socket(mut self, s: std::net::UdpSocket) -> Self {
        self.udp_sockets.push(s);
        self
    }

    /// Serves on an already bound TCP listener.
    pub fn tcp_listener(mut self, l: std::net::TcpListener) -> Self {
        self.tcp_listeners.push(l);
        self
    }

    /// Binds everything and starts serving. Must be called inside a tokio runtime.
    pub async fn start(self) -> Result<RpcServer, ServerError> {
        let mut programs: HashMap<u32, Arc<dyn RpcProgram>> = HashMap::new();
        for p in self.programs {
            let n = p.program();
            if programs.insert(n, p).is_some() {
                return Err(ServerError::DuplicateProgram(n));
            }
        }
        let dispatcher = Arc::new(Dispatcher { programs });
        let drc = (self.config.drc_capacity > 0).then(|| {
            Arc::new(DuplicateCache::new(
                self.config.drc_capacity,
                self.config.drc_ttl,
            ))
        });
        let bind_err = |transport, addr| {
            move |source| ServerError::Bind {
                transport,
                addr,
                source,
            }
        };
        let mut udp = Vec::new();
        for addr in self.udp {
            udp.push(
                UdpSocket::bind(addr)
                    .await
                    .map_err(bind_err(Transport::Udp, addr))?,
            );
        }
        for s in self.udp_sockets {
            let addr = s.local_addr().unwrap_or_else(|_| unspecified());
            s.set_nonblocking(true)
                .map_err(bind_err(Transport::Udp, addr))?;
            udp.push(UdpSocket::from_std(s).map_err(bind_err(Transport::Udp, addr))?);
        }
        let mut tcp = Vec::new();
        for addr in self.tcp {
            tcp.push(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind_err(Transport::Tcp, addr))?,
            );
        }
        for l in self.tcp_listeners {
            let addr = l.local_addr().unwrap_or_else(|_| unspecified());
            l.set_nonblocking(true)
                .map_err(bind_err(Transport::Tcp, addr))?;
            tcp.push(TcpListener::from_std(l).map_err(bind_err(Transport::Tcp, addr))?);
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut udp_addrs = Vec::new();
        for sock in udp {
            let addr = sock
                .local_addr()
                .map_err(bind_err(Transport::Udp, unspecified()))?;
            udp_addrs.push(addr);
            info!(%addr, "RPC server listening on UDP");
            let placed = self.placement.as_ref().and_then(|p| p.place(addr));
            let (dispatcher, drc, poll, stop) = (
                dispatcher.clone(),
                drc.clone(),
                self.config.busy_poll,
                stop_rx.clone(),
            );
            match placed {
                None => {
                    tasks.spawn(udp::serve_udp(
                        Arc::new(sock),
                        addr,
                        dispatcher,
                        drc,
                        poll,
                        stop,
                    ));
                }
                Some((_, handle)) => {
                    // Registered again with the reactor of the runtime that serves it.
                    let std = sock.into_std().map_err(bind_err(Transport::Udp, addr))?;
                    tasks.spawn_on(
                        async move {
                            match UdpSocket::from_std(std) {
                                Ok(s) => {
                                    udp::serve_udp(Arc::new(s), addr, dispatcher, drc, poll, stop)
                                        .await
                                }
                                Err(e) => {
                                    tracing::error!(%addr, error = %e, "UDP socket not served")
                                }
                            }
                        },
                        &handle,
                    );
                }
            }
        }
        let mut tcp_addrs = Vec::new();
        let slots = Arc::new(tcp::Conns::new(&self.config));
        for l in tcp {
            let addr = l
                .local_addr()
                .map_err(bind_err(Transport::Tcp, unspecified()))?;
            tcp_addrs.push(addr);
            info!(%addr, "RPC server listening on TCP");
            tasks.spawn(tcp::serve_tcp(
                l,
                dispatcher.clone(),
                self.config.clone(),
                slots.clone(),
                self.placement.clone(),
                stop_rx.clone(),
            ));
        }
        Ok(RpcServer {
            udp_addrs,
            tcp_addrs,
            stop: stop_tx,
            tasks,
            conns: slots,
        })
    }
}

pub(crate) fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// A running server. Dropping it without [`RpcServer::shutdown`] aborts its tasks.
pub struct RpcServer {
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    conns: Arc<tcp::Conns>,
}

impl RpcServer {
    /// Replies over TCP whose file data was sent from the blocking pool (several clients
    /// reading at once: see `file_reply`).
    pub fn file_replies_from_pool(&self) -> u64 {
        self.conns.file_sends.pooled()
    }

    /// Shorthand for [`ServerBuilder::new`].
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder::new(config)
    }

    /// The bound UDP addresses, in the order they were given.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The bound TCP addresses, in the order they were given.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// Stops accepting, closes every connection and waits for all listener and connection
    /// tasks to finish. Replies still deferred are abandoned.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // An error means the server handle is gone, which is a stop as well.
    let _ = rx.wait_for(|s| *s).await;
}
