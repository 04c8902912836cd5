/*
 * The kernel-client guest's tests, run by the guest's init after the network and statd
 * are up: kguest SERVER EXPORT MOUNTPOINT [MODE].
 *
 * MODE "locks" (the default) runs the lock tests below; "dd" times the kernel client's
 * sequential I/O (see test_dd); "failover" holds a lock through a service group's server
 * ID while run.sh moves the group to another node (see test_failover).
 *
 * It mounts SERVER:EXPORT with NFSv3 through mount(2) (the kernel then asks the server's
 * portmapper for MOUNT, NFS and later NLM), and runs, in order: file operations, F_SETLK,
 * F_SETLKW and flock among the guest's own processes, then the tests that meet a local
 * process on the server (scripts/kclient/hostside.py), which talk to it through marker
 * files in the export root (no attribute or lookup caching, so both sides see them):
 *   xdoor   the server holds a lock on "xdoor": F_SETLK fails with EAGAIN; F_SETLKW is
 *           granted once the server unlocks (it does so 2 s after "xdoor.waiting").
 *   reverse the guest locks "rev" and creates "rev.held"; the server tries F_SETLK on its
 *           FUSE mount and writes what happened into "rev.result".
 *   mand    "mand" is a mandatory file the server holds locked: a write into it waits
 *           (the server answers JUKEBOX) and lands after the server unlocks (3 s after
 *           "mand.writing").
 *   srvhold another NLM client on the server side (hostside.py, from the server's own
 *           address) holds "hold": F_GETLK reports its lock (NLM TEST), F_SETLK fails
 *           with EAGAIN (DENIED), F_SETLKW blocks until interrupted (BLOCKED, then
 *           CANCEL); a second F_SETLKW is granted through the GRANTED callback soon after
 *           the guest creates "hold.release" and the holder unlocks.
 *   restart the guest locks "restart" and creates "restart.held"; run.sh kills the daemon
 *           with SIGKILL and starts it again; the guest's kernel reclaims the lock after
 *           the new daemon's SM_NOTIFY, and run.sh writes "RECLAIMED" into
 *           "restart.result" once `lockfs locks` lists the lock again.
 * Every result is one console line: "KC <test> ok|FAIL <detail>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *mnt;
static const char *current = "start";
static int failures;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void result(const char *test, int ok, const char *fmt, ...)
{
	va_list ap;
	printf("KC %s %s ", test, ok ? "ok" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!ok)
		failures++;
}

static void on_alarm(int sig)
{
	(void)sig;
	/* Only async-signal-safe calls here. */
	char msg[128];
	int n = snprintf(msg, sizeof msg, "KC %s FAIL timed out\n", current);
	if (write(1, msg, n) < 0)
		_exit(3);
	_exit(2);
}

static void limit(const char *test, unsigned secs)
{
	current = test;
	alarm(secs);
}

static char *at(const char *name)
{
	static char buf[8][512];
	static int i;
	i = (i + 1) % 8;
	snprintf(buf[i], sizeof buf[i], "%s/%s", mnt, name);
	return buf[i];
}

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	return fcntl(fd, cmd, &fl);
}

static int touch(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT, 0666);
	if (fd < 0)
		return -1;
	return close(fd);
}

/* Waits for a child and returns its exit status (or -1 if it did not exit normally). */
static int reap(pid_t pid)
{
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static int do_mount(const char *server, const char *export, int markers)
{
	char src[512], opts[256];
	snprintf(src, sizeof src, "%s:%s", server, export);
	/* noac and lookupcache=none: the marker files must be seen as soon as they exist.
	 * noac also makes every write synchronous, so the I/O timing mounts without it. */
	snprintf(opts, sizeof opts, "vers=3,proto=tcp%s,addr=%s", markers ? ",noac,lookupcache=none" : "", server);
	limit("mount", 60);
	double t0 = now();
	if (mount(src, mnt, "nfs", 0, opts) != 0) {
		result("mount", 0, "mount -t nfs -o %s %s: %s", opts, src, strerror(errno));
		return -1;
	}
	result("mount", 1, "mount -t nfs -o %s %s in %.2fs", opts, src, now() - t0);
	return 0;
}

static void test_files(void)
{
	limit("files", 60);
	char *dir = at("kc-files");
	char buf[70000], back[70000];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = 'a' + (i * 7) % 26;
	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		result("files", 0, "mkdir %s: %s", dir, strerror(errno));
		return;
	}
	char a[600], b[600], keep[600];
	snprintf(a, sizeof a, "%s/a", dir);
	snprintf(b, sizeof b, "%s/b", dir);
	snprintf(keep, sizeof keep, "%s/keep", dir);
	int fd = open(a, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf || close(fd) != 0) {
		result("files", 0, "create/write %s: %s", a, strerror(errno));
		return;
	}
	if (rename(a, b) != 0) {
		result("files", 0, "rename: %s", strerror(errno));
		return;
	}
	struct stat st;
	if (stat(a, &st) == 0 || errno != ENOENT) {
		result("files", 0, "old name still there after rename");
		return;
	}
	fd = open(b, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, back, sizeof back);
	if (n != (ssize_t)sizeof buf || memcmp(buf, back, sizeof buf) != 0) {
		result("files", 0, "read back %zd bytes, contents %s", n, n > 0 ? "differ" : strerror(errno));
		return;
	}
	close(fd);
	if (fstatat(AT_FDCWD, b, &st, 0) != 0 || st.st_size != (off_t)sizeof buf) {
		result("files", 0, "size %lld after write", (long long)st.st_size);
		return;
	}
	if (unlink(b) != 0 || (stat(b, &st) == 0 || errno != ENOENT)) {
		result("files", 0, "remove: %s", strerror(errno));
		return;
	}
	fd = open(keep, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, "written by the kernel client\n", 29) != 29 || close(fd) != 0) {
		result("files", 0, "write keep: %s", strerror(errno));
		return;
	}
	result("files", 1, "mkdir, create, write and read back %zu bytes, rename, remove", sizeof buf);
}

/*
 * A file the server wrote just before the guest booted, so that it is in the server's
 * page cache and in none of the guest's: read whole, it comes in READs large enough to be
 * sent from the server's page cache, and its length needs XDR padding. Byte i is
 * 'a' + (i * 7) % 26.
 */
static void test_served(void)
{
	enum { SERVED = 300001 };
	static char back[SERVED + 4096];
	limit("served", 60);
	int fd = open(at("served"), O_RDONLY);
	if (fd < 0) {
		result("served", 0, "open: %s", strerror(errno));
		return;
	}
	size_t got = 0;
	ssize_t n;
	while (got < sizeof back && (n = read(fd, back + got, sizeof back - got)) > 0)
		got += (size_t)n;
	int err = n < 0 ? errno : 0;
	close(fd);
	if (err) {
		result("served", 0, "read after %zu bytes: %s", got, strerror(err));
		return;
	}
	size_t bad = got;
	for (size_t i = 0; i < got && i < SERVED; i++) {
		if (back[i] != 'a' + (char)((i * 7) % 26)) {
			bad = i;
			break;
		}
	}
	result("served", got == SERVED && bad == got, "read %zu bytes of %d%s", got, (int)SERVED,
	       bad == got ? ", all as the server wrote them" : ", differing");
}

static void test_setlk(void)
{
	limit("setlk", 60);
	int fd = open(at("kc-setlk"), O_RDWR | O_CREAT, 0666);
	if (fd < 0 || lock(fd, F_SETLK, F_WRLCK, 0, 100) != 0) {
		result("setlk", 0, "F_SETLK: %s", strerror(errno));
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		alarm(30);
		int f = open(at("kc-setlk"), O_RDWR);
		if (lock(f, F_SETLK, F_WRLCK, 50, 10) == 0 || (errno != EAGAIN && errno != EACCES))
			_exit(1);
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10 };
		if (fcntl(f, F_GETLK, &fl) != 0 || fl.l_type != F_WRLCK)
			_exit(2);
		_exit(0);
	}
	int first = reap(pid);
	if (lock(fd, F_SETLK, F_UNLCK, 0, 0) != 0) {
		result("setlk", 0, "unlock: %s", strerror(errno));
		return;
	}
	pid = fork();
	if (pid == 0) {
		alarm(30);
		int f = open(at("kc-setlk"), O_RDWR);
		_exit(lock(f, F_SETLK, F_WRLCK, 50, 10) == 0 && lock(f, F_SETLK, F_UNLCK, 0, 0) == 0 ? 0 : 1);
	}
	int second = reap(pid);
	close(fd);
	result("setlk", first == 0 && second == 0,
	       "granted, conflicting F_SETLK refused and seen by F_GETLK (child %d), granted after unlock (child %d)",
	       first, second);
}

static void test_setlkw(int use_flock)
{
	const char *name = use_flock ? "flock" : "setlkw";
	limit(name, 60);
	int fd = open(at(use_flock ? "kc-flock" : "kc-setlkw"), O_RDWR | O_CREAT, 0666);
	int r = use_flock ? flock(fd, LOCK_EX) : lock(fd, F_SETLKW, F_WRLCK, 0, 0);
	if (fd < 0 || r != 0) {
		result(name, 0, "first lock: %s", strerror(errno));
		return;
	}
	int p[2];
	if (pipe(p) != 0)
		return;
	pid_t pid = fork();
	if (pid == 0) {
		alarm(30);
		close(p[0]);
		int f = open(at(use_flock ? "kc-flock" : "kc-setlkw"), O_RDWR);
		int nb = use_flock ? flock(f, LOCK_EX | LOCK_NB) : lock(f, F_SETLK, F_WRLCK, 0, 0);
		if (nb == 0 || (errno != EWOULDBLOCK && errno != EACCES))
			_exit(1);
		double t0 = now();
		if (write(p[1], "w", 1) != 1)
			_exit(2);
		int w = use_flock ? flock(f, LOCK_EX) : lock(f, F_SETLKW, F_WRLCK, 0, 0);
		double waited = now() - t0;
		if (w != 0)
			_exit(3);
		if (write(p[1], &waited, sizeof waited) != sizeof waited)
			_exit(4);
		_exit(use_flock ? flock(f, LOCK_UN) : lock(f, F_SETLK, F_UNLCK, 0, 0));
	}
	close(p[1]);
	char c;
	double waited = -1;
	if (read(p[0], &c, 1) == 1) {
		sleep(1);
		r = use_flock ? flock(fd, LOCK_UN) : lock(fd, F_SETLK, F_UNLCK, 0, 0);
		if (read(p[0], &waited, sizeof waited) != sizeof waited)
			waited = -1;
	}
	int st = reap(pid);
	close(p[0]);
	close(fd);
	result(name, st == 0 && r == 0 && waited >= 0.9,
	       "held; non-blocking attempt refused; blocked waiter granted after %.2fs, when the holder released (child %d)",
	       waited, st);
}

/* Waits until PATH exists (up to SECS seconds). */
static int await(const char *path, double secs)
{
	double end = now() + secs;
	struct stat st;
	while (now() < end) {
		if (stat(path, &st) == 0)
			return 0;
		usleep(50000);
	}
	return -1;
}

static void test_xdoor(void)
{
	limit("xdoor", 90);
	int fd = open(at("xdoor"), O_RDWR);
	if (fd < 0) {
		result("xdoor-setlk", 0, "open xdoor: %s", strerror(errno));
		return;
	}
	int r = lock(fd, F_SETLK, F_WRLCK, 0, 0);
	int e = errno;
	result("xdoor-setlk", r != 0 && (e == EAGAIN || e == EACCES),
	       "F_SETLK against the server-side holder: %s", r == 0 ? "granted (wrong)" : strerror(e));
	if (r == 0)
		lock(fd, F_SETLK, F_UNLCK, 0, 0);
	double t0 = now();
	if (touch(at("xdoor.waiting")) != 0) {
		result("xdoor-setlkw", 0, "marker: %s", strerror(errno));
		return;
	}
	r = lock(fd, F_SETLKW, F_WRLCK, 0, 0);
	double waited = now() - t0;
	e = errno;
	touch(at("xdoor.granted"));
	/* The server unlocks 2 s after it sees the marker; without the GRANTED callback the
	 * client would only learn of it when it polls again, 30 s later. */
	result("xdoor-setlkw", r == 0 && waited >= 1.5 && waited < 12,
	       "F_SETLKW %s after %.2fs (the server unlocks 2 s after the marker)", r == 0 ? "granted" : strerror(e),
	       waited);
	lock(fd, F_SETLK, F_UNLCK, 0, 0);
	close(fd);
}

static void test_reverse(void)
{
	limit("reverse", 90);
	int fd = open(at("rev"), O_RDWR | O_CREAT, 0666);
	if (fd < 0 || lock(fd, F_SETLK, F_WRLCK, 0, 0) != 0) {
		result("reverse", 0, "guest lock on rev: %s", strerror(errno));
		return;
	}
	touch(at("rev.held"));
	char buf[64] = { 0 };
	if (await(at("rev.result"), 60) == 0) {
		int rf = open(at("rev.result"), O_RDONLY);
		if (rf >= 0) {
			if (read(rf, buf, sizeof buf - 1) < 0)
				buf[0] = 0;
			close(rf);
		}
	}
	buf[strcspn(buf, "\n")] = 0;
	result("reverse", strcmp(buf, "EAGAIN") == 0, "local F_SETLK on the server's FUSE mount while the guest holds: %s",
	       buf[0] ? buf : "no answer from the server");
	lock(fd, F_SETLK, F_UNLCK, 0, 0);
	close(fd);
	touch(at("rev.unlocked"));
}

static void test_mand(void)
{
	limit("mand", 90);
	struct stat st;
	if (stat(at("mand"), &st) != 0 || (st.st_mode & (S_ISGID | S_IXGRP)) != S_ISGID) {
		result("mand", 0, "mand missing or not a mandatory file");
		return;
	}
	int fd = open(at("mand"), O_RDWR);
	if (fd < 0) {
		result("mand", 0, "open: %s", strerror(errno));
		return;
	}
	touch(at("mand.writing"));
	double t0 = now();
	if (pwrite(fd, "guest", 5, 0) != 5) {
		result("mand", 0, "pwrite: %s", strerror(errno));
		return;
	}
	int r = fsync(fd);
	double waited = now() - t0;
	int e = errno;
	close(fd);
	char buf[16] = { 0 };
	fd = open(at("mand"), O_RDONLY);
	int landed = fd >= 0 && pread(fd, buf, 5, 0) == 5 && memcmp(buf, "guest", 5) == 0;
	if (fd >= 0)
		close(fd);
	/* The server unlocks 3 s after the marker. */
	result("mand", r == 0 && landed && waited >= 2.0,
	       "write into the locked range: fsync %s after %.2fs, data %s", r == 0 ? "returned" : strerror(e), waited,
	       landed ? "on the server" : "missing");
}

/* Holds a write lock on NAME, creates NAME.held and waits up to WAIT seconds for the
 * server side to write its verdict into NAME.result ("RECLAIMED" once the server lists
 * the lock again after what it did to itself); then unlocks. */
static void held_through(const char *name, unsigned limit_s, unsigned wait_s, const char *what)
{
	char held[64], result_file[64];
	snprintf(held, sizeof held, "%s.held", name);
	snprintf(result_file, sizeof result_file, "%s.result", name);
	limit(name, limit_s);
	int fd = open(at(name), O_RDWR | O_CREAT, 0666);
	if (fd < 0 || lock(fd, F_SETLK, F_WRLCK, 0, 0) != 0) {
		result(name, 0, "guest lock on %s: %s", name, strerror(errno));
		return;
	}
	touch(at(held));
	char buf[64] = { 0 };
	if (await(at(result_file), wait_s) == 0) {
		int rf = open(at(result_file), O_RDONLY);
		if (rf >= 0) {
			if (read(rf, buf, sizeof buf - 1) < 0)
				buf[0] = 0;
			close(rf);
		}
	}
	buf[strcspn(buf, "\n")] = 0;
	int r = lock(fd, F_SETLK, F_UNLCK, 0, 0);
	result(name, strcmp(buf, "RECLAIMED") == 0 && r == 0, "%s while the guest held a lock: %s; unlock %s", what,
	       buf[0] ? buf : "no answer", r == 0 ? "ok" : strerror(errno));
	close(fd);
}

static void test_restart(void)
{
	held_through("restart", 150, 120, "server killed and restarted");
}

static void ignore_alarm(int sig)
{
	(void)sig;
}

static void test_srvhold(void)
{
	limit("srvhold", 120);
	int fd = -1;
	/* The holder takes its lock before the guest boots; give it a moment all the same. */
	struct flock fl = { .l_type = F_UNLCK };
	for (int i = 0; i < 100; i++) {
		if (fd < 0)
			fd = open(at("hold"), O_RDWR);
		memset(&fl, 0, sizeof fl);
		fl.l_type = F_WRLCK;
		fl.l_whence = SEEK_SET;
		if (fd >= 0 && fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
			break;
		usleep(100000);
	}
	if (fd < 0) {
		result("srvhold-getlk", 0, "open hold: %s", strerror(errno));
		return;
	}
	result("srvhold-getlk", fl.l_type == F_WRLCK && fl.l_start == 0 && fl.l_len == 0,
	       "F_GETLK reports type=%c start=%lld len=%lld pid=%d",
	       fl.l_type == F_WRLCK ? 'W' : fl.l_type == F_RDLCK ? 'R' : 'U', (long long)fl.l_start,
	       (long long)fl.l_len, (int)fl.l_pid);
	int r = lock(fd, F_SETLK, F_WRLCK, 0, 0);
	int e = errno;
	result("srvhold-setlk", r != 0 && (e == EAGAIN || e == EACCES), "F_SETLK against the other NLM host: %s",
	       r == 0 ? "granted (wrong)" : strerror(e));
	if (r == 0)
		lock(fd, F_SETLK, F_UNLCK, 0, 0);

	/* A blocked F_SETLKW interrupted by a signal: the kernel sends CANCEL. */
	pid_t pid = fork();
	if (pid == 0) {
		struct sigaction sa = { .sa_handler = ignore_alarm };
		sigaction(SIGALRM, &sa, NULL);
		int f = open(at("hold"), O_RDWR);
		alarm(3);
		double t0 = now();
		int w = lock(f, F_SETLKW, F_WRLCK, 0, 0);
		int we = errno;
		alarm(0);
		printf("KC_INFO srvhold interrupted F_SETLKW: %s after %.2fs\n", w == 0 ? "granted" : strerror(we),
		       now() - t0);
		_exit(w != 0 && we == EINTR ? 0 : 1);
	}
	int st = reap(pid);
	result("srvhold-setlkw", st == 0, "F_SETLKW blocked until interrupted by SIGALRM after 3 s (child %d)", st);

	/* Ask the holder to let go while a second F_SETLKW waits: GRANTED callback. */
	int p[2];
	if (pipe(p) != 0)
		return;
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		alarm(60);
		int f = open(at("hold"), O_RDWR);
		if (write(p[1], "w", 1) != 1)
			_exit(2);
		int w = lock(f, F_SETLKW, F_WRLCK, 0, 0);
		double t1 = now();
		if (w != 0)
			_exit(3);
		if (write(p[1], &t1, sizeof t1) != sizeof t1)
			_exit(4);
		_exit(lock(f, F_SETLK, F_UNLCK, 0, 0) == 0 ? 0 : 5);
	}
	close(p[1]);
	char c;
	double asked = 0, granted = -1;
	if (read(p[0], &c, 1) == 1) {
		usleep(500000); /* let the waiter block first */
		asked = now();
		touch(at("hold.release"));
		if (read(p[0], &granted, sizeof granted) != sizeof granted)
			granted = -1;
	}
	st = reap(pid);
	close(p[0]);
	close(fd);
	/* The client polls a blocked lock again only after 30 s: a grant this soon came by
	 * the server's GRANTED callback. */
	result("srvhold-granted", st == 0 && granted > 0 && granted - asked < 10,
	       "blocked F_SETLKW granted %.2fs after asking the holder to release (child %d)",
	       granted > 0 ? granted - asked : -1.0, st);
}

/* Runs busybox dd with ARGS (NULL-terminated) and returns the seconds it took, or -1. */
static double timed_dd(char *const args[])
{
	double t0 = now();
	pid_t pid = fork();
	if (pid == 0) {
		execv("/bin/dd", args);
		_exit(127);
	}
	int st = reap(pid);
	return st == 0 ? now() - t0 : -1;
}

/* The kernel client's sequential I/O, for scale (qemu TCG: not a figure of the server
 * alone): dd of 64 MiB in 1 MiB blocks onto the mount, flushed to the server before dd
 * ends, then read back after the guest dropped its page cache. */
static void test_dd(void)
{
	limit("dd", 600);
	char of[600], in[600];
	snprintf(of, sizeof of, "of=%s", at("dd.bin"));
	snprintf(in, sizeof in, "if=%s", at("dd.bin"));
	char *wr[] = { "dd", "if=/dev/zero", of, "bs=1M", "count=64", "conv=fsync", NULL };
	double w = timed_dd(wr);
	result("dd-write", w > 0, "64 MiB in %.2fs: %.1f MiB/s", w, w > 0 ? 64 / w : 0.0);
	sync();
	int dc = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (dc < 0 || write(dc, "3\n", 2) != 2) {
		result("dd-read", 0, "drop_caches: %s", strerror(errno));
		return;
	}
	close(dc);
	char *rd[] = { "dd", in, "of=/dev/null", "bs=1M", NULL };
	double r = timed_dd(rd);
	result("dd-read", r > 0, "64 MiB in %.2fs: %.1f MiB/s", r, r > 0 ? 64 / r : 0.0);
	unlink(at("dd.bin"));
}

/* The failover test: the guest locks "failover" through the group's server ID and
 * creates "failover.held"; run.sh kills node A, moves the address to node B and brings
 * the group online there; B's SM_NOTIFY makes the guest's kernel reclaim the lock, and
 * run.sh writes "RECLAIMED" into "failover.result" once B's `lockfs locks` lists it. */
static void test_failover(void)
{
	held_through("failover", 200, 180, "node killed and the group moved");
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		printf("KC kguest FAIL usage: kguest SERVER EXPORT MOUNTPOINT [locks|dd|failover]\n");
		return 2;
	}
	const char *mode = argc == 5 ? argv[4] : "locks";
	if (strcmp(mode, "locks") != 0 && strcmp(mode, "dd") != 0 && strcmp(mode, "failover") != 0) {
		printf("KC kguest FAIL unknown mode %s\n", mode);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	mnt = argv[3];
	struct sigaction sa = { .sa_handler = on_alarm };
	sigaction(SIGALRM, &sa, NULL);
	if (do_mount(argv[1], argv[2], strcmp(mode, "dd") != 0) != 0)
		return 1;
	if (strcmp(mode, "dd") == 0) {
		test_dd();
	} else if (strcmp(mode, "failover") == 0) {
		test_failover();
	} else {
		test_files();
		test_served();
		test_setlk();
		test_setlkw(0);
		test_setlkw(1);
		test_xdoor();
		test_reverse();
		test_mand();
		test_srvhold();
		test_restart();
	}
	alarm(0);
	printf("KC_DONE failures=%d\n", failures);
	return failures ? 1 : 0;
}
