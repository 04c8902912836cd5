//! Crash recovery with a real process: the test server is killed with SIGKILL while two
//! clients hold locks and a third waits, then restarted over the same state directory.
//! Clients are hosts on 127.0.0.2-4 with their own portmapper and status monitor.

mod common;

use common::*;
use lockd_user::proto::nlm::v4;
use lockd_user::Export;
use std::time::Duration;
use tokio::time::timeout;

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

    let mut srv = spawn_server(&state_dir, &root, 0, pm_port, &[]).await;
    assert_eq!(srv.state, 1);
    let a = Nlm::udp(srv.udp, ha.ip, "alpha").await;
    let b = Nlm::udp(srv.udp, hb.ip, "beta").await;
    let c = Nlm::udp(srv.udp, hc.ip, "gamma").await;
    let la = a.lock4(&fh1, 10, 0, 0);
    let lb = b.lock4(&fh2, 20, 0, 100);
    let lc = c.lock4(&fh1, 30, 0, 1);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        c.lock(LockCall::exclusive(lc.clone()).block()).await,
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
    let mut srv = spawn_server(&state_dir, &root, grace.as_millis() as u64, pm_port, &[]).await;
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
        a.lock(LockCall::exclusive(la.clone()).reclaim()).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone()).reclaim()).await,
        v4::Stats::Granted
    );
    let new_lock = c.lock4(&fh2, 31, 500, 10);
    assert_eq!(
        c.lock(LockCall::exclusive(new_lock.clone())).await,
        v4::Stats::DeniedGracePeriod
    );
    assert!(
        restarted.elapsed() < grace,
        "the grace checks took too long"
    );
    tokio::time::sleep_until(restarted + grace + Duration::from_millis(300)).await;
    assert_eq!(
        c.lock(LockCall::exclusive(new_lock.clone())).await,
        v4::Stats::Granted
    );
    // The reclaimed lock is held: gamma waits for it again.
    assert_eq!(
        c.lock(LockCall::exclusive(lc.clone()).block()).await,
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

/// A client on 127.0.0.1 reached through lockfs's own portmapper: after a kill and restart,
/// the restart's notifications to loopback clients come back to lockfs's own status
/// program. They name lockfs itself and must not release the lock the client reclaims
/// while they go out, nor its listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_loopback_lock_survives_the_restarts_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let root = dir.path().join("export");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let f1 = root.join("one");
    let f2 = root.join("two");
    std::fs::write(&f1, b"1").unwrap();
    std::fs::write(&f2, b"2").unwrap();
    let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let ips: Vec<_> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let pm_port = shared_port(&ips);
    // lockfs serves the portmapper on 127.0.0.1 itself, as when no rpcbind runs.
    let builtin = vec!["--portmap".to_string(), format!("127.0.0.1:{pm_port}")];
    let mut hw = ClientHost::start("127.0.0.2", "witness", pm_port).await;
    let fh1 = fh_of(&state_dir, Export::new(1, &root), &f1);
    let fh2 = fh_of(&state_dir, Export::new(1, &root), &f2);

    let mut srv = spawn_server(&state_dir, &root, 0, pm_port, &builtin).await;
    let loopy = Nlm::udp(srv.udp, lo, "loopy").await;
    let w = Nlm::udp(srv.udp, hw.ip, "witness").await;
    let ll = loopy.lock4(&fh1, 7, 0, 0);
    assert_eq!(
        loopy.lock(LockCall::exclusive(ll.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        w.lock(LockCall::exclusive(w.lock4(&fh2, 8, 0, 0))).await,
        v4::Stats::Granted
    );
    srv.child.start_kill().unwrap();
    timeout(STEP, srv.child.wait()).await.unwrap().unwrap();
    // Many more loopback clients on the list make the restart's notifications take a while.
    let more: Vec<String> = (0..300).map(|i| format!("loop-{i:04}")).collect();
    list_clients(&state_dir, 0, &more, lo);

    let grace = Duration::from_millis(3000);
    let srv = spawn_server(
        &state_dir,
        &root,
        grace.as_millis() as u64,
        pm_port,
        &builtin,
    )
    .await;
    let restarted = tokio::time::Instant::now();
    let loopy = Nlm::udp(srv.udp, lo, "loopy").await;
    assert_eq!(
        loopy.lock(LockCall::exclusive(ll.clone()).reclaim()).await,
        v4::Stats::Granted,
        "the reclaim in grace"
    );
    assert_eq!(expect_notify(&mut hw, 1).await, srv.state);
    assert!(
        srv.wait_log(&["SM_NOTIFY round finished", "delivered=302"], STEP)
            .await,
        "every notification was answered: {:#?}",
        srv.log.lock().unwrap()
    );
    assert!(srv.logged(&["SM_NOTIFY from this server itself ignored"]));
    assert!(
        !srv.logged(&["peer rebooted"]),
        "a notification released something: {:#?}",
        srv.log.lock().unwrap()
    );
    assert!(list_text(&state_dir, 0).contains("\"loopy\""));
    // After grace, another host still finds loopy's reclaimed lock.
    tokio::time::sleep_until(restarted + grace + Duration::from_millis(300)).await;
    let other = Nlm::udp(srv.udp, "127.0.0.3".parse().unwrap(), "other").await;
    assert_eq!(
        other
            .lock(LockCall::exclusive(other.lock4(&fh1, 9, 0, 1)))
            .await,
        v4::Stats::Denied
    );
    drop(srv);
    hw.stop().await;
}
