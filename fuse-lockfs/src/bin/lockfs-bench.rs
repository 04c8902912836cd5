//! Micro-benchmark driver for `scripts/bench-fuse.sh`.
//!
//! Usage:
//! - `lockfs-bench locks FILE SECONDS`: fcntl `F_SETLK` write lock + unlock pairs
//!   on one byte range, as fast as possible; prints `pairs_per_sec N`.
//! - `lockfs-bench noop FILE SECONDS`: FUSE round trips that do nothing (an ioctl
//!   the daemon answers `ENOTTY` at once; on a file system without FUSE the
//!   kernel answers it); prints `trips_per_sec N`. Two of these are the transport
//!   floor of a lock+unlock pair.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// `_IO('S', 99)`: a request code lockfs does not know.
const NOOP_IOCTL: libc::c_ulong = ((b'S' as libc::c_ulong) << 8) | 99;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path), Some(secs)) = (args.get(1), args.get(2), args.get(3)) else {
        anyhow::bail!("usage: lockfs-bench locks|noop FILE SECONDS");
    };
    let secs: f64 = secs.parse()?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let fd = f.as_raw_fd();
    let limit = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut n: u64 = 0;
    match mode.as_str() {
        "locks" => {
            // SAFETY: an all-zero flock is a valid value; fields set below.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = 0;
            fl.l_len = 1;
            while t0.elapsed() < limit {
                for _ in 0..256 {
                    for ty in [libc::F_WRLCK, libc::F_UNLCK] {
                        fl.l_type = ty as i16;
                        // SAFETY: valid descriptor and flock.
                        if unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } == -1 {
                            anyhow::bail!("fcntl: {}", std::io::Error::last_os_error());
                        }
                    }
                }
                n += 256;
            }
            println!("pairs_per_sec {:.0}", n as f64 / t0.elapsed().as_secs_f64());
        }
        "noop" => {
            while t0.elapsed() < limit {
                for _ in 0..256 {
                    // SAFETY: an argument-less ioctl on a valid descriptor.
                    unsafe { libc::ioctl(fd, NOOP_IOCTL) };
                }
                n += 256;
            }
            println!("trips_per_sec {:.0}", n as f64 / t0.elapsed().as_secs_f64());
        }
        m => anyhow::bail!("unknown mode {m}"),
    }
    Ok(())
}
