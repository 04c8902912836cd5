/*
 * Drives the lock service with libnfs's raw NLM v4 and NSM calls (its own XDR code): two
 * lock owners of two client names on one connection to 127.0.0.1:PORT, a file handle
 * given in hex. Each result is printed on one line for the Rust test to check.
 */
#include <sys/time.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nlm.h>
#include <nfsc/libnfs-raw-nsm.h>

static int done;

static void wait_reply(struct rpc_context *rpc)
{
	while (!done) {
		struct pollfd p = { rpc_get_fd(rpc), rpc_which_events(rpc), 0 };
		if (poll(&p, 1, 5000) <= 0) {
			fprintf(stderr, "timeout waiting for the server\n");
			exit(3);
		}
		if (rpc_service(rpc, p.revents) < 0) {
			fprintf(stderr, "rpc_service: %s\n", rpc_get_error(rpc));
			exit(4);
		}
	}
	done = 0;
}

static void check(int status, struct rpc_context *rpc, const char *what)
{
	if (status != RPC_STATUS_SUCCESS) {
		fprintf(stderr, "%s failed: status %d: %s\n", what, status, rpc_get_error(rpc));
		exit(1);
	}
}

static void connected(struct rpc_context *rpc, int status, void *data, void *priv)
{
	(void)data;
	(void)priv;
	check(status, rpc, "connect");
	done = 1;
}

static void test_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	NLM4_TESTres *r = data;
	(void)priv;
	check(status, rpc, "NLM4_TEST");
	printf("TEST stat=%d", r->reply.status);
	if (r->reply.status == NLM4_DENIED) {
		nlm4_holder *h = &r->reply.nlm4_testreply_u.lock.holder;
		printf(" exclusive=%u svid=%u off=%llu len=%llu", h->exclusive, h->svid,
		       (unsigned long long)h->l_offset, (unsigned long long)h->l_len);
	}
	printf("\n");
	done = 1;
}

#define RES_CB(name, type, label)                                                     \
	static void name(struct rpc_context *rpc, int status, void *data, void *priv) \
	{                                                                             \
		type *r = data;                                                       \
		(void)priv;                                                           \
		check(status, rpc, label);                                            \
		printf("%s stat=%d\n", label, r->status);                             \
		done = 1;                                                             \
	}

RES_CB(lock_cb, NLM4_LOCKres, "LOCK")
RES_CB(cancel_cb, NLM4_CANCres, "CANCEL")
RES_CB(unlock_cb, NLM4_UNLOCKres, "UNLOCK")

static void stat_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	NSM1_STATres *r = data;
	(void)priv;
	check(status, rpc, "NSM1_STAT");
	printf("SM_STAT res=%d state=%d\n", r->res, r->state);
	done = 1;
}

static void mon_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	NSM1_MONres *r = data;
	(void)priv;
	check(status, rpc, "NSM1_MON");
	printf("SM_MON res=%d state=%d\n", r->res, r->state);
	done = 1;
}

static int unhex(const char *s, char *out, int max)
{
	int n = 0;
	while (s[0] && s[1] && n < max) {
		unsigned v;
		if (sscanf(s, "%2x", &v) != 1)
			return -1;
		out[n++] = (char)v;
		s += 2;
	}
	return n;
}

static nlm4_lock mk(char *name, char *fh, int fhlen, char *oh, int svid, uint64_t off, uint64_t len)
{
	nlm4_lock lk;
	memset(&lk, 0, sizeof(lk));
	lk.caller_name = name;
	lk.fh.data.data_len = fhlen;
	lk.fh.data.data_val = fh;
	lk.oh = oh;
	lk.svid = svid;
	lk.l_offset = off;
	lk.l_len = len;
	return lk;
}

int main(int argc, char **argv)
{
	struct rpc_context *rpc;
	char fh[64];
	int fhlen;

	if (argc != 3)
		return 2;
	fhlen = unhex(argv[2], fh, sizeof(fh));
	if (fhlen <= 0)
		return 2;
	rpc = rpc_init_context();
	if (rpc == NULL)
		return 2;
	if (rpc_connect_async(rpc, "127.0.0.1", atoi(argv[1]), connected, NULL) != 0) {
		fprintf(stderr, "connect: %s\n", rpc_get_error(rpc));
		return 2;
	}
	wait_reply(rpc);

	nlm4_lock a = mk("libnfs-a", fh, fhlen, "owner-a", 101, 0, 100);
	nlm4_lock b = mk("libnfs-b", fh, fhlen, "owner-b", 202, 50, 10);

	NLM4_TESTargs t1 = { { { 2, "t1" } }, 1, a };
	rpc_nlm4_test_async(rpc, test_cb, &t1, NULL);
	wait_reply(rpc);

	NLM4_LOCKargs l1 = { { { 2, "l1" } }, 0, 1, a, 0, 1 };
	rpc_nlm4_lock_async(rpc, lock_cb, &l1, NULL);
	wait_reply(rpc);

	NLM4_TESTargs t2 = { { { 2, "t2" } }, 0, b };
	rpc_nlm4_test_async(rpc, test_cb, &t2, NULL);
	wait_reply(rpc);

	NLM4_LOCKargs l2 = { { { 2, "l2" } }, 0, 1, b, 0, 1 };
	rpc_nlm4_lock_async(rpc, lock_cb, &l2, NULL);
	wait_reply(rpc);

	NLM4_LOCKargs l3 = { { { 2, "l3" } }, 1, 1, b, 0, 1 };
	rpc_nlm4_lock_async(rpc, lock_cb, &l3, NULL);
	wait_reply(rpc);

	NLM4_CANCargs c = { { { 2, "c1" } }, 1, 1, b };
	rpc_nlm4_cancel_async(rpc, cancel_cb, &c, NULL);
	wait_reply(rpc);

	NLM4_UNLOCKargs u1 = { { { 2, "u1" } }, a };
	rpc_nlm4_unlock_async(rpc, unlock_cb, &u1, NULL);
	wait_reply(rpc);

	rpc_nlm4_lock_async(rpc, lock_cb, &l2, NULL);
	wait_reply(rpc);

	NLM4_UNLOCKargs u2 = { { { 2, "u2" } }, b };
	rpc_nlm4_unlock_async(rpc, unlock_cb, &u2, NULL);
	wait_reply(rpc);

	NSM1_STATargs s = { "libnfs-a" };
	rpc_nsm1_stat_async(rpc, stat_cb, &s, NULL);
	wait_reply(rpc);

	NSM1_MONargs m;
	memset(&m, 0, sizeof(m));
	m.mon_id.mon_name = "libnfs-b";
	m.mon_id.my_id.my_name = "libnfs-a";
	m.mon_id.my_id.my_prog = 100021;
	m.mon_id.my_id.my_vers = 4;
	m.mon_id.my_id.my_proc = 16;
	memcpy(m.priv, "fedcba9876543210", 16);
	rpc_nsm1_mon_async(rpc, mon_cb, &m, NULL);
	wait_reply(rpc);

	rpc_destroy_context(rpc);
	return 0;
}
