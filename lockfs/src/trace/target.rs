//! Finding the lockfs daemon to trace.
//!
//! Without `--daemon-pid`, the daemon is the one other process running the
//! lockfs binary: the same file as this command's own executable, or a file
//! named `lockfs` (a daemon started from an older build whose binary was
//! replaced shows as `lockfs (deleted)`).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

fn runs_lockfs(pid: u32, own: (u64, u64)) -> bool {
    let exe = format!("/proc/{pid}/exe");
    if let Ok(m) = std::fs::metadata(&exe) {
        if (m.dev(), m.ino()) == own {
            return true;
        }
    }
    match std::fs::read_link(&exe) {
        Ok(target) => {
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
            matches!(name.as_deref(), Some("lockfs") | Some("lockfs (deleted)"))
        }
        Err(_) => false,
    }
}

/// Pids of the processes running lockfs, other than this one.
pub fn lockfs_processes() -> Result<Vec<u32>> {
    let own = std::fs::metadata("/proc/self/exe").context("inspecting /proc/self/exe")?;
    let own = (own.dev(), own.ino());
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .context("listing /proc")?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && runs_lockfs(pid, own) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The daemon to attach to: `given` if it names a live process, else the
/// only lockfs process; an error that says what to do otherwise.
pub fn daemon_pid(given: Option<u32>) -> Result<u32> {
    if let Some(pid) = given {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process {pid}");
        }
        return Ok(pid);
    }
    match lockfs_processes()?.as_slice() {
        [] => bail!(
            "no running lockfs daemon found; pass --daemon-pid PID, or --kernel-only to trace \
             only the kernel's file locks"
        ),
        [pid] => Ok(*pid),
        many => bail!(
            "several lockfs processes are running ({}); choose one with --daemon-pid PID",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pid_is_refused() {
        let err = daemon_pid(Some(u32::MAX - 1)).unwrap_err().to_string();
        assert!(err.contains("no process"), "{err}");
    }

    #[test]
    fn other_binaries_are_not_lockfs() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = lockfs_processes().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(!found.contains(&child.id()));
        assert!(!found.contains(&std::process::id()));
    }
}
