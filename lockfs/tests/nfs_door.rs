//! The NFS door of the real `lockfs serve`: rpcinfo and showmount see NFS version 3 and
//! MOUNT versions 1 and 3, libnfs's tools (an independent client) copy, list and read
//! files, and a handle a client got through MOUNT and LOOKUP is the very NLM handle: an
//! NLM lock with it meets a local process's lock on the FUSE mount of the same export, and
//! an NFS WRITE into a mandatory-locked range is refused while the local lock is held.
//!
//! Needs root and /dev/fuse; binds the fixed NFS, MOUNT and portmapper ports, so it runs
//! inside a private network namespace (the project's test script does that).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
use lockd_user::rpc::AuthSys;
use lockd_user::xdr::{Decoder, Encoder};
use lockfs_testkit::daemon::{file_handle, Daemon as TestDaemon, Spawn};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const NFS_PORT: u16 = 2049;
const MOUNT_PORT: u16 = 20048;
const HOST: &str = "nfs-client";

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        lockfs_testkit::skipping!("NFS door tests need root and /dev/fuse (root={root})");
        return false;
    }
    true
}

/// The daemon and its directory; the guard (stopping its pid, detaching its mount) drops
/// before the directory does.
struct Daemon {
    _guard: TestDaemon,
    dir: tempfile::TempDir,
    nlm_tcp: SocketAddr,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["export", "mnt", "state"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::set_permissions(d.join("export"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let cfg = format!(
            "state_dir = {state:?}\nadmin_socket = {sock:?}\ngrace_period = 0\n\
             [listen]\naddresses = [\"127.0.0.1\"]\nnfs_port = {NFS_PORT}\nmount_port = {MOUNT_PORT}\n\
             [[export]]\nname = \"x\"\nsource = {src:?}\nmountpoint = {mnt:?}\nmandatory = \"file\"\n",
            state = d.join("state"),
            sock = d.join("admin.sock"),
            src = d.join("export"),
            mnt = d.join("mnt"),
        );
        std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
        let guard = Spawn::serve(LOCKFS, &d.join("lockfs.toml"), "warn")
            .unmounts(&d.join("mnt"))
            .start_serve(Duration::from_secs(30));
        assert!(guard.logged_at_start("NFS v3 on"), "the daemon serves NFS");
        let nlm_tcp = guard.tcp().expect("NLM TCP address");
        Daemon {
            _guard: guard,
            dir,
            nlm_tcp,
        }
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    fn mnt(&self, name: &str) -> PathBuf {
        self.dir.path().join("mnt").join(name)
    }

    fn fh(&self, path: &Path) -> Vec<u8> {
        file_handle(LOCKFS, &self.dir.path().join("lockfs.toml"), path)
    }
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("timeout")
        .args(["-k", "5", "30", cmd])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn rpcinfo_showmount_and_libnfs_see_the_exports() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    for tool in ["rpcinfo", "showmount"] {
        assert!(
            have(tool),
            "{tool} is installed by scripts/setup.sh (nfs-common, rpcbind)"
        );
    }
    let listing = run("rpcinfo", &["-p", "127.0.0.1"]).unwrap();
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let has = |prog: &str, vers: &str, proto: &str, port: Option<&str>| {
        rows.iter().any(|r| {
            r.len() >= 4
                && r[0] == prog
                && r[1] == vers
                && r[2] == proto
                && port.is_none_or(|p| r[3] == p)
        })
    };
    for proto in ["tcp", "udp"] {
        assert!(
            has("100003", "3", proto, Some("2049")),
            "nfs 3 {proto}:\n{listing}"
        );
        assert!(
            has("100005", "1", proto, Some("20048")),
            "mountd 1 {proto}:\n{listing}"
        );
        assert!(
            has("100005", "3", proto, Some("20048")),
            "mountd 3 {proto}:\n{listing}"
        );
        assert!(
            has("100021", "4", proto, None),
            "nlockmgr 4 {proto}:\n{listing}"
        );
        assert!(
            has("100024", "1", proto, None),
            "status 1 {proto}:\n{listing}"
        );
    }
    let exports = run("showmount", &["-e", "127.0.0.1"]).unwrap();
    assert!(
        exports.contains(&*d.src().to_string_lossy()),
        "showmount -e lists the export:\n{exports}"
    );

    if !have("nfs-cp") {
        lockfs_testkit::skipping!(
            "libnfs-utils (nfs-cp, nfs-ls, nfs-cat) is not installed: run scripts/setup.sh"
        );
        return;
    }
    let local = d.dir.path().join("local.txt");
    std::fs::write(&local, b"copied over NFS by libnfs\n").unwrap();
    let url = "nfs://127.0.0.1/x/copied.txt?uid=1000&gid=1000";
    run("nfs-cp", &[local.to_str().unwrap(), url]).unwrap();
    let backing = d.src().join("copied.txt");
    assert_eq!(
        std::fs::read(&backing).unwrap(),
        b"copied over NFS by libnfs\n"
    );
    assert_eq!(
        std::fs::metadata(&backing).unwrap().uid(),
        1000,
        "written as the caller"
    );
    assert_eq!(
        std::fs::read(d.mnt("copied.txt")).unwrap(),
        b"copied over NFS by libnfs\n",
        "the local mount sees the file written over NFS"
    );
    let mode = std::fs::metadata(&backing).unwrap().mode() & 0o777;
    if mode & 0o004 == 0 {
        // Root is squashed to nobody, who may not read a file others cannot read.
        let as_root = Command::new("timeout")
            .args(["-k", "5", "30", "nfs-cat", "nfs://127.0.0.1/x/copied.txt"])
            .output()
            .unwrap();
        assert!(
            !as_root.status.success(),
            "root is squashed (mode {mode:o})"
        );
    }
    let cat = run(
        "nfs-cat",
        &["nfs://127.0.0.1/x/copied.txt?uid=1000&gid=1000"],
    )
    .unwrap();
    assert_eq!(cat, "copied over NFS by libnfs\n");
    std::fs::write(d.mnt("local-made"), b"").unwrap();
    let ls = run("nfs-ls", &["nfs://127.0.0.1/x"]).unwrap();
    assert!(
        ls.contains("copied.txt") && ls.contains("local-made"),
        "nfs-ls:\n{ls}"
    );
}

/// The smallest NFS client: MNT, LOOKUP and WRITE over TCP.
struct Nfs {
    nfs: RpcClient,
    mount: RpcClient,
}

impl Nfs {
    async fn connect() -> Nfs {
        let cfg = ClientConfig {
            cred: AuthSys {
                stamp: 1,
                machinename: HOST.into(),
                uid: 1000,
                gid: 1000,
                gids: vec![],
            }
            .to_opaque(),
            ..ClientConfig::default()
        };
        let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Nfs {
            nfs: RpcClient::tcp(lo(NFS_PORT), cfg.clone()).await.unwrap(),
            mount: RpcClient::tcp(lo(MOUNT_PORT), cfg).await.unwrap(),
        }
    }

    async fn root(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.put_string("/x");
        let r = self
            .mount
            .call_raw(100_005, 3, 1, e.as_slice())
            .await
            .unwrap();
        let mut d = Decoder::new(&r);
        assert_eq!(d.get_u32().unwrap(), 0, "MNT");
        d.get_opaque(64).unwrap()
    }

    async fn lookup(&self, dir: &[u8], name: &str) -> Vec<u8> {
        let mut e = Encoder::new();
        e.put_opaque(dir);
        e.put_string(name);
        let r = self
            .nfs
            .call_raw(100_003, 3, 3, e.as_slice())
            .await
            .unwrap();
        let mut d = Decoder::new(&r);
        assert_eq!(d.get_u32().unwrap(), 0, "LOOKUP {name}");
        d.get_opaque(64).unwrap()
    }

    async fn write(&self, fh: &[u8], off: u64, data: &[u8]) -> u32 {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        e.put_u64(off);
        e.put_u32(data.len() as u32);
        e.put_u32(2);
        e.put_opaque(data);
        let r = self
            .nfs
            .call_raw(100_003, 3, 7, e.as_slice())
            .await
            .unwrap();
        Decoder::new(&r).get_u32().unwrap()
    }
}

impl Nfs {
    /// A call whose results begin with a status: the status.
    async fn status_of(&self, proc_: u32, e: &Encoder) -> u32 {
        let r = self
            .nfs
            .call_raw(100_003, 3, proc_, e.as_slice())
            .await
            .unwrap();
        Decoder::new(&r).get_u32().unwrap()
    }

    /// MKDIR (proc 9) with mode 0755, or CREATE (proc 8) UNCHECKED with mode 0644.
    async fn make(&self, dir: &[u8], name: &str, directory: bool) -> u32 {
        let mut e = Encoder::new();
        e.put_opaque(dir);
        e.put_string(name);
        if !directory {
            e.put_u32(0);
        }
        // sattr3: mode set; uid, gid, size not; times not changed.
        e.put_u32(1);
        e.put_u32(if directory { 0o755 } else { 0o644 });
        for _ in 0..3 {
            e.put_u32(0);
        }
        e.put_u32(0);
        e.put_u32(0);
        self.status_of(if directory { 9 } else { 8 }, &e).await
    }

    /// RMDIR (proc 13).
    async fn rmdir(&self, dir: &[u8], name: &str) -> u32 {
        let mut e = Encoder::new();
        e.put_opaque(dir);
        e.put_string(name);
        self.status_of(13, &e).await
    }

    /// LINK (proc 15) of `file` as `name` in `dir`.
    async fn link(&self, file: &[u8], dir: &[u8], name: &str) -> u32 {
        let mut e = Encoder::new();
        e.put_opaque(file);
        e.put_opaque(dir);
        e.put_string(name);
        self.status_of(15, &e).await
    }

    /// REMOVE (proc 12) or RENAME (proc 14, with a destination name in the same directory).
    async fn name_op(&self, dir: &[u8], name: &str, to: Option<&str>) -> u32 {
        let mut e = Encoder::new();
        e.put_opaque(dir);
        e.put_string(name);
        let proc_ = match to {
            Some(t) => {
                e.put_opaque(dir);
                e.put_string(t);
                14
            }
            None => 12,
        };
        self.status_of(proc_, &e).await
    }
}

fn nlm(fh: &[u8], svid: i32) -> v4::Lock {
    v4::Lock {
        caller_name: HOST.into(),
        fh: fh.to_vec(),
        oh: format!("{HOST}-{svid}").into_bytes(),
        svid,
        l_offset: 0,
        l_len: 100,
    }
}

async fn nlm_call(c: &RpcClient, l: v4::Lock, lock: bool) -> v4::Stats {
    let r: v4::Res = if lock {
        let a = v4::LockArgs {
            cookie: vec![1],
            block: false,
            exclusive: true,
            alock: l,
            reclaim: false,
            state: 1,
        };
        c.call(NLM_PROG, NLM4_VERS, proc_::LOCK, &a).await.unwrap()
    } else {
        let a = v4::UnlockArgs {
            cookie: vec![2],
            alock: l,
        };
        c.call(NLM_PROG, NLM4_VERS, proc_::UNLOCK, &a)
            .await
            .unwrap()
    };
    r.stat
}

/// A local process holding an exclusive fcntl lock on [0, 100) until told to stop.
struct Holder {
    child: Child,
    stdin: ChildStdin,
}

impl Holder {
    fn lock(path: &Path) -> Holder {
        let mut child = Command::new("timeout")
            .args([
                "-k",
                "5",
                "60",
                "python3",
                "-u",
                "-c",
                "import os, sys, fcntl\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)\nprint('locked', flush=True)\nsys.stdin.readline()\n",
            ])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        let stdin = child.stdin.take().unwrap();
        Holder { child, stdin }
    }

    fn release(mut self) {
        writeln!(self.stdin, "release").unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn local_try_lock(path: &Path) -> String {
    let out = Command::new("timeout")
        .args(["-k", "5", "30", "python3", "-c",
            "import os, sys, fcntl, errno\ntry:\n    fd = os.open(sys.argv[1], os.O_RDWR)\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)\n    print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_handle_from_mount_and_lookup_locks_against_the_fuse_mount() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    let f = d.mnt("shared.db");
    std::fs::write(&f, vec![b'.'; 200]).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o2666)).unwrap();
    let rt = rt();
    let nfs = rt.block_on(Nfs::connect());
    let root = rt.block_on(nfs.root());
    let fh = rt.block_on(nfs.lookup(&root, "shared.db"));
    assert_eq!(
        fh,
        d.fh(&d.src().join("shared.db")),
        "NFS and NLM name the file by one handle"
    );
    let nlm_client = rt
        .block_on(RpcClient::tcp(d.nlm_tcp, ClientConfig::default()))
        .unwrap();

    // A local lock on the FUSE mount: the NFS client's NLM lock is denied, its WRITE into
    // the mandatory-locked range is refused (JUKEBOX: retried later), outside it admitted.
    let holder = Holder::lock(&f);
    assert_eq!(
        rt.block_on(nlm_call(&nlm_client, nlm(&fh, 7), true)),
        v4::Stats::Denied
    );
    assert_eq!(
        rt.block_on(nfs.write(&fh, 10, b"nfs")),
        10008,
        "JUKEBOX while the local lock is held"
    );
    assert_eq!(
        rt.block_on(nfs.write(&fh, 150, b"out")),
        0,
        "outside the locked range"
    );
    assert_eq!(
        &std::fs::read(d.src().join("shared.db")).unwrap()[10..13],
        b"..."
    );
    holder.release();
    assert_eq!(
        rt.block_on(nfs.write(&fh, 10, b"nfs")),
        0,
        "admitted after the local unlock"
    );
    let seen = std::fs::read(&f).unwrap();
    assert_eq!(&seen[10..13], b"nfs", "the FUSE mount reads what NFS wrote");
    assert_eq!(&seen[150..153], b"out");

    // The other way round: the NFS client's NLM lock blocks a local lock.
    assert_eq!(
        rt.block_on(nlm_call(&nlm_client, nlm(&fh, 7), true)),
        v4::Stats::Granted
    );
    assert_eq!(local_try_lock(&f), "EAGAIN");
    assert_eq!(
        rt.block_on(nlm_call(&nlm_client, nlm(&fh, 7), false)),
        v4::Stats::Granted
    );
    assert_eq!(local_try_lock(&f), "OK");
}

/// Changes made over NFS are seen at once on the FUSE mount: the kernel's cached size,
/// and its cached names, are dropped by the NFS door rather than served until the
/// mount's one-second attribute and entry timeout.
#[test]
fn nfs_changes_are_seen_at_once_on_the_fuse_mount() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    for name in ["grow", "victim", "before"] {
        std::fs::write(d.mnt(name), b"0123456789").unwrap();
        std::fs::set_permissions(d.mnt(name), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let rt = rt();
    let nfs = rt.block_on(Nfs::connect());
    let root = rt.block_on(nfs.root());
    let grow = rt.block_on(nfs.lookup(&root, "grow"));
    for round in 0..3u64 {
        // Cache the attributes and names, change them over NFS, look again at once.
        let size = std::fs::metadata(d.mnt("grow")).unwrap().len();
        let end = size + 100;
        assert_eq!(rt.block_on(nfs.write(&grow, end - 1, b"!")), 0);
        assert_eq!(
            std::fs::metadata(d.mnt("grow")).unwrap().len(),
            end,
            "round {round}: the size after an extending NFS WRITE"
        );
    }
    assert!(d.mnt("victim").exists());
    assert_eq!(rt.block_on(nfs.name_op(&root, "victim", None)), 0);
    assert!(
        !d.mnt("victim").exists(),
        "a name removed over NFS is gone locally"
    );
    assert!(d.mnt("before").exists());
    assert_eq!(rt.block_on(nfs.name_op(&root, "before", Some("after"))), 0);
    assert!(!d.mnt("before").exists(), "the old name of a rename");
    assert_eq!(std::fs::read(d.mnt("after")).unwrap(), b"0123456789");
}

/// Changes of names made over NFS are seen at once on the FUSE mount however they
/// alternate with the mount's own requests. The NFS door tells the mount only what it may
/// have cached since it was last told (a directory's attributes asked for again, a file
/// it knows); these rounds check that skipping the rest drops nothing it did cache: two
/// changes in a row with no local request between, a change right after a local one, a
/// link count of a file the mount knows, a name it looked up and did not find.
#[test]
fn name_changes_over_nfs_are_seen_at_once_however_they_alternate() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    std::fs::create_dir(d.mnt("dir")).unwrap();
    std::fs::set_permissions(d.mnt("dir"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = rt();
    let nfs = rt.block_on(Nfs::connect());
    let root = rt.block_on(nfs.root());
    let dir = rt.block_on(nfs.lookup(&root, "dir"));
    let links = |p: &str| std::fs::symlink_metadata(d.mnt(p)).unwrap().nlink();
    let mut expect = links("dir");
    for round in 0..6u32 {
        // One, two or three MKDIRs with no local request between them, and in odd rounds
        // an RMDIR of the first right after.
        for i in 0..=round % 3 {
            assert_eq!(
                rt.block_on(nfs.make(&dir, &format!("sub{round}-{i}"), true)),
                0
            );
            expect += 1;
        }
        if round % 2 == 1 {
            assert_eq!(rt.block_on(nfs.rmdir(&dir, &format!("sub{round}-0"))), 0);
            expect -= 1;
        }
        assert_eq!(
            links("dir"),
            expect,
            "round {round}: the directory's link count after MKDIR and RMDIR over NFS"
        );
    }
    // A file the mount knows: its link count follows LINK and REMOVE over NFS.
    std::fs::write(d.mnt("dir/f"), b"f").unwrap();
    std::fs::set_permissions(d.mnt("dir/f"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let f = rt.block_on(nfs.lookup(&dir, "f"));
    for round in 0..3u32 {
        assert_eq!(links("dir/f"), 1, "round {round}");
        assert_eq!(rt.block_on(nfs.link(&f, &dir, "f2")), 0);
        assert_eq!(
            links("dir/f"),
            2,
            "round {round}: the link count after LINK"
        );
        assert!(d.mnt("dir/f2").exists());
        assert_eq!(rt.block_on(nfs.name_op(&dir, "f2", None)), 0);
        assert_eq!(
            links("dir/f"),
            1,
            "round {round}: the link count after REMOVE of the other name"
        );
        assert!(!d.mnt("dir/f2").exists(), "round {round}: the removed name");
    }
    // A name looked up and not found appears at once when made over NFS.
    for round in 0..3u32 {
        let name = format!("new{round}");
        assert!(!d.mnt(&format!("dir/{name}")).exists());
        assert_eq!(rt.block_on(nfs.make(&dir, &name, false)), 0);
        assert!(
            d.mnt(&format!("dir/{name}")).exists(),
            "round {round}: a name created over NFS after a failed local lookup"
        );
    }
}
