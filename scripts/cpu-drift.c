/*
 * How steady this machine's CPUs are: a fixed busy loop, counted for half a second
 * once a second, on whatever CPU the caller pins it to. On a quiet machine of fixed
 * speed every line is about the same; on a shared virtual machine it shows how far
 * the speed of one CPU moves from second to second, which no benchmark of two
 * programs run one after the other can tell apart from a difference between them.
 *
 *   cc -O1 -o cpu-drift scripts/cpu-drift.c
 *   taskset -c 1 ./cpu-drift 30          # 30 samples of CPU 1
 *
 * Prints one line per sample: its number and the loop's count.
 */
#include <stdio.h>
#include <stdlib.h>
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
    int samples = argc > 1 ? atoi(argv[1]) : 30;
    for (int s = 0; s < samples; s++) {
        double start = now();
        volatile unsigned long sink = 0;
        long rounds = 0;
        while (now() - start < 0.5) {
            for (int i = 0; i < 100000; i++)
                sink += (unsigned long)i * i;
            rounds++;
        }
        printf("%2d %ld\n", s, rounds);
        fflush(stdout);
        sleep(1);
    }
    return 0;
}
