/*
 * shards/control.c - what the management plane may ask of a shard: a
 * snapshot of its queues, pause, resume, schedule (retry now), backoff or
 * normal mode, delete; and the latency histograms it keeps.
 *
 * Commands arrive on the shard's control ring (one management thread
 * produces, the shard consumes) and are done at a loop boundary, when no
 * queue is half-way through a change; the answered command goes back on
 * the shard's answer ring and set->ctl_fd wakes the management thread.
 * The management thread never reads a queue: it sees only the copies a
 * snapshot carries.
 *
 * Threads: ctl_drain and hist_observe on the shard's own thread;
 * shard_ctl_send/take/fd on the one management thread; shard_hist and
 * shard_hist_bounds from any thread (relaxed counters, approximate).
 */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shards/shard_int.h"
#include "shards/shards.h"
#include "util/ring.h"
#include "util/hash.h"
#include "util/util.h"

/* Upper bounds; delivery latency in seconds, DNS latency in milliseconds. */
static const double hist_bounds[SHARD_HIST_COUNT][SHARD_HIST_BUCKETS] = {
	[SHARD_HIST_DELIVERY] = { 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 1e300 },
	[SHARD_HIST_DNS] = { 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 1e300 },
};

const double *shard_hist_bounds(enum shard_hist h, const char **unit)
{
	BUG_ON(h >= SHARD_HIST_COUNT);
	*unit = h == SHARD_HIST_DNS ? "ms" : "s";
	return hist_bounds[h];
}

void hist_observe(struct shard *s, enum shard_hist h, uint64_t v)
{
	int i = 0;

	while (i < SHARD_HIST_BUCKETS - 1 && (double)v > hist_bounds[h][i])
		i++;
	atomic_fetch_add_explicit(&s->pub.hist[h][i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->pub.hist_sum[h], v, memory_order_relaxed);
}

void shard_hist(const struct shard_set *set, uint32_t shard, enum shard_hist h,
		struct shard_hist_view *out)
{
	const struct shard_pub *p = &set->shards[shard].pub;

	BUG_ON(shard >= set->nshards || h >= SHARD_HIST_COUNT);
	for (int i = 0; i < SHARD_HIST_BUCKETS; i++)
		out->bucket[i] = atomic_load_explicit(&p->hist[h][i], memory_order_relaxed);
	out->sum = atomic_load_explicit(&p->hist_sum[h], memory_order_relaxed);
}

bool shard_ctl_send(struct shard_set *set, uint32_t shard, struct shard_cmd *cmd)
{
	struct shard *s = &set->shards[shard];

	BUG_ON(shard >= set->nshards);
	cmd->shard = shard;
	if (!spsc_ring_push(s->ctl_in, (void **)&cmd, 1))
		return false;
	/* commands are rare: always wake it rather than track its sleep */
	uint64_t one = 1;
	ssize_t w = write(s->wake_fd, &one, sizeof(one));
	(void)w;
	return true;
}

int shard_ctl_fd(const struct shard_set *set)
{
	return set->ctl_fd;
}

struct shard_cmd *shard_ctl_take(struct shard_set *set)
{
	struct shard_cmd *cmd;

	for (uint32_t i = 0; i < set->nshards; i++)
		if (spsc_ring_pop(set->shards[i].ctl_out, (void **)&cmd, 1))
			return cmd;
	return NULL;
}

void shard_cmd_free(struct shard_cmd *cmd)
{
	if (!cmd)
		return;
	if (cmd->snap) {
		free(cmd->snap->vmtas);
		free(cmd->snap->jobs);
	}
	free(cmd->snap);
	free(cmd);
}

static bool queue_matches(const struct shard_cmd *cmd, const struct queue *q)
{
	return !cmd->queue[0] || fnmatch(cmd->queue, q->key, FNM_CASEFOLD) == 0;
}

static bool rcpt_matches(const struct shard_cmd *cmd, const struct qrcpt *r)
{
	const struct delivery_msg *m = r->msg;

	if (cmd->job_id[0] && (!m->job_id || strcmp(cmd->job_id, m->job_id) != 0))
		return false;
	if (cmd->rcpt[0] && fnmatch(cmd->rcpt, m->rcpt[r->rcpt].addr, FNM_CASEFOLD) != 0)
		return false;
	return !cmd->older_than || m->queued < cmd->older_than;
}

static const struct smtp_reply deleted = {
	.code = 550, .status = "5.0.0", .local = true,
	.text = "deleted by the operator (coremta ctl delete)",
};

/* delete_one - r leaves the queue as a bounce: log line, b record, journal. */
static void delete_one(struct shard *s, const struct shard_cmd *cmd, struct queue *q,
		       struct qrcpt *r)
{
	log_attempt(s, q, r, "deleted", &deleted, NULL, NULL, NULL);
	struct delivery_report *rep = make_report(s, q, r, &deleted, NULL, DELIVERY_BOUNCED);
	if (!cmd->dsn) {
		delivery_report_free(rep);
		rep = NULL;
	}
	finish_rcpt(s, q, r, DELIVERY_BOUNCED, rep);
}

static bool pick(const void *ctx, const struct qrcpt *r)
{
	return rcpt_matches(ctx, r);
}

/* delete_matching - the recipients of q the command picks, ready or deferred. */
static uint64_t delete_matching(struct shard *s, const struct shard_cmd *cmd, struct queue *q)
{
	struct rlist gone = { 0 };
	struct qrcpt *r;
	uint64_t n = 0;

	deferred_take_if(q, pick, cmd, &gone);
	/* the ready list is a plain FIFO of the queue's own */
	struct rlist keep = { 0 };
	while ((r = rl_pop(&q->ready)))
		rl_push(rcpt_matches(cmd, r) ? &gone : &keep, r);
	q->ready = keep;
	while ((r = rl_pop(&gone))) {
		delete_one(s, cmd, q, r);
		n++;
	}
	return n;
}

/* retry_now - schedule: every deferred recipient is due now. */
static void retry_now(struct shard *s, struct queue *q)
{
	struct qrcpt *r;

	while ((r = deferred_pop(q))) {
		r->next_try_ms = s->now_ms;
		rl_push(&q->ready, r);
	}
	q->hold_until_ms = 0;
	mark_runnable(s, q);
}

static int64_t unix_at(const struct shard *s, uint64_t ms)
{
	return s->now_s + (int64_t)((ms > s->now_ms ? ms - s->now_ms : 0) / 1000);
}

/*
 * rate_window - the queue's deliveries a minute, over windows of at least
 * a minute closed when a snapshot looks (the management thread looks
 * every second), so no timer runs for it.
 */
static void rate_window(const struct shard *s, struct queue *q)
{
	if (!q->rate_since_ms) {
		q->rate_since_ms = s->now_ms;
		q->rate_base = q->n_delivered;
		return;
	}
	uint64_t span = s->now_ms - q->rate_since_ms;
	if (span < 60000)
		return;
	q->rate_per_min = (uint32_t)((q->n_delivered - q->rate_base) * 60000 / span);
	q->rate_since_ms = s->now_ms;
	q->rate_base = q->n_delivered;
}

static void queue_info(const struct shard *s, const struct queue *q,
		       struct shard_queue_info *qi)
{
	memset(qi, 0, sizeof(*qi));
	snprintf(qi->queue, sizeof(qi->queue), "%s", q->key);
	snprintf(qi->vmta, sizeof(qi->vmta), "%s", q->vmta_name);
	snprintf(qi->last_error, sizeof(qi->last_error), "%s", q->last_error);
	qi->ready = q->ready.count;
	qi->deferred = q->ndeferred;
	qi->conns = q->conns;
	qi->backoff = q->backoff;
	qi->mode = q->paused ? SHARD_MODE_PAUSED : q->backoff ? SHARD_MODE_BACKOFF
							    : SHARD_MODE_NORMAL;
	qi->delivered = q->n_delivered;
	qi->bounced = q->n_bounced;
	qi->expired = q->n_expired;
	qi->deferrals = q->n_deferrals;
	qi->rate_per_min = q->rate_per_min;
	qi->last_error_at = q->last_error_s;
	if (q->paused && (q->ready.count || q->ndeferred))
		qi->next_attempt = -1;
	else if (q->ready.count)
		qi->next_attempt = unix_at(s, q->hold_until_ms);
	else if (q->ndeferred && q->wake_ms)
		qi->next_attempt = unix_at(s, q->wake_ms);
}

static int by_size(const void *a, const void *b)
{
	const struct shard_queue_info *x = a, *y = b;
	uint64_t nx = (uint64_t)x->ready + x->deferred, ny = (uint64_t)y->ready + y->deferred;

	if (nx != ny)
		return nx > ny ? -1 : 1;
	return strcmp(x->queue, y->queue);
}

/* snapshot - the matching queues, largest first, at most cmd->limit. */
static struct shard_snapshot *snapshot(struct shard *s, struct shard_cmd *cmd)
{
	uint32_t nmatch = 0;

	HASH_TAB_EACH(&s->queues, struct queue, q)
		nmatch += queue_matches(cmd, q);
	/* limit 0 (counts only, the management thread's every-second sample): no items */
	uint32_t room = cmd->limit ? nmatch : 0;
	struct shard_snapshot *sn = xcalloc(1, sizeof(*sn) + room * sizeof(sn->items[0]));
	uint32_t conns = 0;
	/* the configured virtual-mtas and {default}: a bounded set */
	size_t cap = cfg_vmta_count(s->cfg) + 1;
	sn->vmtas = xcalloc(cap, sizeof(*sn->vmtas));
	HASH_TAB_EACH(&s->queues, struct queue, q) {
		conns += q->conns;
		rate_window(s, q);
		if (room && queue_matches(cmd, q)) {
			queue_info(s, q, &sn->items[sn->n]);
			sn->items[sn->n++].adaptive_rate = adapt_rate_in_force(s, q);
		}
		uint32_t v = 0;
		while (v < sn->nvmtas && strcmp(sn->vmtas[v].vmta, q->vmta_name) != 0)
			v++;
		if (v == sn->nvmtas) {
			/* a queue of a virtual-mta a reload removed outlives it */
			if (v == cap) {
				cap *= 2;
				sn->vmtas = xrealloc(sn->vmtas, cap * sizeof(*sn->vmtas));
				memset(sn->vmtas + v, 0, (cap - v) * sizeof(*sn->vmtas));
			}
			snprintf(sn->vmtas[v].vmta, sizeof(sn->vmtas[v].vmta), "%s", q->vmta_name);
			sn->nvmtas++;
		}
		struct shard_vmta_info *vi = &sn->vmtas[v];
		vi->queues++;
		vi->conns += q->conns;
		vi->recipients += q->ready.count + q->ndeferred;
		vi->delivered += q->n_delivered;
		vi->bounced += q->n_bounced;
		vi->expired += q->n_expired;
		vi->deferrals += q->n_deferrals;
	}
	qsort(sn->items, sn->n, sizeof(sn->items[0]), by_size);
	sn->shard = s->index;
	sn->queues = (uint32_t)s->queues.count;
	sn->matched = nmatch;
	if (sn->n > cmd->limit)
		sn->n = cmd->limit;
	sn->recipients = atomic_load_explicit(&s->pub.queued, memory_order_relaxed);
	sn->connections = conns;
	struct timespec ts;
	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
		sn->cpu_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	for (uint32_t i = 0; i < s->set->nintake; i++) {
		sn->ring_used += (uint32_t)spsc_ring_count(s->in[i]);
		sn->ring_size += (uint32_t)spsc_ring_capacity(s->in[i]);
	}
	return sn;
}

/* One job id while counting: the string is the message's (held meanwhile). */
struct job_count {
	const char *id;
	uint64_t rcpts;
	uint32_t queues;
	const struct queue *last;	/* the queue that counted last */
};

struct job_tally {
	struct hash_tab counts;		/* struct job_count by id */
	const struct queue *q;		/* being walked */
};

static uint64_t job_hash(const void *item)
{
	return hash_str(HASH_SEED, ((const struct job_count *)item)->id);
}

static bool job_id_eq(const void *item, const void *id)
{
	return strcmp(((const struct job_count *)item)->id, id) == 0;
}

static void tally(void *ctx, const struct qrcpt *r)
{
	struct job_tally *t = ctx;
	const char *id = r->msg->job_id ? r->msg->job_id : "";
	uint64_t h = hash_str(HASH_SEED, id);
	struct job_count *c = hash_tab_find(&t->counts, h, job_id_eq, id);

	if (!c) {
		c = xcalloc(1, sizeof(*c));
		c->id = id;
		hash_tab_add(&t->counts, h, c, job_hash);
	}
	c->rcpts++;
	if (c->last != t->q) {
		c->last = t->q;
		c->queues++;
	}
}

static int by_rcpts(const void *a, const void *b)
{
	const struct shard_job_info *x = a, *y = b;

	if (x->recipients != y->recipients)
		return x->recipients > y->recipients ? -1 : 1;
	return strcmp(x->job_id, y->job_id);
}

/* jobs - queued recipients per job id, the largest cmd->limit jobs. */
static void jobs(struct shard *s, const struct shard_cmd *cmd, struct shard_snapshot *sn)
{
	struct job_tally t = { 0 };

	HASH_TAB_EACH(&s->queues, struct queue, q) {
		if (!queue_matches(cmd, q))
			continue;
		t.q = q;
		for (const struct qrcpt *r = q->ready.head; r; r = r->next)
			tally(&t, r);
		deferred_each(q, tally, &t);
	}
	sn->jobs = xcalloc(t.counts.count + 1, sizeof(*sn->jobs));
	HASH_TAB_EACH(&t.counts, struct job_count, c) {
		struct shard_job_info *j = &sn->jobs[sn->njobs++];
		snprintf(j->job_id, sizeof(j->job_id), "%s", c->id);
		j->recipients = c->rcpts;
		j->queues = c->queues;
		free(c);
	}
	hash_tab_free(&t.counts);
	qsort(sn->jobs, sn->njobs, sizeof(*sn->jobs), by_rcpts);
	if (sn->njobs > cmd->limit)
		sn->njobs = cmd->limit;
}

static void run_cmd(struct shard *s, struct shard_cmd *cmd)
{
	if (cmd->kind == SHARD_CMD_JOBS) {
		struct shard_cmd none = *cmd;
		none.limit = 0;
		cmd->snap = snapshot(s, &none);
		jobs(s, cmd, cmd->snap);
		cmd->queues = cmd->snap->matched;
		return;
	}
	if (cmd->kind == SHARD_CMD_SNAPSHOT) {
		cmd->snap = snapshot(s, cmd);
		cmd->queues = cmd->snap->matched;
		return;
	}
	HASH_TAB_EACH(&s->queues, struct queue, q) {
		if (!queue_matches(cmd, q))
			continue;
		cmd->queues++;
		switch (cmd->kind) {
		case SHARD_CMD_PAUSE:
			if (!q->paused)
				log_queue_event(s, q, "pause", "mode=paused", "coremta ctl pause");
			q->paused = true;
			/* open connections finish their transaction, then QUIT */
			retire_conns(s, q, -1);
			cmd->rcpts += q->ready.count + q->ndeferred;
			break;
		case SHARD_CMD_RESUME:
			if (q->paused)
				log_queue_event(s, q, "resume", "mode=running", "coremta ctl resume");
			q->paused = false;
			mark_runnable(s, q);
			cmd->rcpts += q->ready.count + q->ndeferred;
			break;
		case SHARD_CMD_SCHEDULE:
			retry_now(s, q);
			cmd->rcpts += q->ready.count;
			break;
		case SHARD_CMD_MODE_NORMAL:
		case SHARD_CMD_MODE_BACKOFF:
			set_backoff(s, q, cmd->kind == SHARD_CMD_MODE_BACKOFF,
				    "coremta ctl set queue --mode");
			cmd->rcpts += q->ready.count + q->ndeferred;
			break;
		case SHARD_CMD_DELETE:
			cmd->rcpts += delete_matching(s, cmd, q);
			break;
		default:
			/* the management thread sends only the kinds above */
			BUG("shard control: unexpected queue command kind %d", (int)cmd->kind);
		}
	}
}

/* ctl_drain - do the commands waiting on the control ring; answer each. */
void ctl_drain(struct shard *s)
{
	struct shard_cmd *cmd;
	bool answered = false;

	/* a command is taken only when its answer has room to go back */
	while (spsc_ring_count(s->ctl_out) < spsc_ring_capacity(s->ctl_out) &&
	       spsc_ring_pop(s->ctl_in, (void **)&cmd, 1)) {
		run_cmd(s, cmd);
		BUG_ON(!spsc_ring_push(s->ctl_out, (void **)&cmd, 1));
		answered = true;
	}
	if (answered) {
		uint64_t one = 1;
		ssize_t w = write(s->set->ctl_fd, &one, sizeof(one));
		(void)w;
	}
}
