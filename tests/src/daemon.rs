//! Daemons and mounts a test starts, ended by a guard.
//!
//! Every end-to-end test of the `lockfs` binary starts a process (`lockfs
//! serve`, `lockfs mount`), waits until it is ready, stops it by its own pid and
//! clears the mount it may leave behind. This module is the one place that
//! does it: a [`Daemon`] forwards the process's log to the test's output,
//! waits for a ready line with a deadline, and on drop stops the process
//! (SIGTERM, then SIGKILL after a timeout) and lazily unmounts every mount
//! point it was given, so a test that fails half way leaves nothing running or
//! mounted.

use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// How long a stopped daemon may take to exit before it is killed.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Why mount tests cannot run here (they need root and `/dev/fuse`), or
/// `None` when they can.
pub fn fuse_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        Some("needs root to mount (not root)".into())
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is absent".into())
    } else {
        None
    }
}

/// Whether `path` is currently the mount point of a FUSE file system.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && f[4] == want && l.contains(" - fuse")
    })
}

/// Detaches the FUSE mount at `path` (a lazy unmount, which does not need the
/// daemon to answer) if there is one; returns whether there was.
pub fn unmount_lazy(path: &Path) -> bool {
    if !is_mounted(path) {
        return false;
    }
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    true
}

/// Bytes from their hexadecimal spelling (as `lockfs fh` prints a handle).
pub fn unhex(hex: &str) -> Vec<u8> {
    let hex = hex.trim();
    assert!(hex.len() % 2 == 0, "odd hex {hex:?}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// `lockfs fh --config CONFIG PATH`: the NLM file handle of `path`, with the
/// `lockfs` binary at `bin`.
pub fn file_handle(bin: impl AsRef<OsStr>, config: &Path, path: &Path) -> Vec<u8> {
    let out = Command::new(bin)
        .arg("fh")
        .arg("--config")
        .arg(config)
        .arg(path)
        .output()
        .expect("run lockfs fh");
    assert!(
        out.status.success(),
        "lockfs fh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    unhex(&String::from_utf8(out.stdout).expect("hex is text"))
}

/// `lockfs locks --json --socket SOCKET`: one daemon's lock listing (a JSON array of
/// rows), with the `lockfs` binary at `bin`; given up after 30 s.
pub fn lock_listing(bin: impl AsRef<OsStr>, socket: &Path) -> serde_json::Value {
    let out = Command::new("timeout")
        .arg("30")
        .arg(bin)
        .args(["locks", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("run lockfs locks");
    assert!(
        out.status.success(),
        "lockfs locks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lockfs locks --json answers JSON")
}

/// How a [`Daemon`] ended when it was stopped.
#[derive(Debug)]
pub struct Stopped {
    /// Its exit status, if it exited by itself within the timeout (`None`:
    /// it had to be killed, or had been reaped already).
    pub status: Option<ExitStatus>,
    /// Whether one of its mount points was still mounted after it ended (and
    /// has been detached since).
    pub left_mounted: bool,
}

/// How to start a [`Daemon`]: a command, a name for its log lines, and the
/// mount points to clear once it is gone.
pub struct Spawn {
    cmd: Command,
    tag: String,
    log: Option<PathBuf>,
    echo: bool,
    mounts: Vec<PathBuf>,
    stop_signal: i32,
}

impl Spawn {
    /// Runs `cmd`, its standard error read line by line.
    pub fn new(cmd: Command) -> Self {
        Self {
            cmd,
            tag: "daemon".into(),
            log: None,
            echo: true,
            mounts: Vec::new(),
            stop_signal: libc::SIGTERM,
        }
    }

    /// `bin serve --config CONFIG` with `RUST_LOG=rust_log`.
    pub fn serve(bin: impl AsRef<OsStr>, config: &Path, rust_log: &str) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", rust_log);
        Self::new(cmd)
    }

    /// The command, for more arguments or environment.
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Its log lines are echoed to the test's output as `[tag] line`.
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.into();
        self
    }

    /// Its log lines are appended to `file` too, and not echoed.
    pub fn log_to(mut self, file: &Path) -> Self {
        self.log = Some(file.to_path_buf());
        self.echo = false;
        self
    }

    /// `mnt` is unmounted (lazily) once the process is gone, if still mounted.
    pub fn unmounts(mut self, mnt: &Path) -> Self {
        self.mounts.push(mnt.to_path_buf());
        self
    }

    /// Stop it with `signal` rather than SIGTERM.
    pub fn stop_signal(mut self, signal: i32) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Starts the process.
    pub fn spawn(mut self) -> Daemon {
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", self.cmd));
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr piped");
        let mut file = self.log.as_ref().map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
        });
        let (tag, echo) = (self.tag.clone(), self.echo);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        Daemon {
            child: Some(child),
            lines: Mutex::new(lines),
            mounts: self.mounts,
            stop_signal: self.stop_signal,
            tcp: None,
            startup: Vec::new(),
            ended: false,
        }
    }

    /// Starts `lockfs serve` (see [`Spawn::serve`]) and waits, up to `within`,
    /// until it has logged its admin socket (its last word before serving);
    /// the NLM TCP address it logged on the way is [`Daemon::tcp`].
    pub fn start_serve(self, within: Duration) -> Daemon {
        let mut d = self.spawn();
        let mut tcp = None;
        let mut startup = Vec::new();
        d.wait_line(within, "the daemon logs its admin socket", |line| {
            if let Some(rest) = line.split("tcp [").nth(1) {
                tcp = rest.split(']').next().and_then(|a| a.parse().ok());
            }
            startup.push(line.to_string());
            line.contains("admin socket")
        });
        d.tcp = tcp;
        d.startup = startup;
        d
    }
}

/// A process a test started; stopped (SIGTERM, SIGKILL after
/// [`STOP_WITHIN`]) and its mount points detached when dropped, unless it was
/// stopped or killed before (a successor may use the same mount point by then).
pub struct Daemon {
    child: Option<Child>,
    // Behind a mutex so that the guard can be shared with the test's threads.
    lines: Mutex<mpsc::Receiver<String>>,
    mounts: Vec<PathBuf>,
    stop_signal: i32,
    tcp: Option<SocketAddr>,
    startup: Vec<String>,
    // Stopped or killed, its mounts cleared: a later drop must not touch the
    // mount point, which a successor may be using by then.
    ended: bool,
}

impl Daemon {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The NLM TCP address `lockfs serve` logged at start, if it did.
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// Whether `lockfs serve` logged a line containing `text` before it was
    /// ready (see [`Spawn::start_serve`]).
    pub fn logged_at_start(&self, text: &str) -> bool {
        self.startup.iter().any(|l| l.contains(text))
    }

    /// Reads its log lines until `until` returns true for one, which is
    /// returned; every line is shown to `until`. Panics with `what` if none
    /// does within `within`, or if the process closes its log first.
    pub fn wait_line(
        &self,
        within: Duration,
        what: &str,
        mut until: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if until(&line) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{what}: not within {within:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{what}: the process closed its log first")
                }
            }
        }
    }

    /// The log lines read so far and not yet consumed by [`Daemon::wait_line`].
    pub fn drain_lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.try_iter().collect()
    }

    /// Whether it has exited (reaping it if so); panics if it was stopped.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut().expect("the daemon was stopped already");
        let st = c.try_wait().expect("waitpid");
        if st.is_some() {
            // Reaped: its pid may name another process from now on.
            self.child = None;
        }
        st
    }

    /// Sends `signal` to its own pid (nothing if it is gone).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: signalling our own child by its pid; it is not reaped yet
            // (we hold its `Child`), so the pid cannot name another process.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Waits up to `limit` for it to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends its stop signal and waits up to `limit` for it to exit, nothing
    /// more: no kill, no unmount, so the test can see what the process left
    /// behind (the drop still cleans up).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal(self.stop_signal);
        self.wait_exit(limit)
    }

    /// Stops it as an administrator would (its stop signal, SIGTERM unless
    /// told otherwise), kills it if it has not exited within `limit`, then
    /// detaches whatever it left mounted.
    pub fn stop_within(&mut self, limit: Duration) -> Stopped {
        self.signal(self.stop_signal);
        let status = self.wait_exit(limit);
        if status.is_none() {
            self.signal(libc::SIGKILL);
            self.wait_exit(STOP_WITHIN);
        }
        self.ended = true;
        Stopped {
            status,
            left_mounted: self.detach(),
        }
    }

    /// [`Daemon::stop_within`] with [`STOP_WITHIN`].
    pub fn stop(&mut self) -> Stopped {
        self.stop_within(STOP_WITHIN)
    }

    /// SIGKILL (a crash), then detaches the dead mount; whether it ended
    /// within [`STOP_WITHIN`].
    pub fn kill(&mut self) -> bool {
        self.signal(libc::SIGKILL);
        let ended = self.child.is_none() || self.wait_exit(STOP_WITHIN).is_some();
        self.ended = true;
        self.detach();
        ended
    }

    /// Detaches each of its mount points still mounted; whether there was one.
    pub fn detach(&self) -> bool {
        let mut any = false;
        for m in &self.mounts {
            any |= unmount_lazy(m);
        }
        any
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.ended {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Spawn {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        Spawn::new(cmd).tag("sh")
    }

    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_dropped_guard_ends_its_process_and_stop_kills_one_that_ignores_the_signal() {
        let d = sh("echo ready >&2; exec sleep 100").spawn();
        let line = d.wait_line(Duration::from_secs(10), "ready", |l| l == "ready");
        assert_eq!(line, "ready");
        let pid = d.pid().unwrap();
        drop(d);
        assert!(!alive(pid), "the dropped guard's process {pid} still runs");

        let mut d = sh("trap '' TERM; echo ready >&2; while :; do sleep 0.05; done").spawn();
        d.wait_line(Duration::from_secs(10), "ready", |l| l == "ready");
        let pid = d.pid().unwrap();
        let stopped = d.stop_within(Duration::from_millis(300));
        assert!(stopped.status.is_none(), "it ignored SIGTERM: {stopped:?}");
        assert!(!alive(pid), "killed after the timeout");
    }

    #[test]
    fn a_ready_line_that_never_comes_fails_at_the_deadline() {
        let d = sh("exec sleep 100").spawn();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            d.wait_line(Duration::from_millis(200), "the ready line", |_| true)
        }));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("the ready line: not within"), "{msg}");
    }

    #[test]
    fn hex_handles_decode() {
        assert_eq!(unhex("00ff10\n"), vec![0, 255, 16]);
    }
}
