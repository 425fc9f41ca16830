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
 * start a loader thread (shard.c) loads every retry-*.log, keeps the last
 * record of each key, writes them to retry-base.log and removes the rest,
 * while the intake already answers; the loaded table is read-only once
 * published to the shards.
 *
 * Threads: retry_table_load/free on one thread at a time; lookups from
 * any thread once the table is published; the record formatters touch
 * only their buffer.
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
 * record older than now - max_age_s dropped, in *out; compacts the files
 * into retry-base.log: the others are removed, except retry-<i>.log for
 * i < nkeep, which are emptied (the caller's shards hold them open for
 * appending and must not have written to them yet).  Returns 0, or
 * -errno with err set when the files could not be compacted (*out is
 * still the whole state: the files are left to be read again next time).
 */
int retry_table_load(const char *dir, int64_t now, int64_t max_age_s, uint32_t nkeep,
		     struct retry_table **out, char *err, size_t errlen);
void retry_table_free(struct retry_table *t);
/* retry_table_count - how many recipients have a state. */
size_t retry_table_count(const struct retry_table *t);
/*
 * retry_table_skipped - lines of the files that were no record: torn by a
 * crash (a last line without its newline) or corrupt.  Their recipients
 * are retried early, never lost.
 */
size_t retry_table_skipped(const struct retry_table *t);
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
