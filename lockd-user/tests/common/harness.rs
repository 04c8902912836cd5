//! The lock service in-process on 127.0.0.1, with exports and client hosts on
//! 127.0.0.2-4 around it: the harness of the NLM service tests and of the wire
//! interop tests that drive it with independent clients.

use super::*;
use lock_table::SharedTable;
use lockd_user::proto::nlm::{v3, v4, FshAccess, FshMode};
use lockd_user::{EventSink, Export, LockdConfig, LockdService, PortmapMode};
use share_reservations::ShareTable;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;

/// A lock service with two exports (the second read-only, allowed to 127.0.0.2
/// only) and a portmapper port shared by the client hosts.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub export: Export,
    pub ro_export: Export,
    pub file: PathBuf,
    pub other: PathBuf,
    pub ro_file: PathBuf,
    pub svc: LockdService,
    pub pm_port: u16,
    pub table: Arc<SharedTable>,
    pub shares: Arc<Mutex<ShareTable>>,
}

impl Harness {
    pub async fn start(tune: impl FnOnce(&mut LockdConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let root = dir.path().join("export");
        let ro_root = dir.path().join("ro");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&ro_root).unwrap();
        let file = root.join("file");
        let other = root.join("other");
        let ro_file = ro_root.join("file");
        for f in [&file, &other, &ro_file] {
            std::fs::write(f, b"data").unwrap();
        }
        let export = Export::new(1, &root);
        let mut ro_export = Export::new(2, &ro_root);
        ro_export.read_only = true;
        ro_export.allowed = vec!["127.0.0.2".parse().unwrap()];
        let ips: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let pm_port = shared_port(&ips);
        let mut config = LockdConfig::new("lockd-test", &state);
        config.exports = vec![export.clone(), ro_export.clone()];
        config.grace = Duration::ZERO;
        config.portmap = PortmapMode::Off;
        config.callbacks.client_portmap_port = pm_port;
        config.callbacks.initial_backoff = Duration::from_millis(100);
        config.callbacks.max_backoff = Duration::from_millis(500);
        config.callbacks.attempt_timeout = Duration::from_secs(1);
        tune(&mut config);
        let state = config.state_dir.clone();
        let (sink, queue) = EventSink::new();
        let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
        let shares = Arc::new(Mutex::new(ShareTable::new()));
        let svc = timeout(
            STEP,
            LockdService::start(config, table.clone(), shares.clone(), queue),
        )
        .await
        .unwrap()
        .unwrap();
        Self {
            dir,
            state,
            export,
            ro_export,
            file,
            other,
            ro_file,
            svc,
            pm_port,
            table,
            shares,
        }
    }

    pub fn fh(&self) -> Vec<u8> {
        fh_of(&self.state, self.export.clone(), &self.file)
    }

    pub fn udp(&self) -> SocketAddr {
        self.svc.udp_addrs()[0]
    }

    pub fn tcp(&self) -> SocketAddr {
        self.svc.tcp_addrs()[0]
    }

    pub async fn host(&self, n: u8, name: &str) -> (ClientHost, Nlm) {
        let ip = format!("127.0.0.{n}");
        let h = ClientHost::start(&ip, name, self.pm_port).await;
        h.attach(self.udp());
        let c = Nlm::udp(self.udp(), h.ip, name).await;
        (h, c)
    }

    pub async fn stop(self) {
        timeout(STEP, self.svc.shutdown()).await.unwrap();
    }
}

pub fn denied_holder(r: v4::TestReply) -> v4::Holder {
    match r {
        v4::TestReply::Denied(h) => h,
        other => panic!("expected DENIED with a holder, got {other:?}"),
    }
}

pub fn share3(name: &str, fh: &[u8], oh: &[u8], mode: FshMode, access: FshAccess) -> v3::ShareArgs {
    v3::ShareArgs {
        cookie: b"sh".to_vec(),
        share: v3::Share {
            caller_name: name.into(),
            fh: fh.to_vec(),
            oh: oh.to_vec(),
            mode,
            access,
        },
        reclaim: false,
    }
}
