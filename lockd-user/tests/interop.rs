//! Interoperability with independent ONC RPC tools: `rpcinfo` against the built-in
//! portmapper and the server, and registration with a real `rpcbind`.
//!
//! Tests that need port 111 run one at a time (a lock in this file) and skip with a loud
//! message when the port is taken by someone else; tests whose tool is missing skip too.

use lockd_user::portmap::{
    self, from_uaddr, Mapping, Portmapper, Rpcb, RpcbindClient, IPPROTO_TCP, IPPROTO_UDP, RPCBVERS4,
};
use lockd_user::proto::nlm::{NLM4_VERS, NLM_PROG, NLM_VERS, NLM_VERSX};
use lockd_user::server::{CallContext, ProcError, Reply, RpcProgram};
use lockd_user::xdr::Decoder;
use lockd_user::{RpcServer, ServerConfig, Transport};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::timeout;

static PORT_111: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers NULL on NLM versions 1, 3 and 4, like lockd before any procedure exists.
struct NlmNull;

impl RpcProgram for NlmNull {
    fn program(&self) -> u32 {
        NLM_PROG
    }
    fn versions(&self) -> (u32, u32) {
        (NLM_VERS, NLM4_VERS)
    }
    fn has_version(&self, vers: u32) -> bool {
        matches!(vers, NLM_VERS | NLM_VERSX | NLM4_VERS)
    }
    fn call(&self, ctx: &CallContext, _args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        match ctx.proc_ {
            0 => Ok(Reply::Now(Vec::new())),
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

fn which(tool: &str) -> Option<String> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{tool}"))
        .find(|p| std::path::Path::new(p).exists())
}

fn skip(why: &str) {
    lockfs_testkit::skipping!("{why}");
}

/// Runs a tool with a timeout; returns (success, stdout + stderr).
async fn run(tool: &str, args: &[&str]) -> (bool, String) {
    let out = timeout(
        TOOL_TIMEOUT,
        Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} {args:?} timed out"))
    .unwrap_or_else(|e| panic!("{tool} {args:?} failed to start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ {tool} {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// Binds 127.0.0.1:111 for both transports, or `None` when either is taken.
fn bind_111() -> Option<(std::net::UdpSocket, std::net::TcpListener)> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:111").ok()?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:111").ok()?;
    Some((udp, tcp))
}

fn port_111_free() -> bool {
    bind_111().is_some()
}

fn lo0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcinfo_null_calls_and_error_replies_from_the_server() {
    let Some(rpcinfo) = which("rpcinfo") else {
        return skip("rpcinfo not installed (apt-get install rpcbind)");
    };
    // rpcinfo always finds the port through the portmapper on port 111 (its `-n` option
    // is ignored for `-t`/`-u` by this rpcinfo), so the built-in one serves there.
    let _guard = PORT_111.lock().await;
    let Some((udp111, tcp111)) = bind_111() else {
        return skip(
            "127.0.0.1:111 is in use (an rpcbind is running?); rpcinfo needs a portmapper there",
        );
    };
    let pm = Arc::new(Portmapper::new());
    let pms = RpcServer::builder(ServerConfig::default())
        .program(pm.clone())
        .udp_socket(udp111)
        .tcp_listener(tcp111)
        .start()
        .await
        .unwrap();
    let server = RpcServer::builder(ServerConfig::default())
        .program(Arc::new(NlmNull))
        .udp(lo0())
        .tcp(lo0())
        .start()
        .await
        .unwrap();
    let (udp, tcp) = (server.udp_addrs()[0], server.tcp_addrs()[0]);
    // NSM is registered at the server's ports although the server does not serve it, so
    // rpcinfo reaches the server and gets PROG_UNAVAIL from it.
    for (prog, vers) in [(NLM_PROG, 1), (NLM_PROG, 3), (NLM_PROG, 4), (100_024, 1)] {
        assert!(pm.set_local(prog, vers, Transport::Tcp, tcp));
        assert!(pm.set_local(prog, vers, Transport::Udp, udp));
    }
    for flag in ["-t", "-u"] {
        for vers in ["1", "3", "4"] {
            let (ok, out) = run(&rpcinfo, &[flag, "127.0.0.1", "100021", vers]).await;
            assert!(ok, "{out}");
            assert!(
                out.contains(&format!("program 100021 version {vers} ready and waiting")),
                "{out}"
            );
        }
        // Version 2 is inside the range but not served: rpcinfo reports the mismatch.
        let (ok, out) = run(&rpcinfo, &[flag, "127.0.0.1", "100021", "2"]).await;
        assert!(!ok, "{out}");
        assert!(
            out.contains("low version = 1") && out.contains("high version = 4"),
            "{out}"
        );
        // Without a version, rpcinfo calls version 0, learns the range from PROG_MISMATCH
        // and probes each version in it.
        let (_, out) = run(&rpcinfo, &[flag, "127.0.0.1", "100021"]).await;
        assert!(
            out.contains("program 100021 version 1 ready and waiting"),
            "{out}"
        );
        assert!(
            out.contains("program 100021 version 4 ready and waiting"),
            "{out}"
        );
        let (ok, out) = run(&rpcinfo, &[flag, "127.0.0.1", "100024", "1"]).await;
        assert!(
            !ok && out.contains("not available"),
            "PROG_UNAVAIL expected: {out}"
        );
    }
    timeout(Duration::from_secs(10), server.shutdown())
        .await
        .unwrap();
    timeout(Duration::from_secs(10), pms.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcinfo_lists_and_finds_programs_through_the_builtin_portmapper() {
    let Some(rpcinfo) = which("rpcinfo") else {
        return skip("rpcinfo not installed (apt-get install rpcbind)");
    };
    let _guard = PORT_111.lock().await;
    let Some((udp111, tcp111)) = bind_111() else {
        return skip("127.0.0.1:111 is in use (an rpcbind is running?); cannot test rpcinfo -p against the built-in portmapper");
    };
    let pm = Arc::new(Portmapper::new());
    let nlm = RpcServer::builder(ServerConfig::default())
        .program(Arc::new(NlmNull))
        .udp(lo0())
        .tcp(lo0())
        .start()
        .await
        .unwrap();
    let pms = RpcServer::builder(ServerConfig::default())
        .program(pm.clone())
        .udp_socket(udp111)
        .tcp_listener(tcp111)
        .start()
        .await
        .unwrap();
    pm.register_self(Some(pms.udp_addrs()[0]), Some(pms.tcp_addrs()[0]));
    let (nlm_udp, nlm_tcp) = (nlm.udp_addrs()[0], nlm.tcp_addrs()[0]);
    for vers in [NLM_VERS, NLM_VERSX, NLM4_VERS] {
        assert!(pm.set_local(NLM_PROG, vers, Transport::Udp, nlm_udp));
        assert!(pm.set_local(NLM_PROG, vers, Transport::Tcp, nlm_tcp));
    }

    let (ok, out) = run(&rpcinfo, &["-p", "127.0.0.1"]).await;
    assert!(ok, "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let has = |prog: &str, vers: &str, proto: &str, port: u16| {
        rows.iter().any(|r| {
            r.len() >= 4
                && r[0] == prog
                && r[1] == vers
                && r[2] == proto
                && r[3] == port.to_string()
        })
    };
    for vers in ["1", "3", "4"] {
        assert!(has("100021", vers, "tcp", nlm_tcp.port()), "{out}");
        assert!(has("100021", vers, "udp", nlm_udp.port()), "{out}");
    }
    assert!(has("100000", "2", "tcp", 111), "{out}");

    // rpcbind version 3/4 lookups (GETADDR) then a NULL call on the port found.
    for (netid, vers) in [("tcp", "4"), ("udp", "1"), ("tcp", "3")] {
        let (ok, out) = run(&rpcinfo, &["-T", netid, "127.0.0.1", "100021", vers]).await;
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("program 100021 version {vers} ready and waiting")),
            "{out}"
        );
    }
    // rpcbind DUMP, as `rpcinfo` without options shows it.
    let (ok, out) = run(&rpcinfo, &["127.0.0.1"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "127.0.0.1.{}.{}",
            nlm_tcp.port() >> 8,
            nlm_tcp.port() & 0xff
        )),
        "{out}"
    );

    // Our own client sees the same table, and the probe finds the built-in portmapper.
    assert!(portmap::rpcbind_answers(portmap::local_rpcbind(), Duration::from_secs(2)).await);
    let c = RpcbindClient::new(portmap::local_rpcbind(), Duration::from_secs(2))
        .await
        .unwrap();
    let q = Mapping {
        prog: NLM_PROG,
        vers: 4,
        prot: IPPROTO_TCP,
        port: 0,
    };
    assert_eq!(c.pmap_getport(&q).await.unwrap(), u32::from(nlm_tcp.port()));
    assert!(c.pmap_unset(&q).await.unwrap());
    // Like rpcbind, another version's port is returned while one is registered.
    assert_eq!(c.pmap_getport(&q).await.unwrap(), u32::from(nlm_tcp.port()));
    let (_, out) = run(&rpcinfo, &["-p", "127.0.0.1"]).await;
    assert!(
        !out.lines()
            .any(|l| l.split_whitespace().take(2).eq(["100021", "4"])),
        "{out}"
    );

    for vers in [NLM_VERS, NLM_VERSX] {
        assert!(c.pmap_unset(&Mapping { vers, ..q.clone() }).await.unwrap());
    }
    assert_eq!(c.pmap_getport(&q).await.unwrap(), 0);

    timeout(Duration::from_secs(10), pms.shutdown())
        .await
        .unwrap();
    timeout(Duration::from_secs(10), nlm.shutdown())
        .await
        .unwrap();
    assert!(port_111_free(), "port 111 released after shutdown");
}

/// An rpcbind started by this test; stopped with SIGTERM (so it cleans up) on drop.
struct RpcbindProcess {
    child: Child,
    /// rpcbind's runtime files that did not exist before it started, removed after it exits.
    created: Vec<&'static str>,
}

/// Files and the directory rpcbind creates at run time, children before parents.
const RPCBIND_FILES: [&str; 5] = [
    "/run/rpcbind/portmap.xdr",
    "/run/rpcbind/rpcbind.xdr",
    "/run/rpcbind.sock",
    "/run/rpcbind.lock",
    "/run/rpcbind",
];

impl RpcbindProcess {
    fn start(rpcbind: &str) -> Self {
        let created = RPCBIND_FILES
            .into_iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .collect();
        std::fs::create_dir_all("/run/rpcbind").unwrap();
        let child = Command::new(rpcbind)
            .arg("-f")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start rpcbind");
        Self { child, created }
    }

    fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for RpcbindProcess {
    fn drop(&mut self) {
        self.stop();
        // Wait (bounded) so the next test finds port 111 free again.
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                for p in &self.created {
                    let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_unregisters_with_a_real_rpcbind() {
    let (Some(rpcbind), Some(rpcinfo)) = (which("rpcbind"), which("rpcinfo")) else {
        return skip("rpcbind/rpcinfo not installed (apt-get install rpcbind)");
    };
    let _guard = PORT_111.lock().await;
    if !port_111_free() {
        return skip("127.0.0.1:111 is in use; will not touch an rpcbind this test did not start");
    }
    let mut proc_ = RpcbindProcess::start(&rpcbind);
    let rpcb = portmap::local_rpcbind();
    let mut up = false;
    for _ in 0..50 {
        if portmap::rpcbind_answers(rpcb, Duration::from_millis(200)).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "rpcbind did not come up");

    const PROG: u32 = 0x2000_0102;
    struct Toy;
    impl RpcProgram for Toy {
        fn program(&self) -> u32 {
            PROG
        }
        fn versions(&self) -> (u32, u32) {
            (1, 2)
        }
        fn call(&self, ctx: &CallContext, _: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            match ctx.proc_ {
                0 => Ok(Reply::Now(Vec::new())),
                _ => Err(ProcError::ProcUnavail),
            }
        }
    }
    let server = RpcServer::builder(ServerConfig::default())
        .program(Arc::new(Toy))
        .udp(lo0())
        .tcp(lo0())
        .start()
        .await
        .unwrap();
    let (udp, tcp) = (server.udp_addrs()[0], server.tcp_addrs()[0]);
    let t = Duration::from_secs(3);
    for vers in [1, 2] {
        portmap::register(rpcb, PROG, vers, Transport::Udp, udp, t)
            .await
            .unwrap();
        portmap::register(rpcb, PROG, vers, Transport::Tcp, tcp, t)
            .await
            .unwrap();
    }
    let prog = PROG.to_string();
    let (ok, out) = run(&rpcinfo, &["-p", "127.0.0.1"]).await;
    assert!(ok, "{out}");
    for (proto, port) in [("udp", udp.port()), ("tcp", tcp.port())] {
        for vers in ["1", "2"] {
            assert!(
                out.lines().any(|l| l.split_whitespace().take(4).eq([
                    prog.as_str(),
                    vers,
                    proto,
                    &port.to_string()
                ])),
                "{prog} {vers} {proto} {port} missing:\n{out}"
            );
        }
    }
    // rpcinfo finds the program through rpcbind and reaches our server.
    let (ok, out) = run(&rpcinfo, &["-T", "tcp", "127.0.0.1", &prog, "2"]).await;
    assert!(ok && out.contains("ready and waiting"), "{out}");
    let (ok, out) = run(&rpcinfo, &["-u", "127.0.0.1", &prog, "1"]).await;
    assert!(ok && out.contains("ready and waiting"), "{out}");

    // Our client reads the same registrations back.
    let c = RpcbindClient::new(rpcb, t).await.unwrap();
    let q = Mapping {
        prog: PROG,
        vers: 1,
        prot: IPPROTO_UDP,
        port: 0,
    };
    assert_eq!(c.pmap_getport(&q).await.unwrap(), u32::from(udp.port()));
    // GETADDR answers for the transport asked on (RFC 1833), whatever r_netid says.
    let q4 = Rpcb {
        r_prog: PROG,
        r_vers: 2,
        r_netid: "tcp".into(),
        r_addr: String::new(),
        r_owner: String::new(),
    };
    let addr = c.rpcb_getaddr(RPCBVERS4, &q4).await.unwrap();
    assert_eq!(from_uaddr(&addr), Some(udp));
    let ct = RpcbindClient::from_client(
        lockd_user::RpcClient::tcp(rpcb, lockd_user::ClientConfig::default())
            .await
            .unwrap(),
    );
    let addr = ct.rpcb_getaddr(RPCBVERS4, &q4).await.unwrap();
    assert_eq!(from_uaddr(&addr), Some(tcp));
    let found = portmap::lookup(rpcb.ip(), PROG, 1, Transport::Udp, t)
        .await
        .unwrap();
    assert_eq!(found, Some(udp));
    let found = portmap::lookup(rpcb.ip(), PROG, 2, Transport::Tcp, t)
        .await
        .unwrap();
    assert_eq!(found, Some(tcp));
    // rpcbind answers an unregistered version with another version's port, so the caller
    // learns the supported range from the server; an unknown program gets nothing.
    let other = portmap::lookup(rpcb.ip(), PROG, 3, Transport::Tcp, t)
        .await
        .unwrap();
    assert_eq!(other, Some(tcp));
    let none = portmap::lookup(rpcb.ip(), PROG + 1, 1, Transport::Tcp, t)
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(c
        .pmap_dump()
        .await
        .unwrap()
        .iter()
        .any(|m| m.prog == PROG && m.port == u32::from(tcp.port())));

    for vers in [1, 2] {
        assert!(portmap::unregister(rpcb, PROG, vers, t).await.unwrap());
    }
    let (_, out) = run(&rpcinfo, &["-p", "127.0.0.1"]).await;
    assert!(!out.contains(&prog), "still registered:\n{out}");
    assert_eq!(c.pmap_getport(&q).await.unwrap(), 0);

    proc_.stop();
    let status = timeout(Duration::from_secs(10), proc_.child.wait())
        .await
        .expect("rpcbind did not stop");
    assert!(status.is_ok());
    assert!(!portmap::rpcbind_answers(rpcb, Duration::from_millis(300)).await);
    timeout(Duration::from_secs(10), server.shutdown())
        .await
        .unwrap();
}
