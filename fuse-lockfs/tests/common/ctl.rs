//! A `lockfs-lockctl` helper process driven line by line: a separate process
//! (its own POSIX lock owner, its own open files) that the lock tests command
//! and whose answers they read with a time limit. Killed when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::OP_TIMEOUT;

/// One helper process.
pub struct Ctl {
    pub child: Child,
    stdin: ChildStdin,
    pub lines: mpsc::Receiver<String>,
}

impl Ctl {
    pub fn start() -> Ctl {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockfs-lockctl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lockfs-lockctl");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ctl {
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to helper");
        self.stdin.flush().unwrap();
    }

    pub fn recv(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Runs a command that must answer within `limit`.
    pub fn cmd_within(&mut self, cmd: &str, limit: Duration) -> String {
        self.send(cmd);
        self.recv(limit)
            .unwrap_or_else(|| panic!("helper did not answer {cmd:?}"))
    }

    /// Runs a command that must answer within the operation time limit.
    pub fn cmd(&mut self, cmd: &str) -> String {
        self.cmd_within(cmd, OP_TIMEOUT)
    }

    pub fn ok(&mut self, cmd: &str) -> String {
        let a = self.cmd(cmd);
        assert!(a.starts_with("ok"), "{cmd:?} answered {a:?}");
        a
    }

    pub fn open(&mut self, path: &Path, mode: &str) -> u32 {
        let a = self.ok(&format!("open {} {mode}", path.display()));
        a[3..].trim().parse().unwrap()
    }

    /// Asserts `cmd` fails with `errno`.
    pub fn fails(&mut self, cmd: &str, errno: i32) {
        let a = self.cmd(cmd);
        assert!(
            a.starts_with(&format!("err {errno} ")),
            "{cmd:?} answered {a:?}, expected errno {errno}"
        );
    }

    /// Waits (bounded) for the helper to end, after a kill or an `exit`.
    pub fn reap(&mut self) {
        let t0 = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(t0.elapsed() < OP_TIMEOUT, "helper did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
