//! Per-file I/O modes (kernel passthrough or direct I/O through the daemon), the
//! lock forwarding switch, read-only mounts and concurrent use.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::Arc;

use common::*;
use fuse_lockfs::{FileAttr, IoMode, MountOptions};

/// The classic mandatory-locking mark: set-group-ID without group execute.
fn mandatory_mark(_ino: u64, attr: &FileAttr) -> IoMode {
    if attr.perm & 0o2010 == 0o2000 {
        IoMode::DirectIo
    } else {
        IoMode::Passthrough
    }
}

fn policy_options() -> MountOptions {
    MountOptions {
        io_policy: Some(Arc::new(mandatory_mark)),
        ..MountOptions::default()
    }
}

fn exercise(path: std::path::PathBuf, backing: std::path::PathBuf) {
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all(&data).unwrap();
    f.write_all_at(b"patch", 500_000).unwrap();
    let mut want = data.clone();
    want[500_000..500_005].copy_from_slice(b"patch");
    let mut got = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "read back through the mount");
    assert!(
        fs::read(&backing).unwrap() == want,
        "backing file equals what was written"
    );
    // Reads past the end are short, not errors.
    let mut tail = [0u8; 64];
    assert_eq!(f.read_at(&mut tail, want.len() as u64 - 10).unwrap(), 10);
    assert_eq!(f.read_at(&mut tail, want.len() as u64 + 10).unwrap(), 0);
}

#[test]
fn passthrough_and_direct_io_files_both_read_and_write_correctly() {
    let Some(fx) = mount_with(policy_options()) else {
        return;
    };
    fs::write(fx.s("plain"), b"").unwrap();
    fs::write(fx.s("mand"), b"").unwrap();
    fs::set_permissions(fx.s("mand"), fs::Permissions::from_mode(0o2644)).unwrap();
    if is_root() {
        assert!(
            fx.handle().stats().passthrough,
            "passthrough negotiated as root"
        );
    }

    // While a file is open, the mount reports which mode serves it.
    let (p, m) = (fx.m("plain"), fx.m("mand"));
    let fp = within(move || File::open(p).unwrap());
    let s = fx.handle().stats();
    assert_eq!((s.open_files, s.direct_io_files), (1, 0), "{s:?}");
    let fm = within(move || File::open(m).unwrap());
    let s = fx.handle().stats();
    assert_eq!((s.open_files, s.direct_io_files), (2, 1), "{s:?}");
    drop((fp, fm));

    let before = fx.handle().stats().daemon_io_requests;
    let (p, s) = (fx.m("plain"), fx.s("plain"));
    within(move || exercise(p, s));
    let after_plain = fx.handle().stats().daemon_io_requests;
    if fx.handle().stats().passthrough {
        assert_eq!(
            after_plain, before,
            "passthrough data never reaches the daemon"
        );
    }
    let (p, s) = (fx.m("mand"), fx.s("mand"));
    within(move || exercise(p, s));
    let after_mand = fx.handle().stats().daemon_io_requests;
    assert!(
        after_mand >= after_plain + 4,
        "direct-I/O reads and writes are served by the daemon ({after_plain} -> {after_mand})"
    );
    // Several processes on a direct-I/O file.
    let out = sh_ok(&format!(
        "printf 0123456789 | dd of={m}/mand bs=1 seek=3 conv=notrunc status=none && head -c 13 {m}/mand | tail -c 10",
        m = fx.mnt.display()
    ));
    assert_eq!(out, "0123456789");
}

#[test]
fn one_io_mode_per_inode_while_it_is_open() {
    let Some(fx) = mount_with(policy_options()) else {
        return;
    };
    fs::write(fx.s("f"), b"abc").unwrap();
    let (m, s) = (fx.m("f"), fx.s("f"));
    let first = within(move || OpenOptions::new().read(true).write(true).open(m).unwrap());
    // The policy would now choose direct I/O, but the open inode keeps its mode:
    // mixing modes on one inode makes the kernel fail the open with EIO.
    fs::set_permissions(&s, fs::Permissions::from_mode(0o2644)).unwrap();
    let m = fx.m("f");
    let second = within(move || {
        let mut f = File::open(m).unwrap();
        let mut b = String::new();
        f.read_to_string(&mut b).unwrap();
        assert_eq!(b, "abc");
        f
    });
    let st = fx.handle().stats();
    assert_eq!((st.open_files, st.direct_io_files), (2, 0), "{st:?}");
    drop((first, second));
    // Once every open is released, the next open asks the policy again.
    wait_open_files(&fx, 0);
    let m = fx.m("f");
    let third = within(move || File::open(m).unwrap());
    let st = fx.handle().stats();
    assert_eq!((st.open_files, st.direct_io_files), (1, 1), "{st:?}");
    drop(third);
}

#[test]
fn direct_io_everywhere_when_passthrough_is_off() {
    let opts = MountOptions {
        passthrough: false,
        ..MountOptions::default()
    };
    let Some(fx) = mount_with(opts) else { return };
    assert!(!fx.handle().stats().passthrough);
    fs::write(fx.s("f"), b"").unwrap();
    let (m, s) = (fx.m("f"), fx.s("f"));
    let f = within(move || File::open(m).unwrap());
    assert_eq!(fx.handle().stats().direct_io_files, 1);
    drop(f);
    let m = fx.m("f");
    within(move || exercise(m, s));
    // Shared writable mmap of a direct-I/O file works (FUSE_DIRECT_IO_ALLOW_MMAP).
    let m = fx.m("f");
    let s = fx.s("f");
    within(move || {
        let f = OpenOptions::new().read(true).write(true).open(&m).unwrap();
        // SAFETY: mapping 4096 bytes of an open file; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap errno {}", last_errno());
        // SAFETY: p maps at least 4096 writable bytes.
        unsafe {
            *(p as *mut u8) = b'M';
            libc::msync(p, 4096, libc::MS_SYNC);
            libc::munmap(p, 4096);
        }
        drop(f);
        assert_eq!(fs::read(&s).unwrap()[0], b'M');
    });
}

#[test]
fn kernel_keeps_locks_unless_forwarding_is_asked_for() {
    fn setlk(path: std::path::PathBuf) -> i32 {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        // SAFETY: an all-zero flock is valid; fields set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        // SAFETY: valid descriptor and flock pointer.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
            0
        } else {
            last_errno()
        }
    }
    {
        let Some(fx) = mount() else { return };
        fs::write(fx.s("f"), b"").unwrap();
        let m = fx.m("f");
        assert_eq!(
            within(move || setlk(m)),
            0,
            "locks stay in the kernel by default"
        );
        let out = sh(&format!("flock -n {m}/f true", m = fx.mnt.display()));
        assert!(out.status.success());
    }
    let opts = MountOptions {
        forward_locks: true,
        ..MountOptions::default()
    };
    let Some(fx) = mount_with(opts) else { return };
    fs::write(fx.s("f"), b"").unwrap();
    let m = fx.m("f");
    // Forwarded to the daemon, which keeps them in a private lock table.
    assert_eq!(within(move || setlk(m)), 0);
    let out = sh(&format!("flock -n {m}/f true", m = fx.mnt.display()));
    assert!(out.status.success());
}

#[test]
fn read_only_mounts_refuse_changes_with_erofs() {
    let opts = MountOptions {
        read_only: true,
        ..MountOptions::default()
    };
    let Some(fx) = mount_with(opts) else { return };
    fs::write(fx.s("f"), b"ro").unwrap();
    let mnt = fx.mnt.clone();
    within(move || {
        assert_eq!(fs::read(mnt.join("f")).unwrap(), b"ro");
        assert_eq!(
            err_of(OpenOptions::new().write(true).open(mnt.join("f"))),
            libc::EROFS
        );
        assert_eq!(err_of(fs::create_dir(mnt.join("d"))), libc::EROFS);
        assert_eq!(err_of(fs::remove_file(mnt.join("f"))), libc::EROFS);
    });
}

#[test]
fn many_threads_and_processes_at_once() {
    let opts = MountOptions {
        n_threads: 4,
        ..policy_options()
    };
    let Some(fx) = mount_with(opts) else { return };
    fs::create_dir(fx.s("d")).unwrap();
    let mnt = fx.mnt.clone();
    within(move || {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let mnt = mnt.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let p = mnt.join(format!("d/t{t}-{i}"));
                        fs::write(&p, format!("{t}:{i}")).unwrap();
                        if t % 2 == 1 {
                            fs::set_permissions(&p, fs::Permissions::from_mode(0o2644)).unwrap();
                        }
                        assert_eq!(fs::read_to_string(&p).unwrap(), format!("{t}:{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fs::read_dir(mnt.join("d")).unwrap().count(), 800);
    });
    let out = sh_ok(&format!(
        "cd {m}/d && for i in 1 2 3 4; do (cat t0-* > /dev/null; ls > /dev/null) & done; wait; cat t3-99",
        m = fx.mnt.display()
    ));
    assert_eq!(out, "3:99");
}
