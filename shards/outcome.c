/*
 * shards/outcome.c - the outcome side of a shard: final outcomes batched
 * back to the intake thread that journals them, the key=value delivery
 * log (one line per attempt), the d, b, t and tq accounting records, the
 * reports a DSN needs, and what a reply does to a recipient (delivered,
 * bounced, deferred on its retry schedule, expired).
 *
 * Threads: the shard's own thread; delivery_msg_ref/unref and
 * delivery_report_free from any thread.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "affinity/affinity.h"
#include "services/acct.h"
#include "shards/retry.h"
#include "shards/shard_int.h"
#include "util/log.h"
#include "shards/shards.h"
#include "shards/smtp_client.h"
#include "util/intern.h"
#include "util/ring.h"
#include "util/util.h"

void delivery_msg_ref(struct delivery_msg *m)
{
	atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
}

void delivery_msg_unref(struct delivery_msg *m)
{
	if (!m)
		return;
	/* acq_rel: the last owner must see every write of the others */
	if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (m->shared & DELIVERY_SHARED_FROM)
		intern_unref(m->mail_from);
	if (m->shared & DELIVERY_SHARED_VMTA)
		intern_unref(m->vmta);
	if (m->shared & DELIVERY_SHARED_JOB)
		intern_unref(m->job_id);
	if (m->shared & DELIVERY_SHARED_SOURCE_IP)
		intern_unref(m->source_ip);
	affinity_free_home(m);	/* an intake's, freed on a shard */
}

void delivery_job_free(struct delivery_job *job)
{
	if (!job)
		return;
	delivery_msg_unref(job->msg);
	delivery_moves_unref(job->moves);
	affinity_free_home(job->body);	/* the intake's, freed by its shard */
	affinity_free_home(job);
}

void delivery_moves_unref(struct delivery_moves *mv)
{
	if (mv && atomic_fetch_sub_explicit(&mv->refs, 1, memory_order_acq_rel) == 1)
		affinity_free_home(mv);
}

/*
 * flush_held - publish the batches the ring had no room for, in order.
 * Returns whether none is left.  A batch is the intake's the moment it is
 * pushed (it may be taken and freed before the push returns), so its link
 * is read and cleared before, never after.
 */
static bool flush_held(struct shard *s, uint32_t intake)
{
	struct outcome_batch *b;

	while ((b = s->held[intake])) {
		struct outcome_batch *next = b->next;

		b->next = NULL;
		if (!spsc_ring_push(s->out[intake], (void **)&b, 1)) {
			b->next = next;		/* still ours: the ring is full */
			break;
		}
		s->unwoken[intake]++;
		s->held[intake] = next;
		if (!next)
			s->held_tail[intake] = NULL;
	}
	return !s->held[intake];
}

/*
 * publish_batch - hand a full batch to its intake, which frees it.  A
 * full ring keeps it (in order) for the next loop turn: a shard never
 * waits for an intake thread.
 */
static void publish_batch(struct shard *s, uint32_t intake)
{
	struct outcome_batch *b = s->cur[intake];

	s->cur[intake] = NULL;
	if (flush_held(s, intake) && spsc_ring_push(s->out[intake], (void **)&b, 1)) {
		s->unwoken[intake]++;
		return;
	}
	b->next = NULL;
	if (s->held_tail[intake])
		s->held_tail[intake]->next = b;
	else
		s->held[intake] = b;
	s->held_tail[intake] = b;
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
	if (b->count == OUTCOME_BATCH)
		publish_batch(s, r->intake);
}

void push_notice(struct shard *s, struct delivery_report *report)
{
	struct outcome_batch *b = s->cur[0];

	/* any intake composes it: the first is always there */
	if (!b)
		b = s->cur[0] = xcalloc(1, sizeof(*b));
	b->items[b->count++] = (struct delivery_outcome){ .kind = DELIVERY_NOTICE, .report = report };
	if (b->count == OUTCOME_BATCH)
		publish_batch(s, 0);
}

void publish_outcomes(struct shard *s)
{
	for (uint32_t i = 0; i < s->set->nintake; i++) {
		struct outcome_batch *b = s->cur[i];
		if (flush_held(s, i) && b && b->count && spsc_ring_push(s->out[i], (void **)&b, 1)) {
			s->cur[i] = NULL;
			s->unwoken[i]++;
		}
		/*
		 * Wake the intake only when it may be asleep.  Batches older
		 * than the ones pushed since the last wake-up, still in the
		 * ring, mean a wake-up is pending or the intake is taking
		 * them, and it takes until the ring is empty: ours too.  A
		 * write per loop turn cost a syscall and an intake turn per
		 * message when turns are small (a site capped at 20
		 * connections).
		 *
		 * And at most once per OUTCOME_WAKE_MS: outcomes are not
		 * urgent (the intake takes them on each of its turns, and
		 * until they are journaled a crash only redelivers), while
		 * each wake-up cost the intake a loop turn and often a
		 * journal-only fsync.  The once per OUTCOME_WAKE_MS is per
		 * intake, shared by the shards (a woken intake takes every
		 * shard's ring): with a clock per shard, two shards woke the
		 * intake twice as often as one.  A shard turns at least every
		 * tick, so a deferred wake-up comes within a tick; a ring half
		 * full wakes at once.
		 */
		if (s->unwoken[i]) {
			size_t queued = spsc_ring_count(s->out[i]);
			_Atomic uint64_t *woke = &s->set->outcome_woke[i].ms;
			if (queued > s->unwoken[i] || queued == 0) {
				s->unwoken[i] = 0;	/* pending, or taken already */
			} else if (s->now_ms - atomic_load_explicit(woke, memory_order_relaxed) >=
					   OUTCOME_WAKE_MS ||
				   queued >= spsc_ring_capacity(s->out[i]) / 2 ||
				   atomic_load(&s->stop)) {
				uint64_t one = 1;
				ssize_t w = write(s->set->outcome_fd[i], &one, sizeof(one));
				(void)w;
				atomic_store_explicit(woke, s->now_ms, memory_order_relaxed);
				s->unwoken[i] = 0;
			}
		}
	}
}

/* wbuf_flush - write what w holds, unless a write is in flight (op: its kind). */
void wbuf_flush(struct shard *s, struct wbuf *w, unsigned op)
{
	if (w->busy || !w->cur.len || w->fd < 0)
		return;
	struct strbuf t = w->inflight;
	w->inflight = w->cur;
	w->cur = t;
	sb_reset(&w->cur);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (!sqe) {
		/* try again next turn: swap back */
		t = w->cur;
		w->cur = w->inflight;
		w->inflight = t;
		return;
	}
	io_uring_prep_write(sqe, w->fd, w->inflight.buf, (unsigned)w->inflight.len,
			    (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, ud_pack(op, 0, 0));
	w->busy = true;
}

/* The capacity a written-out buffer keeps for the next batch of lines. */
#define WBUF_KEEP (256u << 10)

/* wbuf_written - the write of w completed with res. */
void wbuf_written(struct wbuf *w, int res)
{
	w->busy = false;
	if (res > 0 && (size_t)res < w->inflight.len) {
		/* short write: keep the rest first in line */
		struct strbuf rest = { 0 };
		sb_add(&rest, w->inflight.buf + res, w->inflight.len - (size_t)res);
		sb_add(&rest, w->cur.buf ? w->cur.buf : "", w->cur.len);
		sb_free(&w->cur);
		w->cur = rest;
	}
	/*
	 * A burst (100,000 deferrals in a few seconds) grows the buffer to
	 * megabytes; keep the usual size, not the burst's, while the queue
	 * waits (issue 16: RSS per queued recipient).
	 */
	if (w->inflight.cap > WBUF_KEEP)
		sb_free(&w->inflight);
	else
		sb_reset(&w->inflight);
}

static void log_text_field(struct strbuf *sb, const char *s)
{
	sb_addc(sb, '"');
	while (s && *s) {
		/* one append per run of plain characters, not a call per character */
		size_t n = 0;
		while (s[n] && s[n] != '"' && s[n] != '\\' && (unsigned char)s[n] >= 0x20)
			n++;
		sb_add(sb, s, n);
		s += n;
		if (!*s)
			break;
		if (*s == '"' || *s == '\\')
			sb_addc(sb, '\\');
		sb_addc(sb, (unsigned char)*s < 0x20 ? '?' : *s);
		s++;
	}
	sb_addc(sb, '"');
}

/* add_i64 - v in decimal (what %lld writes) */
static void add_i64(struct strbuf *sb, int64_t v)
{
	if (v < 0) {
		sb_addc(sb, '-');
		sb_add_u64(sb, -(uint64_t)v);
	} else {
		sb_add_u64(sb, (uint64_t)v);
	}
}

/* add_key - " key=" and the string value */
static void add_key(struct strbuf *sb, const char *key, const char *val)
{
	sb_adds(sb, key);
	sb_adds(sb, val);
}

/*
 * log_attempt - one delivery line.  Appended piece by piece: it is
 * written once per recipient and attempt, and sb_printf formats twice
 * (measure, then write); vfprintf was the shard's largest user-space cost
 * after the spool's CRC.
 */
void log_attempt(struct shard *s, const struct queue *q,
			const struct qrcpt *r, const char *result,
			const struct smtp_reply *rep, const char *mx,
			const char *ip, const char *tls)
{
	const struct delivery_msg *m = r->msg;
	struct strbuf *sb = &s->log.cur;
	static const char hex[] = "0123456789abcdef";
	char id[16];

	for (int i = 15, k = 0; i >= 0; i--, k += 4)
		id[i] = hex[(m->id >> k) & 15];
	sb_adds(sb, "delivery shard=");
	sb_add_u64(sb, s->index);
	add_key(sb, " queue=", q->domain);
	add_key(sb, "/", q->vmta_name);
	sb_adds(sb, " id=");
	sb_add(sb, id, sizeof(id));
	add_key(sb, " from=<", m->mail_from);
	add_key(sb, "> to=<", m->rcpt[r->rcpt].addr);
	add_key(sb, "> result=", result);
	sb_adds(sb, " attempt=");
	sb_add_u64(sb, r->attempts);
	sb_adds(sb, " delay=");
	add_i64(sb, (int64_t)(s->now_s - m->queued));
	sb_addc(sb, 's');
	if (mx) {
		add_key(sb, " mx=", mx);
		add_key(sb, " ip=", ip ? ip : "");
	}
	if (tls && *tls)
		add_key(sb, " tls=", tls);
	if (rep) {
		sb_adds(sb, " code=");
		add_i64(sb, rep->code);
		add_key(sb, " status=", rep->status);
		if (rep->local)
			sb_adds(sb, " local=yes");
		sb_adds(sb, " text=");
		log_text_field(sb, rep->text);
	}
	sb_addc(sb, '\n');
}

/* log_queue_event - one key=value line for a change of the queue's state. */
void log_queue_event(struct shard *s, const struct queue *q, const char *event,
			    const char *fields, const char *reason)
{
	sb_printf(&s->log.cur, "%s shard=%u queue=%s/%s%s%s reason=", event, s->index,
		  q->domain, q->vmta_name, fields && *fields ? " " : "", fields ? fields : "");
	log_text_field(&s->log.cur, reason);
	sb_addc(&s->log.cur, '\n');
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
	/* the whole text: bounce rules may look anywhere in it */
	char key[SMTP_REPLY_SUBJECT_MAX];

	snprintf(key, sizeof(key), "%s;%s", rep->status, rep->text ? rep->text : "");
	return cfg_bounce_classify(s->cfg, key, category);
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
	       (type != ACCT_BOUNCE || cfg_global(s->cfg)->log_bounces);
}

static void acct_put(struct shard *s, const struct acct_record *rec)
{
	if (acct_emit(s->set->acct, s->set->acct_base + s->index, rec) < 0 &&
	    !s->acct_refused++)
		log_msg(LOG_LEVEL_ERROR, "accounting", NULL,
			"shard %u: the accounting writer is a million records behind; "
			"records are being dropped", s->index);
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
	char diag[DELIVERY_DIAG_MAX], mta[320], esmtp[160], qname[320];
	const struct delivery_msg *m = r->msg;
	const struct delivery_rcpt *rc = &m->rcpt[r->rcpt];
	const bool tls = c && c->tls && !c->handshaking;

	reply_diag_mta(rep, c, diag, sizeof(diag), mta, sizeof(mta));
	snprintf(qname, sizeof(qname), "%s/%s", q->domain, q->vmta_name);
	delivery_esmtp_text(c && c->client ? smtp_client_extensions(c->client) : 0, esmtp,
			    sizeof(esmtp));
	struct acct_header_field hf[ACCT_HEADERS_MAX];
	size_t nh = acct_collect_headers(s->set->acct, m->head, m->head_len, hf, &s->acct_hdr);
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
		.dlv_size = m->where.body_len,
		.vmta = q->vmta_name,
		.job_id = m->job_id,
		.env_id = m->envid,
		.queue = qname,
		.vmta_pool = m->vmta && !cfg_vmta_find(s->cfg, m->vmta) ? m->vmta : NULL,
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
	char diag[DELIVERY_DIAG_MAX], mta[320], qname[320];

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

	return cfg_global(s->cfg)->deliver_bounces && m->mail_from[0] && !m->no_dsn &&
	       !(notify & MAIL_NOTIFY_NEVER);
}

/* attempts_exhausted - bounce-after-attempts (a coremta extension) reached. */
static bool attempts_exhausted(const struct queue *q, const struct qrcpt *r)
{
	uint32_t limit = q->settings->bounce_after_attempts;

	return limit && r->attempts >= limit;
}

/*
 * make_report - account the attempt, and return the report a DSN may
 * need (NULL when none can be sent: deliveries, null senders, ...).
 */
struct delivery_report *make_report(struct shard *s, const struct queue *q,
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
		category = attempts_exhausted(q, r) ? "retry-limit-exceeded" : "message-expired";
	if (acct)
		account(s, q, r, rep, c, kind, category);
	/* a bounce rule's "action delete": accounted, never notified */
	if (!dsn || (hit && hit->action == CFG_BOUNCE_DELETE))
		return NULL;
	return fill_report(s, q, r, rep, c);
}

void finish_rcpt(struct shard *s, struct queue *q, struct qrcpt *r,
			enum delivery_outcome_kind kind, struct delivery_report *report)
{
	push_outcome(s, r, kind, report);
	if (kind == DELIVERY_DELIVERED) {
		q->n_delivered++;
		int64_t waited = s->now_s - r->msg->queued;
		hist_observe(s, SHARD_HIST_DELIVERY, waited > 0 ? (uint64_t)waited : 0);
	} else if (kind == DELIVERY_BOUNCED) {
		q->n_bounced++;
	} else {
		q->n_expired++;
	}
	_Atomic uint64_t *ctr = kind == DELIVERY_DELIVERED ? &s->pub.delivered
				: kind == DELIVERY_BOUNCED ? &s->pub.bounced
							   : &s->pub.expired;
	atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&s->pub.queued, 1, memory_order_relaxed);
	msg_release(s, r->intake, r->msg);
	delivery_msg_unref(r->msg);
	free(r);
}

bool expired(const struct shard *s, const struct queue *q,
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

	qrcpt_attempted(r);
	q->n_deferrals++;
	atomic_fetch_add_explicit(&s->pub.deferred, 1, memory_order_relaxed);
	/* the last reply says why, in the log, the b record and the DSN */
	if (expired(s, q, r) || attempts_exhausted(q, r)) {
		log_attempt(s, q, r, "expired", rep, mx, ip, tls);
		finish_rcpt(s, q, r, DELIVERY_EXPIRED, make_report(s, q, r, rep, c, DELIVERY_EXPIRED));
		return;
	}
	log_attempt(s, q, r, "deferred", rep, mx, ip, tls);
	/* NOTIFY=DELAY: one notice per notify-of-delay-every queued */
	bool notice = false;
	uint64_t every = q->settings->notify_of_delay_every;
	if (every && (r->msg->rcpt[r->rcpt].notify & MAIL_NOTIFY_DELAY) &&
	    r->msg->mail_from[0]) {
		uint64_t periods = (uint64_t)(s->now_s - r->msg->queued) / every;
		/* at most 255 notices: the count is a byte (struct qrcpt) */
		if (periods > r->delay_notices && r->delay_notices < UINT8_MAX) {
			r->delay_notices = periods < UINT8_MAX ? (uint8_t)periods : UINT8_MAX;
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
	/* a restart keeps the schedule, the count and the pool member */
	if (s->retry.fd >= 0) {
		struct retry_rcpt st = {
			.attempts = r->attempts,
			/* whole seconds, rounded up: never due early */
			.next_unix = s->now_s + 1 + (int64_t)(delay_ms / 1000),
			.delay_s = (uint32_t)(delay_ms / 1000),
		};
		if (q->vmta)
			snprintf(st.vmta, sizeof(st.vmta), "%s", q->vmta->name);
		retry_put_rcpt(&s->retry.cur, r->msg->id, r->msg->rcpt[r->rcpt].index, &st);
	}
}

void apply_reply(struct shard *s, struct queue *q, struct qrcpt *r,
			const struct smtp_reply *rep, const struct sconn *c)
{
	const char *mx = c ? c->mx : NULL, *ip = c ? c->ip : NULL;
	const char *tls = c && c->tls && !c->handshaking ? tls_conn_protocol(c->tls) : NULL;

	if (rep->code < 200 || rep->code >= 300) {
		/* what the management plane shows as the queue's last error */
		reply_subject(rep, q->last_error, sizeof(q->last_error));
		q->last_error_s = s->now_s;
	}
	if (rep->code >= 200 && rep->code < 300) {
		qrcpt_attempted(r);
		log_attempt(s, q, r, "delivered", rep, mx, ip, tls);
		finish_rcpt(s, q, r, DELIVERY_DELIVERED, make_report(s, q, r, rep, c, DELIVERY_DELIVERED));
		if (q->backoff && q->settings->backoff_to_normal_after_delivery)
			set_backoff(s, q, false, "backoff-to-normal-after-delivery");
	} else if (rep->code >= 500) {
		qrcpt_attempted(r);
		log_attempt(s, q, r, "bounced", rep, mx, ip, tls);
		finish_rcpt(s, q, r, DELIVERY_BOUNCED, make_report(s, q, r, rep, c, DELIVERY_BOUNCED));
	} else {
		defer_rcpt(s, q, r, rep, c);
	}
}

/* fail_ready - every recipient due now gets the same reply. */
void fail_ready(struct shard *s, struct queue *q, const struct smtp_reply *rep)
{
	struct qrcpt *r;

	if (rep->code < 500 && q->ready.count)
		account_queue(s, q, rep, NULL);

	while ((r = rl_pop(&q->ready)))
		apply_reply(s, q, r, rep, NULL);
}
