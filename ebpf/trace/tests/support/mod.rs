//! Shared helpers of the lockfs-trace integration tests: loading the tracer
//! in a per-test pin directory (skipping loudly only when BPF cannot load),
//! and driving the fixture process with timeouts.
#![allow(dead_code)] // each test file uses a different subset

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lockfs_trace::{Event, TraceError, TraceOptions, Tracer};

pub const FIXTURE: &str = env!("CARGO_BIN_EXE_lockfs-trace-fixture");
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports a skip loudly (past the harness's capture); fails the test under
/// `CI=true`.
pub fn skip_notice(msg: &str) {
    lockfs_testkit::skipping!("{msg}");
}

/// A tracer whose pins are removed when the test ends.
pub struct TestTracer {
    pub tracer: Tracer,
}

impl Drop for TestTracer {
    fn drop(&mut self) {
        if let Err(e) = self.tracer.unpin() {
            eprintln!("unpinning {}: {e}", self.tracer.pin_dir().display());
        }
    }
}

impl std::ops::Deref for TestTracer {
    type Target = Tracer;
    fn deref(&self) -> &Tracer {
        &self.tracer
    }
}

impl std::ops::DerefMut for TestTracer {
    fn deref_mut(&mut self) -> &mut Tracer {
        &mut self.tracer
    }
}

/// Loads the tracer pinned under `/sys/fs/bpf/lockfs-test-<pid>-<name>`.
/// Returns `None` (after a loud message) only when BPF truly cannot load
/// here: not root, no BTF, or a missing kernel feature. Any other failure
/// fails the test.
pub fn load_tracer(name: &str) -> Option<TestTracer> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_notice(&format!(
            "{name}: lockfs-trace tests need root to load BPF programs"
        ));
        return None;
    }
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/lockfs-test-{}-{name}",
        std::process::id()
    ));
    let opts = TraceOptions {
        pin_dir,
        replace_stale_pins: true,
    };
    match Tracer::load(opts) {
        Ok(tracer) => Some(TestTracer { tracer }),
        Err(
            e @ (TraceError::NoPrivilege { .. }
            | TraceError::NoBtf { .. }
            | TraceError::FeatureMissing { .. }),
        ) => {
            skip_notice(&format!("{name}: BPF cannot load on this machine: {e}"));
            None
        }
        Err(e) => panic!("loading the tracer failed: {e}"),
    }
}

/// A fixture process with line-based stdout and a writable stdin. Killed
/// on drop if still running.
pub struct Fixture {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Fixture {
    pub fn spawn(args: &[&str]) -> Fixture {
        let mut child = Command::new(FIXTURE)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the fixture");
        let stdout = child.stdout.take().expect("fixture stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Fixture {
            child,
            stdin,
            lines: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the next line and checks it.
    pub fn expect_line(&self, want: &str) {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => assert_eq!(line, want, "fixture {} said something else", self.pid()),
            Err(e) => panic!("fixture {} did not say {want:?}: {e}", self.pid()),
        }
    }

    pub fn send_line(&mut self) {
        let stdin = self.stdin.as_mut().expect("fixture stdin");
        stdin.write_all(b"go\n").expect("writing to the fixture");
        stdin.flush().expect("flushing fixture stdin");
    }

    /// Waits (bounded) for a clean exit.
    pub fn finish(mut self) {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the fixture") {
                assert!(status.success(), "fixture exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "fixture did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Collects events matching `keep` until `done` says the set is complete or
/// the timeout passes.
pub fn collect_events(
    tracer: &mut Tracer,
    keep: impl Fn(&Event) -> bool,
    done: impl Fn(&[Event]) -> bool,
    timeout: Duration,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tracer
            .poll_events(left.min(Duration::from_millis(200)))
            .expect("polling events");
        out.extend(batch.into_iter().filter(|e| keep(e)));
    }
    out
}

/// Runs `bpftool map dump pinned <path>` and returns its output.
pub fn bpftool_dump(path: &std::path::Path) -> String {
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("running bpftool (install it with scripts/setup-ebpf.sh)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
