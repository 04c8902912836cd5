//! The lock service in-process on 127.0.0.1, driven by the crate's own client from client
//! hosts on 127.0.0.2-4 (each with its portmapper and NLM/NSM callback services): every NLM
//! version, blocking locks with GRANTED callbacks, CANCEL, the _MSG/_RES calls, shares,
//! NM_LOCK, FREE_ALL, refused handles, allowed clients, limits, grace and client reboots.

mod common;

use common::harness::*;
use common::*;
use lock_table::ScopeId;
use lockd_user::proto::nlm::{
    proc_, v3, v4, FshAccess, FshMode, NLM4_VERS, NLM_PROG, NLM_VERS, NLM_VERSX,
};
use lockd_user::proto::nsm::{self, SM_PROG, SM_VERS};
use lockd_user::xdr::{from_bytes, to_bytes};
use lockd_user::{LockdConfig, PortmapMode};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_lock_test_unlock_and_client_list() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    let la = a.lock4(&fh, 11, 0, 100);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    // The host is on the group's client list, durably, once its first lock is granted.
    let list = list_text(&h.state, 0);
    assert!(
        list.contains("alpha") && list.contains("127.0.0.2"),
        "{list}"
    );
    assert!(!list.contains("beta"));
    let holder = denied_holder(b.test(b.lock4(&fh, 22, 50, 10), Mode::Shared).await);
    assert_eq!(
        (holder.exclusive, holder.svid, holder.l_offset, holder.l_len),
        (true, 11, 0, 100)
    );
    assert_eq!(
        b.test(b.lock4(&fh, 22, 100, 10), Mode::Exclusive).await,
        v4::TestReply::Other(v4::Stats::Granted)
    );
    assert_eq!(
        b.lock(LockCall::shared(b.lock4(&fh, 22, 99, 1))).await,
        v4::Stats::Denied
    );
    // The same owner may convert its own lock.
    assert_eq!(
        a.lock(LockCall::shared(la.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::shared(b.lock4(&fh, 22, 99, 1))).await,
        v4::Stats::Granted
    );
    assert_eq!(a.unlock(la.clone()).await, v4::Stats::Granted);
    assert_eq!(b.unlock(b.lock4(&fh, 22, 99, 1)).await, v4::Stats::Granted);
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh, 22, 0, 0))).await,
        v4::Stats::Granted
    );
    // Over TCP too.
    let t = Nlm::tcp(h.tcp(), ha.ip, "alpha").await;
    assert_eq!(
        t.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Denied
    );
    // A range past the largest offset.
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 11, u64::MAX, 2)))
            .await,
        v4::Stats::Fbig
    );
    assert!(h.table.read(|t| t.file_count()) == 1);
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_lock_granted_refused_and_cancelled() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (mut hb, b) = h.host(3, "beta").await;
    let (mut hc, c) = h.host(4, "gamma").await;
    let la = a.lock4(&fh, 1, 0, 0);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    let lb = b.lock4(&fh, 2, 0, 10);
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone()).block()).await,
        v4::Stats::Blocked
    );
    // A repeated blocking request is the same waiter.
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone()).block()).await,
        v4::Stats::Blocked
    );
    assert_eq!(h.table.read(|t| t.waiter_count()), 1);
    let lc = c.lock4(&fh, 3, 5, 1);
    assert_eq!(
        c.lock(LockCall::exclusive(lc.clone()).block()).await,
        v4::Stats::Blocked
    );
    assert!(hb.next(Duration::from_millis(300)).await.is_none());

    assert_eq!(a.unlock(la.clone()).await, v4::Stats::Granted);
    match hb.next(STEP).await {
        Some(Received::Granted { vers, msg, args }) => {
            assert_eq!((vers, msg), (NLM4_VERS, false));
            assert_eq!(args.alock, lb);
            assert!(args.exclusive);
        }
        other => panic!("expected GRANTED, got {other:?}"),
    }
    let holder = denied_holder(a.test(a.lock4(&fh, 1, 0, 0), Mode::Shared).await);
    assert_eq!(holder.svid, 2);

    // gamma refuses its grant: the lock is released again.
    *hc.services.grant_answer.lock().unwrap() = v4::Stats::Denied;
    assert_eq!(b.unlock(lb.clone()).await, v4::Stats::Granted);
    assert!(matches!(
        hc.next(STEP).await,
        Some(Received::Granted { .. })
    ));
    let mut freed = false;
    for _ in 0..50 {
        if a.test(a.lock4(&fh, 1, 0, 0), Mode::Exclusive).await
            == v4::TestReply::Other(v4::Stats::Granted)
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a refused grant must be released");

    // CANCEL removes a waiter: no callback follows the unlock.
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone()).block()).await,
        v4::Stats::Blocked
    );
    assert_eq!(
        b.cancel(lb.clone(), Mode::Exclusive).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.cancel(lb.clone(), Mode::Exclusive).await,
        v4::Stats::Denied
    );
    assert_eq!(h.table.read(|t| t.waiter_count()), 0);
    assert_eq!(a.unlock(la.clone()).await, v4::Stats::Granted);
    assert!(hb.next(Duration::from_millis(500)).await.is_none());
    assert_eq!(
        a.test(la.clone(), Mode::Exclusive).await,
        v4::TestReply::Other(v4::Stats::Granted)
    );
    ha.stop().await;
    hb.stop().await;
    hc.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_1_and_3_use_32_bit_ranges() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    assert!(fh.len() <= 32, "ext4 handles fit version 3");
    let (ha, a) = h.host(2, "alpha").await;
    let (mut hb, b) = h.host(3, "beta").await;
    // A 64-bit lock far beyond 4 GiB, then a 32-bit TEST that meets it through EOF.
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 1 << 40, 5)))
            .await,
        v4::Stats::Granted
    );
    for vers in [NLM_VERS, NLM_VERSX] {
        let r: v3::TestRes =
            b.c.call(
                NLM_PROG,
                vers,
                proc_::TEST,
                &v3::TestArgs {
                    cookie: vec![vers as u8],
                    exclusive: false,
                    alock: b.lock3(&fh, 2, 0xFFFF_FFF0, 0x20),
                },
            )
            .await
            .unwrap();
        match r.stat {
            v3::TestReply::Denied(hd) => {
                assert_eq!((hd.l_offset, hd.l_len, hd.svid), (u32::MAX, 0, 1))
            }
            other => panic!("v{vers}: {other:?}"),
        }
        // Inside 32 bits there is no conflict.
        let r: v3::TestRes =
            b.c.call(
                NLM_PROG,
                vers,
                proc_::TEST,
                &v3::TestArgs {
                    cookie: vec![],
                    exclusive: true,
                    alock: b.lock3(&fh, 2, 0, 100),
                },
            )
            .await
            .unwrap();
        assert_eq!(r.stat, v3::TestReply::Other(v3::Stats::Granted));
    }
    // v1 blocking LOCK and its GRANTED callback in version 1.
    let l3 = b.lock3(&fh, 2, 0, 0);
    let lock_v1 = |block| v3::LockArgs {
        cookie: b"v1".to_vec(),
        block,
        exclusive: true,
        alock: l3.clone(),
        reclaim: false,
        state: 3,
    };
    let r: v3::Res =
        b.c.call(NLM_PROG, NLM_VERS, proc_::LOCK, &lock_v1(false))
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Denied);
    let r: v3::Res =
        b.c.call(NLM_PROG, NLM_VERS, proc_::LOCK, &lock_v1(true))
            .await
            .unwrap();
    assert_eq!(
        (r.cookie.as_slice(), r.stat),
        (&b"v1"[..], v3::Stats::Blocked)
    );
    assert_eq!(
        a.unlock(a.lock4(&fh, 1, 1 << 40, 5)).await,
        v4::Stats::Granted
    );
    match hb.next(STEP).await {
        Some(Received::Granted { vers, args, .. }) => {
            assert_eq!(vers, NLM_VERS);
            assert_eq!(
                (args.alock.l_offset, args.alock.l_len, args.alock.svid),
                (0, 0, 2)
            );
        }
        other => panic!("{other:?}"),
    }
    let r: v3::Res =
        b.c.call(
            NLM_PROG,
            NLM_VERSX,
            proc_::UNLOCK,
            &v3::UnlockArgs {
                cookie: vec![],
                alock: l3.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stat, v3::Stats::Granted);
    // Version 1 has no SHARE; version 2 does not exist.
    assert!(b
        .c
        .call_raw(NLM_PROG, NLM_VERS, proc_::SHARE, &[])
        .await
        .is_err());
    assert!(matches!(
        b.c.call_raw(NLM_PROG, 2, proc_::NULL, &[]).await,
        Err(lockd_user::ClientError::ProgMismatch { low: 1, high: 4 })
    ));
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_unshare_nm_lock_and_free_all() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    let sa = share3("alpha", &fh, b"o1", FshMode::DenyWrite, FshAccess::Read);
    let r: v3::ShareRes =
        a.c.call(NLM_PROG, NLM_VERSX, proc_::SHARE, &sa)
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Granted);
    // The reservation is in the shared table, where local opens meet it.
    assert_eq!(h.shares.lock().unwrap().len(), 1);
    let sb = share3("beta", &fh, b"o2", FshMode::DenyNone, FshAccess::Write);
    let r: v3::ShareRes =
        b.c.call(NLM_PROG, NLM_VERSX, proc_::SHARE, &sb)
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Denied);
    let sb4 = v4::ShareArgs {
        cookie: vec![],
        share: v4::Share {
            caller_name: "beta".into(),
            fh: fh.clone(),
            oh: b"o2".to_vec(),
            mode: FshMode::DenyNone,
            access: FshAccess::Read,
        },
        reclaim: false,
    };
    let r: v4::ShareRes =
        b.c.call(NLM_PROG, NLM4_VERS, proc_::SHARE, &sb4)
            .await
            .unwrap();
    assert_eq!(r.stat, v4::Stats::Granted);
    let r: v3::ShareRes =
        a.c.call(NLM_PROG, NLM_VERSX, proc_::UNSHARE, &sa)
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Granted);
    assert_eq!(h.shares.lock().unwrap().len(), 1);

    // NM_LOCK: granted without putting the host on the client list.
    let nm = v3::LockArgs {
        cookie: b"nm".to_vec(),
        block: true,
        exclusive: true,
        alock: v3::Lock {
            caller_name: "pcnfs".into(),
            fh: fh.clone(),
            oh: b"p".to_vec(),
            svid: 9,
            l_offset: 0,
            l_len: 10,
        },
        reclaim: false,
        state: 0,
    };
    let r: v3::Res =
        a.c.call(NLM_PROG, NLM_VERSX, proc_::NM_LOCK, &nm)
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Granted);
    let mut again = nm.clone();
    again.alock.oh = b"q".to_vec();
    let r: v3::Res =
        a.c.call(NLM_PROG, NLM_VERSX, proc_::NM_LOCK, &again)
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Denied, "NM_LOCK never blocks");
    let list = list_text(&h.state, 0);
    assert!(!list.contains("pcnfs"), "{list}");
    // FREE_ALL releases the host's locks and shares.
    let _: () = {
        a.c.call_raw(
            NLM_PROG,
            NLM_VERSX,
            proc_::FREE_ALL,
            &to_bytes(&v3::Notify {
                name: "pcnfs".into(),
                state: 2,
            }),
        )
        .await
        .unwrap();
    };
    let r: v3::Res =
        a.c.call(NLM_PROG, NLM_VERSX, proc_::NM_LOCK, &again)
            .await
            .unwrap();
    assert_eq!(r.stat, v3::Stats::Granted);
    b.c.call_raw(
        NLM_PROG,
        NLM4_VERS,
        proc_::FREE_ALL,
        &to_bytes(&v4::Notify {
            name: "beta".into(),
            state: 2,
        }),
    )
    .await
    .unwrap();
    assert_eq!(h.shares.lock().unwrap().len(), 0);
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_calls_answer_with_res_callbacks() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (mut hb, b) = h.host(3, "beta").await;
    let la = a.lock4(&fh, 1, 0, 0);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    let lb = b.lock4(&fh, 2, 0, 0);
    b.c.send_oneway(
        NLM_PROG,
        NLM4_VERS,
        proc_::TEST_MSG,
        &to_bytes(&v4::TestArgs {
            cookie: b"t".to_vec(),
            exclusive: true,
            alock: lb.clone(),
        }),
    )
    .await
    .unwrap();
    match hb.next(STEP).await {
        Some(Received::Res { proc_: p, body }) => {
            assert_eq!(p, proc_::TEST_RES);
            let r: v4::TestRes = from_bytes(&body).unwrap();
            assert_eq!(r.cookie, b"t");
            assert_eq!(denied_holder(r.stat).svid, 1);
        }
        other => panic!("{other:?}"),
    }
    b.c.send_oneway(
        NLM_PROG,
        NLM4_VERS,
        proc_::LOCK_MSG,
        &to_bytes(&v4::LockArgs {
            cookie: b"l".to_vec(),
            block: true,
            exclusive: true,
            alock: lb.clone(),
            reclaim: false,
            state: 1,
        }),
    )
    .await
    .unwrap();
    match hb.next(STEP).await {
        Some(Received::Res { proc_: p, body }) => {
            assert_eq!(p, proc_::LOCK_RES);
            assert_eq!(
                from_bytes::<v4::Res>(&body).unwrap(),
                v4::Res {
                    cookie: b"l".to_vec(),
                    stat: v4::Stats::Blocked
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // The grant comes as GRANTED_MSG; the client's GRANTED_RES completes it.
    assert_eq!(a.unlock(la.clone()).await, v4::Stats::Granted);
    match hb.next(STEP).await {
        Some(Received::Granted { msg, args, .. }) => {
            assert!(msg);
            assert_eq!(args.alock, lb);
        }
        other => panic!("{other:?}"),
    }
    // Accepted: beta holds the lock, and no GRANTED_MSG is repeated.
    assert!(hb.next(Duration::from_millis(1500)).await.is_none());
    assert_eq!(
        denied_holder(a.test(la.clone(), Mode::Shared).await).svid,
        2
    );
    b.c.send_oneway(
        NLM_PROG,
        NLM4_VERS,
        proc_::UNLOCK_MSG,
        &to_bytes(&v4::UnlockArgs {
            cookie: b"u".to_vec(),
            alock: lb.clone(),
        }),
    )
    .await
    .unwrap();
    match hb.next(STEP).await {
        Some(Received::Res { proc_: p, body }) => {
            assert_eq!(p, proc_::UNLOCK_RES);
            assert_eq!(
                from_bytes::<v4::Res>(&body).unwrap().stat,
                v4::Stats::Granted
            );
        }
        other => panic!("{other:?}"),
    }
    b.c.send_oneway(
        NLM_PROG,
        NLM4_VERS,
        proc_::CANCEL_MSG,
        &to_bytes(&v4::CancArgs {
            cookie: b"c".to_vec(),
            block: true,
            exclusive: true,
            alock: lb.clone(),
        }),
    )
    .await
    .unwrap();
    match hb.next(STEP).await {
        Some(Received::Res { proc_: p, body }) => {
            assert_eq!(p, proc_::CANCEL_RES);
            assert_eq!(
                from_bytes::<v4::Res>(&body).unwrap().stat,
                v4::Stats::Denied
            );
        }
        other => panic!("{other:?}"),
    }
    // GRANTED_MSG to a server is answered DENIED through GRANTED_RES.
    b.c.send_oneway(
        NLM_PROG,
        NLM4_VERS,
        proc_::GRANTED_MSG,
        &to_bytes(&v4::TestArgs {
            cookie: b"g".to_vec(),
            exclusive: true,
            alock: lb.clone(),
        }),
    )
    .await
    .unwrap();
    match hb.next(STEP).await {
        Some(Received::Res { proc_: p, body }) => {
            assert_eq!(p, proc_::GRANTED_RES);
            assert_eq!(
                from_bytes::<v4::Res>(&body).unwrap().stat,
                v4::Stats::Denied
            );
        }
        other => panic!("{other:?}"),
    }
    // *_RES calls are accepted silently (no reply, no error).
    b.c.send_oneway(
        NLM_PROG,
        NLM4_VERS,
        proc_::LOCK_RES,
        &to_bytes(&v4::Res {
            cookie: vec![1],
            stat: v4::Stats::Granted,
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        b.c.call_raw(NLM_PROG, NLM4_VERS, proc_::NULL, &[])
            .await
            .unwrap(),
        Vec::<u8>::new()
    );
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handles_clients_and_limits() {
    let h = Harness::start(|c| {
        c.limits.max_owners_per_host = 2;
    })
    .await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    let mut forged = fh.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    let mut other_export = fh.clone();
    other_export[3] = 9;
    for bad in [
        forged.clone(),
        other_export,
        fh[..10].to_vec(),
        vec![],
        vec![0; 64],
    ] {
        assert_eq!(
            a.lock(LockCall::exclusive(a.lock4(&bad, 1, 0, 0))).await,
            v4::Stats::StaleFh
        );
        assert_eq!(
            a.test(a.lock4(&bad, 1, 0, 0), Mode::Exclusive).await,
            v4::TestReply::Other(v4::Stats::StaleFh)
        );
        assert_eq!(a.unlock(a.lock4(&bad, 1, 0, 0)).await, v4::Stats::StaleFh);
    }
    let r: v3::Res =
        a.c.call(
            NLM_PROG,
            NLM_VERSX,
            proc_::LOCK,
            &v3::LockArgs {
                cookie: vec![],
                block: false,
                exclusive: true,
                alock: a.lock3(&forged, 1, 0, 0),
                reclaim: false,
                state: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stat, v3::Stats::Denied);
    assert_eq!(
        h.table.read(|t| t.file_count()),
        0,
        "no refused handle reached the table"
    );

    // The read-only export allows 127.0.0.2 only.
    let ro = fh_of(&h.state, h.ro_export.clone(), &h.ro_file);
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&ro, 1, 0, 0))).await,
        v4::Stats::Rofs
    );
    assert_eq!(
        a.lock(LockCall::shared(a.lock4(&ro, 1, 0, 0))).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::shared(b.lock4(&ro, 1, 0, 0))).await,
        v4::Stats::Failed
    );
    let r: v3::Res =
        b.c.call(
            NLM_PROG,
            NLM_VERSX,
            proc_::LOCK,
            &v3::LockArgs {
                cookie: vec![],
                block: false,
                exclusive: false,
                alock: b.lock3(&ro, 1, 0, 0),
                reclaim: false,
                state: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stat, v3::Stats::Denied);

    // alpha has one owner already; a second is fine, a third is refused and logged.
    let other = fh_of(&h.state, h.export.clone(), &h.other);
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&other, 2, 0, 0))).await,
        v4::Stats::Granted
    );
    assert_eq!(
        a.lock(LockCall::shared(a.lock4(&other, 3, 0, 0))).await,
        v4::Stats::DeniedNolocks
    );
    // Existing owners keep working.
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&other, 2, 0, 5))).await,
        v4::Stats::Granted
    );
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_at_its_lock_limit_gets_denied_nolocks() {
    let h = Harness::start(|c| c.limits.max_locks_per_host = 3).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    for i in 0..3 {
        assert_eq!(
            a.lock(LockCall::exclusive(a.lock4(&fh, 1, i * 10, 5)))
                .await,
            v4::Stats::Granted
        );
    }
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 100, 5))).await,
        v4::Stats::DeniedNolocks
    );
    // Another owner of the same host counts against the same limit.
    assert_eq!(
        a.lock(LockCall::shared(a.lock4(&fh, 2, 200, 5))).await,
        v4::Stats::DeniedNolocks
    );
    // Other hosts are not affected.
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh, 1, 100, 5))).await,
        v4::Stats::Granted
    );
    // Giving one back makes room.
    assert_eq!(a.unlock(a.lock4(&fh, 1, 0, 5)).await, v4::Stats::Granted);
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 300, 5))).await,
        v4::Stats::Granted
    );
    assert_eq!(h.table.read(|t| t.snapshot().len()), 4);
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_has_its_own_grace_length() {
    let h = Harness::start(|c| {
        c.grace = Duration::from_millis(300);
        c.exports[1].scope = ScopeId(1);
        c.group_grace.insert(ScopeId(1), Duration::from_secs(30));
        listed_before_restart(c, ScopeId::DEFAULT, "alpha");
        listed_before_restart(c, ScopeId(1), "alpha");
    })
    .await;
    let fh = h.fh();
    let ro = fh_of(&h.state, h.ro_export.clone(), &h.ro_file);
    let (ha, a) = h.host(2, "alpha").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 0, 10))).await,
        v4::Stats::Granted,
        "the default group's short grace is over"
    );
    assert_eq!(
        a.lock(LockCall::shared(a.lock4(&ro, 1, 0, 10))).await,
        v4::Stats::DeniedGracePeriod,
        "the other group is still in its own grace"
    );
    ha.stop().await;
    h.stop().await;
}

/// Unblocks a writer stuck opening a FIFO when dropped, and in any case after a
/// while from a thread of its own: if the writer blocked the runtime's only worker,
/// nothing in the runtime (timers included) runs until then, and the test must fail,
/// not hang.
struct FifoRelease(std::path::PathBuf);

impl FifoRelease {
    fn new(path: std::path::PathBuf) -> Self {
        let p = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(8));
            open_read_end(&p);
        });
        FifoRelease(path)
    }
}

/// Opening the read end lets a writer's open return; what it then writes fits in
/// the pipe buffer.
fn open_read_end(path: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(|mut f| std::io::Read::read_to_end(&mut f, &mut Vec::new()));
}

impl Drop for FifoRelease {
    fn drop(&mut self) {
        open_read_end(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

// One runtime worker, as `lockfs serve` runs the service; TCP clients, each served by
// its own connection task (a UDP socket is served by one task for all its clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_client_list_write_that_hangs_does_not_stall_other_connections() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, _) = h.host(2, "alpha").await;
    let (hb, _) = h.host(3, "beta").await;
    let a = Nlm::tcp(h.tcp(), ha.ip, "alpha").await;
    let b = Nlm::tcp(h.tcp(), hb.ip, "beta").await;
    // alpha's first lock lists it.
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 0, 10))).await,
        v4::Stats::Granted
    );
    // The next write of the client list hangs: its temporary file is a FIFO that
    // no one reads yet, so opening it for writing blocks.
    let fifo = h.state.join("clients/0/.tmp-c-beta");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let release = FifoRelease::new(fifo);
    let fh2 = fh.clone();
    let stuck = tokio::spawn(async move {
        let st = b.lock(LockCall::exclusive(b.lock4(&fh2, 2, 100, 10))).await;
        (b, st)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stuck.is_finished(),
        "beta's first lock waits for its client list"
    );
    // alpha, already listed, is served meanwhile.
    assert_eq!(
        timeout(
            Duration::from_secs(5),
            a.lock(LockCall::exclusive(a.lock4(&fh, 1, 20, 10)))
        )
        .await
        .expect("another connection is served while a client list write hangs"),
        v4::Stats::Granted
    );
    assert!(!stuck.is_finished());
    // Let the write through. A FIFO cannot be synced, so beta cannot be recorded
    // and is refused, as after any failed write of the list.
    drop(release);
    let (_b, st) = timeout(Duration::from_secs(10), stuck)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, v4::Stats::DeniedNolocks);
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

/// Puts `host` on `scope`'s client list in the state directory, as a run before a
/// restart would have (a group with no listed client gets no grace period).
fn listed_before_restart(c: &LockdConfig, scope: ScopeId, host: &str) {
    let store = lockd_user::nsm::store::NsmStore::open(&c.state_dir).unwrap();
    store
        .add_client(scope, host, "127.0.0.2".parse().unwrap())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_grace_period_without_clients_to_reclaim() {
    let h = Harness::start(|c| c.grace = Duration::from_secs(60)).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 0, 10))).await,
        v4::Stats::Granted,
        "a fresh state directory lists no client, so nothing waits for reclaims"
    );
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 20, 10)).reclaim())
            .await,
        v4::Stats::DeniedGracePeriod,
        "and a reclaim outside grace is refused"
    );
    ha.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_admits_only_reclaims() {
    let h = Harness::start(|c| {
        c.grace = Duration::from_millis(1500);
        listed_before_restart(c, ScopeId::DEFAULT, "alpha");
    })
    .await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 0, 10))).await,
        v4::Stats::DeniedGracePeriod
    );
    assert_eq!(
        a.test(a.lock4(&fh, 1, 0, 10), Mode::Exclusive).await,
        v4::TestReply::Other(v4::Stats::DeniedGracePeriod)
    );
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 0, 10)).reclaim())
            .await,
        v4::Stats::Granted
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 2, 10, 10))).await,
        v4::Stats::Granted
    );
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 3, 20, 10)).reclaim())
            .await,
        v4::Stats::DeniedGracePeriod
    );
    ha.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reboot_frees_its_locks_and_nsm_calls() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (mut hb, b) = h.host(3, "beta").await;
    let la = a.lock4(&fh, 1, 0, 0);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    let lb = b.lock4(&fh, 2, 0, 0);
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone()).block()).await,
        v4::Stats::Blocked
    );

    let sm = client_at(h.udp(), ha.ip).await;
    let st: nsm::SmStatRes = sm
        .call(
            SM_PROG,
            SM_VERS,
            nsm::proc_::STAT,
            &nsm::SmName {
                mon_name: "x".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(st.res_stat, nsm::SmRes::Succ);
    assert_eq!(st.state % 2, 1, "odd while up");
    assert_eq!(st.state, h.svc.state());
    let my_id = nsm::MyId {
        my_name: "alpha".into(),
        my_prog: NLM_PROG,
        my_vers: 4,
        my_proc: 16,
    };
    let mon = nsm::Mon {
        mon_id: nsm::MonId {
            mon_name: "beta".into(),
            my_id: my_id.clone(),
        },
        priv_: [7; 16],
    };
    // SM_MON is a call of the local lock manager: refused from another host.
    let r: nsm::SmStatRes = sm
        .call(SM_PROG, SM_VERS, nsm::proc_::MON, &mon)
        .await
        .unwrap();
    assert_eq!(r.res_stat, nsm::SmRes::Fail, "SM_MON from 127.0.0.2");
    assert!(!monitors_text(&h.state).contains("beta"));
    let local = client_at(h.udp(), "127.0.0.1".parse().unwrap()).await;
    let r: nsm::SmStatRes = local
        .call(SM_PROG, SM_VERS, nsm::proc_::MON, &mon)
        .await
        .unwrap();
    assert_eq!(r.res_stat, nsm::SmRes::Succ);
    assert!(monitors_text(&h.state).contains("beta"));
    // Nor may another host remove it.
    for (proc_, args) in [
        (nsm::proc_::UNMON_ALL, to_bytes(&my_id)),
        (nsm::proc_::UNMON, to_bytes(&mon.mon_id)),
    ] {
        let r: nsm::SmStat =
            from_bytes(&sm.call_raw(SM_PROG, SM_VERS, proc_, &args).await.unwrap()).unwrap();
        assert_eq!(r.state, st.state);
        assert!(
            monitors_text(&h.state).contains("beta"),
            "procedure {proc_}"
        );
    }
    let r: nsm::SmStat = local
        .call(SM_PROG, SM_VERS, nsm::proc_::UNMON_ALL, &my_id)
        .await
        .unwrap();
    assert_eq!(r.state, st.state);
    assert!(!monitors_text(&h.state).contains("beta"));

    // alpha reboots: its statd tells us; beta's waiter is granted.
    sm.call_raw(
        SM_PROG,
        SM_VERS,
        nsm::proc_::NOTIFY,
        &to_bytes(&nsm::StatChge {
            mon_name: "alpha".into(),
            state: 5,
        }),
    )
    .await
    .unwrap();
    match hb.next(STEP).await {
        Some(Received::Granted { args, .. }) => assert_eq!(args.alock, lb),
        other => panic!("{other:?}"),
    }
    let list = list_text(&h.state, 0);
    assert!(!list.contains("alpha") && list.contains("beta"), "{list}");
    // The administrative clear does the same for beta.
    let r = h.svc.clear_host("beta");
    assert_eq!(r.locks.files, 1);
    assert!(r.was_monitored);
    assert_eq!(
        a.test(la.clone(), Mode::Exclusive).await,
        v4::TestReply::Other(v4::Stats::Granted)
    );
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

fn skip(why: &str) {
    lockfs_testkit::skipping!("{why}");
}

/// A plain RPC client calling from a client host's address.
async fn client_at(server: SocketAddr, from: IpAddr) -> lockd_user::RpcClient {
    lockd_user::RpcClient::udp(server, from_addr(from))
        .await
        .unwrap()
}

/// The test support's promise: a client host a test drops (a test that failed half way)
/// releases what it holds at its server and stops listening, so nothing it held is left
/// for the next assertion; a host that vanishes keeps its locks, as a crashed host does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_host_releases_its_locks_and_a_vanished_one_does_not() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    let (hc, c) = h.host(4, "gamma").await;
    let la = a.lock4(&fh, 1, 0, 10);
    let lc = c.lock4(&fh, 3, 100, 10);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        c.lock(LockCall::exclusive(lc.clone())).await,
        v4::Stats::Granted
    );
    let alpha_services = ha.services_addr();
    assert!(matches!(
        b.test(b.lock4(&fh, 2, 0, 10), Mode::Exclusive).await,
        v4::TestReply::Denied(_)
    ));
    drop(ha);
    // Released before the drop returned: no waiting here.
    assert_eq!(
        b.test(b.lock4(&fh, 2, 0, 10), Mode::Exclusive).await,
        v4::TestReply::Other(v4::Stats::Granted),
        "the dropped host's lock is gone"
    );
    assert!(
        std::net::UdpSocket::bind(alpha_services).is_ok(),
        "the dropped host's callback service still holds {alpha_services}"
    );
    hc.vanish().await;
    assert!(matches!(
        b.test(b.lock4(&fh, 2, 100, 10), Mode::Exclusive).await,
        v4::TestReply::Denied(_)
    ));
    hb.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_limit_and_unreachable_client_policy() {
    let h = Harness::start(|c| {
        c.callbacks.release_unreachable_after = Some(Duration::from_millis(800));
        c.limits.max_waiters = 1;
    })
    .await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    // beta and gamma run no services at all: callbacks to them fail.
    let b = Nlm::udp(h.udp(), "127.0.0.3".parse().unwrap(), "beta").await;
    let c = Nlm::udp(h.udp(), "127.0.0.4".parse().unwrap(), "gamma").await;
    let la = a.lock4(&fh, 1, 0, 0);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh, 2, 0, 0)).block())
            .await,
        v4::Stats::Blocked
    );
    assert_eq!(
        c.lock(LockCall::exclusive(c.lock4(&fh, 3, 0, 0)).block())
            .await,
        v4::Stats::DeniedNolocks,
        "one waiter at most"
    );
    assert_eq!(a.unlock(la.clone()).await, v4::Stats::Granted);
    // alpha's ordinary unlock keeps the value block valid.
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&h.file).unwrap();
        let id = lock_table::FileId::new(m.dev(), m.ino());
        assert!(h.table.read(|t| t.lvb_peek(id)).valid);
    }
    // beta holds the lock now, but cannot be told; the policy releases it.
    assert!(matches!(
        a.test(la.clone(), Mode::Exclusive).await,
        v4::TestReply::Denied(_)
    ));
    let mut released = false;
    for _ in 0..100 {
        if a.test(la.clone(), Mode::Exclusive).await == v4::TestReply::Other(v4::Stats::Granted) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the unreachable host was not released");
    // beta held an exclusive lock: releasing it this way is abnormal, so the
    // file's value block may be stale.
    let id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&h.file).unwrap();
        lock_table::FileId::new(m.dev(), m.ino())
    };
    assert!(!h.table.read(|t| t.lvb_peek(id)).valid);
    let list = list_text(&h.state, 0);
    assert!(!list.contains("beta") && list.contains("alpha"), "{list}");
    ha.stop().await;
    h.stop().await;
}

/// Mutated and truncated arguments for every procedure of every version: each call is
/// answered (results or GARBAGE_ARGS), never SYSTEM_ERR (a handler panic), and the
/// service keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_arguments_never_break_the_service() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let lock = a.lock4(&fh, 1, 0, 10);
    let valid: Vec<(u32, Vec<u8>)> = vec![
        (
            proc_::TEST,
            to_bytes(&v4::TestArgs {
                cookie: vec![1],
                exclusive: true,
                alock: lock.clone(),
            }),
        ),
        (
            proc_::LOCK,
            to_bytes(&v4::LockArgs {
                cookie: vec![2],
                block: true,
                exclusive: true,
                alock: lock.clone(),
                reclaim: false,
                state: 1,
            }),
        ),
        (
            proc_::CANCEL,
            to_bytes(&v4::CancArgs {
                cookie: vec![3],
                block: true,
                exclusive: true,
                alock: lock.clone(),
            }),
        ),
        (
            proc_::UNLOCK,
            to_bytes(&v4::UnlockArgs {
                cookie: vec![4],
                alock: lock.clone(),
            }),
        ),
        (
            proc_::GRANTED,
            to_bytes(&v4::TestArgs {
                cookie: vec![5],
                exclusive: false,
                alock: lock.clone(),
            }),
        ),
        (
            proc_::SHARE,
            to_bytes(&v4::ShareArgs {
                cookie: vec![6],
                share: v4::Share {
                    caller_name: "alpha".into(),
                    fh: fh.clone(),
                    oh: b"o".to_vec(),
                    mode: FshMode::DenyNone,
                    access: FshAccess::Read,
                },
                reclaim: false,
            }),
        ),
        (
            proc_::FREE_ALL,
            to_bytes(&v4::Notify {
                name: "nobody".into(),
                state: 1,
            }),
        ),
        (
            proc_::NM_LOCK,
            to_bytes(&v4::LockArgs {
                cookie: vec![7],
                block: false,
                exclusive: false,
                alock: lock.clone(),
                reclaim: false,
                state: 1,
            }),
        ),
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sync_procs = [
        proc_::TEST,
        proc_::LOCK,
        proc_::CANCEL,
        proc_::UNLOCK,
        proc_::GRANTED,
        proc_::SHARE,
        proc_::UNSHARE,
        proc_::NM_LOCK,
        proc_::FREE_ALL,
    ];
    let mut answered = 0;
    for round in 0..300 {
        let (p, base) = &valid[round % valid.len()];
        let mut m = base.clone();
        match next() % 3 {
            0 => {
                let n = (next() as usize) % m.len();
                m.truncate(n);
            }
            _ => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
            }
        }
        for vers in [NLM_VERS, NLM_VERSX, NLM4_VERS] {
            let r = a.c.call_raw(NLM_PROG, vers, *p, &m).await;
            match r {
                Ok(_) => answered += 1,
                Err(lockd_user::ClientError::GarbageArgs) => {}
                Err(lockd_user::ClientError::ProcUnavail) => {
                    assert!(vers == NLM_VERS && !sync_procs[..5].contains(p))
                }
                Err(e) => panic!("proc {p} v{vers}: {e}"),
            }
            // The message forms get no reply; send them too.
            if *p <= proc_::GRANTED {
                a.c.send_oneway(NLM_PROG, vers, *p + 5, &m).await.unwrap();
                a.c.send_oneway(NLM_PROG, vers, *p + 10, &m).await.unwrap();
            }
        }
        let r =
            a.c.call_raw(SM_PROG, SM_VERS, 1 + (round as u32 % 6), &m)
                .await;
        assert!(
            !matches!(r, Err(lockd_user::ClientError::SystemErr)),
            "{r:?}"
        );
    }
    assert!(answered > 0);
    assert_eq!(
        a.c.call_raw(NLM_PROG, NLM4_VERS, proc_::NULL, &[])
            .await
            .unwrap(),
        Vec::<u8>::new()
    );
    ha.stop().await;
    h.stop().await;
}

/// The lock service's own notifications reach its own status program when a client is
/// listed at 127.0.0.1 and the built-in portmapper answers there: they name this server
/// and must release nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_notification_releases_nothing() {
    let h = Harness::start(|c| {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        c.portmap =
            PortmapMode::Builtin(vec![SocketAddr::new(lo, c.callbacks.client_portmap_port)]);
    })
    .await;
    let fh = h.fh();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let loopy = Nlm::udp(h.udp(), lo, "loopy").await;
    let (mut hw, w) = h.host(3, "witness").await;
    let ll = loopy.lock4(&fh, 1, 0, 100);
    assert_eq!(
        loopy.lock(LockCall::exclusive(ll.clone())).await,
        v4::Stats::Granted
    );
    assert_eq!(
        w.lock(LockCall::exclusive(w.lock4(&fh, 2, 500, 10))).await,
        v4::Stats::Granted
    );
    assert!(list_text(&h.state, 0).contains("loopy"));
    // The group restarts: SM_NOTIFY goes to every listed client, loopy's through our own
    // portmapper to our own status program.
    let state = h.svc.group_online(ScopeId::DEFAULT).unwrap();
    match hw.next(STEP).await {
        Some(Received::Notify(n)) => {
            assert_eq!((n.mon_name.as_str(), n.state), ("lockd-test", state))
        }
        other => panic!("witness: expected SM_NOTIFY, got {other:?}"),
    }
    // Notifications go out in name order: loopy's went before the witness's; give our
    // status program time to handle it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holder = denied_holder(w.test(w.lock4(&fh, 9, 0, 10), Mode::Exclusive).await);
    assert_eq!(holder.svid, 1, "loopy's lock survived our own notification");
    assert!(
        list_text(&h.state, 0).contains("loopy"),
        "and so did its listing"
    );
    hw.stop().await;
    h.stop().await;
}

/// Only a host itself may end its locks: a reboot notification (or FREE_ALL) naming a host
/// from an address not on record for it releases nothing; from its own address it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_from_another_address_releases_nothing() {
    let h = Harness::start(|_| {}).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    let la = a.lock4(&fh, 1, 0, 100);
    assert_eq!(
        a.lock(LockCall::exclusive(la.clone())).await,
        v4::Stats::Granted
    );
    // A second client name behind alpha's address (clients behind one NAT).
    let a2 = Nlm::udp(h.udp(), ha.ip, "alpha-two").await;
    assert_eq!(
        a2.lock(LockCall::exclusive(a2.lock4(&fh, 5, 300, 10)))
            .await,
        v4::Stats::Granted
    );
    let notify = |name: &str| {
        to_bytes(&nsm::StatChge {
            mon_name: name.into(),
            state: 9,
        })
    };
    let held = |r: v4::TestReply| matches!(r, v4::TestReply::Denied(_));
    // beta claims alpha rebooted.
    let from_b = client_at(h.udp(), hb.ip).await;
    from_b
        .call_raw(SM_PROG, SM_VERS, nsm::proc_::NOTIFY, &notify("alpha"))
        .await
        .unwrap();
    let free_all = to_bytes(&v4::Notify {
        name: "alpha".into(),
        state: 9,
    });
    from_b
        .call_raw(NLM_PROG, NLM4_VERS, proc_::FREE_ALL, &free_all)
        .await
        .unwrap();
    // So does a host nobody knows, and an unlisted name from alpha's shared address.
    let from_d = client_at(h.udp(), "127.0.0.4".parse().unwrap()).await;
    from_d
        .call_raw(SM_PROG, SM_VERS, nsm::proc_::NOTIFY, &notify("alpha"))
        .await
        .unwrap();
    let from_a = client_at(h.udp(), ha.ip).await;
    from_a
        .call_raw(SM_PROG, SM_VERS, nsm::proc_::NOTIFY, &notify("somebody"))
        .await
        .unwrap();
    assert!(
        held(b.test(b.lock4(&fh, 2, 0, 10), Mode::Exclusive).await),
        "alpha's lock survived"
    );
    assert!(
        held(b.test(b.lock4(&fh, 2, 300, 10), Mode::Exclusive).await),
        "alpha-two's too"
    );
    assert!(list_text(&h.state, 0).contains("\"alpha\""));
    // alpha's own notification, from its own address, releases alpha alone.
    from_a
        .call_raw(SM_PROG, SM_VERS, nsm::proc_::NOTIFY, &notify("alpha"))
        .await
        .unwrap();
    assert_eq!(
        b.test(b.lock4(&fh, 2, 0, 10), Mode::Exclusive).await,
        v4::TestReply::Other(v4::Stats::Granted)
    );
    assert!(held(
        b.test(b.lock4(&fh, 2, 300, 10), Mode::Exclusive).await
    ));
    assert!(!list_text(&h.state, 0).contains("\"alpha\""));
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&at).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .ok()?;
        st.success().then_some(Self(at))
    }

    fn remount(&self, opt: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills a file system until it refuses a write.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 4096];
    loop {
        if f.write_all(&block).and_then(|_| f.sync_all()).is_err() {
            break;
        }
    }
}

/// A request that needs a durable change fails while the state directory cannot take it
/// (full, or read-only), is never granted without it, and succeeds once it can again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_state_directory_refuses_instead_of_granting() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(base.path().join("state"), "256k") else {
        skip("cannot mount a tmpfs (needs root)");
        return;
    };
    let state_dir = fs.0.clone();
    let h = Harness::start(|c| c.state_dir = state_dir.clone()).await;
    let fh = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 0, 10))).await,
        v4::Stats::Granted
    );
    let local = client_at(h.udp(), "127.0.0.1".parse().unwrap()).await;
    let mon = |host: &str| nsm::Mon {
        mon_id: nsm::MonId {
            mon_name: host.into(),
            my_id: nsm::MyId {
                my_name: "localhost".into(),
                my_prog: NLM_PROG,
                my_vers: 4,
                my_proc: 16,
            },
        },
        priv_: [1; 16],
    };
    let sm_mon = |host: &'static str| {
        let local = &local;
        async move {
            let r: nsm::SmStatRes = local
                .call(SM_PROG, SM_VERS, nsm::proc_::MON, &mon(host))
                .await
                .unwrap();
            r.res_stat
        }
    };
    let lb = b.lock4(&fh, 2, 100, 10);
    let free = |r: v4::TestReply| r == v4::TestReply::Other(v4::Stats::Granted);

    // Full.
    let filler = fs.0.join("filler");
    fill(&filler);
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone())).await,
        v4::Stats::DeniedNolocks,
        "beta's first lock needs its listing on disk"
    );
    assert!(
        free(a.test(a.lock4(&fh, 1, 100, 10), Mode::Exclusive).await),
        "nothing was granted"
    );
    assert!(!list_text(&h.state, 0).contains("beta"));
    assert_eq!(sm_mon("peer-a").await, nsm::SmRes::Fail);
    // alpha, listed already, needs no write and is still served.
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh, 1, 20, 10))).await,
        v4::Stats::Granted
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        b.lock(LockCall::exclusive(lb.clone())).await,
        v4::Stats::Granted
    );
    assert!(list_text(&h.state, 0).contains("beta"));
    assert_eq!(sm_mon("peer-a").await, nsm::SmRes::Succ);

    // Read-only.
    let (hc, c) = h.host(4, "gamma").await;
    let lc = c.lock4(&fh, 3, 200, 10);
    fs.remount("ro");
    assert_eq!(
        c.lock(LockCall::exclusive(lc.clone())).await,
        v4::Stats::DeniedNolocks
    );
    assert!(free(
        a.test(a.lock4(&fh, 1, 200, 10), Mode::Exclusive).await
    ));
    assert_eq!(sm_mon("peer-b").await, nsm::SmRes::Fail);
    fs.remount("rw");
    assert_eq!(c.lock(LockCall::exclusive(lc)).await, v4::Stats::Granted);
    assert_eq!(sm_mon("peer-b").await, nsm::SmRes::Succ);
    assert!(list_text(&h.state, 0).contains("gamma"));
    ha.stop().await;
    hb.stop().await;
    hc.stop().await;
    h.stop().await;
    drop(fs);
}

/// Whether this process holds a descriptor open on `dir`.
fn holds_open(dir: &std::path::Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|p| p == dir)
}

/// A group configured offline starts without its storage, its exports' requests get
/// DENIED_GRACE_PERIOD while the other group grants; online it grants (its list is empty,
/// so no grace); offline again it releases its locks and lets go of its storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_group_is_refused_and_holds_no_storage_until_online() {
    let g1 = ScopeId(1);
    let h = Harness::start(|c| {
        let e = &mut c.exports[1];
        e.scope = g1;
        e.read_only = false;
        e.allowed.clear();
        // The group's storage is elsewhere when the daemon starts.
        std::fs::rename(&e.root, e.root.with_extension("elsewhere")).unwrap();
        c.offline = vec![g1];
    })
    .await;
    let root = h.ro_export.root.clone();
    assert!(h.svc.is_offline(g1) && !h.svc.is_offline(ScopeId::DEFAULT));
    std::fs::rename(root.with_extension("elsewhere"), &root).unwrap();
    let mut g1_export = h.ro_export.clone();
    g1_export.scope = g1;
    let fh1 = fh_of(&h.state, g1_export, &h.ro_file);
    let fh0 = h.fh();
    let (ha, a) = h.host(2, "alpha").await;
    let (hb, b) = h.host(3, "beta").await;
    assert!(!holds_open(&root), "an offline group's storage is not held");
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh1, 1, 0, 10))).await,
        v4::Stats::DeniedGracePeriod
    );
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh0, 1, 0, 10))).await,
        v4::Stats::Granted,
        "the other group grants meanwhile"
    );
    assert!(
        !list_text(&h.state, 1).contains("alpha"),
        "a refused lock lists nobody"
    );

    h.svc.group_online(g1).unwrap();
    assert!(!h.svc.is_offline(g1) && holds_open(&root));
    assert_eq!(
        a.lock(LockCall::exclusive(a.lock4(&fh1, 1, 0, 10))).await,
        v4::Stats::Granted
    );
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh1, 2, 0, 10))).await,
        v4::Stats::Denied
    );

    h.svc.group_offline(g1).unwrap();
    assert!(h.svc.is_offline(g1));
    assert!(!holds_open(&root), "offline lets go of the storage");
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh1, 2, 0, 10))).await,
        v4::Stats::DeniedGracePeriod
    );
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh0, 2, 0, 10))).await,
        v4::Stats::Denied,
        "alpha's lock in the other group is untouched"
    );
    // Online again: alpha's g1 lock was released by the offline.
    h.svc.group_online(g1).unwrap();
    assert_eq!(
        b.lock(LockCall::exclusive(b.lock4(&fh1, 2, 0, 10))).await,
        v4::Stats::Granted
    );
    ha.stop().await;
    hb.stop().await;
    h.stop().await;
}

/// A group with storage moves between two lock services (two nodes' daemons) sharing only
/// that storage: its client list, state number and handle key travel with it, and a clean
/// offline is recorded there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_state_lives_on_its_storage_and_moves_with_it() {
    let g1 = ScopeId(1);
    let shared = tempfile::tempdir().unwrap();
    let storage = shared.path().join("g1");
    let data = storage.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("file");
    std::fs::write(&file, b"x").unwrap();
    let tune = |online: bool| {
        let storage = storage.clone();
        let data = data.clone();
        move |c: &mut LockdConfig| {
            let e = &mut c.exports[1];
            e.scope = g1;
            e.read_only = false;
            e.allowed.clear();
            e.root = data;
            c.group_storage.insert(g1, storage);
            c.group_grace.insert(g1, Duration::from_secs(30));
            // Clients reach g1 by two names; one address is here, one is not.
            c.group_server_ids.insert(
                g1,
                vec![
                    ("nfs-g1".into(), "127.0.0.1".parse().unwrap()),
                    ("nfs-g1-alt".into(), "192.0.2.1".parse().unwrap()),
                ],
            );
            if !online {
                c.offline = vec![g1];
            }
        }
    };
    let a = Harness::start(tune(true)).await;
    let meta = storage.join(".lockfs");
    assert_eq!(std::fs::read_to_string(meta.join("state")).unwrap(), "1\n");
    // The group's handles carry the key on its storage, not the node's.
    let mut g1_export = a.ro_export.clone();
    g1_export.scope = g1;
    g1_export.root = data.clone();
    let fh = fh_of(&meta, g1_export.clone(), &file);
    let node_fh = fh_of(&a.state, g1_export, &file);
    let (hx, x) = a.host(2, "alpha").await;
    assert_eq!(
        x.lock(LockCall::exclusive(x.lock4(&node_fh, 1, 0, 10)))
            .await,
        v4::Stats::StaleFh,
        "a handle under the node's key is not the group's"
    );
    let lx = x.lock4(&fh, 1, 0, 10);
    assert_eq!(
        x.lock(LockCall::exclusive(lx.clone())).await,
        v4::Stats::Granted
    );
    assert!(
        std::fs::read_dir(meta.join("clients")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("alpha")),
        "the client is listed on the group's storage"
    );
    a.svc.group_offline(g1).unwrap();
    assert!(meta.join("clean-offline").exists());
    assert_eq!(std::fs::read_to_string(meta.join("state")).unwrap(), "2\n");
    a.stop().await;
    hx.stop().await;

    // Another node, its own state directory, the group offline at start.
    let b = Harness::start(tune(false)).await;
    assert!(b.svc.is_offline(g1));
    let (mut hx, x) = b.host(2, "alpha").await;
    let state = b.svc.group_online(g1).unwrap();
    assert_eq!(state, 3, "the group's number goes on from its storage");
    assert!(!meta.join("clean-offline").exists(), "taken by the online");
    // One notification per server ID, each naming it, with the group's new state.
    let mut names = Vec::new();
    for _ in 0..2 {
        match hx.next(STEP).await {
            Some(Received::Notify(n)) => {
                assert_eq!(n.state, 3);
                names.push(n.mon_name);
            }
            other => panic!("expected SM_NOTIFY from the group's new node, got {other:?}"),
        }
    }
    names.sort();
    assert_eq!(names, ["nfs-g1", "nfs-g1-alt"]);
    // The same handle resolves on the new node; the reclaim is granted in the group's
    // grace, a new lock is not, and the other group grants throughout.
    assert_eq!(
        x.lock(LockCall::exclusive(lx).reclaim()).await,
        v4::Stats::Granted
    );
    let (hy, y) = b.host(3, "beta").await;
    assert_eq!(
        y.lock(LockCall::exclusive(y.lock4(&fh, 2, 100, 10))).await,
        v4::Stats::DeniedGracePeriod
    );
    assert_eq!(
        y.lock(LockCall::exclusive(y.lock4(&b.fh(), 2, 100, 10)))
            .await,
        v4::Stats::Granted
    );
    hy.stop().await;
    hx.stop().await;
    b.stop().await;
}
