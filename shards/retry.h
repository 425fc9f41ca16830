/*
 * shards/retry.h - the retry state that survives a restart: per recipient
 * its attempts, when it is due again and the virtual-mta (pool member) it
 * was given; per queue its backoff mode; per (source IP, site) the
 * warm-up day counter (warmup.h).  The spool journals final
 * outcomes only; without this, a restart retried deferred mail at once
 * from attempt 1, forgot backoff and drew pool members anew.
 *
 * Each shard appends records to <spool>/retry-<shard>.log (through its
 * ring, like the delivery log; not fsynced: a crash loses at most the
 * last records, and a recipient is then retried early, never lost).  At
 * start the main thread loads every retry-*.log, keeps the last record
 * of each key, writes them to retry-base.log and removes the rest; the
 * loaded table is read-only while the shards run.
 *
 * Threads: retry_table_load/free on the main thread; lookups from any
 * thread once loaded; the record formatters touch only their buffer.
 */
#ifndef COREMTA_SHARDS_RETRY_H
#define COREMTA_SHARDS_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "util/util.h"

struct retry_rcpt {
	uint32_t attempts;
	int64_t next_unix;		/* when it is due again */
	uint32_t delay_s;		/* the retry interval it waits */
	char vmta[128];			/* "" = the default */
};

/* A warm-up counter: the UTC day (unix time / 86400) it first sent, and
 * the messages it sent on day `day`. */
struct retry_warm {
	int64_t first_day;
	int64_t day;
	uint32_t sent;
};

struct retry_table;

/*
 * retry_table_load - the state in dir's retry files (none is fine), each
 * record older than now - max_age_s dropped; compacts the files.
 * Returns 0 or -errno with err set.
 */
int retry_table_load(const char *dir, int64_t now, int64_t max_age_s,
		     struct retry_table **out, char *err, size_t errlen);
void retry_table_free(struct retry_table *t);
/* retry_table_rcpt - the state of recipient rcpt (journal index) of msg_id. */
bool retry_table_rcpt(const struct retry_table *t, uint64_t msg_id, uint32_t rcpt,
		      struct retry_rcpt *out);
/* retry_table_backoff - whether queue "domain/vmta" was in backoff, since when. */
bool retry_table_backoff(const struct retry_table *t, const char *queue, int64_t *since);
/* retry_table_warm - the warm-up counter of key ("IP/SITE", no blanks). */
bool retry_table_warm(const struct retry_table *t, const char *key, struct retry_warm *out);

/* The records a shard appends. */
void retry_put_rcpt(struct strbuf *sb, uint64_t msg_id, uint32_t rcpt,
		    const struct retry_rcpt *st);
void retry_put_backoff(struct strbuf *sb, const char *queue, bool on, int64_t since);
void retry_put_warm(struct strbuf *sb, const char *key, const struct retry_warm *w);

#endif
