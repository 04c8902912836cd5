//! SM_NOTIFY to every listed client after a restart, in the background, paced, from one
//! socket.
//!
//! A server with thousands of listed clients must keep serving while it tells them all that
//! it restarted, and must not spend memory per client beyond a small record. So a round of
//! notifications is one task with one UDP socket per address family: each client is first
//! looked up through its portmapper (GETPORT of the status program), then sent SM_NOTIFY,
//! both as datagrams matched to their replies by transaction id. New clients are started at
//! most [`CallbackPolicy::notify_per_second`] a second after a restart, at most
//! [`CallbackPolicy::group_notify_per_second`] a second for a group coming online, and at most
//! [`CallbackPolicy::notify_in_flight`] wait for a reply at once; a request unanswered is
//! retransmitted (every second, doubling) until the attempt time limit, after which the
//! client is tried again later with doubling backoff until the give-up time. Memory is the
//! list of clients plus one bounded receive buffer.

use crate::lockd::{CallbackPolicy, Lockd};
use crate::portmap::{pmap_proc, Mapping, IPPROTO_UDP, PMAP_PROG, PMAP_VERS};
use crate::proto::nsm::{proc_ as sm_proc, StatChge, SM_PROG, SM_VERS};
use crate::rpc::{AcceptStatus, CallHeader, OpaqueAuth, ReplyHeader, ReplyStatus};
use crate::xdr::{to_bytes, Decoder};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// First retransmission of an unanswered datagram; doubled up to [`MAX_RETRANSMIT`].
const RETRANSMIT: Duration = Duration::from_millis(1000);
const MAX_RETRANSMIT: Duration = Duration::from_secs(4);
/// How far behind its schedule a round's pacing may fall and still catch up.
const CATCH_UP: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Asking the client's portmapper where its status monitor listens.
    Lookup,
    /// Sending SM_NOTIFY to it.
    Notify(SocketAddr),
}

#[derive(Debug)]
struct Job {
    client: String,
    addr: IpAddr,
    stage: Stage,
    xid: u32,
    msg: Vec<u8>,
    /// When the current attempt gives up.
    attempt_end: Instant,
    retransmit: Duration,
    /// When the first attempt started, for the give-up time.
    first: Option<Instant>,
    backoff: Duration,
}

/// What a round achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundResult {
    pub delivered: usize,
    pub abandoned: usize,
}

struct Round {
    policy: CallbackPolicy,
    args: Vec<u8>,
    jobs: Vec<Job>,
    v4: UdpSocket,
    v6: Option<UdpSocket>,
    /// Transaction id to job, for the requests in flight.
    by_xid: HashMap<u32, usize>,
    /// Next deadline of each job in flight (retransmission or end of attempt) and of each
    /// job waiting out its backoff.
    timers: BTreeMap<(Instant, usize), ()>,
    /// When each job's timer is due, to find it in `timers`.
    due: HashMap<usize, Instant>,
    in_flight: usize,
    /// Clients ready for an attempt: not started yet, or their backoff ended.
    queue: VecDeque<usize>,
    next_xid: u32,
    result: RoundResult,
}

/// Sends SM_NOTIFY (`our_name`, `state`) to each (client, address) and returns when every
/// one was delivered or abandoned.
pub(crate) async fn notify_round(
    lockd: Arc<Lockd>,
    targets: Vec<(String, IpAddr)>,
    state: i32,
) -> RoundResult {
    let name = lockd.name.clone();
    let pace = lockd.policy.notify_per_second;
    notify_round_as(lockd, targets, state, name, None, pace).await
}

/// [`notify_round`] naming the server `name` (a group's server ID), sent from `from` when
/// that address is on this node (so clients that check the source see the address they
/// locked through), else from any; `per_second` clients are started a second.
pub(crate) async fn notify_round_as(
    lockd: Arc<Lockd>,
    targets: Vec<(String, IpAddr)>,
    state: i32,
    name: String,
    from: Option<IpAddr>,
    per_second: u32,
) -> RoundResult {
    let n = targets.len();
    info!(clients = n, state, server = %name, "sending SM_NOTIFY");
    let args = to_bytes(&StatChge {
        mon_name: name,
        state,
    });
    let mut policy = lockd.policy.clone();
    policy.notify_per_second = per_second.max(1);
    let r = match Round::new(policy, args, targets, from).await {
        Ok(mut round) => round.run().await,
        Err(e) => {
            warn!(error = %e, "cannot open a socket for SM_NOTIFY");
            RoundResult {
                delivered: 0,
                abandoned: n,
            }
        }
    };
    info!(
        clients = n,
        delivered = r.delivered,
        abandoned = r.abandoned,
        state,
        "SM_NOTIFY round finished"
    );
    r
}

fn seed_xid() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(7))
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

impl Round {
    async fn new(
        policy: CallbackPolicy,
        args: Vec<u8>,
        targets: Vec<(String, IpAddr)>,
        from: Option<IpAddr>,
    ) -> std::io::Result<Self> {
        // From the server ID's address if it is here; an address not (or no longer) on
        // this node cannot be bound, and the notification goes from any.
        async fn bind(any: IpAddr, from: Option<IpAddr>) -> std::io::Result<UdpSocket> {
            if let Some(a) = from.filter(|a| a.is_ipv4() == any.is_ipv4()) {
                match UdpSocket::bind((a, 0)).await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        warn!(address = %a, error = %e, "server ID address not on this node; SM_NOTIFY sent from any")
                    }
                }
            }
            UdpSocket::bind((any, 0)).await
        }
        let v4 = bind(Ipv4Addr::UNSPECIFIED.into(), from).await?;
        let v6 = if targets.iter().any(|(_, a)| a.is_ipv6()) {
            Some(bind(Ipv6Addr::UNSPECIFIED.into(), from).await?)
        } else {
            None
        };
        let backoff = policy.initial_backoff;
        let n = targets.len();
        let jobs = targets
            .into_iter()
            .map(|(client, addr)| Job {
                client,
                addr,
                stage: Stage::Lookup,
                xid: 0,
                msg: Vec::new(),
                attempt_end: Instant::now(),
                retransmit: RETRANSMIT,
                first: None,
                backoff,
            })
            .collect();
        Ok(Self {
            policy,
            args,
            jobs,
            v4,
            v6,
            by_xid: HashMap::new(),
            timers: BTreeMap::new(),
            due: HashMap::new(),
            in_flight: 0,
            queue: (0..n).collect(),
            next_xid: seed_xid(),
            result: RoundResult::default(),
        })
    }

    async fn run(&mut self) -> RoundResult {
        let gap = Duration::from_secs(1) / self.policy.notify_per_second.max(1);
        let max_in_flight = self.policy.notify_in_flight.max(1);
        let mut next_start = Instant::now();
        let mut buf = vec![0u8; 8192];
        let mut buf6 = vec![0u8; if self.v6.is_some() { 8192 } else { 0 }];
        loop {
            let done = self.result.delivered + self.result.abandoned;
            if done == self.jobs.len() {
                return self.result;
            }
            let now = Instant::now();
            // Start a client when pacing and the in-flight bound allow. Starts are due on a
            // schedule, one every `gap`, not `gap` after the moment the last one ran: a
            // timer wakes up to a millisecond late, and adding the gap to the wake-up time
            // made 500 starts a second about 330. A round that fell behind (nothing queued,
            // or the in-flight bound reached) catches up by at most CATCH_UP, so pacing
            // never turns into a burst.
            if self.in_flight < max_in_flight && now >= next_start {
                if let Some(j) = self.queue.pop_front() {
                    self.start_attempt(j).await;
                    next_start = next_start.max(now.checked_sub(CATCH_UP).unwrap_or(now)) + gap;
                    continue;
                }
            }
            if let Some((&(at, j), _)) = self.timers.first_key_value() {
                if at <= now {
                    self.timers.remove(&(at, j));
                    self.due.remove(&j);
                    self.on_timer(j, now).await;
                    continue;
                }
            }
            let mut wake = self.timers.first_key_value().map(|(k, _)| k.0);
            if !self.queue.is_empty() && self.in_flight < max_in_flight {
                wake = Some(wake.map_or(next_start, |w| w.min(next_start)));
            }
            let sleep = tokio::time::sleep_until(wake.unwrap_or(now + Duration::from_secs(3600)));
            let v6 = self.v6.as_ref();
            let got = tokio::select! {
                _ = sleep => None,
                r = self.v4.recv_from(&mut buf) => r.ok().map(|(n, from)| (n, from, false)),
                r = async {
                    match v6 {
                        Some(s) => s.recv_from(&mut buf6).await,
                        None => std::future::pending().await,
                    }
                } => r.ok().map(|(n, from)| (n, from, true)),
            };
            if let Some((n, from, six)) = got {
                let msg = if six {
                    buf6[..n].to_vec()
                } else {
                    buf[..n].to_vec()
                };
                self.on_reply(&msg, from).await;
            }
        }
    }

    fn set_timer(&mut self, j: usize, at: Instant) {
        if let Some(old) = self.due.insert(j, at) {
            self.timers.remove(&(old, j));
        }
        self.timers.insert((at, j), ());
    }

    fn clear_timer(&mut self, j: usize) {
        if let Some(old) = self.due.remove(&j) {
            self.timers.remove(&(old, j));
        }
    }

    /// A fresh transaction id; 0 is kept to mean "nothing in flight".
    fn new_xid(&mut self) -> u32 {
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        self.next_xid
    }

    /// Starts (or restarts after a backoff) a client's attempt with its portmapper lookup.
    async fn start_attempt(&mut self, j: usize) {
        let now = Instant::now();
        let pm = SocketAddr::new(self.jobs[j].addr, self.policy.client_portmap_port);
        let args = to_bytes(&Mapping {
            prog: SM_PROG,
            vers: SM_VERS,
            prot: IPPROTO_UDP,
            port: 0,
        });
        let xid = self.new_xid();
        let msg = CallHeader::new(
            xid,
            PMAP_PROG,
            PMAP_VERS,
            pmap_proc::GETPORT,
            OpaqueAuth::none(),
        )
        .to_message(&args);
        let job = &mut self.jobs[j];
        job.first.get_or_insert(now);
        job.stage = Stage::Lookup;
        job.attempt_end = now + self.policy.attempt_timeout;
        job.retransmit = RETRANSMIT;
        self.in_flight += 1;
        self.send(j, xid, msg, pm).await;
    }

    async fn send(&mut self, j: usize, xid: u32, msg: Vec<u8>, to: SocketAddr) {
        let old = self.jobs[j].xid;
        self.by_xid.remove(&old);
        self.by_xid.insert(xid, j);
        let sock = match (to.is_ipv6(), &self.v6) {
            (true, Some(s)) => s,
            _ => &self.v4,
        };
        if let Err(e) = sock.send_to(&msg, to).await {
            debug!(client = %self.jobs[j].client, %to, error = %e, "SM_NOTIFY datagram not sent");
        }
        let job = &mut self.jobs[j];
        job.xid = xid;
        job.msg = msg;
        let at = (Instant::now() + job.retransmit).min(job.attempt_end);
        self.set_timer(j, at);
    }

    fn target(&self, j: usize) -> SocketAddr {
        let job = &self.jobs[j];
        match job.stage {
            Stage::Lookup => SocketAddr::new(job.addr, self.policy.client_portmap_port),
            Stage::Notify(at) => at,
        }
    }

    async fn on_timer(&mut self, j: usize, now: Instant) {
        if self.jobs[j].xid == 0 {
            // A backoff ended: try again when pacing allows.
            self.queue.push_back(j);
            return;
        }
        if now >= self.jobs[j].attempt_end {
            self.attempt_failed(j, "no reply".to_string(), now);
            return;
        }
        let to = self.target(j);
        let job = &mut self.jobs[j];
        job.retransmit = (job.retransmit * 2).min(MAX_RETRANSMIT);
        let (xid, msg) = (job.xid, job.msg.clone());
        self.send(j, xid, msg, to).await;
    }

    fn attempt_failed(&mut self, j: usize, why: String, now: Instant) {
        self.in_flight -= 1;
        let xid = self.jobs[j].xid;
        self.by_xid.remove(&xid);
        self.clear_timer(j);
        let give_up = self.policy.notify_give_up;
        let max_backoff = self.policy.max_backoff;
        let job = &mut self.jobs[j];
        job.xid = 0;
        job.msg = Vec::new();
        if job.first.is_some_and(|f| now.duration_since(f) >= give_up) {
            warn!(client = %job.client, addr = %job.addr, error = %why, "SM_NOTIFY abandoned");
            self.result.abandoned += 1;
            return;
        }
        debug!(client = %job.client, addr = %job.addr, error = %why, retry_in = ?job.backoff, "SM_NOTIFY failed");
        let at = now + job.backoff;
        job.backoff = (job.backoff * 2).min(max_backoff);
        self.set_timer(j, at);
    }

    async fn on_reply(&mut self, msg: &[u8], from: SocketAddr) {
        let mut dec = Decoder::new(msg);
        let Ok(h) = ReplyHeader::decode(&mut dec) else {
            return;
        };
        let Some(&j) = self.by_xid.get(&h.xid) else {
            return;
        };
        if from.ip() != self.jobs[j].addr {
            return;
        }
        let now = Instant::now();
        let ok = matches!(
            h.status,
            ReplyStatus::Accepted {
                stat: AcceptStatus::Success,
                ..
            }
        );
        if !ok {
            self.attempt_failed(j, format!("{:?}", h.status), now);
            return;
        }
        match self.jobs[j].stage {
            Stage::Lookup => {
                let port = dec.get_u32().ok().and_then(|p| u16::try_from(p).ok());
                match port {
                    Some(p) if p != 0 => {
                        let at = SocketAddr::new(self.jobs[j].addr, p);
                        self.jobs[j].stage = Stage::Notify(at);
                        self.jobs[j].retransmit = RETRANSMIT;
                        let xid = self.new_xid();
                        let msg = CallHeader::new(
                            xid,
                            SM_PROG,
                            SM_VERS,
                            sm_proc::NOTIFY,
                            OpaqueAuth::none(),
                        )
                        .to_message(&self.args);
                        self.send(j, xid, msg, at).await;
                    }
                    _ => self.attempt_failed(j, "status monitor not registered".into(), now),
                }
            }
            Stage::Notify(_) => {
                self.in_flight -= 1;
                self.by_xid.remove(&h.xid);
                self.clear_timer(j);
                let job = &mut self.jobs[j];
                job.xid = 0;
                job.msg = Vec::new();
                self.result.delivered += 1;
                debug!(client = %job.client, addr = %job.addr, "SM_NOTIFY delivered");
            }
        }
    }
}
