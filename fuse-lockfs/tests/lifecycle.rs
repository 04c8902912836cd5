//! Mounting, serving and unmounting, including from another thread as a signal
//! handler would.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use fuse_lockfs::{Error, MountOptions};

#[test]
fn a_handle_unmounts_and_the_mount_point_is_free_again() {
    let Some(mut fx) = mount() else { return };
    std::fs::write(fx.s("f"), b"x").unwrap();
    let mnt = fx.mnt.clone();
    within(move || assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"x"));
    let (tx, rx) = mpsc::channel();
    let fx = std::thread::spawn(move || {
        let r = fx.unmount().map_err(|e| e.to_string());
        let _ = tx.send(r);
        fx
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("unmount finished");
    assert_eq!(r, Ok(()));
    let fx = fx.join().unwrap();
    assert!(!is_mounted(&fx.mnt), "no FUSE mount left");
    assert_eq!(
        std::fs::read_dir(&fx.mnt).unwrap().count(),
        0,
        "the bare mount point is back"
    );
    assert!(fx.s("f").exists(), "the source is untouched");
}

#[test]
fn run_serves_until_an_unmounter_from_another_thread_ends_it() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(src.join("f"), b"served").unwrap();
    let mut mounted = fuse_lockfs::prepare(&src, &mnt, MountOptions::default()).unwrap();
    let unmounter = mounted.unmounter();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let _ = tx.send(mounted.run().map_err(|e| e.to_string()));
    });
    let m = mnt.clone();
    within(move || assert_eq!(std::fs::read(m.join("f")).unwrap(), b"served"));
    // What a SIGTERM handler thread does.
    let u2 = unmounter.clone();
    std::thread::spawn(move || u2.unmount().unwrap())
        .join()
        .unwrap();
    let res = rx.recv_timeout(Duration::from_secs(20));
    if res.is_err() {
        // Never leave the test hanging or a mount behind.
        let _ = unmounter.unmount();
        panic!("run did not return after unmount");
    }
    assert_eq!(res.unwrap(), Ok(()));
    server.join().unwrap();
    assert!(!is_mounted(&mnt));
    unmounter.unmount().expect("a second unmount is harmless");
}

#[test]
fn bad_sources_and_options_are_reported() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    match fuse_lockfs::mount(&file, &mnt, MountOptions::default()) {
        Err(Error::NotADirectory(p)) => assert_eq!(p, file),
        other => panic!("expected NotADirectory, got {other:?}"),
    }
    match fuse_lockfs::mount(dir.path().join("missing"), &mnt, MountOptions::default()) {
        Err(Error::Source { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::ENOENT)),
        other => panic!("expected Source error, got {other:?}"),
    }
    let bad = MountOptions {
        n_threads: 0,
        ..MountOptions::default()
    };
    assert!(matches!(
        fuse_lockfs::mount(dir.path(), &mnt, bad),
        Err(Error::Options(_))
    ));
    let bad = MountOptions {
        fsname: "a,b".into(),
        ..MountOptions::default()
    };
    assert!(matches!(
        fuse_lockfs::mount(dir.path(), &mnt, bad),
        Err(Error::Options(_))
    ));
    match fuse_lockfs::mount(
        dir.path(),
        dir.path().join("nomnt"),
        MountOptions::default(),
    ) {
        Err(Error::Mount { .. }) => {}
        other => panic!("expected Mount error, got {other:?}"),
    }
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_table_shows_lockfs() {
    let Some(fx) = mount() else { return };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*fx.mnt.to_string_lossy()))
        .expect("mount listed");
    assert!(line.contains(" - fuse.lockfs lockfs "), "{line}");
    assert!(
        line.contains("default_permissions") && line.contains("allow_other"),
        "{line}"
    );
}

/// The standalone server binary of this crate.
fn example_server() -> Option<std::path::PathBuf> {
    Some(std::path::PathBuf::from(env!(
        "CARGO_BIN_EXE_lockfs-passthrough"
    )))
}

struct Server {
    child: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Server {
    fn start(src: &std::path::Path, mnt: &std::path::Path) -> Option<Server> {
        use std::io::BufRead;
        let bin = example_server()?;
        let mut child = std::process::Command::new(bin)
            .arg(src)
            .arg(mnt)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
        let server = Server {
            child,
            mnt: mnt.to_path_buf(),
        };
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)).as_deref(),
            Ok("ready")
        );
        Some(server)
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mnt) {
            let c = cpath(&self.mnt);
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    if !fuse_available() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let Some(mut server) = Server::start(&src, &mnt) else {
            return;
        };
        let m = mnt.clone();
        within(move || std::fs::write(m.join("f"), b"before signal").unwrap());
        assert!(is_mounted(&mnt));
        // SAFETY: signalling our own child by its pid.
        assert_eq!(unsafe { libc::kill(server.child.id() as i32, sig) }, 0);
        let st = server
            .wait(Duration::from_secs(20))
            .expect("server exits on the signal");
        assert!(st.success(), "clean exit after signal {sig}: {st:?}");
        assert!(!is_mounted(&mnt), "unmounted after signal {sig}");
        assert_eq!(std::fs::read(src.join("f")).unwrap(), b"before signal");
    }
}

#[test]
fn a_killed_daemon_leaves_a_stale_mount_that_umount_l_clears() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let Some(mut server) = Server::start(&src, &mnt) else {
        return;
    };
    server.child.kill().unwrap();
    server.wait(Duration::from_secs(20)).expect("killed");
    let m = mnt.clone();
    let errno = within(move || err_of(std::fs::metadata(&m)));
    assert_eq!(errno, libc::ENOTCONN, "Transport endpoint is not connected");
    // The documented recovery.
    let out = sh(&format!("umount -l {}", mnt.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    assert!(std::fs::metadata(&mnt).unwrap().is_dir());
}

#[test]
fn the_descriptor_limit_can_be_raised_to_the_hard_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    // Start below the hard limit so that raising has something to do.
    let lowered = libc::rlimit {
        rlim_cur: lim.rlim_max - 1,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let n = fuse_lockfs::raise_fd_limit().unwrap();
    // As far as the system allows: fs.nr_open with CAP_SYS_RESOURCE, else the hard limit.
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n == lim.rlim_max || n == nr_open, "raised to {n}");
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert_eq!(lim.rlim_cur, lim.rlim_max);
}
