//! A scriptable lock client: reads one command per line on stdin, performs it and
//! answers one line on stdout (`ok ...` or `err <errno> <name>`). Tests run several
//! of these as separate processes to lock, read and write against each other.
//!
//! Commands (`FD` is the number `open` printed):
//! - `open PATH r|w|rw [nb] [trunc]` -> `ok FD`
//! - `lock FD setlk|setlkw|ofd|ofdw r|w|u START LEN`
//! - `getlk FD posix|ofd r|w START LEN` -> `ok TYPE PID START LEN` (`TYPE` u/r/w)
//! - `flock FD sh|ex|un [nb]`
//! - `forklock FD setlk|ofd r|w START LEN`: a forked child tries the lock on the
//!   inherited descriptor -> `ok 0` or `ok ERRNO`
//! - `read FD OFF LEN` -> `ok N`; `write FD OFF TEXT` -> `ok N`; `truncate FD LEN`;
//!   `fallocate FD OFF LEN`
//! - `share FD ACCESS DENY` (wire values 0..3) through the lockfs ioctl
//! - `mmap FD`: a shared writable mapping of the first page
//! - `close FD`, `pid` -> `ok PID`
//! - `lvbget FD` -> `ok SEQ valid|notvalid locked|unlocked TEXT` (the value up
//!   to its first zero byte, `-` if empty); `lvbset FD TEXT` -> `ok SEQ`;
//!   `lvbinval FD` -> `ok SEQ`
//! - `forklvbset FD TEXT`: a forked child tries the set on the inherited
//!   descriptor -> `ok 0` or `ok ERRNO`
//! - `lvbcount FD N`: N times: take a whole-file F_WRLCK (waiting), read the
//!   value block as a little-endian u64 counter, store it plus one, unlock ->
//!   `ok`
//! - `exit`: exits at once, holding whatever it holds (no unlock, no close)
//!
//! SIGUSR1 is caught without `SA_RESTART`, so it interrupts a blocked call with
//! `EINTR`, which is how tests signal a waiter.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

extern "C" fn on_signal(_: libc::c_int) {}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fail(e: i32) -> String {
    format!("err {e} {}", std::io::Error::from_raw_os_error(e))
}

fn num<T: std::str::FromStr>(s: Option<&str>) -> Result<T, String> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| "err 0 bad number".to_string())
}

fn lock_type(s: Option<&str>) -> Result<i16, String> {
    match s {
        Some("r") => Ok(libc::F_RDLCK as i16),
        Some("w") => Ok(libc::F_WRLCK as i16),
        Some("u") => Ok(libc::F_UNLCK as i16),
        _ => Err("err 0 bad lock type".into()),
    }
}

fn fcntl_lock(fd: RawFd, cmd: &str, typ: i16, start: i64, len: i64) -> Result<libc::flock, i32> {
    let c = match cmd {
        "setlk" => libc::F_SETLK,
        "setlkw" => libc::F_SETLKW,
        "ofd" => libc::F_OFD_SETLK,
        "ofdw" => libc::F_OFD_SETLKW,
        "getlk" | "posix" => libc::F_GETLK,
        "ofdget" | "ofdgetlk" => libc::F_OFD_GETLK,
        _ => return Err(libc::EINVAL),
    };
    // SAFETY: an all-zero flock is a valid value; fields are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: `fl` is a valid flock for the whole call.
    if unsafe { libc::fcntl(fd, c, &mut fl) } == -1 {
        Err(errno())
    } else {
        Ok(fl)
    }
}

struct Ctl {
    fds: HashMap<i32, OwnedFd>,
}

impl Ctl {
    fn fd(&self, s: Option<&str>) -> Result<RawFd, String> {
        let n: i32 = num(s)?;
        self.fds
            .get(&n)
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| fail(libc::EBADF))
    }

    fn run(&mut self, line: &str) -> Result<String, String> {
        let mut w = line.split_whitespace();
        let cmd = w.next().unwrap_or("");
        match cmd {
            "pid" => Ok(format!("ok {}", std::process::id())),
            "open" => {
                let path = CString::new(w.next().unwrap_or("")).map_err(|_| fail(libc::EINVAL))?;
                let mut flags = match w.next() {
                    Some("r") => libc::O_RDONLY,
                    Some("w") => libc::O_WRONLY,
                    Some("rw") => libc::O_RDWR,
                    _ => return Err("err 0 bad mode".into()),
                };
                for extra in w {
                    match extra {
                        "nb" => flags |= libc::O_NONBLOCK,
                        "trunc" => flags |= libc::O_TRUNC,
                        _ => return Err("err 0 bad flag".into()),
                    }
                }
                // SAFETY: valid C string; the descriptor is owned below.
                let fd = unsafe { libc::open(path.as_ptr(), flags) };
                if fd < 0 {
                    return Err(fail(errno()));
                }
                // SAFETY: a fresh descriptor nothing else owns.
                self.fds.insert(fd, unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(format!("ok {fd}"))
            }
            "close" => {
                let n: i32 = num(w.next())?;
                self.fds.remove(&n).ok_or_else(|| fail(libc::EBADF))?;
                Ok("ok".into())
            }
            "lock" => {
                let fd = self.fd(w.next())?;
                let c = w.next().unwrap_or("");
                let t = lock_type(w.next())?;
                let (s, l) = (num(w.next())?, num(w.next())?);
                fcntl_lock(fd, c, t, s, l).map_err(fail)?;
                Ok("ok".into())
            }
            "getlk" => {
                let fd = self.fd(w.next())?;
                let c = match w.next() {
                    Some("ofd") => "ofdget",
                    _ => "getlk",
                };
                let t = lock_type(w.next())?;
                let (s, l) = (num(w.next())?, num(w.next())?);
                let fl = fcntl_lock(fd, c, t, s, l).map_err(fail)?;
                let ty = match fl.l_type as i32 {
                    libc::F_RDLCK => "r",
                    libc::F_WRLCK => "w",
                    _ => "u",
                };
                Ok(format!("ok {ty} {} {} {}", fl.l_pid, fl.l_start, fl.l_len))
            }
            "forklock" => {
                let fd = self.fd(w.next())?;
                let c = w.next().unwrap_or("").to_string();
                let t = lock_type(w.next())?;
                let (s, l): (i64, i64) = (num(w.next())?, num(w.next())?);
                // SAFETY: the child only makes async-signal-safe calls and exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let code = match fcntl_lock(fd, &c, t, s, l) {
                        Ok(_) => 0,
                        Err(e) => e,
                    };
                    // SAFETY: leaves the child without running the parent's handlers.
                    unsafe { libc::_exit(code) };
                }
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                Ok(format!("ok {}", libc::WEXITSTATUS(status)))
            }
            "flock" => {
                let fd = self.fd(w.next())?;
                let mut op = match w.next() {
                    Some("sh") => libc::LOCK_SH,
                    Some("ex") => libc::LOCK_EX,
                    Some("un") => libc::LOCK_UN,
                    _ => return Err("err 0 bad flock op".into()),
                };
                if w.next() == Some("nb") {
                    op |= libc::LOCK_NB;
                }
                // SAFETY: plain system call on an owned descriptor.
                if unsafe { libc::flock(fd, op) } == -1 {
                    return Err(fail(errno()));
                }
                Ok("ok".into())
            }
            "read" => {
                let fd = self.fd(w.next())?;
                let (off, len): (i64, usize) = (num(w.next())?, num(w.next())?);
                let mut buf = vec![0u8; len];
                // SAFETY: `buf` is valid for `len` bytes.
                let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off) };
                if n < 0 {
                    return Err(fail(errno()));
                }
                Ok(format!("ok {n}"))
            }
            "write" => {
                let fd = self.fd(w.next())?;
                let off: i64 = num(w.next())?;
                let data = w.next().unwrap_or("").as_bytes().to_vec();
                // SAFETY: `data` is valid for its length.
                let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
                if n < 0 {
                    return Err(fail(errno()));
                }
                Ok(format!("ok {n}"))
            }
            "truncate" => {
                let fd = self.fd(w.next())?;
                let len: i64 = num(w.next())?;
                // SAFETY: plain system call on an owned descriptor.
                if unsafe { libc::ftruncate(fd, len) } == -1 {
                    return Err(fail(errno()));
                }
                Ok("ok".into())
            }
            "fallocate" => {
                let fd = self.fd(w.next())?;
                let (off, len): (i64, i64) = (num(w.next())?, num(w.next())?);
                // SAFETY: plain system call on an owned descriptor.
                if unsafe { libc::fallocate(fd, 0, off, len) } == -1 {
                    return Err(fail(errno()));
                }
                Ok("ok".into())
            }
            "share" => {
                let fd = self.fd(w.next())?;
                let (a, d): (u32, u32) = (num(w.next())?, num(w.next())?);
                let access = share_reservations::ShareAccess::from_wire(a)
                    .ok_or_else(|| fail(libc::EINVAL))?;
                let deny = share_reservations::ShareDeny::from_wire(d)
                    .ok_or_else(|| fail(libc::EINVAL))?;
                // SAFETY: the descriptor is owned by `self.fds` for the call.
                let b = unsafe { BorrowedFd::borrow_raw(fd) };
                fuse_lockfs::set_share(b, access, deny)
                    .map_err(|e| fail(e.raw_os_error().unwrap_or(0)))?;
                Ok("ok".into())
            }
            "lvbget" | "lvbset" | "lvbinval" => {
                let fd = self.fd(w.next())?;
                // SAFETY: the descriptor is owned by `self.fds` for the call.
                let b = unsafe { BorrowedFd::borrow_raw(fd) };
                let r = match cmd {
                    "lvbget" => fuse_lockfs::lvb::get(b),
                    "lvbset" => fuse_lockfs::lvb::set(b, w.next().unwrap_or("").as_bytes()),
                    _ => fuse_lockfs::lvb::invalidate(b),
                }
                .map_err(|e| fail(e.raw_os_error().unwrap_or(0)))?;
                if cmd != "lvbget" {
                    return Ok(format!("ok {}", r.seq));
                }
                let end = r
                    .value
                    .iter()
                    .position(|&c| c == 0)
                    .unwrap_or(r.value.len());
                let text = String::from_utf8_lossy(&r.value[..end]).into_owned();
                Ok(format!(
                    "ok {} {} {} {}",
                    r.seq,
                    if r.valid { "valid" } else { "notvalid" },
                    if r.unlocked { "unlocked" } else { "locked" },
                    if text.is_empty() {
                        "-".to_string()
                    } else {
                        text
                    }
                ))
            }
            "forklvbset" => {
                let fd = self.fd(w.next())?;
                let text = w.next().unwrap_or("").to_string();
                // SAFETY: the child makes one ioctl and exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: the inherited descriptor is open in the child.
                    let b = unsafe { BorrowedFd::borrow_raw(fd) };
                    let code = match fuse_lockfs::lvb::set(b, text.as_bytes()) {
                        Ok(_) => 0,
                        Err(e) => e.raw_os_error().unwrap_or(1),
                    };
                    // SAFETY: leaves the child without running the parent's handlers.
                    unsafe { libc::_exit(code) };
                }
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                Ok(format!("ok {}", libc::WEXITSTATUS(status)))
            }
            "lvbcount" => {
                let fd = self.fd(w.next())?;
                let n: u64 = num(w.next())?;
                // SAFETY: the descriptor is owned by `self.fds` for the call.
                let b = unsafe { BorrowedFd::borrow_raw(fd) };
                let io = |e: std::io::Error| fail(e.raw_os_error().unwrap_or(0));
                for _ in 0..n {
                    fcntl_lock(fd, "setlkw", libc::F_WRLCK as i16, 0, 0).map_err(fail)?;
                    let r = fuse_lockfs::lvb::get(b).map_err(io)?;
                    let mut c = [0u8; 8];
                    c.copy_from_slice(&r.value[..8]);
                    let next = u64::from_le_bytes(c) + 1;
                    fuse_lockfs::lvb::set(b, &next.to_le_bytes()).map_err(io)?;
                    fcntl_lock(fd, "setlk", libc::F_UNLCK as i16, 0, 0).map_err(fail)?;
                }
                Ok("ok".into())
            }
            "exit" => std::process::exit(0),
            "mmap" => {
                let fd = self.fd(w.next())?;
                // SAFETY: a fresh mapping, unmapped at once.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(fail(errno()));
                }
                // SAFETY: `p` is the mapping made above.
                unsafe { libc::munmap(p, 4096) };
                Ok("ok".into())
            }
            _ => Err("err 0 unknown command".into()),
        }
    }
}

fn main() {
    // SAFETY: installs a handler that does nothing, without SA_RESTART.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let mut ctl = Ctl {
        fds: HashMap::new(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = ctl.run(line.trim()).unwrap_or_else(|e| e);
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}
