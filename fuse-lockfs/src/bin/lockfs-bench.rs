//! Micro-benchmark driver for `scripts/bench-fuse.sh`.
//!
//! Usage:
//! - `lockfs-bench locks FILE SECONDS`: fcntl `F_SETLK` write lock + unlock pairs
//!   on one byte range, as fast as possible; prints `pairs_per_sec N`.
//! - `lockfs-bench noop FILE SECONDS`: FUSE round trips that do nothing (an ioctl
//!   the daemon answers `ENOTTY` at once; on a file system without FUSE the
//!   kernel answers it); prints `trips_per_sec N`. Two of these are the transport
//!   floor of a lock+unlock pair.
//! - `lockfs-bench compare FILE SECONDS`: alternates short rounds of lock+unlock
//!   pairs and of pairs of no-op round trips on the same descriptor for SECONDS in
//!   all; prints the medians of both rates and the median of the per-round ratios
//!   `cost_ratio R` (time of a lock+unlock pair over two no-op round trips).
//!   Alternating keeps both sides under the same load when the machine's speed
//!   drifts, which separate runs seconds apart do not.
//! - `lockfs-bench lvb FILE SECONDS`: holding a whole-file write lock, alternates
//!   short rounds of value-block gets, of value-block sets and of no-op round
//!   trips on the same descriptor; prints the medians of the three rates and the
//!   medians of the per-round ratios `get_ratio` and `set_ratio` (time of one
//!   get or set over one no-op round trip).
//! - `lockfs-bench read FILE SECONDS [BLOCK [rand]]`: `pread`s of BLOCK bytes
//!   (default 1 MiB) into one buffer, in order through the file and round again
//!   at its end, or at random block-aligned offsets with `rand`; prints
//!   `mib_per_sec` and `ops_per_sec`. A warm page cache read this way runs at
//!   memory speed, which fio with `psync` does not reach on these machines.
//! - `lockfs-bench readcmp BASE FILE SECONDS [BLOCK [rand]]`: the same reads
//!   alternating in short rounds between BASE (the native file) and FILE (the
//!   same data through a mount); prints both medians and the median of the
//!   per-round ratios `ratio` (FILE's rate over BASE's).
//! - `lockfs-bench write FILE SECONDS [BLOCK [rand]]` and `lockfs-bench writecmp
//!   BASE FILE SECONDS [BLOCK [rand]]`: the same with `pwrite`s from a page-aligned
//!   buffer over the file's existing blocks (it is never extended, so the page
//!   cache's pages are overwritten rather than allocated).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// `_IO('S', 99)`: a request code lockfs does not know.
const NOOP_IOCTL: libc::c_ulong = ((b'S' as libc::c_ulong) << 8) | 99;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path), Some(secs)) = (args.get(1), args.get(2), args.get(3)) else {
        anyhow::bail!("usage: lockfs-bench locks|noop|compare|lvb FILE SECONDS");
    };
    if matches!(mode.as_str(), "read" | "readcmp" | "write" | "writecmp") {
        return read_mode(&args);
    }
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
            while t0.elapsed() < limit {
                lock_pairs(fd, 256)?;
                n += 256;
            }
            println!("pairs_per_sec {:.0}", n as f64 / t0.elapsed().as_secs_f64());
        }
        "noop" => {
            while t0.elapsed() < limit {
                noops(fd, 256);
                n += 256;
            }
            println!("trips_per_sec {:.0}", n as f64 / t0.elapsed().as_secs_f64());
        }
        "compare" => {
            const ROUND: Duration = Duration::from_millis(250);
            let (mut pairs, mut trips, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            while t0.elapsed() < limit {
                let p = rate(ROUND, || lock_pairs(fd, 64))?;
                let t = rate(ROUND, || {
                    noops(fd, 64);
                    Ok(())
                })?;
                // Seconds per pair over seconds per two round trips.
                ratios.push((1.0 / p) / (2.0 / t));
                pairs.push(p);
                trips.push(t);
            }
            println!("pairs_per_sec {:.0}", median(&mut pairs));
            println!("trips_per_sec {:.0}", median(&mut trips));
            println!("cost_ratio {:.3}", median(&mut ratios));
            println!("rounds {}", ratios.len());
        }
        "lvb" => {
            const ROUND: Duration = Duration::from_millis(250);
            // SAFETY: an all-zero flock is valid; a whole-file write lock.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as i16;
            // SAFETY: valid descriptor and flock.
            if unsafe { libc::fcntl(fd, libc::F_SETLKW, &fl) } == -1 {
                anyhow::bail!("fcntl: {}", std::io::Error::last_os_error());
            }
            let b = std::os::fd::AsFd::as_fd(&f);
            let mut counter = 0u64;
            let (mut gets, mut sets, mut trips) = (Vec::new(), Vec::new(), Vec::new());
            let (mut gr, mut sr) = (Vec::new(), Vec::new());
            while t0.elapsed() < limit {
                let g = rate(ROUND, || {
                    for _ in 0..64 {
                        fuse_lockfs::lvb::get(b)?;
                    }
                    Ok(())
                })?;
                let s = rate(ROUND, || {
                    for _ in 0..64 {
                        counter += 1;
                        fuse_lockfs::lvb::set(b, &counter.to_le_bytes())?;
                    }
                    Ok(())
                })?;
                let t = rate(ROUND, || {
                    noops(fd, 64);
                    Ok(())
                })?;
                gr.push(t / g);
                sr.push(t / s);
                gets.push(g);
                sets.push(s);
                trips.push(t);
            }
            println!("gets_per_sec {:.0}", median(&mut gets));
            println!("sets_per_sec {:.0}", median(&mut sets));
            println!("trips_per_sec {:.0}", median(&mut trips));
            println!("get_ratio {:.3}", median(&mut gr));
            println!("set_ratio {:.3}", median(&mut sr));
            println!("rounds {}", gr.len());
        }
        m => anyhow::bail!("unknown mode {m}"),
    }
    Ok(())
}

/// The `read` and `readcmp` modes.
fn read_mode(args: &[String]) -> anyhow::Result<()> {
    let cmp = args[1].ends_with("cmp");
    let write = args[1].starts_with("write");
    let rest = if cmp { &args[3..] } else { &args[2..] };
    let (Some(secs), block, random) = (rest.get(1), rest.get(2), rest.get(3)) else {
        anyhow::bail!("usage: lockfs-bench read|write FILE SECONDS [BLOCK [rand]] | readcmp|writecmp BASE FILE SECONDS [BLOCK [rand]]");
    };
    let limit = Duration::from_secs_f64(secs.parse()?);
    let block: usize = block.map_or(Ok(1 << 20), |b| b.parse())?;
    let random = match random.map(String::as_str) {
        None => false,
        Some("rand") => true,
        Some(other) => anyhow::bail!("unknown read order {other}"),
    };
    // A page-aligned buffer, as `dd` and fio use: the kernel's copy into a
    // destination that is not page-aligned measured several times slower here.
    let mut backing = vec![0u8; block + 4096];
    let start = backing.as_ptr().align_offset(4096).min(4096);
    let buf = &mut backing[start..start + block];
    let open = |path: &str| -> anyhow::Result<Reader> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)?;
        let blocks = file.metadata()?.len() / block as u64;
        anyhow::ensure!(blocks > 0, "{path} is smaller than one block");
        Ok(Reader {
            file,
            write,
            blocks,
            next: 0,
            random,
            seed: 0x9e37_79b9_7f4a_7c15,
        })
    };
    let mut file = open(&rest[0])?;
    let t0 = Instant::now();
    if !cmp {
        let mut n = 0u64;
        while t0.elapsed() < limit {
            for _ in 0..16 {
                file.read_one(buf)?;
            }
            n += 16;
        }
        let ops = n as f64 / t0.elapsed().as_secs_f64();
        println!("mib_per_sec {:.0}", ops * block as f64 / f64::from(1 << 20));
        println!("ops_per_sec {:.0}", ops);
        return Ok(());
    }
    let mut base = open(&args[2])?;
    const ROUND: Duration = Duration::from_millis(250);
    let (mut bases, mut files, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    while t0.elapsed() < limit {
        let b = rate(ROUND, || base.read_batch(buf))?;
        let f = rate(ROUND, || file.read_batch(buf))?;
        ratios.push(f / b);
        bases.push(b);
        files.push(f);
    }
    // `rate` counts each batch as 64 reads.
    let mib = |ops: f64| ops * block as f64 / f64::from(1 << 20);
    println!("base_mib_per_sec {:.0}", mib(median(&mut bases)));
    println!("mib_per_sec {:.0}", mib(median(&mut files)));
    println!("ratio {:.3}", median(&mut ratios));
    println!("rounds {}", ratios.len());
    Ok(())
}

/// One file read or written block by block, in order or at random.
struct Reader {
    file: std::fs::File,
    write: bool,
    blocks: u64,
    next: u64,
    random: bool,
    seed: u64,
}

impl Reader {
    fn read_one(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        use std::os::unix::fs::FileExt;
        let index = if self.random {
            // xorshift64: cheap, and the same sequence on every side.
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed % self.blocks
        } else {
            let i = self.next;
            self.next = (i + 1) % self.blocks;
            i
        };
        let at = index * buf.len() as u64;
        let n = if self.write {
            self.file.write_at(buf, at)?
        } else {
            self.file.read_at(buf, at)?
        };
        anyhow::ensure!(n == buf.len(), "short transfer: {n} of {} bytes", buf.len());
        Ok(())
    }

    fn read_batch(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        for _ in 0..64 {
            self.read_one(buf)?;
        }
        Ok(())
    }
}

/// `n` write lock + unlock pairs on byte 0.
fn lock_pairs(fd: i32, n: u32) -> anyhow::Result<()> {
    // SAFETY: an all-zero flock is a valid value; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 1;
    for _ in 0..n {
        for ty in [libc::F_WRLCK, libc::F_UNLCK] {
            fl.l_type = ty as i16;
            // SAFETY: valid descriptor and flock.
            if unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } == -1 {
                anyhow::bail!("fcntl: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// `n` no-op round trips.
fn noops(fd: i32, n: u32) {
    for _ in 0..n {
        // SAFETY: an argument-less ioctl on a valid descriptor.
        unsafe { libc::ioctl(fd, NOOP_IOCTL) };
    }
}

/// Calls of `batch` per second (each counted as 64 operations) over `round`.
fn rate(round: Duration, mut batch: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < round {
        batch()?;
        n += 64;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
