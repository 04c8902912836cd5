//! Test support of the lock service's tests: the NLM clients and client hosts of
//! `lockfs_testkit::nlm` (re-exported), and what only these tests need: file handles
//! under a test export, the state directory's client lists, and `lockd-test-server`
//! as a child process.

#![allow(dead_code)]

pub mod harness;

use lockd_user::exports::Exports;
use lockd_user::{Export, FhKey};
pub use lockfs_testkit::nlm::*;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The handle of `path` under export `export` with the key of `state_dir`.
pub fn fh_of(state_dir: &Path, export: Export, path: &Path) -> Vec<u8> {
    let key = FhKey::load_or_create(state_dir).unwrap();
    let ex = Exports::open(vec![export.clone()]).unwrap();
    lockd_user::make_fh(&key, ex.get(export.id).unwrap(), path).unwrap()
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
