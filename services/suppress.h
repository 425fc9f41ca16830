/*
 * suppress - the suppression store: addresses coremta must never send to
 * again (hard bounces, complaints, imported lists), durable in LMDB.
 *
 * A service both the intake (RCPT-time lookups) and the outcome path
 * (adds on hard bounces and complaints) use, so it lives below shards and
 * engine and needs nothing but util.
 *
 * Threads: one struct suppress is shared by every thread of the process
 * (and other processes may open the same directory: LMDB's lock file
 * serialises writers).  suppress_add/remove/purge/import run on any
 * thread; each is one write transaction, fsynced before it returns, so an
 * entry reported added survives kill -9 and power loss.  Lookups go
 * through a struct suppress_reader, one per thread, owned by that thread:
 * an LMDB read transaction, which takes no lock.
 *
 * Keys: the address in lower case, under a scope: global (every sender),
 * one MAIL FROM domain, or one virtual-mta.  An address "@domain"
 * suppresses the whole domain (PowerMTA's `domain` lines of an
 * <address-list>).  An entry with an expiry (soft bounces) is treated as
 * absent once it has passed; suppress_purge() deletes such entries.
 *
 * Errors are returned as -errno with a message in the caller's buffer where
 * one is taken; nothing is printed here.
 */
#ifndef COREMTA_SERVICES_SUPPRESS_H
#define COREMTA_SERVICES_SUPPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

struct suppress;
struct suppress_reader;

enum suppress_scope {
	SUPPRESS_GLOBAL,
	SUPPRESS_SENDER_DOMAIN,	/* scope_value: the MAIL FROM domain */
	SUPPRESS_VMTA,		/* scope_value: the virtual-mta name */
	SUPPRESS_NAMED_LIST,	/* scope_value: an <address-list> name; looked
				 * at only for sources that name the list */
};

/* Why an address is suppressed; stored as the entry's kind. */
enum suppress_kind {
	SUPPRESS_HARD_BOUNCE = 1,	/* b or rb of a hard category */
	SUPPRESS_SOFT_BOUNCE = 2,	/* soft category, with an expiry */
	SUPPRESS_COMPLAINT = 3,		/* f: the recipient reported spam */
	SUPPRESS_LIST = 4,		/* imported or added by the operator */
};

/* One entry to add.  Strings are copied; NULL reason is "". */
struct suppress_entry {
	const char *addr;		/* user@domain or @domain */
	enum suppress_scope scope;
	const char *scope_value;	/* NULL for SUPPRESS_GLOBAL */
	enum suppress_kind kind;
	time_t added;			/* 0: now */
	time_t expires;			/* 0: never */
	const char *reason;		/* "5.1.1 bad-mailbox rb", "abuse f" */
};

/* What a lookup found: copies, valid after the reader moves on. */
struct suppress_hit {
	enum suppress_scope scope;
	enum suppress_kind kind;
	time_t added, expires;
	bool whole_domain;		/* matched "@domain" */
	char reason[256];
};

struct suppress_params {
	uint64_t map_size;		/* bytes the store may grow to [32 GiB] */
	unsigned max_readers;		/* reader handles at once [512] */
};

/*
 * suppress_open - open (creating) the store in directory dir, which is
 * created if missing.  Returns 0 and *out, or -errno with err filled.
 */
int suppress_open(const char *dir, const struct suppress_params *params,
		  struct suppress **out, char *err, size_t errlen);
/* suppress_close - every reader must have been freed. NULL is fine. */
void suppress_close(struct suppress *s);

/*
 * suppress_add - add or refresh n entries in one durable transaction.
 * A permanent entry is never shortened by one with an expiry.  Returns 0,
 * -EINVAL for an address that is not one (nothing is written then),
 * -ENOSPC when the map is full, or another -errno.
 */
int suppress_add(struct suppress *s, const struct suppress_entry *e, size_t n);

/* suppress_remove - 0, or -ENOENT when there was no such entry. */
int suppress_remove(struct suppress *s, const char *addr,
		    enum suppress_scope scope, const char *scope_value);

/* suppress_purge - delete entries expired at now; *removed counts them. */
int suppress_purge(struct suppress *s, time_t now, size_t *removed);

/*
 * suppress_import - a list file into the store, one transaction: per line
 * an address, `address ADDR`, `domain DOMAIN` (PowerMTA's <address-list>
 * lines) or `@domain`; blank lines and # comments are skipped.  tmpl
 * gives scope, kind, expiry and reason (its addr is ignored).  A line that
 * is none of these (a /regex/ among them: the store holds exact keys)
 * fails the whole import with "file:line: message" in err and nothing
 * added.  *count is the number of entries added.
 */
int suppress_import(struct suppress *s, const char *path,
		    const struct suppress_entry *tmpl, size_t *count,
		    char *err, size_t errlen);

/*
 * suppress_export - every live entry as CSV lines
 * "addr,scope,scopeValue,kind,added,expires,reason" (times as time_t).
 */
int suppress_export(struct suppress *s, FILE *out, time_t now);

/*
 * suppress_replace_scope - make the entries of (scope, scope_value)
 * exactly e[0..n) in one durable transaction: what is stored there and not
 * in e is deleted (a list whose lines were removed from the configuration
 * stops suppressing them).  *removed counts the deletions (may be NULL).
 * -EINVAL for a bad entry or an entry of another scope; nothing changes.
 */
int suppress_replace_scope(struct suppress *s, enum suppress_scope scope,
			   const char *scope_value, const struct suppress_entry *e,
			   size_t n, size_t *removed);

/*
 * suppress_check_scope - is rcpt (or its @domain) suppressed in this one
 * scope?  1 with *hit, 0, or -errno; -EINVAL for a bad address.
 */
int suppress_check_scope(struct suppress_reader *r, const char *rcpt,
			 enum suppress_scope scope, const char *scope_value,
			 time_t now, struct suppress_hit *hit);

/* suppress_count - entries stored (expired ones not yet purged included) */
size_t suppress_count(struct suppress *s);

/* suppress_kind_name - "hard-bounce", "soft-bounce", "complaint", "list" */
const char *suppress_kind_name(enum suppress_kind k);
const char *suppress_scope_name(enum suppress_scope sc);

/* Readers: one per thread, used only by it. */
int suppress_reader_new(struct suppress *s, struct suppress_reader **out);
void suppress_reader_free(struct suppress_reader *r);

/*
 * suppress_check - is rcpt suppressed for mail from sender_domain through
 * vmta (either may be NULL: that scope is not looked at)?  Looks at the
 * address, then its domain, globally, then per sender domain, then per
 * VMTA.  Returns 1 with *hit filled (hit may be NULL), 0 when not, or
 * -errno.  Sees every add committed before the call.
 */
int suppress_check(struct suppress_reader *r, const char *rcpt,
		   const char *sender_domain, const char *vmta, time_t now,
		   struct suppress_hit *hit);

#endif
