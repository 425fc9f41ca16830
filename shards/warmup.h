/*
 * shards/warmup.h - IP warm-up: how many messages one source IP may send
 * to one site on one UTC day, by the day of its warm-up (PowerMTA's
 * max-cold-virtual-mta-msg for a cold-virtual-mta, coremta's
 * warmup-schedule for any), and the per-shard table of counters that
 * enforces it.  The counters are journaled in the retry state
 * (retry.h "w" records), so a restart neither forgets what was sent
 * today nor starts the warm-up over.
 *
 * A site is, for now, the receiving domain of the queue (after
 * queue-to): a domain belongs to one shard, so its counters are that
 * shard's alone and need no sharing.
 *
 * Threads: warmup_cap is pure; a struct warm_table belongs to one shard.
 */
#ifndef COREMTA_SHARDS_WARMUP_H
#define COREMTA_SHARDS_WARMUP_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "shards/adapt.h"
#include "shards/retry.h"
#include "shards/sched.h"
#include "util/hash.h"

#define WARMUP_NO_CAP	UINT32_MAX

/*
 * warmup_cap - messages allowed on day today to a source that first sent
 * on first_day (UTC day numbers): the schedule's entry for that day of
 * the warm-up (day 1 = first_day, the last entry repeating).  An empty
 * schedule or an unlimited entry: WARMUP_NO_CAP.  Before the first send
 * (first_day 0) the day is day 1.
 */
uint32_t warmup_cap(const struct cfg_daily *d, int64_t first_day, int64_t today);

/*
 * What the shard keeps per (source IP, site): the warm-up counter and the
 * adaptive rate (adapt.h) with the token bucket that enforces it.
 */
struct warm_entry {
	struct retry_warm w;
	int64_t logged_day;		/* the day its cap was last logged */
	bool adapt_on;			/* adapt and bucket are set up */
	struct adapt adapt;
	struct sched_bucket bucket;
	char key[];			/* "SOURCE_IP/SITE" */
};

struct warm_table {
	struct hash_tab entries;	/* struct warm_entry by key */
};

/*
 * warm_get - the counter of key, made on first use from the journaled
 * state in seed (NULL: none), rolled over to day today (a new day counts
 * from zero).
 */
struct warm_entry *warm_get(struct warm_table *t, const char *key,
			    const struct retry_table *seed, int64_t today);
void warm_table_free(struct warm_table *t);

#endif
