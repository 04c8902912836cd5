/*
 * nlm-bench: an NLM v4 load client built on libnfs, independent of lockfs's
 * own RPC code, so the same client measures lockfs and any other NLM server.
 *
 * Each of N clients owns one TCP connection, one host name, one lock owner
 * and its own byte range of the file, and repeats LOCK (exclusive,
 * non-blocking) followed by UNLOCK for the given number of seconds. With
 * --null it sends two NLM NULL calls instead of LOCK+UNLOCK: the transport
 * floor of one pair. Prints one line:
 *   label clients pairs seconds pairs_per_s p50_us p99_us errors
 * With --compare (one client) it alternates quarter-second rounds of
 * LOCK+UNLOCK and of two NULL calls on the same connection and prints
 *   compare label rounds N pairs_per_s X null_pairs_per_s Y ratio R
 * where R is the median over adjacent rounds of (time of a pair) / (time of
 * two NULL calls): both sides measured under the same load, even when the
 * machine's speed drifts between seconds.
 *
 * Build: cc -O2 -o nlm-bench scripts/nlm-bench.c -lnfs
 * Usage: nlm-bench --server 127.0.0.1 [--port P] (--fh HEX | --mount EXPORT:PATH)
 *                  [--clients N] [--seconds S] [--null | --compare] [--label L]
 */
#include <sys/time.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nlm.h>

#define MAX_CLIENTS 256
#define MAX_SAMPLES (1 << 22)

struct nfs_fh_opaque { int len; char *val; };

enum phase { CONNECTING, IDLE, LOCKING, UNLOCKING, NULL1, NULL2, FAILED };

struct client {
    int id;
    struct rpc_context *rpc;
    enum phase phase;
    double started;
    char host[64];
    char oh[64];
    NLM4_LOCKargs lock;
    NLM4_UNLOCKargs unlock;
};

static unsigned char fh_bytes[1024];
static int fh_len;
static int null_mode;
static double deadline;
static double *samples;
static long nsamples;
static long errors;
static int connected;
#define MAX_ROUNDS 4096
static int compare_mode;
static double round_start;
static long round_count;
static double lock_rates[MAX_ROUNDS], null_rates[MAX_ROUNDS];
static int nlock_rounds, nnull_rounds;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void start_pair(struct client *c);

static void record(struct client *c)
{
    round_count++;
    if (nsamples < MAX_SAMPLES && !compare_mode)
        samples[nsamples++] = (now() - c->started) * 1e6;
}

static void on_unlock(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || ((NLM4_UNLOCKres *)data)->status != NLM4_GRANTED) {
        errors++;
    } else {
        record(c);
    }
    c->phase = IDLE;
    start_pair(c);
}

static void on_lock(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    if (status != RPC_STATUS_SUCCESS || ((NLM4_LOCKres *)data)->status != NLM4_GRANTED) {
        errors++;
        if (status == RPC_STATUS_SUCCESS)
            fprintf(stderr, "client %d: LOCK status %d\n", c->id, ((NLM4_LOCKres *)data)->status);
        c->phase = IDLE;
        start_pair(c);
        return;
    }
    c->phase = UNLOCKING;
    if (rpc_nlm4_unlock_async(rpc, on_unlock, &c->unlock, c) != 0) {
        c->phase = FAILED;
        errors++;
    }
}

static void on_null(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    (void)data;
    if (status != RPC_STATUS_SUCCESS) {
        errors++;
        c->phase = IDLE;
        start_pair(c);
        return;
    }
    if (c->phase == NULL1) {
        c->phase = NULL2;
        if (rpc_nlm4_null_async(rpc, on_null, c) != 0) {
            c->phase = FAILED;
            errors++;
        }
        return;
    }
    record(c);
    c->phase = IDLE;
    start_pair(c);
}

static void start_pair(struct client *c)
{
    if (c->phase == FAILED || now() >= deadline)
        return;
    if (compare_mode && now() >= round_start + 0.25) {
        double rate = round_count / (now() - round_start);
        if (null_mode && nnull_rounds < MAX_ROUNDS)
            null_rates[nnull_rounds++] = rate;
        else if (!null_mode && nlock_rounds < MAX_ROUNDS)
            lock_rates[nlock_rounds++] = rate;
        null_mode = !null_mode;
        round_start = now();
        round_count = 0;
    }
    c->started = now();
    if (null_mode) {
        c->phase = NULL1;
        if (rpc_nlm4_null_async(c->rpc, on_null, c) != 0) {
            c->phase = FAILED;
            errors++;
        }
        return;
    }
    c->phase = LOCKING;
    if (rpc_nlm4_lock_async(c->rpc, on_lock, &c->lock, c) != 0) {
        c->phase = FAILED;
        errors++;
    }
}

static void on_connect(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS) {
        fprintf(stderr, "client %d: connect failed: %s\n", c->id, data ? (char *)data : "?");
        c->phase = FAILED;
        return;
    }
    c->phase = IDLE;
    connected++;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int parse_hex(const char *s)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > sizeof(fh_bytes)) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        fh_bytes[i] = (unsigned char)(hi * 16 + lo);
    }
    fh_len = (int)(n / 2);
    return 0;
}

static int fh_from_mount(const char *server, const char *spec)
{
    char exp[512];
    const char *colon = strchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof(exp)) return -1;
    memcpy(exp, spec, colon - spec);
    exp[colon - spec] = 0;
    struct nfs_context *nfs = nfs_init_context();
    if (!nfs || nfs_mount(nfs, server, exp) != 0) {
        fprintf(stderr, "mount %s:%s failed: %s\n", server, exp, nfs ? nfs_get_error(nfs) : "no context");
        return -1;
    }
    struct nfsfh *f;
    if (nfs_open(nfs, colon + 1, O_RDWR, &f) != 0) {
        fprintf(stderr, "open %s failed: %s\n", colon + 1, nfs_get_error(nfs));
        return -1;
    }
    struct nfs_fh_opaque *fh = (struct nfs_fh_opaque *)nfs_get_fh(f);
    if (fh->len <= 0 || fh->len > (int)sizeof(fh_bytes)) return -1;
    memcpy(fh_bytes, fh->val, fh->len);
    fh_len = fh->len;
    nfs_close(nfs, f);
    nfs_destroy_context(nfs);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *server = "127.0.0.1", *label = "nlm", *fh_hex = NULL, *mount_spec = NULL;
    int port = 0, nclients = 1;
    double seconds = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--null")) { null_mode = 1; continue; }
        if (!strcmp(a, "--compare")) { compare_mode = 1; continue; }
        if (!v) { fprintf(stderr, "%s needs a value\n", a); return 2; }
        if (!strcmp(a, "--server")) server = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--fh")) fh_hex = v;
        else if (!strcmp(a, "--mount")) mount_spec = v;
        else if (!strcmp(a, "--clients")) nclients = atoi(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--label")) label = v;
        else { fprintf(stderr, "unknown option %s\n", a); return 2; }
        i++;
    }
    if (nclients < 1 || nclients > MAX_CLIENTS) { fprintf(stderr, "1..%d clients\n", MAX_CLIENTS); return 2; }
    if (compare_mode && (null_mode || nclients != 1)) { fprintf(stderr, "--compare takes one client and no --null\n"); return 2; }
    if (!null_mode) {
        if (fh_hex ? parse_hex(fh_hex) : mount_spec ? fh_from_mount(server, mount_spec) : -1) {
            fprintf(stderr, "need a valid --fh HEX or --mount EXPORT:PATH\n");
            return 2;
        }
    }
    samples = calloc(MAX_SAMPLES, sizeof(double));
    struct client *cl = calloc(nclients, sizeof(struct client));
    if (!samples || !cl) return 1;
    for (int i = 0; i < nclients; i++) {
        struct client *c = &cl[i];
        c->id = i;
        c->rpc = rpc_init_context();
        snprintf(c->host, sizeof(c->host), "bench-client-%d", i);
        snprintf(c->oh, sizeof(c->oh), "bench-%d-owner-%d", (int)getpid(), i);
        nlm4_lock *l = &c->lock.lock;
        l->caller_name = c->host;
        l->fh.data.data_len = fh_len;
        l->fh.data.data_val = (char *)fh_bytes;
        l->oh = c->oh;
        l->svid = (u_int)(i + 1);
        l->l_offset = (uint64_t)i * 4096;
        l->l_len = 4096;
        c->lock.block = 0;
        c->lock.exclusive = 1;
        c->lock.reclaim = 0;
        c->lock.state = 1;
        c->unlock.lock = *l;
        int r = port ? rpc_connect_port_async(c->rpc, server, port, 100021, 4, on_connect, c)
                     : rpc_connect_program_async(c->rpc, server, 100021, 4, on_connect, c);
        if (r != 0) { fprintf(stderr, "connect: %s\n", rpc_get_error(c->rpc)); return 1; }
    }
    struct pollfd *pfd = calloc(nclients, sizeof(struct pollfd));
    double connect_deadline = now() + 10;
    int started = 0;
    double t0 = 0;
    for (;;) {
        if (!started && connected == nclients) {
            started = 1;
            t0 = now();
            deadline = t0 + seconds;
            round_start = t0;
            for (int i = 0; i < nclients; i++) start_pair(&cl[i]);
        }
        if (!started && now() > connect_deadline) { fprintf(stderr, "connect timed out\n"); return 1; }
        if (started && now() >= deadline) {
            int busy = 0;
            for (int i = 0; i < nclients; i++)
                if (cl[i].phase != IDLE && cl[i].phase != FAILED) busy = 1;
            if (!busy || now() > deadline + 5) break;
        }
        for (int i = 0; i < nclients; i++) {
            pfd[i].fd = rpc_get_fd(cl[i].rpc);
            pfd[i].events = rpc_which_events(cl[i].rpc);
            pfd[i].revents = 0;
        }
        if (poll(pfd, nclients, 100) < 0 && errno != EINTR) { perror("poll"); return 1; }
        for (int i = 0; i < nclients; i++) {
            if (rpc_service(cl[i].rpc, pfd[i].revents) < 0) {
                if (cl[i].phase != FAILED) {
                    fprintf(stderr, "client %d: %s\n", i, rpc_get_error(cl[i].rpc));
                    cl[i].phase = FAILED;
                    errors++;
                }
            }
        }
    }
    double elapsed = now() - t0;
    if (compare_mode) {
        int n = nlock_rounds < nnull_rounds ? nlock_rounds : nnull_rounds;
        static double ratios[MAX_ROUNDS];
        for (int i = 0; i < n; i++)
            ratios[i] = null_rates[i] / lock_rates[i];
        qsort(ratios, n, sizeof(double), cmp_double);
        qsort(lock_rates, nlock_rounds, sizeof(double), cmp_double);
        qsort(null_rates, nnull_rounds, sizeof(double), cmp_double);
        printf("compare %s rounds %d pairs_per_s %.0f null_pairs_per_s %.0f ratio %.3f errors %ld\n", label, n,
               nlock_rounds ? lock_rates[nlock_rounds / 2] : 0, nnull_rounds ? null_rates[nnull_rounds / 2] : 0,
               n ? ratios[n / 2] : 0, errors);
        return n == 0 || errors > 0 ? 1 : 0;
    }
    qsort(samples, nsamples, sizeof(double), cmp_double);
    double p50 = nsamples ? samples[nsamples / 2] : 0;
    double p99 = nsamples ? samples[(long)(nsamples * 0.99)] : 0;
    printf("%s %d %ld %.2f %.0f %.1f %.1f %ld\n", label, nclients, nsamples, elapsed,
           nsamples / elapsed, p50, p99, errors);
    return errors > nsamples / 100 ? 1 : 0;
}
