//! The TCP listener: accepts within the connection limits and serves each connection as a
//! sequence of records, replies written in the order they become ready.
//!
//! Connections are kept in one table for all listeners ([`Conns`]) with the time each was
//! last active: a peer address at its own limit has its new connection closed; a full
//! table closes its idlest connection to admit the new one, so a peer that opens many
//! connections and leaves them silent cannot lock others out until the idle timeout.
//!
//! The per-record path is kept free of work that does not depend on the record: one task
//! owns the connection and is the only writer (deferred replies come back to it instead of
//! taking a lock), records are reassembled in buffers reused for the life of the connection,
//! the stop signal is one future awaited across all records, and the idle timeout is one
//! timer that is moved only when it fires, not armed and cancelled for every record.
//!
//! Latency on a virtual machine is dominated by waking idle CPUs: a client that calls back
//! to back pays a halted CPU's wake-up on each call unless the server is still running when
//! the call arrives. So after answering, one connection per listener at a time may poll
//! for its next call for [`ServerConfig::busy_poll`] before the runtime goes to sleep; it
//! stops as soon as another connection is served, since the runtime is then awake anyway.

use super::dispatch::{result_msg, Action, Args, Dispatcher};
use super::file_reply::{write_framed_file, FileSends};
use super::{stopped, unspecified, Placement, ServerConfig, SharedArgs, Transport};
use crate::record::{
    encode_record_into, RecordBudget, RecordError, RecordReader, KEEP_RECORD_CAPACITY,
    LAST_FRAGMENT, MAX_FRAGMENT,
};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Bytes asked of the socket per read: several small records fit in one.
const READ_SIZE: usize = 16 * 1024;

/// The TCP connections of a server, shared by its listeners.
pub(super) struct Conns {
    max_total: usize,
    max_per_peer: usize,
    budget: Arc<RecordBudget>,
    epoch: std::time::Instant,
    inner: Mutex<ConnsInner>,
    /// Where the connections sent their large file replies lately.
    pub(super) file_sends: FileSends,
}

#[derive(Default)]
struct ConnsInner {
    next_id: u64,
    by_id: HashMap<u64, Arc<Slot>>,
    per_peer: HashMap<IpAddr, usize>,
}

/// One connection's entry: its peer, when it was last active, and how to close it.
struct Slot {
    id: u64,
    peer: IpAddr,
    /// Milliseconds since [`Conns::epoch`].
    last_active: AtomicU64,
    evict: Notify,
}

/// A connection's place in the table, given back when the connection ends.
struct Admitted {
    conns: Arc<Conns>,
    slot: Arc<Slot>,
}

impl Conns {
    pub(super) fn new(config: &ServerConfig) -> Self {
        Self {
            max_total: config.max_tcp_connections,
            max_per_peer: config.max_tcp_connections_per_peer,
            budget: Arc::new(RecordBudget::new(config.max_unfinished_record_bytes)),
            epoch: std::time::Instant::now(),
            inner: Mutex::new(ConnsInner::default()),
            file_sends: FileSends::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A place for a new connection from `peer`, making room by closing the idlest one when
    /// the table is full; `None` when `peer` is at its own limit.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Admitted> {
        let ip = peer.ip();
        let mut g = self.lock();
        if g.per_peer.get(&ip).copied().unwrap_or(0) >= self.max_per_peer {
            drop(g);
            warn!(%peer, limit = self.max_per_peer, "TCP connection limit per address reached; closing new connection");
            return None;
        }
        if g.by_id.len() >= self.max_total {
            let idlest = g
                .by_id
                .values()
                .min_by_key(|s| s.last_active.load(Ordering::Relaxed))
                .cloned();
            let victim = idlest?;
            g.by_id.remove(&victim.id);
            dec_peer(&mut g.per_peer, victim.peer);
            victim.evict.notify_one();
            let idle_ms = self
                .now_ms()
                .saturating_sub(victim.last_active.load(Ordering::Relaxed));
            warn!(%peer, limit = self.max_total, closed = %victim.peer, idle_ms, "TCP connection table full; closing the idlest connection");
        }
        g.next_id += 1;
        let slot = Arc::new(Slot {
            id: g.next_id,
            peer: ip,
            last_active: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        g.by_id.insert(slot.id, slot.clone());
        *g.per_peer.entry(ip).or_insert(0) += 1;
        Some(Admitted {
            conns: self.clone(),
            slot,
        })
    }
}

fn dec_peer(per_peer: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = per_peer.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_peer.remove(&ip);
        }
    }
}

impl Admitted {
    fn touch(&self) {
        self.slot
            .last_active
            .store(self.conns.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.conns.lock();
        // An evicted connection already left the table.
        if g.by_id.remove(&self.slot.id).is_some() {
            dec_peer(&mut g.per_peer, self.slot.peer);
        }
    }
}

pub(super) async fn serve_tcp(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    config: ServerConfig,
    conns_table: Arc<Conns>,
    placement: Option<Arc<dyn Placement>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let poller = Arc::new(Poller::default());
    // Connections served on another runtime busy-poll among themselves: a turn taken by
    // one of them must not keep this runtime's connections from polling.
    let mut pollers: HashMap<u64, Arc<Poller>> = HashMap::new();
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
        let Some(admitted) = conns_table.admit(peer) else {
            drop(stream);
            continue;
        };
        let dispatcher = dispatcher.clone();
        let config = config.clone();
        let stop = stop.clone();
        let placed = placement.as_ref().and_then(|p| {
            let local = stream.local_addr().ok()?;
            p.place(local)
        });
        let Some((key, handle)) = placed else {
            let poller = poller.clone();
            conns.spawn(async move {
                serve_connection(stream, peer, dispatcher, config, poller, admitted, stop).await;
            });
            continue;
        };
        let poller = pollers.entry(key).or_default().clone();
        // Taken off this runtime's reactor and registered with the serving runtime's, so
        // its readiness wakes that runtime's thread directly.
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, error = %e, "TCP connection could not be handed over");
                continue;
            }
        };
        conns.spawn_on(
            async move {
                match TcpStream::from_std(std) {
                    Ok(stream) => {
                        serve_connection(stream, peer, dispatcher, config, poller, admitted, stop)
                            .await
                    }
                    Err(e) => warn!(%peer, error = %e, "TCP connection could not be handed over"),
                }
            },
            &handle,
        );
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Why a connection's loop ended.
enum End {
    Stop,
    Closed,
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    dispatcher: Arc<Dispatcher>,
    config: ServerConfig,
    poller: Arc<Poller>,
    admitted: Admitted,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or_else(|_| unspecified());
    let mut reader = RecordReader::new(config.max_record_size, READ_SIZE)
        .with_budget(admitted.conns.budget.clone());
    let evicted = admitted.slot.evict.notified();
    tokio::pin!(evicted);
    let mut out = Vec::new();
    // Deferred replies are awaited in their own tasks and handed back here to be written.
    let mut deferred: JoinSet<Option<Vec<u8>>> = JoinSet::new();
    let stop_flag = stop.clone();
    let stop_signal = stopped(&mut stop);
    tokio::pin!(stop_signal);
    // The idle timer fires at most once per timeout period; when it does, it checks the
    // time of the last record and either closes the connection or moves itself forward.
    let idle = config.tcp_idle_timeout;
    let mut last_record = Instant::now();
    let far = Duration::from_secs(86_400 * 365);
    let idle_timer = tokio::time::sleep(idle.unwrap_or(far));
    tokio::pin!(idle_timer);

    // Whether records were answered since the connection last waited for input.
    let mut served = false;
    let end = 'conn: loop {
        // Every record already received is answered before the socket is read again.
        loop {
            let msg = match reader.next_record() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    record_error(peer, &e);
                    break 'conn End::Closed;
                }
            };
            last_record = Instant::now();
            served = true;
            poller.records.fetch_add(1, Ordering::Relaxed);
            let run = |bytes: &[u8], shared: Option<Arc<Vec<u8>>>| match dispatcher.parse(bytes) {
                Ok((h, off)) => {
                    let args = match shared {
                        Some(record) => Args::Shared(SharedArgs::new(record, off)),
                        None => Args::Borrowed(&bytes[off..]),
                    };
                    dispatcher.execute(&h, args, peer, local, Transport::Tcp)
                }
                Err(a) => a,
            };
            // A record the reader would not keep its buffer for (a WRITE's data) is taken
            // whole, so a procedure finished on another thread shares it.
            let action = if msg.len() > KEEP_RECORD_CAPACITY {
                let record = Arc::new(reader.take_record());
                run(&record, Some(record.clone()))
            } else {
                run(msg, None)
            };
            match action {
                Action::Send(reply) => {
                    // A peer that stops reading blocks this write; shutdown still ends it.
                    tokio::select! {
                        _ = &mut stop_signal => break 'conn End::Stop,
                        r = write_framed(&mut stream, &mut out, &reply) => if let Err(e) = r {
                            debug!(%peer, error = %e, "TCP write failed");
                            break 'conn End::Closed;
                        },
                    }
                }
                Action::SendFile(msg, tail) => {
                    tokio::select! {
                        _ = &mut stop_signal => break 'conn End::Stop,
                        r = write_framed_file(&admitted.conns.file_sends, &stream, &mut out, &msg, &tail) => if let Err(e) = r {
                            debug!(%peer, error = %e, "TCP write failed");
                            break 'conn End::Closed;
                        },
                    }
                }
                Action::Nothing => {}
                Action::Defer { xid, rx } => {
                    deferred.spawn(async move { rx.await.ok().map(|r| result_msg(xid, r)) });
                }
            }
        }
        // One connection of the listener at a time polls: that keeps the runtime awake for
        // all of them, and bounds the CPU spent to one thread for one window per reply.
        if let Some(window) = config.busy_poll.filter(|_| served) {
            if let Some(_turn) = PollTurn::take(&poller.turn) {
                let polled = busy_poll(
                    &mut stream,
                    &mut reader,
                    &mut deferred,
                    window,
                    &poller,
                    &stop_flag,
                )
                .await;
                match polled {
                    Polled::Data => {
                        admitted.touch();
                        continue;
                    }
                    Polled::Reply(reply) => {
                        tokio::select! {
                            _ = &mut stop_signal => break End::Stop,
                            r = write_framed(&mut stream, &mut out, &reply) => if let Err(e) = r {
                                debug!(%peer, error = %e, "TCP write failed");
                                break End::Closed;
                            },
                        }
                        continue;
                    }
                    Polled::Nothing => {}
                    Polled::End => break End::Closed,
                }
            }
        }
        served = false;
        tokio::select! {
            biased;
            _ = &mut stop_signal => break End::Stop,
            _ = &mut evicted => {
                debug!(%peer, "TCP connection closed to make room for a new one");
                break End::Closed;
            }
            Some(done) = deferred.join_next(), if !deferred.is_empty() => {
                // A reply dropped by its program, or a task lost to shutdown: nothing to send.
                if let Ok(Some(reply)) = done {
                    tokio::select! {
                        _ = &mut stop_signal => break End::Stop,
                        r = write_framed(&mut stream, &mut out, &reply) => if let Err(e) = r {
                            debug!(%peer, error = %e, "TCP write failed");
                            break End::Closed;
                        },
                    }
                }
            }
            r = reader.read_from(&mut stream) => match r {
                Ok(0) => {
                    if !reader.between_records() {
                        record_error(peer, &RecordError::Truncated);
                    }
                    break End::Closed;
                }
                Ok(_) => {
                    admitted.touch();
                }
                Err(e) => {
                    record_error(peer, &RecordError::Io(e));
                    break End::Closed;
                }
            },
            _ = &mut idle_timer, if idle.is_some() => {
                let t = idle.unwrap_or(far);
                let due = last_record + t;
                if Instant::now() >= due {
                    debug!(%peer, "idle TCP connection closed");
                    break End::Closed;
                }
                idle_timer.as_mut().reset(due);
            }
        }
    };
    if let End::Stop = end {
        debug!(%peer, "TCP connection closed for shutdown");
    }
    // Deferred replies for a closed connection have nowhere to go.
    deferred.shutdown().await;
}

/// What the connections of one listener share for busy polling.
#[derive(Default)]
struct Poller {
    /// Taken by the connection that polls.
    turn: AtomicBool,
    /// Records answered on any connection: when another connection is served, the runtime
    /// is awake anyway and polling would only take time from it.
    records: AtomicU64,
}

/// The right to busy-poll, given back when dropped (also if the connection task is aborted
/// mid-poll, so the listener never loses it).
struct PollTurn<'a>(&'a AtomicBool);

impl<'a> PollTurn<'a> {
    fn take(flag: &'a AtomicBool) -> Option<Self> {
        (!flag.swap(true, Ordering::Acquire)).then_some(Self(flag))
    }
}

impl Drop for PollTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

enum Polled {
    Data,
    /// A deferred reply became ready: written before anything else is read.
    Reply(Vec<u8>),
    Nothing,
    End,
}

/// Keeps looking for the next record, or for a deferred reply of this connection, for up to
/// `window` instead of sleeping at once. On a virtual machine a sleeping CPU can take tens
/// of microseconds to wake, which a client that sends its next call right after each reply
/// pays on every call. A call answered later (on another thread) is the common case right
/// after a record was served, so its reply must end the poll as soon as it is ready, not
/// wait out the window.
async fn busy_poll(
    stream: &mut TcpStream,
    reader: &mut RecordReader,
    deferred: &mut JoinSet<Option<Vec<u8>>>,
    window: Duration,
    poller: &Poller,
    stop: &watch::Receiver<bool>,
) -> Polled {
    let until = std::time::Instant::now() + window;
    let records = poller.records.load(Ordering::Relaxed);
    loop {
        // Yielding lets the runtime poll for readiness and run other connections.
        tokio::task::yield_now().await;
        if *stop.borrow() || poller.records.load(Ordering::Relaxed) != records {
            return Polled::Nothing;
        }
        while let Some(done) = deferred.try_join_next() {
            // A reply dropped by its program, or a task lost to shutdown: nothing to send.
            if let Ok(Some(reply)) = done {
                return Polled::Reply(reply);
            }
        }
        match reader.try_read_from(stream) {
            Ok(0) => return Polled::Nothing,
            Ok(_) => return Polled::Data,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= until {
                    return Polled::Nothing;
                }
            }
            Err(e) => {
                debug!(error = %e, "TCP connection ended");
                return Polled::End;
            }
        }
    }
}

fn record_error(peer: SocketAddr, e: &RecordError) {
    match e {
        RecordError::TooLarge { size, limit } => {
            warn!(%peer, size, limit, "TCP record over the limit; closing connection");
        }
        RecordError::OverBudget { limit } => {
            warn!(%peer, limit, "unfinished TCP records of all connections over their shared budget; closing this connection");
        }
        e => debug!(%peer, error = %e, "TCP connection ended"),
    }
}

/// Replies up to this size are framed by copying into one buffer (one plain write); larger
/// ones are written with their record mark as a second buffer.
const COPY_LIMIT: usize = 64 * 1024;

/// Writes `head` then `body`, as few system calls as the socket allows.
async fn write_all_vectored(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    let total = head.len() + body.len();
    let mut done = 0;
    while done < total {
        let n = if done < head.len() {
            let bufs = [io::IoSlice::new(&head[done..]), io::IoSlice::new(body)];
            stream.write_vectored(&bufs).await?
        } else {
            stream.write(&body[done - head.len()..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// Writes `msg` as one record (several fragments only past 2 GiB) with one write call in the
/// common case, framing it in `buf`, which keeps its capacity for the next reply.
async fn write_framed(stream: &mut TcpStream, buf: &mut Vec<u8>, msg: &[u8]) -> io::Result<()> {
    if msg.len() > COPY_LIMIT && msg.len() <= MAX_FRAGMENT {
        // A large reply (READ data) is sent from where it lies, its record mark beside it:
        // copying a megabyte to put four bytes in front of it costs more than the write.
        let mark = (msg.len() as u32 | LAST_FRAGMENT).to_be_bytes();
        return write_all_vectored(stream, &mark, msg).await;
    }
    buf.clear();
    encode_record_into(buf, msg, MAX_FRAGMENT);
    let r = stream.write_all(buf).await;
    if buf.capacity() > READ_SIZE * 4 {
        *buf = Vec::new();
    }
    r
}

#[cfg(test)]
mod tests {
    use crate::record::{encode_record, read_record};
    use crate::rpc::{AcceptStatus, CallHeader, OpaqueAuth, ReplyHeader, ReplyStatus};
    use crate::server::{
        decode_args, CallContext, FileTail, ProcError, Reply, ReplySender, RpcProgram, RpcServer,
        ServerConfig,
    };
    use crate::xdr::{to_bytes, Decoder};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    const PROG: u32 = 0x2000_0177;
    const NOW: u32 = 0;
    const LATER: u32 = 1;
    const STEP: Duration = Duration::from_secs(10);

    /// Answers NOW with its argument at once; holds LATER until the test releases it.
    #[derive(Default)]
    struct Held {
        senders: Mutex<Vec<ReplySender>>,
    }

    impl RpcProgram for Held {
        fn program(&self) -> u32 {
            PROG
        }
        fn versions(&self) -> (u32, u32) {
            (1, 1)
        }
        fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            let v: u32 = decode_args(args)?;
            match ctx.proc_ {
                NOW => Ok(Reply::encode(&v)),
                LATER => {
                    let (reply, sender) = Reply::deferred();
                    self.senders.lock().unwrap().push(sender);
                    Ok(reply)
                }
                _ => Err(ProcError::ProcUnavail),
            }
        }
    }

    fn call(xid: u32, proc_: u32, v: u32) -> Vec<u8> {
        let msg =
            CallHeader::new(xid, PROG, 1, proc_, OpaqueAuth::none()).to_message(&to_bytes(&v));
        encode_record(&msg, 1 << 20)
    }

    async fn reply(s: &mut TcpStream) -> (u32, u32) {
        let rec = timeout(STEP, read_record(s, 1 << 16))
            .await
            .expect("reply in time")
            .expect("readable reply")
            .expect("a reply, not end of stream");
        let mut d = Decoder::new(&rec);
        let h = ReplyHeader::decode(&mut d).unwrap();
        assert!(matches!(
            h.status,
            ReplyStatus::Accepted {
                stat: AcceptStatus::Success,
                ..
            }
        ));
        (h.xid, d.get_u32().unwrap())
    }

    /// BLOCK blocks its thread until a NOW call has been served (or 10 s pass).
    const BLOCK: u32 = 2;

    struct Blocking {
        served_now: Mutex<std::sync::mpsc::Receiver<()>>,
        now_tx: Mutex<std::sync::mpsc::Sender<()>>,
        blocked_on: Mutex<Vec<Option<String>>>,
    }

    impl RpcProgram for Blocking {
        fn program(&self) -> u32 {
            PROG
        }
        fn versions(&self) -> (u32, u32) {
            (1, 1)
        }
        fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            let v: u32 = decode_args(args)?;
            match ctx.proc_ {
                NOW => {
                    let _ = self.now_tx.lock().unwrap().send(());
                    Ok(Reply::encode(&v))
                }
                BLOCK => {
                    self.blocked_on
                        .lock()
                        .unwrap()
                        .push(std::thread::current().name().map(String::from));
                    // Holds the thread it runs on, as a slow call would.
                    let got = self.served_now.lock().unwrap().recv_timeout(STEP).is_ok();
                    Ok(Reply::encode(&u32::from(got)))
                }
                _ => Err(ProcError::ProcUnavail),
            }
        }
    }

    // Connections reaching 127.0.0.2 run on a runtime of their own.
    struct Second(tokio::runtime::Runtime);

    impl crate::server::Placement for Second {
        fn place(&self, local: std::net::SocketAddr) -> Option<(u64, tokio::runtime::Handle)> {
            (local.ip() == std::net::Ipv4Addr::new(127, 0, 0, 2))
                .then(|| (2, self.0.handle().clone()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_placed_connection_runs_apart_from_the_listeners_runtime() {
        // One worker each: if the connection to the second address ran on the listener's
        // worker, its blocked call would keep the first address's call from being served
        // and would time out.
        let second = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("placed-worker")
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let prog = Arc::new(Blocking {
            served_now: Mutex::new(rx),
            now_tx: Mutex::new(tx),
            blocked_on: Mutex::new(Vec::new()),
        });
        let server = RpcServer::builder(ServerConfig::default())
            .program(prog.clone())
            .tcp("127.0.0.1:0".parse().unwrap())
            .tcp("127.0.0.2:0".parse().unwrap())
            .udp("127.0.0.2:0".parse().unwrap())
            .placement(Arc::new(Second(second)))
            .start()
            .await
            .unwrap();
        let (first, placed) = (server.tcp_addrs()[0], server.tcp_addrs()[1]);
        let mut p = TcpStream::connect(placed).await.unwrap();
        p.write_all(&call(1, BLOCK, 0)).await.unwrap();
        // The blocking call is running before the other is sent.
        let t = std::time::Instant::now();
        while prog.blocked_on.lock().unwrap().is_empty() {
            assert!(t.elapsed() < STEP, "the blocking call never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut f = TcpStream::connect(first).await.unwrap();
        f.write_all(&call(2, NOW, 7)).await.unwrap();
        assert_eq!(reply(&mut f).await, (2, 7));
        assert_eq!(
            reply(&mut p).await,
            (1, 1),
            "the blocked call saw the other served"
        );
        assert_eq!(
            prog.blocked_on.lock().unwrap().as_slice(),
            [Some("placed-worker".to_string())],
            "the placed connection's call ran on the placed runtime"
        );
        // A UDP socket bound to the placed address is served there as well.
        let udp_placed = server.udp_addrs()[0];
        let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let msg =
            CallHeader::new(3, PROG, 1, BLOCK, OpaqueAuth::none()).to_message(&to_bytes(&0u32));
        u.send_to(&msg, udp_placed).await.unwrap();
        let t = std::time::Instant::now();
        while prog.blocked_on.lock().unwrap().len() < 2 {
            assert!(t.elapsed() < STEP, "the blocking UDP call never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f.write_all(&call(4, NOW, 8)).await.unwrap();
        assert_eq!(reply(&mut f).await, (4, 8));
        let mut buf = [0u8; 512];
        let n = timeout(STEP, u.recv(&mut buf))
            .await
            .expect("UDP reply in time")
            .unwrap();
        let mut d = Decoder::new(&buf[..n]);
        assert_eq!(ReplyHeader::decode(&mut d).unwrap().xid, 3);
        assert_eq!(
            d.get_u32().unwrap(),
            1,
            "the blocked UDP call saw the other served"
        );
        assert_eq!(
            prog.blocked_on.lock().unwrap()[1].as_deref(),
            Some("placed-worker")
        );
        // Shutdown ends the placed connection and socket too.
        timeout(STEP, server.shutdown())
            .await
            .expect("shutdown in time");
    }

    #[tokio::test]
    async fn a_busy_polling_connection_neither_stalls_others_nor_misses_its_end() {
        // A window far longer than any step below: a poller that kept the runtime to itself,
        // or missed data or the end of its stream, would show as a step taking the window.
        let window = Duration::from_secs(5);
        let config = ServerConfig {
            busy_poll: Some(window),
            ..ServerConfig::default()
        };
        let server = RpcServer::builder(config)
            .program(Arc::new(Held::default()))
            .tcp("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let addr = server.tcp_addrs()[0];
        let quick = Duration::from_secs(2);
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        a.write_all(&call(1, NOW, 11)).await.unwrap();
        assert_eq!(reply(&mut a).await, (1, 11));
        // `a` now polls; `b` is served meanwhile, and so is `a`'s next call.
        let started = std::time::Instant::now();
        b.write_all(&call(2, NOW, 22)).await.unwrap();
        assert_eq!(reply(&mut b).await, (2, 22));
        a.write_all(&call(3, NOW, 33)).await.unwrap();
        assert_eq!(reply(&mut a).await, (3, 33));
        // A call split across writes while polling is reassembled.
        let wire = call(4, NOW, 44);
        let (head, tail) = wire.split_at(6);
        a.write_all(head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.write_all(tail).await.unwrap();
        assert_eq!(reply(&mut a).await, (4, 44));
        assert!(
            started.elapsed() < quick,
            "a polling connection held up the others"
        );
        // Closing while the server polls ends the connection at once; so does shutdown.
        a.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let closed = timeout(quick, tokio::io::AsyncReadExt::read(&mut a, &mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "server kept a closed connection"
        );
        b.write_all(&call(5, NOW, 55)).await.unwrap();
        assert_eq!(reply(&mut b).await, (5, 55));
        let stopping = std::time::Instant::now();
        timeout(STEP, server.shutdown()).await.expect("shutdown");
        assert!(
            stopping.elapsed() < quick,
            "shutdown waited for a polling window"
        );
    }

    #[tokio::test]
    async fn deferred_replies_interleave_with_a_burst_of_immediate_ones() {
        let held = Arc::new(Held::default());
        let server = RpcServer::builder(ServerConfig::default())
            .program(held.clone())
            .tcp("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        // Two held calls, then a burst of immediate ones in a single write, so many records
        // arrive in one read.
        let mut wire = call(1, LATER, 10);
        wire.extend(call(2, LATER, 20));
        for x in 3..200u32 {
            wire.extend(call(x, NOW, x * 3));
        }
        s.write_all(&wire).await.unwrap();
        for x in 3..200u32 {
            assert_eq!(reply(&mut s).await, (x, x * 3));
        }
        let mut senders = std::mem::take(&mut *held.senders.lock().unwrap());
        assert_eq!(senders.len(), 2);
        // A reply given up by its program sends nothing; the other still arrives.
        let second = senders.pop().unwrap();
        drop(senders);
        assert!(second.send(to_bytes(&40u32)));
        assert_eq!(reply(&mut s).await, (2, 40));
        // The connection keeps serving after both.
        s.write_all(&call(500, NOW, 7)).await.unwrap();
        assert_eq!(reply(&mut s).await, (500, 7));
        timeout(STEP, server.shutdown()).await.expect("shutdown");
    }

    /// Answers with its argument (a length) and then that many bytes of a file that holds
    /// 300,001 bytes (byte i is i % 251), from offset 1.
    struct FromFile(std::path::PathBuf);

    impl RpcProgram for FromFile {
        fn program(&self) -> u32 {
            PROG
        }
        fn versions(&self) -> (u32, u32) {
            (1, 1)
        }
        fn call(&self, _: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            let len: u32 = decode_args(args)?;
            let fd = Arc::new(std::fs::File::open(&self.0).unwrap().into());
            let mut msg = vec![0u8; crate::rpc::SUCCESS_HEADER_LEN];
            msg.extend_from_slice(&len.to_be_bytes());
            let tail = FileTail {
                fd,
                offset: 1,
                len: len as usize,
            };
            Ok(Reply::NowAfterHeaderWithFile(msg, tail))
        }
    }

    /// A reply that ends with a file's bytes is one record: the results, the bytes (sent
    /// from the file on TCP, read in on UDP) and their padding. A file shorter than the
    /// reply promised ends the TCP connection rather than send a record it cannot finish,
    /// and gets no UDP reply; both transports keep serving.
    #[tokio::test]
    async fn a_reply_ending_with_a_file_is_one_record_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let server = RpcServer::builder(ServerConfig::default())
            .program(Arc::new(FromFile(path)))
            .tcp("127.0.0.1:0".parse().unwrap())
            .udp("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let body = |rec: &[u8], xid: u32| -> Vec<u8> {
            let mut d = Decoder::new(rec);
            let h = ReplyHeader::decode(&mut d).unwrap();
            assert_eq!(h.xid, xid);
            let bytes = d
                .get_opaque(1 << 20)
                .expect("an opaque of the file's bytes");
            assert_eq!(d.remaining(), 0, "nothing after the padding");
            bytes.to_vec()
        };
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        for (xid, len) in [
            (1u32, 300_000u32),
            (2, 65_537),
            (3, 65_538),
            (4, 65_539),
            (5, 0),
        ] {
            s.write_all(&call(xid, NOW, len)).await.unwrap();
            let rec = timeout(STEP, read_record(&mut s, 1 << 20))
                .await
                .expect("reply in time")
                .unwrap()
                .expect("a reply");
            assert_eq!(body(&rec, xid), &data[1..1 + len as usize], "length {len}");
        }
        // One byte more than the file has after offset 1.
        s.write_all(&call(6, NOW, 300_001)).await.unwrap();
        let end = timeout(STEP, read_record(&mut s, 1 << 20))
            .await
            .expect("the connection ends in time");
        assert!(
            !matches!(end, Ok(Some(_))),
            "a record promising bytes the file lacks was sent whole"
        );
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        s.write_all(&call(7, NOW, 10)).await.unwrap();
        let rec = timeout(STEP, read_record(&mut s, 1 << 20))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(body(&rec, 7), &data[1..11]);

        let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        u.connect(server.udp_addrs()[0]).await.unwrap();
        let udp_call = |xid: u32, len: u32| {
            CallHeader::new(xid, PROG, 1, NOW, OpaqueAuth::none()).to_message(&to_bytes(&len))
        };
        let mut buf = vec![0u8; 65_536];
        u.send(&udp_call(8, 9_999)).await.unwrap();
        let n = timeout(STEP, u.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(body(&buf[..n], 8), &data[1..10_000]);
        u.send(&udp_call(9, 300_001)).await.unwrap();
        u.send(&udp_call(10, 3)).await.unwrap();
        let n = timeout(STEP, u.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(
            body(&buf[..n], 10),
            &data[1..4],
            "no reply to the call the file could not finish"
        );
        timeout(STEP, server.shutdown()).await.expect("shutdown");
    }
}
