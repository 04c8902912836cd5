//! The Debian package end to end: scripts/build-deb.sh packages this build
//! of lockfs, lintian finds no errors in it, `dpkg -i` installs it on this
//! machine, the installed binary, manual pages, systemd unit and mount helper
//! work from their installed places, `dpkg -r` leaves nothing behind but
//! the conffile and `dpkg --purge` removes that too.
//!
//! It installs a package system-wide, so it needs root and dpkg, and it
//! refuses to run (loudly) where a lockfs package or any file it would
//! install is already present: it never replaces what an administrator put
//! there. A guard purges the package and unmounts whatever happens.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const CONFFILE: &str = "/etc/lockfs/lockfs.toml";
/// Every path the package installs a file at (the OCF agent only when the
/// repository has one).
const INSTALLED: &[&str] = &[
    "/usr/sbin/lockfs",
    "/sbin/mount.fuse.lockfs",
    "/lib/systemd/system/lockfs.service",
    CONFFILE,
    "/usr/include/lockfs.h",
    "/usr/share/bash-completion/completions/lockfs",
    "/usr/share/man/man8/lockfs.8.gz",
    "/usr/share/man/man5/lockfs.toml.5.gz",
    "/usr/share/doc/lockfs/copyright",
    "/usr/share/doc/lockfs/changelog.gz",
];

fn skip(msg: &str) {
    lockfs_testkit::skipping!("package test: {msg}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Runs `argv` under timeout(1), so nothing it does can hang the test.
fn run(secs: u32, argv: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", &secs.to_string()]).args(argv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
}

fn ok(secs: u32, argv: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(secs, argv, env);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn known_to_dpkg() -> bool {
    run(30, &["dpkg-query", "-W", "-f=${Status}", "lockfs"], &[])
        .status
        .success()
}

fn is_mounted(p: &Path) -> bool {
    let want = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&want) && l.contains(" - fuse.lockfs "))
}

/// Unmounts the test mount and purges the package however the test ends.
struct Guard {
    mountpoint: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = run(
                30,
                &["umount", "-l", self.mountpoint.to_str().unwrap()],
                &[],
            );
        }
        if known_to_dpkg() {
            let out = run(120, &["dpkg", "--purge", "lockfs"], &[]);
            if !out.status.success() {
                eprintln!(
                    "package test: dpkg --purge lockfs failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

#[test]
fn the_debian_package_installs_works_and_removes_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("installing a package needs root");
    }
    for tool in [
        "dpkg-deb",
        "dpkg-shlibdeps",
        "lintian",
        "man",
        "systemd-analyze",
    ] {
        if run(30, &["sh", "-c", &format!("command -v {tool}")], &[])
            .status
            .code()
            != Some(0)
        {
            return skip(&format!("{tool} is missing (scripts/setup.sh installs it)"));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return skip("/dev/fuse is absent");
    }
    if known_to_dpkg() {
        return skip("a lockfs package is already known to dpkg on this machine; not touching it");
    }
    // Purging removes the default state directory, so an existing one
    // (another installation's) is as much a reason not to run.
    let present: Vec<&&str> = INSTALLED
        .iter()
        .chain(&["/var/lib/lockfs", "/etc/lockfs"])
        .filter(|p| Path::new(p).exists())
        .collect();
    if !present.is_empty() {
        return skip(&format!(
            "files the package would own exist already: {present:?}"
        ));
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let source = tmp.path().join("export");
    let mountpoint = tmp.path().join("mnt");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&mountpoint).unwrap();
    std::fs::write(source.join("hello"), b"through the installed helper\n").unwrap();

    // Build the package from this test's own binary (the script's default,
    // a release build, is the same steps on another binary).
    let dist = tmp.path().join("dist");
    let script = repo().join("scripts/build-deb.sh");
    let built = ok(
        600,
        &[
            "bash",
            script.to_str().unwrap(),
            "--binary",
            LOCKFS,
            "--out",
            dist.to_str().unwrap(),
            "--compression",
            "gzip",
        ],
        &[],
    );
    let deb = built.lines().last().expect("the package path").to_string();
    assert!(Path::new(&deb).is_file(), "{built}");

    let contents = ok(60, &["dpkg-deb", "--contents", &deb], &[]);
    for p in INSTALLED {
        assert!(
            contents.contains(&format!(".{p}\n")),
            "{p} not in:\n{contents}"
        );
    }
    let ocf = repo().join("scripts/ocf/lockfs-group");
    assert_eq!(
        contents.contains("./usr/lib/ocf/resource.d/lockfs/lockfs-group\n"),
        ocf.exists(),
        "the OCF agent is packaged exactly when the repository has one"
    );
    let control = ok(60, &["dpkg-deb", "--field", &deb], &[]);
    assert!(
        control.contains("Depends: ") && control.contains("fuse3"),
        "{control}"
    );
    assert!(control.contains("Recommends: rpcbind"), "{control}");
    let conffiles = ok(
        60,
        &[
            "sh",
            "-c",
            &format!("dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles"),
        ],
        &[],
    );
    assert_eq!(conffiles.trim(), CONFFILE);

    // lintian: warnings are reported, errors fail.
    let lint = run(600, &["lintian", "--tag-display-limit", "0", &deb], &[]);
    let lint_text = String::from_utf8_lossy(&lint.stdout).into_owned();
    eprintln!(
        "lintian:\n{lint_text}{}",
        String::from_utf8_lossy(&lint.stderr)
    );
    let errors: Vec<&str> = lint_text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(lint.status.success(), "lintian failed: {}", lint.status);

    let guard = Guard {
        mountpoint: mountpoint.clone(),
    };
    ok(300, &["dpkg", "-i", &deb], &[]);
    let owned = ok(30, &["dpkg", "-L", "lockfs"], &[]);
    for p in INSTALLED {
        assert!(Path::new(p).is_file(), "{p} not installed");
    }

    // The version names the release and the commit it was built from.
    let version = ok(30, &["/usr/sbin/lockfs", "--version"], &[]);
    let commit = env!("LOCKFS_COMMIT");
    assert_eq!(
        version.trim(),
        format!("lockfs {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
    if Path::new(&repo().join(".git")).exists() {
        assert!(
            commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{commit}"
        );
        ok(
            30,
            &[
                "git",
                "-C",
                repo().to_str().unwrap(),
                "cat-file",
                "-e",
                &format!("{commit}^{{commit}}"),
            ],
            &[],
        );
    }

    // Both manual pages render without a groff warning.
    for (page, must) in [
        (
            "/usr/share/man/man8/lockfs.8.gz",
            ["lockfs serve", "--path-prefix"],
        ),
        (
            "/usr/share/man/man5/lockfs.toml.5.gz",
            ["release_unreachable_after", "[[export]]"],
        ),
    ] {
        let out = run(
            60,
            &["man", "--warnings", "-P", "cat", "-l", page],
            &[("MANWIDTH", "100")],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{page}: {err}"
        );
        for m in must {
            assert!(text.contains(m), "{page} lacks {m:?}:\n{text}");
        }
    }

    // The installed unit passes systemd's own checks (its ExecStart binary
    // and its Documentation= pages exist now).
    let verify = run(
        60,
        &[
            "systemd-analyze",
            "verify",
            "/lib/systemd/system/lockfs.service",
        ],
        &[],
    );
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The conffile is the example the configuration tests parse.
    assert_eq!(
        std::fs::read_to_string(CONFFILE).unwrap(),
        std::fs::read_to_string(repo().join("scripts/lockfs.toml")).unwrap()
    );

    // mount -t fuse.lockfs goes through /sbin/mount.fuse.lockfs, which
    // finds /usr/sbin/lockfs even with a PATH that lacks it.
    let log = tmp.path().join("mount.log");
    ok(
        60,
        &[
            "mount",
            "-t",
            "fuse.lockfs",
            "-o",
            "mandatory=file",
            source.to_str().unwrap(),
            mountpoint.to_str().unwrap(),
        ],
        &[
            ("PATH", "/usr/bin:/bin"),
            ("LOCKFS_LOG", log.to_str().unwrap()),
        ],
    );
    assert!(is_mounted(&mountpoint));
    let seen = std::fs::read(mountpoint.join("hello")).expect("reading through the mount");
    assert_eq!(seen, b"through the installed helper\n");
    assert_ne!(
        std::fs::metadata(&mountpoint).unwrap().dev(),
        std::fs::metadata(&source).unwrap().dev(),
        "the file was read through the FUSE mount"
    );
    ok(60, &["umount", mountpoint.to_str().unwrap()], &[]);
    let t0 = Instant::now();
    while is_mounted(&mountpoint) {
        assert!(t0.elapsed() < Duration::from_secs(20), "still mounted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Remove: every file the package owned is gone but the conffile.
    ok(300, &["dpkg", "-r", "lockfs"], &[]);
    for p in owned.lines().filter(|p| !p.is_empty()) {
        let path = Path::new(p);
        if p == CONFFILE {
            assert!(path.is_file(), "the conffile was removed by dpkg -r");
        } else if !path.is_dir() {
            assert!(
                !path.exists() && path.symlink_metadata().is_err(),
                "{p} left behind by dpkg -r"
            );
        }
    }
    assert!(
        !Path::new("/usr/share/doc/lockfs").exists(),
        "/usr/share/doc/lockfs left behind by dpkg -r"
    );
    // Purge: the conffile and its directory go too.
    ok(300, &["dpkg", "--purge", "lockfs"], &[]);
    assert!(
        !Path::new(CONFFILE).exists(),
        "dpkg --purge left {CONFFILE}"
    );
    assert!(
        !Path::new("/etc/lockfs").exists(),
        "dpkg --purge left /etc/lockfs"
    );
    assert!(!known_to_dpkg(), "dpkg still knows lockfs after the purge");
    drop(guard);
    eprintln!("package test took {:.1?}", started.elapsed());
}
