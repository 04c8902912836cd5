//! Every passthrough operation through a real mount, with the errno a program sees.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};

use common::*;

#[test]
fn files_written_through_the_mount_land_in_the_source() {
    let Some(fx) = mount() else { return };
    let (m, s) = (fx.m("a.txt"), fx.s("a.txt"));
    within(move || {
        let mut f = File::create(&m).unwrap();
        f.write_all(b"hello lockfs\n").unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert_eq!(fs::read(&s).unwrap(), b"hello lockfs\n");
        fs::write(&s, b"changed behind the mount").unwrap();
        let mut f = File::open(&m).unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "changed behind the mount");
        // Positional I/O and append.
        let f = OpenOptions::new().read(true).write(true).open(&m).unwrap();
        f.write_all_at(b"CHANGED", 0).unwrap();
        let mut buf = [0u8; 7];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"CHANGED");
        let mut a = OpenOptions::new().append(true).open(&m).unwrap();
        a.write_all(b"!").unwrap();
        drop(a);
        assert_eq!(fs::read(&s).unwrap(), b"CHANGED behind the mount!");
    });
    // Several processes: dd writes, cat reads.
    sh_ok(&format!(
        "dd if=/dev/urandom of={m}/big bs=64k count=16 status=none && cmp {m}/big {s}/big && cat {m}/big > /dev/null",
        m = fx.mnt.display(),
        s = fx.src.display()
    ));
    assert_eq!(fs::metadata(fx.s("big")).unwrap().len(), 1 << 20);
}

#[test]
fn lookup_and_getattr_report_source_attributes_and_enoent() {
    let Some(fx) = mount() else { return };
    fs::write(fx.s("f"), b"12345").unwrap();
    fs::set_permissions(fx.s("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let (m, mnt) = (fx.m("f"), fx.mnt.clone());
    let src_md = fs::metadata(fx.s("f")).unwrap();
    within(move || {
        let md = fs::metadata(&m).unwrap();
        assert_eq!(md.len(), 5);
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(md.ino(), src_md.ino(), "st_ino is the backing inode number");
        assert_eq!(md.mtime(), src_md.mtime());
        assert_eq!(md.mtime_nsec(), src_md.mtime_nsec());
        assert_eq!(err_of(fs::metadata(mnt.join("missing"))), libc::ENOENT);
        assert_eq!(err_of(fs::metadata(mnt.join("f/x"))), libc::ENOTDIR);
        assert_eq!(err_of(File::open(mnt.join("nodir/x"))), libc::ENOENT);
    });
}

#[test]
fn directories_mkdir_rmdir_readdir_and_their_errors() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        fs::create_dir(mnt.join("d")).unwrap();
        assert!(src.join("d").is_dir());
        assert_eq!(err_of(fs::create_dir(mnt.join("d"))), libc::EEXIST);
        fs::write(mnt.join("d/x"), b"x").unwrap();
        assert_eq!(err_of(fs::remove_dir(mnt.join("d"))), libc::ENOTEMPTY);
        assert_eq!(err_of(fs::remove_file(mnt.join("d"))), libc::EISDIR);
        assert_eq!(err_of(fs::remove_dir(mnt.join("d/x"))), libc::ENOTDIR);
        assert_eq!(err_of(fs::remove_dir(mnt.join("nothing"))), libc::ENOENT);
        fs::remove_file(mnt.join("d/x")).unwrap();
        fs::remove_dir(mnt.join("d")).unwrap();
        assert!(!src.join("d").exists());

        // A directory larger than one readdir buffer, with long names.
        fs::create_dir(mnt.join("many")).unwrap();
        let mut want = Vec::new();
        for i in 0..700 {
            let name = format!("entry-{i:04}-{}", "n".repeat(i % 97));
            fs::write(src.join("many").join(&name), b"").unwrap();
            want.push(name);
        }
        want.sort();
        let mut got: Vec<String> = fs::read_dir(mnt.join("many"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, want);
        // File types come through readdir.
        fs::create_dir(mnt.join("many/sub")).unwrap();
        let sub = fs::read_dir(mnt.join("many"))
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "sub")
            .unwrap();
        assert!(sub.file_type().unwrap().is_dir());
        // fsyncdir.
        File::open(mnt.join("many")).unwrap().sync_all().unwrap();
    });
    // `ls -a` sees . and .. too.
    let out = sh_ok(&format!("ls -a {}", fx.mnt.display()));
    assert!(out.lines().any(|l| l == ".") && out.lines().any(|l| l == ".."));
}

#[test]
fn create_exclusive_unlink_and_open_errors() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    within(move || {
        let p = mnt.join("c");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        assert_eq!(
            err_of(OpenOptions::new().write(true).create_new(true).open(&p)),
            libc::EEXIST
        );
        assert_eq!(
            err_of(OpenOptions::new().write(true).open(&mnt)),
            libc::EISDIR
        );
        fs::remove_file(&p).unwrap();
        assert_eq!(err_of(fs::remove_file(&p)), libc::ENOENT);
        // O_TRUNC through the mount.
        fs::write(&p, b"long content").unwrap();
        fs::write(&p, b"s").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"s");
    });
}

#[test]
fn cross_mount_rename_and_link_fail_with_exdev() {
    let Some(fx) = mount() else { return };
    fs::write(fx.s("f"), b"x").unwrap();
    let (m, outside) = (fx.m("f"), fx.src.parent().unwrap().join("outside"));
    within(move || {
        assert_eq!(err_of(fs::rename(&m, &outside)), libc::EXDEV);
        assert_eq!(err_of(fs::hard_link(&m, &outside)), libc::EXDEV);
    });
}

#[test]
fn hard_links_share_one_inode_number() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        fs::write(mnt.join("a"), b"data").unwrap();
        fs::hard_link(mnt.join("a"), mnt.join("b")).unwrap();
        let (a, b) = (
            fs::metadata(mnt.join("a")).unwrap(),
            fs::metadata(mnt.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(b.nlink(), 2);
        assert_eq!(
            fs::metadata(src.join("a")).unwrap().ino(),
            fs::metadata(src.join("b")).unwrap().ino()
        );
        // A link made behind the mount is the same inode too.
        fs::hard_link(src.join("a"), src.join("c")).unwrap();
        assert_eq!(fs::metadata(mnt.join("c")).unwrap().ino(), a.ino());
        fs::write(mnt.join("b"), b"via b").unwrap();
        assert_eq!(fs::read(mnt.join("a")).unwrap(), b"via b");
        assert_eq!(
            err_of(fs::hard_link(mnt.join("a"), mnt.join("b"))),
            libc::EEXIST
        );
        assert_eq!(
            err_of(fs::hard_link(mnt.join("zz"), mnt.join("y"))),
            libc::ENOENT
        );
        fs::remove_file(mnt.join("a")).unwrap();
        assert_eq!(fs::metadata(mnt.join("b")).unwrap().nlink(), 2);
    });
    let out = sh_ok(&format!("stat -c %i {m}/b {m}/c", m = fx.mnt.display()));
    let inos: Vec<&str> = out.lines().collect();
    assert_eq!(inos.len(), 2);
    assert_eq!(inos[0], inos[1]);
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> i32 {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        0
    } else {
        last_errno()
    }
}

#[test]
fn rename_plain_noreplace_and_exchange() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        fs::write(mnt.join("a"), b"A").unwrap();
        fs::write(mnt.join("b"), b"B").unwrap();
        assert_eq!(
            renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_NOREPLACE),
            libc::EEXIST
        );
        assert_eq!(
            renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_EXCHANGE),
            0
        );
        assert_eq!(fs::read(src.join("a")).unwrap(), b"B");
        assert_eq!(fs::read(src.join("b")).unwrap(), b"A");
        assert_eq!(
            renameat2(&mnt.join("a"), &mnt.join("nope"), libc::RENAME_EXCHANGE),
            libc::ENOENT
        );
        assert_eq!(
            renameat2(&mnt.join("a"), &mnt.join("c"), libc::RENAME_NOREPLACE),
            0
        );
        assert!(src.join("c").exists() && !src.join("a").exists());
        // Plain rename replaces, across directories too.
        fs::create_dir(mnt.join("d")).unwrap();
        fs::rename(mnt.join("c"), mnt.join("d/b")).unwrap();
        fs::rename(mnt.join("d/b"), mnt.join("b")).unwrap();
        assert_eq!(fs::read(mnt.join("b")).unwrap(), b"B");
        fs::write(mnt.join("d/x"), b"").unwrap();
        fs::create_dir(mnt.join("e")).unwrap();
        assert_eq!(
            err_of(fs::rename(mnt.join("e"), mnt.join("d"))),
            libc::ENOTEMPTY
        );
        assert_eq!(
            err_of(fs::rename(mnt.join("b"), mnt.join("d"))),
            libc::EISDIR
        );
        assert_eq!(
            err_of(fs::rename(mnt.join("e"), mnt.join("b"))),
            libc::ENOTDIR
        );
        assert_eq!(
            err_of(fs::rename(mnt.join("zz"), mnt.join("b"))),
            libc::ENOENT
        );
    });
}

#[test]
fn symlinks_and_readlink() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        fs::write(mnt.join("target"), b"T").unwrap();
        std::os::unix::fs::symlink("target", mnt.join("l")).unwrap();
        assert_eq!(
            fs::read_link(src.join("l")).unwrap().to_str(),
            Some("target")
        );
        assert_eq!(
            fs::read_link(mnt.join("l")).unwrap().to_str(),
            Some("target")
        );
        assert!(fs::symlink_metadata(mnt.join("l"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(mnt.join("l")).unwrap(), b"T");
        assert_eq!(
            err_of(std::os::unix::fs::symlink("x", mnt.join("l"))),
            libc::EEXIST
        );
        assert_eq!(err_of(fs::read_link(mnt.join("target"))), libc::EINVAL);
        // A dangling link and one pointing outside the mount are kept verbatim.
        std::os::unix::fs::symlink("/nonexistent/elsewhere", mnt.join("out")).unwrap();
        assert_eq!(err_of(fs::metadata(mnt.join("out"))), libc::ENOENT);
        assert_eq!(
            fs::read_link(mnt.join("out")).unwrap().to_str(),
            Some("/nonexistent/elsewhere")
        );
    });
}

#[test]
fn fifos_through_mknod_connect_two_processes() {
    let Some(fx) = mount() else { return };
    let out = sh_ok(&format!(
        "cd {m} && mkfifo p && stat -c %F p && (echo through-the-fifo > p &) && cat p",
        m = fx.mnt.display()
    ));
    assert_eq!(out, "fifo\nthrough-the-fifo\n");
    assert!(fs::symlink_metadata(fx.s("p"))
        .unwrap()
        .file_type()
        .is_fifo());
    // mknod of a regular file and a duplicate.
    let mnt = fx.mnt.clone();
    within(move || {
        let p = cpath(&mnt.join("node"));
        // SAFETY: valid C string.
        let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFREG | 0o600, 0) };
        assert_eq!(r, 0);
        assert_eq!(
            fs::metadata(mnt.join("node")).unwrap().mode() & 0o777,
            0o600
        );
        // SAFETY: valid C string.
        let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | 0o600, 0) };
        assert_eq!(r, -1);
        assert_eq!(last_errno(), libc::EEXIST);
    });
    if is_root() {
        // A character device keeps its device number.
        sh_ok(&format!("mknod {m}/null c 1 3", m = fx.mnt.display()));
        let md = fs::symlink_metadata(fx.m("null")).unwrap();
        assert_eq!(md.rdev(), libc::makedev(1, 3));
        assert_eq!(
            fs::symlink_metadata(fx.s("null")).unwrap().rdev(),
            libc::makedev(1, 3)
        );
    }
}

fn utimensat(path: &std::path::Path, t: [libc::timespec; 2]) -> i32 {
    let c = cpath(path);
    // SAFETY: valid C string and a two-element array.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) };
    if r == 0 {
        0
    } else {
        last_errno()
    }
}

#[test]
fn setattr_truncate_chmod_chown_and_times() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        let p = mnt.join("f");
        fs::write(&p, b"0123456789").unwrap();
        // Truncate by path (no fh) and through an open descriptor.
        let c = cpath(&p);
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4) }, 0);
        assert_eq!(fs::read(src.join("f")).unwrap(), b"0123");
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(100).unwrap();
        assert_eq!(fs::metadata(src.join("f")).unwrap().len(), 100);
        f.set_len(2).unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"01");
        assert_eq!(
            err_of(OpenOptions::new().write(true).open(&mnt).map(drop)),
            libc::EISDIR
        );

        fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
        assert_eq!(fs::metadata(src.join("f")).unwrap().mode() & 0o7777, 0o4751);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);

        std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
        let md = fs::metadata(src.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        std::os::unix::fs::lchown(&p, None, Some(42)).unwrap();
        let md = fs::metadata(src.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 42));

        // Explicit times, then UTIME_OMIT keeps one, UTIME_NOW sets the other.
        let ts = |s, n| libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        };
        assert_eq!(utimensat(&p, [ts(1_000_000, 5), ts(2_000_000, 7)]), 0);
        let md = fs::metadata(src.join("f")).unwrap();
        assert_eq!((md.atime(), md.atime_nsec()), (1_000_000, 5));
        assert_eq!((md.mtime(), md.mtime_nsec()), (2_000_000, 7));
        assert_eq!(
            utimensat(&p, [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)]),
            0
        );
        let md = fs::metadata(src.join("f")).unwrap();
        assert!(md.atime() > 1_600_000_000, "atime set to now");
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (2_000_000, 7),
            "mtime omitted"
        );
        // Before the epoch.
        assert_eq!(utimensat(&p, [ts(0, libc::UTIME_OMIT), ts(-86_400, 0)]), 0);
        assert_eq!(fs::metadata(&p).unwrap().mtime(), -86_400);
        // Times of a symlink itself.
        std::os::unix::fs::symlink("f", mnt.join("l")).unwrap();
        let l = cpath(&mnt.join("l"));
        let t = [ts(0, libc::UTIME_OMIT), ts(3_000_000, 0)];
        // SAFETY: valid C string and a two-element array.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                l.as_ptr(),
                t.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "errno {}", last_errno());
        assert_eq!(
            fs::symlink_metadata(src.join("l")).unwrap().mtime(),
            3_000_000
        );
        assert_eq!(fs::metadata(src.join("f")).unwrap().mtime(), -86_400);
    });
}

#[test]
fn xattrs_set_get_list_remove() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        let p = mnt.join("x");
        fs::write(&p, b"").unwrap();
        let c = cpath(&p);
        let name = c"user.lockfs.test";
        let set = |v: &[u8], flags| {
            // SAFETY: valid C strings and buffer.
            let r = unsafe {
                libc::setxattr(c.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), flags)
            };
            if r == 0 {
                0
            } else {
                last_errno()
            }
        };
        let get = |buf: &mut [u8]| {
            // SAFETY: valid C strings and buffer.
            let r = unsafe {
                libc::getxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if r < 0 {
                Err(last_errno())
            } else {
                Ok(r as usize)
            }
        };
        assert_eq!(get(&mut [0u8; 16]), Err(libc::ENODATA));
        assert_eq!(set(b"value-1", libc::XATTR_REPLACE), libc::ENODATA);
        assert_eq!(set(b"value-1", libc::XATTR_CREATE), 0);
        assert_eq!(set(b"value-2", libc::XATTR_CREATE), libc::EEXIST);
        assert_eq!(get(&mut []), Ok(7), "size query");
        assert_eq!(get(&mut [0u8; 3]), Err(libc::ERANGE));
        let mut buf = [0u8; 64];
        let n = get(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"value-1");
        // The value is on the backing file.
        let sc = cpath(&src.join("x"));
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::getxattr(
                sc.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n as usize], b"value-1");
        // list
        // SAFETY: valid C string; a null buffer of size 0 asks for the size.
        let size = unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(size > 0);
        let mut list = vec![0u8; size as usize];
        // SAFETY: valid C string and buffer.
        let n = unsafe { libc::listxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        list.truncate(n as usize);
        assert!(list.split(|&b| b == 0).any(|n| n == b"user.lockfs.test"));
        // remove
        // SAFETY: valid C strings.
        assert_eq!(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }, 0);
        // SAFETY: valid C strings.
        assert_eq!(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }, -1);
        assert_eq!(last_errno(), libc::ENODATA);
    });
}

#[test]
fn fallocate_holes_and_seek_data() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(mnt.join("sparse"))
            .unwrap();
        const MB: i64 = 1 << 20;
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096], 4 * MB as u64).unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: valid descriptor.
        let seek = |off, whence| unsafe { libc::lseek(fd, off, whence) };
        assert_eq!(seek(0, libc::SEEK_DATA), 0);
        let hole = seek(0, libc::SEEK_HOLE);
        assert!((4096..4 * MB).contains(&hole), "first hole at {hole}");
        assert_eq!(seek(hole, libc::SEEK_DATA), 4 * MB);
        assert_eq!(seek(4 * MB + 4096, libc::SEEK_DATA), -1);
        assert_eq!(last_errno(), libc::ENXIO);
        // Preallocate beyond EOF without changing the size.
        // SAFETY: valid descriptor.
        let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 8 * MB, MB) };
        assert_eq!(r, 0, "errno {}", last_errno());
        let md = fs::metadata(src.join("sparse")).unwrap();
        assert_eq!(md.len(), 4 * MB as u64 + 4096);
        assert!(md.blocks() * 512 >= (MB as u64) + 8192, "blocks allocated");
        // Plain fallocate grows the file.
        // SAFETY: valid descriptor.
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 6 * MB) }, 0);
        assert_eq!(
            fs::metadata(src.join("sparse")).unwrap().len(),
            6 * MB as u64
        );
        // Punch the first block out: it reads back as zeros.
        // SAFETY: valid descriptor.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        };
        assert_eq!(r, 0, "errno {}", last_errno());
        let mut buf = [9u8; 4096];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // Invalid mode combination is refused with the backing errno.
        // SAFETY: valid descriptor.
        let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096) };
        assert_eq!(r, -1);
        assert_eq!(last_errno(), libc::EOPNOTSUPP);
    });
}

#[test]
fn copy_file_range_between_files_on_the_mount() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let src = fx.src.clone();
    within(move || {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(mnt.join("in"), &data).unwrap();
        let fin = File::open(mnt.join("in")).unwrap();
        let fout = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(mnt.join("out"))
            .unwrap();
        let mut off_in: i64 = 1000;
        let mut off_out: i64 = 0;
        let mut left = data.len() - 1000;
        while left > 0 {
            // SAFETY: valid descriptors and offset pointers.
            let n = unsafe {
                libc::copy_file_range(
                    fin.as_raw_fd(),
                    &mut off_in,
                    fout.as_raw_fd(),
                    &mut off_out,
                    left,
                    0,
                )
            };
            assert!(n > 0, "copy_file_range: errno {}", last_errno());
            left -= n as usize;
        }
        drop(fout);
        assert_eq!(fs::read(src.join("out")).unwrap(), &data[1000..]);
        // Copying into a read-only descriptor fails.
        let ro = File::open(mnt.join("out")).unwrap();
        let (mut a, mut b) = (0i64, 0i64);
        // SAFETY: valid descriptors and offset pointers.
        let r = unsafe {
            libc::copy_file_range(fin.as_raw_fd(), &mut a, ro.as_raw_fd(), &mut b, 10, 0)
        };
        assert_eq!(r, -1);
        assert_eq!(last_errno(), libc::EBADF);
    });
}

#[test]
fn statfs_matches_the_source() {
    let Some(fx) = mount() else { return };
    let (m, s) = (fx.mnt.clone(), fx.src.clone());
    within(move || {
        let stat = |p: &std::path::Path| {
            let c = cpath(p);
            // SAFETY: all-zero statvfs is valid; valid C string and out-pointer.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
            st
        };
        let (a, b) = (stat(&m), stat(&s));
        assert_eq!(a.f_blocks, b.f_blocks);
        assert_eq!(a.f_bsize, b.f_bsize);
        assert_eq!(a.f_files, b.f_files);
        assert_eq!(a.f_namemax, b.f_namemax);
    });
}

#[test]
fn fsync_and_seek_on_open_files() {
    let Some(fx) = mount() else { return };
    let m = fx.m("s");
    within(move || {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&m)
            .unwrap();
        f.write_all(b"abcdef").unwrap();
        f.sync_data().unwrap();
        f.sync_all().unwrap();
        f.seek(SeekFrom::Start(2)).unwrap();
        let mut b = [0u8; 2];
        f.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"cd");
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 6);
    });
}

#[test]
fn unprivileged_users_get_eacces_and_own_what_they_create() {
    let Some(fx) = mount() else { return };
    if !is_root() {
        lockfs_testkit::skipping!("permission test: needs root to switch users");
        return;
    }
    fs::write(fx.s("secret"), b"s").unwrap();
    fs::set_permissions(fx.s("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(fx.s("pub")).unwrap();
    fs::set_permissions(fx.s("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(fx.s("ro"), b"r").unwrap();
    fs::set_permissions(fx.s("ro"), fs::Permissions::from_mode(0o644)).unwrap();
    let m = fx.mnt.display().to_string();

    let out = sh_as(Some(NOBODY), &format!("cat {m}/secret"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = sh_as(Some(NOBODY), &format!("echo x >> {m}/ro"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = sh_as(Some(NOBODY), &format!("touch {m}/not-in-root"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    // access(2) as the kernel sees it.
    let out = sh_as(
        Some(NOBODY),
        &format!("test -r {m}/ro && ! test -w {m}/ro && ! test -r {m}/secret"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What nobody creates belongs to nobody, with the requested mode.
    let out = sh_as(
        Some(NOBODY),
        &format!(
            "umask 022 && echo hi > {m}/pub/file && mkdir {m}/pub/dir && ln -s file {m}/pub/link && mkfifo {m}/pub/fifo"
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, mode) in [
        ("file", Some(0o644)),
        ("dir", Some(0o755)),
        ("link", None),
        ("fifo", Some(0o644)),
    ] {
        let md = fs::symlink_metadata(fx.s(&format!("pub/{name}"))).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "{name}");
        if let Some(mode) = mode {
            assert_eq!(md.mode() & 0o7777, mode, "{name}");
        }
    }
    // umask 0 really gives 0666: the daemon's own umask is not applied again.
    let out = sh_as(Some(NOBODY), &format!("umask 000 && touch {m}/pub/open"));
    assert!(out.status.success());
    assert_eq!(
        fs::metadata(fx.s("pub/open")).unwrap().mode() & 0o777,
        0o666
    );
    // Another user cannot delete it from a sticky directory.
    fs::set_permissions(fx.s("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
    let out = sh_as(Some(1000), &format!("rm -f {m}/pub/file"));
    assert!(!out.status.success());
    assert!(fx.s("pub/file").exists());
    // In a set-group-ID directory new files take the directory's group.
    fs::create_dir(fx.s("sgid")).unwrap();
    std::os::unix::fs::chown(fx.s("sgid"), None, Some(4242)).unwrap();
    fs::set_permissions(fx.s("sgid"), fs::Permissions::from_mode(0o2777)).unwrap();
    let out = sh_as(
        Some(NOBODY),
        &format!("touch {m}/sgid/f && mkdir {m}/sgid/d"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = fs::metadata(fx.s("sgid/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (NOBODY, 4242));
    let d = fs::metadata(fx.s("sgid/d")).unwrap();
    assert_eq!(d.gid(), 4242);
    assert!(
        d.mode() & libc::S_ISGID != 0,
        "subdirectory inherits set-group-ID"
    );
}

#[test]
fn many_files_created_and_removed_do_not_leak_descriptors() {
    let Some(fx) = mount() else { return };
    let mnt = fx.mnt.clone();
    let before_fds = open_fds();
    let before_inodes = fx.handle().stats().inodes;
    within(move || {
        for round in 0..3 {
            for i in 0..1000 {
                let p = mnt.join(format!("f{round}-{i}"));
                let mut f = File::create(&p).unwrap();
                f.write_all(b"x").unwrap();
                drop(f);
                fs::metadata(&p).unwrap();
                fs::remove_file(&p).unwrap();
            }
        }
    });
    // Forgets of unlinked inodes arrive asynchronously.
    let mut stats = fx.handle().stats();
    for _ in 0..100 {
        if stats.inodes <= before_inodes + 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        stats = fx.handle().stats();
    }
    assert!(stats.inodes <= before_inodes + 5, "inodes left: {stats:?}");
    assert_eq!(stats.open_files, 0);
    assert_eq!(stats.open_dirs, 0);
    let after_fds = open_fds();
    assert!(
        after_fds <= before_fds + 10,
        "descriptors grew from {before_fds} to {after_fds}"
    );
}

#[test]
fn cached_inodes_are_released_when_the_kernel_forgets_them() {
    let Some(fx) = mount() else { return };
    if !is_root() {
        lockfs_testkit::skipping!("forget test: needs root to drop caches");
        return;
    }
    let mnt = fx.mnt.clone();
    let base = fx.handle().stats().inodes;
    within(move || {
        fs::create_dir(mnt.join("keep")).unwrap();
        for i in 0..2000 {
            fs::write(mnt.join(format!("keep/{i}")), b"k").unwrap();
        }
    });
    let held = fx.handle().stats().inodes;
    assert!(held >= base + 2000, "each cached inode is held: {held}");
    let fds_held = open_fds();
    // Ask the kernel to drop dentries and inodes: it must FORGET them.
    let mut now = held;
    for _ in 0..50 {
        fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = fx.handle().stats().inodes;
        if now < base + 100 {
            break;
        }
    }
    assert!(
        now < base + 100,
        "kernel forgets released the inodes: {now}"
    );
    assert!(
        open_fds() + 1900 < fds_held,
        "their descriptors were closed"
    );
    // And they come back on demand.
    let mnt = fx.mnt.clone();
    within(move || assert_eq!(fs::read(mnt.join("keep/1999")).unwrap(), b"k"));
}

#[test]
fn access_is_answered_by_the_daemon_without_default_permissions() {
    let opts = fuse_lockfs::MountOptions {
        default_permissions: false,
        ..fuse_lockfs::MountOptions::default()
    };
    let Some(fx) = mount_with(opts) else { return };
    if !is_root() {
        lockfs_testkit::skipping!("access test: needs root to switch users");
        return;
    }
    fs::write(fx.s("secret"), b"s").unwrap();
    fs::set_permissions(fx.s("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(fx.s("grp"), b"g").unwrap();
    std::os::unix::fs::chown(fx.s("grp"), Some(0), Some(NOBODY)).unwrap();
    fs::set_permissions(fx.s("grp"), fs::Permissions::from_mode(0o640)).unwrap();
    let m = fx.mnt.display().to_string();
    let check = |uid: Option<u32>, script: String| {
        let out = sh_as(uid, &script);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(
        Some(NOBODY),
        format!("! test -r {m}/secret && ! test -w {m}/secret"),
    );
    check(
        Some(NOBODY),
        format!("test -r {m}/grp && ! test -w {m}/grp"),
    );
    check(Some(1000), format!("! test -r {m}/grp"));
    check(
        None,
        format!("test -r {m}/secret && test -w {m}/secret && ! test -x {m}/secret"),
    );
    check(None, format!("test -x {m}"));
    let c = cpath(&fx.m("missing"));
    let m2 = fx.mnt.clone();
    within(move || {
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::access(c.as_ptr(), libc::F_OK) }, -1);
        assert_eq!(last_errno(), libc::ENOENT);
        let c = cpath(&m2.join("secret"));
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::access(c.as_ptr(), libc::X_OK) }, -1);
        assert_eq!(last_errno(), libc::EACCES);
    });
}

/// Runs `test` on a mount with kernel passthrough, then on one with direct I/O
/// through the daemon: the two paths write by different means.
fn in_both_io_modes(mut test: impl FnMut(bool, Fixture)) {
    for passthrough in [true, false] {
        let opts = fuse_lockfs::MountOptions {
            passthrough,
            ..fuse_lockfs::MountOptions::default()
        };
        let Some(fx) = mount_with(opts) else { return };
        test(passthrough, fx);
    }
}

#[test]
fn unprivileged_writes_and_truncates_drop_set_user_id() {
    in_both_io_modes(|passthrough, fx| {
        if !is_root() {
            lockfs_testkit::skipping!("set-user-ID test: needs root to switch users");
            return;
        }
        let m = fx.mnt.display().to_string();
        for (name, script) in [
            ("w", format!("echo more >> {m}/w")),
            ("t", format!("truncate -s 1 {m}/t")),
        ] {
            fs::write(fx.s(name), b"x").unwrap();
            fs::set_permissions(fx.s(name), fs::Permissions::from_mode(0o6777)).unwrap();
            let out = sh_as(Some(NOBODY), &script);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mode = fs::metadata(fx.s(name)).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o777, "{name} (passthrough {passthrough})");
            // Root keeps the bits, as on a local file system.
            fs::set_permissions(fx.s(name), fs::Permissions::from_mode(0o4755)).unwrap();
            let p = fx.m(name);
            within(move || {
                // The kernel may still cache the old mode for the attribute TTL.
                std::thread::sleep(std::time::Duration::from_millis(1100));
                OpenOptions::new()
                    .append(true)
                    .open(p)
                    .unwrap()
                    .write_all(b"r")
                    .unwrap();
            });
            let mode = fs::metadata(fx.s(name)).unwrap().mode() & 0o7777;
            assert_eq!(
                mode, 0o4755,
                "{name} root write (passthrough {passthrough})"
            );
        }
        // Set-group-ID without group execute is the mandatory-locking mark: an
        // unprivileged write or truncate keeps it, as Linux did before 5.15.
        fs::write(fx.s("mark"), b"x").unwrap();
        fs::set_permissions(fx.s("mark"), fs::Permissions::from_mode(0o2666)).unwrap();
        let out = sh_as(
            Some(NOBODY),
            &format!("echo more >> {m}/mark && truncate -s 2 {m}/mark"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(fx.s("mark")).unwrap(), b"xm");
        let mode = fs::metadata(fx.s("mark")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o2666, "mark (passthrough {passthrough})");
    });
}

#[test]
fn writes_drop_file_capabilities() {
    // The kernel no longer asks the daemon for `security.capability` before each
    // write (FUSE_HANDLE_KILLPRIV_V2), so dropping it is the daemon's side's job:
    // the backing file system does it for the daemon's own write.
    in_both_io_modes(|passthrough, fx| {
        if !is_root() {
            lockfs_testkit::skipping!("capability test: needs root to set security.capability");
            return;
        }
        let p = fx.m("cap");
        fs::write(&p, b"x").unwrap();
        let c = cpath(&p);
        let name = c"security.capability";
        // vfs_cap_data revision 2, effective, CAP_NET_RAW permitted.
        let mut v = Vec::new();
        for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            v.extend_from_slice(&word.to_le_bytes());
        }
        let has_cap = move || {
            // SAFETY: valid C strings; a size query writes nothing.
            unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) }
        };
        let c2 = cpath(&p);
        // SAFETY: valid C strings and buffer.
        let r =
            unsafe { libc::setxattr(c2.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
        assert_eq!(has_cap(), v.len() as isize);
        let q = p.clone();
        within(move || {
            let mut f = OpenOptions::new().append(true).open(q).unwrap();
            f.write_all(b"y").unwrap();
        });
        assert_eq!(has_cap(), -1, "passthrough {passthrough}");
        assert_eq!(last_errno(), libc::ENODATA);
        assert_eq!(fs::read(fx.s("cap")).unwrap(), b"xy");
    });
}
