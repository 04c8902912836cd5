//! Running one ignored test of the current test binary again, in namespaces of its own.
//!
//! Tests that start daemons on fixed ports, register with rpcbind, cut links or run a
//! cluster stack must not meet the rest of the suite's daemons on the machine's loopback.
//! Each such test is an outer test that re-runs its body (an `#[ignore]`d test of the
//! same binary) under `unshare`, and waits for it with a time limit, so a body that
//! hangs fails the outer test instead of holding CI. The re-run is written once here.

use std::process::Command;
use std::time::{Duration, Instant};

/// One re-run: `test` (an ignored test of this binary) in a new network namespace,
/// with its loopback up, and optionally a mount namespace, a shell set-up and
/// environment. Build it, then [`Rerun::run`].
#[must_use = "a re-run does nothing until run"]
pub struct Rerun<'a> {
    test: &'a str,
    limit: Duration,
    mount: bool,
    setup: Option<&'a str>,
    env: Vec<(&'a str, String)>,
}

impl<'a> Rerun<'a> {
    /// Re-runs `test` in a network namespace of its own; it must end within `limit`.
    pub fn new(test: &'a str, limit: Duration) -> Self {
        Self {
            test,
            limit,
            mount: false,
            setup: None,
            env: Vec::new(),
        }
    }

    /// Also in a private mount namespace (mounts made there vanish with it).
    pub fn with_mount_namespace(mut self) -> Self {
        self.mount = true;
        self
    }

    /// A shell command run in the namespaces before the test, after the loopback is up;
    /// the test runs only if it succeeds.
    pub fn setup(mut self, sh: &'a str) -> Self {
        self.setup = Some(sh);
        self
    }

    /// An environment variable for the re-run test.
    pub fn env(mut self, key: &'a str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    /// Runs it and waits; panics when it fails or outlives its limit (it is then
    /// killed: the shell execs the test, so the pid waited for is the test's).
    pub fn run(self) {
        let mut cmd = Command::new("unshare");
        cmd.arg("-n");
        if self.mount {
            cmd.args(["-m", "--propagation", "private"]);
        }
        let script = match self.setup {
            Some(s) => format!(r#"ip link set lo up && {s} && exec "$0" "$@""#),
            None => r#"ip link set lo up && exec "$0" "$@""#.to_string(),
        };
        cmd.args(["--", "sh", "-c", &script])
            .arg(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", self.test, "--ignored", "--nocapture"]);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run unshare (util-linux)");
        let deadline = Instant::now() + self.limit;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for the re-run test") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish in {:?}", self.test, self.limit);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{} failed: {status}", self.test);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The re-run body: in a network namespace of its own with only its loopback, up,
    /// and the environment given; fails or hangs when asked to.
    #[test]
    #[ignore = "run by the re-run tests of this module"]
    fn rerun_body() {
        let links = std::fs::read_to_string("/proc/net/dev").unwrap();
        let names: Vec<&str> = links
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(names, ["lo"], "{links}");
        let flags = std::fs::read_to_string("/sys/class/net/lo/operstate").unwrap();
        assert_ne!(flags.trim(), "down", "the loopback is up");
        assert_eq!(std::env::var("LOCKFS_RERUN_SEEN").as_deref(), Ok("yes"));
        match std::env::var("LOCKFS_RERUN_DO").as_deref() {
            Ok("fail") => panic!("asked to fail"),
            Ok("hang") => std::thread::sleep(Duration::from_secs(120)),
            _ => {}
        }
    }

    fn rerun(what: &str, limit: Duration) {
        Rerun::new("rerun::tests::rerun_body", limit)
            .env("LOCKFS_RERUN_SEEN", "yes")
            .env("LOCKFS_RERUN_DO", what)
            .run();
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_body_runs_in_a_network_of_its_own() {
        if !root() {
            crate::skip!("needs root for unshare -n");
        }
        rerun("pass", Duration::from_secs(60));
    }

    #[test]
    fn a_failing_body_fails_its_caller() {
        if !root() {
            crate::skip!("needs root for unshare -n");
        }
        let r = std::panic::catch_unwind(|| rerun("fail", Duration::from_secs(60)));
        let msg = *r
            .expect_err("a failed body must fail")
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("rerun_body failed"), "{msg}");
    }

    #[test]
    fn a_hanging_body_is_killed_at_its_limit() {
        if !root() {
            crate::skip!("needs root for unshare -n");
        }
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(|| rerun("hang", Duration::from_secs(2)));
        let msg = *r
            .expect_err("a hung body must fail")
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("did not finish in 2s"), "{msg}");
        assert!(t0.elapsed() < Duration::from_secs(60), "not waited out");
    }
}
