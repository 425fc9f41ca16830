/*
 * intake - one SMTP intake thread: an io_uring loop that accepts
 * connections, runs an smtp_session per connection, appends finished
 * messages to the spool it owns, makes them durable with one group commit
 * per loop turn (IORING_OP_FSYNC), answers 250 only then, and hands each
 * message's recipients to the shards that own their domains.
 *
 * Threads: intake_bind_listeners() and intake_new() run on the main thread
 * before the intake thread starts; intake_run() is the intake thread's
 * body; intake_stop() may be called from any thread; intake_free() after
 * intake_run() returned.  The intake owns its spool and listening
 * sockets from intake_new() on.
 */
#ifndef COREMTA_INTAKE_H
#define COREMTA_INTAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "affinity/affinity.h"
#include "config/config.h"
#include "engine/spool.h"
#include "shards/shards.h"
#include "util/tls.h"

struct intake;
struct acct_writer;
struct fbl;

/*
 * intake_bind_listeners - socket, bind and listen for every smtp-listener
 * (before privileges are dropped).  fds[] gets cfg_global()->listener_count
 * descriptors; reuseport (several intake threads) lets each thread bind
 * its own socket to the same address.  first: NULL, or the first intake
 * thread's sockets, whose ports a listener on port 0 takes so that every
 * thread listens on one address.  Returns 0 or -errno with err naming
 * the listener.
 */
int intake_bind_listeners(const struct cfg *cfg, int *fds, const int *first, bool reuseport,
			  char *err, size_t errlen);
/*
 * intake_bind_listener - the same for one listener, with same_port_as one
 * socket of first or -1; the socket or -errno.
 */
int intake_bind_listener(const struct cfg_listener *l, int same_port_as, bool reuseport,
			 char *err, size_t errlen);
/*
 * intake_listen_addr - the numeric address a listening socket is bound
 * to (into addr) and its port (the one the kernel chose for port 0), or
 * -errno.
 */
int intake_listen_addr(int fd, char *addr, size_t addrlen);

struct intake_params {
	const struct cfg *cfg;
	uint32_t index;			/* intake thread number */
	const int *listen_fds;		/* one per cfg listener; the intake's
					   own once intake_new() succeeds */
	struct spool *spool;		/* opened; owned by the intake now */
	struct shard_set *shards;
	const struct domain_map *map;
	struct tls_ctx *tls;		/* NULL: no STARTTLS, no implicit TLS */
	struct acct_writer *acct;	/* NULL: no acct-file or reject log;
					   producer = index */
	uint64_t min_free_space;	/* bytes kept free (plus 2 MiB for
					   the journal): new mail that would
					   eat into it gets 452 */
	const char *hostname;		/* greeting and Received: name */
	struct fbl *fbl;		/* suppression and report processors,
					   reader/producer = index; or NULL */
};

int intake_new(const struct intake_params *p, struct intake **out, char *err,
	       size_t errlen);
/* intake_run - serve until intake_stop(); 0, or -errno if the ring failed. */
int intake_run(struct intake *in);
void intake_stop(struct intake *in);
/*
 * intake_reload - the intake thread serves new connections under cfg
 * from its next loop turn (it takes its own reference; at most one tick,
 * 1 s); open sessions finish under the configuration they began with.
 * fds[] has one listening socket per cfg listener (intake_bind_listener):
 * the intake keeps accepting on those it already has, starts on new ones
 * (they are its own from now on) and shuts down and closes those not
 * given any more.  -EBUSY (nothing done) while the previous reload is
 * pending: intake_reload_pending() says when the thread has taken it.
 * Any thread, one at a time.
 */
int intake_reload(struct intake *in, const struct cfg *cfg, const int *fds);
bool intake_reload_pending(struct intake *in);
/*
 * intake_drain_outcomes - after intake_run() returned and the shards
 * stopped: journal the outcomes still in the rings and commit (main
 * thread; the spool is the caller's again).
 */
void intake_drain_outcomes(struct intake *in);
void intake_free(struct intake *in);

/*
 * intake_recover_begin - spool_recover_begin() on the intake's spool
 * (main thread, before intake_run): the intake thread then recovers the
 * spool in slices between its loop turns, answering clients meanwhile,
 * logs event=recovery lines (each second while it runs, and the
 * "recovered:" line with its duration at the end) and starts spool
 * maintenance only then.  0 or -errno (logged).
 */
int intake_recover_begin(struct intake *in);

/*
 * intake_maintain - spool_maintain() on the intake's spool, and the moves
 * it made published to the shards (the intake's thread, or the main
 * thread before intake_run).
 */
void intake_maintain(struct intake *in, int64_t now);

/* Counters for logs and tests. */
struct intake_stats {
	uint64_t connections;
	uint64_t messages;		/* answered 250 */
	uint64_t commits;		/* group commits (fsync batches) */
	uint64_t rejected_messages;	/* 4xx/5xx after DATA */
	uint64_t turns_over_budget;	/* loop turns that overran */
	uint64_t dsns;			/* DSNs queued */
	uint64_t dsn_failures;		/* DSNs that could not be composed or spooled */
	uint64_t notices;		/* backoff-notify messages queued */
	uint64_t refused_storage;	/* MAIL, DATA or messages refused: spool
					   short of space or failing */
	uint64_t spool_errors;		/* commits that failed to start or sync */
	uint64_t refused_memory;	/* buffer growths over smtp-in-max-data-memory */
};

void intake_stats(const struct intake *in, struct intake_stats *st);

/*
 * What the management thread reads while the intake runs: counters the
 * intake publishes (relaxed atomics) each second and at each group
 * commit.  fsync[i] counts group commits whose fsyncs took at most
 * intake_fsync_bounds()[i] ms (the last bound is +Inf); not cumulative.
 */
#define INTAKE_FSYNC_BUCKETS 12
struct intake_live {
	uint64_t connections;		/* accepted since start */
	uint32_t open;			/* connections open now */
	uint64_t messages;		/* answered 250 */
	uint64_t recipients;		/* of those messages */
	uint64_t rejected;		/* refused after DATA */
	uint64_t spool_bytes, spool_messages, spool_recipients;
	uint64_t fsync[INTAKE_FSYNC_BUCKETS];
	uint64_t fsync_sum_us;
};

void intake_live(const struct intake *in, struct intake_live *out);
const double *intake_fsync_bounds(void);

#endif
