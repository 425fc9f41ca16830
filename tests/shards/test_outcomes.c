/*
 * tests/shards/test_outcomes.c - a shard set driven through its API (no
 * daemon, no network): the outcome rings back to the intake threads.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shards/shards.h"
#include "tests/lib/testlib.h"

/* msg_new - a message of n recipients "rK@gone.test", in one allocation. */
static struct delivery_msg *msg_new(uint64_t id, uint32_t n)
{
	size_t sz = sizeof(struct delivery_msg) + n * sizeof(struct delivery_rcpt) + n * 32;
	struct delivery_msg *m = xcalloc(1, sz);
	char *str = (char *)(m + 1) + n * sizeof(struct delivery_rcpt);

	m->refs = 1;
	m->id = id;
	m->queued = time(NULL) - 10;
	m->mail_from = "";
	m->nrcpt = n;
	m->where = (struct spool_ref){ .id = id, .len = 3, .body_len = 3 };
	for (uint32_t i = 0; i < n; i++) {
		snprintf(str, 32, "r%u@gone.test", i);
		m->rcpt[i] = (struct delivery_rcpt){ .addr = str, .index = i };
		str += 32;
	}
	return m;
}

/*
 * A shard set of one shard whose outcome ring overflows: more final
 * outcomes than the ring holds (1,024 batches of 64), none taken yet.
 */
struct full_ring {
	struct cfg *cfg;
	struct shard_set *set;
	char *dir, *text;
	uint32_t total;
};

static void full_ring_start(struct full_ring *f)
{
	/* every recipient expires at once: a final outcome each, no network */
	struct diag_list dl = { 0 };
	f->dir = testlib_tmpdir();
	f->text = xasprintf("disk-queue %s\n"
			    "<domain gone.test>\n"
			    "    smtp-hosts [bad\n"
			    "    bounce-after 0s\n"
			    "</domain>\n", f->dir);
	f->cfg = testlib_load(f->text, &dl);
	char *t = testlib_diag_text(&dl);
	cr_assert_not_null(f->cfg, "%s", t);
	free(t);
	diag_free(&dl);
	struct shard_set_params p = {
		.cfg = f->cfg, .nshards = 1, .nintake = 1, .ring_size = 4096, .log_fd = -1,
	};
	char err[256];
	cr_assert_eq(shard_set_new(&p, &f->set, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(shard_set_start(f->set, err, sizeof(err)), 0, "%s", err);

	const uint32_t nmsg = 1200, per = 64;
	f->total = nmsg * per;
	for (uint32_t i = 0; i < nmsg; i++) {
		struct delivery_job *job = xcalloc(1, sizeof(*job) + per * sizeof(uint32_t));
		job->msg = msg_new(i + 1, per);
		job->nrcpt = per;
		for (uint32_t k = 0; k < per; k++)
			job->rcpt[k] = k;
		while (shard_submit(f->set, 0, 0, &job, 1) == 0)
			usleep(1000);
		shard_flush_wakeups(f->set, 0);
	}
	/* nobody takes outcomes yet: the shard must finish the work anyway */
	struct shard_stats st = { 0 };
	for (int i = 0; i < 400; i++) {
		shard_stats(f->set, 0, &st);
		if (st.expired == f->total)
			break;
		usleep(50 * 1000);
	}
	cr_assert_eq(st.expired, f->total, "the shard stopped at %llu of %u outcomes",
		     (unsigned long long)st.expired, f->total);
}

/* take_all - every outcome there is, checked: each once, in order per message. */
static uint32_t take_all(struct full_ring *f)
{
	struct delivery_outcome out[256];
	uint32_t got = 0;
	uint64_t last_id = 0;

	for (int idle = 0; got < f->total && idle < 200;) {
		size_t n = shard_take_outcomes(f->set, 0, out, 256);
		if (!n) {
			idle++;
			usleep(10 * 1000);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			cr_assert_eq(out[i].kind, DELIVERY_EXPIRED);
			cr_assert_geq(out[i].msg_id, last_id, "outcomes out of order");
			last_id = out[i].msg_id;
			delivery_report_free(out[i].report);
		}
		got += (uint32_t)n;
	}
	return got;
}

static void full_ring_free(struct full_ring *f)
{
	shard_set_free(f->set);
	cfg_free(f->cfg);
	testlib_rmrf(f->dir);
	free(f->dir);
	free(f->text);
}

/*
 * Regression (issue 11): with its outcome ring full, a shard spun on
 * sched_yield() in publish_batch and did nothing else until the intake
 * drained it.  Now it keeps the batches, in order, and goes on working;
 * every outcome arrives once the intake takes them.
 */
Test(outcomes, full_ring_keeps_batches_and_the_shard_works_on, .timeout = 60)
{
	struct full_ring f = { 0 };

	full_ring_start(&f);
	cr_assert_eq(take_all(&f), f.total);
	full_ring_free(&f);
}

/*
 * The intakes stop before the shards: a shard whose ring was full when it
 * stopped kept batches nobody could take, and they were freed unjournaled
 * (delivered again after the restart).  After shard_set_stop the daemon's
 * last take gets them too.
 */
Test(outcomes, batches_held_at_stop_are_taken_after_it, .timeout = 60)
{
	struct full_ring f = { 0 };

	full_ring_start(&f);
	shard_set_stop(f.set);
	cr_assert_eq(take_all(&f), f.total, "outcomes held at the stop were lost");
	full_ring_free(&f);
}
