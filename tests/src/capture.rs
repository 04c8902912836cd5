//! Packet captures for wire tests: tshark records a session on an interface and then
//! dissects the capture file, so a test checks its traffic with an independent decoder.
//!
//! It exists so that every wire test starts a capture the same way (waiting until tshark
//! really captures before any packet is sent) and stops it cleanly (SIGINT, so the file is
//! complete), with timeouts on each step; a capture a failing test leaves behind is
//! killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::timeout;

const TSHARK: &str = "/usr/bin/tshark";
/// A step that hangs fails instead.
const STEP: Duration = Duration::from_secs(30);

/// Whether tshark is installed (else a wire test skips, loudly).
pub fn tshark_present() -> bool {
    Path::new(TSHARK).exists()
}

/// A running tshark writing a capture file.
pub struct Capture {
    child: Child,
    pcap: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` what the capture filter `filter` lets through, into
    /// `pcap`; returns once tshark reports that the capture has started.
    pub async fn start(iface: &str, filter: &str, pcap: &Path) -> Capture {
        let mut child = Command::new(TSHARK)
            .args(["-i", iface, "-f", filter, "-w"])
            .arg(pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("tshark did not start");
        let mut err = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
        loop {
            let line = timeout(STEP, err.next_line())
                .await
                .expect("tshark did not start capturing")
                .expect("reading tshark's output")
                .expect("tshark exited before capturing");
            if line.contains("Capture started") {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
        Capture {
            child,
            pcap: pcap.to_path_buf(),
        }
    }

    /// Stops the capture after a short pause (so the last replies are in), and returns
    /// the capture file.
    pub async fn stop(mut self) -> PathBuf {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the pid of the child this guard started and has not
            // reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        timeout(STEP, self.child.wait())
            .await
            .expect("tshark did not stop")
            .expect("waiting for tshark");
        self.pcap.clone()
    }
}

/// Dissects a capture file: `decode_as` are tshark `-d` rules (`tcp.port==N,rpc`), `filter`
/// a display filter, `fields` the fields printed per packet, tab-separated, every
/// occurrence of a field joined by commas. Panics if tshark fails.
pub async fn dissect(pcap: &Path, decode_as: &[String], filter: &str, fields: &[&str]) -> String {
    let mut cmd = Command::new(TSHARK);
    cmd.arg("-r").arg(pcap);
    for d in decode_as {
        cmd.args(["-d", d]);
    }
    cmd.args(["-Y", filter, "-T", "fields", "-E", "occurrence=a"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = timeout(
        Duration::from_secs(120),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("tshark -r timed out")
    .expect("tshark -r did not start");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tshark -r failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
