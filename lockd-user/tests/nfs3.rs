//! The NFS door against a real server: a client of this file speaks NFS version 3 and
//! MOUNT over TCP and UDP and checks every procedure, the error cases (stale, forged and
//! truncated handles, ROFS, permission denied as a non-owner, NOTEMPTY, EXIST,
//! NAMETOOLONG, a read past end of file, a replayed exclusive create, a replayed
//! non-idempotent call), the share and mandatory-lock gates, and that the handles are the
//! very ones NLM locks with. A session of every NFS and MOUNT procedure is captured and
//! dissected by tshark, an independent decoder of both protocols.
//!
//! Run it inside a private network namespace (see the project's test script); the
//! servers bind loopback ports chosen by the kernel.

use lock_table::{
    FileId, LockKind, LockOutcome, LockRequest, Owner, Range, ScopeId, SharedTable, Wait,
};
use lockd_user::client::{ClientConfig, ClientError, RpcClient};
use lockd_user::nfs3::backing::WRITER_IDLE;
use lockd_user::nfs3::service::Changes;
use lockd_user::nfs3::{
    ChangeSink, ExportOptions, Invalidation, MandatoryMode, NfsConfig, NfsService, Squash, Was,
};
use lockd_user::rpc::{AcceptStatus, AuthSys, CallHeader, OpaqueAuth, ReplyHeader, ReplyStatus};
use lockd_user::xdr::{Decoder, Encoder};
use lockd_user::{EventSink, Export, LockdConfig, LockdService, PortmapMode, Transport};
use share_reservations::{ShareAccess, ShareDeny, ShareMode, ShareRequest, ShareTable};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);
const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;

// nfsstat3
const OK: u32 = 0;
const NOENT: u32 = 2;
const ACCES: u32 = 13;
const EXIST: u32 = 17;
const NOTDIR: u32 = 20;
const ISDIR: u32 = 21;
const INVAL: u32 = 22;
const ROFS: u32 = 30;
const NAMETOOLONG: u32 = 63;
const NOTEMPTY: u32 = 66;
const STALE: u32 = 70;
const BADHANDLE: u32 = 10001;
const NOT_SYNC: u32 = 10002;
const JUKEBOX: u32 = 10008;

struct Server {
    _dir: tempfile::TempDir,
    rw: PathBuf,
    ro: PathBuf,
    lockd: LockdService,
    nfs: NfsService,
    table: Arc<SharedTable>,
    shares: Arc<Mutex<ShareTable>>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut NfsConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rw = dir.path().join("rw");
        let ro = dir.path().join("ro");
        for d in [&rw, &ro] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let public = rw.join("public");
        std::fs::create_dir(&public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(ro.join("file"), b"read only").unwrap();
        let mut config = LockdConfig::new("nfs-test", dir.path().join("state"));
        let mut ro_export = Export::new(2, &ro);
        ro_export.read_only = true;
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        let mut closed_export = Export::new(3, &closed);
        closed_export.allowed = vec!["10.9.9.9".parse().unwrap()];
        config.exports = vec![Export::new(1, &rw), ro_export, closed_export];
        config.grace = Duration::ZERO;
        config.portmap = PortmapMode::Off;
        let (sink, queue) = EventSink::new();
        let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
        let shares = Arc::new(Mutex::new(ShareTable::new()));
        let lockd = timeout(
            STEP,
            LockdService::start(config, table.clone(), shares.clone(), queue),
        )
        .await
        .unwrap()
        .unwrap();
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut nc = NfsConfig::new(vec![lo], vec![lo]);
        nc.exports.insert(
            1,
            ExportOptions {
                paths: vec!["/rw".into()],
                squash: Squash::default(),
                mandatory: MandatoryMode::File,
            },
        );
        nc.exports.insert(
            2,
            ExportOptions {
                paths: vec!["/ro".into()],
                ..ExportOptions::default()
            },
        );
        tune(&mut nc);
        let nfs = timeout(STEP, NfsService::start(nc, lockd.lockd().clone(), None))
            .await
            .unwrap()
            .unwrap();
        Self {
            _dir: dir,
            rw,
            ro,
            lockd,
            nfs,
            table,
            shares,
        }
    }

    async fn client(&self, uid: u32, gid: u32) -> Client {
        Client::new(
            Transport::Tcp,
            self.nfs.nfs_tcp()[0],
            self.nfs.mount_tcp()[0],
            uid,
            gid,
        )
        .await
    }

    async fn stop(self) {
        self.nfs.shutdown().await;
        self.lockd.shutdown().await;
    }
}

fn sys(uid: u32, gid: u32) -> OpaqueAuth {
    AuthSys {
        stamp: 1,
        machinename: "nfs-client".into(),
        uid,
        gid,
        gids: vec![],
    }
    .to_opaque()
}

/// Sends one NFS call as a record on a connection of the test's own.
async fn send_call(
    sock: &mut tokio::net::TcpStream,
    xid: u32,
    proc_: u32,
    cred: OpaqueAuth,
    args: &Encoder,
) {
    let msg = CallHeader::new(xid, NFS, 3, proc_, cred).to_message(args.as_slice());
    let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&msg);
    sock.write_all(&rec).await.unwrap();
}

/// Reads one reply record (a single fragment) from a connection of the test's own.
async fn recv_reply(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut hdr = [0u8; 4];
    timeout(STEP, sock.read_exact(&mut hdr))
        .await
        .unwrap()
        .unwrap();
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut body = vec![0u8; len];
    timeout(STEP, sock.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    body
}

/// `len` bytes that differ from offset to offset (and with `seed`), so data read or
/// written in the wrong place is told apart.
fn noise(len: u32, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

/// (type, mode, uid, size, fileid) of a `fattr3`.
type Attr = (u32, u32, u32, u64, u64);

struct Client {
    nfs: RpcClient,
    mount: RpcClient,
}

/// An answer: its status and the decoder at the rest of the results.
struct Ans {
    stat: u32,
    body: Vec<u8>,
    pos: usize,
}

impl Ans {
    fn d(&self) -> Decoder<'_> {
        Decoder::new(&self.body[self.pos..])
    }
}

fn skip_post_attr(d: &mut Decoder<'_>) -> Option<Attr> {
    if !d.get_bool().unwrap() {
        return None;
    }
    let ftype = d.get_u32().unwrap();
    let mode = d.get_u32().unwrap();
    let _nlink = d.get_u32().unwrap();
    let uid = d.get_u32().unwrap();
    let _gid = d.get_u32().unwrap();
    let size = d.get_u64().unwrap();
    let _used = d.get_u64().unwrap();
    d.get_u64().unwrap(); // rdev
    d.get_u64().unwrap(); // fsid
    let fileid = d.get_u64().unwrap();
    for _ in 0..6 {
        d.get_u32().unwrap();
    }
    Some((ftype, mode, uid, size, fileid))
}

fn skip_wcc(d: &mut Decoder<'_>) -> (bool, Option<Attr>) {
    let pre = d.get_bool().unwrap();
    if pre {
        d.get_u64().unwrap();
        for _ in 0..4 {
            d.get_u32().unwrap();
        }
    }
    (pre, skip_post_attr(d))
}

fn dirop(fh: &[u8], name: &[u8]) -> Encoder {
    let mut e = Encoder::new();
    e.put_opaque(fh);
    e.put_opaque(name);
    e
}

fn sattr_mode(e: &mut Encoder, mode: Option<u32>) {
    e.put_bool(mode.is_some());
    if let Some(m) = mode {
        e.put_u32(m);
    }
    for _ in 0..3 {
        e.put_bool(false);
    }
    e.put_u32(0);
    e.put_u32(0);
}

impl Client {
    async fn new(t: Transport, nfs: SocketAddr, mount: SocketAddr, uid: u32, gid: u32) -> Self {
        let cfg = ClientConfig {
            cred: sys(uid, gid),
            retransmit: Duration::from_millis(300),
            total_timeout: Duration::from_secs(10),
            max_record_size: 4 << 20,
            ..ClientConfig::default()
        };
        Self {
            nfs: RpcClient::new(t, nfs, cfg.clone()).await.unwrap(),
            mount: RpcClient::new(Transport::Tcp, mount, cfg).await.unwrap(),
        }
    }

    async fn call(&self, proc_: u32, args: &Encoder) -> Ans {
        let body = timeout(STEP, self.nfs.call_raw(NFS, 3, proc_, args.as_slice()))
            .await
            .unwrap()
            .unwrap();
        let mut d = Decoder::new(&body);
        let stat = d.get_u32().unwrap();
        let pos = d.position();
        Ans { stat, body, pos }
    }

    async fn raw(&self, proc_: u32, args: &[u8]) -> Result<Vec<u8>, ClientError> {
        timeout(STEP, self.nfs.call_raw(NFS, 3, proc_, args))
            .await
            .unwrap()
    }

    async fn mnt(&self, path: &str) -> (u32, Vec<u8>) {
        let mut e = Encoder::new();
        e.put_string(path);
        let body = timeout(STEP, self.mount.call_raw(MOUNT, 3, 1, e.as_slice()))
            .await
            .unwrap()
            .unwrap();
        let mut d = Decoder::new(&body);
        let stat = d.get_u32().unwrap();
        if stat != 0 {
            return (stat, vec![]);
        }
        let fh = d.get_opaque(64).unwrap();
        let flavors: Vec<u32> = d.get_array(16).unwrap();
        assert!(flavors.contains(&1), "AUTH_SYS offered");
        (stat, fh)
    }

    async fn getattr(&self, fh: &[u8]) -> (u32, Option<Attr>) {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        let a = self.call(1, &e).await;
        if a.stat != OK {
            return (a.stat, None);
        }
        let mut d = a.d();
        let mut attr = Encoder::new();
        attr.put_bool(true);
        attr.put_raw(&a.body[a.pos..]);
        let _ = &mut d;
        (a.stat, skip_post_attr(&mut Decoder::new(attr.as_slice())))
    }

    async fn lookup(&self, dir: &[u8], name: &[u8]) -> (u32, Vec<u8>) {
        let a = self.call(3, &dirop(dir, name)).await;
        if a.stat != OK {
            return (a.stat, vec![]);
        }
        (a.stat, a.d().get_opaque(64).unwrap())
    }

    /// CREATE with mode 0 UNCHECKED, 1 GUARDED (sattr mode), 2 EXCLUSIVE (verifier).
    async fn create(&self, dir: &[u8], name: &[u8], how: u32, verf: [u8; 8]) -> (u32, Vec<u8>) {
        let mut e = dirop(dir, name);
        e.put_u32(how);
        if how == 2 {
            e.put_fixed_opaque(&verf);
        } else {
            sattr_mode(&mut e, Some(0o644));
        }
        let a = self.call(8, &e).await;
        let mut d = a.d();
        if a.stat != OK {
            let (pre, post) = skip_wcc(&mut d);
            assert!(pre && post.is_some(), "dir wcc on failure");
            return (a.stat, vec![]);
        }
        assert!(d.get_bool().unwrap(), "handle returned");
        let fh = d.get_opaque(64).unwrap();
        assert!(skip_post_attr(&mut d).is_some());
        let (pre, post) = skip_wcc(&mut d);
        assert!(pre && post.is_some(), "dir wcc");
        (a.stat, fh)
    }

    async fn mkdir(&self, dir: &[u8], name: &[u8]) -> (u32, Vec<u8>) {
        let mut e = dirop(dir, name);
        sattr_mode(&mut e, Some(0o755));
        let a = self.call(9, &e).await;
        if a.stat != OK {
            return (a.stat, vec![]);
        }
        let mut d = a.d();
        assert!(d.get_bool().unwrap());
        (a.stat, d.get_opaque(64).unwrap())
    }

    async fn write(&self, fh: &[u8], off: u64, data: &[u8], stable: u32) -> (u32, u32, [u8; 8]) {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        e.put_u64(off);
        e.put_u32(data.len() as u32);
        e.put_u32(stable);
        e.put_opaque(data);
        let a = self.call(7, &e).await;
        let mut d = a.d();
        let (pre, post) = skip_wcc(&mut d);
        if a.stat != OK {
            return (a.stat, 0, [0; 8]);
        }
        assert!(pre, "pre-op attributes of WRITE");
        assert_eq!(
            post.unwrap().3,
            (off + data.len() as u64).max(post.unwrap().3)
        );
        let n = d.get_u32().unwrap();
        let committed = d.get_u32().unwrap();
        assert!(
            committed >= stable,
            "committed {committed} at least as stable as asked {stable}"
        );
        (a.stat, n, d.get_fixed_array::<8>().unwrap())
    }

    async fn read(&self, fh: &[u8], off: u64, count: u32) -> (u32, Vec<u8>, bool) {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        e.put_u64(off);
        e.put_u32(count);
        let a = self.call(6, &e).await;
        if a.stat != OK {
            return (a.stat, vec![], false);
        }
        let mut d = a.d();
        assert!(skip_post_attr(&mut d).is_some());
        let n = d.get_u32().unwrap();
        let eof = d.get_bool().unwrap();
        let data = d.get_opaque(1 << 22).unwrap();
        assert_eq!(n as usize, data.len());
        (a.stat, data, eof)
    }

    /// COMMIT of the whole file.
    async fn commit(&self, fh: &[u8]) -> Ans {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        e.put_u64(0);
        e.put_u32(0);
        self.call(21, &e).await
    }

    async fn access(&self, fh: &[u8]) -> u32 {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        e.put_u32(0x3f);
        let a = self.call(4, &e).await;
        assert_eq!(a.stat, OK);
        let mut d = a.d();
        skip_post_attr(&mut d);
        d.get_u32().unwrap()
    }

    async fn remove(&self, dir: &[u8], name: &[u8], rmdir: bool) -> u32 {
        let a = self
            .call(if rmdir { 13 } else { 12 }, &dirop(dir, name))
            .await;
        let (pre, post) = skip_wcc(&mut a.d());
        if a.stat != STALE {
            assert!(pre && post.is_some(), "dir wcc of REMOVE/RMDIR");
        }
        a.stat
    }

    /// READDIR or READDIRPLUS until eof: the names, and for PLUS whether each had a handle.
    async fn list(&self, dir: &[u8], plus: bool) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut verf = [0u8; 8];
        loop {
            let mut e = Encoder::new();
            e.put_opaque(dir);
            e.put_u64(cookie);
            e.put_fixed_opaque(&verf);
            if plus {
                e.put_u32(200);
                e.put_u32(1200);
            } else {
                e.put_u32(300);
            }
            let a = self.call(if plus { 17 } else { 16 }, &e).await;
            assert_eq!(a.stat, OK);
            let mut d = a.d();
            assert!(skip_post_attr(&mut d).is_some());
            verf = d.get_fixed_array::<8>().unwrap();
            while d.get_bool().unwrap() {
                let _ino = d.get_u64().unwrap();
                let name = String::from_utf8(d.get_opaque(255).unwrap()).unwrap();
                cookie = d.get_u64().unwrap();
                let mut has_fh = false;
                if plus {
                    let attr = skip_post_attr(&mut d);
                    has_fh = d.get_bool().unwrap();
                    if has_fh {
                        d.get_opaque(64).unwrap();
                        assert!(attr.is_some());
                    }
                }
                out.push((name, has_fh));
            }
            if d.get_bool().unwrap() {
                return out;
            }
        }
    }
}

fn flip(fh: &[u8], i: usize) -> Vec<u8> {
    let mut b = fh.to_vec();
    b[i] ^= 1;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_procedure_and_its_errors() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (st, root) = c.mnt("/rw").await;
    assert_eq!(st, 0);
    assert_eq!(
        c.mnt("/nonexistent").await.0,
        2,
        "MNT of an unknown path: NOENT"
    );
    assert_eq!(
        c.mnt(s.rw.to_str().unwrap()).await.1,
        root,
        "the source path names the same export"
    );

    // NULL, FSINFO, FSSTAT, PATHCONF, GETATTR.
    assert!(c.raw(0, &[]).await.unwrap().is_empty());
    let mut e = Encoder::new();
    e.put_opaque(&root);
    let a = c.call(19, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    skip_post_attr(&mut d).unwrap();
    let rtmax = d.get_u32().unwrap();
    assert_eq!(rtmax, 1 << 20, "max READ size advertised");
    let a = c.call(18, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    skip_post_attr(&mut d).unwrap();
    assert!(d.get_u64().unwrap() > 0, "total bytes of the backing fs");
    let a = c.call(20, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    skip_post_attr(&mut d).unwrap();
    d.get_u32().unwrap();
    assert_eq!(d.get_u32().unwrap(), 255, "name_max of the backing fs");
    let (st, attr) = c.getattr(&root).await;
    assert_eq!(st, OK);
    let (ftype, _, _, _, fileid) = attr.unwrap();
    assert_eq!(ftype, 2);
    assert_eq!(fileid, std::fs::metadata(&s.rw).unwrap().ino());

    // LOOKUP of ".." at the export root stays at the root.
    let (st, up) = c.lookup(&root, b"..").await;
    assert_eq!(st, OK);
    assert_eq!(c.getattr(&up).await.1.unwrap().4, fileid);
    assert_eq!(c.lookup(&root, b"missing").await.0, NOENT);
    assert_eq!(c.lookup(&root, b"a/b").await.0, ACCES);

    // Root is squashed: it may not create in the root-owned 0755 export root.
    assert_eq!(c.create(&root, b"f", 1, [0; 8]).await.0, ACCES);
    // A regular user creates in the public directory.
    let u = s.client(1000, 1000).await;
    let (_, public) = u.lookup(&root, b"public").await;
    let (st, f) = u.create(&public, b"f", 1, [0; 8]).await;
    assert_eq!(st, OK);
    let m = std::fs::metadata(s.rw.join("public/f")).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o777),
        (1000, 1000, 0o644),
        "created as the caller"
    );
    assert_eq!(
        u.create(&public, b"f", 1, [0; 8]).await.0,
        EXIST,
        "GUARDED over an existing file"
    );
    assert_eq!(
        u.create(&public, b"f", 0, [0; 8]).await.0,
        OK,
        "UNCHECKED over it"
    );
    let long = vec![b'n'; 300];
    assert_eq!(u.create(&public, &long, 1, [0; 8]).await.0, NAMETOOLONG);

    // WRITE (each stability), READ, read past EOF, COMMIT with the same verifier.
    let (st, n, verf) = u.write(&f, 0, b"hello world", 0).await;
    assert_eq!((st, n), (OK, 11));
    let (st, _, verf2) = u.write(&f, 11, b"!", 2).await;
    assert_eq!(st, OK);
    assert_eq!(verf, verf2);
    assert_eq!(u.write(&f, 12, b"?", 1).await.0, OK);
    assert_eq!(
        std::fs::read(s.rw.join("public/f")).unwrap(),
        b"hello world!?"
    );
    let (st, data, eof) = u.read(&f, 6, 100).await;
    assert_eq!((st, data.as_slice(), eof), (OK, &b"world!?"[..], true));
    let (st, data, eof) = u.read(&f, 0, 5).await;
    assert_eq!((st, data.as_slice(), eof), (OK, &b"hello"[..], false));
    let (st, data, eof) = u.read(&f, 1000, 10).await;
    assert_eq!(
        (st, data.len(), eof),
        (OK, 0, true),
        "read past EOF: nothing, eof"
    );
    let a = u.commit(&f).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    skip_wcc(&mut d);
    assert_eq!(
        d.get_fixed_array::<8>().unwrap(),
        verf,
        "COMMIT verifier = WRITE verifier"
    );
    assert_eq!(u.read(&public, 0, 10).await.0, ISDIR);

    // Permission denied as a non-owner: root-owned 0644 file, uid 2000 may read, not write.
    std::fs::write(s.rw.join("public/rootfile"), b"root").unwrap();
    let other = s.client(2000, 2000).await;
    let (_, rf) = other.lookup(&public, b"rootfile").await;
    assert_eq!(other.write(&rf, 0, b"x", 2).await.0, ACCES);
    assert_eq!(other.read(&rf, 0, 10).await.1, b"root");
    assert_eq!(
        std::fs::read(s.rw.join("public/rootfile")).unwrap(),
        b"root"
    );
    // The owner of a read-only file still writes it (a process that created it 0444
    // writes through its descriptor); others may not.
    let mut e = dirop(&public, b"readonly");
    e.put_u32(1);
    sattr_mode(&mut e, Some(0o444));
    let a = u.call(8, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    assert!(d.get_bool().unwrap());
    let ro_fh = d.get_opaque(64).unwrap();
    assert_eq!(
        std::fs::metadata(s.rw.join("public/readonly"))
            .unwrap()
            .mode()
            & 0o777,
        0o444
    );
    assert_eq!(u.write(&ro_fh, 0, b"mine", 2).await.0, OK, "owner override");
    assert_eq!(u.read(&ro_fh, 0, 4).await.1, b"mine");
    assert_eq!(other.write(&ro_fh, 0, b"x", 2).await.0, ACCES);

    // ACCESS: the owner may modify, the other user may only read.
    assert_eq!(u.access(&f).await & 0x0d, 0x0d);
    assert_eq!(other.access(&f).await & 0x0d, 0x01);

    // SETATTR: size, with a guard that fails and one that holds.
    let mut e = Encoder::new();
    e.put_opaque(&f);
    e.put_bool(false);
    e.put_bool(false);
    e.put_bool(false);
    e.put_bool(true);
    e.put_u64(5);
    e.put_u32(0);
    e.put_u32(0);
    e.put_bool(true);
    e.put_u32(1);
    e.put_u32(2);
    assert_eq!(u.call(2, &e).await.stat, NOT_SYNC, "guard ctime mismatch");
    assert_eq!(std::fs::metadata(s.rw.join("public/f")).unwrap().len(), 13);
    let mut e = Encoder::new();
    e.put_opaque(&f);
    e.put_bool(true);
    e.put_u32(0o600);
    e.put_bool(false);
    e.put_bool(false);
    e.put_bool(true);
    e.put_u64(5);
    e.put_u32(1);
    e.put_u32(0);
    e.put_bool(false);
    let a = u.call(2, &e).await;
    assert_eq!(a.stat, OK);
    let (pre, post) = skip_wcc(&mut a.d());
    assert!(pre);
    assert_eq!(post.unwrap().3, 5);
    let m = std::fs::metadata(s.rw.join("public/f")).unwrap();
    assert_eq!((m.len(), m.mode() & 0o777), (5, 0o600));

    // MKDIR, SYMLINK (never followed), READLINK, LINK, MKNOD, RENAME.
    let (st, sub) = u.mkdir(&public, b"sub").await;
    assert_eq!(st, OK);
    assert_eq!(u.mkdir(&public, b"sub").await.0, EXIST);
    let mut e = dirop(&public, b"link");
    sattr_mode(&mut e, None);
    e.put_string("/etc/passwd");
    let a = u.call(10, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    assert!(d.get_bool().unwrap());
    let link = d.get_opaque(64).unwrap();
    let (st, la) = u.getattr(&link).await;
    assert_eq!(
        (st, la.unwrap().0),
        (OK, 5),
        "the link itself, not /etc/passwd"
    );
    assert_eq!(
        u.read(&link, 0, 10).await.0,
        INVAL,
        "a READ never follows a link"
    );
    let mut e = Encoder::new();
    e.put_opaque(&link);
    let a = u.call(5, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    skip_post_attr(&mut d);
    assert_eq!(d.get_opaque(4096).unwrap(), b"/etc/passwd");
    let mut e = Encoder::new();
    e.put_opaque(&f);
    e.put_opaque(&sub);
    e.put_opaque(b"hard");
    let a = u.call(15, &e).await;
    assert_eq!(a.stat, OK);
    assert_eq!(
        std::fs::metadata(s.rw.join("public/sub/hard"))
            .unwrap()
            .ino(),
        m.ino()
    );
    let mut e = dirop(&public, b"fifo");
    e.put_u32(7);
    sattr_mode(&mut e, Some(0o600));
    assert_eq!(u.call(11, &e).await.stat, OK);
    assert!(std::fs::symlink_metadata(s.rw.join("public/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let mut e = dirop(&public, b"fifo2");
    e.put_u32(2);
    assert_eq!(
        u.call(11, &e).await.stat,
        10007,
        "MKNOD of a directory: BADTYPE"
    );
    let mut e = dirop(&public, b"fifo");
    e.put_raw(dirop(&sub, b"moved").as_slice());
    let a = u.call(14, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    assert!(
        skip_wcc(&mut d).0 && skip_wcc(&mut d).0,
        "both directories' wcc"
    );
    assert!(s.rw.join("public/sub/moved").exists());

    // READDIR and READDIRPLUS over several small pages.
    for i in 0..20 {
        std::fs::write(s.rw.join(format!("public/sub/entry-{i:02}")), b"").unwrap();
    }
    let mut names: Vec<String> = u
        .list(&sub, false)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("entry-{i:02}")).collect();
    want.extend([".", "..", "hard", "moved"].map(String::from));
    want.sort();
    assert_eq!(names, want);
    let plus = u.list(&sub, true).await;
    assert_eq!(plus.len(), want.len());
    assert!(plus
        .iter()
        .filter(|(n, _)| n.starts_with("entry"))
        .all(|(_, h)| *h));
    let mut e = Encoder::new();
    e.put_opaque(&sub);
    e.put_u64(12345);
    e.put_fixed_opaque(&[9; 8]);
    e.put_u32(4096);
    assert_eq!(
        u.call(16, &e).await.stat,
        10003,
        "a cookie verifier not ours: BAD_COOKIE"
    );
    let mut e = Encoder::new();
    e.put_opaque(&f);
    e.put_u64(0);
    e.put_fixed_opaque(&[0; 8]);
    e.put_u32(4096);
    assert_eq!(u.call(16, &e).await.stat, NOTDIR);

    // RMDIR of a non-empty directory, REMOVE, then the removed file's handle is stale.
    assert_eq!(u.remove(&public, b"sub", true).await, NOTEMPTY);
    assert_eq!(u.remove(&public, b"f", false).await, OK);
    assert_eq!(u.remove(&public, b"f", false).await, NOENT);
    assert_eq!(u.remove(&sub, b"hard", false).await, OK);
    assert_eq!(u.getattr(&f).await.0, STALE);
    assert_eq!(u.write(&f, 0, b"x", 0).await.0, STALE);

    // Forged, truncated and garbage handles.
    for i in [0, 4, 10, root.len() - 1] {
        let st = u.getattr(&flip(&root, i)).await.0;
        assert!(st == BADHANDLE || st == STALE, "flipped byte {i}: {st}");
    }
    assert_eq!(u.getattr(&root[..root.len() - 3]).await.0, BADHANDLE);
    assert_eq!(u.getattr(&[]).await.0, BADHANDLE);
    let mut e = Encoder::new();
    e.put_opaque(&[7u8; 65]);
    assert!(
        matches!(u.raw(1, e.as_slice()).await, Err(ClientError::GarbageArgs)),
        "a handle over 64 bytes is garbage"
    );
    assert!(matches!(
        u.raw(7, &[0, 0, 0]).await,
        Err(ClientError::GarbageArgs)
    ));
    assert!(matches!(
        u.raw(22, &[]).await,
        Err(ClientError::ProcUnavail)
    ));
    let mut e = Encoder::new();
    e.put_opaque(&root);
    e.put_u32(9);
    assert!(
        matches!(u.raw(8, e.as_slice()).await, Err(ClientError::GarbageArgs)),
        "truncated CREATE"
    );

    // The read-only export answers ROFS to every change and still reads.
    let (st, ro) = c.mnt("/ro").await;
    assert_eq!(st, 0);
    let (_, rof) = u.lookup(&ro, b"file").await;
    assert_eq!(u.read(&rof, 0, 100).await.1, b"read only");
    assert_eq!(u.write(&rof, 0, b"x", 2).await.0, ROFS);
    assert_eq!(u.create(&ro, b"new", 1, [0; 8]).await.0, ROFS);
    assert_eq!(u.remove(&ro, b"file", false).await, ROFS);
    assert_eq!(u.mkdir(&ro, b"d").await.0, ROFS);
    assert!(s.ro.join("file").exists());
    // A handle of one export is not accepted as another's.
    let mut e = Encoder::new();
    e.put_opaque(&rof);
    e.put_opaque(&public);
    e.put_opaque(b"cross");
    assert_eq!(u.call(15, &e).await.stat, 18, "LINK across exports: XDEV");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_create_replayed_succeeds_and_another_verifier_does_not() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    let v = *b"verifier";
    let (st, a) = u.create(&public, b"x", 2, v).await;
    assert_eq!(st, OK);
    let (st, b) = u.create(&public, b"x", 2, v).await;
    assert_eq!(
        st, OK,
        "the same verifier: the retransmitted create succeeds"
    );
    assert_eq!(a, b);
    assert_eq!(u.create(&public, b"x", 2, *b"another!").await.0, EXIST);
    // Verifiers whose halves have the top bit set are kept whole.
    let high = [0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8];
    assert_eq!(u.create(&public, b"y", 2, high).await.0, OK);
    assert_eq!(u.create(&public, b"y", 2, high).await.0, OK);
    let mut low = high;
    low[0] = 0x7f;
    low[4] = 0x7b;
    assert_eq!(u.create(&public, b"y", 2, low).await.0, EXIST);
    s.stop().await;
}

/// The same xid and arguments sent twice on one connection: the second REMOVE gets the
/// first one's answer from the duplicate request cache instead of running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_remove_is_answered_from_the_cache() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    std::fs::write(s.rw.join("public/gone"), b"").unwrap();
    let mut sock = tokio::net::TcpStream::connect(s.nfs.nfs_tcp()[0])
        .await
        .unwrap();
    let args = dirop(&public, b"gone");
    let mut statuses = Vec::new();
    for xid in [77, 77, 78] {
        send_call(&mut sock, xid, 12, sys(1000, 1000), &args).await;
        let body = recv_reply(&mut sock).await;
        let mut d = Decoder::new(&body);
        let h = ReplyHeader::decode(&mut d).unwrap();
        assert_eq!(h.xid, xid);
        assert_eq!(h.status, ReplyStatus::accepted(AcceptStatus::Success));
        statuses.push(d.get_u32().unwrap());
    }
    assert_eq!(
        statuses,
        vec![OK, OK, NOENT],
        "replay answered OK; a new xid runs again"
    );
    s.stop().await;
}

/// `public/m` of the read-write export: ten bytes, marked mandatory (set-group-ID
/// without group execute), with a local owner's exclusive lock on bytes 0-3.
struct LocalLock {
    public: Vec<u8>,
    path: std::path::PathBuf,
    file: FileId,
    fh: Vec<u8>,
    local: Owner,
    req: LockRequest,
}

async fn mandatory_file_locked_locally(s: &Server, u: &Client) -> LocalLock {
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    let path = s.rw.join("public/m");
    std::fs::write(&path, b"0123456789").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2666)).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    let file = FileId::new(m.dev(), m.ino());
    let (_, fh) = u.lookup(&public, b"m").await;
    let local = Owner::posix(4242);
    let req = LockRequest {
        file,
        scope: ScopeId::DEFAULT,
        owner: local,
        pid: 1,
        kind: LockKind::Exclusive,
        range: Range::new(0, 4).unwrap(),
        wait: Wait::No,
        reclaim: false,
    };
    assert!(matches!(s.table.lock(&req), LockOutcome::Granted));
    LocalLock {
        public,
        path,
        file,
        fh,
        local,
        req,
    }
}

/// NFS I/O meets the one table: a local lock on a mandatory file refuses a WRITE with
/// JUKEBOX until it is released, and a deny-write share reservation refuses it with ACCES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_locks_and_share_reservations_gate_nfs_io() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let LocalLock {
        public,
        path,
        file,
        fh,
        local,
        req,
    } = mandatory_file_locked_locally(&s, &u).await;
    assert_eq!(
        u.write(&fh, 2, b"x", 2).await.0,
        JUKEBOX,
        "inside the locked range"
    );
    assert_eq!(
        u.read(&fh, 0, 4).await.0,
        JUKEBOX,
        "an exclusive lock forbids reads too"
    );
    assert_eq!(u.write(&fh, 8, b"y", 2).await.0, OK, "outside it");
    assert_eq!(std::fs::read(&path).unwrap(), b"01234567y9");
    s.table.with(|t| t.unlock(file, local, Range::to_eof(0)));
    assert_eq!(u.write(&fh, 2, b"x", 2).await.0, OK, "after the unlock");

    // The owner of NFS I/O is the calling host as a whole: a lock that one of its
    // processes holds through NLM is its own, another host's lock is not.
    let (mine, theirs) = s.table.with(|t| {
        let me = t.registry_mut().host("nfs-client");
        let other = t.registry_mut().host("other-client");
        (
            t.registry_mut().nlm_owner(me, 7, b"proc-7"),
            t.registry_mut().nlm_owner(other, 7, b"proc-7"),
        )
    });
    let nlm = LockRequest { owner: mine, ..req };
    assert!(matches!(s.table.lock(&nlm), LockOutcome::Granted));
    assert_eq!(
        u.write(&fh, 2, b"h", 2).await.0,
        OK,
        "a lock of a process of the writing host is the host's own"
    );
    s.table.with(|t| t.unlock(file, mine, Range::to_eof(0)));
    let nlm = LockRequest {
        owner: theirs,
        ..req
    };
    assert!(matches!(s.table.lock(&nlm), LockOutcome::Granted));
    assert_eq!(
        u.write(&fh, 2, b"o", 2).await.0,
        JUKEBOX,
        "another host's lock refuses the write"
    );
    s.table.with(|t| t.unlock(file, theirs, Range::to_eof(0)));
    assert_eq!(std::fs::read(&path).unwrap(), b"01h34567y9");

    // A file without the mandatory mark is not gated.
    let plain = s.rw.join("public/plain");
    std::fs::write(&plain, b"abc").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o666)).unwrap();
    let pm = std::fs::metadata(&plain).unwrap();
    let pfile = FileId::new(pm.dev(), pm.ino());
    assert!(matches!(
        s.table.lock(&LockRequest { file: pfile, ..req }),
        LockOutcome::Granted
    ));
    let (_, pfh) = u.lookup(&public, b"plain").await;
    assert_eq!(u.write(&pfh, 0, b"z", 2).await.0, OK);

    // A local deny-write reservation refuses NFS writes of any file, not reads.
    s.shares
        .lock()
        .unwrap()
        .reserve(&ShareRequest {
            file: pfile,
            scope: ScopeId::DEFAULT,
            owner: Owner::ofd(99),
            pid: 1,
            mode: ShareMode::new(ShareAccess::READ, ShareDeny::WRITE),
        })
        .unwrap();
    assert_eq!(u.write(&pfh, 0, b"q", 2).await.0, ACCES);
    assert_eq!(u.read(&pfh, 0, 3).await.1, b"zbc");
    s.shares.lock().unwrap().release(pfile, Owner::ofd(99));
    assert_eq!(u.write(&pfh, 0, b"q", 2).await.0, OK);
    s.stop().await;
}

/// UDP works the same, with READ sizes capped to a datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_transport_serves_the_same_handles() {
    let s = Server::start().await;
    let tcp = s.client(1000, 1000).await;
    let (_, root) = tcp.mnt("/rw").await;
    let udp = Client::new(
        Transport::Udp,
        s.nfs.nfs_udp()[0],
        s.nfs.mount_tcp()[0],
        1000,
        1000,
    )
    .await;
    let (_, public) = udp.lookup(&root, b"public").await;
    let (st, f) = udp.create(&public, b"u", 1, [0; 8]).await;
    assert_eq!(st, OK);
    let big = vec![7u8; 20_000];
    assert_eq!(udp.write(&f, 0, &big, 2).await.1, 20_000);
    let (st, data, _) = udp.read(&f, 0, 1 << 20).await;
    assert_eq!(st, OK);
    assert_eq!(data.len(), 20_000);
    s.stop().await;
}

/// Per-export client lists apply to MOUNT and NFS alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_not_on_the_list_gets_neither_mount_nor_nfs() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let closed = s.rw.parent().unwrap().join("closed");
    assert_eq!(u.mnt(closed.to_str().unwrap()).await.0, ACCES);
    // A handle of that export, sealed by this server, is still refused over NFS.
    let exports = vec![Export::new(3, &closed)];
    let fh =
        lockd_user::fh_for_path(&s.rw.parent().unwrap().join("state"), &exports, &closed).unwrap();
    assert_eq!(u.getattr(&fh).await.0, ACCES);
    s.stop().await;
}

/// AUTH_NONE callers are served as the anonymous identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_is_anonymous() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    let cfg = ClientConfig::default();
    let anon = Client {
        nfs: RpcClient::tcp(s.nfs.nfs_tcp()[0], cfg.clone())
            .await
            .unwrap(),
        mount: RpcClient::tcp(s.nfs.mount_tcp()[0], cfg).await.unwrap(),
    };
    assert!(anon.raw(0, &[]).await.unwrap().is_empty(), "NULL");
    let (st, _) = anon.create(&public, b"anon", 1, [0; 8]).await;
    assert_eq!(st, OK);
    let m = std::fs::metadata(s.rw.join("public/anon")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(anon.create(&root, b"anon", 1, [0; 8]).await.0, ACCES);
    s.stop().await;
}

/// The write verifier changes when the server starts again, so a client resends the
/// unstable writes a crash may have lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_verifier_changes_with_every_start() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    let (_, f) = u.create(&public, b"v", 1, [0; 8]).await;
    let (_, _, before) = u.write(&f, 0, b"a", 0).await;
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let again = NfsService::start(
        NfsConfig::new(vec![lo], vec![lo]),
        s.lockd.lockd().clone(),
        None,
    )
    .await
    .unwrap();
    let u2 = Client::new(
        Transport::Tcp,
        again.nfs_tcp()[0],
        again.mount_tcp()[0],
        1000,
        1000,
    )
    .await;
    let (st, _, after) = u2.write(&f, 1, b"b", 0).await;
    assert_eq!(st, OK, "handles survive the restart");
    assert_ne!(before, after);
    again.shutdown().await;
    s.stop().await;
}

/// The descriptors behind handles are bounded by the configured cache size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_descriptors_stay_within_the_configured_bound() {
    let s = Server::start_with(|c| c.open_files = 16).await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    for i in 0..100 {
        let name = format!("f{i}");
        let (st, fh) = u.create(&public, name.as_bytes(), 1, [0; 8]).await;
        assert_eq!(st, OK);
        assert_eq!(u.getattr(&fh).await.0, OK);
        assert!(s.nfs.open_files() <= 16, "{} open", s.nfs.open_files());
    }
    // Handles whose descriptors were closed resolve again.
    let (_, first) = u.lookup(&public, b"f0").await;
    assert_eq!(u.getattr(&first).await.0, OK);
    s.stop().await;
}

/// A LOOKUP alone caches no descriptor (a walk over many names would churn the cache);
/// a handle's use does, and a name of a file whose handle is in use is then answered from
/// that cache (one `fstatat`). The cache lets go of a file whose last name a REMOVE took,
/// so its blocks are freed at once; a file that keeps another name keeps its descriptor
/// and handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_file_lets_go_of_its_descriptor() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    // Root is squashed: the changes are made in the directory anyone may write.
    let (_, root) = c.lookup(&root, b"public").await;
    let dir = s.rw.join("public");
    std::fs::write(dir.join("once"), b"one name").unwrap();
    std::fs::write(dir.join("twice"), b"two names").unwrap();
    std::fs::hard_link(dir.join("twice"), dir.join("twice-too")).unwrap();
    assert_eq!(c.getattr(&root).await.0, OK);
    let before = s.nfs.open_files();
    let (st, once) = c.lookup(&root, b"once").await;
    assert_eq!(st, OK);
    let (st, twice) = c.lookup(&root, b"twice").await;
    assert_eq!(st, OK);
    assert_eq!(s.nfs.open_files(), before, "a LOOKUP cached a descriptor");
    assert_eq!(c.getattr(&once).await.0, OK);
    assert_eq!(c.getattr(&twice).await.0, OK);
    assert_eq!(s.nfs.open_files(), before + 2, "each handle used is cached");
    assert_eq!(c.lookup(&root, b"once").await.1, once);
    assert_eq!(
        c.lookup(&root, b"twice-too").await.1,
        twice,
        "one file, one handle"
    );
    assert_eq!(c.remove(&root, b"twice", false).await, OK);
    assert_eq!(s.nfs.open_files(), before + 2, "the file has another name");
    assert_eq!(c.getattr(&twice).await.0, OK);
    assert_eq!(c.remove(&root, b"once", false).await, OK);
    assert_eq!(s.nfs.open_files(), before + 1, "the last name is gone");
    assert_eq!(c.getattr(&once).await.0, STALE);
    // A new file under the old name is another file, with another handle.
    std::fs::write(dir.join("once"), b"new").unwrap();
    let (st, again) = c.lookup(&root, b"once").await;
    assert_eq!(st, OK);
    assert_ne!(again, once);
    assert_eq!(c.getattr(&again).await.1.unwrap().3, 3);
    s.stop().await;
}

/// A name looked up a second time keeps its file's descriptor, so that the next LOOKUPs
/// of it cost one `fstatat`; a walk over names each looked up once keeps nothing.
#[tokio::test]
async fn a_name_looked_up_again_keeps_its_descriptor() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    let (_, root) = c.lookup(&root, b"public").await;
    let dir = s.rw.join("public");
    for i in 0..300 {
        std::fs::write(dir.join(format!("walk-{i}")), b"w").unwrap();
    }
    std::fs::write(dir.join("again"), b"again").unwrap();
    assert_eq!(c.getattr(&root).await.0, OK);
    let before = s.nfs.open_files();
    for i in 0..300 {
        assert_eq!(c.lookup(&root, format!("walk-{i}").as_bytes()).await.0, OK);
    }
    assert_eq!(s.nfs.open_files(), before, "a walk kept descriptors");
    let (st, first) = c.lookup(&root, b"again").await;
    assert_eq!(st, OK);
    assert_eq!(
        s.nfs.open_files(),
        before,
        "a first LOOKUP kept a descriptor"
    );
    assert_eq!(c.lookup(&root, b"again").await, (OK, first.clone()));
    assert_eq!(s.nfs.open_files(), before + 1, "a second LOOKUP keeps it");
    assert_eq!(c.lookup(&root, b"again").await, (OK, first.clone()));
    assert_eq!(s.nfs.open_files(), before + 1, "once");
    assert_eq!(c.getattr(&first).await.1.unwrap().3, 5);
    // The kept descriptor still lets the file go with its last name.
    assert_eq!(c.remove(&root, b"again", false).await, OK);
    assert_eq!(s.nfs.open_files(), before);
    assert_eq!(c.lookup(&root, b"again").await.0, NOENT);
    s.stop().await;
}

/// What a CREATE made keeps the descriptor the CREATE opened, so the calls a client
/// makes next on the new handle find it open; its REMOVE uses that descriptor, and the
/// file goes with its name all the same. A file removed by a walk over names the cache
/// does not hold goes too.
#[tokio::test]
async fn what_a_create_made_stays_open_until_its_remove() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    let (_, public) = c.lookup(&root, b"public").await;
    let dir = s.rw.join("public");
    assert_eq!(c.getattr(&public).await.0, OK);
    let before = s.nfs.open_files();
    let (st, made) = c.create(&public, b"made", 0, [0; 8]).await;
    assert_eq!(st, OK);
    assert_eq!(
        s.nfs.open_files(),
        before + 1,
        "the CREATE's descriptor is kept"
    );
    assert_eq!(fds_naming(dir.join("made")), 1);
    assert_eq!(c.getattr(&made).await.0, OK);
    assert_eq!(
        fds_naming(dir.join("made")),
        1,
        "the GETATTR opened nothing"
    );
    assert_eq!(
        c.create(&public, b"made", 0, [0; 8]).await,
        (OK, made.clone())
    );
    assert_eq!(
        fds_naming(dir.join("made")),
        1,
        "a CREATE over it adds none"
    );
    assert_eq!(c.remove(&public, b"made", false).await, OK);
    assert_eq!(s.nfs.open_files(), before);
    assert_eq!(c.getattr(&made).await.0, STALE);
    // Files made locally and never looked up: the REMOVEs find nothing cached.
    for i in 0..50 {
        std::fs::write(dir.join(format!("old-{i}")), b"old").unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            c.remove(&public, format!("old-{i}").as_bytes(), false)
                .await,
            OK
        );
    }
    assert_eq!(s.nfs.open_files(), before);
    let gone = |name: &str| format!("{} (deleted)", dir.join(name).display());
    // Waited for by awaiting, not blocking: the sweep that kicks the closing thread runs
    // on this test's runtime.
    let started = Instant::now();
    while fds_naming(gone("made"))
        + (0..50)
            .map(|i| fds_naming(gone(&format!("old-{i}"))))
            .sum::<usize>()
        > 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a removed file was not let go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    s.stop().await;
}

/// A cached descriptor no call used for the cache's idle time is closed, so a file a
/// local process removed gives back its blocks; one in use stays.
#[tokio::test]
async fn unused_descriptors_are_closed_after_the_idle_time() {
    let idle = Duration::from_secs(2);
    let s = Server::start_with(|nc| nc.open_file_idle = idle).await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    let (_, root) = c.lookup(&root, b"public").await;
    let dir = s.rw.join("public");
    std::fs::write(dir.join("busy"), b"busy").unwrap();
    std::fs::write(dir.join("idle"), b"idle").unwrap();
    assert_eq!(c.getattr(&root).await.0, OK);
    let before = s.nfs.open_files();
    let (_, busy) = c.lookup(&root, b"busy").await;
    let (_, unused) = c.lookup(&root, b"idle").await;
    assert_eq!(c.getattr(&busy).await.0, OK);
    assert_eq!(c.getattr(&unused).await.0, OK);
    assert_eq!(s.nfs.open_files(), before + 2);
    // Removed by a local process: the cached descriptor holds the file.
    let gone = format!("{} (deleted)", dir.join("idle").display());
    std::fs::remove_file(dir.join("idle")).unwrap();
    assert_eq!(fds_naming(&gone), 1, "the cache holds the removed file");
    let started = Instant::now();
    while fds_naming(&gone) > 0 {
        assert!(
            started.elapsed() < idle * 2 + Duration::from_secs(3),
            "an unused descriptor stayed open"
        );
        assert_eq!(c.getattr(&busy).await.0, OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() >= idle - Duration::from_millis(1100),
        "closed after {:?}, before the idle time",
        started.elapsed()
    );
    // The directories' descriptors went as well: only the file in use stays.
    assert_eq!(s.nfs.open_files(), 1, "{before} cached before");
    assert_eq!(fds_naming(dir.join("busy")), 1);
    assert_eq!(c.getattr(&unused).await.0, STALE);
    s.stop().await;
}

/// Descriptors of this process (their entries in `/proc/self/fd`) whose link reads
/// `target`: a path, or a removed file's path followed by " (deleted)".
fn fds_on(target: impl AsRef<std::path::Path>) -> Vec<std::fs::DirEntry> {
    let target = target.as_ref();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == target))
        .collect()
}

/// How many descriptors of this process name `target` (see [`fds_on`]).
fn fds_naming(target: impl AsRef<std::path::Path>) -> usize {
    fds_on(target).len()
}

/// Descriptors of this process open for writing on `path`.
fn open_for_writing(path: &std::path::Path) -> usize {
    let writing = |e: &std::fs::DirEntry| {
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ));
        let flags = info.ok().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        });
        flags.is_some_and(|f| f & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
    };
    fds_on(path).iter().filter(|e| writing(e)).count()
}

/// UNSTABLE WRITEs of a file go through one write descriptor the server keeps while the
/// client writes, closed at the client's COMMIT or after two idle seconds; the caller's
/// permission is still checked at every WRITE, and stable WRITEs keep nothing open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstable_writes_keep_the_file_open_until_commit_or_idle() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    let (st, fh) = u.create(&public, b"stream", 0, [0; 8]).await;
    assert_eq!(st, OK);
    let path = s.rw.join("public/stream");
    assert_eq!((s.nfs.writing_files(), open_for_writing(&path)), (0, 0));
    assert_eq!(u.write(&fh, 0, b"first ", 0).await.0, OK);
    assert_eq!(u.write(&fh, 6, b"second", 0).await.0, OK);
    assert_eq!(
        (s.nfs.writing_files(), open_for_writing(&path)),
        (1, 1),
        "one descriptor kept for both WRITEs"
    );
    // Kept open for the owner, the file is still no one else's to write.
    let other = s.client(2000, 2000).await;
    assert_eq!(other.write(&fh, 0, b"x", 0).await.0, ACCES);
    assert_eq!(std::fs::read(&path).unwrap(), b"first second");
    // The owner may write a file it made read-only, as with a descriptor opened per WRITE.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    assert_eq!(u.write(&fh, 0, b"FIRST", 0).await.0, OK);
    assert_eq!(other.write(&fh, 0, b"x", 0).await.0, ACCES);
    assert_eq!(u.commit(&fh).await.stat, OK);
    assert_eq!(
        (s.nfs.writing_files(), open_for_writing(&path)),
        (0, 0),
        "COMMIT closes it"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"FIRST second");
    // A client that stops writing without a COMMIT: closed once idle.
    assert_eq!(u.write(&fh, 12, b"!", 0).await.0, OK);
    assert_eq!(open_for_writing(&path), 1);
    let deadline = Instant::now() + WRITER_IDLE * 2 + Duration::from_secs(2);
    while open_for_writing(&path) > 0 {
        assert!(
            Instant::now() < deadline,
            "an idle write descriptor stayed open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.nfs.writing_files(), 0);
    // FILE_SYNC and DATA_SYNC WRITEs keep nothing open.
    assert_eq!(u.write(&fh, 13, b"?", 2).await.0, OK);
    assert_eq!(u.write(&fh, 14, b"?", 1).await.0, OK);
    assert_eq!((s.nfs.writing_files(), open_for_writing(&path)), (0, 0));
    assert_eq!(std::fs::read(&path).unwrap(), b"FIRST second!??");
    s.stop().await;
}

/// Random and truncated arguments for every procedure: each call gets an answer or
/// GARBAGE_ARGS, never a server error (a panic), and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_panics_the_server() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (_, root) = u.mnt("/rw").await;
    let (_, public) = u.lookup(&root, b"public").await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for proc_ in 1..=21u32 {
        // A plausible prefix (a real handle and name), then random bytes.
        for round in 0..40 {
            let mut e = Encoder::new();
            if round % 2 == 0 {
                e.put_opaque(&public);
                e.put_opaque(b"fuzz");
            }
            let n = (next() % 200) as usize;
            let tail: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let mut args = e.into_inner();
            args.extend_from_slice(&tail);
            let cut = (next() as usize) % (args.len() + 1);
            for a in [&args[..], &args[..cut]] {
                match u.raw(proc_, a).await {
                    Ok(_) | Err(ClientError::GarbageArgs) => {}
                    Err(e) => panic!("procedure {proc_}: {e:?} for {a:?}"),
                }
            }
        }
    }
    assert_eq!(u.getattr(&root).await.0, OK, "still serving");
    s.stop().await;
}

/// A session that calls every NFS version 3 procedure and every MOUNT version 1 and 3
/// procedure, with successful and failed results, over TCP and UDP.
async fn every_call_once(s: &Server) {
    let c = s.client(1000, 1000).await;
    let udp = Client::new(
        Transport::Udp,
        s.nfs.nfs_udp()[0],
        s.nfs.mount_tcp()[0],
        1000,
        1000,
    )
    .await;
    let mount_udp = RpcClient::new(
        Transport::Udp,
        s.nfs.mount_udp()[0],
        ClientConfig {
            cred: sys(1000, 1000),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let path = |p: &str| {
        let mut e = Encoder::new();
        e.put_string(p);
        e.into_inner()
    };
    // MOUNT: every procedure of both versions; MNT of a known and of an unknown path.
    for (vers, m) in [(3, &c.mount), (1, &mount_udp), (1, &c.mount)] {
        for (proc_, args) in [
            (0, vec![]),
            (1, path("/rw")),
            (1, path("/nonexistent")),
            (2, vec![]),
            (5, vec![]),
            (3, path("/rw")),
            (4, vec![]),
        ] {
            timeout(STEP, m.call_raw(MOUNT, vers, proc_, &args))
                .await
                .unwrap()
                .unwrap();
        }
    }
    let (st, root) = c.mnt("/rw").await;
    assert_eq!(st, 0);
    let fh_arg = |fh: &[u8]| {
        let mut e = Encoder::new();
        e.put_opaque(fh);
        e
    };
    // NULL, GETATTR (and a stale one), the file-system queries.
    assert!(c.raw(0, &[]).await.unwrap().is_empty());
    assert_eq!(c.getattr(&root).await.0, OK);
    assert_ne!(c.getattr(&flip(&root, root.len() - 1)).await.0, OK);
    for p in [18, 19, 20] {
        assert_eq!(c.call(p, &fh_arg(&root)).await.stat, OK);
        assert_eq!(udp.call(p, &fh_arg(&root)).await.stat, OK);
    }
    // LOOKUP, ACCESS, CREATE (all three modes, and EXIST), WRITE, READ, COMMIT.
    let (st, public) = c.lookup(&root, b"public").await;
    assert_eq!(st, OK);
    assert_eq!(c.lookup(&public, b"missing").await.0, NOENT);
    c.access(&public).await;
    let (st, f) = c.create(&public, b"f", 1, [0; 8]).await;
    assert_eq!(st, OK);
    assert_eq!(c.create(&public, b"f", 1, [0; 8]).await.0, EXIST);
    assert_eq!(c.create(&public, b"f", 0, [0; 8]).await.0, OK);
    assert_eq!(c.create(&public, b"x", 2, *b"verifier").await.0, OK);
    assert_eq!(c.write(&f, 0, b"hello", 0).await.0, OK);
    assert_eq!(udp.write(&f, 5, b" world", 2).await.0, OK);
    assert_eq!(c.read(&f, 0, 100).await.0, OK);
    assert_eq!(udp.read(&f, 0, 100).await.0, OK);
    assert_eq!(c.read(&public, 0, 10).await.0, ISDIR);
    assert_eq!(c.commit(&f).await.stat, OK);
    // SETATTR: a failing guard, then a size and mode change.
    let mut e = fh_arg(&f);
    sattr_mode(&mut e, Some(0o600));
    e.put_bool(true);
    e.put_u32(1);
    e.put_u32(2);
    assert_eq!(c.call(2, &e).await.stat, NOT_SYNC);
    let mut e = fh_arg(&f);
    sattr_mode(&mut e, Some(0o640));
    e.put_bool(false);
    assert_eq!(c.call(2, &e).await.stat, OK);
    // MKDIR, SYMLINK, READLINK, MKNOD, LINK, RENAME.
    let (st, sub) = c.mkdir(&public, b"sub").await;
    assert_eq!(st, OK);
    assert_eq!(c.mkdir(&public, b"sub").await.0, EXIST);
    let mut e = dirop(&public, b"link");
    sattr_mode(&mut e, None);
    e.put_string("f");
    let a = c.call(10, &e).await;
    assert_eq!(a.stat, OK);
    let mut d = a.d();
    assert!(d.get_bool().unwrap());
    let link = d.get_opaque(64).unwrap();
    assert_eq!(c.call(5, &fh_arg(&link)).await.stat, OK);
    assert_eq!(c.call(5, &fh_arg(&f)).await.stat, INVAL);
    let mut e = dirop(&public, b"fifo");
    e.put_u32(7);
    sattr_mode(&mut e, Some(0o600));
    assert_eq!(c.call(11, &e).await.stat, OK);
    let mut e = fh_arg(&f);
    e.put_raw(dirop(&sub, b"hard").as_slice());
    assert_eq!(c.call(15, &e).await.stat, OK);
    let mut e = dirop(&public, b"fifo");
    e.put_raw(dirop(&sub, b"moved").as_slice());
    assert_eq!(c.call(14, &e).await.stat, OK);
    let mut e = dirop(&public, b"fifo");
    e.put_raw(dirop(&sub, b"again").as_slice());
    assert_eq!(c.call(14, &e).await.stat, NOENT);
    // READDIR and READDIRPLUS (several pages each), and a bad cookie.
    assert!(!c.list(&sub, false).await.is_empty());
    assert!(!c.list(&sub, true).await.is_empty());
    let mut e = fh_arg(&sub);
    e.put_u64(12345);
    e.put_fixed_opaque(&[9; 8]);
    e.put_u32(4096);
    assert_eq!(c.call(16, &e).await.stat, 10003);
    // REMOVE and RMDIR, failing and succeeding.
    assert_eq!(c.remove(&public, b"sub", true).await, NOTEMPTY);
    for name in [&b"hard"[..], b"moved"] {
        assert_eq!(c.remove(&sub, name, false).await, OK);
    }
    assert_eq!(c.remove(&public, b"sub", true).await, OK);
    assert_eq!(c.remove(&public, b"f", false).await, OK);
    assert_eq!(c.remove(&public, b"f", false).await, NOENT);
}

/// tshark, an independent decoder, dissects a captured session of every NFS version 3
/// procedure and every MOUNT version 1 and 3 procedure: each call and each reply must
/// decode as NFS or MOUNT with the procedure that was called, matched to its call, and
/// no frame may be malformed or carry an expert error (a reply with a missing or
/// misplaced field fails here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tshark_decodes_every_nfs_and_mount_packet() {
    use lockfs_testkit::capture::{dissect, tshark_present, Capture};
    if !tshark_present() {
        lockfs_testkit::skip!("tshark missing (apt-get install tshark)");
    }
    let s = Server::start().await;
    let tcp = [s.nfs.nfs_tcp()[0].port(), s.nfs.mount_tcp()[0].port()];
    let udp = [s.nfs.nfs_udp()[0].port(), s.nfs.mount_udp()[0].port()];
    let filter = tcp
        .iter()
        .map(|p| format!("tcp port {p}"))
        .chain(udp.iter().map(|p| format!("udp port {p}")))
        .collect::<Vec<_>>()
        .join(" or ");
    let pcap = s._dir.path().join("nfs.pcap");
    let cap = Capture::start("lo", &filter, &pcap).await;
    every_call_once(&s).await;
    let pcap = cap.stop().await;

    let decode: Vec<String> = tcp
        .iter()
        .map(|p| format!("tcp.port=={p},rpc"))
        .chain(udp.iter().map(|p| format!("udp.port=={p},rpc")))
        .collect();
    let fields = [
        "frame.number",
        "_ws.col.Protocol",
        "rpc.msgtyp",
        "rpc.program",
        "rpc.programversion",
        "rpc.procedure",
        "nfs.procedure_v3",
        "mount.procedure_v1",
        "mount.procedure_v3",
        "rpc.repframe",
        "_ws.malformed",
        "_ws.expert.severity",
        "_ws.expert.message",
        "data.len",
    ];
    let out = dissect(&pcap, &decode, "udp || tcp.len > 0", &fields).await;
    // (program, version, procedure, message type) seen, decoded by NFS or MOUNT.
    let mut seen = std::collections::BTreeSet::new();
    let (mut calls, mut replies) = (0, 0);
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), fields.len(), "{line}");
        let list = |i: usize| -> Vec<u32> {
            f[i].split(',')
                .filter(|v| !v.is_empty())
                .map(|v| v.parse().unwrap())
                .collect()
        };
        assert!(
            matches!(f[1], "NFS" | "MOUNT"),
            "not decoded as NFS or MOUNT: {line}\n{out}"
        );
        assert!(f[10].is_empty(), "malformed: {line:?}");
        // Bytes after the last field the dissector knows are shown as undissected data.
        assert!(
            f[13].is_empty(),
            "bytes left over after the results: {line:?}"
        );
        // Expert severity "error" is 0x00800000; notes (e.g. a status that is not OK)
        // and warnings are fine.
        assert!(
            list(11).iter().all(|sev| *sev < 0x0080_0000),
            "expert error: {line:?}"
        );
        // The session's calls wait for their replies: one RPC message a frame. RPC and
        // the program's dissector each give the version.
        let (types, progs, vers, procs) = (list(2), list(3), list(4), list(5));
        assert!(
            types.len() == 1 && progs.len() == 1 && procs.len() == 1 && !vers.is_empty(),
            "one RPC message: {line:?}"
        );
        let key = (progs[0], vers[0], procs[0], types[0]);
        // The procedure as NFS or MOUNT decoded it is the one RPC says.
        let own = match (key.0, key.1) {
            (NFS, 3) => list(6),
            (MOUNT, 1) => list(7),
            (MOUNT, 3) => list(8),
            other => panic!("unexpected program {other:?}: {line:?}"),
        };
        assert_eq!(own, [key.2], "{key:?} decoded as {own:?}: {line:?}");
        if key.3 == 1 {
            replies += 1;
            assert!(
                !f[9].is_empty(),
                "a reply not matched to its call: {line:?}\n{out}"
            );
        } else {
            calls += 1;
        }
        seen.insert(key);
    }
    assert_eq!(calls, replies, "every call answered:\n{out}");
    let mut want = std::collections::BTreeSet::new();
    for t in [0, 1] {
        for p in 0..=21 {
            want.insert((NFS, 3, p, t));
        }
        for v in [1, 3] {
            for p in 0..=5 {
                want.insert((MOUNT, v, p, t));
            }
        }
    }
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "not seen: {missing:?}\n{out}");
    s.stop().await;
}

/// MNT of MOUNT version 1 (RFC 1094 `fhstatus`: a fixed 32-byte handle).
async fn mnt_v1(m: &RpcClient, path: &str) -> (u32, Option<[u8; 32]>) {
    let mut e = Encoder::new();
    e.put_string(path);
    let body = timeout(STEP, m.call_raw(MOUNT, 1, 1, e.as_slice()))
        .await
        .unwrap()
        .unwrap();
    let mut d = Decoder::new(&body);
    let stat = d.get_u32().unwrap();
    let fh = (stat == 0).then(|| d.get_fixed_array::<32>().unwrap());
    assert_eq!(d.remaining(), 0, "nothing after the fhstatus");
    (stat, fh)
}

/// MOUNT version 1 MNT succeeds like version 3 with the root handle zero-padded to 32
/// bytes (the export is on ext4, whose handles fit), and that padded handle names the
/// export root for NFS and for NLM version 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_v1_mnt_answers_the_root_handle_padded_to_32_bytes() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let (st, v3) = u.mnt("/rw").await;
    assert_eq!(st, 0);
    let (st, v1) = mnt_v1(&u.mount, "/rw").await;
    assert_eq!(st, 0, "version 1 MNT succeeds");
    let v1 = v1.unwrap();
    assert!(
        v3.len() <= 32,
        "an ext4 root handle fits ({} bytes)",
        v3.len()
    );
    assert_eq!(&v1[..v3.len()], &v3[..]);
    assert!(v1[v3.len()..].iter().all(|b| *b == 0), "zero padding");
    assert_eq!(mnt_v1(&u.mount, "/nonexistent").await.0, NOENT);
    let closed = s.rw.parent().unwrap().join("closed");
    assert_eq!(mnt_v1(&u.mount, closed.to_str().unwrap()).await.0, ACCES);
    // The padded handle is the root.
    let (st, attr) = u.getattr(&v1).await;
    assert_eq!(st, OK);
    assert_eq!(attr.unwrap().4, std::fs::metadata(&s.rw).unwrap().ino());
    // NLM version 3 (the lock protocol of NFS version 2 clients) locks with it.
    let nlm = RpcClient::new(
        Transport::Tcp,
        s.lockd.tcp_addrs()[0],
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let mut e = Encoder::new();
    e.put_opaque(b"c1"); // cookie
    e.put_bool(true); // exclusive
    e.put_string("v1-client");
    e.put_opaque(&v1);
    e.put_opaque(b"owner");
    e.put_i32(7);
    e.put_u32(0);
    e.put_u32(10);
    let body = timeout(STEP, nlm.call_raw(100_021, 3, 1, e.as_slice()))
        .await
        .unwrap()
        .unwrap();
    let mut d = Decoder::new(&body);
    assert_eq!(d.get_opaque(1024).unwrap(), b"c1");
    assert_eq!(
        d.get_u32().unwrap(),
        0,
        "NLM TEST with the padded handle: granted"
    );
    let mut bad = v1;
    bad[31] = 1;
    assert_eq!(u.getattr(&bad).await.0, BADHANDLE, "other padding is not");
    s.stop().await;
}

/// An export whose root handle is longer than 32 bytes (tmpfs) cannot be carried by
/// MOUNT version 1: MNT answers EACCES, and version 3 still mounts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_v1_mnt_of_a_long_handle_is_refused() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        lockfs_testkit::skip!("no /dev/shm (a tmpfs, whose handles exceed 32 bytes)");
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = tempfile::tempdir_in(shm).unwrap();
    let mut config = LockdConfig::new("nfs-v1", dir.path().join("state"));
    config.exports = vec![Export::new(9, tmpfs.path())];
    config.grace = Duration::ZERO;
    config.portmap = PortmapMode::Off;
    let (sink, queue) = EventSink::new();
    let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
    let shares = Arc::new(Mutex::new(ShareTable::new()));
    let lockd = timeout(STEP, LockdService::start(config, table, shares, queue))
        .await
        .unwrap()
        .unwrap();
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let nfs = timeout(
        STEP,
        NfsService::start(
            NfsConfig::new(vec![lo], vec![lo]),
            lockd.lockd().clone(),
            None,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let u = Client::new(Transport::Tcp, nfs.nfs_tcp()[0], nfs.mount_tcp()[0], 0, 0).await;
    let path = tmpfs.path().to_str().unwrap();
    let (st, fh) = u.mnt(path).await;
    assert_eq!(st, 0);
    if fh.len() <= 32 {
        lockfs_testkit::skipping!("tmpfs handles fit 32 bytes here ({})", fh.len());
    } else {
        assert_eq!(mnt_v1(&u.mount, path).await, (ACCES, None));
    }
    nfs.shutdown().await;
    lockd.shutdown().await;
}

/// `sattr3` that sets only the size.
fn sattr_size(e: &mut Encoder, size: u64) {
    for _ in 0..3 {
        e.put_bool(false);
    }
    e.put_bool(true);
    e.put_u64(size);
    e.put_u32(0);
    e.put_u32(0);
}

/// CREATE in UNCHECKED mode with a size over an existing file truncates it: that passes
/// the I/O gate exactly as a size-changing SETATTR does. Another owner's lock on a
/// mandatory file refuses both with the same status and leaves the file whole, and so
/// does another owner's deny-write reservation on any file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_unchecked_truncation_is_gated_like_setattr() {
    let s = Server::start().await;
    let u = s.client(1000, 1000).await;
    let LocalLock {
        public,
        path,
        file,
        fh,
        local,
        req: _,
    } = mandatory_file_locked_locally(&s, &u).await;
    let truncate = || {
        let mut e = Encoder::new();
        e.put_opaque(&fh);
        sattr_size(&mut e, 0);
        e.put_bool(false);
        e
    };
    let create = |name: &[u8]| {
        let mut e = dirop(&public, name);
        e.put_u32(0);
        sattr_size(&mut e, 0);
        e
    };
    let setattr = u.call(2, &truncate()).await.stat;
    assert_eq!(setattr, JUKEBOX, "SETATTR to size 0 under a lock");
    let a = u.call(8, &create(b"m")).await;
    assert_eq!(
        a.stat, setattr,
        "CREATE UNCHECKED size 0 answers as SETATTR does"
    );
    let (pre, post) = skip_wcc(&mut a.d());
    assert!(pre && post.is_some(), "dir wcc on failure");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"0123456789",
        "not truncated"
    );
    s.table.with(|t| t.unlock(file, local, Range::to_eof(0)));
    assert_eq!(u.call(8, &create(b"m")).await.stat, OK, "after the unlock");
    assert_eq!(std::fs::read(&path).unwrap(), b"", "truncated");

    // A deny-write reservation of another owner, on a file without the mandatory mark.
    let plain = s.rw.join("public/plain");
    std::fs::write(&plain, b"abc").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o666)).unwrap();
    let pm = std::fs::metadata(&plain).unwrap();
    let pfile = FileId::new(pm.dev(), pm.ino());
    s.shares
        .lock()
        .unwrap()
        .reserve(&ShareRequest {
            file: pfile,
            scope: ScopeId::DEFAULT,
            owner: Owner::ofd(99),
            pid: 1,
            mode: ShareMode::new(ShareAccess::READ, ShareDeny::WRITE),
        })
        .unwrap();
    assert_eq!(u.call(8, &create(b"plain")).await.stat, ACCES);
    assert_eq!(std::fs::read(&plain).unwrap(), b"abc", "not truncated");
    // Without a size, CREATE UNCHECKED of an existing file changes nothing and succeeds.
    let mut e = dirop(&public, b"plain");
    e.put_u32(0);
    sattr_mode(&mut e, None);
    assert_eq!(u.call(8, &e).await.stat, OK);
    s.shares.lock().unwrap().release(pfile, Owner::ofd(99));
    assert_eq!(u.call(8, &create(b"plain")).await.stat, OK);
    assert_eq!(std::fs::read(&plain).unwrap(), b"");
    s.stop().await;
}

/// The read-only procedures run on the server's own task, on the runtime's thread: each
/// still runs as its caller (a non-owner is refused where the owner is not, with the
/// owner's and the stranger's calls interleaved), and the thread gets the daemon's
/// identity back after each. The runtime here has one thread, the test's own, so a
/// file the test writes after the calls shows which identity that thread was left with.
#[tokio::test(flavor = "current_thread")]
async fn inline_procedures_run_as_the_caller_and_give_the_identity_back() {
    let s = Server::start().await;
    let owner = s.client(3000, 3000).await;
    let other = s.client(3001, 3001).await;
    let (_, root) = owner.mnt("/rw").await;
    let (_, public) = owner.lookup(&root, b"public").await;
    let private = s.rw.join("public/private");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("f"), b"secret").unwrap();
    std::fs::write(s.rw.join("public/mine"), b"mine").unwrap();
    for p in [&private, &private.join("f")] {
        std::os::unix::fs::chown(p, Some(3000), Some(3000)).unwrap();
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(s.rw.join("public/mine"), Some(3000), Some(3000)).unwrap();
    std::fs::set_permissions(
        s.rw.join("public/mine"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (st, dir) = owner.lookup(&public, b"private").await;
    assert_eq!(st, OK);
    let (_, mine) = owner.lookup(&public, b"mine").await;
    for _ in 0..3 {
        // LOOKUP needs search permission on the directory: the owner's only.
        assert_eq!(other.lookup(&dir, b"f").await.0, ACCES);
        // "." and ".." too, though the server answers "." without opening a name.
        assert_eq!(other.lookup(&dir, b".").await.0, ACCES);
        assert_eq!(other.lookup(&dir, b"..").await.0, ACCES);
        assert_eq!(owner.lookup(&dir, b".").await.0, OK);
        assert_eq!(owner.lookup(&dir, b"..").await.0, OK);
        let (st, f) = owner.lookup(&dir, b"f").await;
        assert_eq!(st, OK);
        // A small READ runs inline too: the owner reads a 0600 file, the stranger not.
        assert_eq!(owner.read(&f, 0, 64).await.1, b"secret");
        assert_eq!(other.read(&mine, 0, 64).await.0, ACCES);
        assert_eq!(owner.read(&mine, 0, 64).await.1, b"mine");
        // ACCESS answers what each may do.
        assert_eq!(owner.access(&mine).await & 0x0d, 0x0d);
        assert_eq!(other.access(&mine).await & 0x0d, 0);
    }
    // This thread served every call above and is the daemon again: what it creates is
    // root's, and it may create where only root may.
    let probe = s.rw.join("probe");
    std::fs::write(&probe, b"p").unwrap();
    let m = std::fs::metadata(&probe).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    s.stop().await;
}

#[tokio::test]
async fn a_read_of_data_not_in_memory_is_read_where_it_may_wait() {
    use std::os::fd::AsRawFd;
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    let data = noise(1 << 20, 0);
    let path = s.rw.join("cold");
    std::fs::write(&path, &data).unwrap();
    let (st, fh) = c.lookup(&root, b"cold").await;
    assert_eq!(st, OK);
    // Cached: answered where it was decoded, its data sent from the page cache.
    assert_eq!(c.read(&fh, 0, 1 << 20).await.1, data);
    assert_eq!(s.nfs.handed_on(), 0, "a cached READ went to the pool");
    assert_eq!(s.nfs.sent_from_file(), 1, "a cached 1 MiB READ was copied");
    // Up to the end, a length that needs padding.
    let at = (1 << 20) - 65_539;
    let (st, got, eof) = c.read(&fh, at as u64, 1 << 20).await;
    assert_eq!((st, eof), (OK, true));
    assert!(got == data[at..], "the bytes sent from the file differ");
    assert_eq!(s.nfs.sent_from_file(), 2);
    // A small READ is copied: two copies of a few pages cost less than the calls.
    assert_eq!(c.read(&fh, 8, 4096).await.1, data[8..8 + 4096]);
    assert_eq!(s.nfs.sent_from_file(), 2);
    // Written back and dropped from the page cache: the READ may not wait on the
    // connection's thread, is read on the pool instead, and gets the same bytes. The
    // read from memory starts readahead, and a fast disk can finish it before the
    // kernel looks again; so the drop is repeated until a READ did find its data
    // missing, and every READ's bytes are checked on the way.
    let f = std::fs::File::open(&path).unwrap();
    f.sync_all().unwrap();
    let mut tries = 0;
    while s.nfs.handed_on() == 0 && tries < 50 {
        // SAFETY: plain system call on a descriptor this test owns.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
        let at = 4096 * (1 + tries % 64);
        let (st, got, eof) = c.read(&fh, at as u64, 300_000).await;
        assert_eq!((st, eof), (OK, false));
        assert!(
            got == data[at..at + 300_000],
            "bytes read after a drop differ"
        );
        tries += 1;
    }
    assert!(
        s.nfs.handed_on() >= 1,
        "no READ of dropped data was handed to the pool in {tries} tries"
    );
    // Past the end of the file: end of file, no data, from memory or not.
    let (st, got, eof) = c.read(&fh, (1 << 20) + 10, 4096).await;
    assert_eq!((st, got.len(), eof), (OK, 0, true));
    s.stop().await;
}

/// Large READ replies of one client are sent from the connection's own thread; while
/// several clients read at once, from the blocking pool, so that both CPUs send. Either
/// way each client gets its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_readers_are_sent_to_from_the_pool_and_get_their_own_bytes() {
    let s = Server::start().await;
    let (a, b) = (s.client(0, 0).await, s.client(0, 0).await);
    let (_, root) = a.mnt("/rw").await;
    let (da, db) = (noise(1 << 20, 1), noise(1 << 20, 2));
    std::fs::write(s.rw.join("a"), &da).unwrap();
    std::fs::write(s.rw.join("b"), &db).unwrap();
    let (_, fa) = a.lookup(&root, b"a").await;
    let (_, fb) = b.lookup(&root, b"b").await;
    for _ in 0..5 {
        assert!(a.read(&fa, 0, 1 << 20).await.1 == da);
    }
    assert_eq!(s.nfs.sent_from_file(), 5);
    assert_eq!(
        s.nfs.sent_from_pool(),
        0,
        "one reader was sent to from the pool"
    );
    for i in 0..40u64 {
        let at = i * 4096;
        let ((sa, ga, _), (sb, gb, _)) =
            tokio::join!(a.read(&fa, at, 1 << 19), b.read(&fb, at, 1 << 19));
        assert_eq!((sa, sb), (OK, OK));
        let at = at as usize;
        assert!(ga == da[at..at + (1 << 19)], "client a got other bytes");
        assert!(gb == db[at..at + (1 << 19)], "client b got other bytes");
    }
    assert_eq!(s.nfs.sent_from_file(), 85);
    assert!(
        s.nfs.sent_from_pool() > 0,
        "two clients reading at once were never sent to from the pool"
    );
    s.stop().await;
}

/// A large READ reply sent from the pool that the socket cannot take at once (its client
/// reads slowly) is finished by the connection from where the pool thread stopped: the
/// client gets every byte, in order, reply after reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_reply_the_socket_cannot_take_at_once_is_finished_in_order() {
    let s = Server::start().await;
    let busy = s.client(0, 0).await;
    let (_, root) = busy.mnt("/rw").await;
    let data = noise(2 << 20, 0);
    std::fs::write(s.rw.join("slow"), &data).unwrap();
    std::fs::write(s.rw.join("busy"), &data[..1 << 20]).unwrap();
    let (_, slow) = busy.lookup(&root, b"slow").await;
    let (_, fb) = busy.lookup(&root, b"busy").await;
    // Another client reads all along, so the slow client's replies go out from the pool.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, data) = (stop.clone(), data.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(busy.read(&fb, 0, 1 << 20).await.1 == data[..1 << 20]);
            }
        })
    };
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut sock = sock.connect(s.nfs.nfs_tcp()[0]).await.unwrap();
    let offsets: Vec<u64> = (0..8).map(|i| i * 65_536 + 12).collect();
    for (xid, at) in offsets.iter().enumerate() {
        let mut args = Encoder::new();
        args.put_opaque(&slow);
        args.put_u64(*at);
        args.put_u32(1 << 20);
        send_call(&mut sock, xid as u32, 6, sys(0, 0), &args).await;
    }
    // Nothing is read for a while: the server's sends find the socket full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (xid, at) in offsets.iter().enumerate() {
        let body = recv_reply(&mut sock).await;
        let mut d = Decoder::new(&body);
        let h = ReplyHeader::decode(&mut d).unwrap();
        assert_eq!(h.xid, xid as u32);
        assert_eq!(d.get_u32().unwrap(), OK);
        assert!(skip_post_attr(&mut d).is_some());
        let n = d.get_u32().unwrap() as usize;
        let _eof = d.get_bool().unwrap();
        let got = d.get_opaque(1 << 21).unwrap();
        let at = *at as usize;
        assert_eq!(n, 1 << 20);
        assert!(got == data[at..at + n], "reply {xid} has other bytes");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    timeout(STEP, reader).await.unwrap().unwrap();
    assert!(s.nfs.sent_from_pool() > 0, "nothing was sent from the pool");
    s.stop().await;
}

/// A LOOKUP answers the file a name names now, even while the server holds the file it
/// named before open (its handle was resolved): after the name is moved onto another
/// file, the handle and the attributes are both of the new file, and the old file's
/// handle is stale once its last link is gone. A file system mounted inside the export is not
/// handed out, on the first LOOKUP of its mount point or on a later one.
#[tokio::test]
async fn a_lookup_answers_what_the_name_names_now() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    std::fs::write(s.rw.join("name"), b"first").unwrap();
    std::fs::write(s.rw.join("other"), b"second file").unwrap();
    let (st, first) = c.lookup(&root, b"name").await;
    assert_eq!(st, OK);
    assert_eq!(
        c.lookup(&root, b"name").await.1,
        first,
        "handles are stable"
    );
    let old_ino = std::fs::metadata(s.rw.join("name")).unwrap().ino();
    assert_eq!(c.getattr(&first).await.1.unwrap().4, old_ino);
    std::fs::rename(s.rw.join("other"), s.rw.join("name")).unwrap();
    let new_ino = std::fs::metadata(s.rw.join("name")).unwrap().ino();
    let (st, second) = c.lookup(&root, b"name").await;
    assert_eq!(st, OK);
    assert_ne!(
        second, first,
        "the moved name still gets the old file's handle"
    );
    let attr = c.getattr(&second).await.1.unwrap();
    assert_eq!((attr.3, attr.4), (11, new_ino));
    assert_eq!(c.getattr(&first).await.0, STALE);
    // Removed by a local process: the name is gone for LOOKUP too.
    std::fs::remove_file(s.rw.join("name")).unwrap();
    assert_eq!(c.lookup(&root, b"name").await.0, NOENT);

    // SAFETY: reading our own id.
    if unsafe { libc::geteuid() } != 0 {
        lockfs_testkit::skip!("mounting inside the export needs root");
    }
    let inner = s.rw.join("inner");
    std::fs::create_dir(&inner).unwrap();
    let dir_ino = std::fs::metadata(&inner).unwrap().ino();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "lockfs-test",
            inner.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mount of a tmpfs inside the export failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .args(["-l", self.0.to_str().unwrap()])
                .status();
        }
    }
    let _unmount = Unmount(inner.clone());
    assert_ne!(std::fs::metadata(&inner).unwrap().ino(), dir_ino);
    for _ in 0..2 {
        let (st, fh) = c.lookup(&root, b"inner").await;
        assert_eq!(
            st, ACCES,
            "a file system mounted inside the export was handed out"
        );
        assert!(fh.is_empty());
    }
    drop(_unmount);
    s.stop().await;
}

/// Page-cache state of a whole file by `cachestat(2)`: (dirty pages, pages under
/// writeback), or `None` where the kernel has no such call (before Linux 6.5).
fn dirty_pages(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = [0u64, 0u64]; // from offset 0 to the end of the file
    let mut out = [0u64; 5]; // cache, dirty, writeback, evicted, recently evicted
                             // SAFETY: both pointers name arrays of the layout the system call reads and writes.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            range.as_ptr(),
            out.as_mut_ptr(),
            0,
        )
    };
    (r == 0).then_some((out[1], out[2]))
}

/// UNSTABLE WRITEs start the writeback of each 8 MiB chunk they complete, once answered,
/// so that a COMMIT finds the disk already at work: the chunk's pages are clean within
/// seconds, long before the kernel's own writeback would take pages that young
/// (`vm.dirty_expire_centisecs`, 30 s by default).
#[tokio::test]
async fn a_large_unstable_write_starts_its_way_to_the_disk() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    let (_, public) = c.lookup(&root, b"public").await;
    let (st, fh) = c.create(&public, b"big", 1, [0; 8]).await;
    assert_eq!(st, OK);
    let path = s.rw.join("public/big");
    let probe = std::fs::File::open(&path).unwrap();
    if dirty_pages(&probe).is_none() {
        lockfs_testkit::skip!("no cachestat(2) in this kernel to see dirty pages with");
    }
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    for (i, part) in data.chunks(1 << 20).enumerate() {
        let (st, n, _) = c.write(&fh, (i as u64) << 20, part, 0).await;
        assert_eq!((st, n), (OK, 1 << 20));
    }
    lockfs_testkit::eventually(
        Duration::from_secs(5),
        "the pages of 8 MiB of UNSTABLE WRITEs to be written back",
        || (dirty_pages(&probe) == Some((0, 0))).then_some(()),
    );
    assert_eq!(std::fs::read(&path).unwrap(), data);
    s.stop().await;
}

/// REMOVE, RMDIR and CREATE run where they were decoded, a REMOVE of the last name of a
/// file with data too (it holds the file while the name goes, and the closing thread
/// frees it: that close may wait for pages the disk is writing), except an UNCHECKED
/// CREATE that sets a size (it may truncate a file): that is handed to the blocking
/// pool, and does the same there.
#[tokio::test]
async fn a_change_that_may_wait_is_made_where_it_may_wait() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    // Root is squashed: the changes are made in the directory anyone may write.
    let (_, root) = c.lookup(&root, b"public").await;
    let rw = s.rw.join("public");
    std::fs::write(rw.join("small"), b"x").unwrap();
    assert_eq!(c.remove(&root, b"small", false).await, OK);
    assert_eq!(c.create(&root, b"new", 0, [0; 8]).await.0, OK);
    assert_eq!(c.mkdir(&root, b"d").await.0, OK);
    assert_eq!(c.remove(&root, b"d", true).await, OK);
    assert_eq!(
        s.nfs.handed_on(),
        0,
        "a change that frees no data was handed on"
    );
    assert!(!rw.join("small").exists() && rw.join("new").exists());

    let big = vec![7u8; 2 << 20];
    let write_synced = |name: &str| {
        let p = rw.join(name);
        std::fs::write(&p, &big).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        p
    };
    // Another name keeps the data: removed at once.
    let kept = write_synced("kept");
    std::fs::hard_link(&kept, rw.join("kept2")).unwrap();
    assert_eq!(c.remove(&root, b"kept", false).await, OK);
    assert_eq!(
        s.nfs.handed_on(),
        0,
        "a REMOVE that frees no data was handed on"
    );
    assert_eq!(std::fs::read(rw.join("kept2")).unwrap().len(), 2 << 20);
    // The last name of 2 MiB, and of 2 MiB still to be written: removed at once, and
    // the files are closed, so freed, by the closing thread soon after.
    let last = write_synced("last");
    std::fs::write(rw.join("dirty"), &big).unwrap();
    std::fs::set_permissions(rw.join("dirty"), std::fs::Permissions::from_mode(0o666)).unwrap();
    for name in ["last", "dirty"] {
        assert_eq!(c.remove(&root, name.as_bytes(), false).await, OK);
        let gone = format!("{} (deleted)", rw.join(name).display());
        let started = Instant::now();
        while fds_naming(&gone) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} not freed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(s.nfs.handed_on(), 0, "a REMOVE was handed on");
    assert!(!last.exists() && !rw.join("dirty").exists());
    // UNCHECKED with a size over an existing file: handed on, and truncates there.
    let mut e = dirop(&root, b"kept2");
    e.put_u32(0);
    sattr_size(&mut e, 5);
    assert_eq!(c.call(8, &e).await.stat, OK);
    assert_eq!(
        s.nfs.handed_on(),
        1,
        "the truncating CREATE was not handed on"
    );
    assert_eq!(std::fs::metadata(rw.join("kept2")).unwrap().len(), 5);
    s.stop().await;
}

/// A sink whose invalidations wait until the test opens its gate, and that records what
/// it was told.
#[derive(Default)]
struct GatedSink {
    told: Mutex<Vec<(String, Was)>>,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    made: Arc<std::sync::atomic::AtomicUsize>,
}

impl GatedSink {
    fn note(&self, what: String, was: Was, out: &mut Vec<Invalidation>) {
        self.told.lock().unwrap().push((what, was));
        let (gate, made) = (self.gate.clone(), self.made.clone());
        out.push(Box::new(move || {
            let (open, cv) = &*gate;
            let g = open.lock().unwrap();
            let _ = cv.wait_timeout_while(g, STEP, |open| !*open).unwrap();
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }

    fn open(&self) {
        let (open, cv) = &*self.gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

impl ChangeSink for GatedSink {
    fn file_changed(&self, dev: u64, ino: u64, out: &mut Vec<Invalidation>) {
        self.note(format!("file {dev}:{ino}"), Was::Unknown, out);
    }

    fn entry_changed(&self, _: u64, _: u64, name: &[u8], was: Was, out: &mut Vec<Invalidation>) {
        self.note(String::from_utf8_lossy(name).into_owned(), was, out);
    }
}

/// A change made where it was decoded is answered only once the other doors' caches it
/// made stale are told; and while telling them waits (a local process may hold the
/// directory's lock), every other client's calls are still answered on the same thread.
/// The sink is told what each name named before: nothing for a new name, the removed
/// file for a REMOVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_answered_after_its_invalidation_which_holds_up_no_one_else() {
    let sink = Arc::new(GatedSink::default());
    let s = Server::start_with(|nc| nc.changes = Some(Changes(sink.clone()))).await;
    let a = s.client(0, 0).await;
    let b = s.client(0, 0).await;
    let (_, root) = a.mnt("/rw").await;
    // Root is squashed: the changes are made in the directory anyone may write.
    let (_, root) = a.lookup(&root, b"public").await;
    std::fs::write(s.rw.join("public/seen"), b"s").unwrap();
    let dir = root.clone();
    let create = tokio::spawn(async move { a.create(&dir, b"x", 0, [0; 8]).await });
    for _ in 0..20 {
        assert_eq!(b.getattr(&root).await.0, OK);
        assert_eq!(b.lookup(&root, b"seen").await.0, OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !create.is_finished(),
        "the CREATE was answered before its invalidation was made"
    );
    assert_eq!(
        sink.made.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the gate is shut"
    );
    sink.open();
    let (st, _) = timeout(STEP, create).await.unwrap().unwrap();
    assert_eq!(st, OK);
    assert_eq!(sink.made.load(std::sync::atomic::Ordering::SeqCst), 1);
    let m = std::fs::metadata(s.rw.join("public/x")).unwrap();
    assert_eq!(b.remove(&root, b"x", false).await, OK);
    assert_eq!(
        *sink.told.lock().unwrap(),
        [
            ("x".to_string(), Was::Free),
            ("x".to_string(), Was::File(m.dev(), m.ino()))
        ]
    );
    s.stop().await;
}

/// A WRITE's data goes to the blocking pool in the record it came in: a record the
/// connection's reader would not keep (over 64 KiB) is given up to it whole, not copied;
/// a smaller one is copied, and the reader keeps its buffer. Every byte lands in place
/// either way.
#[tokio::test]
async fn a_large_write_is_handed_on_in_its_own_record() {
    let s = Server::start().await;
    let c = s.client(0, 0).await;
    let (_, root) = c.mnt("/rw").await;
    let (_, public) = c.lookup(&root, b"public").await;
    let (st, fh) = c.create(&public, b"shared", 1, [0; 8]).await;
    assert_eq!(st, OK);
    let data = noise(3 << 20, 0);
    let copied = s.nfs.args_copied();
    for (i, part) in data[..2 << 20].chunks(1 << 20).enumerate() {
        let (st, n, _) = c.write(&fh, (i as u64) << 20, part, 0).await;
        assert_eq!((st, n), (OK, 1 << 20));
    }
    assert_eq!(
        s.nfs.args_copied(),
        copied,
        "a 1 MiB WRITE's data was copied"
    );
    // The last MiB in small WRITEs, out of order: copied, each one.
    let small: Vec<(usize, &[u8])> = data[2 << 20..].chunks(32 << 10).enumerate().rev().collect();
    for (i, part) in &small {
        let (st, n, _) = c
            .write(&fh, (2 << 20) + (i * (32 << 10)) as u64, part, 0)
            .await;
        assert_eq!((st, n), (OK, part.len() as u32));
    }
    assert_eq!(s.nfs.args_copied(), copied + small.len() as u64);
    assert!(
        std::fs::read(s.rw.join("public/shared")).unwrap() == data,
        "the file holds every byte where it was written"
    );
    s.stop().await;
}
