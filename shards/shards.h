/*
 * shards - the per-core delivery shards and what is handed to them.
 *
 * A message accepted by intake becomes one struct delivery_msg (envelope
 * and body in one allocation, written once, refcounted) and one struct
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
 * Threads: shard_set_new/start/stop/free on the main thread; a shard's
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
#include "util/tls.h"

/* delivery_rcpt.notify: RFC 3461 NOTIFY= bits, the spool's values. */
enum delivery_notify {
	DELIVERY_NOTIFY_NEVER = 1 << 0,
	DELIVERY_NOTIFY_SUCCESS = 1 << 1,
	DELIVERY_NOTIFY_FAILURE = 1 << 2,
	DELIVERY_NOTIFY_DELAY = 1 << 3,
};

struct delivery_rcpt {
	const char *addr;
	const char *orcpt;		/* or NULL */
	uint32_t notify;		/* RFC 3461 flags as the spool keeps them */
	uint32_t index;			/* journal key within the message */
};

struct delivery_msg {
	_Atomic uint32_t refs;
	uint64_t id;			/* spool message id */
	int64_t queued;			/* unix seconds */
	const char *mail_from;		/* "" = null sender */
	const char *envid;
	const char *vmta;
	const char *job_id;
	uint32_t nrcpt;
	struct delivery_rcpt *rcpt;
	size_t body_len;
	/*
	 * The body in memory: all of it when body_head == body_len.  A big
	 * one (see the spool's SPOOL_RESIDENT_MAX) stays in the spool: only
	 * its header section is here (body_head octets, for accounting and
	 * DSNs), and the shard maps the rest from body_path at body_file_off
	 * while a transaction sends it.  The spool never moves such a record.
	 */
	const char *body;
	size_t body_head;
	const char *body_path;		/* NULL: resident */
	uint64_t body_file_off;
	bool body_8bit;			/* any byte >= 0x80 (BODY=8BITMIME out) */
	uint8_t ret;			/* RFC 3461 RET= or the source's
					   dsn-return-default: enum spool_ret */
	bool no_dsn;			/* suppress-local-dsn of its source */
	bool dsn_plain_text;		/* dsn-format plain-text of its source */
	const char *source_ip;		/* the injecting client, or NULL */
	/* strings, recipients and body follow in the same allocation */
};

struct delivery_job {
	struct delivery_msg *msg;	/* one reference, owned by the job */
	uint32_t nrcpt;
	uint32_t rcpt[];		/* indexes into msg->rcpt */
};

void delivery_msg_ref(struct delivery_msg *m);
/* delivery_msg_unref - drop a reference; frees on the last.  NULL ok. */
void delivery_msg_unref(struct delivery_msg *m);
void delivery_job_free(struct delivery_job *job);

/* Final outcomes, as the spool journals them (enum spool_outcome). */
enum delivery_outcome_kind {
	DELIVERY_DELIVERED = 1,
	DELIVERY_BOUNCED = 2,
	DELIVERY_EXPIRED = 3,
	DELIVERY_DEFERRED = 4,		/* not final: a delay notice is due */
};

/*
 * The status of an expiry (bounce-after), in the log line, the
 * accounting record and the DSN alike: a final failure (RFC 3463 X.4.7,
 * "delivery time expired"), so 5, never the 4 of the deferrals before it.
 */
#define DELIVERY_EXPIRED_STATUS "5.4.7"

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
};

int shard_set_new(const struct shard_set_params *p, struct shard_set **out,
		  char *err, size_t errlen);
int shard_set_start(struct shard_set *set, char *err, size_t errlen);
/* shard_set_stop - stop the threads; queued mail stays in the spool. */
void shard_set_stop(struct shard_set *set);
void shard_set_free(struct shard_set *set);
uint32_t shard_set_count(const struct shard_set *set);

/*
 * shard_submit - intake thread <intake> hands jobs to <shard>.  Returns
 * how many were taken (fewer when the ring is full: back-pressure).
 * shard_flush_wakeups - wake the shards this intake thread fed since its
 * last call, at most one syscall per sleeping shard per loop turn.
 */
size_t shard_submit(struct shard_set *set, uint32_t intake, uint32_t shard,
		    struct delivery_job *const *jobs, size_t n);
void shard_flush_wakeups(struct shard_set *set, uint32_t intake);

/*
 * shard_outcome_fd - an eventfd that becomes readable when outcomes for
 * intake thread <intake> are waiting; shard_take_outcomes - take up to
 * max of them (intake thread <intake> only).
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
};

void shard_stats(const struct shard_set *set, uint32_t shard,
		 struct shard_stats *st);

#endif
