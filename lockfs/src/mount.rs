//! `lockfs mount SOURCE MOUNTPOINT [-o OPTIONS]`: serve one lockfs mount in the
//! foreground until SIGTERM or SIGINT, which unmount cleanly.
//!
//! Options (comma-separated, as in `/etc/fstab`):
//! - `mandatory=off|file|all` (default `off`), `flock=separate|shared`
//!   (default `separate`; `local` is an older name of it): the words of
//!   [`Mandatory::WORDS`] and [`FlockMode::WORDS`], the same as the
//!   configuration file's
//! - `ro`, `rw`, `threads=N`, `nopassthrough`
//! - `max_read=BYTES` (default: the kernel's, 1 MiB; with `splice`, what a
//!   spliced read reply can carry),
//!   `splice` (the default: splice read replies of direct-I/O files from the
//!   backing file instead of copying them through the daemon; `nosplice` copies)
//! - `socket=PATH`: the admin socket (default under `/run/lockfs/`)
//! - `defaults`, `auto`, `noauto`, `nofail`, `_netdev`, `user`, `nouser`,
//!   `dev`, `nodev`, `suid`, `nosuid`, `exec`, `noexec`, `atime`, `noatime`,
//!   `relatime` and `x-*` options are accepted and ignored (mount(8) and systemd
//!   pass them on).
//!
//! The daemon builds one [`LockContext`] and hands it to the mount; a daemon
//! serving several mounts and the NLM server passes the same context to each.
//!
//! # /etc/fstab
//! With `lockfs` in root's `PATH` and `scripts/mount.fuse.lockfs` installed as
//! `/sbin/mount.fuse.lockfs`, a line such as
//! `/srv/data /mnt/data fuse.lockfs defaults,mandatory=file 0 0` mounts at boot or
//! with `mount /mnt/data`; `umount /mnt/data` ends the daemon.
//!
//! # A stale mount
//! If the daemon is killed without unmounting, the mount point answers
//! "Transport endpoint is not connected"; `umount -l MOUNTPOINT` clears it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fuse_lockfs::{FlockMode, LockContext, Mandatory, MountOptions};

use crate::admin;

/// Parsed `-o` options.
#[derive(Debug, Default)]
pub struct Parsed {
    pub options: MountOptions,
    pub socket: Option<PathBuf>,
}

/// Parses comma-separated mount options.
pub fn parse_options(list: &[String]) -> Result<Parsed> {
    let mut p = Parsed {
        options: MountOptions {
            forward_locks: true,
            ..MountOptions::default()
        },
        socket: None,
    };
    for opt in list
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("mandatory", Some(v)) => p.options.mandatory = v.parse::<Mandatory>()?,
            ("flock", Some(v)) => p.options.flock = v.parse::<FlockMode>()?,
            ("threads", Some(v)) => {
                p.options.n_threads = v.parse().with_context(|| format!("threads={v}"))?
            }
            ("socket", Some(v)) => p.socket = Some(PathBuf::from(v)),
            ("ro", None) => p.options.read_only = true,
            ("rw", None) => p.options.read_only = false,
            ("nopassthrough", None) => p.options.passthrough = false,
            ("splice", None) => p.options.splice_read = true,
            ("nosplice", None) => p.options.splice_read = false,
            ("max_read", Some(v)) => {
                p.options.max_read = Some(v.parse().with_context(|| format!("max_read={v}"))?)
            }
            ("defaults" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "nouser", None)
            | ("dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec", None)
            | ("atime" | "noatime" | "relatime" | "allow_other" | "default_permissions", None) => {}
            (k, _) if k.starts_with("x-") => {}
            _ => bail!("unknown mount option {opt:?}"),
        }
    }
    Ok(p)
}

/// Mounts and serves until a termination signal or an external unmount.
pub fn run(source: &Path, mountpoint: &Path, options: &[String]) -> Result<()> {
    let Parsed {
        mut options,
        socket,
    } = parse_options(options)?;
    let set = fuse_lockfs::block_termination();
    match fuse_lockfs::raise_fd_limit() {
        Ok(n) => tracing::info!(limit = n, "descriptor limit (RLIMIT_NOFILE) {n}"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let ctx = LockContext::new();
    options.locks = Some(ctx.clone());
    options.fsname = source.display().to_string().replace(',', "_");
    let socket = socket.unwrap_or_else(|| admin::default_socket(mountpoint));
    let mut mounted = fuse_lockfs::prepare(source, mountpoint, options)?;
    let _admin = admin::serve(&socket, ctx)?;
    fuse_lockfs::unmount_on_termination(set, mounted.unmounter());
    eprintln!(
        "lockfs: {} mounted at {}, admin socket {}",
        source.display(),
        mountpoint.display(),
        socket.display()
    );
    mounted.run()?;
    eprintln!("lockfs: {} unmounted", mountpoint.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<Parsed> {
        parse_options(&[s.to_string()])
    }

    #[test]
    fn fstab_options_parse() {
        let p = opts("defaults,mandatory=file,flock=shared,threads=4,noauto,x-systemd.automount")
            .unwrap();
        assert_eq!(p.options.mandatory, Mandatory::File);
        assert_eq!(p.options.flock, FlockMode::Shared);
        assert_eq!(p.options.n_threads, 4);
        assert!(p.options.forward_locks);
        let p = opts("ro,socket=/tmp/x.sock,nopassthrough").unwrap();
        assert!(p.options.read_only && !p.options.passthrough);
        assert_eq!(p.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        assert!(opts("mandatory=sometimes").is_err());
        assert!(opts("bogus").is_err());
        assert!(opts("threads=x").is_err());
    }

    /// The configuration file and `-o` must accept the same words with the
    /// same meaning: every word either takes, and a few neither should.
    #[test]
    fn config_and_mount_options_accept_the_same_words() {
        let export = |key: &str, word: &str| {
            format!(
                "[[export]]\nname = \"d\"\nsource = \"/s\"\nmountpoint = \"/m\"\n{key} = {word:?}\n"
            )
        };
        let mut mandatory: Vec<&str> = Mandatory::WORDS.iter().map(|(w, _)| *w).collect();
        let mut flock: Vec<&str> = FlockMode::WORDS.iter().map(|(w, _)| *w).collect();
        let strangers = ["on", "none", "yes", "posix", "Local", "SHARED", " file", ""];
        mandatory.extend(strangers);
        flock.extend(strangers);
        for word in mandatory {
            let toml = crate::config::parse(&export("mandatory", word), "t.toml");
            let dash_o = opts(&format!("mandatory={word}"));
            match (toml, dash_o) {
                (Ok(c), Ok(p)) => assert_eq!(c.exports[0].mandatory, p.options.mandatory, "{word}"),
                (Err(_), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains("off, file, all"), "{e}");
                }
                (t, o) => panic!("mandatory={word:?}: config {t:?}, -o {o:?}"),
            }
        }
        for word in flock {
            let toml = crate::config::parse(&export("flock", word), "t.toml");
            let dash_o = opts(&format!("flock={word}"));
            match (toml, dash_o) {
                (Ok(c), Ok(p)) => assert_eq!(c.exports[0].flock, p.options.flock, "{word}"),
                (Err(t), Err(e)) => {
                    for msg in [t.to_string(), e.to_string()] {
                        assert!(msg.contains("separate, shared, local"), "{msg}");
                    }
                }
                (t, o) => panic!("flock={word:?}: config {t:?}, -o {o:?}"),
            }
        }
        assert_eq!(
            opts("flock=local").unwrap().options.flock,
            FlockMode::Separate
        );
    }
}
