/*
 * services/suppress.c - the suppression store on LMDB (services/suppress.h).
 *
 * Any thread may add, remove, purge and import (LMDB serialises write
 * transactions); a struct suppress_reader belongs to the one thread that
 * made it.  One LMDB database holds every entry:
 *
 *   key    scope letter, US, scope value, US, address, in lower case
 *          (US is 0x1f, which no address or name holds: "g US US
 *          user@example.com", "d US news.example US @gmail.com")
 *   value  struct value (packed, little-endian host order), then the
 *          reason text without its NUL
 *
 * LMDB commits with an fsync of the data file (no MDB_NOSYNC), so a
 * returned add is durable, and its copy-on-write B-tree with two meta pages
 * means a writer killed mid-transaction leaves the last committed state.
 * MDB_NOTLS lets a reader's transaction be reset and renewed without a new
 * reader slot per lookup: a lookup is a renew, up to four gets, a reset.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <lmdb.h>

#include "util/util.h"

#include "services/lmdb_env.h"
#include "services/suppress.h"

#define VALUE_VERSION 1
#define KEY_MAX 511		/* LMDB's default key size limit */
#define REASON_MAX 255
#define SEP '\x1f'		/* between a key's parts */

struct suppress {
	MDB_env *env;
	MDB_dbi dbi;
};

struct suppress_reader {
	struct suppress *s;
	MDB_txn *txn;		/* reset between lookups */
};

/*
 * The kinds of keys the store has ever held, one bit per (scope, whole
 * domain), under a key no entry can have (it starts with NUL): a lookup
 * probes only those, two gets instead of seven for a global-only store.
 * Bits are never cleared (a removal may leave a probe that finds nothing).
 */
static const char kinds_key[] = "\0kinds";

static unsigned kind_bit(enum suppress_scope sc, bool whole_domain)
{
	return 1u << ((unsigned)sc * 2 + whole_domain);
}

/* The stored value's fixed part; the reason follows it. */
struct value {
	uint8_t version;
	uint8_t kind;
	uint16_t reserved;
	uint32_t reserved2;
	int64_t added;
	int64_t expires;	/* 0 = never */
};

static const char scope_letters[] = { [SUPPRESS_GLOBAL] = 'g',
				      [SUPPRESS_SENDER_DOMAIN] = 'd',
				      [SUPPRESS_VMTA] = 'v',
				      [SUPPRESS_NAMED_LIST] = 'l' };

const char *suppress_kind_name(enum suppress_kind k)
{
	switch (k) {
	case SUPPRESS_HARD_BOUNCE:
		return "hard-bounce";
	case SUPPRESS_SOFT_BOUNCE:
		return "soft-bounce";
	case SUPPRESS_COMPLAINT:
		return "complaint";
	case SUPPRESS_LIST:
		return "list";
	}
	return "unknown";
}

const char *suppress_scope_name(enum suppress_scope sc)
{
	switch (sc) {
	case SUPPRESS_GLOBAL:
		return "global";
	case SUPPRESS_SENDER_DOMAIN:
		return "sender-domain";
	case SUPPRESS_VMTA:
		return "virtual-mta";
	case SUPPRESS_NAMED_LIST:
		return "address-list";
	}
	return "unknown";
}

/*
 * addr_ok - one address as the store takes it: user@domain or @domain, no
 * spaces or controls, a non-empty domain.
 */
static bool addr_ok(const char *a)
{
	const char *at = strrchr(a, '@');

	if (!at || !at[1] || strlen(a) > 320)
		return false;
	for (const char *p = a; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return false;
	return true;
}

/* make_key - the key of (scope, value, addr) in buf; its length or -EINVAL */
static int make_key(char *buf, size_t cap, enum suppress_scope scope,
		    const char *scope_value, const char *addr)
{
	if ((unsigned)scope >= ARRAY_SIZE(scope_letters) ||
	    (scope != SUPPRESS_GLOBAL && (!scope_value || !*scope_value)) ||
	    (scope_value && strchr(scope_value, SEP)) || !addr_ok(addr))
		return -EINVAL;
	int n = snprintf(buf, cap, "%c%c%s%c%s", scope_letters[scope], SEP,
			 scope == SUPPRESS_GLOBAL ? "" : scope_value, SEP, addr);
	if (n < 0 || (size_t)n >= cap || n > KEY_MAX)
		return -EINVAL;
	for (char *p = buf; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return n;
}

int suppress_open(const char *dir, const struct suppress_params *params,
		  struct suppress **out, char *err, size_t errlen)
{
	struct suppress_params p = params ? *params : (struct suppress_params){ 0 };
	struct suppress *s = xcalloc(1, sizeof(*s));
	int rc;

	if (!p.map_size)
		p.map_size = (uint64_t)32 << 30;
	if (!p.max_readers)
		p.max_readers = 512;
	rc = lmdb_env_open_dir("suppression store", dir, p.map_size, p.max_readers, 0,
			       &s->env, &s->dbi, err, errlen);
	if (rc < 0) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void suppress_close(struct suppress *s)
{
	if (!s)
		return;
	mdb_env_close(s->env);
	free(s);
}

/* value_read - the fixed part and reason of a stored value */
static bool value_read(const MDB_val *v, struct value *fixed,
		       const char **reason, size_t *rlen)
{
	if (v->mv_size < sizeof(*fixed))
		return false;
	memcpy(fixed, v->mv_data, sizeof(*fixed));
	if (fixed->version != VALUE_VERSION)
		return false;
	*reason = (const char *)v->mv_data + sizeof(*fixed);
	*rlen = v->mv_size - sizeof(*fixed);
	return true;
}

/* put_one - e into txn, keeping a permanent entry over a timed one */
static int put_one(struct suppress *s, MDB_txn *txn, const struct suppress_entry *e,
		   time_t now)
{
	char key[KEY_MAX + 1];
	int klen = make_key(key, sizeof(key), e->scope, e->scope_value, e->addr);
	const char *reason = e->reason ? e->reason : "";
	size_t rlen = strnlen(reason, REASON_MAX);
	char buf[sizeof(struct value) + REASON_MAX];
	struct value fixed = {
		.version = VALUE_VERSION,
		.kind = (uint8_t)e->kind,
		.added = e->added ? e->added : now,
		.expires = e->expires,
	};
	MDB_val k = { .mv_size = (size_t)klen, .mv_data = key }, old, v;
	int rc;

	if (klen < 0)
		return klen;
	if (e->expires && (rc = mdb_get(txn, s->dbi, &k, &old)) == 0) {
		struct value of;
		const char *r;
		size_t rl;

		if (value_read(&old, &of, &r, &rl) && !of.expires)
			return 0;	/* already permanent */
	}
	memcpy(buf, &fixed, sizeof(fixed));
	memcpy(buf + sizeof(fixed), reason, rlen);
	v = (MDB_val){ .mv_size = sizeof(fixed) + rlen, .mv_data = buf };
	if ((rc = lmdb_errno(mdb_put(txn, s->dbi, &k, &v, 0))))
		return rc;

	MDB_val kk = { .mv_size = sizeof(kinds_key) - 1, .mv_data = (void *)kinds_key }, kv;
	uint32_t bits = 0, bit = kind_bit(e->scope, e->addr[0] == '@');
	if (mdb_get(txn, s->dbi, &kk, &kv) == 0 && kv.mv_size == sizeof(bits))
		memcpy(&bits, kv.mv_data, sizeof(bits));
	if (bits & bit)
		return 0;
	bits |= bit;
	kv = (MDB_val){ .mv_size = sizeof(bits), .mv_data = &bits };
	return lmdb_errno(mdb_put(txn, s->dbi, &kk, &kv, 0));
}

int suppress_add(struct suppress *s, const struct suppress_entry *e, size_t n)
{
	MDB_txn *txn;
	time_t now = time(NULL);
	int rc = lmdb_errno(mdb_txn_begin(s->env, NULL, 0, &txn));

	if (rc)
		return rc;
	for (size_t i = 0; i < n && !rc; i++)
		rc = put_one(s, txn, &e[i], now);
	if (rc) {
		mdb_txn_abort(txn);
		return rc;
	}
	return lmdb_errno(mdb_txn_commit(txn));
}

int suppress_remove(struct suppress *s, const char *addr,
		    enum suppress_scope scope, const char *scope_value)
{
	char key[KEY_MAX + 1];
	int klen = make_key(key, sizeof(key), scope, scope_value, addr);
	MDB_val k = { .mv_size = (size_t)klen, .mv_data = key };
	MDB_txn *txn;
	int rc;

	if (klen < 0)
		return klen;
	if ((rc = lmdb_errno(mdb_txn_begin(s->env, NULL, 0, &txn))))
		return rc;
	rc = lmdb_errno(mdb_del(txn, s->dbi, &k, NULL));
	if (rc) {
		mdb_txn_abort(txn);
		return rc;
	}
	return lmdb_errno(mdb_txn_commit(txn));
}

int suppress_purge(struct suppress *s, time_t now, size_t *removed)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0;
	int rc, mrc;

	*removed = 0;
	if ((rc = lmdb_errno(mdb_txn_begin(s->env, NULL, 0, &txn))))
		return rc;
	if ((rc = lmdb_errno(mdb_cursor_open(txn, s->dbi, &cur)))) {
		mdb_txn_abort(txn);
		return rc;
	}
	for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
	     mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct value fixed;
		const char *r;
		size_t rl;

		if (value_read(&v, &fixed, &r, &rl) && fixed.expires &&
		    fixed.expires <= now) {
			if ((mrc = mdb_cursor_del(cur, 0)))
				break;
			n++;
		}
	}
	mdb_cursor_close(cur);
	if (mrc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return lmdb_errno(mrc);
	}
	if ((rc = lmdb_errno(mdb_txn_commit(txn))))
		return rc;
	*removed = n;
	return 0;
}

/* strip - s without surrounding blanks, in place */
static char *strip(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int suppress_import(struct suppress *s, const char *path,
		    const struct suppress_entry *tmpl, size_t *count,
		    char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *line = NULL, *dom = NULL;
	size_t cap = 0, n = 0;
	int lineno = 0, rc;
	time_t now = time(NULL);
	MDB_txn *txn;

	*count = 0;
	if (!f) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	if ((rc = lmdb_errno(mdb_txn_begin(s->env, NULL, 0, &txn)))) {
		snprintf(err, errlen, "%s: suppression store: %s", path, strerror(-rc));
		fclose(f);
		return rc;
	}
	while (getline(&line, &cap, f) >= 0) {
		char *p = strip(line), *word;
		struct suppress_entry e = *tmpl;

		lineno++;
		if (!*p || *p == '#')
			continue;
		word = p + strcspn(p, " \t");
		if (*word && (!strncasecmp(p, "address", 7) || !strncasecmp(p, "domain", 6))) {
			bool is_domain = tolower((unsigned char)*p) == 'd';
			*word++ = '\0';
			if (!str_ieq(p, "address") && !str_ieq(p, "domain"))
				goto bad;
			p = strip(word);
			if (is_domain) {
				free(dom);
				dom = xasprintf("@%s", p);
				p = dom;
			}
		}
		if (*p == '/') {
			snprintf(err, errlen,
				 "%s:%d: '%s': a /regex/ cannot be imported into the suppression store (it holds exact addresses and @domains)",
				 path, lineno, p);
			rc = -EINVAL;
			goto out;
		}
		e.addr = p;
		if ((rc = put_one(s, txn, &e, now)) == -EINVAL)
			goto bad;
		if (rc) {
			snprintf(err, errlen, "%s:%d: %s", path, lineno, strerror(-rc));
			goto out;
		}
		n++;
		continue;
bad:
		snprintf(err, errlen,
			 "%s:%d: '%s' is not an address (expected user@domain, @domain, 'address ADDR' or 'domain DOMAIN')",
			 path, lineno, p);
		rc = -EINVAL;
		goto out;
	}
	if (ferror(f)) {
		rc = -EIO;
		snprintf(err, errlen, "%s: read error", path);
		goto out;
	}
	if ((rc = lmdb_errno(mdb_txn_commit(txn)))) {
		txn = NULL;
		snprintf(err, errlen, "%s: suppression store: %s", path, strerror(-rc));
		goto out;
	}
	txn = NULL;
	*count = n;
out:
	if (txn)
		mdb_txn_abort(txn);
	free(line);
	free(dom);
	fclose(f);
	return rc;
}

/* csv_put - s quoted per RFC 4180 when it needs it */
static void csv_put(FILE *out, const char *s, size_t n)
{
	if (!memchr(s, ',', n) && !memchr(s, '"', n) && !memchr(s, '\n', n) &&
	    !memchr(s, '\r', n)) {
		fwrite(s, 1, n, out);
		return;
	}
	fputc('"', out);
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"')
			fputc('"', out);
		fputc(s[i], out);
	}
	fputc('"', out);
}

int suppress_export(struct suppress *s, FILE *out, time_t now)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, mrc;

	if ((rc = lmdb_errno(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))))
		return rc;
	if ((rc = lmdb_errno(mdb_cursor_open(txn, s->dbi, &cur)))) {
		mdb_txn_abort(txn);
		return rc;
	}
	for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
	     mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const char *key = k.mv_data, *c1, *c2, *reason;
		struct value fixed;
		size_t rl;
		enum suppress_scope sc = SUPPRESS_GLOBAL;

		if (!value_read(&v, &fixed, &reason, &rl) ||
		    (fixed.expires && fixed.expires <= now) || k.mv_size < 3)
			continue;
		c1 = memchr(key, SEP, k.mv_size);
		c2 = c1 ? memchr(c1 + 1, SEP, k.mv_size - (size_t)(c1 + 1 - key)) : NULL;
		if (!c2)
			continue;
		for (unsigned i = 0; i < ARRAY_SIZE(scope_letters); i++)
			if (scope_letters[i] == key[0])
				sc = (enum suppress_scope)i;
		csv_put(out, c2 + 1, k.mv_size - (size_t)(c2 + 1 - key));
		fprintf(out, ",%s,", suppress_scope_name(sc));
		csv_put(out, c1 + 1, (size_t)(c2 - c1 - 1));
		fprintf(out, ",%s,%" PRId64 ",%" PRId64 ",",
			suppress_kind_name((enum suppress_kind)fixed.kind),
			fixed.added, fixed.expires);
		csv_put(out, reason, rl);
		fputc('\n', out);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (mrc != MDB_NOTFOUND)
		return lmdb_errno(mrc);
	return ferror(out) ? -EIO : 0;
}

size_t suppress_count(struct suppress *s)
{
	MDB_txn *txn;
	MDB_stat st;
	size_t n = 0;

	if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
		return 0;
	MDB_val kk = { .mv_size = sizeof(kinds_key) - 1, .mv_data = (void *)kinds_key }, kv;
	if (!mdb_stat(txn, s->dbi, &st))
		n = st.ms_entries - (mdb_get(txn, s->dbi, &kk, &kv) == 0);
	mdb_txn_abort(txn);
	return n;
}

int suppress_reader_new(struct suppress *s, struct suppress_reader **out)
{
	struct suppress_reader *r = xcalloc(1, sizeof(*r));
	int rc = lmdb_read_txn_new(s->env, &r->txn);

	if (rc) {
		free(r);
		return rc;
	}
	r->s = s;
	*out = r;
	return 0;
}

void suppress_reader_free(struct suppress_reader *r)
{
	if (!r)
		return;
	mdb_txn_abort(r->txn);
	free(r);
}

/* probe - one key in the reader's snapshot; 1 hit, 0 none, -errno */
static int probe(struct suppress_reader *r, enum suppress_scope sc,
		 const char *scope_value, const char *addr, time_t now,
		 struct suppress_hit *hit)
{
	char key[KEY_MAX + 1];
	int klen = make_key(key, sizeof(key), sc, scope_value, addr);
	MDB_val k = { .mv_size = (size_t)klen, .mv_data = key }, v;
	struct value fixed;
	const char *reason;
	size_t rl;
	int rc;

	if (klen < 0)
		return klen;
	rc = mdb_get(r->txn, r->s->dbi, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return lmdb_errno(rc);
	if (!value_read(&v, &fixed, &reason, &rl) ||
	    (fixed.expires && fixed.expires <= now))
		return 0;
	if (hit) {
		hit->scope = sc;
		hit->kind = (enum suppress_kind)fixed.kind;
		hit->added = (time_t)fixed.added;
		hit->expires = (time_t)fixed.expires;
		hit->whole_domain = addr[0] == '@';
		if (rl >= sizeof(hit->reason))
			rl = sizeof(hit->reason) - 1;
		memcpy(hit->reason, reason, rl);
		hit->reason[rl] = '\0';
	}
	return 1;
}

int suppress_check(struct suppress_reader *r, const char *rcpt,
		   const char *sender_domain, const char *vmta, time_t now,
		   struct suppress_hit *hit)
{
	const char *at = strrchr(rcpt, '@');
	const struct {
		enum suppress_scope sc;
		const char *val;
	} scopes[] = {
		{ SUPPRESS_GLOBAL, NULL },
		{ SUPPRESS_SENDER_DOMAIN, sender_domain },
		{ SUPPRESS_VMTA, vmta },
	};
	int rc = 0;

	if (!at || !addr_ok(rcpt))
		return -EINVAL;
	rc = lmdb_errno(mdb_txn_renew(r->txn));
	if (rc)
		return rc;

	MDB_val kk = { .mv_size = sizeof(kinds_key) - 1, .mv_data = (void *)kinds_key }, kv;
	uint32_t bits = 0;
	if (mdb_get(r->txn, r->s->dbi, &kk, &kv) == 0 && kv.mv_size == sizeof(bits))
		memcpy(&bits, kv.mv_data, sizeof(bits));
	for (size_t i = 0; i < ARRAY_SIZE(scopes) && rc == 0; i++) {
		if (scopes[i].sc != SUPPRESS_GLOBAL && (!scopes[i].val || !*scopes[i].val))
			continue;
		if (bits & kind_bit(scopes[i].sc, false))
			rc = probe(r, scopes[i].sc, scopes[i].val, rcpt, now, hit);
		if (rc == 0 && (bits & kind_bit(scopes[i].sc, true)))
			rc = probe(r, scopes[i].sc, scopes[i].val, at, now, hit);
	}
	mdb_txn_reset(r->txn);
	return rc;
}

int suppress_replace_scope(struct suppress *s, enum suppress_scope scope,
			   const char *scope_value, const struct suppress_entry *e,
			   size_t n, size_t *removed)
{
	char prefix[KEY_MAX + 1];
	/* the key of an address "@" would be prefix + "@": cut it back */
	int plen = make_key(prefix, sizeof(prefix), scope, scope_value, "@x");
	time_t now = time(NULL);
	size_t gone = 0;
	MDB_txn *txn;
	MDB_cursor *cur;
	int rc;

	if (plen < 0)
		return plen;
	plen -= 2;
	for (size_t i = 0; i < n; i++)
		if (e[i].scope != scope)
			return -EINVAL;
	if ((rc = lmdb_errno(mdb_txn_begin(s->env, NULL, 0, &txn))))
		return rc;
	if ((rc = lmdb_errno(mdb_cursor_open(txn, s->dbi, &cur)))) {
		mdb_txn_abort(txn);
		return rc;
	}
	int mrc;
	for (;;) {
		/* seek afresh each time: after a delete the cursor's key is gone */
		MDB_val k = { .mv_size = (size_t)plen, .mv_data = prefix }, v;
		mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (mrc || k.mv_size < (size_t)plen ||
		    memcmp(k.mv_data, prefix, (size_t)plen) != 0)
			break;
		if ((mrc = mdb_cursor_del(cur, 0)))
			break;
		gone++;
	}
	mdb_cursor_close(cur);
	rc = mrc == MDB_NOTFOUND || mrc == 0 ? 0 : lmdb_errno(mrc);
	for (size_t i = 0; i < n && !rc; i++)
		rc = put_one(s, txn, &e[i], now);
	if (rc) {
		mdb_txn_abort(txn);
		return rc;
	}
	if ((rc = lmdb_errno(mdb_txn_commit(txn))))
		return rc;
	if (removed)
		*removed = gone;
	return 0;
}

int suppress_check_scope(struct suppress_reader *r, const char *rcpt,
			 enum suppress_scope scope, const char *scope_value,
			 time_t now, struct suppress_hit *hit)
{
	const char *at = strrchr(rcpt, '@');
	int rc;

	if (!at || !addr_ok(rcpt))
		return -EINVAL;
	if ((rc = lmdb_errno(mdb_txn_renew(r->txn))))
		return rc;
	rc = probe(r, scope, scope_value, rcpt, now, hit);
	if (rc == 0)
		rc = probe(r, scope, scope_value, at, now, hit);
	mdb_txn_reset(r->txn);
	return rc;
}
