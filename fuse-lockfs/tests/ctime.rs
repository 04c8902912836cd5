//! `chown(path, -1, -1)` changes no owner but, as on ext4, updates the file's ctime:
//! the mount passes the call through to the backing file system.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

fn ctime_ns(p: &Path) -> i128 {
    let m = std::fs::metadata(p).unwrap();
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

fn chown_none(p: &Path) {
    let c = cpath(p);
    // SAFETY: valid C string; -1 ids change nothing.
    let r = unsafe { libc::chown(c.as_ptr(), u32::MAX, u32::MAX) };
    assert_eq!(
        r,
        0,
        "chown(-1, -1) of {}: errno {}",
        p.display(),
        last_errno()
    );
}

/// The ctime before and after `chown(p, -1, -1)`, with time to pass in between (the
/// kernel's timestamps advance in clock ticks).
fn around_chown(p: &Path) -> (i128, i128) {
    let before = ctime_ns(p);
    std::thread::sleep(Duration::from_millis(30));
    chown_none(p);
    (before, ctime_ns(p))
}

#[test]
fn chown_to_the_same_ids_updates_ctime_like_the_backing_fs() {
    let Some(fx) = mount() else { return };
    // The backing file system itself, for reference.
    std::fs::write(fx.s("native"), b"x").unwrap();
    let (b, a) = around_chown(&fx.s("native"));
    assert!(
        a > b,
        "the backing file system does not update ctime on chown(-1, -1)"
    );

    let f = fx.m("f");
    within({
        let f = f.clone();
        move || std::fs::write(f, b"x").unwrap()
    });
    let (before, after) = within({
        let f = f.clone();
        move || around_chown(&f)
    });
    assert!(
        after > before,
        "ctime on the mount unchanged: {before} -> {after}"
    );
    assert_eq!(
        ctime_ns(&fx.s("f")),
        after,
        "the mount shows the backing file's ctime"
    );

    // A directory too.
    within({
        let d = fx.m("d");
        move || std::fs::create_dir(d).unwrap()
    });
    let (before, after) = within({
        let d = fx.m("d");
        move || around_chown(&d)
    });
    assert!(after > before, "directory ctime on the mount unchanged");
}
