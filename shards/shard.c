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
 * wake-up touches only the recipients due.  A shard with nothing in
 * motion ticks less often, at its first timer (quiet_ms).
 *
 * The parts, as shared/DESIGN.md names them: sched.c (the scheduler's
 * pure decisions, clock as an argument), caps.c (connection counts per
 * destination shared by the shards), queue.c (queues, backoff, pattern
 * actions, targets, schedule()), conn.c (the connection pool and I/O
 * pump), outcome.c (outcomes, log, accounting) and this file (the loop,
 * the timers and the set); shard_int.h is what they share.
 *
 * Threads: everything in a struct shard belongs to its thread, except the
 * rings (SPSC, see shards.h), the eventfds and the counters in struct
 * shard_pub, which other threads read.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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
#include "services/acct.h"
#include "shards/dns.h"
#include "shards/sched.h"
#include "shards/shard_int.h"
#include "util/log.h"
#include "shards/shards.h"
#include "shards/smtp_client.h"
#include "util/ring.h"
#include "util/slots.h"
#include "util/timer_wheel.h"
#include "util/uring.h"
#include "util/util.h"

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * thread_demand_ns - the time this thread has run plus the time it has
 * waited, runnable, for a CPU (/proc/thread-self/schedstat: the first two
 * fields, ns), read through <fd>, opened on the thread itself.  Without
 * it (no schedstat), the CPU time alone.
 */
static uint64_t thread_demand_ns(int fd)
{
	char buf[96];
	struct timespec ts;

	if (fd >= 0) {
		ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
		unsigned long long run, delay;

		if (n > 0) {
			buf[n] = '\0';
			if (sscanf(buf, "%llu %llu", &run, &delay) == 2)
				return (uint64_t)(run + delay);
		}
	}
	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* short: the ramp opens hundreds of connections in a few windows */
#define LOAD_WINDOW_NS	(20 * 1000000u)

/*
 * load_window - at the end of a loop turn, close the load window once it
 * is LOAD_WINDOW_NS old: busy_pct = the part of its wall time the shard
 * ran or waited for a CPU.
 *
 * Why that, and not CPU time or the time out of ring_wait: a shard that
 * cannot keep up on a host whose cores are all taken (intake, other
 * shards, io_uring workers) is as often runnable and not running as
 * running, so its CPU time says 50% while its completions pile up; and
 * the time out of ring_wait misses both the socket work the kernel runs
 * inside the wait (DEFER_TASKRUN) and a wake-up that waits for a CPU.
 * The scheduler's own account (run + run-queue delay) has both.  A shard
 * mostly asleep in its wait, for slow receivers, reads low and ramps.
 * The cost: one pread of a procfs file per window.
 */
static void load_window(struct shard *s, uint64_t now_ns)
{
	uint64_t wall = now_ns - s->load_start_ns;

	if (wall < LOAD_WINDOW_NS)
		return;
	uint64_t demand = thread_demand_ns(s->schedstat_fd);
	uint64_t used = demand > s->load_demand_ns ? demand - s->load_demand_ns : 0;

	s->busy_pct = (uint32_t)((used < wall ? used : wall) * 100 / wall);
	atomic_store_explicit(&s->pub.busy_pct, s->busy_pct, memory_order_relaxed);
	s->load_start_ns = now_ns;
	s->load_demand_ns = demand;
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

static void arm_wake(struct shard *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_read(sqe, s->wake_fd, &s->wake_val, sizeof(s->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_WAKE, 0, 0));
}

/* arm_tick - the next tick in <ms>; an armed one no longer counts. */
static void arm_tick(struct shard *s, uint64_t ms)
{
	struct io_uring_sqe *sqe = get_sqe(s);
	struct __kernel_timespec *ts = &s->tick_ts[++s->tick_gen & 1];

	*ts = (struct __kernel_timespec){
		.tv_sec = (long long)(ms / 1000),
		.tv_nsec = (long long)(ms % 1000) * 1000000L,
	};
	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_TICK, 0, s->tick_gen));
	s->tick_at_ms = s->now_ms + ms;
}

/*
 * quiet_ms - how long this shard may sleep without a tick: nothing it
 * holds would move before then except by a completion or a wake-up (jobs,
 * commands, a reload and the stop all write wake_fd).  0 when anything
 * waits on the tick: connections (deadlines, giving way to other
 * shards), queues waiting for a slot, DNS timeouts, outcomes or lines not
 * yet handed on, a stop.  Else until the first timer that may come due,
 * and at most a second while a spool segment is open for body reads
 * (body_idle closes it after one).
 *
 * Why: a tick every TICK_MS (and the batch wait after it) woke an idle
 * shard 40 times a second; a host with many cores and little mail paid
 * that on every one of them.
 */
static uint64_t quiet_ms(struct shard *s, size_t acct_left)
{
	if (atomic_load_explicit(&s->stop, memory_order_relaxed) || s->conns.live ||
	    s->nwaiters || s->run_head || s->nearly || acct_left || s->log.cur.len ||
	    s->retry.cur.len || s->body_reads)
		return 0;
	for (uint32_t i = 0; i < s->set->nintake; i++)
		if (s->held[i] || s->unwoken[i] || (s->cur[i] && s->cur[i]->count))
			return 0;
	if (dns_resolver_next_timeout_ms(s->dns) >= 0)
		return 0;
	return tw_quiet_ms(&s->timers, s->now_ms, body_files_open(s) ? 1000 : QUIET_TICK_MS);
}

/*
 * next_tick - at a turn's end: after a tick, arm the next, long when the
 * shard is quiet; while a long one is armed, cut it short once the shard
 * has something a tick must move sooner.
 */
static void next_tick(struct shard *s, size_t acct_left)
{
	if (s->tick_rearm) {
		s->tick_rearm = false;
		uint64_t q = quiet_ms(s, acct_left);
		arm_tick(s, q > TICK_MS ? q : TICK_MS);
	} else if (s->tick_at_ms > s->now_ms + TICK_MS &&
		   s->now_ms + quiet_ms(s, acct_left) < s->tick_at_ms) {
		arm_tick(s, TICK_MS);
	}
}

/* Jobs that waited for the retry table, taken per loop turn (turn budget). */
#define EARLY_BATCH	4096

/*
 * take_early - once the retry table is published, the jobs that waited
 * for it, first in first taken, at most EARLY_BATCH a turn; a ring's
 * later jobs queue behind them (drain_jobs) until none waits.
 */
static void take_early(struct shard *s)
{
	if (!s->retry_ready) {
		if (!atomic_load_explicit(&s->set->retry_ready, memory_order_acquire))
			return;
		s->retry_ready = true;
	}
	size_t budget = EARLY_BATCH;
	for (uint32_t i = 0; s->nearly && i < s->set->nintake; i++) {
		struct early_jobs *e = &s->early[i];
		while (budget && e->head < e->n) {
			take_job(s, i, e->jobs[e->head++]);
			s->nearly--;
			budget--;
		}
		if (e->head == e->n) {
			free(e->jobs);
			*e = (struct early_jobs){ 0 };
		}
	}
}

static void drain_jobs(struct shard *s)
{
	struct delivery_job *jobs[JOB_BATCH];

	for (uint32_t i = 0; i < s->set->nintake; i++) {
		struct early_jobs *e = &s->early[i];
		size_t n;
		while ((n = spsc_ring_pop(s->in[i], (void **)jobs, JOB_BATCH)) > 0)
			for (size_t k = 0; k < n; k++) {
				if (s->retry_ready && e->head == e->n) {
					take_job(s, i, jobs[k]);
					continue;
				}
				/* no retry state yet, or earlier jobs wait: behind them */
				if (e->n == e->cap) {
					e->cap = e->cap ? e->cap * 2 : 1024;
					e->jobs = xrealloc(e->jobs, e->cap * sizeof(*e->jobs));
				}
				e->jobs[e->n++] = jobs[k];
				s->nearly++;
			}
	}
}

/*
 * give_way - idle connections close where another queue (of any shard)
 * waits for a slot: at the same destination, or under total-max-smtp-out.
 * A sweep of the idle ones, only while some queue waits.
 */
static void give_way(struct shard *s)
{
	struct caps *caps = s->set->caps;

	if (!caps_any_want(caps, s->now_ms))
		return;
	bool total = caps_total_wanted(caps, s->now_ms) &&
		     atomic_load_explicit(&s->set->total_conns, memory_order_relaxed) >=
			     total_max_out(s);
	for (struct sconn *c = s->idle_head, *next; c; c = next) {
		next = c->s_idle.next;
		if (c->state != SC_OPEN || c->quitting)
			continue;
		if (total || (c->dest && caps_wanted(c->dest, s->now_ms)) ||
		    (c->mxd && caps_wanted(c->mxd, s->now_ms))) {
			/* a queue of this shard waiting there takes it as it is */
			if (conn_handover(s, c))
				conn_next_txn(s, c);
			else
				conn_quit(s, c);
			BUG_ON(next && !next->idle);	/* only c changed */
		}
	}
}

/*
 * wake_waiters - queues that a shared cap refused a connection wait in
 * shard.waiters and are looked at here, once a tick, instead of each
 * polling the shared counts on its own (1,000 domains behind one
 * receiver made 20,000 schedule() calls a second that found no room).
 * Per destination, as many as it has room for now become runnable, first
 * in line first; while some are left, the destination's "a queue wants a
 * slot" signal is renewed, so idle connections there give way.
 */
static void wake_waiters(struct shard *s)
{
	struct {
		struct cap_dest *d;
		uint32_t room;
		bool wanted;
	} seen[8];
	uint32_t nseen = 0;

	for (uint32_t i = 0; i < s->nwaiters;) {
		struct queue *q = s->waiters[i];
		if (!q->waiting_slot || !q->ready.count || !q->wait_dest) {
			q->in_waiters = false;
			s->waiters[i] = s->waiters[--s->nwaiters];
			continue;
		}
		i++;
		uint32_t k = 0;
		while (k < nseen && seen[k].d != q->wait_dest)
			k++;
		if (k == nseen) {
			if (nseen == ARRAY_SIZE(seen)) {
				mark_runnable(s, q);	/* many destinations: each looks itself */
				continue;
			}
			seen[nseen].d = q->wait_dest;
			seen[nseen].room = caps_room(q->wait_dest, s->now_ms);
			seen[nseen++].wanted = false;
		}
		if (seen[k].room) {
			seen[k].room--;
			mark_runnable(s, q);
		} else if (!seen[k].wanted) {
			caps_want(s->set->caps, seen[k].d, s->now_ms);
			seen[k].wanted = true;
		}
	}
}

static void on_tick(struct shard *s)
{
	/* while stopping too: the tick ends the wait for final replies */
	s->tick_rearm = true;
	dns_resolver_process_timeouts(s->dns);
	body_idle(s);
	/* only what came due: no sweep over every connection and queue */
	struct tw_node *n;
	while ((n = tw_expire(&s->timers, s->now_ms))) {
		if (n->kind == TIMER_QUEUE) {
			mark_runnable(s, container_of(n, struct queue, wake_timer));
			continue;
		}
		BUG_ON(n->kind != TIMER_CONN);
		struct sconn *c = container_of(n, struct sconn, deadline_timer);
		if (s->stop_until_ms && s->now_ms >= s->stop_until_ms)
			continue;	/* the stop's grace is over: stop_turn cuts it */
		if (c->state == SC_CONNECTING) {
			struct smtp_reply rep = { .code = 451, .status = "4.4.1", .local = true,
						  .text = "connect timeout" };
			conn_failed_early(s, c, &rep);
			conn_close(s, c);
		} else if (c->state == SC_OPEN && c->greet_until_ms > s->now_ms &&
			   smtp_client_phase(c->client) == SMTPC_PHASE_GREETING) {
			/*
			 * Still not greeted: the receiver is full.  Ask idle
			 * connections there to give way, until the greeting
			 * comes or smtp-greeting-timeout ends the wait.
			 */
			if (c->dest)
				caps_want(s->set->caps, c->dest, s->now_ms);
			uint64_t next = s->now_ms + SCHED_WANT_MS / 2;
			conn_deadline(s, c, next < c->greet_until_ms ? next : c->greet_until_ms);
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
	if (!s->stop_until_ms) {
		give_way(s);
		wake_waiters(s);
	}
	wbuf_flush(s, &s->log, OP_LOG);
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
	/* what the loop submits (conn.c, outcome.c and this file) */
	static const uint8_t ops[] = {
		IORING_OP_CONNECT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_WRITE,
		IORING_OP_READ, IORING_OP_POLL_ADD, IORING_OP_TIMEOUT,
	};
	struct uring_want w = {
		.entries = RING_ENTRIES,
		.flags = URING_ONE_THREAD | IORING_SETUP_DEFER_TASKRUN,
		.ops = ops,
		.nops = ARRAY_SIZE(ops),
	};
	unsigned got;
	char note[160];
	int rc = uring_setup(&s->ring, &w, &got, note, sizeof(note));
	if (rc < 0) {
		snprintf(err, errlen, "shard %u: io_uring: %s", s->index, note);
		return rc;
	}
	/* every shard gets the same kernel: one line says it for all */
	if (note[0] && s->index == 0)
		log_msg(LOG_LEVEL_WARNING, "start", NULL, "shards: io_uring %s", note);
	s->ring_ok = true;
	s->recv_bufs.count = RECV_BUF_COUNT;
	s->recv_bufs.size = RECV_BUF_SIZE;
	s->recv_bufs.group = RECV_BUF_GROUP;
	rc = uring_bufs_register(&s->ring, &s->recv_bufs, note, sizeof(note));
	if (rc < 0) {
		snprintf(err, errlen, "shard %u: %s", s->index, note);
		return rc;
	}
	s->defer_taskrun = (got & IORING_SETUP_DEFER_TASKRUN) &&
			   (s->ring.features & IORING_FEAT_EXT_ARG);
	tw_init(&s->timers, TICK_MS, TIMER_SLOTS, mono_ms());
	const struct cfg_global *g = cfg_global(s->cfg);
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
	cfg_system_host_name(s->hostname, sizeof(s->hostname));
	return 0;
}

/* memo_log - one line the first time a receiving host shows a quirk. */
static void memo_log(void *arg, const char *host, const char *what)
{
	const struct shard *s = arg;

	log_msg(LOG_LEVEL_NOTICE, "host-quirk", NULL, "shard %u: host %s %s", s->index, host, what);
}

/*
 * adopt_cfg - a reload posted a configuration: run on it from now on.
 * Queues keep their recipients and re-resolve their policy; the old
 * configuration goes with this shard's reference (freed by the last).
 */
static void adopt_cfg(struct shard *s)
{
	const struct cfg *next = cfg_mailbox_take(&s->next_cfg);

	if (!next)
		return;
	const struct cfg *old = s->cfg;
	s->cfg = next;
	size_t npools = cfg_pool_count(next);
	if (npools > s->npools) {
		s->pool_rr = xrealloc(s->pool_rr, (npools + 1) * sizeof(uint32_t));
		memset(s->pool_rr + s->npools + 1, 0, (npools - s->npools) * sizeof(uint32_t));
		s->npools = npools;
	}
	queues_rebind(s);
	cfg_unref(old);
}

/*
 * ring_wait - submit, and wait for completions unless jobs are pending.
 *
 * A shard with work in flight waits for a batch: BATCH_WAIT_CQES
 * completions or BATCH_WAIT_US, whichever comes first.  With
 * DEFER_TASKRUN the kernel wakes the thread only when that many are
 * there, so a shard runs one turn per batch, not one per reply: with two
 * shards each saw half the traffic in as many turns as one shard saw it
 * all, and every turn is a sleep, a wake-up and an io_uring_enter.  A
 * shard whose last turn found nothing waits for one completion without
 * a timeout, so an idle shard costs its tick and nothing more.  Intakes
 * do not wake a shard in a bounded wait (timed_wait): jobs they hand it
 * wait BATCH_WAIT_US at most.
 *
 * With DEFER_TASKRUN completions are posted only by an enter that asks
 * for events, so the no-wait submit asks too: a shard that always finds
 * new jobs still reaps its sockets.
 */
static int ring_wait(struct shard *s, size_t pending)
{
	if (!s->defer_taskrun)
		return pending ? io_uring_submit(&s->ring) : io_uring_submit_and_wait(&s->ring, 1);
	if (pending)
		return io_uring_submit_and_get_events(&s->ring);
	if (!atomic_load_explicit(&s->timed_wait, memory_order_relaxed))
		return io_uring_submit_and_wait(&s->ring, 1);
	struct io_uring_cqe *first;
	struct __kernel_timespec ts = { .tv_nsec = BATCH_WAIT_US * 1000L };
	int rc = io_uring_submit_and_wait_timeout(&s->ring, &first, BATCH_WAIT_CQES, &ts, NULL);

	return rc == -ETIME ? 0 : rc;
}

/*
 * stop_turn - a loop turn of a clean stop; returns whether the thread may
 * end.  No transaction starts once the stop flag is up (the queues are not
 * run, conn_next_txn QUITs).  A connection whose transaction's data is
 * sent (SMTPC_PHASE_DATA_END: the final dot or BDAT LAST is out) stays
 * open for the final reply, so the outcome reaches the intake's ring and
 * is journaled by the last commit (the daemon takes the rings after the
 * shards end): closing it at once made a message the receiver took go
 * out again after the restart.  Its wait ends at its own
 * smtp-data-termination-timeout or STOP_GRACE_MS after the stop,
 * whichever comes first (conn_deadline caps every deadline, QUIT's too);
 * once answered it QUITs and closes, and at the end of the grace it is
 * cut, its recipients left in the spool (at-least-once).  Every other
 * connection closes at once.  The tick stays armed meanwhile, so the
 * grace ends even when nothing else completes.
 */
static bool stop_turn(struct shard *s)
{
	bool first = !s->stop_until_ms;

	if (first)
		s->stop_until_ms = s->now_ms + STOP_GRACE_MS;
	bool cut = s->now_ms >= s->stop_until_ms;
	bool busy = false;
	uint32_t unanswered = 0;
	for (uint32_t i = 0; i < s->conns.count; i++) {
		struct sconn *c = slot_at(&s->conns, i);
		if (!c)
			continue;
		if (first && c->state == SC_OPEN && c->ntxn &&
		    smtp_client_phase(c->client) == SMTPC_PHASE_DATA_END) {
			c->draining = true;
			conn_deadline(s, c, c->deadline_ms);	/* now capped */
		}
		if (c->state != SC_CLOSING && (!c->draining || cut)) {
			if (c->draining && c->ntxn)
				unanswered++;
			conn_close(s, c);
		}
		busy |= c->hdr.used;
	}
	if (unanswered)
		log_msg(LOG_LEVEL_WARNING, "stop", NULL,
			"shard %u: %u transaction(s) without the receiver's final reply "
			"%u ms after the stop: closed, their recipients stay queued and "
			"may be delivered twice", s->index, unanswered, STOP_GRACE_MS);
	busy |= s->body_reads > 0;	/* their buffers are the ring's */
	/* the last delivery lines are written before the thread ends */
	return !busy && !s->log.busy && (!s->log.cur.len || s->log.fd < 0) &&
	       !s->retry.busy && (!s->retry.cur.len || s->retry.fd < 0);
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;
	char err[256];

	if (s->cpu >= 0 && affinity_bind_thread(s->cpu, err, sizeof(err)) < 0)
		log_msg(LOG_LEVEL_WARNING, "start", NULL, "shard %u: %s; running unpinned", s->index,
			err);
	unsigned arena;
	int arc = affinity_arena_bind(&arena, err, sizeof(err));
	if (arc == 0)
		atomic_store(&s->pub.arena, arena + 1);
	else
		/* the sanitizer builds have no jemalloc: nothing to warn about */
		log_msg(arc == -ENOTSUP ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARNING, "start", NULL,
			"shard %u: %s; allocating from the shared arenas", s->index, err);
	if (setup(s, err, sizeof(err)) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
		return NULL;
	}
	s->schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	s->load_start_ns = mono_ns();
	s->load_demand_ns = thread_demand_ns(s->schedstat_fd);
	s->now_ms = s->load_start_ns / 1000000;
	s->now_s = time(NULL);
	arm_wake(s);
	arm_tick(s, TICK_MS);
	for (;;) {
		bool stopping = atomic_load(&s->stop);
		if (stopping && stop_turn(s))
			break;
		/* before the sleeping flags: an intake that sees those sees this */
		bool timed = s->batch_wait && !stopping;
		if (atomic_load_explicit(&s->timed_wait, memory_order_relaxed) != timed)
			atomic_store(&s->timed_wait, timed);
		for (uint32_t i = 0; i < s->set->nintake; i++)
			spsc_ring_prepare_sleep(s->in[i]);
		/* jobs waiting for the retry table count only once it is there */
		size_t pending = s->retry_ready ? s->nearly : 0;
		for (uint32_t i = 0; i < s->set->nintake; i++)
			pending += spsc_ring_count(s->in[i]);
		/* stopping, jobs stay in the rings: the wait must not spin on them */
		int rc = ring_wait(s, stopping ? 0 : pending);
		uint64_t now_ns = mono_ns();
		for (uint32_t i = 0; i < s->set->nintake; i++)
			spsc_ring_finish_sleep(s->in[i]);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			log_msg(LOG_LEVEL_ERROR, "shard-stopped", NULL, "shard %u: io_uring: %s",
				s->index, strerror(-rc));
			break;
		}
		s->now_ms = now_ns / 1000000;
		s->now_s = time(NULL);
		load_window(s, now_ns);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0, ticks = 0;
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
				ticks++;
				if (gen == s->tick_gen)
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
				wbuf_written(&s->log, cqe->res);
				break;
			case OP_RETRY:
				wbuf_written(&s->retry, cqe->res);
				break;
			case OP_BODY:
				on_body_read(s, cqe, slot, gen);
				break;
			default:
				BUG("completion of unknown kind %d", (int)kind);	/* every submitted kind is handled */
			}
			if (seen >= TURN_BUDGET) {
				atomic_fetch_add_explicit(&s->pub.loop_overruns, 1,
							  memory_order_relaxed);
				break;
			}
		}
		io_uring_cq_advance(&s->ring, seen);
		/* a tick alone is no traffic: no batch wait after it */
		s->batch_wait = s->defer_taskrun && seen > ticks;
		if (!stopping) {
			adopt_cfg(s);
			take_early(s);
			drain_jobs(s);
			ctl_drain(s);
			run_queues(s);
			if (dns_resolver_next_timeout_ms(s->dns) == 0)
				dns_resolver_process_timeouts(s->dns);
			run_queues(s);
		}
		publish_outcomes(s);
		size_t acct_left = 0;
		if (s->set->acct)
			acct_left = acct_flush(s->set->acct, s->set->acct_base + s->index);
		/* a write per loop turn woke the log thread per message */
		if (s->log.cur.len >= LOG_FLUSH_BYTES || atomic_load(&s->stop))
			wbuf_flush(s, &s->log, OP_LOG);
		wbuf_flush(s, &s->retry, OP_RETRY);
		next_tick(s, acct_left);
	}
	if (s->schedstat_fd >= 0)
		close(s->schedstat_fd);
	tls_thread_cleanup();
	return NULL;
}

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
	set->body_cache_size = p->body_cache_size;
	if (p->spool_dirs) {
		set->spool_dirs = xcalloc(p->nintake, sizeof(char *));
		for (uint32_t i = 0; i < p->nintake; i++)
			set->spool_dirs[i] = p->spool_dirs[i] ? xstrdup(p->spool_dirs[i]) : NULL;
	}
	set->caps = caps_new(p->cfg, 65536);	/* destinations, not connections */
	set->shards = xcalloc(p->nshards, sizeof(*set->shards));
	set->ctl_fd = -1;
	for (uint32_t i = 0; i < p->nshards; i++)
		set->shards[i].retry.fd = set->shards[i].log.fd = set->shards[i].wake_fd = -1;
	/* the retry state of the last run: loaded by shard_set_start's loader */
	const char *spool = cfg_global(p->cfg)->spool_dir;
	set->retry_dir = spool ? xstrdup(spool) : NULL;
	atomic_init(&set->retry_ready, !spool);
	set->need_wake = xcalloc((size_t)p->nshards * p->nintake, sizeof(bool));
	set->outcome_fd = xcalloc(p->nintake, sizeof(int));
	BUG_ON(posix_memalign((void **)&set->outcome_woke, _Alignof(struct outcome_woke),
			      p->nintake * sizeof(*set->outcome_woke)) != 0);
	for (uint32_t i = 0; i < p->nintake; i++)
		atomic_init(&set->outcome_woke[i].ms, 0);
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
	set->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (set->ctl_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		shard_set_free(set);
		return -errno;
	}
	for (uint32_t i = 0; i < p->nshards; i++) {
		struct shard *s = &set->shards[i];
		s->index = i;
		s->set = set;
		s->cpu = p->cpus ? p->cpus[i] : -1;
		s->log.fd = p->log_fd;
		if (spool) {
			char *path = xasprintf("%s/retry-%u.log", spool, i);
			s->retry.fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
			free(path);
			if (s->retry.fd < 0) {
				snprintf(err, errlen, "%s/retry-%u.log: %s", spool, i, strerror(errno));
				shard_set_free(set);
				return -errno;
			}
		}
		s->wake_fd = eventfd(0, EFD_CLOEXEC);
		s->in = xcalloc(p->nintake, sizeof(*s->in));
		s->out = xcalloc(p->nintake, sizeof(*s->out));
		s->cur = xcalloc(p->nintake, sizeof(*s->cur));
		s->held = xcalloc(p->nintake, sizeof(*s->held));
		s->held_tail = xcalloc(p->nintake, sizeof(*s->held_tail));
		s->ctl_in = spsc_ring_new(SHARD_CTL_RING);
		s->ctl_out = spsc_ring_new(SHARD_CTL_RING);
		s->unwoken = xcalloc(p->nintake, sizeof(uint32_t));
		s->early = xcalloc(p->nintake, sizeof(*s->early));
		for (uint32_t k = 0; k < p->nintake; k++) {
			s->in[k] = spsc_ring_new(p->ring_size);
			s->out[k] = spsc_ring_new(1024);
		}
		s->memo = smtp_memo_new(memo_log, s);
		s->dns_gen = xcalloc(MAX_DNS_FDS, sizeof(uint32_t));
		s->dns_want = xcalloc(MAX_DNS_FDS, 1);
		s->dns_armed = xcalloc(MAX_DNS_FDS, 1);
		s->cfg = cfg_ref(p->cfg);
		s->npools = cfg_pool_count(p->cfg);
		s->pool_rr = xcalloc(s->npools + 1, sizeof(uint32_t));
		slot_table_init(&s->conns, sizeof(struct sconn));
		body_init(s);
		if (s->wake_fd < 0) {
			snprintf(err, errlen, "shard %u: eventfd: %s", i, strerror(errno));
			shard_set_free(set);
			return -errno;
		}
	}
	*out = set;
	return 0;
}

void shard_set_reload(struct shard_set *set, const struct cfg *cfg)
{
	for (uint32_t i = 0; i < set->nshards; i++) {
		struct shard *s = &set->shards[i];
		cfg_mailbox_post(&s->next_cfg, cfg);
		/* a sleeping shard wakes to take it: limits apply within a tick */
		uint64_t one = 1;
		ssize_t w = write(s->wake_fd, &one, sizeof(one));
		(void)w;
	}
}

bool shard_set_reload_pending(struct shard_set *set)
{
	for (uint32_t i = 0; i < set->nshards; i++)
		if (cfg_mailbox_pending(&set->shards[i].next_cfg))
			return true;
	return false;
}

/*
 * load_retry - the loader thread: the retry state of the last run
 * (retry.h), published to the shards when whole.  It runs while the
 * intake answers and recovers the spool: at a million deferred
 * recipients the load takes seconds, and the listener must not wait for
 * it.  The shards hold the jobs they get meanwhile (drain_jobs) and take
 * them once it is published, so every recipient finds its state.  A
 * record older than the longest bounce-after could not be due any more.
 */
static void *load_retry(void *arg)
{
	struct shard_set *set = arg;
	uint64_t t0 = mono_ms();
	char err[512];

	/* the shards' own files are emptied, not removed: they hold them open */
	int rc = retry_table_load(set->retry_dir, (int64_t)time(NULL), 30 * 86400, set->nshards,
				  &set->retry, err, sizeof(err));
	if (rc < 0)
		log_msg(LOG_LEVEL_ERROR, "retry-load", NULL,
			"retry state not compacted (kept in its files for the next start): %s", err);
	atomic_store_explicit(&set->retry_ready, true, memory_order_release);
	/* a shard holding jobs takes them now, not at its next tick */
	for (uint32_t i = 0; i < set->nshards; i++) {
		uint64_t one = 1;
		ssize_t w = write(set->shards[i].wake_fd, &one, sizeof(one));
		(void)w;
	}
	char fields[96];
	unsigned long long ms = (unsigned long long)(mono_ms() - t0);
	size_t n = retry_table_count(set->retry);
	snprintf(fields, sizeof(fields), "recipients=%zu ms=%llu", n, ms);
	/* a start without deferred mail has nothing to say */
	log_msg(n ? LOG_LEVEL_NOTICE : LOG_LEVEL_INFO, "retry-loaded", fields,
		"retry state of %zu recipients loaded in %llu ms", n, ms);
	size_t skipped = retry_table_skipped(set->retry);
	if (skipped) {
		snprintf(fields, sizeof(fields), "skipped=%zu", skipped);
		log_msg(LOG_LEVEL_WARNING, "retry-skipped", fields,
			"%zu lines of %s/retry-*.log were no record (a crash cuts the last one "
			"short); their recipients retry on their first schedule", skipped,
			set->retry_dir);
	}
	return NULL;
}

int shard_set_start(struct shard_set *set, char *err, size_t errlen)
{
	if (set->retry_dir && !set->loader_started) {
		int rc = pthread_create(&set->loader, NULL, load_retry, set);
		if (rc) {
			snprintf(err, errlen, "retry state loader: pthread_create: %s", strerror(rc));
			return -rc;
		}
		set->loader_started = true;
		pthread_setname_np(set->loader, "retryload");
	}
	for (uint32_t i = 0; i < set->nshards; i++) {
		int rc = pthread_create(&set->shards[i].thread, NULL, shard_main,
					&set->shards[i]);
		if (rc) {
			snprintf(err, errlen, "shard %u: pthread_create: %s", i, strerror(rc));
			return -rc;
		}
		set->shards[i].started = true;
		/* perf, top -H and /proc tell the shards from the intake by name */
		char name[16];
		snprintf(name, sizeof(name), "shard%u", i);
		pthread_setname_np(set->shards[i].thread, name);
	}
	return 0;
}

/*
 * shard_set_stop - every shard is told first, then joined: their waits for
 * final replies (stop_turn) run side by side, so a stop takes one grace at
 * most, not one per shard.
 */
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
	}
	for (uint32_t i = 0; i < set->nshards; i++) {
		struct shard *s = &set->shards[i];
		if (!s->started)
			continue;
		pthread_join(s->thread, NULL);
		s->started = false;
		atomic_store(&s->joined, true);
	}
	/* it ends by itself: a stop during the load waits for the rest */
	if (set->loader_started) {
		pthread_join(set->loader, NULL);
		set->loader_started = false;
	}
}

static void free_shard(struct shard *s, uint32_t nintake)
{
	for (uint32_t i = 0; i < s->conns.count; i++) {
		struct sconn *c = slot_at(&s->conns, i);
		if (c)
			conn_release(s, c);
	}
	HASH_TAB_EACH(&s->queues, struct queue, q) {
		struct qrcpt *r;
		while ((r = rl_pop(&q->ready)) || (r = deferred_pop(q))) {
			msg_release(s, r->intake, r->msg);
			delivery_msg_unref(r->msg);
			free(r);
		}
		free(q->deferred);
		free(q->src_off_until);
		free(q->key);
		free(q->domain);
		free(q->vmta_name);
		free(q->mx_of);
		free(q->site);
		free(q);
	}
	hash_tab_free(&s->queues);
	warm_table_free(&s->warm);
	smtp_memo_free(s->memo);
	free(s->waiters);
	slot_table_destroy(&s->conns);
	body_free(s);
	tw_destroy(&s->timers);
	sb_free(&s->acct_hdr);
	dns_resolver_free(s->dns);
	if (s->ring_ok)
		io_uring_queue_exit(&s->ring);
	uring_bufs_free(&s->recv_bufs);
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
		/* unjournaled: redelivered after a restart (at-least-once) */
		while ((b = s->held[k])) {
			s->held[k] = b->next;
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
	for (uint32_t k = 0; k < nintake && s->early; k++) {
		for (size_t i = s->early[k].head; i < s->early[k].n; i++)
			delivery_job_free(s->early[k].jobs[i]);
		free(s->early[k].jobs);
	}
	free(s->early);
	struct shard_cmd *cmd;
	while (s->ctl_in && spsc_ring_pop(s->ctl_in, (void **)&cmd, 1))
		shard_cmd_free(cmd);
	while (s->ctl_out && spsc_ring_pop(s->ctl_out, (void **)&cmd, 1))
		shard_cmd_free(cmd);
	spsc_ring_free(s->ctl_in);
	spsc_ring_free(s->ctl_out);
	free(s->in);
	free(s->out);
	free(s->cur);
	free(s->held);
	free(s->held_tail);
	free(s->unwoken);
	free(s->dns_gen);
	free(s->dns_want);
	free(s->dns_armed);
	free(s->pool_rr);
	cfg_mailbox_clear(&s->next_cfg);
	cfg_unref(s->cfg);
	s->cfg = NULL;
	sb_free(&s->log.cur);
	sb_free(&s->log.inflight);
	sb_free(&s->retry.cur);
	sb_free(&s->retry.inflight);
	if (s->retry.fd >= 0)
		close(s->retry.fd);
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
	if (set->ctl_fd >= 0)
		close(set->ctl_fd);
	free(set->outcome_fd);
	free(set->outcome_woke);
	free(set->taking);
	free(set->taking_off);
	free(set->shards);
	free(set->need_wake);
	for (uint32_t i = 0; set->spool_dirs && i < set->nintake; i++)
		free(set->spool_dirs[i]);
	free(set->spool_dirs);
	caps_free(set->caps);
	retry_table_free(set->retry);
	free(set->retry_dir);
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

size_t shard_backlog(const struct shard_set *set, uint32_t intake, uint32_t shard)
{
	BUG_ON(intake >= set->nintake || shard >= set->nshards);
	return spsc_ring_count(set->shards[shard].in[intake]);
}

size_t shard_room(const struct shard_set *set, uint32_t intake, uint32_t shard)
{
	BUG_ON(intake >= set->nintake || shard >= set->nshards);
	return spsc_ring_capacity(set->shards[shard].in[intake]) -
	       shard_backlog(set, intake, shard);
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
		/*
		 * A shard in a wait bounded by BATCH_WAIT_US looks at its
		 * rings by then: waking it would cost this thread a write and
		 * it a turn sooner, for each of the shards, at each commit.
		 */
		if (atomic_load(&s->timed_wait))
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

/*
 * left_batch - once its thread has ended, a batch a shard could not
 * publish: held because the ring was full (the intakes stop before the
 * shards, so nobody took from it meanwhile), then the one it was filling.
 * Taken here, they are journaled by the last commit instead of freed and
 * delivered again after the restart.  NULL while the shard runs.
 */
static struct outcome_batch *left_batch(struct shard *s, uint32_t intake)
{
	struct outcome_batch *b;

	if (!atomic_load(&s->joined))
		return NULL;
	if ((b = s->held[intake])) {
		s->held[intake] = b->next;
		if (!b->next)
			s->held_tail[intake] = NULL;
		b->next = NULL;
		return b;
	}
	if ((b = s->cur[intake]) && b->count) {
		s->cur[intake] = NULL;
		return b;
	}
	return NULL;
}

size_t shard_take_outcomes(struct shard_set *set, uint32_t intake,
			   struct delivery_outcome *out, size_t max)
{
	size_t n = 0;

	for (uint32_t sh = 0; sh < set->nshards && n < max; sh++) {
		for (;;) {
			struct outcome_batch *b = set->taking[intake];
			if (!b) {
				if (!spsc_ring_pop(set->shards[sh].out[intake], (void **)&b, 1) &&
				    !(b = left_batch(&set->shards[sh], intake)))
					break;
				set->taking[intake] = b;
				set->taking_off[intake] = 0;
			}
			while (n < max && set->taking_off[intake] < b->count)
				out[n++] = b->items[set->taking_off[intake]++];
			if (set->taking_off[intake] < b->count)
				return n;	/* out is full */
			affinity_free_home(b);	/* the shard's, back to its arena */
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
		.busy_pct = atomic_load(&p->busy_pct),
		.arena = (int)atomic_load(&p->arena) - 1,
	};
}
