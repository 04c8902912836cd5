//! NLM test clients: client hosts on their own loopback addresses
//! (127.0.0.N), each with a portmapper and an NLM and NSM callback service
//! that records what it receives, and an RPC client whose calls come from
//! that address.
//!
//! It exists so that every crate's NLM tests build their calls the same way
//! (a [`LockCall`] builder instead of positional booleans) and so that a
//! host a test leaves behind, because the test failed half way, releases
//! what it holds and stops listening when it is dropped, instead of leaking
//! locks into whatever the process asserts next.

use lockd_user::portmap::Portmapper;
use lockd_user::proto::nlm::{proc_, v3, v4, NLM4_VERS, NLM_PROG, NLM_VERS, NLM_VERSX};
use lockd_user::proto::nsm::{self, SM_PROG, SM_VERS};
use lockd_user::server::{decode_args, CallContext, ProcError, Reply, RpcProgram};
use lockd_user::xdr::{to_bytes, Decoder};
use lockd_user::{ClientConfig, RpcClient, RpcServer, ServerConfig, Transport};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A step that hangs fails instead.
pub const STEP: Duration = Duration::from_secs(10);

/// What a client host's services received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// GRANTED or GRANTED_MSG (with its version and whether it was the _MSG form).
    Granted {
        vers: u32,
        msg: bool,
        args: v4::TestArgs,
    },
    /// A *_RES message: procedure number and raw results.
    Res { proc_: u32, body: Vec<u8> },
    /// SM_NOTIFY to the client's status monitor.
    Notify(nsm::StatChge),
}

/// The NLM and NSM programs of a client host.
pub struct ClientServices {
    tx: mpsc::UnboundedSender<Received>,
    /// Status to answer GRANTED with (version 4 value).
    pub grant_answer: Mutex<v4::Stats>,
    /// Where GRANTED_RES goes (the server's NLM UDP address) and from which address;
    /// also the server a dropped host releases its locks at (see [`ClientHost::attach`]).
    pub server: Mutex<Option<(SocketAddr, IpAddr)>>,
}

struct NlmCb(Arc<ClientServices>);
struct NsmCb(Arc<ClientServices>);

impl RpcProgram for NlmCb {
    fn program(&self) -> u32 {
        NLM_PROG
    }
    fn versions(&self) -> (u32, u32) {
        (NLM_VERS, NLM4_VERS)
    }
    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        let s = &self.0;
        let answer = *s.grant_answer.lock().unwrap();
        match ctx.proc_ {
            proc_::NULL => Ok(Reply::Now(vec![])),
            proc_::GRANTED | proc_::GRANTED_MSG => {
                let msg = ctx.proc_ == proc_::GRANTED_MSG;
                let a: v4::TestArgs = if ctx.vers == NLM4_VERS {
                    decode_args(args)?
                } else {
                    let a: v3::TestArgs = decode_args(args)?;
                    v4::TestArgs {
                        cookie: a.cookie,
                        exclusive: a.exclusive,
                        alock: v4::Lock {
                            caller_name: a.alock.caller_name,
                            fh: a.alock.fh,
                            oh: a.alock.oh,
                            svid: a.alock.svid,
                            l_offset: a.alock.l_offset.into(),
                            l_len: a.alock.l_len.into(),
                        },
                    }
                };
                let cookie = a.cookie.clone();
                let vers = ctx.vers;
                let _ = s.tx.send(Received::Granted { vers, msg, args: a });
                let body = if vers == NLM4_VERS {
                    to_bytes(&v4::Res {
                        cookie,
                        stat: answer,
                    })
                } else {
                    to_bytes(&v3::Res {
                        cookie,
                        stat: v3::Stats::from_wire(answer.to_wire()).unwrap(),
                    })
                };
                if !msg {
                    return Ok(Reply::Now(body));
                }
                let target = *s.server.lock().unwrap();
                if let Some((server, from)) = target {
                    tokio::spawn(async move {
                        let c = RpcClient::udp(server, from_addr(from)).await.unwrap();
                        c.send_oneway(NLM_PROG, vers, proc_::GRANTED_RES, &body)
                            .await
                            .unwrap();
                    });
                }
                Ok(Reply::None)
            }
            p @ proc_::TEST_RES..=proc_::GRANTED_RES => {
                let _ = s.tx.send(Received::Res {
                    proc_: p,
                    body: args.rest().to_vec(),
                });
                Ok(Reply::None)
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

impl RpcProgram for NsmCb {
    fn program(&self) -> u32 {
        SM_PROG
    }
    fn versions(&self) -> (u32, u32) {
        (SM_VERS, SM_VERS)
    }
    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        match ctx.proc_ {
            nsm::proc_::NULL => Ok(Reply::Now(vec![])),
            nsm::proc_::NOTIFY => {
                let a: nsm::StatChge = decode_args(args)?;
                let _ = self.0.tx.send(Received::Notify(a));
                Ok(Reply::Now(vec![]))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

pub fn from_addr(ip: IpAddr) -> ClientConfig {
    ClientConfig {
        retransmit: Duration::from_millis(200),
        total_timeout: Duration::from_secs(5),
        local_addr: Some(SocketAddr::new(ip, 0)),
        ..ClientConfig::default()
    }
}

/// A port free on every test client address, for their portmappers.
pub fn shared_port(ips: &[IpAddr]) -> u16 {
    'outer: for _ in 0..50 {
        let s = UdpSocket::bind(SocketAddr::new(ips[0], 0)).unwrap();
        let port = s.local_addr().unwrap().port();
        drop(s);
        for ip in ips {
            let free = UdpSocket::bind(SocketAddr::new(*ip, port)).is_ok()
                && std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok();
            if !free {
                continue 'outer;
            }
        }
        return port;
    }
    panic!("no port free on all test addresses");
}

/// A client host at `ip`: its portmapper on `pm_port`, its NLM and NSM services, and what
/// they receive.
///
/// Dropped, it releases everything it holds at the server it is attached to
/// (NLM FREE_ALL from its own address, which the server believes) and stops
/// its services; [`ClientHost::stop`] does the same in order, and
/// [`ClientHost::vanish`] stops without releasing, for tests of a host that
/// goes away.
pub struct ClientHost {
    pub ip: IpAddr,
    pub name: String,
    pub services: Arc<ClientServices>,
    pub rx: mpsc::UnboundedReceiver<Received>,
    servers: Vec<RpcServer>,
}

impl ClientHost {
    pub async fn start(ip: &str, name: &str, pm_port: u16) -> Self {
        let ip: IpAddr = ip.parse().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let services = Arc::new(ClientServices {
            tx,
            grant_answer: Mutex::new(v4::Stats::Granted),
            server: Mutex::new(None),
        });
        let svc = RpcServer::builder(ServerConfig::default())
            .program(Arc::new(NlmCb(services.clone())))
            .program(Arc::new(NsmCb(services.clone())))
            .udp(SocketAddr::new(ip, 0))
            .start()
            .await
            .unwrap();
        let pm = Arc::new(Portmapper::new());
        for v in [NLM_VERS, NLM_VERSX, NLM4_VERS] {
            pm.set_local(NLM_PROG, v, Transport::Udp, svc.udp_addrs()[0]);
        }
        pm.set_local(SM_PROG, SM_VERS, Transport::Udp, svc.udp_addrs()[0]);
        let pms = RpcServer::builder(ServerConfig::default())
            .program(pm)
            .udp(SocketAddr::new(ip, pm_port))
            .start()
            .await
            .unwrap();
        Self {
            ip,
            name: name.to_string(),
            services,
            rx,
            servers: vec![svc, pms],
        }
    }

    /// Where its NLM and status services listen (UDP).
    pub fn services_addr(&self) -> SocketAddr {
        self.servers[0].udp_addrs()[0]
    }

    /// Waits for the next thing received.
    pub async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Names `server` (the NLM UDP address of the server under test) as the
    /// server this host sends GRANTED_RES to and releases its locks at when it
    /// is stopped or dropped.
    pub fn attach(&self, server: SocketAddr) {
        *self.services.server.lock().unwrap() = Some((server, self.ip));
    }

    /// Releases what the host holds at its server (FREE_ALL, answered) and
    /// stops its services: the orderly end of a test.
    pub async fn stop(mut self) {
        if let Some(server) = self.attached() {
            // A server already stopped does not answer; the release is then moot.
            let _ = free_all(server, self.ip, &self.name).await;
        }
        self.shutdown().await;
    }

    /// Stops the host's services without releasing anything at the server:
    /// a host that has gone away (crashed, cut off).
    pub async fn vanish(mut self) {
        *self.services.server.lock().unwrap() = None;
        self.shutdown().await;
    }

    fn attached(&self) -> Option<SocketAddr> {
        self.services.server.lock().unwrap().map(|(s, _)| s)
    }

    async fn shutdown(&mut self) {
        *self.services.server.lock().unwrap() = None;
        for s in self.servers.drain(..) {
            tokio::time::timeout(STEP, s.shutdown()).await.unwrap();
        }
    }
}

impl Drop for ClientHost {
    fn drop(&mut self) {
        let servers = std::mem::take(&mut self.servers);
        let server = (self.services.server.lock())
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (ip, name) = (self.ip, self.name.clone());
        let on_multi_thread = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if let Some(rt) = on_multi_thread {
            // Drop cannot await; a multi-threaded runtime lets this thread block
            // while its workers go on serving (the server under test may run on
            // them). The release is answered and the services are closed before
            // the drop returns, so the test's next assertion sees neither. A
            // failure here is caught: this may run while a failed test unwinds.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::block_in_place(|| {
                    if let Some((server, _)) = server {
                        let _ = rt.block_on(free_all(server, ip, &name));
                    }
                    for s in servers {
                        let _ = rt.block_on(tokio::time::timeout(STEP, s.shutdown()));
                    }
                })
            }));
            return;
        }
        // No runtime to borrow: dropping the servers aborts their tasks (which
        // closes their sockets), and the release runs on a runtime of its own,
        // on a thread of its own; on a single-threaded runtime it is not waited
        // for, since the server under test may need this very thread to answer.
        drop(servers);
        let Some((server, _)) = server else {
            return;
        };
        let release = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(free_all(server, ip, &name));
            }
        });
        if tokio::runtime::Handle::try_current().is_err() {
            let _ = release.join();
        }
    }
}

/// How long a release at the end of a host's life may take: a server that has
/// already stopped never answers.
const RELEASE_WITHIN: Duration = Duration::from_secs(2);

/// NLM v4 FREE_ALL for `name`, sent from `ip` to `server` and answered.
pub async fn free_all(server: SocketAddr, ip: IpAddr, name: &str) -> Result<(), String> {
    let config = ClientConfig {
        retransmit: Duration::from_millis(200),
        total_timeout: RELEASE_WITHIN,
        local_addr: Some(SocketAddr::new(ip, 0)),
        ..ClientConfig::default()
    };
    let c = RpcClient::udp(server, config)
        .await
        .map_err(|e| e.to_string())?;
    let args = v4::Notify {
        name: name.to_string(),
        state: 0,
    };
    let call = c.call::<_, ()>(NLM_PROG, NLM4_VERS, proc_::FREE_ALL, &args);
    tokio::time::timeout(RELEASE_WITHIN, call)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())
}

/// Whether a lock is shared (read) or exclusive (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Mode {
    /// The `exclusive` flag of the NLM arguments.
    pub fn exclusive(self) -> bool {
        self == Mode::Exclusive
    }
}

/// The arguments of an NLM v4 LOCK, built by name rather than by position:
/// `LockCall::exclusive(l).block().reclaim()`.
#[derive(Debug, Clone)]
pub struct LockCall {
    lock: v4::Lock,
    mode: Mode,
    block: bool,
    reclaim: bool,
    state: i32,
    cookie: Vec<u8>,
}

impl LockCall {
    /// A non-blocking, non-reclaim request for `lock` in `mode`.
    pub fn new(lock: v4::Lock, mode: Mode) -> Self {
        Self {
            lock,
            mode,
            block: false,
            reclaim: false,
            state: 1,
            cookie: b"lk".to_vec(),
        }
    }

    /// A shared (read) lock.
    pub fn shared(lock: v4::Lock) -> Self {
        Self::new(lock, Mode::Shared)
    }

    /// An exclusive (write) lock.
    pub fn exclusive(lock: v4::Lock) -> Self {
        Self::new(lock, Mode::Exclusive)
    }

    /// The request waits (queued, granted later by a GRANTED callback).
    pub fn block(mut self) -> Self {
        self.block = true;
        self
    }

    /// Waits or not, as `block` says.
    pub fn blocking(mut self, block: bool) -> Self {
        self.block = block;
        self
    }

    /// The request reclaims a lock held before the server restarted.
    pub fn reclaim(mut self) -> Self {
        self.reclaim = true;
        self
    }

    /// Reclaims or not, as `reclaim` says.
    pub fn reclaiming(mut self, reclaim: bool) -> Self {
        self.reclaim = reclaim;
        self
    }

    /// The client's NSM state number sent with the request (default 1).
    pub fn state(mut self, state: i32) -> Self {
        self.state = state;
        self
    }

    /// The cookie sent, which the reply must echo (default `lk`).
    pub fn cookie(mut self, cookie: &[u8]) -> Self {
        self.cookie = cookie.to_vec();
        self
    }

    /// The wire arguments.
    pub fn args(&self) -> v4::LockArgs {
        v4::LockArgs {
            cookie: self.cookie.clone(),
            block: self.block,
            exclusive: self.mode.exclusive(),
            alock: self.lock.clone(),
            reclaim: self.reclaim,
            state: self.state,
        }
    }
}

/// An NLM client calling from a client host's address.
pub struct Nlm {
    pub c: RpcClient,
    pub name: String,
}

impl Nlm {
    pub async fn udp(server: SocketAddr, from: IpAddr, name: &str) -> Self {
        Self {
            c: RpcClient::udp(server, from_addr(from)).await.unwrap(),
            name: name.into(),
        }
    }

    pub async fn tcp(server: SocketAddr, from: IpAddr, name: &str) -> Self {
        Self {
            c: RpcClient::tcp(server, from_addr(from)).await.unwrap(),
            name: name.into(),
        }
    }

    pub fn lock4(&self, fh: &[u8], svid: i32, off: u64, len: u64) -> v4::Lock {
        v4::Lock {
            caller_name: self.name.clone(),
            fh: fh.to_vec(),
            oh: format!("{}-{svid}", self.name).into_bytes(),
            svid,
            l_offset: off,
            l_len: len,
        }
    }

    pub fn lock3(&self, fh: &[u8], svid: i32, off: u32, len: u32) -> v3::Lock {
        v3::Lock {
            caller_name: self.name.clone(),
            fh: fh.to_vec(),
            oh: format!("{}-{svid}", self.name).into_bytes(),
            svid,
            l_offset: off,
            l_len: len,
        }
    }

    /// Sends LOCK (version 4) as `call` describes and returns its status.
    pub async fn lock(&self, call: LockCall) -> v4::Stats {
        lock_with(&self.c, &call).await
    }

    pub async fn unlock(&self, l: v4::Lock) -> v4::Stats {
        unlock_with(&self.c, l).await
    }

    pub async fn test(&self, l: v4::Lock, mode: Mode) -> v4::TestReply {
        let r: v4::TestRes = tokio::time::timeout(
            STEP,
            self.c.call(
                NLM_PROG,
                NLM4_VERS,
                proc_::TEST,
                &v4::TestArgs {
                    cookie: b"ts".to_vec(),
                    exclusive: mode.exclusive(),
                    alock: l,
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.cookie, b"ts");
        r.stat
    }

    pub async fn cancel(&self, l: v4::Lock, mode: Mode) -> v4::Stats {
        let r: v4::Res = tokio::time::timeout(
            STEP,
            self.c.call(
                NLM_PROG,
                NLM4_VERS,
                proc_::CANCEL,
                &v4::CancArgs {
                    cookie: b"cn".to_vec(),
                    block: true,
                    exclusive: mode.exclusive(),
                    alock: l,
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();
        r.stat
    }
}

/// LOCK (version 4) through `c` as `call` describes, answered within [`STEP`]
/// with the call's cookie; its status.
pub async fn lock_with(c: &RpcClient, call: &LockCall) -> v4::Stats {
    let r: v4::Res =
        tokio::time::timeout(STEP, c.call(NLM_PROG, NLM4_VERS, proc_::LOCK, &call.args()))
            .await
            .expect("LOCK answered in time")
            .expect("LOCK answered");
    assert_eq!(r.cookie, call.cookie, "LOCK reply with another cookie");
    r.stat
}

/// UNLOCK (version 4) of `l` through `c`, answered within [`STEP`]; its status.
pub async fn unlock_with(c: &RpcClient, l: v4::Lock) -> v4::Stats {
    let r: v4::Res = tokio::time::timeout(
        STEP,
        c.call(
            NLM_PROG,
            NLM4_VERS,
            proc_::UNLOCK,
            &v4::UnlockArgs {
                cookie: b"ul".to_vec(),
                alock: l,
            },
        ),
    )
    .await
    .expect("UNLOCK answered in time")
    .expect("UNLOCK answered");
    r.stat
}
