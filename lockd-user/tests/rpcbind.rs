//! How clients find the service: the built-in portmapper when asked for (or when no rpcbind
//! answers), and registration with the system's rpcbind, seen through `rpcinfo -p`.

mod common;

use common::STEP;
use lock_table::SharedTable;
use lockd_user::portmap::{local_rpcbind, rpcbind_answers, RpcbindClient};
use lockd_user::{EventSink, LockdConfig, LockdService, PortmapMode};
use share_reservations::ShareTable;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tokio::time::timeout;

async fn start(dir: &std::path::Path, portmap: PortmapMode) -> LockdService {
    let mut config = LockdConfig::new("lockd-pm", dir.join("state"));
    config.grace = Duration::ZERO;
    config.portmap = portmap;
    let (sink, queue) = EventSink::new();
    let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
    let shares = Arc::new(Mutex::new(ShareTable::new()));
    timeout(STEP, LockdService::start(config, table, shares, queue))
        .await
        .unwrap()
        .unwrap()
}

fn free_port() -> u16 {
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let p = u.local_addr().unwrap().port();
    drop(u);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_portmapper_lists_nlm_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let pm: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let svc = start(dir.path(), PortmapMode::Builtin(vec![pm])).await;
    assert_eq!(svc.portmapper_addrs(), Some(&[pm][..]));
    let c = RpcbindClient::new(pm, Duration::from_secs(2))
        .await
        .unwrap();
    let dump = c.pmap_dump().await.unwrap();
    for (prog, vers) in [(100_021, 1), (100_021, 3), (100_021, 4), (100_024, 1)] {
        for (prot, port) in [
            (17, svc.udp_addrs()[0].port()),
            (6, svc.tcp_addrs()[0].port()),
        ] {
            assert!(
                dump.iter().any(|m| m.prog == prog
                    && m.vers == vers
                    && m.prot == prot
                    && m.port == u32::from(port)),
                "{prog}/{vers}/{prot} missing from {dump:?}"
            );
        }
    }
    assert!(!dump.iter().any(|m| m.prog == 100_021 && m.vers == 2));
    timeout(STEP, svc.shutdown()).await.unwrap();
}

async fn rpcinfo() -> String {
    let out = timeout(STEP, Command::new("rpcinfo").arg("-p").output())
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lists(out: &str, prog: u32, vers: u32, proto: &str, port: u16) -> bool {
    out.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() >= 4
            && w[0] == prog.to_string()
            && w[1] == vers.to_string()
            && w[2] == proto
            && w[3] == port.to_string()
    })
}

/// Registration with the system's rpcbind, and its removal at shutdown.
///
/// Runs in network and mount namespaces of its own, with a fresh `/run` and an rpcbind
/// started there: other tests of the suite start daemons that register with (and, at
/// start and stop, unregister the lock manager from) whatever rpcbind answers on the
/// machine's loopback, and `rpcinfo` may ask over `/run/rpcbind.sock`, which a network
/// namespace does not separate.
#[test]
fn registers_with_rpcbind_and_unregisters_on_stop() {
    for tool in ["/usr/sbin/rpcinfo", "/usr/sbin/rpcbind"] {
        if !std::path::Path::new(tool).exists() {
            lockfs_testkit::skip!("{tool} missing (apt-get install rpcbind)");
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        lockfs_testkit::skip!("needs root for namespaces of its own");
    }
    lockfs_testkit::rerun::Rerun::new(
        "registration_in_namespaces_of_its_own",
        Duration::from_secs(60),
    )
    .with_mount_namespace()
    .setup("mount -t tmpfs lockfs-test-run /run && mkdir -p /run/rpcbind")
    .run();
}

/// The body of [`registers_with_rpcbind_and_unregisters_on_stop`], run by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by registers_with_rpcbind_and_unregisters_on_stop in namespaces of its own"]
async fn registration_in_namespaces_of_its_own() {
    assert!(
        !rpcbind_answers(local_rpcbind(), Duration::from_millis(500)).await,
        "a fresh network namespace has no rpcbind"
    );
    let mut ours = Command::new("/usr/sbin/rpcbind")
        .arg("-f")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..50 {
        if rpcbind_answers(local_rpcbind(), Duration::from_millis(200)).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "rpcbind did not come up");
    let before = rpcinfo().await;
    assert!(
        lists(&before, 100_000, 2, "tcp", 111),
        "rpcinfo reaches the rpcbind: {before}"
    );
    for prog in ["100021", "100024"] {
        assert!(
            !before
                .lines()
                .any(|l| l.split_whitespace().next() == Some(prog)),
            "{before}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let svc = start(dir.path(), PortmapMode::Auto).await;
    assert!(svc.registered());
    assert!(svc.portmapper_addrs().is_none());
    let (u, t) = (svc.udp_addrs()[0].port(), svc.tcp_addrs()[0].port());
    let out = rpcinfo().await;
    for vers in [1, 3, 4] {
        assert!(lists(&out, 100_021, vers, "udp", u), "{out}");
        assert!(lists(&out, 100_021, vers, "tcp", t), "{out}");
    }
    assert!(lists(&out, 100_024, 1, "udp", u), "{out}");
    assert!(lists(&out, 100_024, 1, "tcp", t), "{out}");
    timeout(STEP, svc.shutdown()).await.unwrap();
    let out = rpcinfo().await;
    assert!(lists(&out, 100_000, 2, "tcp", 111), "{out}");
    for vers in [1, 3, 4] {
        assert!(!lists(&out, 100_021, vers, "udp", u), "{out}");
        assert!(!lists(&out, 100_021, vers, "tcp", t), "{out}");
    }
    assert!(!lists(&out, 100_024, 1, "udp", u), "{out}");
    assert!(!lists(&out, 100_024, 1, "tcp", t), "{out}");
    ours.start_kill().unwrap();
    let _ = timeout(STEP, ours.wait()).await;
}
