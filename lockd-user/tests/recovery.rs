//! Crash recovery with a real process: the test server is killed with SIGKILL while two
//! clients hold locks and a third waits, then restarted over the same state directory.
//! Clients are hosts on 127.0.0.2-4 with their own portmapper and status monitor.

mod common;

use common::*;
use lockd_user::proto::nlm::v4;
use lockd_user::Export;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

struct Server {
    child: Child,
    udp: SocketAddr,
    state: i32,
}

async fn spawn_server(state_dir: &Path, export: &Path, grace_ms: u64, pm_port: u16) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockd-test-server"))
        .args(["--name", "lockd-server", "--state-dir"])
        .arg(state_dir)
        .args(["--grace-ms", &grace_ms.to_string()])
        .args(["--client-portmap-port", &pm_port.to_string()])
        .arg("--export")
        .arg(format!("1:{}", export.display()))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start lockd-test-server");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let line = timeout(STEP, lines.next_line())
        .await
        .expect("server did not get ready")
        .unwrap()
        .expect("server exited before it was ready");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .to_string()
    };
    assert!(line.starts_with("READY"), "{line}");
    Server {
        udp: field("udp=").parse().unwrap(),
        state: field("state=").parse().unwrap(),
        child,
    }
}

async fn expect_notify(h: &mut ClientHost, min_state: i32) -> i32 {
    match h.next(STEP).await {
        Some(Received::Notify(n)) => {
            assert_eq!(n.mon_name, "lockd-server");
            assert!(
                n.state > min_state,
                "state {} not above {min_state}",
                n.state
            );
            assert_eq!(n.state % 2, 1);
            n.state
        }
        Some(other) => panic!("{}: expected SM_NOTIFY, got {other:?}", h.name),
        None => panic!("{}: no SM_NOTIFY", h.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_notify_reclaim_grace_and_client_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let root = dir.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let f1 = root.join("one");
    let f2 = root.join("two");
    std::fs::write(&f1, b"1").unwrap();
    std::fs::write(&f2, b"2").unwrap();
    let ips: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let pm_port = shared_port(&ips);
    let mut ha = ClientHost::start("127.0.0.2", "alpha", pm_port).await;
    let mut hb = ClientHost::start("127.0.0.3", "beta", pm_port).await;
    let mut hc = ClientHost::start("127.0.0.4", "gamma", pm_port).await;
    let fh1 = fh_of(&state_dir, Export::new(1, &root), &f1);
    let fh2 = fh_of(&state_dir, Export::new(1, &root), &f2);

    let mut srv = spawn_server(&state_dir, &root, 0, pm_port).await;
    assert_eq!(srv.state, 1);
    let a = Nlm::udp(srv.udp, ha.ip, "alpha").await;
    let b = Nlm::udp(srv.udp, hb.ip, "beta").await;
    let c = Nlm::udp(srv.udp, hc.ip, "gamma").await;
    let la = a.lock4(&fh1, 10, 0, 0);
    let lb = b.lock4(&fh2, 20, 0, 100);
    let lc = c.lock4(&fh1, 30, 0, 1);
    assert_eq!(
        a.lock(la.clone(), true, false, false).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(lb.clone(), true, false, false).await,
        v4::Stats::Granted
    );
    assert_eq!(
        c.lock(lc.clone(), true, true, false).await,
        v4::Stats::Blocked
    );

    srv.child.start_kill().unwrap();
    timeout(STEP, srv.child.wait()).await.unwrap().unwrap();
    // Durable state as the crash left it.
    assert_eq!(
        std::fs::read_to_string(state_dir.join("state")).unwrap(),
        "1\n"
    );
    let list = list_text(&state_dir, 0);
    for (name, ip) in [
        ("alpha", "127.0.0.2"),
        ("beta", "127.0.0.3"),
        ("gamma", "127.0.0.4"),
    ] {
        assert!(
            list.contains(name) && list.contains(ip),
            "{name} missing: {list}"
        );
    }

    let grace = Duration::from_millis(2500);
    let mut srv = spawn_server(&state_dir, &root, grace.as_millis() as u64, pm_port).await;
    let restarted = tokio::time::Instant::now();
    assert_eq!(srv.state, 3);
    assert_eq!(
        std::fs::read_to_string(state_dir.join("state")).unwrap(),
        "3\n"
    );
    assert_eq!(expect_notify(&mut ha, 1).await, 3);
    assert_eq!(expect_notify(&mut hb, 1).await, 3);
    assert_eq!(expect_notify(&mut hc, 1).await, 3);

    let a = Nlm::udp(srv.udp, ha.ip, "alpha").await;
    let b = Nlm::udp(srv.udp, hb.ip, "beta").await;
    let c = Nlm::udp(srv.udp, hc.ip, "gamma").await;
    // Handles survived the restart; reclaims are granted in grace, new locks are not.
    assert_eq!(
        a.lock(la.clone(), true, false, true).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(lb.clone(), true, false, true).await,
        v4::Stats::Granted
    );
    let new_lock = c.lock4(&fh2, 31, 500, 10);
    assert_eq!(
        c.lock(new_lock.clone(), true, false, false).await,
        v4::Stats::DeniedGracePeriod
    );
    assert!(
        restarted.elapsed() < grace,
        "the grace checks took too long"
    );
    tokio::time::sleep_until(restarted + grace + Duration::from_millis(300)).await;
    assert_eq!(
        c.lock(new_lock.clone(), true, false, false).await,
        v4::Stats::Granted
    );
    // The reclaimed lock is held: gamma waits for it again.
    assert_eq!(
        c.lock(lc.clone(), true, true, false).await,
        v4::Stats::Blocked
    );

    // alpha reboots: its status monitor tells ours; gamma is granted.
    let sm = lockd_user::RpcClient::udp(srv.udp, from_addr(ha.ip))
        .await
        .unwrap();
    sm.call_raw(
        lockd_user::proto::nsm::SM_PROG,
        lockd_user::proto::nsm::SM_VERS,
        lockd_user::proto::nsm::proc_::NOTIFY,
        &lockd_user::xdr::to_bytes(&lockd_user::proto::nsm::StatChge {
            mon_name: "alpha".into(),
            state: 7,
        }),
    )
    .await
    .unwrap();
    match hc.next(STEP).await {
        Some(Received::Granted { args, .. }) => assert_eq!(args.alock, lc),
        other => panic!("expected GRANTED for gamma, got {other:?}"),
    }
    let list = list_text(&state_dir, 0);
    assert!(!list.contains("alpha") && list.contains("beta"), "{list}");

    // A clean stop leaves an even state number.
    let pid = srv.child.id().unwrap() as i32;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = timeout(STEP, srv.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        std::fs::read_to_string(state_dir.join("state")).unwrap(),
        "4\n"
    );
    ha.stop().await;
    hb.stop().await;
    hc.stop().await;
}
