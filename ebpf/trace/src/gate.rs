//! Opening and closing a daemon's probe gate from outside the process.
//!
//! The daemon's call sites read `LOCKFS_PROBE_GATE` (see `lockfs-probes`)
//! before they call a probe point, so attaching the uprobes alone shows
//! nothing: the tracer also writes that word in the daemon's memory. Its
//! address is the symbol's value in the binary plus the load bias of the
//! running image (non-zero for position-independent executables), which is
//! the start of the image's first mapping in `/proc/<pid>/maps` minus the
//! address that mapping has in the file. The write goes through
//! `/proc/<pid>/mem`, which needs the same privilege as ptrace.

use std::{
    fs::OpenOptions,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::PathBuf,
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::TraceError;

pub use lockfs_probes::{GATE_ALL, GATE_CONTENTION, GATE_SYMBOL};

/// The gate word of one running process.
#[derive(Debug)]
pub struct DaemonGate {
    pid: u32,
    address: u64,
}

fn gate_error(pid: u32, reason: impl Into<String>) -> TraceError {
    TraceError::Gate {
        pid,
        reason: reason.into(),
    }
}

fn io_error(action: String) -> impl FnOnce(std::io::Error) -> TraceError {
    move |source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EACCES)
        ) {
            TraceError::NoPrivilege { action, source }
        } else {
            TraceError::Io { action, source }
        }
    }
}

/// `major:minor` of a `stat` device number, as `/proc/<pid>/maps` prints it.
fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// One line of `/proc/<pid>/maps`: (start, file offset, major, minor, inode).
pub(crate) fn parse_maps_line(line: &str) -> Option<(u64, u64, u64, u64, u64)> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let _perms = fields.next()?;
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let start = u64::from_str_radix(range.split_once('-')?.0, 16).ok()?;
    Some((
        start,
        offset,
        u64::from_str_radix(major, 16).ok()?,
        u64::from_str_radix(minor, 16).ok()?,
        inode,
    ))
}

impl DaemonGate {
    /// Finds the gate of process `pid` (its main executable must carry the
    /// `LOCKFS_PROBE_GATE` symbol).
    pub fn open(pid: u32) -> Result<DaemonGate, TraceError> {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let meta =
            std::fs::metadata(&exe).map_err(io_error(format!("inspecting {}", exe.display())))?;
        let data = std::fs::read(&exe).map_err(io_error(format!("reading {}", exe.display())))?;
        let file = object::File::parse(&*data).map_err(|e| {
            gate_error(
                pid,
                format!("{} is not a readable ELF file: {e}", exe.display()),
            )
        })?;
        let symbol = file
            .symbols()
            .chain(file.dynamic_symbols())
            .find(|s| s.name() == Ok(GATE_SYMBOL))
            .ok_or_else(|| {
                gate_error(
                    pid,
                    format!(
                        "{} has no {GATE_SYMBOL} symbol (stripped, or not a lockfs daemon)",
                        exe.display()
                    ),
                )
            })?;
        let link_address = symbol.address();
        let bias = if file.kind() == object::ObjectKind::Dynamic {
            // The segment that maps file offset 0 is the image's first
            // mapping; its run-time start minus its link address is the bias.
            let first = file
                .segments()
                .find(|s| s.file_range().0 == 0)
                .ok_or_else(|| gate_error(pid, "the executable has no segment at offset 0"))?;
            let maps_path = format!("/proc/{pid}/maps");
            let maps = std::fs::read_to_string(&maps_path)
                .map_err(io_error(format!("reading {maps_path}")))?;
            let (major, minor) = dev_major_minor(meta.dev());
            let start = maps
                .lines()
                .filter_map(parse_maps_line)
                .find(|&(_, off, ma, mi, ino)| {
                    off == 0 && ino == meta.ino() && ma == major && mi == minor
                })
                .map(|(start, ..)| start)
                .ok_or_else(|| {
                    gate_error(pid, "the executable's first mapping is not in its maps")
                })?;
            start.wrapping_sub(first.address() & !0xfff)
        } else {
            0
        };
        Ok(DaemonGate {
            pid,
            address: link_address.wrapping_add(bias),
        })
    }

    /// The process whose gate this is.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The gate's run-time address in that process.
    pub fn address(&self) -> u64 {
        self.address
    }

    fn mem(&self, write: bool) -> Result<std::fs::File, TraceError> {
        let path = format!("/proc/{}/mem", self.pid);
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(io_error(format!("opening {path}")))
    }

    /// Reads the gate's current value.
    pub fn get(&self) -> Result<u32, TraceError> {
        let mut buf = [0u8; 4];
        self.mem(false)?
            .read_exact_at(&mut buf, self.address)
            .map_err(io_error(format!(
                "reading the probe gate of process {}",
                self.pid
            )))?;
        Ok(u32::from_ne_bytes(buf))
    }

    /// Writes the gate: [`GATE_CONTENTION`], with [`GATE_ALL`] for every
    /// event, or 0 to stop announcing.
    pub fn set(&self, value: u32) -> Result<(), TraceError> {
        // A naturally aligned 4-byte write is one store in the target, so
        // the daemon never sees a torn value.
        self.mem(true)?
            .write_all_at(&value.to_ne_bytes(), self.address)
            .map_err(io_error(format!(
                "writing the probe gate of process {}",
                self.pid
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let line = "5581c2a00000-5581c2a4b000 r--p 00000000 fe:01 1234567   /usr/bin/lockfs";
        assert_eq!(
            parse_maps_line(line),
            Some((0x5581c2a00000, 0, 0xfe, 1, 1234567))
        );
        assert_eq!(parse_maps_line("garbage"), None);
        assert_eq!(
            parse_maps_line("7ffd-7ffe rw-p 00000000 00:00 0 [stack]").map(|l| l.4),
            Some(0)
        );
    }

    #[test]
    fn device_numbers_split_like_the_kernel() {
        // makedev(254, 1) in glibc's encoding.
        assert_eq!(dev_major_minor((254 << 8) | 1), (254, 1));
        let (major, minor) = (0x1234u64, 0x4567u64);
        let big = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(dev_major_minor(big), (major, minor));
    }

    #[test]
    fn own_gate_is_found_and_writable() {
        // This test binary links lockfs-probes; reference the gate so the
        // linker keeps it.
        let own = &lockfs_probes::LOCKFS_PROBE_GATE as *const _ as u64;
        let gate = DaemonGate::open(std::process::id()).expect("own gate");
        assert_eq!(gate.address(), own);
        gate.set(GATE_CONTENTION).expect("writing own gate");
        assert_eq!(lockfs_probes::gate(), GATE_CONTENTION);
        assert_eq!(gate.get().unwrap(), GATE_CONTENTION);
        gate.set(0).unwrap();
        assert_eq!(lockfs_probes::gate(), 0);
    }
}
