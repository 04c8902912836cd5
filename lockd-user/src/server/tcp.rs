//! The TCP listener: accepts within the connection limit and serves each connection as a
//! sequence of records, replies written in the order they become ready.

use super::dispatch::{result_msg, Action, Dispatcher};
use super::{stopped, unspecified, ServerConfig, Transport};
use crate::record::{read_record, write_record, RecordError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

pub(super) async fn serve_tcp(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    config: ServerConfig,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = config.max_tcp_connections, "TCP connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let dispatcher = dispatcher.clone();
        let config = config.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            serve_connection(stream, peer, dispatcher, config, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    dispatcher: Arc<Dispatcher>,
    config: ServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or_else(|_| unspecified());
    let (rd, wr) = stream.into_split();
    // Buffered so a record header and its body usually cost one read system call.
    let mut rd = tokio::io::BufReader::with_capacity(16 * 1024, rd);
    // Immediate replies are written by this task (no hand-off on the fast path); deferred
    // ones take the same lock, so records never interleave.
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let mut deferred = JoinSet::new();
    loop {
        let read = async {
            match config.tcp_idle_timeout {
                Some(t) => tokio::time::timeout(t, read_record(&mut rd, config.max_record_size))
                    .await
                    .unwrap_or(Ok(None)),
                None => read_record(&mut rd, config.max_record_size).await,
            }
        };
        let msg = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = read => match r {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(RecordError::TooLarge { size, limit }) => {
                    warn!(%peer, size, limit, "TCP record over the limit; closing connection");
                    break;
                }
                Err(e) => {
                    debug!(%peer, error = %e, "TCP connection ended");
                    break;
                }
            },
        };
        let action = match dispatcher.parse(&msg) {
            Ok((h, off)) => dispatcher.execute(&h, &msg[off..], peer, local, Transport::Tcp),
            Err(a) => a,
        };
        match action {
            Action::Send(out) => {
                // A peer that stops reading blocks this write; shutdown still ends it.
                let ok = tokio::select! {
                    _ = stopped(&mut stop) => false,
                    r = send_record(&wr, &out, peer) => r,
                };
                if !ok {
                    break;
                }
            }
            Action::Nothing => {}
            Action::Defer { xid, rx } => {
                let wr = wr.clone();
                let mut stop = stop.clone();
                deferred.spawn(async move {
                    tokio::select! {
                        _ = stopped(&mut stop) => {}
                        r = rx => if let Ok(res) = r {
                            send_record(&wr, &result_msg(xid, res), peer).await;
                        }
                    }
                });
            }
        }
        // Reap finished deferred replies so the set does not grow on long connections.
        while deferred.try_join_next().is_some() {}
    }
    // Deferred replies for a closed connection have nowhere to go.
    deferred.shutdown().await;
}

async fn send_record(
    wr: &tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    msg: &[u8],
    peer: SocketAddr,
) -> bool {
    let mut w = wr.lock().await;
    match write_record(&mut *w, msg).await {
        Ok(()) => true,
        Err(e) => {
            debug!(%peer, error = %e, "TCP write failed");
            false
        }
    }
}
