/*
 * shards - the per-core delivery shards and what is handed to them.
 *
 * A message accepted by intake becomes one struct delivery_msg (envelope
 * and where its body is in the spool, one allocation, written once,
 * refcounted) and one struct
 * delivery_job per shard that owns some of its recipients.  Jobs travel
 * over one SPSC ring per (intake thread, shard); ownership of a job passes
 * with it.  Whoever drops the last reference to a message frees it.
 * Final outcomes travel back over one SPSC ring per (shard, intake
 * thread), so the intake thread that owns the spool journals them (and
 * sends the DSNs they call for).  Accounting records go from each shard
 * straight to the accounting writer over the shard's own ring.
 *
 * Each shard is a thread pinned to one core with its own io_uring ring,
 * DNS resolver, queues (one per domain and virtual-mta), connections and
 * timers; nothing of a shard is touched by another thread.
 *
 * Threads: shard_set_new/start/stop/free on the main thread,
 * shard_set_reload on the thread that reloads; a shard's
 * thread is the only consumer of its inbound rings and the only producer
 * of its outcome rings; intake thread i is the only producer on ring
 * (i, shard) and the only consumer of outcome ring (shard, i).
 * delivery_msg_ref/unref from any thread.
 */
#ifndef COREMTA_SHARDS_H
#define COREMTA_SHARDS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "util/mail.h"
#include "util/spoolrec.h"
#include "util/tls.h"

struct delivery_rcpt {
	const char *addr;
	const char *orcpt;		/* or NULL */
	uint32_t notify;		/* RFC 3461 flags as the spool keeps them */
	uint32_t index;			/* journal key within the message */
};

struct delivery_msg {
	_Atomic uint32_t refs;
	uint32_t nrcpt;
	/*
	 * The body stays in the spool of the intake thread that handed the
	 * message over: where.body_len octets of the record <where> names
	 * (as it was then: a shard learns of later moves through its ring,
	 * struct delivery_moves).  A shard reads it back when a connection
	 * is ready to send it (a bounded cache of hot bodies,
	 * body-cache-size); a big one (SPOOL_RESIDENT_MAX) is mapped in
	 * place instead.  id, the spool message id, is where.id (a union:
	 * 8 bytes less per message, issue 16).
	 */
	union {
		uint64_t id;
		struct spool_ref where;
	};
	int64_t queued;			/* unix seconds */
	/*
	 * The envelope's strings.  Those that repeat from message to message
	 * (the sender of a campaign, vmta, job id, client address) may be
	 * shared copies (util/intern.h), one reference each, named by the
	 * DELIVERY_SHARED_* bits of shared; the others are in this
	 * allocation.  Read-only either way.
	 */
	const char *mail_from;		/* "" = null sender */
	const char *envid;
	const char *vmta;
	const char *job_id;
	const char *source_ip;		/* the injecting client, or NULL */
	/*
	 * The header section, only when an accounting file records header
	 * fields (acct_collect_headers): head_len octets, else NULL and 0.
	 */
	const char *head;
	uint32_t head_len;
	uint8_t ret;			/* RFC 3461 RET= or the source's
					   dsn-return-default: enum mail_ret */
	/* bit-fields: the header stays 112 bytes */
	bool body_8bit : 1;		/* any byte >= 0x80 (BODY=8BITMIME out) */
	bool no_dsn : 1;		/* suppress-local-dsn of its source */
	bool dsn_plain_text : 1;	/* dsn-format plain-text of its source */
	unsigned shared : 4;		/* DELIVERY_SHARED_* */
	/* then the strings and the head, in the same allocation */
	struct delivery_rcpt rcpt[];
};

/* Which strings of a delivery_msg are shared copies (util/intern.h). */
enum {
	DELIVERY_SHARED_FROM = 1,
	DELIVERY_SHARED_VMTA = 2,
	DELIVERY_SHARED_JOB = 4,
	DELIVERY_SHARED_SOURCE_IP = 8,
};

/*
 * What spool_maintain() moved: the new place of each message, by id.
 * One batch is shared by the move notices of every shard (refcounted).
 */
struct delivery_moves {
	_Atomic uint32_t refs;
	uint32_t n;
	struct spool_ref to[];
};

/*
 * One job: recipients of msg for one shard, or (msg NULL) a move notice
 * from the same intake thread, in order with its jobs.
 */
struct delivery_job {
	struct delivery_msg *msg;	/* one reference, owned by the job */
	struct delivery_moves *moves;	/* one reference, or NULL */
	/*
	 * The body as stored (msg->where.body_len octets, malloc'd), when
	 * this job holds every recipient of a message just received, or
	 * NULL: the shard keeps it for the first transaction instead of
	 * reading it back (body.c).  Owned by the job until taken.
	 */
	char *body;
	uint32_t nrcpt;
	uint32_t rcpt[];		/* indexes into msg->rcpt */
};

void delivery_msg_ref(struct delivery_msg *m);
/* delivery_msg_unref - drop a reference; frees on the last.  NULL ok. */
void delivery_msg_unref(struct delivery_msg *m);
void delivery_job_free(struct delivery_job *job);
/* delivery_moves_unref - drop a reference; frees on the last.  NULL ok. */
void delivery_moves_unref(struct delivery_moves *mv);

/* Final outcomes, as the spool journals them (enum spool_outcome). */
enum delivery_outcome_kind {
	DELIVERY_DELIVERED = 1,
	DELIVERY_BOUNCED = 2,
	DELIVERY_EXPIRED = 3,
	DELIVERY_DEFERRED = 4,		/* not final: a delay notice is due */
	DELIVERY_NOTICE = 5,		/* about no recipient: a queue entered
					   backoff and its backoff-notify is due;
					   report->queue and ->text say which and
					   why, report->msg is NULL */
};

/*
 * The status of an expiry (bounce-after), in the log line, the
 * accounting record and the DSN alike: a final failure (RFC 3463 X.4.7,
 * "delivery time expired"), so 5, never the 4 of the deferrals before it.
 */
#define DELIVERY_EXPIRED_STATUS "5.4.7"

/*
 * dsnDiag, in accounting records and DSNs: "smtp;CODE X.Y.Z text" with
 * the reply text cut to about 600 bytes, so one accounting line stays
 * short for the tools that read it; the full reply is in the log line.
 */
#define DELIVERY_DIAG_MAX 640

/*
 * What one attempt looked like, for a DSN: built by the shard for the
 * outcomes a DSN may need (bounces, expiries, deferrals due a delay
 * notice); freed (with its message reference) by whoever takes the
 * outcome: delivery_report_free().
 */
struct delivery_report {
	struct delivery_msg *msg;	/* one reference */
	uint32_t rcpt;			/* index into msg->rcpt */
	int64_t time_logged;
	int code;			/* 0: no reply (local decision) */
	char status[12];		/* RFC 3463 X.Y.Z */
	bool local;			/* made up here, not the receiver's */
	unsigned esmtp;			/* what the receiver's EHLO offered */
	char text[512];
	char mx[256];
	char ip[46];			/* receiver */
	char local_ip[46];		/* ours */
	char queue[320];		/* "domain/vmta" */
	char vmta[128];
	char tls_protocol[16];
	char tls_cipher[64];
	int64_t retry_until;		/* when bounce-after expires it */
	bool delay_notice;		/* deferred, and a NOTIFY=DELAY notice
					   is due (notify-of-delay-every) */
};

void delivery_report_free(struct delivery_report *r);
/* delivery_esmtp_text - "PIPELINING,CHUNKING,..." for a report's mask. */
void delivery_esmtp_text(unsigned esmtp, char *buf, size_t len);

struct delivery_outcome {
	uint64_t msg_id;
	uint32_t rcpt;			/* delivery_rcpt.index */
	uint32_t kind;			/* enum delivery_outcome_kind */
	struct delivery_report *report;	/* or NULL; the taker frees it */
};

struct shard_set;
struct acct_writer;

struct shard_set_params {
	const struct cfg *cfg;		/* outlives the set */
	uint32_t nshards;
	uint32_t nintake;
	size_t ring_size;		/* jobs per inbound ring */
	struct tls_ctx *tls_client;	/* STARTTLS out; NULL: plaintext only */
	const int *cpus;		/* OS core per shard, or NULL: unpinned */
	int log_fd;			/* delivery log lines (key=value); -1 none */
	/*
	 * Accounting: shard i writes its d, b, t and tq records itself as
	 * producer acct_producer_base + i; NULL: no accounting.
	 */
	struct acct_writer *acct;
	unsigned acct_producer_base;
	/*
	 * [nintake]: the spool directory of each intake thread, where the
	 * bodies of its messages are read back (copied); NULL: none (every
	 * read fails and the recipients wait for a retry).
	 */
	const char *const *spool_dirs;
	size_t body_cache_size;		/* bytes of bodies a shard keeps read */
};

int shard_set_new(const struct shard_set_params *p, struct shard_set **out,
		  char *err, size_t errlen);
int shard_set_start(struct shard_set *set, char *err, size_t errlen);
/*
 * shard_set_stop - stop the threads; queued mail stays in the spool.  No
 * transaction starts any more; one whose data was sent waits for its
 * final reply, up to its smtp-data-termination-timeout and at most
 * STOP_GRACE_MS (5 s) after the call, so its outcome is there to take:
 * call shard_take_outcomes after it and commit before the spool closes.
 */
void shard_set_stop(struct shard_set *set);
void shard_set_free(struct shard_set *set);

/*
 * shard_set_reload - every shard runs on cfg from its next loop turn
 * (woken now, so within one tick): its queues keep their recipients and
 * take their limits, rates and virtual-mta settings from cfg.  Each shard
 * takes its own reference; the caller keeps its own.  What the set was
 * built from stays as it started: the shard count, the retry state, and
 * the ip-/mx-connection-limit table.  Any one thread at a time (the
 * reloading one), while the shards run.
 */
void shard_set_reload(struct shard_set *set, const struct cfg *cfg);
/* shard_set_reload_pending - whether a shard has not taken it yet. */
bool shard_set_reload_pending(struct shard_set *set);
uint32_t shard_set_count(const struct shard_set *set);

/*
 * shard_submit - intake thread <intake> hands jobs to <shard>.  Returns
 * how many were taken (fewer when the ring is full: back-pressure).
 * shard_flush_wakeups - wake the shards this intake thread fed since its
 * last call, at most one syscall per sleeping shard per loop turn.
 */
/*
 * shard_backlog - jobs intake thread <intake> handed to <shard> that the
 * shard has not taken yet; approximate (the shard may be taking them).
 * Intake thread <intake> only.
 */
size_t shard_backlog(const struct shard_set *set, uint32_t intake, uint32_t shard);
size_t shard_submit(struct shard_set *set, uint32_t intake, uint32_t shard,
		    struct delivery_job *const *jobs, size_t n);
/* shard_room - free places in that ring (intake thread <intake>: it can
 * only grow meanwhile) */
size_t shard_room(const struct shard_set *set, uint32_t intake, uint32_t shard);
void shard_flush_wakeups(struct shard_set *set, uint32_t intake);

/*
 * shard_outcome_fd - an eventfd that becomes readable when outcomes for
 * intake thread <intake> are waiting; shard_take_outcomes - take up to
 * max of them (intake thread <intake> only, or, once it has ended, the
 * thread that joined it).  After shard_set_stop it also returns what a
 * shard could not publish (its ring was full).
 */
int shard_outcome_fd(const struct shard_set *set, uint32_t intake);
size_t shard_take_outcomes(struct shard_set *set, uint32_t intake,
			   struct delivery_outcome *out, size_t max);

/* Per-shard counters (tests, metrics); any thread, approximate. */
struct shard_stats {
	uint64_t jobs;			/* jobs received */
	uint64_t delivered;
	uint64_t bounced;
	uint64_t expired;
	uint64_t deferred;		/* transient failures (each retry counts) */
	uint64_t connections;		/* opened */
	uint32_t queued;		/* recipients waiting now */
	uint32_t max_conns_seen;	/* largest connection count of one queue */
	uint64_t loop_overruns;		/* turns that hit their work budget */
	uint32_t busy_pct;		/* wall time not waiting, last 50 ms;
					   >= SCHED_SATURATED_PCT: no ramp-up */
	int arena;			/* its own jemalloc arena, -1 none
					   (affinity_arena_bind) */
};

void shard_stats(const struct shard_set *set, uint32_t shard,
		 struct shard_stats *st);

/*
 * Latency histograms a shard keeps (any thread reads, approximate):
 * bucket i counts observations <= its bound, the last one everything
 * above (Prometheus' +Inf); sum in the bound's unit.
 */
#define SHARD_HIST_BUCKETS 12
enum shard_hist { SHARD_HIST_DELIVERY, SHARD_HIST_DNS, SHARD_HIST_COUNT };
struct shard_hist_view {
	uint64_t bucket[SHARD_HIST_BUCKETS];	/* not cumulative */
	uint64_t sum;
};
/* shard_hist_bounds - the upper bounds (the last is +Inf), and the unit. */
const double *shard_hist_bounds(enum shard_hist h, const char **unit);
void shard_hist(const struct shard_set *set, uint32_t shard, enum shard_hist h,
		struct shard_hist_view *out);

/*
 * The management plane's control ring: the management thread hands a
 * struct shard_cmd to a shard (ownership passes), the shard does it at a
 * loop boundary, fills in the answer and hands the same struct back.
 * Nothing else of a shard is visible to the management thread.
 *
 * Threads: one management thread calls shard_ctl_send, shard_ctl_fd and
 * shard_ctl_take; the shard's own thread does the rest.
 */
enum shard_cmd_kind {
	SHARD_CMD_SNAPSHOT = 1,		/* answer: the matching queues */
	SHARD_CMD_PAUSE,
	SHARD_CMD_RESUME,
	SHARD_CMD_SCHEDULE,		/* retry the deferred recipients now */
	SHARD_CMD_MODE_NORMAL,
	SHARD_CMD_MODE_BACKOFF,
	SHARD_CMD_DELETE,		/* bounce them: a b record each, a DSN
					   with dsn, journaled as final */
	SHARD_CMD_JOBS,			/* answer: queued recipients per job id */
};

enum shard_queue_mode { SHARD_MODE_NORMAL, SHARD_MODE_BACKOFF, SHARD_MODE_PAUSED };

/* One queue as a snapshot shows it. */
struct shard_queue_info {
	char queue[320];		/* "domain/vmta" */
	char vmta[128];
	uint32_t ready, deferred;	/* recipients due now, waiting to retry */
	uint32_t conns;
	uint8_t mode;			/* enum shard_queue_mode */
	bool backoff;			/* also when paused */
	uint64_t delivered, bounced, expired, deferrals;	/* since start */
	uint32_t rate_per_min;		/* deliveries a minute over the last
					   window of at least 60 s */
	int64_t next_attempt;		/* unix s; 0 none waiting, -1 paused */
	int64_t last_error_at;		/* unix s; 0 never */
	char last_error[200];
	double adaptive_rate;		/* adaptive-rate: messages/s in force,
					   summed over its source IPs; < 0 off */
};

struct shard_vmta_info {
	char vmta[128];
	uint32_t queues, conns;
	uint64_t recipients;
	uint64_t delivered, bounced, expired, deferrals;
};

struct shard_job_info {
	char job_id[128];		/* "" for mail without a job id */
	uint64_t recipients;		/* queued in this shard */
	uint32_t queues;		/* of this shard holding some */
};

struct shard_snapshot {
	uint32_t shard;
	uint32_t queues;		/* this shard's queues in all */
	uint32_t matched;		/* of which the pattern matched */
	uint64_t recipients;		/* queued in this shard */
	uint32_t connections;		/* open now */
	uint64_t cpu_ns;		/* the shard thread's CPU time */
	uint32_t ring_used, ring_size;	/* jobs waiting in its inbound rings */
	/* per virtual-mta, over every queue of the shard (bounded by the config) */
	uint32_t nvmtas;
	struct shard_vmta_info *vmtas;
	/* JOBS: the jobs with the most queued recipients, at most limit */
	uint32_t njobs;
	struct shard_job_info *jobs;
	uint32_t n;			/* items[]: the largest matched queues */
	struct shard_queue_info items[];
};

struct shard_cmd {
	uint32_t kind;			/* enum shard_cmd_kind */
	uint32_t shard;			/* set by shard_ctl_send */
	uint64_t tag;			/* the sender's; the shard leaves it */
	/*
	 * Which queues: an fnmatch(3) pattern on "domain/vmta", case
	 * insensitive ("" = every queue); which recipients (delete): job id,
	 * rcpt pattern, queued before (unix s).  An empty field matches all.
	 */
	char queue[320];
	char job_id[128];
	char rcpt[320];
	int64_t older_than;
	bool dsn;			/* delete: DSNs to the senders */
	uint32_t limit;			/* snapshot: at most this many queues */
	/* the answer */
	uint32_t queues;		/* queues it acted on / matched */
	uint64_t rcpts;			/* recipients it acted on */
	struct shard_snapshot *snap;	/* SNAPSHOT: the taker frees it */
};

/* shard_ctl_send - give cmd to its shard; false if the ring is full (keep it). */
bool shard_ctl_send(struct shard_set *set, uint32_t shard, struct shard_cmd *cmd);
/* shard_ctl_fd - an eventfd readable when answers are waiting. */
int shard_ctl_fd(const struct shard_set *set);
/* shard_ctl_take - one answered command (the caller frees it), or NULL. */
struct shard_cmd *shard_ctl_take(struct shard_set *set);
/* shard_cmd_free - a command and its snapshot.  NULL ok. */
void shard_cmd_free(struct shard_cmd *cmd);

#endif
