//! NLM version 4 LOCK+UNLOCK pairs per second over TCP on loopback, with 1 and 16
//! concurrent clients (each its own connection, host name and byte range), with p50 and p99
//! latency of a pair; and two NULL calls on one connection, the transport floor.
//!
//! Without arguments it starts the lock service in-process over a temporary export. With
//! `--server HOST:PORT --fh HEX` it drives another NLM server (for side-by-side runs).
//! `--seconds N` sets the length of each measurement (default 3).

use lock_table::SharedTable;
use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
use lockd_user::{
    ClientConfig, EventSink, Export, LockdConfig, LockdService, PortmapMode, RpcClient,
};
use share_reservations::ShareTable;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Stats {
    ops: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut lat: Vec<Duration>, secs: f64) -> Stats {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        ops: lat.len(),
        secs,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

async fn pairs(server: SocketAddr, fh: Vec<u8>, clients: usize, run: Duration) -> Stats {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let fh = fh.clone();
        tasks.push(tokio::spawn(async move {
            let c = RpcClient::tcp(server, ClientConfig::default())
                .await
                .expect("connect");
            let lock = v4::Lock {
                caller_name: format!("bench-client-{i}"),
                fh,
                oh: format!("oh-{i}").into_bytes(),
                svid: i as i32 + 1,
                l_offset: i as u64 * 1000,
                l_len: 100,
            };
            let la = v4::LockArgs {
                cookie: vec![1],
                block: false,
                exclusive: true,
                alock: lock.clone(),
                reclaim: false,
                state: 1,
            };
            let ua = v4::UnlockArgs {
                cookie: vec![2],
                alock: lock,
            };
            // One pair first: the host's first lock (recorded durably) is not the steady state.
            let _: v4::Res = c.call(NLM_PROG, NLM4_VERS, proc_::LOCK, &la).await.unwrap();
            let _: v4::Res = c
                .call(NLM_PROG, NLM4_VERS, proc_::UNLOCK, &ua)
                .await
                .unwrap();
            let mut lat = Vec::new();
            let end = Instant::now() + run;
            while Instant::now() < end {
                let t = Instant::now();
                let r: v4::Res = c.call(NLM_PROG, NLM4_VERS, proc_::LOCK, &la).await.unwrap();
                assert_eq!(r.stat, v4::Stats::Granted);
                let r: v4::Res = c
                    .call(NLM_PROG, NLM4_VERS, proc_::UNLOCK, &ua)
                    .await
                    .unwrap();
                assert_eq!(r.stat, v4::Stats::Granted);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    summarize(all, start.elapsed().as_secs_f64())
}

async fn nulls(server: SocketAddr, run: Duration) -> Stats {
    let c = RpcClient::tcp(server, ClientConfig::default())
        .await
        .expect("connect");
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < run {
        let t = Instant::now();
        c.call_raw(NLM_PROG, NLM4_VERS, proc_::NULL, &[])
            .await
            .unwrap();
        c.call_raw(NLM_PROG, NLM4_VERS, proc_::NULL, &[])
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    summarize(lat, start.elapsed().as_secs_f64())
}

fn print(what: &str, s: &Stats) {
    println!(
        "{what:<28} {:>10.0} /s   p50 {:>7.1} us   p99 {:>7.1} us   ({} in {:.1} s)",
        s.ops as f64 / s.secs,
        s.p50.as_secs_f64() * 1e6,
        s.p99.as_secs_f64() * 1e6,
        s.ops,
        s.secs
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut server: Option<SocketAddr> = None;
    let mut fh_hex: Option<String> = None;
    let mut secs = 3u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--server" => server = args.next().and_then(|s| s.parse().ok()),
            "--fh" => fh_hex = args.next(),
            "--seconds" => secs = args.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            other => panic!("unknown argument {other}"),
        }
    }
    let run = Duration::from_secs(secs);
    let _keep;
    let (addr, fh, svc) = match (server, fh_hex) {
        (Some(s), Some(h)) => {
            let fh = (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex handle"))
                .collect();
            (s, fh, None)
        }
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("export");
            std::fs::create_dir_all(&root).unwrap();
            let file = root.join("file");
            std::fs::write(&file, b"x").unwrap();
            let mut config = LockdConfig::new("bench", dir.path().join("state"));
            config.exports = vec![Export::new(1, &root)];
            config.grace = Duration::ZERO;
            config.portmap = PortmapMode::Off;
            let (sink, queue) = EventSink::new();
            let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
            let shares = Arc::new(Mutex::new(ShareTable::new()));
            let svc = LockdService::start(config, table, shares, queue)
                .await
                .unwrap();
            let key = lockd_user::FhKey::load_or_create(&dir.path().join("state")).unwrap();
            let ex = lockd_user::exports::Exports::open(vec![Export::new(1, &root)]).unwrap();
            let fh = lockd_user::make_fh(&key, ex.get(1).unwrap(), &file).unwrap();
            let addr = svc.tcp_addrs()[0];
            _keep = dir;
            (addr, fh, Some(svc))
        }
    };
    println!("NLM v4 over TCP at {addr}, {secs} s per measurement");
    print("2 x NULL, 1 connection", &nulls(addr, run).await);
    for n in [1, 16] {
        print(
            &format!("LOCK+UNLOCK, {n} client(s)"),
            &pairs(addr, fh.clone(), n, run).await,
        );
    }
    if let Some(s) = svc {
        s.shutdown().await;
    }
}
