//! `lockfs lvb get|set`: a file's lock value block for scripts and operators.
//!
//! Both commands lock the file themselves, with an OFD lock over the whole
//! file that they drop before exiting: `get` a shared one (it waits for a
//! writer to finish), `set` an exclusive one (it waits for every other
//! holder). A value is text or, with `--hex`, bytes; at most 32 bytes, the rest
//! of the block is zeros.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use fuse_lockfs::lvb::Reading;
use lock_table::LVB_LEN;
use serde::Serialize;

/// What `get` prints with `--json`.
#[derive(Serialize)]
struct Shown<'a> {
    path: &'a Path,
    /// The value up to its trailing zeros, as text if it is UTF-8.
    text: Option<String>,
    /// All 32 bytes in hex.
    hex: String,
    seq: u64,
    valid: bool,
}

fn ofd_lock(fd: i32, typ: i32) -> std::io::Result<()> {
    // SAFETY: an all-zero flock is valid; the fields that matter are set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: `fl` is a valid flock for the call.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLKW, &mut fl) } == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("not an even number of hex digits: {s:?}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex digit"))
        .collect()
}

fn explain(e: std::io::Error, path: &Path, what: &str) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ENOTTY) => anyhow::anyhow!(
            "{}: not on a lockfs mount whose locks the daemon keeps",
            path.display()
        ),
        Some(libc::EOPNOTSUPP) => anyhow::anyhow!(
            "{}: the export's storage cannot keep value blocks (no trusted xattrs)",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!("{what} {}", path.display())),
    }
}

fn show(path: &Path, r: &Reading, json: bool) -> Result<String> {
    let end = r.value.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&r.value[..end])
        .ok()
        .filter(|t| !t.chars().any(char::is_control))
        .map(str::to_string);
    let s = Shown {
        path,
        text,
        hex: hex(&r.value),
        seq: r.seq,
        valid: r.valid,
    };
    if json {
        return Ok(serde_json::to_string_pretty(&s)? + "\n");
    }
    Ok(format!(
        "{}: seq {} {}\n  text: {}\n  hex:  {}\n",
        path.display(),
        s.seq,
        if s.valid { "valid" } else { "NOT VALID" },
        s.text
            .as_deref()
            .map_or("-".to_string(), |t| format!("{t:?}")),
        s.hex
    ))
}

/// `lockfs lvb get PATH [--json]`.
pub fn get(path: &Path, json: bool) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    ofd_lock(f.as_raw_fd(), libc::F_RDLCK).with_context(|| format!("lock {}", path.display()))?;
    let r = fuse_lockfs::lvb::get(f.as_fd())
        .map_err(|e| explain(e, path, "read the value block of"))?;
    print!("{}", show(path, &r, json)?);
    Ok(())
}

/// `lockfs lvb set PATH VALUE [--hex]`.
pub fn set(path: &Path, value: &str, is_hex: bool, json: bool) -> Result<()> {
    let bytes = if is_hex {
        unhex(value)?
    } else {
        value.as_bytes().to_vec()
    };
    if bytes.len() > LVB_LEN {
        bail!(
            "a value block holds {LVB_LEN} bytes; the value has {}",
            bytes.len()
        );
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {} for writing", path.display()))?;
    ofd_lock(f.as_raw_fd(), libc::F_WRLCK).with_context(|| format!("lock {}", path.display()))?;
    let r = fuse_lockfs::lvb::set(f.as_fd(), &bytes)
        .map_err(|e| explain(e, path, "set the value block of"))?;
    print!("{}", show(path, &r, json)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_values_parse_and_bad_ones_are_refused() {
        assert_eq!(unhex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        assert_eq!(hex(&[1, 0xab]), "01ab");
    }

    #[test]
    fn text_is_shown_without_trailing_zeros() {
        let mut value = [0u8; LVB_LEN];
        value[..2].copy_from_slice(b"hi");
        let r = Reading {
            value,
            seq: 3,
            valid: false,
            unlocked: false,
        };
        let s = show(Path::new("/m/f"), &r, false).unwrap();
        assert!(s.contains("seq 3 NOT VALID") && s.contains("\"hi\""), "{s}");
        let j: serde_json::Value =
            serde_json::from_str(&show(Path::new("/m/f"), &r, true).unwrap()).unwrap();
        assert_eq!(j["text"], "hi");
        assert_eq!(j["valid"], false);
        assert_eq!(j["seq"], 3);
    }
}
