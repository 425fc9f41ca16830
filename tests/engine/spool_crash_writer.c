/*
 * spool_crash_writer - a helper for the kill -9 test in test_spool.c, not a
 * test itself.  Single-threaded.
 *
 *   spool_crash_writer DIR SEED
 *
 * Opens and recovers the spool in DIR, then forever: appends a batch of
 * 1-50 messages, commits, and prints each acknowledged one; journals
 * outcomes for a few random live recipients, printing the intent before and
 * the fact after the commit; every few rounds runs spool_maintain() with a
 * clock far ahead so that old segments are moved forward and deleted while
 * the test may kill it.  Lines on stdout, each flushed before going on:
 *
 *   A <id> <nrcpt> <body length> <body checksum>   durable (250 sent)
 *   J <id> <rcpt>                                  about to journal
 *   D <id> <rcpt>                                  outcome durable
 *
 * Every body starts with a 16-byte self-check (magic, payload length,
 * FNV-1a of the payload) so a recovered body can be verified whole without
 * knowing which message it is.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/hash.h"
#include "util/util.h"

#include "engine/spool.h"

#define BODY_MAGIC 0x59444f42u	/* "BODY" */

struct live {
	uint64_t id;
	uint32_t nrcpt;
	uint32_t mask;		/* bit i set: recipient i unfinished */
};

struct writer {
	struct spool *sp;
	uint64_t rng;
	struct live *v;
	size_t n, cap;
};

static uint64_t rnd(struct writer *w)
{
	/* xorshift64*: reproducible from the seed on the command line */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 0x2545f4914f6cdd1dull;
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
	return (uint32_t)hash_bytes(HASH_SEED, p, n);
}

static void put32le(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static _Noreturn void die(struct writer *w, const char *what, int r)
{
	fprintf(stderr, "spool_crash_writer: %s: %d %s\n", what, r,
		w->sp ? spool_error(w->sp) : "");
	exit(1);
}

static void add_live(struct writer *w, uint64_t id, uint32_t nrcpt,
		     uint32_t mask)
{
	if (w->n == w->cap) {
		w->cap = w->cap ? w->cap * 2 : 256;
		w->v = xrealloc(w->v, w->cap * sizeof(*w->v));
	}
	w->v[w->n++] = (struct live){ .id = id, .nrcpt = nrcpt, .mask = mask };
}

static int recovered(void *ctx, const struct spool_envelope *env,
		     const struct spool_ref *ref)
{
	struct writer *w = ctx;
	uint32_t mask = 0, nrcpt = 0;

	for (size_t i = 0; i < env->nrcpt; i++) {
		mask |= 1u << env->rcpt[i].index;
		if (env->rcpt[i].index + 1 > nrcpt)
			nrcpt = env->rcpt[i].index + 1;
	}
	add_live(w, ref->id, nrcpt, mask);
	return 0;
}

static void append_batch(struct writer *w)
{
	static const char *const addrs[] = {
		"a@d1.test", "b@d2.test", "c@d3.test", "d@d4.test", "e@d5.test",
	};
	struct spool_rcpt rc[5];
	size_t batch = 1 + rnd(w) % 50;
	struct {
		uint64_t id;
		uint32_t nrcpt, len, sum;
	} acked[50];
	uint8_t *body = xmalloc(16 + 65536);
	int r;

	for (size_t i = 0; i < 5; i++)
		rc[i] = (struct spool_rcpt){ .addr = addrs[i],
					     .notify = MAIL_NOTIFY_FAILURE };
	for (size_t i = 0; i < batch; i++) {
		uint32_t plen = 64 + rnd(w) % (rnd(w) % 8 ? 8192 : 65536 - 64);
		struct spool_envelope env = {
			.mail_from = "bounce@sender.test",
			.vmta = "vmta1",
			.rcpt = rc,
			.nrcpt = 1 + rnd(w) % 5,
		};
		struct spool_ref ref;

		for (uint32_t k = 0; k < plen; k++)
			body[16 + k] = (uint8_t)rnd(w);
		put32le(body, BODY_MAGIC);
		put32le(body + 4, plen);
		put32le(body + 8, fnv1a(body + 16, plen));
		put32le(body + 12, 0);
		r = spool_append(w->sp, &env, body, 16 + plen, &ref);
		if (r < 0)
			die(w, "append", r);
		acked[i].id = ref.id;
		acked[i].nrcpt = (uint32_t)env.nrcpt;
		acked[i].len = 16 + plen;
		acked[i].sum = fnv1a(body + 16, plen);
	}
	free(body);
	r = spool_commit(w->sp);
	if (r < 0)
		die(w, "commit", r);
	for (size_t i = 0; i < batch; i++) {
		printf("A %llu %u %u %u\n", (unsigned long long)acked[i].id,
		       acked[i].nrcpt, acked[i].len, acked[i].sum);
		add_live(w, acked[i].id, acked[i].nrcpt,
			 (1u << acked[i].nrcpt) - 1);
	}
	fflush(stdout);
}

static void journal_some(struct writer *w)
{
	/* About as many outcomes as new recipients: the queue stays level. */
	size_t k = w->n ? rnd(w) % 150 : 0;
	struct {
		uint64_t id;
		uint32_t rcpt;
	} done[150];
	size_t nd = 0;
	int r;

	for (size_t i = 0; i < k && w->n; i++) {
		size_t at = rnd(w) % w->n;
		struct live *l = &w->v[at];
		uint32_t rcpt;

		do
			rcpt = (uint32_t)(rnd(w) % l->nrcpt);
		while (!(l->mask >> rcpt & 1));
		printf("J %llu %u\n", (unsigned long long)l->id, rcpt);
		fflush(stdout);
		r = spool_journal(w->sp, l->id, rcpt, SPOOL_DELIVERED);
		if (r < 0)
			die(w, "journal", r);
		done[nd].id = l->id;
		done[nd++].rcpt = rcpt;
		l->mask &= ~(1u << rcpt);
		if (!l->mask)
			w->v[at] = w->v[--w->n];
	}
	r = spool_commit(w->sp);
	if (r < 0)
		die(w, "commit", r);
	for (size_t i = 0; i < nd; i++)
		printf("D %llu %u\n", (unsigned long long)done[i].id,
		       done[i].rcpt);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct spool_opts opts = {
		.segment_size = 256 << 10,
		.journal_size = 8 << 10,
		.move_after = 1,
		.move_budget = 200,
	};
	struct writer w = { 0 };
	struct spool_stats st;
	struct spool_maint_stats ms = { 0 };
	struct strbuf err = { 0 };
	int r;

	if (argc != 3) {
		fprintf(stderr, "usage: spool_crash_writer DIR SEED\n");
		return 2;
	}
	w.rng = strtoull(argv[2], NULL, 0) | 1;
	r = spool_open(argv[1], &opts, &w.sp, &err);
	if (r < 0) {
		fprintf(stderr, "spool_crash_writer: %s\n", sb_str(&err));
		return 1;
	}
	r = spool_recover(w.sp, recovered, &w, &st);
	if (r < 0)
		die(&w, "recover", r);
	for (unsigned round = 0;; round++) {
		append_batch(&w);
		journal_some(&w);
		/* A clock an hour ahead: every older segment is due a move. */
		if (round % 4 == 3) {
			r = spool_maintain(w.sp, time(NULL) + 3600, NULL, NULL,
					   &ms);
			if (r < 0)
				die(&w, "maintain", r);
		}
	}
}
