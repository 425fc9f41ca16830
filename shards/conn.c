/*
 * shards/conn.c - a shard's connection pool and I/O pump: opening
 * connections (source IP, destination address), the io_uring connect,
 * recv and send completions, the TLS pump, the SMTP client's events, and
 * the binding of a transaction to a connection, which happens only once
 * the connection is greeted and idle.
 *
 * Threads: the shard's own thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#include "shards/caps.h"
#include "shards/dns.h"
#include "shards/sched.h"
#include "shards/shard_int.h"
#include "shards/shards.h"
#include "shards/smtp_client.h"
#include "util/slots.h"
#include "util/timer_wheel.h"
#include "util/util.h"

static void conn_pump(struct shard *s, struct sconn *c);

/*
 * conn_deadline - when c's current phase times out; while the shard
 * stops, no later than the end of its grace (shard.c: stop_turn), so
 * a receiver that never answers cannot hold the stop.
 */
void conn_deadline(struct shard *s, struct sconn *c, uint64_t ms)
{
	if (s->stop_until_ms && ms > s->stop_until_ms)
		ms = s->stop_until_ms;
	c->deadline_ms = ms;
	c->deadline_timer.kind = TIMER_CONN;
	tw_arm(&s->timers, &c->deadline_timer, ms);
}

struct io_uring_sqe *get_sqe(struct shard *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);

	if (!sqe) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	BUG_ON(!sqe);
	return sqe;
}

struct sconn *conn_get(struct shard *s, uint32_t slot, uint32_t gen)
{
	return slot_get(&s->conns, slot, gen);
}

static struct sconn *conn_alloc(struct shard *s)
{
	struct sconn *c = slot_alloc(&s->conns);

	c->fd = -1;
	return c;
}

/*
 * arm_recv - a multishot recv: it stays armed across replies, so a reply
 * does not pay a failed first attempt and a new poll arming each time.
 * It ends (a completion without IORING_CQE_F_MORE) at EOF, an error, or
 * when the buffer ring was empty, and is armed again while open.
 */
static void arm_recv(struct shard *s, struct sconn *c)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RECV_BUF_GROUP;
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
			/*
			 * Look again after a short patience: a receiver that
			 * does not greet at once is full, and idle connections
			 * to it should give way (shard.c: on_conn_timer).
			 */
			if (!c->greet_until_ms)
				c->greet_until_ms = s->now_ms + qs->smtp_greeting_timeout * 1000;
			conn_deadline(s, c, c->greet_until_ms < s->now_ms + SCHED_GREETING_PATIENCE_MS
						    ? c->greet_until_ms
						    : s->now_ms + SCHED_GREETING_PATIENCE_MS);
			return;
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

/* Sent pages of a mapped body are dropped in steps of this. */
#define MAP_DROP_STEP	(4u << 20)

/* body_unmap - let go of the mappings (nothing in flight reads them). */
static void body_unmap(struct sconn *c)
{
	if (c->map)
		munmap(c->map, c->map_len);
	if (c->map_old)
		munmap(c->map_old, c->map_old_len);
	c->map = c->map_old = NULL;
	c->map_body = NULL;
}

/*
 * body_map - the body of m, when it stays in the spool, mapped read-only
 * for this transaction; NULL with errno when the spool cannot give it.
 * The previous transaction's mapping is kept while a send may read it.
 * (Opening and mapping are metadata calls; the pages fault in as the
 * socket takes them, readahead told it is sequential.)
 */
static const char *body_map(struct shard *s, struct sconn *c, uint32_t intake,
			    const struct delivery_msg *m)
{
	const struct spool_ref *ref = msg_where(s, intake, m);
	const char *dir = s->set->spool_dirs ? s->set->spool_dirs[intake] : NULL;
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t body_off = ref->off + ref->body_off;
	uint64_t start = body_off & ~(uint64_t)(pg - 1);
	size_t len = (size_t)(body_off - start) + ref->body_len;

	if (!dir) {
		errno = ENOENT;
		return NULL;
	}

	if (c->map_old && !c->send_inflight) {
		munmap(c->map_old, c->map_old_len);
		c->map_old = NULL;
	}
	if (c->map) {
		if (c->send_inflight && !c->map_old) {
			c->map_old = c->map;
			c->map_old_len = c->map_len;
		} else {
			munmap(c->map, c->map_len);
		}
		c->map = NULL;
	}
	char *path = spool_segment_path(dir, ref->seg);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	free(path);
	if (fd < 0)
		return NULL;
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)start);
	int e = errno;
	close(fd);
	if (p == MAP_FAILED) {
		errno = e;
		return NULL;
	}
	madvise(p, len, MADV_SEQUENTIAL);
	c->map = p;
	c->map_len = len;
	c->map_body = (const char *)p + (body_off - start);
	c->map_dropped = 0;
	return c->map_body;
}

/* body_drop_sent - give back the pages of the body below <upto>. */
static void body_drop_sent(struct sconn *c, size_t upto)
{
	size_t base = (size_t)(c->map_body - (const char *)c->map);
	size_t end = (base + upto) & ~(size_t)(MAP_DROP_STEP - 1);

	if (end <= c->map_dropped)
		return;
	madvise((char *)c->map + c->map_dropped, end - c->map_dropped, MADV_DONTNEED);
	c->map_dropped = end;
}

void conn_release(struct shard *s, struct sconn *c)
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
	body_unmap(c);
	body_conn_release(s, c);
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
	conn_set_idle(s, c, false);
	if (c->quitting)
		q->quitting--;
	caps_release(c->mxd);
	caps_release(c->dest);
	if (c->dest && c->greeted)
		atomic_fetch_sub_explicit(&c->dest->greeted, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&s->set->total_conns, 1, memory_order_relaxed);
	tw_cancel(&s->timers, &c->deadline_timer);
	slot_free(&s->conns, c);
	mark_runnable(s, q);
}

/*
 * conn_failed_early - c failed before it was ready (connect, greeting,
 * EHLO).  While the receiver serves other connections of ours (it
 * greeted one, or it says 421 with others of ours open), that is its
 * connection limit, not a failure of the MX: the destination's count is
 * lowered to what it served, the queue's mail waits for a slot (idle
 * connections give way), and nothing is deferred or retried in a loop.
 * In a real outage every connection fails, the last one alone: that one
 * fails the MX as before.
 */
void conn_failed_early(struct shard *s, struct sconn *c, const struct smtp_reply *rep)
{
	uint32_t open = c->dest ? atomic_load_explicit(&c->dest->conns, memory_order_relaxed) : 0;
	bool busy = rep->code == 421 && !rep->local && open > 1;

	if (!c->dest || c->greeted || rep->code >= 500 ||
	    (!busy && atomic_load_explicit(&c->dest->greeted, memory_order_relaxed) == 0)) {
		target_failed(s, c, rep);
		return;
	}
	char fields[160], subj[SMTP_REPLY_SUBJECT_MAX];

	caps_learn(c->dest, open, s->now_ms);
	snprintf(fields, sizeof(fields), "mx=%s ip=%s port=%u connections=%u limit=%u",
		 c->mx ? c->mx : "", c->ip, c->addr.port, open,
		 atomic_load_explicit(&c->dest->learned, memory_order_relaxed));
	reply_subject(rep, subj, sizeof(subj));
	log_queue_event(s, c->q, "site-limit", fields, subj);
	mark_runnable(s, c->q);
}

/* conn_close - no more work: free once nothing is in flight. */
void conn_close(struct shard *s, struct sconn *c)
{
	c->state = SC_CLOSING;
	if (c->fd >= 0 && (c->recv_inflight || c->send_inflight))
		shutdown(c->fd, SHUT_RDWR);	/* completes what is in flight */
	if (!c->recv_inflight && !c->send_inflight)
		conn_release(s, c);
}

/* idle_push, idle_unlink - c at the head of, or out of, the list whose links are at off */
static struct idle_link *link_at(struct sconn *c, size_t off)
{
	return (struct idle_link *)(void *)((char *)c + off);
}

static void idle_push(struct sconn **head, struct sconn *c, size_t off)
{
	*link_at(c, off) = (struct idle_link){ .next = *head };
	if (*head)
		link_at(*head, off)->prev = c;
	*head = c;
}

static void idle_unlink(struct sconn **head, struct sconn *c, size_t off)
{
	struct idle_link *l = link_at(c, off);

	if (l->prev)
		link_at(l->prev, off)->next = l->next;
	else
		*head = l->next;
	if (l->next)
		link_at(l->next, off)->prev = l->prev;
	*l = (struct idle_link){ 0 };
}

/*
 * conn_set_idle - c waits for mail of its queue (idle) or not.  The idle
 * ones are kept in two lists, their queue's and the shard's, so that
 * giving a queue's mail to its idle connections, or a queue that wants a
 * connection an idle one of its site, visits those alone and not every
 * connection of the shard: with thousands open, that walk per message
 * cost more than the message.
 */
void conn_set_idle(struct shard *s, struct sconn *c, bool idle)
{
	struct queue *q = c->q;

	if (idle == c->idle)
		return;
	c->idle = idle;
	if (idle) {
		q->idle++;
		idle_push(&q->idle_head, c, offsetof(struct sconn, q_idle));
		idle_push(&s->idle_head, c, offsetof(struct sconn, s_idle));
	} else {
		q->idle--;
		idle_unlink(&q->idle_head, c, offsetof(struct sconn, q_idle));
		idle_unlink(&s->idle_head, c, offsetof(struct sconn, s_idle));
	}
}

/* conn_quit - QUIT an idle connection; it closes when answered. */
void conn_quit(struct shard *s, struct sconn *c)
{
	conn_set_idle(s, c, false);
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
void retire_conns(struct shard *s, struct queue *q, int src)
{
	for (uint32_t i = 0; i < s->conns.count; i++) {
		struct sconn *c = slot_at(&s->conns, i);
		if (c && c->q == q && c->state != SC_CLOSING && (src < 0 || c->src == src))
			conn_retire(s, c);
	}
}

/*
 * trim_conns - retire q's connections beyond max (a lowered limit after a
 * reload), idle ones first: each finishes its transaction, then QUITs.
 */
void trim_conns(struct shard *s, struct queue *q, uint32_t max)
{
	uint32_t keep = 0;

	for (int pass = 0; pass < 2; pass++)
		for (uint32_t i = 0; i < s->conns.count; i++) {
			struct sconn *c = slot_at(&s->conns, i);
			if (!c || c->q != q || c->state == SC_CLOSING || c->retire || c->quitting)
				continue;
			/* busy ones are counted first, so the idle ones go */
			bool busy = !(c->state == SC_OPEN && c->idle);
			if (busy != (pass == 0))
				continue;
			if (keep < max)
				keep++;
			else
				conn_retire(s, c);
		}
}

/*
 * same_site - a and b deliver to the same site (sched.h): the same MX
 * host set, route or rollup.  A domain kept out of rollup is a site of
 * its own.
 */
static bool same_site(const struct queue *a, const struct queue *b)
{
	return a->site && b->site && a->site_hash == b->site_hash &&
	       strcmp(a->site, b->site) == 0;
}

/* conn_move - c (greeted, no transaction) now belongs to b. */
static void conn_move(struct shard *s, struct sconn *c, struct queue *b)
{
	struct queue *a = c->q;

	a->conns--;
	conn_set_idle(s, c, false);	/* before c->q changes */
	mark_runnable(s, a);
	b->conns++;
	c->q = b;
	c->target_seq = b->target_seq;
}

/*
 * conn_handover - a greeted connection whose queue has nothing to send
 * goes to another queue of the same site and virtual-mta that waits for
 * a slot under a shared cap: no QUIT, no new handshake, and the
 * receiver's count stays the same.  Returns whether it moved.
 */
bool conn_handover(struct shard *s, struct sconn *c)
{
	struct queue *a = c->q;

	if (c->state != SC_OPEN || c->quitting || c->retire || c->connecting || c->ntxn)
		return false;
	for (uint32_t i = 0; i < s->nwaiters;) {
		struct queue *b = s->waiters[i];
		if (!b->waiting_slot || !b->ready.count) {
			/* stale: off the list */
			b->in_waiters = false;
			s->waiters[i] = s->waiters[--s->nwaiters];
			continue;
		}
		if (b == a || b->vmta != a->vmta || !b->wait_dest || !same_site(a, b) ||
		    (b->settings->require_starttls && !c->tls) ||
		    b->paused || b->hold_until_ms > s->now_ms || b->conns >= queue_max_out(b)) {
			i++;
			continue;
		}
		conn_move(s, c, b);
		b->waiting_slot = false;
		return true;
	}
	return false;
}

/*
 * conn_adopt_idle - rather than open a connection, q takes an idle one of
 * another queue of its site (same virtual-mta) that has nothing to send:
 * the connection belongs to the site, and a handshake is saved.  Returns
 * the connection, now q's, or NULL.
 */
struct sconn *conn_adopt_idle(struct shard *s, struct queue *q)
{
	if (!q->site)
		return NULL;
	for (struct sconn *c = s->idle_head; c; c = c->s_idle.next) {
		if (c->q == q || c->state != SC_OPEN || c->quitting ||
		    c->retire || c->ntxn || c->q->ready.count || c->q->vmta != q->vmta ||
		    !same_site(c->q, q) || (q->settings->require_starttls && !c->tls))
			continue;
		conn_move(s, c, q);
		return c;
	}
	return NULL;
}

/*
 * body_ready - start the transaction c->txn[] with its message's body, or
 * (body NULL) defer its recipients for the reason err.  Returns whether a
 * transaction runs.
 */
static bool body_ready(struct shard *s, struct sconn *c, const char *body, int err)
{
	struct queue *q = c->q;
	const struct delivery_msg *m = c->txn[0]->msg;

	if (!body) {
		char text[300];
		snprintf(text, sizeof(text), "message body unreadable in the spool: %s",
			 strerror(err));
		struct smtp_reply gone = {
			.code = 451, .status = "4.3.0", .local = true, .text = text,
		};
		for (size_t i = 0; i < c->ntxn; i++) {
			struct qrcpt *r = c->txn[i];
			c->txn[i] = NULL;
			apply_reply(s, q, r, &gone, c);
		}
		c->ntxn = 0;
		return false;
	}
	c->txn_desc = (struct smtp_txn){
		.mail_from = m->mail_from,
		.envid = m->envid,
		.body_8bit = m->body_8bit,
		.rcpts = c->txn_rcpts,
		.rcpt_count = c->ntxn,
		.body = body,
		.body_len = m->where.body_len,
	};
	c->txn_start_ms = s->now_ms;
	c->msgs++;
	warm_count(s, q, c->src);
	enum smtp_client_event ev = smtp_client_start(c->client, &c->txn_desc, &c->out);
	if (ev == SMTPC_EV_TXN_DONE) {
		handle_event(s, c, ev);
		return true;
	}
	c->body_more = true;
	set_deadline(s, c);
	conn_pump(s, c);
	return true;
}

void conn_body_ready(struct shard *s, struct sconn *c, const char *body, int err)
{
	if (c->state != SC_OPEN || !c->ntxn)
		return;		/* closed meanwhile: its recipients are back in line */
	if (!body_ready(s, c, body, err))
		conn_next_txn(s, c);
}

/* conn_next_txn - start the next transaction on an idle connection. */
void conn_next_txn(struct shard *s, struct sconn *c)
{
	struct queue *q = c->q;
	const struct cfg_queue *qs = q->settings;

	if (c->bwait)
		return;		/* its transaction starts when the body is read */

	for (;;) {
		/*
		 * A connection the queue no longer wants: its source or MX was
		 * given up, defer-queue holds the queue, or backoff lowered
		 * max-smtp-out below what is open.
		 */
		if (c->retire || q->paused || q->hold_until_ms > s->now_ms ||
		    q->conns - q->quitting > queue_max_out(q) || !warm_allows(s, q, c->src)) {
			conn_quit(s, c);
			return;
		}
		if (q->ready.count == 0 && s->nwaiters && !atomic_load(&s->stop) &&
		    conn_handover(s, c)) {
			q = c->q;
			qs = q->settings;
			continue;
		}
		if (q->ready.count == 0 ||
		    (qs->max_msg_per_connection && c->msgs >= qs->max_msg_per_connection) ||
		    atomic_load(&s->stop)) {
			if (q->ready.count == 0 && qs->connection_idle_timeout &&
			    !atomic_load(&s->stop) &&
			    !(qs->max_msg_per_connection && c->msgs >= qs->max_msg_per_connection)) {
				conn_set_idle(s, c, true);
				set_deadline(s, c);
				return;
			}
			conn_quit(s, c);
			return;
		}
		/* adaptive-rate: this source's rate at this site, as found so far */
		struct warm_entry *ad = adapt_of(s, q, c->src);
		if (ad)
			adapt_tick_src(s, q, ad, c->src);
		uint64_t ad_wait = ad ? sched_bucket_wait_ms(&ad->bucket, s->now_ms) : 0;
		if (ad_wait && q->idle > (c->idle ? 1u : 0u)) {
			/*
			 * Another connection already waits for the adaptive
			 * rate's next token: one is enough, and a receiver
			 * closes connections left idle (its 421 would defer
			 * the queue).
			 */
			conn_quit(s, c);
			return;
		}
		if (ad_wait || !sched_bucket_take(&q->msg_rate, s->now_ms)) {
			/* the rate says wait: idle until a token comes */
			uint64_t wait = sched_bucket_wait_ms(&q->msg_rate, s->now_ms);
			if (ad_wait > wait)
				wait = ad_wait;
			conn_set_idle(s, c, true);
			conn_deadline(s, c, s->now_ms + wait + 1000 + qs->connection_idle_timeout * 1000);
			queue_wake(s, q, s->now_ms + wait);
			return;
		}
		if (ad)
			sched_bucket_take(&ad->bucket, s->now_ms);
		conn_set_idle(s, c, false);
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
					.code = 554, .status = DELIVERY_EXPIRED_STATUS, .local = true,
					.text = "message expired (bounce-after) before it could be delivered",
				};
				qrcpt_attempted(r);
				log_attempt(s, q, r, "expired", &gone, NULL, NULL, NULL);
				finish_rcpt(s, q, r, DELIVERY_EXPIRED, make_report(s, q, r, &gone, NULL, DELIVERY_EXPIRED));
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
		for (size_t i = 1; i < c->ntxn; i++) {
			sched_bucket_take(&q->msg_rate, s->now_ms);
			if (ad)
				sched_bucket_take(&ad->bucket, s->now_ms);
		}
		/*
		 * The body: a big one mapped in place, else from the shard's
		 * cache, or read back from the spool while the connection waits.
		 */
		uint32_t intake = c->txn[0]->intake;
		const char *body = m->where.body_len > SPOOL_RESIDENT_MAX
				   ? body_map(s, c, intake, m) : body_get(s, c, intake, m);
		if (!body && errno == EINPROGRESS)
			return;		/* conn_body_ready goes on */
		if (!body_ready(s, c, body, errno))
			continue;
		return;
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
	char subj[SMTP_REPLY_SUBJECT_MAX];
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
			adapt_reply(s, q, c, &rep, pat && (pat->actions & CFG_ACT_MODE_BACKOFF),
				    pat ? subj : NULL);
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

void handle_event(struct shard *s, struct sconn *c, enum smtp_client_event ev)
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
		if (c->connecting) {
			/* greeted and ready: the ramp-up may go on */
			c->connecting = false;
			c->q->connecting--;
			c->greeted = true;
			if (c->dest)
				atomic_fetch_add_explicit(&c->dest->greeted, 1, memory_order_relaxed);
			mark_runnable(s, c->q);
		}
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
			char subj[SMTP_REPLY_SUBJECT_MAX];
			const struct cfg_smtp_pattern *pat =
				match_pattern(c->q, &rep, subj, sizeof(subj));
			adapt_reply(s, c->q, c, &rep, pat && (pat->actions & CFG_ACT_MODE_BACKOFF),
				    pat ? subj : NULL);
			if (pat)
				apply_queue_actions(s, c->q, c, pat, &rep, subj);
			/*
			 * Refused for the source IP it came from, with another
			 * source left: that is no failure of the MX.
			 */
			bool source_only = pat && (pat->actions & CFG_ACT_DISABLE_SOURCE_IP) &&
					   pick_source(s, c->q, false) >= 0;
			if (c->msgs == 0 && !source_only)
				conn_failed_early(s, c, &rep);
		}
		conn_close(s, c);
		return;
	case SMTPC_EV_CLOSED:
		conn_close(s, c);
		return;
	}
	BUG("unknown client event %d", (int)ev);
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
	char plain[TLS_PLAIN_CHUNK];
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
 * next_body_piece - the next piece of the body into zc: BDAT points into
 * the message (zero copy), DATA into the dot-stuffing scratch.  None left
 * (or DATA's 354 not yet here): body_more ends until a reply re-arms it.
 */
/*
 * body_piece - the client's next piece of the body (0: none now).  The
 * scratch is the connection's only while a body goes out: at the body's
 * end no send reads it any more (a piece is asked for only once the one
 * before is sent, or copied into TLS), so it goes back to the allocator
 * and a connection waiting for its receiver's reply costs 16 KB less.
 */
static size_t body_piece(struct sconn *c, const char **data)
{
	if (!c->scratch)
		c->scratch = xmalloc(SCRATCH_SIZE);
	size_t n = smtp_client_body(c->client, c->scratch, SCRATCH_SIZE, data);
	if (!n) {
		free(c->scratch);
		c->scratch = NULL;
		c->zc = NULL;
		c->zc_len = c->zc_off = 0;
	}
	return n;
}

static void next_body_piece(struct shard *s, struct sconn *c)
{
	const char *data;
	size_t n = body_piece(c, &data);
	if (!n) {
		c->body_more = false;
		set_deadline(s, c);
		return;
	}
	if (c->map) {
		size_t taken = smtp_client_body_taken(c->client);
		/* this piece may be in the mapping: keep it */
		body_drop_sent(c, taken > n ? taken - n : 0);
	}
	c->zc = data;
	c->zc_len = n;
	c->zc_off = 0;
}

/*
 * send_pending - one send of what waits, in stream order: the commands
 * (inflight), then the body piece (zc).  Both at once go as one SENDMSG:
 * a send per part cost a second TCP segment, a second completion and a
 * second loop turn per message.
 */
static void send_pending(struct shard *s, struct sconn *c)
{
	size_t cmd = c->inflight.len - c->inflight_off;
	size_t body = c->zc_len - c->zc_off;

	if (!cmd && !body)
		return;
	if (!cmd || !body) {
		if (cmd)
			submit_send(s, c, c->inflight.buf + c->inflight_off, cmd);
		else
			submit_send(s, c, c->zc + c->zc_off, body);
		return;
	}
	c->iov[0] = (struct iovec){ c->inflight.buf + c->inflight_off, cmd };
	c->iov[1] = (struct iovec){ (void *)(uintptr_t)(c->zc + c->zc_off), body };
	c->msg = (struct msghdr){ .msg_iov = c->iov, .msg_iovlen = 2 };
	struct io_uring_sqe *sqe = get_sqe(s);
	io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, c->hdr.slot, c->hdr.gen));
	c->send_inflight = true;
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
				const char *data;
				size_t n = body_piece(c, &data);
				if (!n) {
					c->body_more = false;
					break;
				}
				/* a piece counts as sent once returned: queue it whole */
				sb_add(&c->out, data, n);
				if (c->map)
					body_drop_sent(c, smtp_client_body_taken(c->client));
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
	if (c->inflight_off >= c->inflight.len && c->out.len) {
		struct strbuf t = c->inflight;
		c->inflight = c->out;
		c->out = t;
		sb_reset(&c->out);
		c->inflight_off = 0;
	}
	/* the body follows its commands in the same send (BDAT: no reply between) */
	if (c->zc_off >= c->zc_len && c->body_more && !c->out.len)
		next_body_piece(s, c);
	send_pending(s, c);
}

void on_send(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
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
	} else {
		/* commands first, then the body piece (send_pending's order) */
		size_t cmd = c->inflight.len - c->inflight_off;
		size_t a = n < cmd ? n : cmd;
		c->inflight_off += a;
		c->zc_off += n - a;
	}
	conn_pump(s, c);
}

/* on_recv - what a connection received, in a buffer of the shard's ring. */
void on_recv(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
{
	struct sconn *c = conn_get(s, slot, gen);
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;
	unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

	if (!c) {
		if (has_buf)
			uring_bufs_recycle(&s->recv_bufs, bid);
		return;
	}
	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->recv_inflight = false;
	if (c->state == SC_CLOSING) {
		if (has_buf)
			uring_bufs_recycle(&s->recv_bufs, bid);
		if (!c->recv_inflight)
			conn_close(s, c);
		return;
	}
	if (cqe->res == -ENOBUFS) {
		/* every buffer was taken when data came: ask again; this
		 * turn gives back the buffers it reaps before it submits */
		if (c->hdr.used && c->state == SC_OPEN && !c->recv_inflight)
			arm_recv(s, c);
		return;
	}
	if (cqe->res <= 0 || !has_buf) {
		if (has_buf)
			uring_bufs_recycle(&s->recv_bufs, bid);
		handle_event(s, c, smtp_client_abort(c->client, cqe->res == 0 ? SMTPC_ABORT_EOF
									     : SMTPC_ABORT_IO));
		return;
	}
	/* both take what they need: the buffer is free again after */
	const char *data = uring_bufs_data(&s->recv_bufs, bid);
	if (c->tls) {
		int rc = tls_conn_feed(c->tls, data, (size_t)cqe->res);
		uring_bufs_recycle(&s->recv_bufs, bid);
		if (rc < 0)
			handle_event(s, c, smtp_client_abort(c->client, SMTPC_ABORT_TLS));
		else
			tls_progress(s, c);
	} else {
		feed_plain(s, c, data, (size_t)cqe->res);
		uring_bufs_recycle(&s->recv_bufs, bid);
	}
	if (c->hdr.used && c->state == SC_OPEN) {
		if (!c->recv_inflight)
			arm_recv(s, c);
		conn_pump(s, c);
	}
}

void on_connect(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
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
		conn_failed_early(s, c, &rep);
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
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	const struct cfg_queue *qs = c->q->settings;
	/* smtp-source-host IP NAME: NAME is that address's PTR, the EHLO
	 * name receivers check; else the virtual-mta's, the global host-name */
	const char *helo = c->src >= 0 ? queue_source_name(c->q, (uint32_t)c->src) : NULL;
	if (!helo)
		helo = cfg_host_name(s->cfg, c->q->vmta, s->hostname);
	struct smtp_client_params p = {
		.helo_name = helo,
		.want_starttls = qs->use_starttls && s->set->tls_client,
		.require_starttls = qs->require_starttls,
		.allow_pipelining = !qs->ignore_pipelining,
		.allow_chunking = !qs->ignore_chunking,
		.allow_8bitmime = !qs->ignore_8bitmime,
		.allow_dsn = !qs->ignore_dsn,
		.memo = s->memo,
		.host = c->ip,
		.now = (int64_t)s->now_s,
	};
	c->client = smtp_client_new(&p);
	set_deadline(s, c);
	arm_recv(s, c);
}

/* open_conn - one more connection for the queue, to its next target. */
bool open_conn(struct shard *s, struct queue *q)
{
	if (!q->targets.naddrs)
		return false;
	int srci = pick_source(s, q, true);
	if (srci < 0)
		return false;
	uint32_t total = atomic_fetch_add_explicit(&s->set->total_conns, 1, memory_order_relaxed);
	if (total >= total_max_out(s)) {
		atomic_fetch_sub_explicit(&s->set->total_conns, 1, memory_order_relaxed);
		return false;
	}
	const struct dns_addr *a = &q->targets.addrs[q->next_target % q->targets.naddrs];
	const char *src = queue_source_ip(q, (uint32_t)srci);
	struct cap_dest *dest = caps_dest(s->set->caps, a, src);
	struct cap_dest *mxd = caps_mx(s->set->caps, dns_host_name(&q->targets, a->host), src);
	if (!caps_reserve(dest, s->now_ms)) {
		atomic_fetch_sub_explicit(&s->set->total_conns, 1, memory_order_relaxed);
		return false;
	}
	if (!caps_reserve(mxd, s->now_ms)) {
		caps_release(dest);
		atomic_fetch_sub_explicit(&s->set->total_conns, 1, memory_order_relaxed);
		return false;
	}
	struct sconn *c = conn_alloc(s);
	c->dest = dest;
	c->mxd = mxd;
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
