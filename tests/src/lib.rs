//! Test support shared by every lockfs crate's tests and benches.
//!
//! It exists so that the rules every test follows are written once:
//! - a test that cannot run here (a capability the machine lacks) says so
//!   loudly with [`skip!`], and under `CI=true`, where every capability is
//!   present, the skip fails the test instead;
//! - a test that waits for something asynchronous waits with a deadline
//!   ([`eventually`]), never with a bare sleep;
//! - code a bench needs that is unsafe (a counting allocator) lives here, so
//!   the crates that forbid `unsafe` can still measure themselves;
//! - a process or host a test starts is ended by a guard that cleans up on
//!   drop, with timeouts, so a failing test leaves nothing running, mounted
//!   or locked behind it ([`daemon`], and `nlm` with the `nlm` feature);
//! - a wire test captures and dissects its session with tshark the same way
//!   (`capture`, with the `nlm` feature);
//! - a test that needs a network of its own re-runs its body in namespaces
//!   of its own, with a time limit, the same way ([`rerun`]).

pub mod alloc;
#[cfg(feature = "nlm")]
pub mod capture;
pub mod daemon;
#[cfg(feature = "nlm")]
pub mod nlm;
pub mod posix;
pub mod rerun;

use std::time::{Duration, Instant};

/// Whether the suite runs in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports a skipped test on stderr; panics under `CI=true`. Use [`skip!`]
/// or [`skipping!`]. The test is named by its thread (the test harnesses name
/// each test's thread after the test), else by `module`.
pub fn report_skip(module: &str, why: &str) {
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(module);
    // Straight to the stderr handle: the test harness captures `eprintln!`
    // and shows it only for failing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: {why} !!!!!!!!\n"
    );
    if in_ci() {
        panic!("{test} skipped under CI=true, where every capability must be present: {why}");
    }
}

/// Skips the current test (returns from it) with a reason, loudly; under
/// `CI=true` the test fails instead. The arguments are those of `format!`.
///
/// ```should_panic
/// # std::env::set_var("CI", "true");
/// fn a_test() {
///     lockfs_testkit::skip!("no {} here", "/dev/fuse");
/// }
/// a_test();
/// ```
#[macro_export]
macro_rules! skip {
    ($($why:tt)+) => {{
        $crate::skipping!($($why)+);
        return;
    }};
}

/// Reports, like [`skip!`], that the current test is being skipped (and
/// fails it under `CI=true`), without returning: for tests that skip from a
/// helper or must clean up before they return.
#[macro_export]
macro_rules! skipping {
    ($($why:tt)+) => {
        $crate::report_skip(module_path!(), &format!($($why)+))
    };
}

/// Polls `probe` until it returns `Some`, and returns that value; panics with
/// `what` once `deadline` has passed without it.
pub fn eventually<T>(deadline: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            t0.elapsed() < deadline,
            "{what}: not true within {deadline:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventually_returns_the_first_value_and_fails_at_the_deadline() {
        let mut n = 0;
        assert_eq!(
            eventually(Duration::from_secs(5), "n reaches 3", || {
                n += 1;
                (n == 3).then_some(n)
            }),
            3
        );
        let r = std::panic::catch_unwind(|| {
            eventually(Duration::from_millis(20), "never", || None::<()>)
        });
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("never: not true within"), "{msg}");
    }
}
