/*
 * Guest test for a kernel-client harness: a write by the Linux NFS client into a range
 * of a mandatory file (set-group-ID on, group-execute off) that a local process on the
 * server holds locked. lockfs answers the WRITE with NFS3ERR_JUKEBOX while the lock is
 * held; the client keeps the data and retries, so fsync() returns only after the local
 * lock is released, and the data is then on the server.
 *
 * Arguments: WORKDIR MOUNTPOINT. The server-side holder must lock MOUNTPOINT/mand for a
 * while before this runs (see scripts/kclient-lockfs.sh).
 * Prints: KTEST mandwrite ok|FAIL|SKIP detail
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		printf("KTEST mandwrite FAIL usage: mandwrite WORKDIR MOUNTPOINT\n");
		return 1;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/mand", argv[2]);
	struct stat st;
	if (stat(path, &st) != 0 || (st.st_mode & (S_ISGID | S_IXGRP)) != S_ISGID) {
		printf("KTEST mandwrite SKIP %s missing or not mandatory (no server-side holder)\n", path);
		return 0;
	}
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		printf("KTEST mandwrite FAIL open: %s\n", strerror(errno));
		return 1;
	}
	if (fcntl(fd, F_GETLK, &fl) != 0 || fl.l_type == F_UNLCK) {
		printf("KTEST mandwrite SKIP nobody holds a lock on %s\n", path);
		return 0;
	}
	double t0 = now();
	if (pwrite(fd, "guest", 5, 0) != 5) {
		printf("KTEST mandwrite FAIL pwrite: %s\n", strerror(errno));
		return 1;
	}
	alarm(120);
	int r = fsync(fd);
	double waited = now() - t0;
	if (r != 0) {
		printf("KTEST mandwrite FAIL fsync after %.2fs: %s\n", waited, strerror(errno));
		return 1;
	}
	close(fd);
	/* Read it back through a fresh open (close-to-open: from the server). */
	char buf[8] = { 0 };
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, buf, 5, 0) != 5 || memcmp(buf, "guest", 5) != 0) {
		printf("KTEST mandwrite FAIL data not on the server after fsync\n");
		return 1;
	}
	close(fd);
	if (waited < 2.0) {
		printf("KTEST mandwrite FAIL fsync returned after %.2fs while the region was locked\n", waited);
		return 1;
	}
	printf("KTEST mandwrite ok write into the locked region waited %.2fs (JUKEBOX retries), then landed\n", waited);
	return 0;
}
