/*
 * shards/shard.c - the per-core delivery loop.
 *
 * Each shard is one thread, pinned to its core, with its own io_uring
 * ring, DNS resolver, queues, connections and timers.  It drains the jobs
 * the intake threads hand it into per-(domain, virtual-mta) queues and
 * delivers each queue as fast as its settings allow: max-smtp-out
 * connections, max-msg-rate and max-connect-rate token buckets,
 * max-msg-per-connection, max-rcpt-per-transaction, the retry schedule
 * and bounce-after.  Receivers' replies steer the queue too: a 421 may
 * send the transaction to the next MX (smtp-421-means-mx-unavailable),
 * and the queue's <smtp-pattern-list> switches backoff mode (its own
 * limits), defers or bounces the queue, or takes a source IP out.  Final
 * outcomes go back to the intake thread that owns the spool, which
 * journals them; the d, b, t and tq accounting records go straight to
 * the accounting writer, this shard being one of its producers.
 *
 * Nothing here blocks: sockets, DNS sockets, the log and the wake-up
 * eventfd all go through the ring; the only syscalls outside it are
 * socket()/bind()/close() and the eventfd writes that wake an intake.
 * Time is a timing wheel (util/timer_wheel.h) advanced by one 50 ms tick
 * of the ring: connection deadlines and queue wake-ups are armed there,
 * so a tick costs what came due, not a sweep over every connection and
 * queue; deferred recipients wait in one FIFO per retry delay, so a
 * wake-up touches only the recipients due.
 *
 * Threads: everything in a struct shard belongs to its thread, except the
 * rings (SPSC, see shards.h), the eventfds and the counters in struct
 * shard_pub, which other threads read.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "affinity/affinity.h"
#include "engine/acct.h"
#include "shards/dns.h"
#include "shards/sched.h"
#include "shards/shards.h"
#include "shards/smtp_client.h"
#include "util/ring.h"
#include "util/slots.h"
#include "util/timer_wheel.h"
#include "util/util.h"

#define RING_ENTRIES	2048
#define TICK_MS		SCHED_TICK_MS
#define RBUF_SIZE	16384
#define SCRATCH_SIZE	16384
#define JOB_BATCH	64
#define OUTCOME_BATCH	64
#define MAX_DNS_FDS	65536
#define TURN_BUDGET	4096		/* completions handled per loop turn */

enum op_kind {
	OP_WAKE = 1,
	OP_TICK,
	OP_CONNECT,
	OP_RECV,
	OP_SEND,
	OP_POLL,
	OP_LOG,
};

struct queue;

/* One recipient waiting in a queue. */
struct qrcpt {
	struct qrcpt *next;
	struct delivery_msg *msg;	/* one reference per qrcpt */
	uint32_t rcpt;			/* index into msg->rcpt */
	uint32_t intake;		/* whose spool journals it */
	uint32_t attempts;
	uint32_t delay_notices;		/* NOTIFY=DELAY notices sent */
	uint64_t next_try_ms;
};

struct rlist {
	struct qrcpt *head, *tail;
	uint32_t count;
};

enum dns_state { QDNS_NONE, QDNS_PENDING, QDNS_READY };


struct queue {
	char *key;			/* "domain/vmta" */
	char *domain;
	const char *vmta_name;		/* "{default}" or the vmta's name */
	const struct cfg_vmta *vmta;
	const struct cfg_queue *settings;
	struct shard *shard;
	struct rlist ready;		/* due now */
	/*
	 * Deferred recipients, one FIFO per retry delay: within a FIFO they
	 * come due in order, so finding the due ones costs only those.
	 */
	struct dbucket *deferred;
	uint32_t ndeferred_buckets;
	uint32_t ndeferred;
	uint64_t wake_ms;		/* when deferred work is due; 0 none */
	struct tw_node wake_timer;	/* armed for wake_ms */
	enum dns_state dns;
	struct dns_result targets;
	uint64_t dns_expires_ms;
	uint32_t next_target;
	uint32_t target_seq;		/* bumped each time next_target moves */
	uint32_t failed_targets;	/* connect failures in a row */
	uint32_t unavailable;		/* targets skipped (421, skip-mx) in a row */
	uint32_t conns;			/* connecting + open */
	uint32_t connecting;		/* of which still connecting */
	uint32_t idle;
	uint32_t quitting;		/* of which told to QUIT */
	bool backoff;			/* backoff mode: the backoff-* limits */
	uint64_t backoff_since_ms;
	uint64_t hold_until_ms;		/* defer-queue: no attempt before */
	uint64_t *src_off_until;	/* [queue_nsrc]: disable-source-ip */
	uint32_t src_rr;
	struct sched_bucket msg_rate;
	struct sched_bucket connect_rate;
	bool runnable;
	struct queue *run_next;
};

enum sconn_state { SC_CONNECTING, SC_OPEN, SC_CLOSING };

struct sconn {
	struct slot_hdr hdr;		/* first: an item of shard.conns */
	enum sconn_state state;
	int fd;
	struct queue *q;
	struct dns_addr addr;
	char ip[INET6_ADDRSTRLEN];
	char local_ip[INET6_ADDRSTRLEN];
	const char *mx;			/* host name for SNI and logs */
	char mx_name[DNS_NAME_MAX + 1];
	struct sockaddr_storage sa;
	struct smtp_client *client;
	struct tls_conn *tls;
	bool handshaking;
	bool connecting;		/* counted in q->connecting */
	bool idle;
	bool recv_inflight;
	bool send_inflight;
	bool quitting;
	bool retire;			/* QUIT once the current transaction ends */
	uint32_t target_seq;		/* q->target_seq when it was opened */
	int src;			/* source index (queue_source_ip) */
	struct strbuf out;		/* commands not yet sent */
	struct strbuf inflight;		/* plaintext in a send (no TLS) */
	size_t inflight_off;
	const char *zc;			/* a body piece in a send (no TLS) */
	size_t zc_len, zc_off;
	bool body_more;
	char *scratch;
	char rbuf[RBUF_SIZE];
	uint64_t deadline_ms;
	struct tw_node deadline_timer;	/* armed for deadline_ms */
	uint32_t msgs;
	struct qrcpt **txn;
	size_t ntxn, cap_txn;
	struct smtp_rcpt *txn_rcpts;
	struct smtp_txn txn_desc;
	uint64_t txn_start_ms;
};

struct outcome_batch {
	uint32_t count;
	struct delivery_outcome items[OUTCOME_BATCH];
};

/* What other threads may read: counters. */
struct shard_pub {
	_Atomic uint64_t jobs, delivered, bounced, expired, deferred, connections;
	_Atomic uint64_t loop_overruns;
	_Atomic uint32_t queued, max_conns_seen;
};

struct shard {
	uint32_t index;
	struct shard_set *set;
	struct timer_wheel timers;	/* connection deadlines, queue wake-ups */
	pthread_t thread;
	bool started;
	int cpu;
	int wake_fd;
	uint64_t wake_val;
	_Atomic bool stop;
	struct spsc_ring **in;		/* [nintake] */
	struct spsc_ring **out;		/* [nintake] of struct outcome_batch * */
	struct outcome_batch **cur;	/* [nintake] being filled */
	bool *out_dirty;		/* [nintake] */

	struct io_uring ring;
	bool ring_ok;
	struct dns_resolver *dns;
	uint32_t *dns_gen;		/* [MAX_DNS_FDS] */
	uint8_t *dns_want;		/* [MAX_DNS_FDS]: POLLIN|POLLOUT wanted */
	uint8_t *dns_armed;

	struct queue **qtab;		/* open addressing by key */
	size_t qcap, nq;
	struct queue *run_head;
	struct slot_table conns;
	uint32_t *pool_rr;		/* per pool index */

	struct strbuf log, log_inflight;
	struct strbuf acct_hdr;		/* header_NAME values of one record */
	uint64_t acct_refused;		/* records the writer could not take */
	bool log_busy;
	struct __kernel_timespec tick;
	uint64_t now_ms;
	time_t now_s;
	struct shard_pub pub;
	char hostname[256];
};

struct shard_set {
	const struct cfg *cfg;
	uint32_t nshards, nintake;
	struct shard *shards;
	bool *need_wake;		/* [intake][shard] */
	int *outcome_fd;		/* [nintake] */
	struct outcome_batch **taking;	/* [nintake]: batch being taken */
	uint32_t *taking_off;
	struct tls_ctx *tls_client;
	int log_fd;
	struct acct_writer *acct;
	unsigned acct_base;
	_Atomic uint32_t total_conns;
	uint32_t total_max;
};

/* ------------------------------------------------------------------ */
/* messages and outcomes                                                */

void delivery_msg_ref(struct delivery_msg *m)
{
	atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
}

void delivery_msg_unref(struct delivery_msg *m)
{
	if (!m)
		return;
	/* acq_rel: the last owner must see every write of the others */
	if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
		free(m);
}

void delivery_job_free(struct delivery_job *job)
{
	if (!job)
		return;
	delivery_msg_unref(job->msg);
	free(job);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* publish_batch - hand a full batch to its intake, which frees it. */
static void publish_batch(struct shard *s, uint32_t intake)
{
	struct outcome_batch *b = s->cur[intake];

	while (!spsc_ring_push(s->out[intake], (void **)&b, 1)) {
		if (atomic_load(&s->stop)) {
			/* unjournaled: redelivered after restart (at-least-once) */
			for (uint32_t i = 0; i < b->count; i++)
				delivery_report_free(b->items[i].report);
			free(b);
			break;
		}
		sched_yield();	/* the intake drains every turn */
	}
	s->cur[intake] = NULL;
}

static void push_outcome(struct shard *s, const struct qrcpt *r,
			 enum delivery_outcome_kind kind, struct delivery_report *report)
{
	struct outcome_batch *b = s->cur[r->intake];

	if (!b)
		b = s->cur[r->intake] = xcalloc(1, sizeof(*b));
	b->items[b->count++] = (struct delivery_outcome){
		.msg_id = r->msg->id,
		.rcpt = r->msg->rcpt[r->rcpt].index,
		.kind = kind,
		.report = report,
	};
	s->out_dirty[r->intake] = true;
	if (b->count == OUTCOME_BATCH)
		publish_batch(s, r->intake);
}

static void publish_outcomes(struct shard *s)
{
	for (uint32_t i = 0; i < s->set->nintake; i++) {
		struct outcome_batch *b = s->cur[i];
		if (b && b->count && spsc_ring_push(s->out[i], (void **)&b, 1))
			s->cur[i] = NULL;
		if (s->out_dirty[i]) {
			uint64_t one = 1;
			ssize_t w = write(s->set->outcome_fd[i], &one, sizeof(one));
			(void)w;
			s->out_dirty[i] = false;
		}
	}
}

/* ------------------------------------------------------------------ */
/* log: one key=value line per delivery attempt                         */

static void log_flush(struct shard *s)
{
	if (s->log_busy || !s->log.len || s->set->log_fd < 0)
		return;
	struct strbuf t = s->log_inflight;
	s->log_inflight = s->log;
	s->log = t;
	sb_reset(&s->log);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (!sqe) {
		/* try again next turn: swap back */
		t = s->log;
		s->log = s->log_inflight;
		s->log_inflight = t;
		return;
	}
	io_uring_prep_write(sqe, s->set->log_fd, s->log_inflight.buf,
			    (unsigned)s->log_inflight.len, (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_LOG, 0, 0));
	s->log_busy = true;
}

static void log_text_field(struct strbuf *sb, const char *s)
{
	sb_addc(sb, '"');
	for (; s && *s; s++) {
		if (*s == '"' || *s == '\\')
			sb_addc(sb, '\\');
		sb_addc(sb, (unsigned char)*s < 0x20 ? '?' : *s);
	}
	sb_addc(sb, '"');
}

static void log_attempt(struct shard *s, const struct queue *q,
			const struct qrcpt *r, const char *result,
			const struct smtp_reply *rep, const char *mx,
			const char *ip, const char *tls)
{
	const struct delivery_msg *m = r->msg;

	sb_printf(&s->log,
		  "delivery shard=%u queue=%s/%s id=%016" PRIx64 " from=<%s> to=<%s> result=%s attempt=%u delay=%llds",
		  s->index, q->domain, q->vmta_name, m->id, m->mail_from,
		  m->rcpt[r->rcpt].addr, result, r->attempts,
		  (long long)(s->now_s - m->queued));
	if (mx)
		sb_printf(&s->log, " mx=%s ip=%s", mx, ip ? ip : "");
	if (tls && *tls)
		sb_printf(&s->log, " tls=%s", tls);
	if (rep) {
		sb_printf(&s->log, " code=%d status=%s%s text=", rep->code, rep->status,
			  rep->local ? " local=yes" : "");
		log_text_field(&s->log, rep->text);
	}
	sb_addc(&s->log, '\n');
}

/* ------------------------------------------------------------------ */
/* queues                                                               */

static void rl_push(struct rlist *l, struct qrcpt *r)
{
	r->next = NULL;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->count++;
}

static struct qrcpt *rl_pop(struct rlist *l)
{
	struct qrcpt *r = l->head;

	if (!r)
		return NULL;
	l->head = r->next;
	if (!l->head)
		l->tail = NULL;
	l->count--;
	r->next = NULL;
	return r;
}

struct dbucket {
	uint64_t delay_ms;
	struct rlist l;
};

/* deferred_push - r waits delay_ms from now (its next_try_ms). */
static void deferred_push(struct queue *q, struct qrcpt *r, uint64_t delay_ms)
{
	uint32_t i = 0;

	while (i < q->ndeferred_buckets && q->deferred[i].delay_ms != delay_ms)
		i++;
	if (i == q->ndeferred_buckets) {
		q->deferred = xrealloc(q->deferred, (i + 1) * sizeof(*q->deferred));
		q->deferred[i] = (struct dbucket){ .delay_ms = delay_ms };
		q->ndeferred_buckets++;
	}
	rl_push(&q->deferred[i].l, r);
	q->ndeferred++;
}

/* deferred_pop - any deferred recipient (to bounce or free them all). */
static struct qrcpt *deferred_pop(struct queue *q)
{
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++) {
		struct qrcpt *r = rl_pop(&q->deferred[i].l);
		if (r) {
			q->ndeferred--;
			return r;
		}
	}
	return NULL;
}

static uint64_t key_hash(const char *k)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *k; k++) {
		h ^= (uint8_t)*k;
		h *= 0x100000001b3ull;
	}
	return h;
}

static void mark_runnable(struct shard *s, struct queue *q)
{
	if (q->runnable)
		return;
	q->runnable = true;
	q->run_next = s->run_head;
	s->run_head = q;
}

/* What a timer of the shard's wheel belongs to (tw_node.kind). */
enum { TIMER_CONN = 1, TIMER_QUEUE = 2 };
#define TIMER_SLOTS	4096		/* x TICK_MS: about 200 s a turn */

/* queue_wake - have q scheduled again by ms at the latest. */
static void queue_wake(struct shard *s, struct queue *q, uint64_t ms)
{
	if (!q->wake_ms || ms < q->wake_ms)
		q->wake_ms = ms;
	if (tw_armed(&q->wake_timer) && q->wake_timer.due_ms <= q->wake_ms)
		return;
	q->wake_timer.kind = TIMER_QUEUE;
	tw_arm(&s->timers, &q->wake_timer, q->wake_ms);
}

/* conn_deadline - when c's current phase times out. */
static void conn_deadline(struct shard *s, struct sconn *c, uint64_t ms)
{
	c->deadline_ms = ms;
	c->deadline_timer.kind = TIMER_CONN;
	tw_arm(&s->timers, &c->deadline_timer, ms);
}

/* ------------------------------------------------------------------ */
/* backoff mode and the limits in force                                 */

static const struct cfg_rate *queue_rate(const struct queue *q)
{
	return sched_msg_rate(q->settings, q->backoff);
}

static uint32_t queue_max_out(const struct queue *q)
{
	return sched_max_out(q->settings, q->vmta, q->backoff);
}

static const struct cfg_schedule *queue_retry(const struct queue *q)
{
	return sched_retry(q->settings, q->backoff);
}

/*
 * reply_subject - the reply as it came on the wire ("421 4.7.0 text"),
 * which is what <smtp-pattern-list> regexes are written against.
 */
static size_t reply_subject(const struct smtp_reply *rep, char *buf, size_t len)
{
	int n = rep->status_sent
		? snprintf(buf, len, "%d %s %s", rep->code, rep->status, rep->text ? rep->text : "")
		: snprintf(buf, len, "%d %s", rep->code, rep->text ? rep->text : "");

	return n < 0 ? 0 : (size_t)n >= len ? len - 1 : (size_t)n;
}

/* log_queue_event - one key=value line for a change of the queue's state. */
static void log_queue_event(struct shard *s, const struct queue *q, const char *event,
			    const char *fields, const char *reason)
{
	sb_printf(&s->log, "%s shard=%u queue=%s/%s%s%s reason=", event, s->index,
		  q->domain, q->vmta_name, fields && *fields ? " " : "", fields ? fields : "");
	log_text_field(&s->log, reason);
	sb_addc(&s->log, '\n');
}

/* set_backoff - enter or leave backoff mode; one log line per change. */
static void set_backoff(struct shard *s, struct queue *q, bool on, const char *reason)
{
	if (q->backoff == on)
		return;
	q->backoff = on;
	q->backoff_since_ms = s->now_ms;
	sched_bucket_init(&q->msg_rate, queue_rate(q), s->now_ms);
	log_queue_event(s, q, "backoff", on ? "mode=backoff" : "mode=normal", reason);
	mark_runnable(s, q);
}

/* match_pattern - the queue's first <smtp-pattern-list> rule for rep. */
static const struct cfg_smtp_pattern *match_pattern(const struct queue *q,
						    const struct smtp_reply *rep,
						    char *subj, size_t len)
{
	const struct cfg_smtp_pattern_list *pl = q->settings->smtp_pattern_list;

	if (!pl || rep->local || (rep->code >= 200 && rep->code < 300))
		return NULL;
	size_t n = reply_subject(rep, subj, len);
	for (size_t i = 0; i < pl->count; i++)
		if (cfg_regex_match(pl->patterns[i].re, subj, n) == 1)
			return &pl->patterns[i];
	return NULL;
}

static struct queue *queue_get(struct shard *s, const char *domain,
			       const char *vmta_name)
{
	char key[600];
	const struct cfg *cfg = s->set->cfg;

	snprintf(key, sizeof(key), "%s/%s", domain, vmta_name);
	str_lower(key);
	if (s->nq * 2 >= s->qcap) {
		size_t ncap = s->qcap ? s->qcap * 2 : 256;
		struct queue **nt = xcalloc(ncap, sizeof(*nt));
		for (size_t i = 0; i < s->qcap; i++) {
			if (!s->qtab[i])
				continue;
			size_t j = key_hash(s->qtab[i]->key) & (ncap - 1);
			while (nt[j])
				j = (j + 1) & (ncap - 1);
			nt[j] = s->qtab[i];
		}
		free(s->qtab);
		s->qtab = nt;
		s->qcap = ncap;
	}
	size_t i = key_hash(key) & (s->qcap - 1);
	while (s->qtab[i]) {
		if (strcmp(s->qtab[i]->key, key) == 0)
			return s->qtab[i];
		i = (i + 1) & (s->qcap - 1);
	}
	struct queue *q = xcalloc(1, sizeof(*q));
	q->key = xstrdup(key);
	q->domain = xstrndup(key, strlen(domain));
	q->vmta = strcmp(vmta_name, "{default}") ? cfg_vmta_find(cfg, vmta_name) : NULL;
	q->vmta_name = q->vmta ? q->vmta->name : "{default}";
	q->settings = cfg_queue_lookup(cfg, q->domain, q->vmta ? q->vmta->name : NULL);
	BUG_ON(!q->settings);
	q->shard = s;
	sched_bucket_init(&q->msg_rate, &q->settings->max_msg_rate, s->now_ms);
	sched_bucket_init(&q->connect_rate, &q->settings->max_connect_rate, s->now_ms);
	s->qtab[i] = q;
	s->nq++;
	return q;
}

/* vmta_for - the virtual-mta a message goes out through (pools rotate). */
static const char *vmta_for(struct shard *s, const struct delivery_msg *m)
{
	const struct cfg *cfg = s->set->cfg;

	if (!m->vmta)
		return "{default}";
	if (cfg_vmta_find(cfg, m->vmta))
		return m->vmta;
	for (size_t i = 0; i < cfg_pool_count(cfg); i++) {
		const struct cfg_pool *p = cfg_pool_at(cfg, i);
		if (strcmp(p->name, m->vmta) == 0 && p->member_count)
			return p->members[s->pool_rr[i]++ % p->member_count]->name;
	}
	return "{default}";
}

static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : "";
}

static void take_job(struct shard *s, uint32_t intake, struct delivery_job *job)
{
	const char *vmta = vmta_for(s, job->msg);

	for (uint32_t k = 0; k < job->nrcpt; k++) {
		struct qrcpt *r = xcalloc(1, sizeof(*r));
		r->msg = job->msg;
		delivery_msg_ref(r->msg);
		r->rcpt = job->rcpt[k];
		r->intake = intake;
		struct queue *q = queue_get(s, domain_of(r->msg->rcpt[r->rcpt].addr), vmta);
		rl_push(&q->ready, r);
		mark_runnable(s, q);
		atomic_fetch_add_explicit(&s->pub.queued, 1, memory_order_relaxed);
	}
	atomic_fetch_add_explicit(&s->pub.jobs, 1, memory_order_relaxed);
	delivery_job_free(job);
}

void delivery_report_free(struct delivery_report *r)
{
	if (!r)
		return;
	delivery_msg_unref(r->msg);
	free(r);
}

void delivery_esmtp_text(unsigned esmtp, char *buf, size_t len)
{
	static const struct { unsigned bit; const char *name; } ext[] = {
		{ SMTP_EXT_PIPELINING, "PIPELINING" }, { SMTP_EXT_CHUNKING, "CHUNKING" },
		{ SMTP_EXT_8BITMIME, "8BITMIME" }, { SMTP_EXT_SIZE, "SIZE" },
		{ SMTP_EXT_DSN, "DSN" }, { SMTP_EXT_SMTPUTF8, "SMTPUTF8" },
		{ SMTP_EXT_STARTTLS, "STARTTLS" },
		{ SMTP_EXT_ENHANCEDSTATUSCODES, "ENHANCEDSTATUSCODES" },
		{ SMTP_EXT_AUTH, "AUTH" },
	};
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(ext) && off < len; i++)
		if (esmtp & ext[i].bit)
			off += (size_t)snprintf(buf + off, len - off, "%s%s",
						off ? "," : "", ext[i].name);
}

/* fill_report - the attempt as a DSN needs it, with a message reference. */
static struct delivery_report *fill_report(struct shard *s, const struct queue *q,
					   const struct qrcpt *r,
					   const struct smtp_reply *rep,
					   const struct sconn *c)
{
	struct delivery_report *d = xcalloc(1, sizeof(*d));

	if (r) {
		d->msg = r->msg;
		delivery_msg_ref(d->msg);
		d->rcpt = r->rcpt;
		d->retry_until = r->msg->queued + (int64_t)q->settings->bounce_after;
	}
	d->time_logged = s->now_s;
	if (rep) {
		d->code = rep->code;
		d->local = rep->local;
		snprintf(d->status, sizeof(d->status), "%s", rep->status);
		snprintf(d->text, sizeof(d->text), "%s", rep->text ? rep->text : "");
	}
	snprintf(d->queue, sizeof(d->queue), "%s/%s", q->domain, q->vmta_name);
	snprintf(d->vmta, sizeof(d->vmta), "%s", q->vmta_name);
	if (c) {
		snprintf(d->mx, sizeof(d->mx), "%s", c->mx ? c->mx : "");
		snprintf(d->ip, sizeof(d->ip), "%s", c->ip);
		snprintf(d->local_ip, sizeof(d->local_ip), "%s", c->local_ip);
		if (c->client)
			d->esmtp = smtp_client_extensions(c->client);
		if (c->tls && !c->handshaking) {
			snprintf(d->tls_protocol, sizeof(d->tls_protocol), "%s",
				 tls_conn_protocol(c->tls));
			snprintf(d->tls_cipher, sizeof(d->tls_cipher), "%s",
				 tls_conn_cipher(c->tls));
		}
	}
	return d;
}

/* reply_diag_mta - dsnDiag ("smtp;550 5.1.1 text") and dsnMta ("mx (ip)"). */
static void reply_diag_mta(const struct smtp_reply *rep, const struct sconn *c,
			   char *diag, size_t dlen, char *mta, size_t mlen)
{
	const char *text = rep->text ? rep->text : "";

	if (rep->code)
		snprintf(diag, dlen, "smtp;%d %s %s", rep->code, rep->status, text);
	else
		snprintf(diag, dlen, "smtp;%s", text);
	if (c && c->mx && c->mx[0])
		snprintf(mta, mlen, "%s (%s)", c->mx, c->ip);
	else
		mta[0] = '\0';
}

/* classify - the bounce rule matching rep ("X.Y.Z;text"); its category in *category. */
static const struct cfg_bounce_rule *classify(const struct shard *s,
					      const struct smtp_reply *rep,
					      const char **category)
{
	char key[600];

	snprintf(key, sizeof(key), "%s;%s", rep->status, rep->text ? rep->text : "");
	return cfg_bounce_classify(s->set->cfg, key, category);
}

static enum acct_type acct_type_of(enum delivery_outcome_kind kind)
{
	return kind == DELIVERY_DELIVERED ? ACCT_DELIVERY
	       : kind == DELIVERY_DEFERRED ? ACCT_TRANSIENT : ACCT_BOUNCE;
}

/* accounted - whether some acct-file takes the record of this outcome. */
static bool accounted(const struct shard *s, enum delivery_outcome_kind kind)
{
	enum acct_type type = acct_type_of(kind);

	return acct_wants(s->set->acct, type, 0) &&
	       (type != ACCT_BOUNCE || cfg_global(s->set->cfg)->log_bounces);
}

static void acct_put(struct shard *s, const struct acct_record *rec)
{
	if (acct_emit(s->set->acct, s->set->acct_base + s->index, rec) < 0 &&
	    !s->acct_refused++)
		fprintf(stderr, "coremta: shard %u: the accounting writer is a million records "
			"behind; records are being dropped\n", s->index);
}

/*
 * account - the d, b or t record of one recipient's attempt (when
 * accounted()), written by this shard straight to the accounting writer.
 * Every field points at what the queue, connection and reply already
 * hold: acct_emit() copies them once.
 */
static void account(struct shard *s, const struct queue *q, const struct qrcpt *r,
		    const struct smtp_reply *rep, const struct sconn *c,
		    enum delivery_outcome_kind kind, const char *category)
{
	enum acct_type type = acct_type_of(kind);
	char diag[640], mta[320], esmtp[160], qname[320];
	const struct delivery_msg *m = r->msg;
	const struct delivery_rcpt *rc = &m->rcpt[r->rcpt];
	const bool tls = c && c->tls && !c->handshaking;

	reply_diag_mta(rep, c, diag, sizeof(diag), mta, sizeof(mta));
	snprintf(qname, sizeof(qname), "%s/%s", q->domain, q->vmta_name);
	delivery_esmtp_text(c && c->client ? smtp_client_extensions(c->client) : 0, esmtp,
			    sizeof(esmtp));
	struct acct_header_field hf[ACCT_HEADERS_MAX];
	size_t nh = acct_collect_headers(s->set->acct, m->body, m->body_len, hf, &s->acct_hdr);
	struct acct_record rec = {
		.type = type,
		.time_logged = (time_t)s->now_s,
		.time_queued = (time_t)m->queued,
		.orig = m->mail_from,
		.rcpt = rc->addr,
		.orcpt = rc->orcpt,
		.dsn_action = type == ACCT_DELIVERY ? "relayed"
			      : type == ACCT_TRANSIENT ? "delayed" : "failed",
		.dsn_status = rep->status,
		.dsn_diag = diag,
		.dsn_mta = mta,
		.bounce_cat = type == ACCT_DELIVERY ? NULL : category,
		.src_type = "smtp",
		.src_mta = m->source_ip,
		.dlv_type = "smtp",
		.dlv_source_ip = c ? c->local_ip : NULL,
		.dlv_destination_ip = c ? c->ip : NULL,
		.dlv_esmtp_available = esmtp,
		.dlv_size = m->body_len,
		.vmta = q->vmta_name,
		.job_id = m->job_id,
		.env_id = m->envid,
		.queue = qname,
		.vmta_pool = m->vmta && !cfg_vmta_find(s->set->cfg, m->vmta) ? m->vmta : NULL,
		.dlv_tls_protocol = tls ? tls_conn_protocol(c->tls) : NULL,
		.dlv_tls_cipher = tls ? tls_conn_cipher(c->tls) : NULL,
		.header_count = nh,
		.headers = nh ? hf : NULL,
	};
	acct_put(s, &rec);
}

/* account_queue - the tq record of a queue that could not be tried. */
static void account_queue(struct shard *s, const struct queue *q,
			  const struct smtp_reply *rep, const struct sconn *c)
{
	if (!acct_wants(s->set->acct, ACCT_TRANSIENT_QUEUE, 0))
		return;
	char diag[640], mta[320], qname[320];

	reply_diag_mta(rep, c, diag, sizeof(diag), mta, sizeof(mta));
	snprintf(qname, sizeof(qname), "%s/%s", q->domain, q->vmta_name);
	struct acct_record rec = {
		.type = ACCT_TRANSIENT_QUEUE,
		.time_logged = (time_t)s->now_s,
		.dsn_action = "delayed",
		.dsn_status = rep->status,
		.dsn_diag = diag,
		.dsn_mta = mta,
		.dlv_type = "smtp",
		.dlv_source_ip = c ? c->local_ip : NULL,
		.dlv_destination_ip = c ? c->ip : NULL,
		.vmta = q->vmta_name,
		.queue = qname,
	};
	acct_put(s, &rec);
}

/* dsn_possible - whether a DSN could be sent for r (the intake decides). */
static bool dsn_possible(const struct shard *s, const struct qrcpt *r)
{
	const struct delivery_msg *m = r->msg;
	uint32_t notify = m->rcpt[r->rcpt].notify;

	return cfg_global(s->set->cfg)->deliver_bounces && m->mail_from[0] && !m->no_dsn &&
	       !(notify & DELIVERY_NOTIFY_NEVER);
}

/*
 * make_report - account the attempt, and return the report a DSN may
 * need (NULL when none can be sent: deliveries, null senders, ...).
 */
static struct delivery_report *make_report(struct shard *s, const struct queue *q,
					   const struct qrcpt *r,
					   const struct smtp_reply *rep,
					   const struct sconn *c,
					   enum delivery_outcome_kind kind)
{
	bool acct = accounted(s, kind);
	bool dsn = kind != DELIVERY_DELIVERED && dsn_possible(s, r);
	const struct cfg_bounce_rule *hit = NULL;
	const char *category = NULL;

	/* one classification serves the b record and the DSN decision */
	if (kind != DELIVERY_DELIVERED && (acct || dsn))
		hit = classify(s, rep, &category);
	if (kind == DELIVERY_EXPIRED)
		category = "message-expired";
	if (acct)
		account(s, q, r, rep, c, kind, category);
	/* a bounce rule's "action delete": accounted, never notified */
	if (!dsn || (hit && hit->action == CFG_BOUNCE_DELETE))
		return NULL;
	return fill_report(s, q, r, rep, c);
}

static void finish_rcpt(struct shard *s, struct qrcpt *r,
			enum delivery_outcome_kind kind, struct delivery_report *report)
{
	push_outcome(s, r, kind, report);
	_Atomic uint64_t *ctr = kind == DELIVERY_DELIVERED ? &s->pub.delivered
				: kind == DELIVERY_BOUNCED ? &s->pub.bounced
							   : &s->pub.expired;
	atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&s->pub.queued, 1, memory_order_relaxed);
	delivery_msg_unref(r->msg);
	free(r);
}

static bool expired(const struct shard *s, const struct queue *q,
		    const struct qrcpt *r)
{
	return s->now_s - r->msg->queued >= (int64_t)q->settings->bounce_after;
}

/*
 * defer_rcpt - a transient failure: wait for the next slot of the retry
 * schedule (its last entry repeats), or expire past bounce-after.
 */
static void defer_rcpt(struct shard *s, struct queue *q, struct qrcpt *r,
		       const struct smtp_reply *rep, const struct sconn *c)
{
	const char *mx = c ? c->mx : NULL, *ip = c ? c->ip : NULL;
	const char *tls = c && c->tls && !c->handshaking ? tls_conn_protocol(c->tls) : NULL;

	r->attempts++;
	atomic_fetch_add_explicit(&s->pub.deferred, 1, memory_order_relaxed);
	if (expired(s, q, r)) {
		log_attempt(s, q, r, "expired", rep, mx, ip, tls);
		finish_rcpt(s, r, DELIVERY_EXPIRED, make_report(s, q, r, rep, c, DELIVERY_EXPIRED));
		return;
	}
	log_attempt(s, q, r, "deferred", rep, mx, ip, tls);
	/* NOTIFY=DELAY: one notice per notify-of-delay-every queued */
	bool notice = false;
	uint64_t every = q->settings->notify_of_delay_every;
	if (every && (r->msg->rcpt[r->rcpt].notify & DELIVERY_NOTIFY_DELAY) &&
	    r->msg->mail_from[0]) {
		uint64_t periods = (uint64_t)(s->now_s - r->msg->queued) / every;
		if (periods > r->delay_notices) {
			r->delay_notices = (uint32_t)periods;
			notice = true;
		}
	}
	if (accounted(s, DELIVERY_DEFERRED)) {
		const char *category = NULL;
		classify(s, rep, &category);
		account(s, q, r, rep, c, DELIVERY_DEFERRED, category);
	}
	if (notice) {
		struct delivery_report *dr = fill_report(s, q, r, rep, c);
		dr->delay_notice = notice;
		push_outcome(s, r, DELIVERY_DEFERRED, dr);
	}
	const struct cfg_schedule *sch = queue_retry(q);
	uint64_t delay_ms = sched_retry_delay_ms(sch, r->attempts);
	r->next_try_ms = s->now_ms + delay_ms;
	deferred_push(q, r, delay_ms);
	queue_wake(s, q, r->next_try_ms);
}

static void apply_reply(struct shard *s, struct queue *q, struct qrcpt *r,
			const struct smtp_reply *rep, const struct sconn *c)
{
	const char *mx = c ? c->mx : NULL, *ip = c ? c->ip : NULL;
	const char *tls = c && c->tls && !c->handshaking ? tls_conn_protocol(c->tls) : NULL;

	if (rep->code >= 200 && rep->code < 300) {
		r->attempts++;
		log_attempt(s, q, r, "delivered", rep, mx, ip, tls);
		finish_rcpt(s, r, DELIVERY_DELIVERED, make_report(s, q, r, rep, c, DELIVERY_DELIVERED));
		if (q->backoff && q->settings->backoff_to_normal_after_delivery)
			set_backoff(s, q, false, "backoff-to-normal-after-delivery");
	} else if (rep->code >= 500) {
		r->attempts++;
		log_attempt(s, q, r, "bounced", rep, mx, ip, tls);
		finish_rcpt(s, r, DELIVERY_BOUNCED, make_report(s, q, r, rep, c, DELIVERY_BOUNCED));
	} else {
		defer_rcpt(s, q, r, rep, c);
	}
}

/* fail_ready - every recipient due now gets the same reply. */
static void fail_ready(struct shard *s, struct queue *q, const struct smtp_reply *rep)
{
	struct qrcpt *r;

	if (rep->code < 500 && q->ready.count)
		account_queue(s, q, rep, NULL);

	while ((r = rl_pop(&q->ready)))
		apply_reply(s, q, r, rep, NULL);
}

/* due_deferred - move recipients whose retry time came back to ready. */
static void due_deferred(struct shard *s, struct queue *q)
{
	if (q->wake_ms && q->wake_ms <= s->now_ms)
		q->wake_ms = 0;		/* this is that wake-up */
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++) {
		struct rlist *l = &q->deferred[i].l;
		struct qrcpt *r;
		while ((r = l->head) && r->next_try_ms <= s->now_ms) {
			rl_pop(l);
			q->ndeferred--;
			if (expired(s, q, r)) {
				static const struct smtp_reply gone = {
					.code = 554, .status = "4.4.7", .local = true,
					.text = "message expired (bounce-after) before it could be delivered",
				};
				log_attempt(s, q, r, "expired", &gone, NULL, NULL, NULL);
				finish_rcpt(s, r, DELIVERY_EXPIRED, make_report(s, q, r, &gone, NULL, DELIVERY_EXPIRED));
				continue;
			}
			rl_push(&q->ready, r);
		}
		if (l->head)
			queue_wake(s, q, l->head->next_try_ms);
	}
}

/* ------------------------------------------------------------------ */
/* DNS                                                                  */

static void dns_sock(void *ctx, int fd, bool readable, bool writable);
static void schedule(struct shard *s, struct queue *q);

static void on_dns(void *ctx, const struct dns_result *res)
{
	struct queue *q = ctx;
	struct shard *s = q->shard;

	q->targets = *res;
	q->dns = QDNS_READY;
	/* MX targets take default-smtp-port; a route carries its own ports */
	if (!q->settings->smtp_hosts)
		for (uint8_t i = 0; i < q->targets.naddrs; i++)
			q->targets.addrs[i].port = (uint16_t)q->settings->default_smtp_port;
	q->next_target = 0;
	q->target_seq++;
	q->failed_targets = 0;
	q->unavailable = 0;
	uint32_t ttl = res->ttl ? res->ttl : 60;
	q->dns_expires_ms = s->now_ms + (uint64_t)ttl * 1000;
	mark_runnable(s, q);
}

static void arm_poll(struct shard *s, int fd)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);

	if (!sqe) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	BUG_ON(!sqe);
	unsigned mask = (s->dns_want[fd] & 1 ? POLLIN : 0) | (s->dns_want[fd] & 2 ? POLLOUT : 0);
	io_uring_prep_poll_add(sqe, fd, mask);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_POLL, (uint32_t)fd, s->dns_gen[fd]));
	s->dns_armed[fd] = 1;
}

static void dns_sock(void *ctx, int fd, bool readable, bool writable)
{
	struct shard *s = ctx;

	BUG_ON(fd < 0 || fd >= MAX_DNS_FDS);
	s->dns_want[fd] = (uint8_t)((readable ? 1 : 0) | (writable ? 2 : 0));
	if (!readable && !writable) {
		/* c-ares closes it; a poll still armed on it is now stale */
		s->dns_gen[fd]++;
		s->dns_armed[fd] = 0;
		return;
	}
	if (!s->dns_armed[fd])
		arm_poll(s, fd);
}

/* start_dns - targets of the queue: its smtp-hosts route, else MX. */
static void start_dns(struct shard *s, struct queue *q)
{
	struct dns_result res;
	int rc;

	q->dns = QDNS_PENDING;
	if (q->settings->smtp_hosts) {
		struct dns_route route;
		const char *why;
		if (dns_route_parse(q->settings->smtp_hosts,
				    (uint16_t)q->settings->default_smtp_port, &route, &why) < 0) {
			struct smtp_reply rep = { .code = 451, .status = "4.3.5", .local = true,
						  .text = why };
			q->dns = QDNS_NONE;
			fail_ready(s, q, &rep);
			return;
		}
		rc = dns_resolve_route(s->dns, &route, on_dns, q, &res);
	} else {
		rc = dns_resolve_mx(s->dns, q->domain, on_dns, q, &res);
	}
	if (rc == DNS_ANSWERED) {
		on_dns(q, &res);
	} else if (rc < 0 && rc != -EAGAIN) {
		struct smtp_reply rep = { .code = 550, .status = "5.1.2", .local = true,
					  .text = "not a valid domain name" };
		q->dns = QDNS_NONE;
		fail_ready(s, q, &rep);
	} else if (rc == -EAGAIN) {
		q->dns = QDNS_NONE;	/* too many lookups in flight: next tick */
	}
}

/* ------------------------------------------------------------------ */
/* connections                                                          */

static struct io_uring_sqe *get_sqe(struct shard *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);

	if (!sqe) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	BUG_ON(!sqe);
	return sqe;
}

static struct sconn *conn_get(struct shard *s, uint32_t slot, uint32_t gen)
{
	return slot_get(&s->conns, slot, gen);
}

static struct sconn *conn_alloc(struct shard *s)
{
	struct sconn *c = slot_alloc(&s->conns);

	c->fd = -1;
	return c;
}

static void arm_recv(struct shard *s, struct sconn *c)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_recv(sqe, c->fd, c->rbuf, sizeof(c->rbuf), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, c->hdr.slot, c->hdr.gen));
	c->recv_inflight = true;
}

static void submit_send(struct shard *s, struct sconn *c, const void *p, size_t len)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_send(sqe, c->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, c->hdr.slot, c->hdr.gen));
	c->send_inflight = true;
}

static void set_deadline(struct shard *s, struct sconn *c)
{
	const struct cfg_queue *qs = c->q->settings;
	uint64_t sec;

	if (c->state == SC_CONNECTING) {
		sec = qs->connect_timeout;
	} else {
		switch (smtp_client_phase(c->client)) {
		case SMTPC_PHASE_GREETING:
			sec = qs->smtp_greeting_timeout;
			break;
		case SMTPC_PHASE_IDLE:
			sec = qs->connection_idle_timeout;
			break;
		case SMTPC_PHASE_BODY:
			sec = qs->data_send_timeout;
			break;
		case SMTPC_PHASE_DATA_END:
			sec = qs->smtp_data_termination_timeout;
			break;
		case SMTPC_PHASE_TLS:
		case SMTPC_PHASE_COMMAND:
		default:
			sec = qs->smtp_command_timeout;
		}
	}
	conn_deadline(s, c, s->now_ms + sec * 1000);
}

static void conn_release(struct shard *s, struct sconn *c)
{
	struct queue *q = c->q;

	for (size_t i = 0; i < c->ntxn; i++)
		if (c->txn[i])
			rl_push(&q->ready, c->txn[i]);	/* not attempted: back in line */
	c->ntxn = 0;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	smtp_client_free(c->client);
	tls_conn_free(c->tls);
	sb_free(&c->out);
	sb_free(&c->inflight);
	free(c->scratch);
	free(c->txn);
	free(c->txn_rcpts);
	q->conns--;
	if (c->connecting) {
		c->connecting = false;
		q->connecting--;
	}
	if (c->idle)
		q->idle--;
	if (c->quitting)
		q->quitting--;
	atomic_fetch_sub_explicit(&s->set->total_conns, 1, memory_order_relaxed);
	tw_cancel(&s->timers, &c->deadline_timer);
	slot_free(&s->conns, c);
	mark_runnable(s, q);
}

static void conn_pump(struct shard *s, struct sconn *c);

/* conn_close - no more work: free once nothing is in flight. */
static void conn_close(struct shard *s, struct sconn *c)
{
	c->state = SC_CLOSING;
	if (c->fd >= 0 && (c->recv_inflight || c->send_inflight))
		shutdown(c->fd, SHUT_RDWR);	/* completes what is in flight */
	if (!c->recv_inflight && !c->send_inflight)
		conn_release(s, c);
}

static void handle_event(struct shard *s, struct sconn *c, enum smtp_client_event ev);

/* conn_quit - QUIT an idle connection; it closes when answered. */
static void conn_quit(struct shard *s, struct sconn *c)
{
	if (c->idle) {
		c->idle = false;
		c->q->idle--;
	}
	smtp_client_quit(c->client, &c->out);
	c->quitting = true;
	c->q->quitting++;
	set_deadline(s, c);
	conn_pump(s, c);
}

/* conn_retire - stop using a connection: QUIT now if idle, else after its transaction. */
static void conn_retire(struct shard *s, struct sconn *c)
{
	if (c->state == SC_OPEN && c->idle && !c->quitting)
		conn_quit(s, c);
	else
		c->retire = true;
}

/* retire_conns - every connection of q (src < 0), or those from source src. */
static void retire_conns(struct shard *s, struct queue *q, int src)
{
	for (uint32_t i = 0; i < s->conns.count; i++) {
		struct sconn *c = slot_at(&s->conns, i);
		if (c && c->q == q && c->state != SC_CLOSING && (src < 0 || c->src == src))
			conn_retire(s, c);
	}
}

/*
 * Source IPs of a queue: the virtual-mta's smtp-source-ip, else its
 * smtp-source-host addresses, else one the kernel picks (index 0, NULL).
 * disable-source-ip takes one out of the queue's rotation.
 */
static uint32_t queue_nsrc(const struct queue *q)
{
	if (q->vmta && !q->vmta->smtp_source_ip && q->vmta->source_host_count)
		return (uint32_t)q->vmta->source_host_count;
	return 1;
}

static const char *queue_source_ip(const struct queue *q, uint32_t i)
{
	if (!q->vmta)
		return NULL;
	if (q->vmta->smtp_source_ip)
		return q->vmta->smtp_source_ip;
	return q->vmta->source_host_count ? q->vmta->source_hosts[i].ip : NULL;
}

/* pick_source - the next enabled source (round robin), or -1 if none is. */
static int pick_source(const struct shard *s, struct queue *q, bool take)
{
	uint32_t n = queue_nsrc(q);

	for (uint32_t k = 0; k < n; k++) {
		uint32_t i = (q->src_rr + k) % n;
		if (q->src_off_until && q->src_off_until[i] > s->now_ms)
			continue;
		if (take)
			q->src_rr = i + 1;
		return (int)i;
	}
	return -1;
}

static void disable_source(struct shard *s, struct queue *q, const struct sconn *c,
			   uint64_t reenable_after, const char *reason)
{
	char fields[160], when[32];

	if (c->src < 0)
		return;
	if (!q->src_off_until)
		q->src_off_until = xcalloc(queue_nsrc(q), sizeof(uint64_t));
	if (q->src_off_until[c->src] > s->now_ms)
		return;		/* a connection opened before it was disabled */
	/* no reenable-after: until a restart (reenable-source-ip-after is not read) */
	q->src_off_until[c->src] = reenable_after ? s->now_ms + reenable_after * 1000
						  : UINT64_MAX;
	if (reenable_after)
		snprintf(when, sizeof(when), "%" PRIu64 "s", reenable_after);
	else
		snprintf(when, sizeof(when), "never");
	const char *ip = queue_source_ip(q, (uint32_t)c->src);
	snprintf(fields, sizeof(fields), "source=%s reenable-after=%s",
		 ip ? ip : c->local_ip[0] ? c->local_ip : "default", when);
	log_queue_event(s, q, "disable-source-ip", fields, reason);
	retire_conns(s, q, c->src);
}

/* permanent - a 4xx reply that a pattern turns into a bounce. */
static struct smtp_reply permanent(const struct smtp_reply *rep)
{
	struct smtp_reply p = *rep;

	if (p.code < 500) {
		p.code = 554;
		p.status[0] = '5';
	}
	return p;
}

/* transient - the same reply as a deferral (never a bounce for bystanders). */
static struct smtp_reply transient(const struct smtp_reply *rep)
{
	struct smtp_reply t = *rep;

	if (t.code >= 500) {
		t.code = 451;
		t.status[0] = '4';
	}
	return t;
}

/*
 * defer_queue - defer-queue: every waiting recipient goes on its retry
 * schedule, and nothing is tried before the schedule's first interval;
 * the queue's connections end their transaction and QUIT.
 */
static void defer_queue(struct shard *s, struct queue *q, const struct smtp_reply *rep,
			const char *reason)
{
	const struct cfg_schedule *sch = queue_retry(q);
	char fields[64];

	q->hold_until_ms = s->now_ms + (uint64_t)sch->seconds[0] * 1000;
	snprintf(fields, sizeof(fields), "retry=%us recipients=%u", sch->seconds[0],
		 q->ready.count);
	log_queue_event(s, q, "defer-queue", fields, reason);
	struct smtp_reply t = transient(rep);
	fail_ready(s, q, &t);
	retire_conns(s, q, -1);
	queue_wake(s, q, q->hold_until_ms);
}

/* bounce_queue - bounce-queue: every recipient waiting in q bounces with rep. */
static void bounce_queue(struct shard *s, struct queue *q, const struct smtp_reply *rep,
			 const char *reason)
{
	struct smtp_reply p = permanent(rep);
	char fields[64];
	struct qrcpt *r;

	snprintf(fields, sizeof(fields), "recipients=%u", q->ready.count + q->ndeferred);
	log_queue_event(s, q, "bounce-queue", fields, reason);
	while ((r = rl_pop(&q->ready)))
		apply_reply(s, q, r, &p, NULL);
	while ((r = deferred_pop(q)))
		apply_reply(s, q, r, &p, NULL);
}

/*
 * apply_queue_actions - what a matched <smtp-pattern-list> rule does to
 * the queue.  The recipient whose reply matched (bounce-rcpt, skip-mx) is
 * the caller's.  c is NULL when no connection is involved.
 */
static void apply_queue_actions(struct shard *s, struct queue *q, const struct sconn *c,
				const struct cfg_smtp_pattern *pat,
				const struct smtp_reply *rep, const char *subj)
{
	unsigned a = pat->actions;

	if (a & CFG_ACT_MODE_BACKOFF)
		set_backoff(s, q, true, subj);
	if (a & CFG_ACT_MODE_NORMAL)
		set_backoff(s, q, false, subj);
	if ((a & CFG_ACT_DISABLE_SOURCE_IP) && c)
		disable_source(s, q, c, pat->reenable_after, subj);
	if (a & CFG_ACT_BOUNCE_QUEUE)
		bounce_queue(s, q, rep, subj);
	else if (a & CFG_ACT_DEFER_QUEUE)
		defer_queue(s, q, rep, subj);
}

/* conn_next_txn - start the next transaction on an idle connection. */
static void conn_next_txn(struct shard *s, struct sconn *c)
{
	struct queue *q = c->q;
	const struct cfg_queue *qs = q->settings;

	for (;;) {
		/*
		 * A connection the queue no longer wants: its source or MX was
		 * given up, defer-queue holds the queue, or backoff lowered
		 * max-smtp-out below what is open.
		 */
		if (c->retire || q->hold_until_ms > s->now_ms ||
		    q->conns - q->quitting > queue_max_out(q)) {
			conn_quit(s, c);
			return;
		}
		if (q->ready.count == 0 ||
		    (qs->max_msg_per_connection && c->msgs >= qs->max_msg_per_connection) ||
		    atomic_load(&s->stop)) {
			if (q->ready.count == 0 && qs->connection_idle_timeout &&
			    !atomic_load(&s->stop) &&
			    !(qs->max_msg_per_connection && c->msgs >= qs->max_msg_per_connection)) {
				if (!c->idle) {
					c->idle = true;
					q->idle++;
				}
				set_deadline(s, c);
				return;
			}
			conn_quit(s, c);
			return;
		}
		if (!sched_bucket_take(&q->msg_rate, s->now_ms)) {
			/* the rate says wait: idle until a token comes */
			if (!c->idle) {
				c->idle = true;
				q->idle++;
			}
			conn_deadline(s, c, s->now_ms + sched_bucket_wait_ms(&q->msg_rate, s->now_ms) + 1000 +
						    qs->connection_idle_timeout * 1000);
			queue_wake(s, q, s->now_ms + sched_bucket_wait_ms(&q->msg_rate, s->now_ms));
			return;
		}
		if (c->idle) {
			c->idle = false;
			q->idle--;
		}
		/*
		 * Recipients of one message, as many as a transaction takes.
		 * A message's recipients of one queue arrive together, so they
		 * sit together at the head: no scan of the queue.
		 */
		struct delivery_msg *m = q->ready.head->msg;
		uint32_t max = qs->max_rcpt_per_transaction;
		c->ntxn = 0;
		while (q->ready.head && q->ready.head->msg == m && c->ntxn < max) {
			struct qrcpt *r = rl_pop(&q->ready);
			if (expired(s, q, r)) {
				static const struct smtp_reply gone = {
					.code = 554, .status = "4.4.7", .local = true,
					.text = "message expired (bounce-after) before it could be delivered",
				};
				r->attempts++;
				log_attempt(s, q, r, "expired", &gone, NULL, NULL, NULL);
				finish_rcpt(s, r, DELIVERY_EXPIRED, make_report(s, q, r, &gone, NULL, DELIVERY_EXPIRED));
				continue;
			}
			if (c->ntxn == c->cap_txn) {
				c->cap_txn = c->cap_txn ? c->cap_txn * 2 : 8;
				c->txn = xrealloc(c->txn, c->cap_txn * sizeof(*c->txn));
				c->txn_rcpts = xrealloc(c->txn_rcpts,
							c->cap_txn * sizeof(*c->txn_rcpts));
			}
			c->txn[c->ntxn] = r;
			c->txn_rcpts[c->ntxn] = (struct smtp_rcpt){
				.addr = m->rcpt[r->rcpt].addr,
				.notify = m->rcpt[r->rcpt].notify,
				.orcpt = m->rcpt[r->rcpt].orcpt,
			};
			c->ntxn++;
		}
		if (!c->ntxn)
			continue;	/* all of them had expired */
		/* the rate counts attempted recipients: the first took its token */
		for (size_t i = 1; i < c->ntxn; i++)
			sched_bucket_take(&q->msg_rate, s->now_ms);
		c->txn_desc = (struct smtp_txn){
			.mail_from = m->mail_from,
			.envid = m->envid,
			.body_8bit = m->body_8bit,
			.rcpts = c->txn_rcpts,
			.rcpt_count = c->ntxn,
			.body = m->body,
			.body_len = m->body_len,
		};
		c->txn_start_ms = s->now_ms;
		c->msgs++;
		enum smtp_client_event ev = smtp_client_start(c->client, &c->txn_desc, &c->out);
		if (ev == SMTPC_EV_TXN_DONE) {
			handle_event(s, c, ev);
			return;
		}
		c->body_more = true;
		set_deadline(s, c);
		conn_pump(s, c);
		return;
	}
}

/* advance_target - the queue moves on to its next MX address. */
static void advance_target(struct queue *q)
{
	q->next_target++;
	q->target_seq++;
}

/*
 * targets_exhausted - every address of the queue failed or was skipped in
 * a row: start over from the first, after a fresh lookup.
 */
static bool targets_exhausted(struct queue *q)
{
	uint32_t n = q->targets.naddrs ? q->targets.naddrs : 1;

	if (q->failed_targets + q->unavailable < n)
		return false;
	q->failed_targets = 0;
	q->unavailable = 0;
	q->next_target = 0;
	q->target_seq++;
	q->dns = QDNS_NONE;	/* look again next time */
	return true;
}

/*
 * target_failed - the connection to one address failed before any txn.
 * A failure of an address the queue already left (a second connection to
 * it) is not counted again: "every MX failed" means every one.
 */
static void target_failed(struct shard *s, struct sconn *c, const struct smtp_reply *rep)
{
	struct queue *q = c->q;

	if (c->target_seq != q->target_seq)
		return;
	q->failed_targets++;
	advance_target(q);
	if (targets_exhausted(q)) {
		/* every MX failed in a row: the queue waits its retry */
		struct smtp_reply r = *rep;
		if (r.code >= 500 && !q->settings->bounce_upon_5xx_greeting)
			r.code = 451;
		fail_ready(s, q, &r);
	}
}

/*
 * skip_target - the MX said 421 (smtp-421-means-mx-unavailable) or a
 * skip-mx pattern matched: the transaction's recipients went back in line
 * without an attempt counted, and the next MX gets them now.  Only when
 * every MX was given up do they count an attempt and wait their retry.
 */
static void skip_target(struct shard *s, struct sconn *c, const struct smtp_reply *rep,
			size_t nrcpt)
{
	struct queue *q = c->q;
	char fields[DNS_NAME_MAX + 96], subj[1200];

	snprintf(fields, sizeof(fields), "mx=%s ip=%s recipients=%zu", c->mx ? c->mx : "",
		 c->ip, nrcpt);
	reply_subject(rep, subj, sizeof(subj));
	log_queue_event(s, q, "mx-unavailable", fields, subj);
	mark_runnable(s, q);
	if (c->target_seq != q->target_seq)
		return;
	q->unavailable++;
	advance_target(q);
	if (targets_exhausted(q)) {
		struct smtp_reply t = transient(rep);
		fail_ready(s, q, &t);
	}
}

/*
 * txn_results - each recipient's reply, through the queue's
 * <smtp-pattern-list> first: a rule's queue actions apply once per
 * distinct reply (a DATA reply is shared by every recipient).
 */
static void txn_results(struct shard *s, struct sconn *c)
{
	struct queue *q = c->q;
	const struct cfg_smtp_pattern *pat = NULL;
	const char *seen_text = NULL;
	int seen_code = 0;
	char subj[1200];
	struct smtp_reply skip = { 0 };
	size_t skipped = 0;
	bool answered = false;

	for (size_t i = 0; i < c->ntxn; i++) {
		struct smtp_reply rep;
		smtp_client_result(c->client, i, &rep);
		struct qrcpt *r = c->txn[i];
		c->txn[i] = NULL;
		if (i == 0 || rep.text != seen_text || rep.code != seen_code) {
			seen_text = rep.text;
			seen_code = rep.code;
			pat = match_pattern(q, &rep, subj, sizeof(subj));
			if (pat)
				apply_queue_actions(s, q, c, pat, &rep, subj);
		}
		unsigned act = pat ? pat->actions : 0;
		bool transient_reply = rep.code >= 400 && rep.code < 500;
		if (transient_reply && (act & (CFG_ACT_BOUNCE_RCPT | CFG_ACT_BOUNCE_QUEUE))) {
			struct smtp_reply p = permanent(&rep);
			apply_reply(s, q, r, &p, c);
		} else if (!rep.local && rep.code >= 400 &&
			   ((act & CFG_ACT_SKIP_MX) ||
			    (rep.code == 421 && q->settings->smtp_421_means_mx_unavailable))) {
			rl_push(&q->ready, r);	/* not an attempt: the next MX gets it */
			skip = rep;
			skipped++;
		} else {
			answered |= !rep.local;
			apply_reply(s, q, r, &rep, c);
		}
	}
	c->ntxn = 0;
	if (skipped) {
		c->retire = true;
		skip_target(s, c, &skip, skipped);
	} else if (answered) {
		q->unavailable = 0;	/* this MX answers: the skip count starts over */
	}
}

static void handle_event(struct shard *s, struct sconn *c, enum smtp_client_event ev)
{
	struct smtp_reply rep;

	switch (ev) {
	case SMTPC_EV_NONE:
		/*
		 * DATA's body is asked for before the 354 (and got nothing):
		 * the reply that starts it must re-arm the body pump.
		 */
		if (smtp_client_phase(c->client) == SMTPC_PHASE_BODY)
			c->body_more = true;
		set_deadline(s, c);
		conn_pump(s, c);
		return;
	case SMTPC_EV_READY:
		c->q->failed_targets = 0;
		conn_next_txn(s, c);
		return;
	case SMTPC_EV_STARTTLS:
		if (!s->set->tls_client) {
			smtp_client_abort(c->client, SMTPC_ABORT_TLS);
			handle_event(s, c, SMTPC_EV_FAILED);
			return;
		}
		c->tls = tls_conn_new(s->set->tls_client, c->mx_name[0] ? c->mx_name : NULL);
		if (!c->tls) {
			handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_TLS));
			return;
		}
		c->handshaking = true;
		tls_conn_handshake(c->tls);
		set_deadline(s, c);
		conn_pump(s, c);
		return;
	case SMTPC_EV_TXN_DONE:
		txn_results(s, c);
		conn_next_txn(s, c);
		return;
	case SMTPC_EV_FAILED:
		smtp_client_failure(c->client, &rep);
		if (c->ntxn) {
			txn_results(s, c);
		} else {
			/* a greeting, EHLO or STARTTLS refusal can match a pattern too */
			char subj[1200];
			const struct cfg_smtp_pattern *pat =
				match_pattern(c->q, &rep, subj, sizeof(subj));
			if (pat)
				apply_queue_actions(s, c->q, c, pat, &rep, subj);
			/*
			 * Refused for the source IP it came from, with another
			 * source left: that is no failure of the MX.
			 */
			bool source_only = pat && (pat->actions & CFG_ACT_DISABLE_SOURCE_IP) &&
					   pick_source(s, c->q, false) >= 0;
			if (c->msgs == 0 && !source_only)
				target_failed(s, c, &rep);
		}
		conn_close(s, c);
		return;
	case SMTPC_EV_CLOSED:
		conn_close(s, c);
		return;
	}
	BUG_ON(1);
}

/* feed_plain - server bytes (decrypted) to the client state machine. */
static void feed_plain(struct shard *s, struct sconn *c, const char *buf, size_t len)
{
	size_t off = 0;

	while (off < len && c->hdr.used && c->state == SC_OPEN) {
		size_t used = 0;
		enum smtp_client_event ev = smtp_client_input(c->client, buf + off,
							      len - off, &used, &c->out);
		off += used;
		if (ev == SMTPC_EV_STARTTLS) {
			/* RFC 3207: plaintext after the 220 is an injection */
			if (off < len) {
				handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_TLS));
				return;
			}
		}
		handle_event(s, c, ev);
		if (ev == SMTPC_EV_FAILED || ev == SMTPC_EV_CLOSED)
			return;
		if (!used && ev == SMTPC_EV_NONE)
			return;
	}
}

static void tls_progress(struct shard *s, struct sconn *c)
{
	if (c->handshaking) {
		int rc = tls_conn_handshake(c->tls);
		if (rc == -EAGAIN)
			return;
		if (rc < 0) {
			handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_TLS));
			return;
		}
		c->handshaking = false;
		smtp_client_tls_started(c->client, &c->out);
		set_deadline(s, c);
	}
	char plain[RBUF_SIZE];
	for (;;) {
		ssize_t n = tls_conn_read(c->tls, plain, sizeof(plain));
		if (n > 0) {
			feed_plain(s, c, plain, (size_t)n);
			if (!c->hdr.used || c->state != SC_OPEN)
				return;
			continue;
		}
		if (n != -EAGAIN)
			handle_event(s, c, smtp_client_abort(c->client, n == 0 ? SMTPC_ABORT_EOF
										: SMTPC_ABORT_TLS));
		return;
	}
}

/*
 * conn_pump - keep one send in flight: commands first, then body pieces;
 * through TLS once it is up.
 */
static void conn_pump(struct shard *s, struct sconn *c)
{
	if (!c->hdr.used || c->send_inflight || c->fd < 0 || c->state != SC_OPEN)
		return;
	if (c->tls) {
		if (!c->handshaking) {
			while (c->out.len) {
				ssize_t n = tls_conn_write(c->tls, c->out.buf, c->out.len);
				if (n <= 0)
					break;
				memmove(c->out.buf, c->out.buf + n, c->out.len - (size_t)n);
				c->out.len -= (size_t)n;
			}
			/* body pieces while the TLS output has room */
			while (!c->out.len && c->body_more &&
			       tls_conn_pending_output(c->tls) < TLS_BUF_CAP / 2) {
				if (!c->scratch)
					c->scratch = xmalloc(SCRATCH_SIZE);
				const char *data;
				size_t n = smtp_client_body(c->client, c->scratch, SCRATCH_SIZE, &data);
				if (!n) {
					c->body_more = false;
					break;
				}
				/* a piece counts as sent once returned: queue it whole */
				sb_add(&c->out, data, n);
				while (c->out.len) {
					ssize_t w = tls_conn_write(c->tls, c->out.buf, c->out.len);
					if (w <= 0)
						break;
					memmove(c->out.buf, c->out.buf + w, c->out.len - (size_t)w);
					c->out.len -= (size_t)w;
				}
			}
		}
		size_t len;
		const void *p = tls_conn_output(c->tls, &len);
		if (p && len)
			submit_send(s, c, p, len);
		return;
	}
	if (c->inflight_off < c->inflight.len) {
		submit_send(s, c, c->inflight.buf + c->inflight_off,
			    c->inflight.len - c->inflight_off);
		return;
	}
	if (c->out.len) {
		struct strbuf t = c->inflight;
		c->inflight = c->out;
		c->out = t;
		sb_reset(&c->out);
		c->inflight_off = 0;
		submit_send(s, c, c->inflight.buf, c->inflight.len);
		return;
	}
	if (c->zc_off < c->zc_len) {
		submit_send(s, c, c->zc + c->zc_off, c->zc_len - c->zc_off);
		return;
	}
	if (c->body_more) {
		if (!c->scratch)
			c->scratch = xmalloc(SCRATCH_SIZE);
		const char *data;
		size_t n = smtp_client_body(c->client, c->scratch, SCRATCH_SIZE, &data);
		if (!n) {
			c->body_more = false;
			set_deadline(s, c);
			return;
		}
		/* BDAT: data points into the message (zero copy); DATA: scratch */
		c->zc = data;
		c->zc_len = n;
		c->zc_off = 0;
		submit_send(s, c, data, n);
	}
}

static void on_send(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
{
	struct sconn *c = conn_get(s, slot, gen);

	if (!c)
		return;
	c->send_inflight = false;
	if (c->state == SC_CLOSING) {
		conn_close(s, c);
		return;
	}
	if (cqe->res < 0) {
		handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_IO));
		return;
	}
	size_t n = (size_t)cqe->res;
	if (c->tls) {
		tls_conn_output_consumed(c->tls, n);
	} else if (c->inflight_off < c->inflight.len) {
		c->inflight_off += n;
	} else {
		c->zc_off += n;
	}
	conn_pump(s, c);
}

static void on_recv(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
{
	struct sconn *c = conn_get(s, slot, gen);

	if (!c)
		return;
	c->recv_inflight = false;
	if (c->state == SC_CLOSING) {
		conn_close(s, c);
		return;
	}
	if (cqe->res <= 0) {
		handle_event(s, c, smtp_client_abort(c->client, cqe->res == 0 ? SMTPC_ABORT_EOF
									     : SMTPC_ABORT_IO));
		return;
	}
	if (c->tls) {
		if (tls_conn_feed(c->tls, c->rbuf, (size_t)cqe->res) < 0)
			handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_TLS));
		else
			tls_progress(s, c);
	} else {
		feed_plain(s, c, c->rbuf, (size_t)cqe->res);
	}
	if (c->hdr.used && c->state == SC_OPEN) {
		arm_recv(s, c);
		conn_pump(s, c);
	}
}

static void on_connect(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
{
	struct sconn *c = conn_get(s, slot, gen);

	if (!c)
		return;
	if (c->state == SC_CLOSING) {
		conn_close(s, c);
		return;
	}
	if (cqe->res < 0) {
		struct smtp_reply rep = { .code = 451, .status = "4.4.1", .local = true,
					  .text = "connection refused or unreachable" };
		char text[160];
		snprintf(text, sizeof(text), "connect to %s [%s]: %s", c->mx, c->ip,
			 strerror(-cqe->res));
		rep.text = text;
		target_failed(s, c, &rep);
		conn_close(s, c);
		return;
	}
	c->state = SC_OPEN;
	struct sockaddr_storage la;
	socklen_t lalen = sizeof(la);
	if (getsockname(c->fd, (struct sockaddr *)&la, &lalen) == 0)
		inet_ntop(la.ss_family,
			  la.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&la)->sin6_addr
						   : (void *)&((struct sockaddr_in *)&la)->sin_addr,
			  c->local_ip, sizeof(c->local_ip));
	c->connecting = false;
	c->q->connecting--;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	const struct cfg_queue *qs = c->q->settings;
	const char *helo = c->q->vmta && c->q->vmta->host_name ? c->q->vmta->host_name
			   : cfg_global(s->set->cfg)->host_name ? cfg_global(s->set->cfg)->host_name
								: s->hostname;
	struct smtp_client_params p = {
		.helo_name = helo,
		.want_starttls = qs->use_starttls && s->set->tls_client,
		.require_starttls = qs->require_starttls,
		.allow_pipelining = !qs->ignore_pipelining,
		.allow_chunking = !qs->ignore_chunking,
		.allow_8bitmime = !qs->ignore_8bitmime,
		.allow_dsn = !qs->ignore_dsn,
	};
	c->client = smtp_client_new(&p);
	set_deadline(s, c);
	arm_recv(s, c);
}

/* open_conn - one more connection for the queue, to its next target. */
static bool open_conn(struct shard *s, struct queue *q)
{
	if (!q->targets.naddrs)
		return false;
	int srci = pick_source(s, q, true);
	if (srci < 0)
		return false;
	uint32_t total = atomic_fetch_add_explicit(&s->set->total_conns, 1, memory_order_relaxed);
	if (total >= s->set->total_max) {
		atomic_fetch_sub_explicit(&s->set->total_conns, 1, memory_order_relaxed);
		return false;
	}
	struct sconn *c = conn_alloc(s);
	const struct dns_addr *a = &q->targets.addrs[q->next_target % q->targets.naddrs];
	c->q = q;
	c->addr = *a;
	c->target_seq = q->target_seq;
	c->src = srci;
	snprintf(c->mx_name, sizeof(c->mx_name), "%s", dns_host_name(&q->targets, a->host));
	c->mx = c->mx_name;
	memset(&c->sa, 0, sizeof(c->sa));
	socklen_t salen;
	if (a->family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&c->sa;
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = a->ip.v6;
		s6->sin6_port = htons(a->port);
		salen = sizeof(*s6);
		inet_ntop(AF_INET6, &a->ip.v6, c->ip, sizeof(c->ip));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&c->sa;
		s4->sin_family = AF_INET;
		s4->sin_addr = a->ip.v4;
		s4->sin_port = htons(a->port);
		salen = sizeof(*s4);
		inet_ntop(AF_INET, &a->ip.v4, c->ip, sizeof(c->ip));
	}
	q->conns++;
	q->connecting++;
	c->connecting = true;
	c->state = SC_CONNECTING;
	uint32_t seen = atomic_load_explicit(&s->pub.max_conns_seen, memory_order_relaxed);
	if (q->conns > seen)
		atomic_store_explicit(&s->pub.max_conns_seen, q->conns, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->pub.connections, 1, memory_order_relaxed);
	c->fd = socket(a->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	const char *src = queue_source_ip(q, (uint32_t)srci);
	if (c->fd >= 0 && src) {
		/* the virtual-mta's sending address */
		struct sockaddr_storage la = { 0 };
		socklen_t lalen = 0;
		if (a->family == AF_INET &&
		    inet_pton(AF_INET, src, &((struct sockaddr_in *)&la)->sin_addr) == 1) {
			la.ss_family = AF_INET;
			lalen = sizeof(struct sockaddr_in);
		} else if (a->family == AF_INET6 &&
			   inet_pton(AF_INET6, src, &((struct sockaddr_in6 *)&la)->sin6_addr) == 1) {
			la.ss_family = AF_INET6;
			lalen = sizeof(struct sockaddr_in6);
		}
		if (lalen && bind(c->fd, (struct sockaddr *)&la, lalen) < 0) {
			close(c->fd);
			c->fd = -1;
		}
	}
	if (c->fd < 0) {
		struct smtp_reply rep = { .code = 451, .status = "4.4.0", .local = true,
					  .text = "cannot create or bind the outbound socket" };
		fail_ready(s, q, &rep);
		conn_release(s, c);
		return false;
	}
	struct io_uring_sqe *sqe = get_sqe(s);
	io_uring_prep_connect(sqe, c->fd, (struct sockaddr *)&c->sa, salen);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_CONNECT, c->hdr.slot, c->hdr.gen));
	c->send_inflight = true;	/* the connect is "in flight" like a send */
	set_deadline(s, c);
	return true;
}

/* queue_room - connections the shared caps allow the queue now. */
static uint32_t queue_room(const struct shard *s, const struct queue *q)
{
	uint32_t total = atomic_load_explicit(&s->set->total_conns, memory_order_relaxed);

	return total >= s->set->total_max ? 0 : s->set->total_max - total;
}

/*
 * schedule - give a queue's due recipients to connections: idle ones
 * first, then new ones up to max-smtp-out and what the rates allow.
 */
static void schedule(struct shard *s, struct queue *q)
{
	uint64_t back = q->settings->backoff_to_normal_after;
	if (q->backoff && back) {
		uint64_t end = q->backoff_since_ms + back * 1000;
		if (s->now_ms >= end)
			set_backoff(s, q, false, "backoff-to-normal-after");
		else
			queue_wake(s, q, end);
	}
	due_deferred(s, q);
	if (!q->ready.count)
		return;
	if (q->hold_until_ms > s->now_ms) {
		/* defer-queue: the recipients wait, uncounted, for the hold to end */
		queue_wake(s, q, q->hold_until_ms);
		return;
	}
	q->hold_until_ms = 0;
	if (q->dns == QDNS_READY && q->dns_expires_ms <= s->now_ms && !q->conns)
		q->dns = QDNS_NONE;
	if (q->dns == QDNS_NONE)
		start_dns(s, q);
	if (q->dns != QDNS_READY)
		return;
	if (q->targets.status != DNS_OK) {
		struct smtp_reply rep = { .local = true };
		switch (q->targets.status) {
		case DNS_NXDOMAIN:
			rep = (struct smtp_reply){ 550, "5.1.2", true, "domain does not exist (NXDOMAIN)", false };
			break;
		case DNS_NULL_MX:
			rep = (struct smtp_reply){ 556, "5.1.10", true, "domain accepts no mail (null MX)", false };
			break;
		case DNS_NO_ADDRESS:
			rep = (struct smtp_reply){ 550, "5.4.4", true, "no address for any mail exchanger", false };
			break;
		default:
			rep = (struct smtp_reply){ 451, "4.4.3", true, "DNS lookup failed temporarily", false };
		}
		fail_ready(s, q, &rep);
		if (q->targets.status == DNS_TEMPFAIL)
			q->dns = QDNS_NONE;
		return;
	}
	for (uint32_t i = 0; i < s->conns.count && q->ready.count && q->idle; i++) {
		struct sconn *c = slot_at(&s->conns, i);
		if (c && c->q == q && c->idle && c->state == SC_OPEN)
			conn_next_txn(s, c);
	}
	if (q->ready.count && pick_source(s, q, false) < 0) {
		static const struct smtp_reply off = {
			.code = 451, .status = "4.4.0", .local = true,
			.text = "every source IP of the queue is disabled (disable-source-ip)",
		};
		fail_ready(s, q, &off);
		return;
	}
	struct sched_state st = {
		.ready = q->ready.count,
		.conns = q->conns,
		.idle = q->idle,
		.pending = q->connecting,
		.max_out = queue_max_out(q),
		.room = queue_room(s, q),
	};
	struct sched_plan plan;
	sched_plan(&st, &q->msg_rate, &q->connect_rate, s->now_ms, &plan);
	for (uint32_t i = 0; i < plan.open; i++) {
		if (!open_conn(s, q)) {
			/* a shared cap filled meanwhile (or the queue failed) */
			if (q->ready.count)
				queue_wake(s, q, s->now_ms + SCHED_TICK_MS);
			break;
		}
	}
	if (plan.wake_ms)
		queue_wake(s, q, plan.wake_ms);
}

/* ------------------------------------------------------------------ */
/* the loop                                                             */

static void arm_wake(struct shard *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_read(sqe, s->wake_fd, &s->wake_val, sizeof(s->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_WAKE, 0, 0));
}

static void arm_tick(struct shard *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	s->tick = (struct __kernel_timespec){ .tv_nsec = TICK_MS * 1000000L };
	io_uring_prep_timeout(sqe, &s->tick, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_TICK, 0, 0));
}

static void drain_jobs(struct shard *s)
{
	struct delivery_job *jobs[JOB_BATCH];

	for (uint32_t i = 0; i < s->set->nintake; i++) {
		size_t n;
		while ((n = spsc_ring_pop(s->in[i], (void **)jobs, JOB_BATCH)) > 0)
			for (size_t k = 0; k < n; k++)
				take_job(s, i, jobs[k]);
	}
}

static void on_tick(struct shard *s)
{
	if (!atomic_load(&s->stop))
		arm_tick(s);
	dns_resolver_process_timeouts(s->dns);
	/* only what came due: no sweep over every connection and queue */
	struct tw_node *n;
	while ((n = tw_expire(&s->timers, s->now_ms))) {
		if (n->kind == TIMER_QUEUE) {
			mark_runnable(s, container_of(n, struct queue, wake_timer));
			continue;
		}
		BUG_ON(n->kind != TIMER_CONN);
		struct sconn *c = container_of(n, struct sconn, deadline_timer);
		if (c->state == SC_CONNECTING) {
			struct smtp_reply rep = { .code = 451, .status = "4.4.1", .local = true,
						  .text = "connect timeout" };
			target_failed(s, c, &rep);
			conn_close(s, c);
		} else if (c->state == SC_OPEN) {
			if (c->idle && !c->quitting) {
				conn_quit(s, c);
			} else {
				handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_TIMEOUT));
			}
		} else {
			conn_release(s, c);
		}
	}
}

static void run_queues(struct shard *s)
{
	while (s->run_head) {
		struct queue *q = s->run_head;
		s->run_head = q->run_next;
		q->runnable = false;
		schedule(s, q);
	}
}

static int setup(struct shard *s, char *err, size_t errlen)
{
	struct io_uring_params up = { 0 };

	up.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
	int rc = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &up);
	if (rc == -EINVAL) {
		memset(&up, 0, sizeof(up));
		rc = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &up);
	}
	if (rc < 0) {
		snprintf(err, errlen, "shard %u: io_uring: %s", s->index, strerror(-rc));
		return rc;
	}
	s->ring_ok = true;
	tw_init(&s->timers, TICK_MS, TIMER_SLOTS, mono_ms());
	const struct cfg_global *g = cfg_global(s->set->cfg);
	const char **servers = xcalloc(g->name_servers.count + 1, sizeof(char *));
	for (size_t i = 0; i < g->name_servers.count; i++)
		servers[i] = g->name_servers.items[i];
	struct dns_options o = {
		.servers = g->name_servers.count ? servers : NULL,
		.sock_cb = dns_sock,
		.sock_ctx = s,
	};
	rc = dns_resolver_new(&o, &s->dns);
	free(servers);
	if (rc < 0) {
		snprintf(err, errlen, "shard %u: DNS resolver: %s", s->index, strerror(-rc));
		return rc;
	}
	if (gethostname(s->hostname, sizeof(s->hostname) - 1) < 0)
		snprintf(s->hostname, sizeof(s->hostname), "localhost");
	return 0;
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;
	char err[256];

	if (s->cpu >= 0 && affinity_bind_thread(s->cpu, err, sizeof(err)) < 0)
		fprintf(stderr, "coremta: shard %u: %s; running unpinned\n", s->index, err);
	if (setup(s, err, sizeof(err)) < 0) {
		fprintf(stderr, "coremta: %s\n", err);
		return NULL;
	}
	s->now_ms = mono_ms();
	s->now_s = time(NULL);
	arm_wake(s);
	arm_tick(s);
	for (;;) {
		bool stopping = atomic_load(&s->stop);
		if (stopping) {
			/* close everything; queued mail stays in the spool */
			bool busy = false;
			for (uint32_t i = 0; i < s->conns.count; i++) {
				struct sconn *c = slot_at(&s->conns, i);
				if (!c)
					continue;
				if (c->state != SC_CLOSING)
					conn_close(s, c);
				busy |= c->hdr.used;
			}
			/* the last delivery lines are written before the thread ends */
			if (!busy && !s->log_busy && (!s->log.len || s->set->log_fd < 0))
				break;
		}
		for (uint32_t i = 0; i < s->set->nintake; i++)
			spsc_ring_prepare_sleep(s->in[i]);
		size_t pending = 0;
		for (uint32_t i = 0; i < s->set->nintake; i++)
			pending += spsc_ring_count(s->in[i]);
		int rc = pending ? io_uring_submit(&s->ring)
				 : io_uring_submit_and_wait(&s->ring, 1);
		for (uint32_t i = 0; i < s->set->nintake; i++)
			spsc_ring_finish_sleep(s->in[i]);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			fprintf(stderr, "coremta: shard %u: io_uring: %s\n", s->index, strerror(-rc));
			break;
		}
		s->now_ms = mono_ms();
		s->now_s = time(NULL);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&s->ring, head, cqe) {
			unsigned kind;
			uint32_t slot, gen;
			ud_unpack(cqe->user_data, &kind, &slot, &gen);
			seen++;
			switch (kind) {
			case OP_WAKE:
				if (!atomic_load(&s->stop))
					arm_wake(s);
				break;
			case OP_TICK:
				on_tick(s);
				break;
			case OP_CONNECT: {
				struct sconn *c = conn_get(s, slot, gen);
				if (c)
					c->send_inflight = false;
				on_connect(s, cqe, slot, gen);
				break;
			}
			case OP_RECV:
				on_recv(s, cqe, slot, gen);
				break;
			case OP_SEND:
				on_send(s, cqe, slot, gen);
				break;
			case OP_POLL:
				if (gen == s->dns_gen[slot]) {
					s->dns_armed[slot] = 0;
					bool rd = cqe->res > 0 && (cqe->res & (POLLIN | POLLERR | POLLHUP));
					bool wr = cqe->res > 0 && (cqe->res & POLLOUT);
					dns_resolver_process(s->dns, (int)slot, rd, wr);
					if (s->dns_want[slot] && !s->dns_armed[slot] &&
					    gen == s->dns_gen[slot])
						arm_poll(s, (int)slot);
				}
				break;
			case OP_LOG:
				s->log_busy = false;
				if (cqe->res > 0 && (size_t)cqe->res < s->log_inflight.len) {
					/* short write: keep the rest first in line */
					struct strbuf rest = { 0 };
					sb_add(&rest, s->log_inflight.buf + cqe->res,
					       s->log_inflight.len - (size_t)cqe->res);
					sb_add(&rest, s->log.buf ? s->log.buf : "", s->log.len);
					sb_free(&s->log);
					s->log = rest;
				}
				sb_reset(&s->log_inflight);
				break;
			default:
				BUG_ON(1);	/* every submitted kind is handled */
			}
			if (seen >= TURN_BUDGET) {
				atomic_fetch_add_explicit(&s->pub.loop_overruns, 1,
							  memory_order_relaxed);
				break;
			}
		}
		io_uring_cq_advance(&s->ring, seen);
		if (!stopping) {
			drain_jobs(s);
			run_queues(s);
			if (dns_resolver_next_timeout_ms(s->dns) == 0)
				dns_resolver_process_timeouts(s->dns);
			run_queues(s);
		}
		publish_outcomes(s);
		if (s->set->acct)
			acct_flush(s->set->acct, s->set->acct_base + s->index);
		log_flush(s);
	}
	tls_thread_cleanup();
	return NULL;
}

/* ------------------------------------------------------------------ */
/* the set                                                              */

int shard_set_new(const struct shard_set_params *p, struct shard_set **out,
		  char *err, size_t errlen)
{
	struct shard_set *set = xcalloc(1, sizeof(*set));

	BUG_ON(p->nshards == 0 || p->nintake == 0);
	set->cfg = p->cfg;
	set->nshards = p->nshards;
	set->nintake = p->nintake;
	set->tls_client = p->tls_client;
	set->log_fd = p->log_fd;
	set->acct = p->acct;
	set->acct_base = p->acct_producer_base;
	set->total_max = cfg_global(p->cfg)->total_max_smtp_out;
	set->shards = xcalloc(p->nshards, sizeof(*set->shards));
	set->need_wake = xcalloc((size_t)p->nshards * p->nintake, sizeof(bool));
	set->outcome_fd = xcalloc(p->nintake, sizeof(int));
	set->taking = xcalloc(p->nintake, sizeof(*set->taking));
	set->taking_off = xcalloc(p->nintake, sizeof(uint32_t));
	for (uint32_t i = 0; i < p->nintake; i++) {
		set->outcome_fd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (set->outcome_fd[i] < 0) {
			snprintf(err, errlen, "eventfd: %s", strerror(errno));
			shard_set_free(set);
			return -errno;
		}
	}
	for (uint32_t i = 0; i < p->nshards; i++) {
		struct shard *s = &set->shards[i];
		s->index = i;
		s->set = set;
		s->cpu = p->cpus ? p->cpus[i] : -1;
		s->wake_fd = eventfd(0, EFD_CLOEXEC);
		s->in = xcalloc(p->nintake, sizeof(*s->in));
		s->out = xcalloc(p->nintake, sizeof(*s->out));
		s->cur = xcalloc(p->nintake, sizeof(*s->cur));
		s->out_dirty = xcalloc(p->nintake, sizeof(bool));
		for (uint32_t k = 0; k < p->nintake; k++) {
			s->in[k] = spsc_ring_new(p->ring_size);
			s->out[k] = spsc_ring_new(1024);
		}
		s->dns_gen = xcalloc(MAX_DNS_FDS, sizeof(uint32_t));
		s->dns_want = xcalloc(MAX_DNS_FDS, 1);
		s->dns_armed = xcalloc(MAX_DNS_FDS, 1);
		s->pool_rr = xcalloc(cfg_pool_count(p->cfg) + 1, sizeof(uint32_t));
		slot_table_init(&s->conns, sizeof(struct sconn));
		if (s->wake_fd < 0) {
			snprintf(err, errlen, "shard %u: eventfd: %s", i, strerror(errno));
			shard_set_free(set);
			return -errno;
		}
	}
	*out = set;
	return 0;
}

int shard_set_start(struct shard_set *set, char *err, size_t errlen)
{
	for (uint32_t i = 0; i < set->nshards; i++) {
		int rc = pthread_create(&set->shards[i].thread, NULL, shard_main,
					&set->shards[i]);
		if (rc) {
			snprintf(err, errlen, "shard %u: pthread_create: %s", i, strerror(rc));
			return -rc;
		}
		set->shards[i].started = true;
	}
	return 0;
}

void shard_set_stop(struct shard_set *set)
{
	for (uint32_t i = 0; i < set->nshards; i++) {
		struct shard *s = &set->shards[i];
		if (!s->started)
			continue;
		atomic_store(&s->stop, true);
		uint64_t one = 1;
		ssize_t w = write(s->wake_fd, &one, sizeof(one));
		(void)w;
		pthread_join(s->thread, NULL);
		s->started = false;
	}
}

static void free_shard(struct shard *s, uint32_t nintake)
{
	for (uint32_t i = 0; i < s->conns.count; i++) {
		struct sconn *c = slot_at(&s->conns, i);
		if (c)
			conn_release(s, c);
	}
	for (size_t i = 0; i < s->qcap && s->qtab; i++) {
		struct queue *q = s->qtab[i];
		if (!q)
			continue;
		struct qrcpt *r;
		while ((r = rl_pop(&q->ready))) {
			delivery_msg_unref(r->msg);
			free(r);
		}
		while ((r = deferred_pop(q))) {
			delivery_msg_unref(r->msg);
			free(r);
		}
		free(q->deferred);
		free(q->src_off_until);
		free(q->key);
		free(q->domain);
		free(q);
	}
	free(s->qtab);
	slot_table_destroy(&s->conns);
	tw_destroy(&s->timers);
	sb_free(&s->acct_hdr);
	dns_resolver_free(s->dns);
	if (s->ring_ok)
		io_uring_queue_exit(&s->ring);
	for (uint32_t k = 0; k < nintake && s->in; k++) {
		struct delivery_job *job;
		while (s->in[k] && spsc_ring_pop(s->in[k], (void **)&job, 1))
			delivery_job_free(job);
		spsc_ring_free(s->in[k]);
		struct outcome_batch *b;
		while (s->out[k] && spsc_ring_pop(s->out[k], (void **)&b, 1)) {
			for (uint32_t i = 0; i < b->count; i++)
				delivery_report_free(b->items[i].report);
			free(b);
		}
		if (s->cur[k])
			for (uint32_t i = 0; i < s->cur[k]->count; i++)
				delivery_report_free(s->cur[k]->items[i].report);
		spsc_ring_free(s->out[k]);
		free(s->cur[k]);
	}
	free(s->in);
	free(s->out);
	free(s->cur);
	free(s->out_dirty);
	free(s->dns_gen);
	free(s->dns_want);
	free(s->dns_armed);
	free(s->pool_rr);
	sb_free(&s->log);
	sb_free(&s->log_inflight);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
}

void shard_set_free(struct shard_set *set)
{
	if (!set)
		return;
	shard_set_stop(set);
	for (uint32_t i = 0; i < set->nshards; i++)
		free_shard(&set->shards[i], set->nintake);
	for (uint32_t i = 0; i < set->nintake; i++) {
		if (set->outcome_fd[i] >= 0)
			close(set->outcome_fd[i]);
		free(set->taking[i]);
	}
	free(set->outcome_fd);
	free(set->taking);
	free(set->taking_off);
	free(set->shards);
	free(set->need_wake);
	free(set);
}

uint32_t shard_set_count(const struct shard_set *set)
{
	return set->nshards;
}

size_t shard_submit(struct shard_set *set, uint32_t intake, uint32_t shard,
		    struct delivery_job *const *jobs, size_t n)
{
	BUG_ON(intake >= set->nintake || shard >= set->nshards);
	size_t pushed = spsc_ring_push(set->shards[shard].in[intake],
				       (void *const *)jobs, n);
	if (pushed)
		set->need_wake[(size_t)intake * set->nshards + shard] = true;
	return pushed;
}

void shard_flush_wakeups(struct shard_set *set, uint32_t intake)
{
	bool *row = &set->need_wake[(size_t)intake * set->nshards];

	for (uint32_t i = 0; i < set->nshards; i++) {
		if (!row[i])
			continue;
		row[i] = false;
		struct shard *s = &set->shards[i];
		if (!spsc_ring_consumer_sleeping(s->in[intake]))
			continue;
		uint64_t one = 1;
		ssize_t w = write(s->wake_fd, &one, sizeof(one));
		(void)w;
	}
}

int shard_outcome_fd(const struct shard_set *set, uint32_t intake)
{
	return set->outcome_fd[intake];
}

size_t shard_take_outcomes(struct shard_set *set, uint32_t intake,
			   struct delivery_outcome *out, size_t max)
{
	size_t n = 0;

	for (uint32_t sh = 0; sh < set->nshards && n < max; sh++) {
		for (;;) {
			struct outcome_batch *b = set->taking[intake];
			if (!b) {
				if (!spsc_ring_pop(set->shards[sh].out[intake], (void **)&b, 1))
					break;
				set->taking[intake] = b;
				set->taking_off[intake] = 0;
			}
			while (n < max && set->taking_off[intake] < b->count)
				out[n++] = b->items[set->taking_off[intake]++];
			if (set->taking_off[intake] < b->count)
				return n;	/* out is full */
			free(b);
			set->taking[intake] = NULL;
		}
	}
	return n;
}

void shard_stats(const struct shard_set *set, uint32_t shard, struct shard_stats *st)
{
	const struct shard_pub *p = &set->shards[shard].pub;

	*st = (struct shard_stats){
		.jobs = atomic_load(&p->jobs),
		.delivered = atomic_load(&p->delivered),
		.bounced = atomic_load(&p->bounced),
		.expired = atomic_load(&p->expired),
		.deferred = atomic_load(&p->deferred),
		.connections = atomic_load(&p->connections),
		.queued = atomic_load(&p->queued),
		.max_conns_seen = atomic_load(&p->max_conns_seen),
		.loop_overruns = atomic_load(&p->loop_overruns),
	};
}
