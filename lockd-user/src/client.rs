//! An asynchronous RPC client over UDP (with retransmission) or TCP (record marking).
//!
//! lockfs calls out for NLM GRANTED callbacks and `*_RES` messages to clients, SM_NOTIFY to
//! peers and rpcbind registration; tests use it to talk to the server. One client talks to
//! one peer address; calls on one client are serialised, so open several clients for
//! parallel calls.

use crate::record::{read_record, write_record, RecordError};
use crate::rpc::{
    AcceptStatus, AuthStat, CallHeader, OpaqueAuth, RejectStatus, ReplyHeader, ReplyStatus,
};
use crate::server::Transport;
use crate::xdr::{to_bytes, Decoder, XdrDecode, XdrEncode, XdrError};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::BufReader;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tracing::debug;

/// Why a call did not produce results.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("no reply within the timeout")]
    Timeout,
    #[error("record error: {0}")]
    Record(#[from] RecordError),
    #[error("connection closed by the server")]
    Closed,
    #[error("malformed reply: {0}")]
    Decode(#[from] XdrError),
    #[error("program unavailable")]
    ProgUnavail,
    #[error("program version mismatch: server supports {low}..={high}")]
    ProgMismatch { low: u32, high: u32 },
    #[error("procedure unavailable")]
    ProcUnavail,
    #[error("server could not decode the arguments")]
    GarbageArgs,
    #[error("server system error")]
    SystemErr,
    #[error("RPC version mismatch: server supports {low}..={high}")]
    RpcMismatch { low: u32, high: u32 },
    #[error("authentication error: {0:?}")]
    Auth(AuthStat),
}

impl ClientError {
    /// Maps a reply status other than SUCCESS to its error.
    pub fn from_status(status: &ReplyStatus) -> Option<Self> {
        Some(match status {
            ReplyStatus::Accepted { stat, .. } => match *stat {
                AcceptStatus::Success => return None,
                AcceptStatus::ProgUnavail => ClientError::ProgUnavail,
                AcceptStatus::ProgMismatch { low, high } => ClientError::ProgMismatch { low, high },
                AcceptStatus::ProcUnavail => ClientError::ProcUnavail,
                AcceptStatus::GarbageArgs => ClientError::GarbageArgs,
                AcceptStatus::SystemErr => ClientError::SystemErr,
            },
            ReplyStatus::Denied(RejectStatus::RpcMismatch { low, high }) => {
                ClientError::RpcMismatch {
                    low: *low,
                    high: *high,
                }
            }
            ReplyStatus::Denied(RejectStatus::AuthError(s)) => ClientError::Auth(*s),
        })
    }
}

/// Client timeouts and credential.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// UDP: wait this long before the first retransmission (doubling each time, up to
    /// 8 times the initial value). TCP: connect timeout.
    pub retransmit: Duration,
    /// Give up on a call after this long.
    pub total_timeout: Duration,
    /// Largest TCP reply record accepted.
    pub max_record_size: usize,
    /// Credential sent with every call.
    pub cred: OpaqueAuth,
    /// Local address to bind, for peers that only trust calls from a reserved port (binding
    /// one needs root). `None` picks an ephemeral port.
    pub local_addr: Option<SocketAddr>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            retransmit: Duration::from_millis(500),
            total_timeout: Duration::from_secs(10),
            max_record_size: 1024 * 1024,
            cred: OpaqueAuth::none(),
            local_addr: None,
        }
    }
}

enum Conn {
    /// The socket and a receive buffer reused across calls.
    Udp(UdpSocket, Vec<u8>),
    Tcp(Option<BufReader<TcpStream>>),
}

/// An RPC client bound to one peer.
pub struct RpcClient {
    peer: SocketAddr,
    config: ClientConfig,
    next_xid: AtomicU32,
    conn: Mutex<Conn>,
}

fn initial_xid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(13))
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(20)
}

impl RpcClient {
    /// A UDP client; the local socket is bound to an ephemeral port of the same family.
    pub async fn udp(peer: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        let local = config.local_addr.unwrap_or_else(|| any_addr(peer));
        let sock = UdpSocket::bind(local).await?;
        sock.connect(peer).await?;
        Ok(Self::with_conn(
            peer,
            config,
            Conn::Udp(sock, vec![0u8; 65_536]),
        ))
    }

    /// A TCP client; it connects now and reconnects on the next call after a failure.
    pub async fn tcp(peer: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        let stream = connect(peer, config.local_addr, config.total_timeout).await?;
        Ok(Self::with_conn(
            peer,
            config,
            Conn::Tcp(Some(BufReader::new(stream))),
        ))
    }

    /// A client over the given transport.
    pub async fn new(
        transport: Transport,
        peer: SocketAddr,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        match transport {
            Transport::Udp => Self::udp(peer, config).await,
            Transport::Tcp => Self::tcp(peer, config).await,
        }
    }

    fn with_conn(peer: SocketAddr, config: ClientConfig, conn: Conn) -> Self {
        Self {
            peer,
            config,
            next_xid: AtomicU32::new(initial_xid()),
            conn: Mutex::new(conn),
        }
    }

    /// The peer this client talks to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A fresh transaction id.
    pub fn next_xid(&self) -> u32 {
        self.next_xid.fetch_add(1, Ordering::Relaxed)
    }

    /// Calls a procedure with typed arguments and results.
    pub async fn call<A: XdrEncode + ?Sized, R: XdrDecode>(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &A,
    ) -> Result<R, ClientError> {
        let body = self.call_raw(prog, vers, proc_, &to_bytes(args)).await?;
        // Trailing bytes after the results are tolerated, as most implementations do.
        Ok(R::decode(&mut Decoder::new(&body))?)
    }

    /// Calls a procedure with encoded arguments; returns the encoded results.
    pub async fn call_raw(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let xid = self.next_xid();
        let msg =
            CallHeader::new(xid, prog, vers, proc_, self.config.cred.clone()).to_message(args);
        let reply = self.exchange(xid, &msg).await?;
        let mut dec = Decoder::new(&reply);
        let hdr = ReplyHeader::decode(&mut dec)?;
        if let Some(e) = ClientError::from_status(&hdr.status) {
            return Err(e);
        }
        Ok(dec.rest().to_vec())
    }

    /// Sends a complete, already-encoded call message and returns the raw reply message with
    /// the same xid. Tests use it to send deliberately odd calls.
    pub async fn exchange(&self, xid: u32, msg: &[u8]) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + self.config.total_timeout;
        let mut conn = self.conn.lock().await;
        match &mut *conn {
            Conn::Udp(sock, buf) => self.exchange_udp(sock, buf, xid, msg, deadline).await,
            Conn::Tcp(slot) => {
                let r = self.exchange_tcp(slot, xid, msg, deadline).await;
                if r.is_err() {
                    // The stream may hold half a record now; start clean next time.
                    *slot = None;
                }
                r
            }
        }
    }

    /// Sends a call and does not wait for a reply (NLM `*_MSG` and `*_RES` messages). Over
    /// TCP, replies the peer sends anyway are skipped by the next [`RpcClient::call`].
    pub async fn send_oneway(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<u32, ClientError> {
        let xid = self.next_xid();
        let msg =
            CallHeader::new(xid, prog, vers, proc_, self.config.cred.clone()).to_message(args);
        let mut conn = self.conn.lock().await;
        match &mut *conn {
            Conn::Udp(sock, _) => {
                sock.send(&msg).await?;
            }
            Conn::Tcp(slot) => {
                let deadline = Instant::now() + self.config.total_timeout;
                let stream = self.tcp_stream(slot, deadline).await?;
                let left = deadline.saturating_duration_since(Instant::now());
                let sent = tokio::time::timeout(left, write_record(stream, &msg))
                    .await
                    .map_err(|_| ClientError::Timeout)
                    .and_then(|r| r.map_err(ClientError::from));
                if let Err(e) = sent {
                    *slot = None;
                    return Err(e);
                }
            }
        }
        Ok(xid)
    }

    async fn exchange_udp(
        &self,
        sock: &UdpSocket,
        buf: &mut [u8],
        xid: u32,
        msg: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let mut wait = self.config.retransmit.max(Duration::from_millis(1));
        let cap = wait * 8;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            sock.send(msg).await?;
            let attempt_end = (now + wait).min(deadline);
            loop {
                let left = attempt_end.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, sock.recv(buf)).await {
                    Err(_) => break,
                    // Typically ECONNREFUSED from an ICMP port unreachable: nobody listens.
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(n)) => {
                        if reply_xid(&buf[..n]) == Some(xid) {
                            return Ok(buf[..n].to_vec());
                        }
                        debug!(peer = %self.peer, "ignoring unrelated datagram");
                    }
                }
            }
            wait = (wait * 2).min(cap);
        }
    }

    async fn tcp_stream<'a>(
        &self,
        slot: &'a mut Option<BufReader<TcpStream>>,
        deadline: Instant,
    ) -> Result<&'a mut BufReader<TcpStream>, ClientError> {
        if slot.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            *slot = Some(BufReader::new(
                connect(self.peer, self.config.local_addr, left).await?,
            ));
        }
        slot.as_mut().ok_or(ClientError::Closed)
    }

    async fn exchange_tcp(
        &self,
        slot: &mut Option<BufReader<TcpStream>>,
        xid: u32,
        msg: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let stream = self.tcp_stream(slot, deadline).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let max = self.config.max_record_size;
        let io = async {
            write_record(stream, msg).await?;
            loop {
                match read_record(stream, max).await? {
                    None => return Err(ClientError::Closed),
                    Some(rec) if reply_xid(&rec) == Some(xid) => return Ok(rec),
                    Some(_) => debug!(peer = %self.peer, "ignoring unrelated record"),
                }
            }
        };
        tokio::time::timeout(left, io)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }
}

fn reply_xid(msg: &[u8]) -> Option<u32> {
    match crate::rpc::peek_xid_and_type(msg) {
        Some((xid, false)) => Some(xid),
        _ => None,
    }
}

fn any_addr(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

async fn connect(
    peer: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let fut = async {
        match local {
            None => TcpStream::connect(peer).await,
            Some(local) => {
                let sock = if peer.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                // Reconnecting from the same reserved port must not wait out TIME_WAIT.
                sock.set_reuseaddr(true)?;
                sock.bind(local)?;
                sock.connect(peer).await
            }
        }
    };
    let s = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout)??;
    let _ = s.set_nodelay(true);
    Ok(s)
}
