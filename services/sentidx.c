/*
 * services/sentidx.c - the delivered-message index (services/sentidx.h).
 *
 * One LMDB database; a key is the delivery day (8 decimal digits of days
 * since 1970, so keys sort by day) and the Message-ID.  A lookup probes
 * each kept day from the newest; expiry deletes the oldest days' keys a
 * slice per put, so no single transaction holds the writer for long.
 *
 * Threads: see the header.  MDB_NOTLS lets each reader keep one read
 * transaction that it resets and renews, as the suppression store does.
 */
#include <errno.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "util/util.h"

#include "services/lmdb_env.h"
#include "services/sentidx.h"

#define DAY_DIGITS 8
#define MSGID_MAX 400		/* longer Message-IDs are not indexed */
#define VALUE_MAX 4096		/* sender, job, vmta and recipients */
#define RCPTS_MAX 64		/* recipients kept per message */
#define EXPIRE_SLICE 10000	/* expired keys deleted per put */

struct sentidx {
	MDB_env *env;
	MDB_dbi dbi;
	unsigned keep_days;
};

struct sentidx_reader {
	struct sentidx *x;
	MDB_txn *txn;
	char value[VALUE_MAX + 1];
};

/* make_key - "DDDDDDDD" day + Message-ID without <> or blanks; its
 * length, or -EINVAL when the ID is empty or too long */
static int make_key(char *buf, size_t cap, long day, const char *msgid)
{
	const char *p = msgid, *end = msgid + strlen(msgid);

	while (p < end && (*p == ' ' || *p == '\t' || *p == '<'))
		p++;
	while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '>' ||
			   end[-1] == '\r' || end[-1] == '\n'))
		end--;
	size_t n = (size_t)(end - p);
	if (!n || n > MSGID_MAX || DAY_DIGITS + n + 1 > cap)
		return -EINVAL;
	snprintf(buf, cap, "%0*ld", DAY_DIGITS, day);
	memcpy(buf + DAY_DIGITS, p, n);
	buf[DAY_DIGITS + n] = '\0';
	return (int)(DAY_DIGITS + n);
}

int sentidx_open(const char *dir, unsigned keep_days, struct sentidx **out,
		 char *err, size_t errlen)
{
	struct sentidx *x = xcalloc(1, sizeof(*x));
	int rc;

	x->keep_days = keep_days < 1 ? 1 : keep_days > 30 ? 30 : keep_days;
	rc = lmdb_env_open_dir("sent index", dir, (uint64_t)16 << 30, 512, MDB_NOSYNC,
			       &x->env, &x->dbi, err, errlen);
	if (rc < 0) {
		free(x);
		return rc;
	}
	*out = x;
	return 0;
}

void sentidx_close(struct sentidx *x)
{
	if (!x)
		return;
	mdb_env_sync(x->env, 1);
	mdb_env_close(x->env);
	free(x);
}

/* has_rcpt - is rcpt among the value's recipients (from offset off)? */
static bool has_rcpt(const char *v, size_t len, size_t off, const char *rcpt, size_t *count)
{
	*count = 0;
	for (size_t i = off; i < len;) {
		size_t n = strnlen(v + i, len - i);
		if (n == strlen(rcpt) && strncasecmp(v + i, rcpt, n) == 0)
			return true;
		(*count)++;
		i += n + 1;
	}
	return false;
}

/* head_len - bytes of sender\0job\0vmta\0 at the value's start */
static size_t head_len(const char *v, size_t len)
{
	size_t off = 0;

	for (int k = 0; k < 3 && off < len; k++)
		off += strnlen(v + off, len - off) + 1;
	return off;
}

static int put_one(struct sentidx *x, MDB_txn *txn, const struct sentidx_entry *e, long day)
{
	char key[DAY_DIGITS + MSGID_MAX + 2], val[VALUE_MAX];
	int klen = make_key(key, sizeof(key), day, e->message_id);
	MDB_val k = { .mv_size = (size_t)klen, .mv_data = key }, old;
	size_t len = 0, rl = strlen(e->rcpt);

	if (klen < 0)
		return 0;	/* not indexable: nothing to match by */
	int rc = mdb_get(txn, x->dbi, &k, &old);
	if (rc == 0 && old.mv_size <= sizeof(val)) {
		size_t count;
		memcpy(val, old.mv_data, old.mv_size);
		len = old.mv_size;
		if (has_rcpt(val, len, head_len(val, len), e->rcpt, &count) ||
		    count >= RCPTS_MAX || len + rl + 1 > sizeof(val))
			return 0;
	} else if (rc == 0 || rc == MDB_NOTFOUND) {
		const char *parts[3] = { e->mail_from, e->job_id, e->vmta };
		for (int i = 0; i < 3; i++) {
			const char *s = parts[i] ? parts[i] : "";
			size_t n = strnlen(s, 320);
			memcpy(val + len, s, n);
			len += n;
			val[len++] = '\0';
		}
		if (len + rl + 1 > sizeof(val))
			return 0;
	} else {
		return lmdb_errno(rc);
	}
	memcpy(val + len, e->rcpt, rl);
	len += rl;
	val[len++] = '\0';
	MDB_val v = { .mv_size = len, .mv_data = val };
	return lmdb_errno(mdb_put(txn, x->dbi, &k, &v, 0));
}

/* expire - delete up to EXPIRE_SLICE keys older than the kept days */
static int expire(struct sentidx *x, MDB_txn *txn, long today)
{
	char cutoff[24];	/* a long in decimal; DAY_DIGITS of it are used */
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, n = 0;

	snprintf(cutoff, sizeof(cutoff), "%0*ld", DAY_DIGITS, today - (long)x->keep_days + 1);
	if ((rc = mdb_cursor_open(txn, x->dbi, &cur)))
		return lmdb_errno(rc);
	while (n < EXPIRE_SLICE && (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0 &&
	       k.mv_size >= DAY_DIGITS && memcmp(k.mv_data, cutoff, DAY_DIGITS) < 0) {
		if ((rc = mdb_cursor_del(cur, 0)))
			break;
		n++;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : lmdb_errno(rc);
}

int sentidx_put(struct sentidx *x, const struct sentidx_entry *e, size_t n, time_t now)
{
	long day = (long)(now / 86400);
	MDB_txn *txn;
	int rc = lmdb_errno(mdb_txn_begin(x->env, NULL, 0, &txn));

	if (rc)
		return rc;
	rc = expire(x, txn, day);
	for (size_t i = 0; i < n && !rc; i++)
		if (e[i].message_id && e[i].rcpt)
			rc = put_one(x, txn, &e[i], day);
	if (rc) {
		mdb_txn_abort(txn);
		return rc;
	}
	return lmdb_errno(mdb_txn_commit(txn));
}

int sentidx_reader_new(struct sentidx *x, struct sentidx_reader **out)
{
	struct sentidx_reader *r = xcalloc(1, sizeof(*r));
	int rc = lmdb_read_txn_new(x->env, &r->txn);

	if (rc) {
		free(r);
		return rc;
	}
	r->x = x;
	*out = r;
	return 0;
}

void sentidx_reader_free(struct sentidx_reader *r)
{
	if (!r)
		return;
	mdb_txn_abort(r->txn);
	free(r);
}

int sentidx_get(struct sentidx_reader *r, const char *message_id, struct sentidx_hit *hit)
{
	long today = (long)(time(NULL) / 86400);
	char key[DAY_DIGITS + MSGID_MAX + 2];
	int rc = lmdb_errno(mdb_txn_renew(r->txn)), found = 0;

	if (rc)
		return rc;
	for (unsigned d = 0; d < r->x->keep_days && !found; d++) {
		int klen = make_key(key, sizeof(key), today - (long)d, message_id);
		if (klen < 0)
			break;
		MDB_val k = { .mv_size = (size_t)klen, .mv_data = key }, v;
		int mrc = mdb_get(r->txn, r->x->dbi, &k, &v);
		if (mrc == MDB_NOTFOUND)
			continue;
		if (mrc) {
			rc = lmdb_errno(mrc);
			break;
		}
		size_t len = v.mv_size < VALUE_MAX ? v.mv_size : VALUE_MAX;
		memcpy(r->value, v.mv_data, len);
		r->value[len] = '\0';
		memset(hit, 0, sizeof(*hit));
		hit->day = (time_t)(today - (long)d) * 86400;
		const char **heads[3] = { &hit->mail_from, &hit->job_id, &hit->vmta };
		size_t off = 0;
		for (int i = 0; i < 3 && off < len; i++) {
			*heads[i] = r->value[off] ? r->value + off : NULL;
			off += strnlen(r->value + off, len - off) + 1;
		}
		while (off < len) {
			if (hit->nrcpts < ARRAY_SIZE(hit->rcpts))
				hit->rcpts[hit->nrcpts] = r->value + off;
			hit->nrcpts++;
			off += strnlen(r->value + off, len - off) + 1;
		}
		found = 1;
	}
	mdb_txn_reset(r->txn);
	return rc < 0 ? rc : found;
}
