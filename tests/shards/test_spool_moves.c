/*
 * tests/shards/test_spool_moves.c - a shard set driven through its API
 * with a real spool and a real receiver: bodies are read back from the
 * spool, and a move notice on the intake ring sends the shard to the
 * new copy once spool maintenance moved a message and deleted the old
 * segment (issue 16).
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/spool.h"
#include "shards/shards.h"
#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

#define BODY_A "Subject: a\r\n\r\nthe body that moved\r\n"
#define BODY_B "Subject: b\r\n\r\nmoved too, but nobody said so\r\n"

static struct spool_ref moved[4];
static size_t nmoved;

static void on_moved(void *ctx, const struct spool_ref *from, const struct spool_ref *to)
{
	(void)ctx;
	(void)from;
	if (nmoved < 4)
		moved[nmoved++] = *to;
}

static int on_recovered(void *ctx, const struct spool_envelope *env,
			const struct spool_ref *ref)
{
	(void)ctx;
	(void)env;
	(void)ref;
	return 0;
}

/* append - one message to <to>, its ref in *ref */
static void append(struct spool *sp, const char *to, const char *body, size_t len,
		   struct spool_ref *ref)
{
	struct spool_rcpt r = { .addr = to };
	struct spool_envelope env = { .mail_from = "s@example.org", .rcpt = &r, .nrcpt = 1 };

	cr_assert_eq(spool_append(sp, &env, body, len, ref), 0);
}

/* job_for - a job of one recipient <to> of the message at <where> */
static struct delivery_job *job_for(const struct spool_ref *where, const char *to)
{
	struct delivery_msg *m = xcalloc(1, sizeof(*m) + sizeof(struct delivery_rcpt));
	struct delivery_job *job = xcalloc(1, sizeof(*job) + sizeof(uint32_t));

	m->refs = 1;
	m->id = where->id;
	m->where = *where;
	m->queued = time(NULL);
	m->mail_from = "s@example.org";
	m->nrcpt = 1;
	m->rcpt[0] = (struct delivery_rcpt){ .addr = to };
	m->ret = MAIL_RET_HDRS;
	job->msg = m;
	job->nrcpt = 1;
	return job;
}

Test(spool_moves, a_shard_follows_a_moved_body_it_was_told_of, .timeout = 90)
{
	char *dir = testlib_tmpdir();
	char *sdir = xasprintf("%s/spool", dir);
	struct smtp_peer *peer = testlib_peer_start("127.0.0.1", 0, SMTP_PEER_CAP_PIPELINING,
						    NULL, 0);

	/* A and B in an old segment, then a filler that rolls it over */
	struct spool_opts o = { .segment_size = 4096, .move_after = 50 };
	struct spool *sp;
	struct strbuf e = { 0 };
	cr_assert_eq(spool_open(sdir, &o, &sp, &e), 0, "%s", sb_str(&e));
	struct spool_stats rst = { 0 };
	cr_assert_eq(spool_recover(sp, on_recovered, NULL, &rst), 0);
	struct spool_ref a, b, f, g;
	append(sp, "a@moves.test", BODY_A, strlen(BODY_A), &a);
	append(sp, "b@moves.test", BODY_B, strlen(BODY_B), &b);
	char *fill = xmalloc(6000);
	memset(fill, 'x', 6000);
	append(sp, "f@moves.test", fill, 6000, &f);
	free(fill);
	append(sp, "g@moves.test", "g\r\n", 3, &g);
	cr_assert_neq(g.seg, a.seg, "the filler did not roll the segment over");
	cr_assert_eq(spool_journal(sp, f.id, 0, SPOOL_DELIVERED), 0);
	cr_assert_eq(spool_commit(sp), 0);
	/* an hour later: A and B move; the next call deletes their old segment */
	struct spool_maint_stats ms = { 0 };
	cr_assert_geq(spool_maintain(sp, time(NULL) + 3600, on_moved, NULL, &ms), 0);
	cr_assert_eq(nmoved, 2, "moved %zu", nmoved);
	cr_assert_geq(spool_maintain(sp, time(NULL) + 3600, on_moved, NULL, &ms), 0);
	char *old = spool_segment_path(sdir, a.seg);
	struct stat st;
	cr_assert_eq(stat(old, &st), -1, "the old segment %s is still there", old);
	free(old);

	struct diag_list dl = { 0 };
	char *text = xasprintf("disk-queue %s\n"
			       "<domain moves.test>\n"
			       "    smtp-hosts [127.0.0.1]:%d\n"
			       "    retry-after 1h\n"
			       "</domain>\n", dir, smtp_peer_port(peer));
	struct cfg *cfg = testlib_load(text, &dl);
	char *t = testlib_diag_text(&dl);
	cr_assert_not_null(cfg, "%s", t);
	free(t);
	diag_free(&dl);
	const char *dirs[] = { sdir };
	struct shard_set_params p = {
		.cfg = cfg, .nshards = 1, .nintake = 1, .ring_size = 64, .log_fd = -1,
		.spool_dirs = dirs, .body_cache_size = 1 << 20,
	};
	struct shard_set *set;
	char err[256];
	cr_assert_eq(shard_set_new(&p, &set, err, sizeof(err)), 0, "%s", err);
	/* the jobs name the old places; only A's move is announced */
	struct delivery_job *jobs[3] = { job_for(&a, "a@moves.test"), job_for(&b, "b@moves.test") };
	struct delivery_moves *mv = xmalloc(sizeof(*mv) + sizeof(mv->to[0]));
	mv->refs = 1;
	mv->n = 1;
	mv->to[0] = moved[0].id == a.id ? moved[0] : moved[1];
	cr_assert_eq(mv->to[0].id, a.id);
	jobs[2] = xcalloc(1, sizeof(struct delivery_job));
	jobs[2]->moves = mv;
	cr_assert_eq(shard_submit(set, 0, 0, jobs, 3), 3);
	cr_assert_eq(shard_set_start(set, err, sizeof(err)), 0, "%s", err);
	shard_flush_wakeups(set, 0);

	/* A arrives, read from its new place, byte for byte */
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 30000), 0, "A was not delivered");
	const struct smtp_peer_msg *got = smtp_peer_message(peer, 0);
	cr_assert_str_eq(got->rcpts[0], "a@moves.test");
	cr_assert_str_eq(got->body, BODY_A);
	/* B's body is gone from where its job says: deferred, never sent */
	struct shard_stats ss = { 0 };
	for (int i = 0; i < 200 && ss.deferred < 1; i++) {
		usleep(50 * 1000);
		shard_stats(set, 0, &ss);
	}
	cr_assert_eq(ss.delivered, 1);
	cr_assert_eq(ss.deferred, 1, "B: %llu deferrals", (unsigned long long)ss.deferred);
	struct smtp_peer_stats ps;
	smtp_peer_stats(peer, &ps);
	cr_assert_eq(ps.messages, 1);

	shard_set_free(set);
	cfg_free(cfg);
	spool_close(sp);
	smtp_peer_free(peer);
	sb_free(&e);
	free(text);
	free(sdir);
	testlib_rmrf(dir);
	free(dir);
}
