/*
 * What an NFS CREATE+REMOVE pair costs the file system, and how much of the
 * unlink is the freeing of the file: the system calls lockfs's NFS door makes
 * for a pair, in a loop, on one thread, with the REMOVE done two ways:
 *
 *   stat    fstatat the name, then unlinkat it: the unlink frees the file
 *           (lockfs before 466d4af);
 *   held    open the name O_PATH and fstat it, unlinkat it, then close the
 *           descriptor, which frees the file (timed apart: lockfs leaves this
 *           close to a thread of its own).
 *
 * Prints the microseconds per pair of each step, for each way.
 *
 * Build: cc -O2 -o unlink-cost scripts/unlink-cost.c
 * Run:   ./unlink-cost DIR [PAIRS]     (DIR on the file system to measure;
 *        16 names c-0 .. c-15 are created and removed in it)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int run(int dir, long pairs, int held)
{
    double create = 0, look = 0, unlink_ = 0, close_ = 0;
    char name[32];
    struct stat st;
    for (long i = 0; i < pairs; i++) {
        snprintf(name, sizeof name, "c-%ld", i % 16);
        double t0 = now();
        int f = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_CREAT | O_EXCL, 0644);
        if (f < 0) {
            perror(name);
            return 1;
        }
        fstat(f, &st);
        close(f);
        double t1 = now();
        int h = -1;
        if (held) {
            h = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
            fstat(h, &st);
        } else {
            fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW);
        }
        double t2 = now();
        if (unlinkat(dir, name, 0) != 0) {
            perror(name);
            return 1;
        }
        double t3 = now();
        if (h >= 0)
            close(h);
        double t4 = now();
        create += t1 - t0;
        look += t2 - t1;
        unlink_ += t3 - t2;
        close_ += t4 - t3;
    }
    printf("%-5s create %5.1f  %-9s %4.1f  unlink %5.1f  close %5.1f  us per pair\n",
           held ? "held" : "stat", create / pairs * 1e6, held ? "open+fstat" : "fstatat",
           look / pairs * 1e6, unlink_ / pairs * 1e6, close_ / pairs * 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [PAIRS]\n", argv[0]);
        return 2;
    }
    int dir = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        perror(argv[1]);
        return 1;
    }
    long pairs = argc > 2 ? atol(argv[2]) : 50000;
    /* Alternating, three rounds each: the machine's speed drifts. */
    for (int round = 0; round < 3; round++)
        if (run(dir, pairs, 0) || run(dir, pairs, 1))
            return 1;
    return 0;
}
