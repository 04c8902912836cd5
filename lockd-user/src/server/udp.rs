//! The UDP listener: one receive loop per socket, with the duplicate request cache in
//! front of the dispatcher because datagram clients retransmit.

use super::dispatch::{result_msg, Action, Dispatcher};
use super::{stopped, Transport};
use crate::drc::{DrcLookup, DuplicateCache};
use std::net::SocketAddr;
use std::sync::Arc;
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
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut deferred = JoinSet::new();
    loop {
        let (n, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
            Some(_) = deferred.join_next(), if !deferred.is_empty() => continue,
        };
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

async fn udp_send(sock: &UdpSocket, msg: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(msg, peer).await {
        warn!(%peer, error = %e, len = msg.len(), "UDP reply not sent");
    }
}
