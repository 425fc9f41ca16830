/*
 * shards/sched.h - the scheduler's decisions, as pure code: token
 * buckets, the limits in force (normal or backoff mode), the retry
 * schedule, and what a queue should do now (open connections, wait until
 * a time, or nothing).  Every function takes the time as an argument and
 * touches only what it is given, so the shard's loop acts on the answers
 * and the tests drive them with a fake clock.
 *
 * The invariant these functions keep (tests/shards/test_sched.c checks
 * it): a queue with ready recipients, not held, either has a connection
 * that will take them (busy, or still connecting or waiting for its
 * greeting, which a timeout ends), opens one now, or is told when to look
 * again, no later than its limits' next token.
 *
 * Threads: any; nothing here is shared.  The caller owns every struct.
 */
#ifndef COREMTA_SHARDS_SCHED_H
#define COREMTA_SHARDS_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"

#define SCHED_TICK_MS		50	/* the shard's clock resolution */
#define SCHED_RAMP_PENDING	2	/* connections not yet greeted, per queue */
/*
 * How long a connection may wait for its greeting before the receiver is
 * taken to be full: idle connections to the same destination then give
 * way.  A greeting on a healthy receiver takes a round trip.
 */
#define SCHED_GREETING_PATIENCE_MS	500
/* How long a "this destination wants a slot" signal lasts unrenewed. */
#define SCHED_WANT_MS		(4 * SCHED_TICK_MS)
/* How long a limit learned from a 421 "too many connections" holds. */
#define SCHED_LEARNED_CAP_MS	(5 * 60 * 1000)
/*
 * A shard at least this busy (percent of its wall time it ran or waited
 * for a CPU, shard.c: load_window) is itself the bottleneck: another
 * connection would add a handshake and loop work, not throughput.
 */
#define SCHED_SATURATED_PCT	90

/* A token bucket; per_ms == 0 means unlimited. */
struct sched_bucket {
	double tokens;
	double per_ms;
	double burst;
	uint64_t last_ms;
};

/* sched_bucket_init - full of one token at now; unlimited for r "unlimited". */
void sched_bucket_init(struct sched_bucket *b, const struct cfg_rate *r, uint64_t now);
/* sched_bucket_take - take one token if there is one (refills first). */
bool sched_bucket_take(struct sched_bucket *b, uint64_t now);
/*
 * sched_bucket_wait_ms - how long from now until one token is there
 * (0: now).  Refills first: a bucket nobody took from for a while is full.
 */
uint64_t sched_bucket_wait_ms(struct sched_bucket *b, uint64_t now);

/*
 * The limits in force.  In backoff mode a backoff-* limit applies when it
 * is stricter; backoff never loosens one (as in PowerMTA).  vmta may be
 * NULL.
 */
const struct cfg_rate *sched_msg_rate(const struct cfg_queue *qs, bool backoff);
const struct cfg_rate *sched_connect_rate(const struct cfg_queue *qs, bool backoff);
uint32_t sched_max_out(const struct cfg_queue *qs, const struct cfg_vmta *vmta, bool backoff);
const struct cfg_schedule *sched_retry(const struct cfg_queue *qs, bool backoff);
/*
 * sched_retry_delay_ms - wait after the attempts-th failed attempt (1 =
 * the first): the schedule's entries in turn, the last one repeating.
 */
uint64_t sched_retry_delay_ms(const struct cfg_schedule *sch, uint32_t attempts);

/* What a queue looks like to the planner, after idle connections took work. */
struct sched_state {
	uint32_t ready;		/* recipients due now */
	uint32_t conns;		/* every connection of the queue */
	uint32_t idle;		/* greeted, no message bound */
	uint32_t pending;	/* connecting, or waiting for the greeting */
	uint32_t max_out;	/* sched_max_out() */
	/*
	 * Connections the shared caps allow at the queue's next destination
	 * right now (total-max-smtp-out, ip-/mx-connection-limit, a limit
	 * learned from a 421): UINT32_MAX for none.
	 */
	uint32_t room;
	/*
	 * How busy the queue's shard was over its last load window, percent
	 * (0-100).  From SCHED_SATURATED_PCT on, a queue with a connection
	 * in flight opens no more; one with none still gets its first.
	 */
	uint32_t shard_busy_pct;
};

struct sched_plan {
	uint32_t open;		/* connections to open now */
	uint64_t wake_ms;	/* 0, or plan again by then */
	bool want_slot;		/* a connection was refused by a shared cap:
				   idle ones elsewhere should give way */
};

/*
 * sched_plan - what a queue in state st does at now.  Takes the tokens of
 * the connections it opens from connect_rate; reads msg_rate (refilling
 * it) to hold new connections while the message rate says wait.
 */
void sched_plan(const struct sched_state *st, struct sched_bucket *msg_rate,
		struct sched_bucket *connect_rate, uint64_t now, struct sched_plan *p);

/*
 * A destination's limit learned from "421 too many connections": the
 * receiver served open - 1 others when it refused one.  Returns the new
 * cap (at least 1); cap 0 = none learned yet.
 */
uint32_t sched_learn_cap(uint32_t cap, uint32_t open);

/* sched_cap_room - connections left under cap (0 = no cap) with open in use. */
uint32_t sched_cap_room(uint32_t cap, uint32_t open);

/*
 * Sites: what a receiver limits is its MX host set, not the domain, so a
 * queue's connections belong to its site, and an idle one may carry any
 * queue of the same site.  Domains whose MX host sets are identical share
 * a site; an <mx-rollup-list> line merges domains whose most preferred
 * MX matches it into one queue (PowerMTA's MX rollup), whose site is the
 * rollup name.
 */
struct dns_result;

/*
 * sched_rollup - the first <mx-rollup-list> line that a domain with these
 * MX targets matches (by a most preferred host's name, or with
 * rollup-by-ip its address), or NULL.  Only an MX answer rolls up: pass
 * none for a queue with smtp-hosts or disable-mx-rollup.
 */
const struct cfg_mx_rollup *sched_rollup(const struct cfg_global *g,
					 const struct dns_result *res);

/*
 * sched_site - the name of a queue's site into buf (truncated to len):
 * "domain:D" for a domain kept out of rollup (own_domain: its own site,
 * even where an smtp-hosts route serves others too), "route:ROUTE" for
 * an smtp-hosts route, else "mx:" and its MX host names, sorted,
 * comma-separated.  Returns the name's length.
 */
size_t sched_site(const struct dns_result *res, const char *route,
		  const char *own_domain, char *buf, size_t len);

#endif
