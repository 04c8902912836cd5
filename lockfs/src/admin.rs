//! The administration socket: a root-only Unix socket through which `lockfs locks`
//! reads the listing of a running daemon.
//!
//! The protocol is one request line and one JSON answer: `locks\n` is answered
//! with a JSON array of [`LockRow`]s and a newline; `clear-host NAME\n` (served
//! by `lockfs serve`, which has remote hosts) releases everything the NLM host
//! NAME holds and answers with what was released. The socket file is mode 0600 in
//! a 0700 directory, and the peer's credentials are checked: only root is served.
//! Each mount serves its own socket, by default `/run/lockfs/<mount point>.sock`
//! (the mount point with `/` turned into `-`), so `lockfs locks` lists every
//! socket in that directory unless told one.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuse_lockfs::listing::{self, LockRow};
use fuse_lockfs::LockContext;

/// Where sockets live unless told otherwise.
pub const SOCKET_DIR: &str = "/run/lockfs";

/// The default socket of a mount at `mountpoint`.
pub fn default_socket(mountpoint: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let mut name: String = abs
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        name = "root".into();
    }
    // sun_path holds 108 bytes; keep well inside it.
    if name.len() > 80 {
        let tail = name.split_off(name.len() - 60);
        name = format!("{:x}-{tail}", fxhash(&name));
    }
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A listening admin socket; the file is removed when it is dropped.
pub struct AdminSocket {
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Releases everything a remote host holds; answers what was released.
pub type ClearHost = std::sync::Arc<dyn Fn(&str) -> serde_json::Value + Send + Sync>;

/// The lock agent's requests: `online NAME`, `offline NAME`, `status`; answers JSON,
/// `{"error": ...}` on failure.
pub type GroupCommand = std::sync::Arc<dyn Fn(&str, &str) -> serde_json::Value + Send + Sync>;

/// The paths of files the mounts have not looked up (by device and inode), from the
/// other doors: files only NFS or NLM clients named. Those it cannot name are left out.
pub type NameFiles = std::sync::Arc<
    dyn Fn(&[(u64, u64)]) -> std::collections::HashMap<(u64, u64), String> + Send + Sync,
>;

/// What the socket answers from the daemon's other parts, besides the mounts' listing.
#[derive(Default)]
pub struct Doors {
    /// `clear-host NAME`.
    pub clear_host: Option<ClearHost>,
    /// `group VERB [NAME]`.
    pub group: Option<GroupCommand>,
    /// Paths in the listing for files no mount has looked up.
    pub name_files: Option<NameFiles>,
}

/// Binds `path` and serves listings of `ctx` from a background thread.
pub fn serve(path: &Path, ctx: LockContext) -> Result<AdminSocket> {
    serve_with(path, ctx, Doors::default())
}

/// [`serve`], also answering what `doors` can: `clear-host NAME`, `group VERB [NAME]`,
/// and the paths of files only the network doors named.
pub fn serve_with(path: &Path, ctx: LockContext, doors: Doors) -> Result<AdminSocket> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another lockfs", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("lockfs-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &ctx, &doors) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "admin socket accept failed"),
                }
            }
        })?;
    Ok(AdminSocket {
        path: path.to_path_buf(),
    })
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero ucred is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

fn answer(s: UnixStream, ctx: &LockContext, doors: &Doors) -> Result<()> {
    let (clear_host, group) = (doors.clear_host.as_ref(), doors.group.as_ref());
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut out = s.try_clone()?;
    if peer_uid(&s) != Some(0) {
        writeln!(out, "{{\"error\":\"permission denied\"}}")?;
        return Ok(());
    }
    let mut line = String::new();
    // A request is short; never buffer an endless line.
    BufReader::new(std::io::Read::take(s, 4096)).read_line(&mut line)?;
    match line.trim() {
        "locks" => {
            let mut rows = listing::list(ctx);
            if let Some(name) = &doors.name_files {
                let unnamed: Vec<(u64, u64)> = rows
                    .iter()
                    .filter(|r| r.path.is_none())
                    .map(|r| (r.dev, r.ino))
                    .collect();
                if !unnamed.is_empty() {
                    let names = name(&unnamed);
                    for r in rows.iter_mut().filter(|r| r.path.is_none()) {
                        r.path = names.get(&(r.dev, r.ino)).cloned();
                    }
                }
            }
            serde_json::to_writer(&mut out, &rows)?;
            writeln!(out)?;
        }
        req if req.starts_with("clear-host ") && clear_host.is_some() => {
            let name = req["clear-host ".len()..].trim();
            let answer = match clear_host {
                Some(f) if !name.is_empty() => f(name),
                _ => serde_json::json!({ "error": "clear-host needs a host name" }),
            };
            writeln!(out, "{answer}")?;
        }
        req if req.starts_with("group ") && group.is_some() => {
            let mut words = req["group ".len()..].split_whitespace();
            let verb = words.next().unwrap_or("");
            let name = words.next().unwrap_or("");
            let answer = match group {
                Some(f) => f(verb, name),
                None => serde_json::json!({ "error": "no groups here" }),
            };
            writeln!(out, "{answer}")?;
        }
        other => writeln!(
            out,
            "{}",
            serde_json::json!({ "error": format!("unknown request {other:?}") })
        )?,
    }
    Ok(())
}

/// Asks the daemon behind `path` for its listing.
pub fn query(path: &Path) -> Result<Vec<LockRow>> {
    let mut s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "locks")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
        if let Some(e) = v.get("error") {
            bail!("{}: {e}", path.display());
        }
    }
    serde_json::from_str(&line).with_context(|| format!("bad answer from {}", path.display()))
}

/// Asks the daemon behind `path` to release everything host `name` holds.
pub fn clear_host(path: &Path, name: &str) -> Result<serde_json::Value> {
    if name.is_empty() || name.contains('\n') {
        bail!("invalid host name {name:?}");
    }
    let mut s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "clear-host {name}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("bad answer from {}", path.display()))?;
    if let Some(e) = v.get("error") {
        bail!("{}: {e}", path.display());
    }
    Ok(v)
}

/// Sends the lock agent's request `group VERB NAME` to the daemon behind `path`.
pub fn group_request(path: &Path, verb: &str, name: &str) -> Result<serde_json::Value> {
    if name.contains(char::is_whitespace) {
        bail!("invalid group name {name:?}");
    }
    let mut s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    // Bringing a group online syncs its state to storage; leave it time.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    writeln!(s, "group {verb} {name}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("bad answer from {}", path.display()))?;
    if let Some(e) = v.get("error") {
        bail!(
            "{}",
            e.as_str().map_or_else(|| e.to_string(), str::to_string)
        );
    }
    Ok(v)
}

/// The sockets `lockfs locks` asks by default.
pub fn all_sockets() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(SOCKET_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sockets_are_named_after_the_mount_point() {
        assert_eq!(
            default_socket(Path::new("/nonexistent/mnt/data")),
            Path::new("/run/lockfs/nonexistent-mnt-data.sock")
        );
        let long = format!("/nonexistent/{}", "x".repeat(200));
        let p = default_socket(Path::new(&long));
        assert!(p.as_os_str().len() < 108, "{}", p.display());
    }

    #[test]
    fn the_socket_serves_listings_to_root_only_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.sock");
        let ctx = LockContext::new();
        let sock = serve(&path, ctx.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(query(&path).unwrap(), Vec::new());
        }
        // A second daemon may not steal a live socket.
        assert!(serve(&path, ctx).is_err());
        drop(sock);
        assert!(!path.exists());
    }
}
