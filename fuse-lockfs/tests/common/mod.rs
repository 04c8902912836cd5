//! Shared fixture of the mount tests: a real lockfs mount in a temporary directory
//! that is always unmounted, and helpers that run every operation on the mount with
//! a time limit so a stuck FUSE request fails the test instead of hanging it.

#![allow(dead_code)]

pub mod ctl;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use fuse_lockfs::{MountHandle, MountOptions};

/// Time limit of one operation on the mount.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// An unprivileged user for permission tests.
pub const NOBODY: u32 = 65534;

/// A mounted lockfs over a fresh source directory.
pub struct Fixture {
    pub src: PathBuf,
    pub mnt: PathBuf,
    handle: Option<MountHandle>,
    conn: Option<u64>,
    // Dropped last: the directories outlive the mount.
    _dir: tempfile::TempDir,
}

/// Whether FUSE can be used here; says so loudly when it cannot.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        true
    } else {
        lockfs_testkit::skipping!("lockfs mount test: /dev/fuse is absent on this machine");
        false
    }
}

/// Mounts a fresh source with default options, or `None` (test skipped).
pub fn mount() -> Option<Fixture> {
    mount_with(MountOptions::default())
}

/// Mounts a fresh source with `opts`, or `None` when FUSE is absent.
pub fn mount_with(opts: MountOptions) -> Option<Fixture> {
    if !fuse_available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Unprivileged test users must be able to reach the mount point.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = dir.path().join("src");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    let handle = fuse_lockfs::mount(&src, &mnt, opts).expect("mount lockfs");
    let conn = within({
        let mnt = mnt.clone();
        move || {
            use std::os::unix::fs::MetadataExt;
            let dev = std::fs::metadata(&mnt).expect("stat mount point").dev();
            // FUSE connections are named by the anonymous device's minor number.
            (libc::major(dev) == 0).then(|| u64::from(libc::minor(dev)))
        }
    });
    assert!(is_mounted(&mnt), "{} is not a FUSE mount", mnt.display());
    Some(Fixture {
        src,
        mnt,
        handle: Some(handle),
        conn,
        _dir: dir,
    })
}

/// Mounts the existing directory `src` with `opts` on a fresh mount point, or
/// `None` when FUSE is absent. `src` is left as it is.
pub fn mount_with_source(src: &Path, opts: MountOptions) -> Option<Fixture> {
    if !fuse_available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let handle = fuse_lockfs::mount(src, &mnt, opts).expect("mount lockfs");
    assert!(is_mounted(&mnt), "{} is not a FUSE mount", mnt.display());
    Some(Fixture {
        src: src.to_path_buf(),
        mnt,
        handle: Some(handle),
        conn: None,
        _dir: dir,
    })
}

impl Fixture {
    /// Path `rel` inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Path `rel` inside the source (backing) directory.
    pub fn s(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    pub fn handle(&self) -> &MountHandle {
        self.handle.as_ref().expect("mounted")
    }

    /// Unmounts now and reports the result (the drop guard would do it anyway).
    /// The directories stay until the fixture is dropped.
    pub fn unmount(&mut self) -> fuse_lockfs::Result<()> {
        let h = self.handle.take().expect("mounted");
        h.unmount()
    }

    fn abort_connection(&self) {
        if let Some(n) = self.conn {
            let p = format!("/sys/fs/fuse/connections/{n}/abort");
            if let Err(e) = std::fs::write(&p, b"1") {
                eprintln!("could not abort FUSE connection {n}: {e}");
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            // Unmounted by the test, successfully or not: leave no mount behind.
            self.detach();
            return;
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(handle.unmount());
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("unmount failed: {e}"),
            Err(_) => {
                // Last resort: fail every pending request so the loops can exit.
                eprintln!("unmount hung; aborting the FUSE connection");
                self.abort_connection();
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
        }
        // Whatever happened, leave no mount behind.
        self.detach();
    }
}

impl Fixture {
    fn detach(&self) {
        lockfs_testkit::daemon::unmount_lazy(&self.mnt);
    }
}

pub use lockfs_testkit::daemon::is_mounted;

/// Waits (bounded) until the daemon holds `n` open files: the kernel sends RELEASE
/// after close(2) has returned, so a test that reopens at once can overtake it.
pub fn wait_open_files(fx: &Fixture, n: usize) {
    let t0 = std::time::Instant::now();
    while fx.handle().stats().open_files != n {
        assert!(
            t0.elapsed() < OP_TIMEOUT,
            "open files never came to {n}: {:?}",
            fx.handle().stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs `f` on a helper thread and fails the test if it takes longer than
/// [`OP_TIMEOUT`].
pub fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(OP_TIMEOUT) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("operation on the mount did not finish within {OP_TIMEOUT:?}"),
    }
}

/// Runs a shell script as root with a time limit.
pub fn sh(script: &str) -> Output {
    sh_as(None, script)
}

/// Runs a shell script as `uid` (group the same number) with a time limit.
pub fn sh_as(uid: Option<u32>, script: &str) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "30", "sh", "-c", script]);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run sh");
    assert_ne!(out.status.code(), Some(124), "script timed out: {script}");
    out
}

/// Runs a script that must succeed and returns its stdout.
pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The raw errno of an I/O result that must have failed.
pub fn err_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

/// A C string for a path.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The errno of the last failed libc call on this thread.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Number of descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether the tests run as root (they are meant to; some checks need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}
