/*
 * shards/shard_int.h - what the files of the shards module share: the
 * shard, its queues, recipients and connections, and the functions one
 * part calls in another.  Not a public header: nothing outside shards/
 * includes it (shards.h is the module's API).
 *
 * Threads: everything here belongs to one shard's thread, except the
 * rings (SPSC, see shards.h), the eventfds, the counters in struct
 * shard_pub and the atomics of struct shard_set, which other threads read.
 */
#ifndef COREMTA_SHARDS_SHARD_INT_H
#define COREMTA_SHARDS_SHARD_INT_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <liburing.h>

#include "shards/caps.h"
#include "shards/dns.h"
#include "shards/retry.h"
#include "shards/sched.h"
#include "shards/shards.h"
#include "shards/smtp_client.h"
#include "shards/warmup.h"
#include "util/hash.h"
#include "util/ring.h"
#include "util/slots.h"
#include "util/timer_wheel.h"
#include "util/tls.h"
#include "util/uring.h"
#include "util/util.h"

#define RING_ENTRIES	2048
#define TICK_MS		SCHED_TICK_MS
/*
 * Receives take a buffer of the shard's ring only when data arrives
 * (uring_bufs): a connection costs no receive buffer of its own, which
 * made it 17 KB.  Replies are short; a TLS record longer than a buffer
 * arrives in pieces, which tls_conn_feed joins.
 */
#define RECV_BUF_SIZE	4096
#define RECV_BUF_COUNT	512
#define RECV_BUF_GROUP	1
#define TLS_PLAIN_CHUNK	16384		/* decrypted bytes fed at a time */
#define SCRATCH_SIZE	16384
#define JOB_BATCH	64
#define OUTCOME_BATCH	64
#define MAX_DNS_FDS	65536
#define BATCH_WAIT_CQES	16		/* a busy shard wakes for this many */
#define BATCH_WAIT_US	1000		/* ... or after this long */
#define QUIET_TICK_MS	1000		/* a shard with nothing to do ticks
					   at most this rarely (shard.c) */
#define TURN_BUDGET	4096		/* completions handled per loop turn */
#define SHARD_CTL_RING	64		/* management commands in flight per shard */
#define OUTCOME_WAKE_MS	10		/* an intake woken for outcomes at
					   most this often (outcome.c) */
#define LOG_FLUSH_BYTES	16384		/* delivery log written at this size,
					   else once a tick */
/*
 * A clean stop waits this long at most for the final replies of
 * transactions whose data was sent (shard.c: stop_turn); each connection's
 * own smtp-data-termination-timeout may end its wait sooner.
 */
#define STOP_GRACE_MS	5000

enum op_kind {
	OP_WAKE = 1,
	OP_TICK,
	OP_CONNECT,
	OP_RECV,
	OP_SEND,
	OP_POLL,
	OP_LOG,
	OP_RETRY,
	OP_BODY,			/* a body read back from the spool */
};

struct queue;

/*
 * One recipient waiting in a queue: 32 bytes, a million of them are
 * 32 MB (DESIGN.md, "Memory"), so the counters are small and saturate.
 */
struct qrcpt {
	struct qrcpt *next;
	struct delivery_msg *msg;	/* one reference per qrcpt */
	uint64_t next_try_ms;
	uint32_t rcpt;			/* index into msg->rcpt */
	uint16_t attempts;		/* saturates at UINT16_MAX */
	uint8_t intake;			/* whose spool journals it (< 64) */
	uint8_t delay_notices;		/* NOTIFY=DELAY notices sent (saturates) */
};

/* qrcpt_attempted - one more attempt of r, saturating. */
static inline void qrcpt_attempted(struct qrcpt *r)
{
	if (r->attempts < UINT16_MAX)
		r->attempts++;
}

struct rlist {
	struct qrcpt *head, *tail;
	uint32_t count;
};

enum dns_state { QDNS_NONE, QDNS_PENDING, QDNS_READY };

/* A place in a list of idle connections (conn_set_idle). */
struct idle_link {
	struct sconn *prev, *next;
};

struct queue {
	char *key;			/* "domain/vmta" */
	char *domain;
	char *vmta_name;		/* "{default}" or the vmta's name; owned,
					   so a reload that drops the vmta keeps it */
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
	uint32_t connecting;		/* of which not yet ready: connecting,
					   waiting for the greeting, EHLO, TLS */
	uint32_t idle;
	struct sconn *idle_head;	/* those idle ones (conn_set_idle) */
	uint32_t quitting;		/* of which told to QUIT */
	bool backoff;			/* backoff mode: the backoff-* limits */
	uint64_t backoff_since_ms;
	uint64_t hold_until_ms;		/* defer-queue: no attempt before */
	uint64_t *src_off_until;	/* [queue_nsrc]: disable-source-ip */
	uint32_t src_rr;
	struct sched_bucket msg_rate;
	struct sched_bucket connect_rate;
	uint32_t adapt_max_out;		/* adaptive-rate's connection cap; 0 none */
	bool runnable;
	struct queue *run_next;
	/*
	 * Waiting for a slot a shared cap refuses (wait_dest: the entry that
	 * refuses): a connection of another queue of the same site that has
	 * nothing to send is handed over to it (conn_handover).
	 */
	struct queue *alias;		/* queue-to or MX rollup: where this
					   domain's mail goes */
	char *mx_of;			/* a rollup queue: the member domain
					   whose MX it looks up */
	char *site;			/* sched_site(), once the targets are known */
	uint64_t site_hash;
	/* the management plane's view (control.c) */
	bool paused;			/* coremta ctl pause: nothing is tried */
	uint64_t n_delivered, n_bounced, n_expired, n_deferrals;
	uint64_t rate_since_ms, rate_base;	/* the delivery rate's window */
	uint32_t rate_per_min;		/* deliveries a minute, last window */
	int64_t last_error_s;		/* unix s of last_error; 0 none */
	char last_error[200];		/* the last reply that was not a 2xx */
	uint64_t dns_started_ms;	/* the lookup in flight began */
	bool waiting_slot;
	bool in_waiters;		/* listed in shard.waiters */
	struct cap_dest *wait_dest;
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
	bool connecting;		/* counted in q->connecting: not ready yet */
	bool greeted;			/* was ready once: counted in dest->greeted */
	struct cap_dest *dest;		/* shared counts of its destination, or NULL */
	struct cap_dest *mxd;		/* ... of its MX host name, or NULL */
	uint64_t greet_until_ms;	/* when the greeting wait times out */
	bool idle;			/* waits for mail: in both idle lists */
	struct idle_link q_idle;	/* its queue's list */
	struct idle_link s_idle;	/* the shard's list */
	bool recv_inflight;
	bool send_inflight;
	bool quitting;
	bool retire;			/* QUIT once the current transaction ends */
	bool draining;			/* stopping: kept open for the final
					   reply of its transaction (stop_turn) */
	uint32_t target_seq;		/* q->target_seq when it was opened */
	int src;			/* source index (queue_source_ip) */
	struct strbuf out;		/* commands not yet sent */
	struct strbuf inflight;		/* plaintext in a send (no TLS) */
	size_t inflight_off;
	const char *zc;			/* a body piece in a send (no TLS) */
	/*
	 * A body read in place from the spool (delivery_msg.body_path): the
	 * mapping of the current transaction's, and the one before it while
	 * a send may still read from it.  Pages already sent are dropped
	 * (map_dropped), so a big body costs the window being sent.
	 */
	void *map, *map_old;
	size_t map_len, map_old_len;
	const char *map_body;
	size_t map_dropped;
	/*
	 * A body read back into the shard's cache (body.c): the entry the
	 * current transaction sends (pinned), the one before while a send may
	 * still read it, and the one being read that this connection waits
	 * for (its transaction starts in conn_body_ready).
	 */
	struct bent *bent, *bent_old, *bwait;
	size_t zc_len, zc_off;
	/* a send of commands and body piece together (conn.c: send_pending) */
	struct iovec iov[2];
	struct msghdr msg;
	bool body_more;
	char *scratch;
	uint64_t deadline_ms;
	struct tw_node deadline_timer;	/* armed for deadline_ms */
	uint32_t msgs;
	struct qrcpt **txn;
	size_t ntxn, cap_txn;
	struct smtp_rcpt *txn_rcpts;
	struct smtp_txn txn_desc;
	uint64_t txn_start_ms;
};

/* An append-only file written through the ring, one write in flight. */
struct wbuf {
	struct strbuf cur;		/* being filled */
	struct strbuf inflight;		/* named in the write in flight */
	bool busy;
	int fd;				/* -1: not written */
};

struct outcome_batch {
	struct outcome_batch *next;	/* in shard.held while the ring is full */
	uint32_t count;
	struct delivery_outcome items[OUTCOME_BATCH];
};

/* What other threads may read: counters. */
struct shard_pub {
	_Atomic uint64_t jobs, delivered, bounced, expired, deferred, connections;
	_Atomic uint64_t loop_overruns;
	_Atomic uint32_t queued, max_conns_seen;
	_Atomic uint64_t hist[SHARD_HIST_COUNT][SHARD_HIST_BUCKETS];
	_Atomic uint64_t hist_sum[SHARD_HIST_COUNT];
	_Atomic uint32_t arena;		/* its jemalloc arena + 1; 0 none */
	_Atomic uint32_t busy_pct;	/* struct shard's busy_pct */
};

struct shard {
	uint32_t index;
	struct shard_set *set;
	/*
	 * The configuration this shard runs on (one reference), and where a
	 * reload posts the next: taken at the top of a loop turn, when no
	 * pointer into the old one is in use but those the queues re-resolve.
	 */
	const struct cfg *cfg;
	struct cfg_mailbox next_cfg;
	size_t npools;			/* entries of pool_rr, less one */
	struct timer_wheel timers;	/* connection deadlines, queue wake-ups */
	pthread_t thread;
	bool started;
	int cpu;
	int wake_fd;
	uint64_t wake_val;
	_Atomic bool stop;
	/*
	 * Asleep for BATCH_WAIT_US at most (ring_wait): intakes need not
	 * wake it.  Written by the shard when it changes, read by intakes.
	 */
	_Atomic bool timed_wait;
	/*
	 * Stopping: when the wait for final replies ends (mono ms; 0 while
	 * running).  Every connection deadline is capped at it.
	 */
	uint64_t stop_until_ms;
	_Atomic bool joined;		/* the thread has ended: what it left
					   may be taken (shard_take_outcomes) */
	struct spsc_ring **in;		/* [nintake] */
	struct spsc_ring **out;		/* [nintake] of struct outcome_batch * */
	struct outcome_batch **cur;	/* [nintake] being filled */
	struct spsc_ring *ctl_in;	/* struct shard_cmd * from the management thread */
	struct spsc_ring *ctl_out;	/* ... and back, answered */
	/*
	 * [nintake] full batches its outcome ring had no room for, oldest
	 * first: published before anything newer on the next loop turn.
	 */
	struct outcome_batch **held, **held_tail;
	uint32_t *unwoken;		/* [nintake] batches pushed since its
					   intake was last woken */

	struct io_uring ring;
	bool ring_ok;
	struct uring_bufs recv_bufs;	/* every connection's receives */
	bool defer_taskrun;		/* the ring has DEFER_TASKRUN and EXT_ARG */
	bool batch_wait;		/* the last turn had completions: wait
					   for a batch (shard.c: ring_wait) */
	struct dns_resolver *dns;
	uint32_t *dns_gen;		/* [MAX_DNS_FDS] */
	uint8_t *dns_want;		/* [MAX_DNS_FDS]: POLLIN|POLLOUT wanted */
	uint8_t *dns_armed;

	struct hash_tab queues;		/* struct queue by "domain/vmta" */
	struct queue *run_head;
	struct queue **waiters;		/* queues that may be waiting_slot */
	uint32_t nwaiters, cap_waiters;
	struct slot_table conns;
	struct sconn *idle_head;	/* idle connections of every queue */
	uint32_t *pool_rr;		/* per pool index */

	struct wbuf log;		/* delivery log lines */
	struct wbuf retry;		/* retry state records (retry.h) */
	/*
	 * Jobs taken off the rings before the retry table was published
	 * (shard_set.retry_ready), in ring order; taken once it is, so
	 * every recipient finds its state.  The rings keep moving
	 * meanwhile, and with them the intake's recovery.
	 */
	struct early_jobs {
		struct delivery_job **jobs;
		size_t head, n, cap;	/* jobs[head..n) wait */
	} *early;			/* [nintake] */
	size_t nearly;			/* jobs waiting in early, all intakes */
	bool retry_ready;		/* saw shard_set.retry_ready */
	struct warm_table warm;		/* warm-up counters (warmup.h) */
	struct strbuf acct_hdr;		/* header_NAME values of one record */
	uint64_t acct_refused;		/* records the writer could not take */
	/*
	 * The tick (shard.c: arm_tick): TICK_MS, or longer while the shard
	 * is quiet.  Its completion carries tick_gen; one that does not is a
	 * long tick cut short, ignored.  Two timespecs: a tick re-armed
	 * before the first was submitted must not change the first.
	 */
	struct __kernel_timespec tick_ts[2];
	uint32_t tick_gen;
	uint64_t tick_at_ms;		/* when the armed tick fires */
	bool tick_rearm;		/* it fired: arm the next at the turn's end */
	uint64_t now_ms;
	time_t now_s;
	/*
	 * The shard's load (shard.c: load_window): the current window's
	 * start and the thread's run + run-queue time then; busy_pct, which
	 * sched_plan reads, is the last closed window's.
	 */
	uint64_t load_start_ns, load_demand_ns;
	uint32_t busy_pct;
	int schedstat_fd;		/* /proc/thread-self/schedstat, or -1 */
	struct shard_pub pub;
	char hostname[256];
	struct smtp_memo *memo;		/* receivers' quirks (smtp_client.h) */

	/* body.c: where this shard's messages are, and bodies read back */
	struct mref *mtab;		/* open addressing by (intake, id) */
	size_t mcap, mcount;
	struct slot_table bents;	/* struct bent */
	/*
	 * [nintake] the segment body reads last came from, kept open: a
	 * segment holds thousands of messages, so reading them back costs
	 * one open(2) per segment, not per message.  Closed once idle
	 * (body_idle), so a reclaimed segment's space is not held.
	 */
	struct seg_fd {
		uint64_t seg;
		int fd;			/* -1: none */
		uint64_t used_ms;
	} *seg_fds;
	struct bent **buckets;		/* by (intake, id) */
	size_t nbuckets, nbents;
	struct bent *lru_head, *lru_tail;
	size_t bcache_bytes;		/* records held, loading ones too */
	uint32_t body_reads;		/* in flight */
};

struct shard_set {
	const struct cfg *cfg;		/* the one it started on: caps, retry */
	uint32_t nshards, nintake;
	struct shard *shards;
	bool *need_wake;		/* [intake][shard] */
	int *outcome_fd;		/* [nintake] */
	/*
	 * [nintake] when a shard last woke that intake for outcomes (mono
	 * ms, outcome.c): every shard writes it, rarely (at most once per
	 * OUTCOME_WAKE_MS), each on a line of its own.
	 */
	struct outcome_woke {
		_Alignas(64) _Atomic uint64_t ms;
	} *outcome_woke;
	struct outcome_batch **taking;	/* [nintake]: batch being taken */
	uint32_t *taking_off;
	struct tls_ctx *tls_client;
	int log_fd;
	struct acct_writer *acct;
	unsigned acct_base;
	struct caps *caps;		/* per destination, shared by the shards */
	/*
	 * The retry state of the last run, loaded by the loader thread
	 * (shard.c) while the intake already answers: written once by it,
	 * read-only after retry_ready (release/acquire) says it is there.
	 */
	struct retry_table *retry;
	_Atomic bool retry_ready;
	char *retry_dir;		/* the spool directory; NULL: no state */
	pthread_t loader;
	bool loader_started;
	_Atomic uint32_t total_conns;
	int ctl_fd;			/* eventfd: answers on some ctl_out */
	char **spool_dirs;		/* [nintake], or NULL */
	size_t body_cache_size;
};

/* What a timer of the shard's wheel belongs to (tw_node.kind). */
enum { TIMER_CONN = 1, TIMER_QUEUE = 2 };
#define TIMER_SLOTS	4096		/* x TICK_MS: about 200 s a turn */

/* outcome.c: outcomes, log, accounting */
void publish_outcomes(struct shard *s);
/* push_notice - a DELIVERY_NOTICE (report: malloc'd, the intake frees it) */
void push_notice(struct shard *s, struct delivery_report *report);
void wbuf_flush(struct shard *s, struct wbuf *w, unsigned op);
void wbuf_written(struct wbuf *w, int res);
void log_attempt(struct shard *s, const struct queue *q,
			const struct qrcpt *r, const char *result,
			const struct smtp_reply *rep, const char *mx,
			const char *ip, const char *tls);
void log_queue_event(struct shard *s, const struct queue *q, const char *event,
			    const char *fields, const char *reason);
struct delivery_report *make_report(struct shard *s, const struct queue *q,
					   const struct qrcpt *r,
					   const struct smtp_reply *rep,
					   const struct sconn *c,
					   enum delivery_outcome_kind kind);
void finish_rcpt(struct shard *s, struct queue *q, struct qrcpt *r,
			enum delivery_outcome_kind kind, struct delivery_report *report);
bool expired(const struct shard *s, const struct queue *q,
		    const struct qrcpt *r);
void apply_reply(struct shard *s, struct queue *q, struct qrcpt *r,
			const struct smtp_reply *rep, const struct sconn *c);
void fail_ready(struct shard *s, struct queue *q, const struct smtp_reply *rep);

/* control.c: the management plane's commands and snapshots, histograms */
void ctl_drain(struct shard *s);
void hist_observe(struct shard *s, enum shard_hist h, uint64_t v);

/* queue.c: queues, backoff, pattern actions, targets, schedule() */
size_t reply_subject(const struct smtp_reply *rep, char *buf, size_t len);
void rl_push(struct rlist *l, struct qrcpt *r);
struct qrcpt *rl_pop(struct rlist *l);
void deferred_push(struct queue *q, struct qrcpt *r, uint64_t delay_ms);
struct qrcpt *deferred_pop(struct queue *q);
void deferred_each(const struct queue *q, void (*fn)(void *ctx, const struct qrcpt *r),
		   void *ctx);
void deferred_take_if(struct queue *q, bool (*pick)(const void *ctx, const struct qrcpt *r),
		      const void *ctx, struct rlist *out);
void mark_runnable(struct shard *s, struct queue *q);
void queue_wake(struct shard *s, struct queue *q, uint64_t ms);
uint32_t queue_max_out(const struct queue *q);
uint32_t total_max_out(const struct shard *s);
void queues_rebind(struct shard *s);
const struct cfg_schedule *queue_retry(const struct queue *q);
void set_backoff(struct shard *s, struct queue *q, bool on, const char *reason);
const struct cfg_smtp_pattern *match_pattern(const struct queue *q,
						    const struct smtp_reply *rep,
						    char *subj, size_t len);
void take_job(struct shard *s, uint32_t intake, struct delivery_job *job);
const char *queue_source_ip(const struct queue *q, uint32_t i);
/* the smtp-source-host HOSTNAME of source i (its EHLO name), or NULL */
const char *queue_source_name(const struct queue *q, uint32_t i);
int pick_source(struct shard *s, struct queue *q, bool take);
/* warm_allows - whether q's source src is under today's warm-up cap */
bool warm_allows(struct shard *s, const struct queue *q, int src);
/* warm_count - one more message from q's source src today (journaled) */
void warm_count(struct shard *s, const struct queue *q, int src);
/* adapt_of - the adaptive state of (q's source src, site), NULL when off */
struct warm_entry *adapt_of(struct shard *s, const struct queue *q, int src);
/* adapt_rate_in_force - q's adaptive rate summed over its sources (msgs/s),
 * -1 when adaptive-rate is off */
double adapt_rate_in_force(struct shard *s, const struct queue *q);
/* adapt_reply - a receiver's reply on c: a delivery, or maybe "too fast" */
void adapt_reply(struct shard *s, struct queue *q, const struct sconn *c,
		 const struct smtp_reply *rep, bool backoff_pattern, const char *subj);
/* adapt_tick_src - raise the rate after a clean interval */
void adapt_tick_src(struct shard *s, struct queue *q, struct warm_entry *e, int src);
struct smtp_reply permanent(const struct smtp_reply *rep);
void apply_queue_actions(struct shard *s, struct queue *q, const struct sconn *c,
				const struct cfg_smtp_pattern *pat,
				const struct smtp_reply *rep, const char *subj);
void target_failed(struct shard *s, struct sconn *c, const struct smtp_reply *rep);
void skip_target(struct shard *s, struct sconn *c, const struct smtp_reply *rep,
			size_t nrcpt);
void schedule(struct shard *s, struct queue *q);

/* body.c: where messages are in the spool, and their bodies read back */
struct bent;
void body_init(struct shard *s);
/*
 * body_take - keep job->body (if any) as m's body, read, until its first
 * transaction is done with it; the job no longer owns it.
 */
void body_take(struct shard *s, uint32_t intake, struct delivery_job *job);
void body_free(struct shard *s);
/* body_idle - once a tick: close segments no read has used for a second */
void body_idle(struct shard *s);
/* body_files_open - a spool segment is open for reads: body_idle has work. */
bool body_files_open(const struct shard *s);
/* msg_hold/msg_release - a recipient of m (from intake) came / went */
void msg_hold(struct shard *s, uint32_t intake, struct delivery_msg *m);
void msg_release(struct shard *s, uint32_t intake, const struct delivery_msg *m);
/* msg_moves - the spool of intake moved these messages */
void msg_moves(struct shard *s, uint32_t intake, const struct delivery_moves *mv);
/* msg_where - where m's record is now */
const struct spool_ref *msg_where(const struct shard *s, uint32_t intake,
				  const struct delivery_msg *m);
/*
 * body_get - m's body for c's transaction, pinned for it; or NULL with
 * errno: EINPROGRESS when it is being read (conn_body_ready follows), else
 * why it cannot be had.
 */
const char *body_get(struct shard *s, struct sconn *c, uint32_t intake,
		     const struct delivery_msg *m);
void on_body_read(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen);
/* body_conn_release - c lets go of its bodies (it is being freed) */
void body_conn_release(struct shard *s, struct sconn *c);

/* conn.c: the connection pool and I/O pump */
/* conn_body_ready - the body c waited for is here (err 0) or cannot be had */
void conn_body_ready(struct shard *s, struct sconn *c, const char *body, int err);
struct io_uring_sqe *get_sqe(struct shard *s);
struct sconn *conn_get(struct shard *s, uint32_t slot, uint32_t gen);
void conn_release(struct shard *s, struct sconn *c);
void conn_close(struct shard *s, struct sconn *c);
void conn_deadline(struct shard *s, struct sconn *c, uint64_t ms);
void conn_failed_early(struct shard *s, struct sconn *c, const struct smtp_reply *rep);
void conn_quit(struct shard *s, struct sconn *c);
void conn_set_idle(struct shard *s, struct sconn *c, bool idle);
void retire_conns(struct shard *s, struct queue *q, int src);
void trim_conns(struct shard *s, struct queue *q, uint32_t max);
void conn_next_txn(struct shard *s, struct sconn *c);
bool conn_handover(struct shard *s, struct sconn *c);
struct sconn *conn_adopt_idle(struct shard *s, struct queue *q);
void handle_event(struct shard *s, struct sconn *c, enum smtp_client_event ev);
void on_send(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen);
void on_recv(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen);
void on_connect(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen);
bool open_conn(struct shard *s, struct queue *q);

#endif
