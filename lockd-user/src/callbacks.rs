//! Calls lockd makes to clients: GRANTED for blocked locks once the table grants them, and
//! the `*_RES` answers to `*_MSG` requests.
//!
//! RPC handlers and the continuations NLM parks in the table's waiter registry only queue
//! work here (`CallbackJob`); one worker
//! task turns jobs into background calls, so no handler waits on a client and the table is
//! never held during I/O. A client's NLM service is found through the portmapper at the
//! address its request came from.
//!
//! A GRANTED callback is retried with doubling backoff until the client answers. If it
//! answers anything but granted (it no longer wants the lock), the lock is released and the
//! next waiter is served. If the host is released meanwhile (reboot, FREE_ALL, clear) or the
//! request is cancelled, the retries stop. With the opt-in unreachable policy, a host whose
//! callback has failed for the configured time is cleared.

use crate::client::{ClientConfig, RpcClient};
use crate::lockd::{CallbackPolicy, Lockd};
use crate::portmap::{Mapping, RpcbindClient};
use crate::proto::nlm::{proc_, v3, v4, NLM_PROG};
use crate::server::Transport;
use crate::xdr::to_bytes;
use lock_table::{FileId, LockKind, Owner, Range, WaiterId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

/// A blocked NLM request waiting in the table, or granted and being called back.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub host: String,
    pub peer: IpAddr,
    pub vers: u32,
    /// It came as LOCK_MSG: call back with GRANTED_MSG and wait for GRANTED_RES.
    pub msg: bool,
    pub waiter: Option<WaiterId>,
    pub file: FileId,
    pub owner: Owner,
    pub kind: LockKind,
    pub range: Range,
    /// The lock as the client described it (version 1/3 values widened losslessly).
    pub lock: v4::Lock,
}

/// Work for the callback worker.
#[derive(Debug)]
pub(crate) enum CallbackJob {
    /// The blocked request under this token was granted: call the client back.
    Granted { token: u64 },
    /// The table dropped it (its host was released): forget it.
    Dropped { token: u64 },
    /// Send a `*_RES` message with these encoded results.
    Res {
        peer: IpAddr,
        vers: u32,
        proc_: u32,
        body: Vec<u8>,
    },
}

/// Finds where `prog`/`vers` listens over UDP on `host`, through the portmapper at `port`.
async fn lookup_udp(
    host: IpAddr,
    port: u16,
    prog: u32,
    vers: u32,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let pm = RpcbindClient::new(SocketAddr::new(host, port), timeout)
        .await
        .map_err(|e| format!("portmapper of {host}: {e}"))?;
    let p = pm
        .pmap_getport(&Mapping {
            prog,
            vers,
            prot: Transport::Udp.ipproto(),
            port: 0,
        })
        .await
        .map_err(|e| format!("portmapper of {host}: {e}"))?;
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(SocketAddr::new(host, p)),
        _ => Err(format!(
            "program {prog} version {vers} not registered on {host}"
        )),
    }
}

fn client_config(timeout: Duration) -> ClientConfig {
    ClientConfig {
        retransmit: (timeout / 8).max(Duration::from_millis(50)),
        total_timeout: timeout,
        ..ClientConfig::default()
    }
}

/// A UDP client of `prog`/`vers` on `host`, found through the host's portmapper, with the
/// policy's port and per-attempt time limit: how every callback reaches a client.
pub(crate) async fn connect_udp(
    host: IpAddr,
    prog: u32,
    vers: u32,
    policy: &CallbackPolicy,
) -> Result<RpcClient, String> {
    let at = lookup_udp(
        host,
        policy.client_portmap_port,
        prog,
        vers,
        policy.attempt_timeout,
    )
    .await?;
    RpcClient::udp(at, client_config(policy.attempt_timeout))
        .await
        .map_err(|e| e.to_string())
}

/// The worker: runs until every sender is gone or the service aborts it.
pub(crate) async fn run(lockd: Arc<Lockd>, mut rx: mpsc::UnboundedReceiver<CallbackJob>) {
    while let Some(job) = rx.recv().await {
        match job {
            CallbackJob::Granted { token } => {
                let l = lockd.clone();
                tokio::spawn(deliver_grant(l, token));
            }
            CallbackJob::Dropped { token } => {
                lockd.pending().remove(&token);
            }
            CallbackJob::Res {
                peer,
                vers,
                proc_,
                body,
            } => {
                let l = lockd.clone();
                tokio::spawn(send_res(l, peer, vers, proc_, body));
            }
        }
    }
}

async fn send_res(lockd: Arc<Lockd>, peer: IpAddr, vers: u32, proc_: u32, body: Vec<u8>) {
    let p = &lockd.policy;
    let mut backoff = p.initial_backoff;
    for attempt in 0..3 {
        let r = async {
            let c = connect_udp(peer, NLM_PROG, vers, p).await?;
            c.send_oneway(NLM_PROG, vers, proc_, &body)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match r {
            Ok(_) => return,
            Err(e) => {
                debug!(client = %peer, proc_, attempt, error = %e, "cannot send NLM result message");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(p.max_backoff);
            }
        }
    }
    warn!(client = %peer, proc_, "NLM result message not delivered");
}

/// The cookie lockd puts in its GRANTED callbacks: the table token, so that GRANTED_RES
/// finds its request.
pub(crate) fn grant_cookie(token: u64) -> Vec<u8> {
    token.to_be_bytes().to_vec()
}

pub(crate) fn token_of_cookie(cookie: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(cookie.try_into().ok()?))
}

async fn deliver_grant(lockd: Arc<Lockd>, token: u64) {
    let started = Instant::now();
    let mut backoff = lockd.policy.initial_backoff;
    loop {
        let Some(p) = lockd.pending().get(&token).cloned() else {
            // Cancelled, or its host was released.
            return;
        };
        let span =
            tracing::info_span!("granted", client = %p.host, file = ?p.file, owner = ?p.owner);
        let r = attempt_grant(&lockd, token, &p)
            .instrument(span.clone())
            .await;
        let _g = span.enter();
        match r {
            Ok(accepted) => {
                // Only the one who removes the entry acts, so a concurrent CANCEL and a
                // late refusal never both unlock.
                if lockd.pending().remove(&token).is_none() {
                    return;
                }
                if accepted {
                    info!(waited = ?started.elapsed(), "client accepted the granted lock");
                } else {
                    info!("client refused the granted lock; releasing it");
                    lockd.table.with(|t| t.unlock(p.file, p.owner, p.range));
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "GRANTED callback failed");
                if let Some(limit) = lockd.policy.release_unreachable_after {
                    if started.elapsed() >= limit {
                        warn!("callback path unreachable beyond the configured limit; releasing the host");
                        lockd.clear_host(&p.host);
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(lockd.policy.max_backoff);
            }
        }
    }
}

/// One GRANTED (or GRANTED_MSG + GRANTED_RES) exchange; Ok(true) when the client took the
/// lock, Ok(false) when it answered anything else.
async fn attempt_grant(lockd: &Lockd, token: u64, p: &Pending) -> Result<bool, String> {
    let pol = &lockd.policy;
    let c = connect_udp(p.peer, NLM_PROG, p.vers, pol).await?;
    let cookie = grant_cookie(token);
    let exclusive = p.kind == LockKind::Exclusive;
    let body = if p.vers == crate::proto::nlm::NLM4_VERS {
        to_bytes(&v4::TestArgs {
            cookie,
            exclusive,
            alock: p.lock.clone(),
        })
    } else {
        to_bytes(&v3::TestArgs {
            cookie,
            exclusive,
            alock: crate::nlm::lock_to_v3(&p.lock),
        })
    };
    if p.msg {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lockd.grant_replies().insert(token, tx);
        let sent = c
            .send_oneway(NLM_PROG, p.vers, proc_::GRANTED_MSG, &body)
            .await;
        let r = match sent {
            Err(e) => Err(e.to_string()),
            Ok(_) => match tokio::time::timeout(pol.attempt_timeout, rx).await {
                Ok(Ok(stat)) => Ok(stat == v4::Stats::Granted),
                _ => Err("no GRANTED_RES".to_string()),
            },
        };
        lockd.grant_replies().remove(&token);
        r
    } else {
        let raw = c
            .call_raw(NLM_PROG, p.vers, proc_::GRANTED, &body)
            .await
            .map_err(|e| e.to_string())?;
        let mut dec = crate::xdr::Decoder::new(&raw);
        if p.vers == crate::proto::nlm::NLM4_VERS {
            let r: v4::Res = dec.get().map_err(|e| e.to_string())?;
            Ok(r.stat == v4::Stats::Granted)
        } else {
            let r: v3::Res = dec.get().map_err(|e| e.to_string())?;
            Ok(r.stat == v3::Stats::Granted)
        }
    }
}
