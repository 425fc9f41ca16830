/*
 * sentidx - what coremta delivered, by the message's Message-ID, kept a
 * few days so an asynchronous bounce or complaint that quotes only the
 * original's headers can be matched to its recipient, sender, job and
 * virtual-mta.
 *
 * LMDB, one database per UTC day (the oldest dropped whole when a new day
 * begins beyond the kept ones, so expiry costs no scan).  Written without
 * fsync (MDB_NOSYNC): it is a matching aid, and a crash loses at most the
 * last seconds of entries, never the database.
 *
 * Threads: sentidx_put on one writer thread at a time (LMDB serialises
 * writers anyway); readers one per thread, as in services/suppress.h.
 * Errors are -errno; nothing is printed.
 */
#ifndef COREMTA_SERVICES_SENTIDX_H
#define COREMTA_SERVICES_SENTIDX_H

#include <stddef.h>
#include <time.h>

struct sentidx;
struct sentidx_reader;

/* One delivered recipient.  Strings are copied; any but the first two
 * may be NULL. */
struct sentidx_entry {
	const char *message_id;		/* with or without <> */
	const char *rcpt;
	const char *mail_from, *job_id, *vmta;
};

/* What a lookup found; strings valid until the reader's next call. */
struct sentidx_hit {
	size_t nrcpts;
	const char *rcpts[8];		/* the first 8 recipients */
	const char *mail_from, *job_id, *vmta;
	time_t day;			/* the UTC day it was delivered */
};

/* sentidx_open - the index in dir (created), keeping keep_days days
 * (1..30).  0 and *out, or -errno with err. */
int sentidx_open(const char *dir, unsigned keep_days, struct sentidx **out,
		 char *err, size_t errlen);
void sentidx_close(struct sentidx *x);

/* sentidx_put - n entries delivered at now, one transaction; entries of
 * the same Message-ID gather their recipients. */
int sentidx_put(struct sentidx *x, const struct sentidx_entry *e, size_t n, time_t now);

int sentidx_reader_new(struct sentidx *x, struct sentidx_reader **out);
void sentidx_reader_free(struct sentidx_reader *r);

/* sentidx_get - the newest kept day that has message_id: 1 and *hit, 0
 * when none has, or -errno. */
int sentidx_get(struct sentidx_reader *r, const char *message_id, struct sentidx_hit *hit);

#endif
