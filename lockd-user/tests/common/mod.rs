//! Test clients for the lock service: client hosts on their own loopback addresses
//! (127.0.0.N), each with a portmapper and an NLM callback service that records what it
//! receives, and an RPC client whose calls come from that address.

#![allow(dead_code)]

use lockd_user::exports::Exports;
use lockd_user::portmap::Portmapper;
use lockd_user::proto::nlm::{proc_, v3, v4, NLM4_VERS, NLM_PROG, NLM_VERS, NLM_VERSX};
use lockd_user::proto::nsm::{self, SM_PROG, SM_VERS};
use lockd_user::server::{decode_args, CallContext, ProcError, Reply, RpcProgram};
use lockd_user::xdr::{to_bytes, Decoder};
use lockd_user::{ClientConfig, Export, FhKey, RpcClient, RpcServer, ServerConfig, Transport};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
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
    /// Where GRANTED_RES goes (the server's NLM UDP address) and from which address.
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

    pub async fn stop(self) {
        for s in self.servers {
            tokio::time::timeout(STEP, s.shutdown()).await.unwrap();
        }
    }
}

/// The handle of `path` under export `export` with the key of `state_dir`.
pub fn fh_of(state_dir: &Path, export: Export, path: &Path) -> Vec<u8> {
    let key = FhKey::load_or_create(state_dir).unwrap();
    let ex = Exports::open(vec![export.clone()]).unwrap();
    lockd_user::make_fh(&key, ex.get(export.id).unwrap(), path).unwrap()
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

    pub async fn lock(
        &self,
        l: v4::Lock,
        exclusive: bool,
        block: bool,
        reclaim: bool,
    ) -> v4::Stats {
        let r: v4::Res = tokio::time::timeout(
            STEP,
            self.c.call(
                NLM_PROG,
                NLM4_VERS,
                proc_::LOCK,
                &v4::LockArgs {
                    cookie: b"lk".to_vec(),
                    block,
                    exclusive,
                    alock: l,
                    reclaim,
                    state: 1,
                },
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.cookie, b"lk");
        r.stat
    }

    pub async fn unlock(&self, l: v4::Lock) -> v4::Stats {
        let r: v4::Res = tokio::time::timeout(
            STEP,
            self.c.call(
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
        .unwrap()
        .unwrap();
        r.stat
    }

    pub async fn test(&self, l: v4::Lock, exclusive: bool) -> v4::TestReply {
        let r: v4::TestRes = tokio::time::timeout(
            STEP,
            self.c.call(
                NLM_PROG,
                NLM4_VERS,
                proc_::TEST,
                &v4::TestArgs {
                    cookie: b"ts".to_vec(),
                    exclusive,
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

    pub async fn cancel(&self, l: v4::Lock, exclusive: bool) -> v4::Stats {
        let r: v4::Res = tokio::time::timeout(
            STEP,
            self.c.call(
                NLM_PROG,
                NLM4_VERS,
                proc_::CANCEL,
                &v4::CancArgs {
                    cookie: b"cn".to_vec(),
                    block: true,
                    exclusive,
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

/// Every file of a directory of the state directory, concatenated ("" when it is absent):
/// what the files say, for `contains` checks.
fn dir_text(dir: &Path) -> String {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut names: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
    names.sort();
    names
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The client list of a group on disk (one file per client), as text.
pub fn list_text(state_dir: &Path, group: u32) -> String {
    dir_text(&state_dir.join("clients").join(group.to_string()))
}

/// The SM_MON registrations on disk (one file each), as text.
pub fn monitors_text(state_dir: &Path) -> String {
    dir_text(&state_dir.join("monitors"))
}

/// Lists `names` at `addr` in group `group` of a state directory the way the daemon does
/// (one file per client), without syncing: for tests that need thousands of listed clients
/// before a start.
pub fn list_clients(state_dir: &Path, group: u32, names: &[String], addr: IpAddr) {
    let dir = state_dir.join("clients").join(group.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    for n in names {
        let body = format!(
            r#"{{"name":{n:?},"addr":"{addr}","status_monitor":{{"prog":100024,"vers":1,"proc":6}}}}"#
        );
        std::fs::write(
            dir.join(format!("c-{}", lockd_user::nsm::store::encode(n))),
            body,
        )
        .unwrap();
    }
}

/// A process's resident and peak resident memory, in KiB (VmRSS, VmHWM).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `lockd-test-server` running as a child process, its log (standard error) collected.
pub struct Server {
    pub child: tokio::process::Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub state: i32,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Whether a log line contains every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// Waits until a log line contains every one of `parts`.
    pub async fn wait_log(&self, parts: &[&str], within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < end {
            if self.logged(parts) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Starts `lockd-test-server` named `lockd-server` over `state_dir` with export 1 at
/// `export`, client portmappers at `pm_port`, and `extra` arguments.
pub async fn spawn_server(
    state_dir: &Path,
    export: &Path,
    grace_ms: u64,
    pm_port: u16,
    extra: &[String],
) -> Server {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockd-test-server"))
        .args(["--name", "lockd-server", "--state-dir"])
        .arg(state_dir)
        .args(["--grace-ms", &grace_ms.to_string()])
        .args(["--client-portmap-port", &pm_port.to_string()])
        .arg("--export")
        .arg(format!("1:{}", export.display()))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start lockd-test-server");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = err.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(STEP, lines.next_line())
        .await
        .expect("server did not get ready")
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "server exited before it was ready: {:?}",
                log.lock().unwrap()
            )
        });
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_string()
    };
    assert!(line.starts_with("READY"), "{line}");
    Server {
        udp: field("udp=").parse().unwrap(),
        tcp: field("tcp=").parse().unwrap(),
        state: field("state=").parse().unwrap(),
        child,
        log,
    }
}
