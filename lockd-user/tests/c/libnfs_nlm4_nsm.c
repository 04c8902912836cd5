/*
 * NLM v4 and NSM calls made with libnfs's raw RPC layer (its own XDR code) against the
 * lockd-user server on 127.0.0.1:PORT. Each result is printed on one line for the Rust test
 * to check; the argument values are fixed here and checked on the server side.
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
	check(status, rpc, "connect");
	done = 1;
}

static void test_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	NLM4_TESTres *r = data;
	check(status, rpc, "NLM4_TEST");
	printf("TEST4 stat=%d", r->reply.status);
	if (r->reply.status == NLM4_DENIED) {
		nlm4_holder *h = &r->reply.nlm4_testreply_u.lock.holder;
		printf(" exclusive=%u svid=%u oh=%s off=%llu len=%llu", h->exclusive, h->svid, h->oh,
		       (unsigned long long)h->l_offset, (unsigned long long)h->l_len);
	}
	printf(" cookie=%.*s\n", (int)r->cookie.data.data_len, r->cookie.data.data_val);
	done = 1;
}

#define RES_CB(name, type, label)                                                         \
	static void name(struct rpc_context *rpc, int status, void *data, void *priv)     \
	{                                                                                 \
		type *r = data;                                                           \
		check(status, rpc, label);                                                \
		printf("%s stat=%d cookie=%.*s\n", label, r->status,                      \
		       (int)r->cookie.data.data_len, r->cookie.data.data_val);            \
		done = 1;                                                                 \
	}

RES_CB(lock_cb, NLM4_LOCKres, "LOCK4")
RES_CB(cancel_cb, NLM4_CANCres, "CANCEL4")
RES_CB(unlock_cb, NLM4_UNLOCKres, "UNLOCK4")

static void mon_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	NSM1_MONres *r = data;
	check(status, rpc, "NSM1_MON");
	printf("NSM_MON res=%d state=%d\n", r->res, r->state);
	done = 1;
}

static void notify_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	check(status, rpc, "NSM1_NOTIFY");
	printf("NSM_NOTIFY ok\n");
	done = 1;
}

int main(int argc, char **argv)
{
	struct rpc_context *rpc;
	char fh[64];
	char oh[] = "owner4";

	if (argc != 2)
		return 2;
	memset(fh, 0xf4, sizeof(fh));
	rpc = rpc_init_context();
	if (rpc == NULL)
		return 2;
	if (rpc_connect_async(rpc, "127.0.0.1", atoi(argv[1]), connected, NULL) != 0) {
		fprintf(stderr, "connect: %s\n", rpc_get_error(rpc));
		return 2;
	}
	wait_reply(rpc);

	nlm4_lock lk;
	memset(&lk, 0, sizeof(lk));
	lk.caller_name = "c4client";
	lk.fh.data.data_len = sizeof(fh);
	lk.fh.data.data_val = fh;
	lk.oh = oh;
	lk.svid = 4242;
	lk.l_offset = 1ULL << 40;
	lk.l_len = 0;

	NLM4_TESTargs t = { { { 2, "k1" } }, 1, lk };
	rpc_nlm4_test_async(rpc, test_cb, &t, NULL);
	wait_reply(rpc);

	NLM4_LOCKargs l = { { { 2, "k2" } }, 1, 1, lk, 0, 3 };
	rpc_nlm4_lock_async(rpc, lock_cb, &l, NULL);
	wait_reply(rpc);

	NLM4_CANCargs c = { { { 2, "k3" } }, 1, 0, lk };
	rpc_nlm4_cancel_async(rpc, cancel_cb, &c, NULL);
	wait_reply(rpc);

	NLM4_UNLOCKargs u = { { { 2, "k4" } }, lk };
	rpc_nlm4_unlock_async(rpc, unlock_cb, &u, NULL);
	wait_reply(rpc);

	NSM1_MONargs m;
	memset(&m, 0, sizeof(m));
	m.mon_id.mon_name = "peer4";
	m.mon_id.my_id.my_name = "c4client";
	m.mon_id.my_id.my_prog = 100021;
	m.mon_id.my_id.my_vers = 4;
	m.mon_id.my_id.my_proc = 16;
	memcpy(m.priv, "fedcba9876543210", 16);
	rpc_nsm1_mon_async(rpc, mon_cb, &m, NULL);
	wait_reply(rpc);

	NSM1_NOTIFYargs n = { "c4client", 13 };
	rpc_nsm1_notify_async(rpc, notify_cb, &n, NULL);
	wait_reply(rpc);

	rpc_destroy_context(rpc);
	return 0;
}
