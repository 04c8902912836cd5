//! The NFS benchmark's driver (`scripts/nfs-bench.c`, an independent libnfs client)
//! against the real `lockfs serve`, about one second per row: every row of the benchmark
//! (sequential 1 MiB READ and WRITE, 4 KiB random READ, GETATTR, LOOKUP, CREATE+REMOVE,
//! LOOKUP of many distinct names) with 1 and 16 clients must complete operations and move
//! data with no failed call, and leave the export as the calls say (the written files hold
//! the written bytes, every created name is removed again). Not a speed test: speed targets
//! are checked by `scripts/bench-nfs.sh`.
//!
//! Needs root, /dev/fuse, a C compiler and libnfs's headers; starts a daemon that may start
//! its own portmapper, so it runs inside a private network namespace (the project's test
//! script does that) and in the rpc test group.

use lockfs_testkit::daemon::{Daemon, Spawn};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const FILE_MIB: u64 = 2;
const MANY: usize = 3000;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        lockfs_testkit::skipping!("the NFS benchmark test needs root and /dev/fuse (root={root})");
        return false;
    }
    if !Path::new("/usr/include/nfsc/libnfs-raw-nfs.h").exists() {
        lockfs_testkit::skipping!(
            "the NFS benchmark test needs libnfs-dev (scripts/setup.sh installs it)"
        );
        return false;
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn build_driver(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nfs-bench.c");
    let out = dir.join("nfs-bench");
    let st = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-lnfs")
        .status()
        .expect("running cc");
    assert!(st.success(), "the driver compiles");
    out
}

fn start_daemon(d: &Path, nfs_port: u16, mount_port: u16) -> Daemon {
    let cfg = format!(
        "state_dir = {state:?}\nadmin_socket = {sock:?}\ngrace_period = 0\n\
         [listen]\naddresses = [\"127.0.0.1\"]\nnfs_port = {nfs_port}\nmount_port = {mount_port}\n\
         [[export]]\nname = \"bench\"\nsource = {src:?}\nmountpoint = {mnt:?}\nno_root_squash = true\n",
        state = d.join("state"),
        sock = d.join("admin.sock"),
        src = d.join("export"),
        mnt = d.join("mnt"),
    );
    std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
    let daemon = Spawn::serve(LOCKFS, &d.join("lockfs.toml"), "warn")
        .unmounts(&d.join("mnt"))
        .start_serve(Duration::from_secs(30));
    assert!(daemon.logged_at_start("NFS v3 on"), "the daemon serves NFS");
    daemon
}

/// One driver run; returns its result line's fields.
fn drive(driver: &Path, ports: (u16, u16), export: &Path, args: &[&str]) -> Vec<String> {
    let mut child = Command::new(driver)
        .args(["--server", "127.0.0.1", "--label", "lockfs", "--file-mib"])
        .arg(FILE_MIB.to_string())
        .arg("--nfs-port")
        .arg(ports.0.to_string())
        .arg("--mount-port")
        .arg(ports.1.to_string())
        .arg("--export")
        .arg(export)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the driver");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("driver {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    eprintln!("{args:?}: {out}");
    assert!(status.success(), "driver {args:?} failed: {out}");
    out.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn every_benchmark_row_does_operations_without_errors() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["export", "export/many", "mnt", "state"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let src = d.join("export");
    let pattern: Vec<u8> = (0..FILE_MIB << 20).map(|i| (i % 251) as u8).collect();
    for i in 0..16 {
        std::fs::write(src.join(format!("bench-{i}")), &pattern).unwrap();
    }
    for i in 0..MANY {
        std::fs::write(src.join(format!("many/f{i}")), b"").unwrap();
    }
    let driver = build_driver(d);
    let ports = (free_port(), free_port());
    let _daemon = start_daemon(d, ports.0, ports.1);

    let rows: [&[&str]; 6] = [
        &["--mode", "read", "--io-size", "1048576"],
        &["--mode", "write", "--io-size", "1048576"],
        &["--mode", "randread", "--io-size", "4096"],
        &["--mode", "getattr"],
        &["--mode", "lookup"],
        &["--mode", "create"],
    ];
    for row in rows {
        for clients in ["1", "16"] {
            let mut args = row.to_vec();
            args.extend(["--clients", clients, "--seconds", "1"]);
            let f = drive(&driver, ports, &src, &args);
            // label mode clients ops seconds ops_per_s MiB_per_s p50_us p99_us errors
            assert_eq!(f.len(), 10, "one result line: {f:?}");
            assert_eq!(f[2], clients);
            let ops: u64 = f[3].parse().unwrap();
            let mib: f64 = f[6].parse().unwrap();
            assert!(ops > 0, "{row:?} with {clients} clients did operations");
            assert_eq!(f[9], "0", "{row:?} with {clients} clients: no failed call");
            if matches!(f[1].as_str(), "read" | "write" | "randread") {
                assert!(mib > 0.0, "{row:?} with {clients} clients moved data");
            }
        }
    }
    // What the calls did is on the backing directory: each written file holds
    // the driver's bytes, and no created name is left behind.
    let written = std::fs::read(src.join("bench-w-15")).unwrap();
    assert!(!written.is_empty(), "the 16th client's writes landed");
    assert!(written
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % (1 << 20)).wrapping_mul(7).wrapping_add(1) as u8));
    let left: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cr-"))
        .collect();
    assert!(
        left.is_empty(),
        "every CREATE was followed by its REMOVE: {} left",
        left.len()
    );

    let count = MANY.to_string();
    let f = drive(
        &driver,
        ports,
        &src,
        &[
            "--mode",
            "lookupmany",
            "--count",
            &count,
            "--clients",
            "16",
            "--seconds",
            "60",
        ],
    );
    assert_eq!(f[3], count, "every distinct name was looked up");
    assert_eq!(f[9], "0");
}
