//! The UDP listener: one receive loop per socket, with the duplicate request cache in
//! front of the dispatcher because datagram clients retransmit. Like TCP connections, the
//! loop may busy-poll briefly after each call (see [`super::ServerConfig::busy_poll`]).

use super::dispatch::{result_msg, Action, Dispatcher};
use super::{stopped, Transport};
use crate::drc::{DrcLookup, DuplicateCache};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Largest UDP datagram the server reads.
const MAX_DATAGRAM: usize = 65_536;

pub(super) async fn serve_udp(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    dispatcher: Arc<Dispatcher>,
    drc: Option<Arc<DuplicateCache>>,
    busy_poll: Option<Duration>,
    stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut deferred = JoinSet::new();
    // One stop future for the life of the socket, not one per datagram.
    let mut stop_rx = stop.clone();
    let stop_flag = stop.clone();
    let stop_signal = stopped(&mut stop_rx);
    tokio::pin!(stop_signal);
    // Whether a datagram was handled since the socket last waited.
    let mut served = false;
    loop {
        let polled = match busy_poll.filter(|_| served) {
            Some(window) => poll_datagram(&sock, &mut buf, window, &stop_flag).await,
            None => None,
        };
        served = false;
        let (n, peer) = if let Some(v) = polled {
            v
        } else {
            tokio::select! {
                biased;
                _ = &mut stop_signal => break,
                Some(_) = deferred.join_next(), if !deferred.is_empty() => continue,
                r = sock.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on Linux; keep serving.
                        debug!(error = %e, "UDP receive error");
                        continue;
                    }
                },
            }
        };
        served = true;
        let msg = &buf[..n];
        let (h, off) = match dispatcher.parse(msg) {
            Ok(v) => v,
            Err(action) => {
                if let Action::Send(out) = action {
                    udp_send(&sock, &out, peer).await;
                }
                continue;
            }
        };
        let args = &msg[off..];
        let key = drc
            .as_ref()
            .map(|c| c.key(peer, h.xid, h.prog, h.vers, h.proc_, args));
        if let (Some(c), Some(k)) = (&drc, &key) {
            match c.begin(k) {
                DrcLookup::New => {}
                DrcLookup::InProgress => {
                    debug!(xid = h.xid, %peer, "dropping duplicate of a call in progress");
                    continue;
                }
                DrcLookup::Replay(reply) => {
                    debug!(xid = h.xid, %peer, "answering retransmission from cache");
                    if let Some(out) = reply {
                        udp_send(&sock, &out, peer).await;
                    }
                    continue;
                }
            }
        }
        match dispatcher.execute(&h, args, peer, local, Transport::Udp) {
            Action::Send(out) => {
                if let (Some(c), Some(k)) = (&drc, &key) {
                    c.complete(k, Some(Arc::from(&out[..])));
                }
                udp_send(&sock, &out, peer).await;
            }
            Action::Nothing => {
                if let (Some(c), Some(k)) = (&drc, &key) {
                    c.complete(k, None);
                }
            }
            Action::Defer { xid, rx } => {
                let sock = sock.clone();
                let drc = drc.clone();
                let mut stop = stop.clone();
                deferred.spawn(async move {
                    tokio::select! {
                        _ = stopped(&mut stop) => {}
                        r = rx => match r {
                            Ok(res) => {
                                let out = result_msg(xid, res);
                                if let (Some(c), Some(k)) = (&drc, &key) {
                                    c.complete(k, Some(Arc::from(&out[..])));
                                }
                                udp_send(&sock, &out, peer).await;
                            }
                            Err(_) => {
                                if let (Some(c), Some(k)) = (&drc, &key) {
                                    c.abandon(k);
                                }
                            }
                        }
                    }
                });
            }
        }
    }
    deferred.shutdown().await;
}

/// Looks for the next datagram for up to `window` instead of sleeping at once (see
/// [`super::ServerConfig::busy_poll`]); yields between tries so the runtime keeps serving
/// everything else.
async fn poll_datagram(
    sock: &UdpSocket,
    buf: &mut [u8],
    window: Duration,
    stop: &watch::Receiver<bool>,
) -> Option<(usize, SocketAddr)> {
    let until = Instant::now() + window;
    loop {
        tokio::task::yield_now().await;
        if *stop.borrow() {
            return None;
        }
        match sock.try_recv_from(buf) {
            Ok(v) => return Some(v),
            // Receive errors (ICMP reports) are left to the regular receive path.
            Err(_) if Instant::now() >= until => return None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

async fn udp_send(sock: &UdpSocket, msg: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(msg, peer).await {
        warn!(%peer, error = %e, len = msg.len(), "UDP reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use crate::rpc::{CallHeader, OpaqueAuth, ReplyHeader};
    use crate::server::{
        decode_args, CallContext, ProcError, Reply, RpcProgram, RpcServer, ServerConfig,
    };
    use crate::xdr::{to_bytes, Decoder};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::UdpSocket;
    use tokio::time::timeout;

    const PROG: u32 = 0x2000_0178;

    struct Echo;

    impl RpcProgram for Echo {
        fn program(&self) -> u32 {
            PROG
        }
        fn versions(&self) -> (u32, u32) {
            (1, 1)
        }
        fn call(&self, _: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            let v: u32 = decode_args(args)?;
            Ok(Reply::encode(&v))
        }
    }

    async fn call(s: &UdpSocket, to: std::net::SocketAddr, xid: u32, v: u32) -> (u32, u32) {
        let msg = CallHeader::new(xid, PROG, 1, 0, OpaqueAuth::none()).to_message(&to_bytes(&v));
        s.send_to(&msg, to).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = timeout(Duration::from_secs(2), s.recv_from(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        let mut d = Decoder::new(&buf[..n]);
        let h = ReplyHeader::decode(&mut d).unwrap();
        (h.xid, d.get_u32().unwrap())
    }

    #[tokio::test]
    async fn a_busy_polling_socket_serves_every_sender_and_stops_promptly() {
        // A window far longer than the step limits: a poller that missed datagrams or held
        // the runtime would make a step wait for the whole window.
        let config = ServerConfig {
            busy_poll: Some(Duration::from_secs(5)),
            ..ServerConfig::default()
        };
        let server = RpcServer::builder(config)
            .program(Arc::new(Echo))
            .udp("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let to = server.udp_addrs()[0];
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(call(&a, to, 1, 10).await, (1, 10));
        assert_eq!(call(&b, to, 2, 20).await, (2, 20));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(call(&a, to, 3, 30).await, (3, 30));
        // Shutdown does not wait for the window in progress.
        timeout(Duration::from_secs(2), server.shutdown())
            .await
            .expect("shutdown");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
