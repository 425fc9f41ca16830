/*
 * shards/retry.c - the retry state journal (see retry.h): loading and
 * compacting the retry files at start, lookups, and the record format.
 *
 *   r MSGID(hex) RCPT ATTEMPTS NEXT_UNIX DELAY_S VMTA|-
 *   b DOMAIN/VMTA 0|1 SINCE_UNIX
 *   w SOURCE_IP/SITE FIRST_DAY DAY SENT
 *
 * Threads: load/free on one thread (the shards' loader); lookups
 * read-only afterwards, from any thread that saw it published.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shards/retry.h"

#define LOAD_CHUNK	(1u << 20)	/* read at a time */
#define LINE_MAX_LEN	1024		/* longer than any record */

/*
 * One recipient's state, 32 bytes: a restart on a million deferred
 * recipients keeps a million of these (DESIGN.md, "Memory"), so the
 * virtual-mta is an index into the table's names, not a copy.
 */
struct rent {
	uint64_t msg_id;		/* 0: free slot */
	int64_t next_unix;
	uint32_t rcpt;
	uint32_t attempts;
	uint32_t delay_s;
	uint32_t vmta;			/* index into retry_table.vmtas */
};

struct bent {
	char *queue;
	bool on;
	int64_t since;
};

struct went {
	char *key;
	struct retry_warm w;
};

struct retry_table {
	struct rent *r;
	size_t rcap, nr;		/* rcap a power of two */
	char **vmtas;			/* distinct virtual-mta names; [0] = "" */
	uint32_t nvmtas;
	struct bent *b;
	size_t nb;
	struct went *w;			/* sorted by key once loaded */
	size_t nw;
	size_t skipped;			/* lines that were not records */
};

static size_t slot_of(uint64_t msg_id, uint32_t rcpt, size_t mask)
{
	uint64_t h = (msg_id ^ ((uint64_t)rcpt << 32 | rcpt)) * 0x9e3779b97f4a7c15ull;

	return (size_t)(h >> 17) & mask;
}

static struct rent *rent_find(const struct retry_table *t, uint64_t msg_id, uint32_t rcpt)
{
	if (!t->rcap)
		return NULL;
	for (size_t i = slot_of(msg_id, rcpt, t->rcap - 1);; i = (i + 1) & (t->rcap - 1)) {
		struct rent *e = &t->r[i];
		if (!e->msg_id || (e->msg_id == msg_id && e->rcpt == rcpt))
			return e;
	}
}

/* vmta_index - name's index in t->vmtas, added if new (a few distinct names). */
static uint32_t vmta_index(struct retry_table *t, const char *name)
{
	if (!t->nvmtas) {
		t->vmtas = xmalloc(sizeof(char *));
		t->vmtas[t->nvmtas++] = xstrdup("");
	}
	for (uint32_t i = 0; i < t->nvmtas; i++)
		if (strcmp(t->vmtas[i], name) == 0)
			return i;
	t->vmtas = xrealloc(t->vmtas, (t->nvmtas + 1) * sizeof(char *));
	t->vmtas[t->nvmtas] = xstrdup(name);
	return t->nvmtas++;
}

/* rent_state - e as the API shows it. */
static void rent_state(const struct retry_table *t, const struct rent *e,
		       struct retry_rcpt *out)
{
	*out = (struct retry_rcpt){
		.attempts = e->attempts, .next_unix = e->next_unix, .delay_s = e->delay_s,
	};
	/* names came through parse_word or retry_rcpt.vmta: they fit */
	const char *name = t->vmtas[e->vmta];
	size_t n = strnlen(name, sizeof(out->vmta) - 1);
	memcpy(out->vmta, name, n);
	out->vmta[n] = '\0';
}

/*
 * rent_reserve - room for <n> records at half load.  The new table is
 * written over before it is probed: probing fresh calloc'd pages maps the
 * shared zero page, and the write after it costs a copy-on-write fault
 * and a TLB shoot-down on every CPU the daemon's threads ran on, which at
 * a million records made the load (and the start, before the listener
 * answers) several times slower.
 */
static void rent_reserve(struct retry_table *t, size_t n)
{
	size_t cap = t->rcap ? t->rcap : 1024;

	while (n * 2 > cap)
		cap *= 2;
	if (cap == t->rcap)
		return;
	struct retry_table g = { .rcap = cap };
	g.r = xmalloc(cap * sizeof(*g.r));
	memset(g.r, 0, cap * sizeof(*g.r));
	for (size_t i = 0; i < t->rcap; i++)
		if (t->r[i].msg_id) {
			*rent_find(&g, t->r[i].msg_id, t->r[i].rcpt) = t->r[i];
			g.nr++;
		}
	free(t->r);
	t->r = g.r;
	t->rcap = g.rcap;
}

static void rent_put(struct retry_table *t, uint64_t msg_id, uint32_t rcpt,
		     const struct retry_rcpt *st)
{
	rent_reserve(t, t->nr + 1);
	struct rent *e = rent_find(t, msg_id, rcpt);
	if (!e->msg_id)
		t->nr++;
	*e = (struct rent){
		.msg_id = msg_id, .rcpt = rcpt, .attempts = st->attempts,
		.next_unix = st->next_unix, .delay_s = st->delay_s,
		.vmta = vmta_index(t, st->vmta),
	};
}

static void bent_put(struct retry_table *t, const char *queue, bool on, int64_t since)
{
	for (size_t i = 0; i < t->nb; i++)
		if (strcmp(t->b[i].queue, queue) == 0) {
			t->b[i].on = on;
			t->b[i].since = since;
			return;
		}
	t->b = xrealloc(t->b, (t->nb + 1) * sizeof(*t->b));
	t->b[t->nb++] = (struct bent){ .queue = xstrdup(queue), .on = on, .since = since };
}

static int went_cmp(const void *a, const void *b)
{
	return strcmp(((const struct went *)a)->key, ((const struct went *)b)->key);
}

/* went_put - while loading: appended; sort_warm keeps the newest of a key */
static void went_put(struct retry_table *t, const char *key, const struct retry_warm *w)
{
	t->w = xrealloc(t->w, (t->nw + 1) * sizeof(*t->w));
	t->w[t->nw++] = (struct went){ .key = xstrdup(key), .w = *w };
}

/*
 * sort_warm - sorted by key, one record per key: the newest, which has
 * the later day or, on the same day, the larger count (counts only grow
 * within a day), whatever order the files were read in.
 */
static void sort_warm(struct retry_table *t)
{
	size_t n = 0;

	if (t->nw)
		qsort(t->w, t->nw, sizeof(*t->w), went_cmp);
	for (size_t i = 0; i < t->nw; i++) {
		if (n && strcmp(t->w[n - 1].key, t->w[i].key) == 0) {
			struct retry_warm *k = &t->w[n - 1].w, *o = &t->w[i].w;
			if (o->day > k->day || (o->day == k->day && o->sent > k->sent))
				*k = *o;
			free(t->w[i].key);
			continue;
		}
		t->w[n++] = t->w[i];
	}
	t->nw = n;
}

/*
 * The record parsers are strict, by hand: a million "r" lines through
 * sscanf took most of a restart's load, and sscanf also took a line cut
 * short by a crash ("... 18000" of 1800000000) as a whole one.
 */

/* skip_blank - past exactly one ' '; false if there is none */
static bool skip_blank(const char **p)
{
	if (**p != ' ')
		return false;
	(*p)++;
	return true;
}

/* parse_dec - a decimal of 1..19 digits, at most max */
static bool parse_dec(const char **p, uint64_t max, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;
	int n = 0;

	while (*s >= '0' && *s <= '9' && n < 19) {
		v = v * 10 + (uint64_t)(*s++ - '0');
		n++;
	}
	if (!n || (*s >= '0' && *s <= '9') || v > max)
		return false;
	*p = s;
	*out = v;
	return true;
}

/* parse_hex - 1..16 lower- or upper-case hex digits */
static bool parse_hex(const char **p, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;
	int n = 0;

	for (;; n++, s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if ((*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
			d = (unsigned)((*s | 0x20) - 'a' + 10);
		else
			break;
		if (n == 16)
			return false;
		v = v << 4 | d;
	}
	if (!n)
		return false;
	*p = s;
	*out = v;
	return true;
}

/* parse_word - 1..cap-1 octets up to the next blank or the line's end */
static bool parse_word(const char **p, char *out, size_t cap)
{
	size_t n = strcspn(*p, " ");

	if (!n || n >= cap)
		return false;
	memcpy(out, *p, n);
	out[n] = '\0';
	*p += n;
	return true;
}

/*
 * parse_line - one record (without its newline) into t; false if it is
 * not one (torn, corrupt, or of a later format).
 */
static bool parse_line(struct retry_table *t, const char *p, int64_t oldest)
{
	uint64_t id, rcpt, attempts, next, delay, on, since;
	char word[256];

	switch (*p++) {
	case 'r': {
		struct retry_rcpt st;
		if (!skip_blank(&p) || !parse_hex(&p, &id) || !id || !skip_blank(&p) ||
		    !parse_dec(&p, UINT32_MAX, &rcpt) || !skip_blank(&p) ||
		    !parse_dec(&p, UINT32_MAX, &attempts) || !skip_blank(&p) ||
		    !parse_dec(&p, INT64_MAX, &next) || !skip_blank(&p) ||
		    !parse_dec(&p, UINT32_MAX, &delay) || !skip_blank(&p) ||
		    !parse_word(&p, st.vmta, sizeof(st.vmta)) || *p)
			return false;
		if ((int64_t)next < oldest)
			return true;
		if (strcmp(st.vmta, "-") == 0)
			st.vmta[0] = '\0';
		st.attempts = (uint32_t)attempts;
		st.next_unix = (int64_t)next;
		st.delay_s = (uint32_t)delay;
		rent_put(t, id, (uint32_t)rcpt, &st);
		return true;
	}
	case 'b':
		if (!skip_blank(&p) || !parse_word(&p, word, sizeof(word)) || !skip_blank(&p) ||
		    !parse_dec(&p, 1, &on) || !skip_blank(&p) ||
		    !parse_dec(&p, INT64_MAX, &since) || *p)
			return false;
		bent_put(t, word, on != 0, (int64_t)since);
		return true;
	case 'w': {
		struct retry_warm w;
		if (!skip_blank(&p) || !parse_word(&p, word, sizeof(word)) || !skip_blank(&p) ||
		    !parse_dec(&p, INT64_MAX, &next) || !skip_blank(&p) ||
		    !parse_dec(&p, INT64_MAX, &since) || !skip_blank(&p) ||
		    !parse_dec(&p, UINT32_MAX, &attempts) || *p)
			return false;
		w = (struct retry_warm){ .first_day = (int64_t)next, .day = (int64_t)since,
					 .sent = (uint32_t)attempts };
		went_put(t, word, &w);
		return true;
	}
	default:
		return false;
	}
}

/*
 * load_file - every record of path.  A line that is not a record, and a
 * last line without its newline (an append a crash cut short), are
 * counted in t->skipped and left: a recipient whose record is lost is
 * retried early, never lost.
 */
static void load_file(struct retry_table *t, const char *path, int64_t oldest)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct strbuf in = { 0 };
	struct stat sb;

	if (fd < 0)
		return;
	/*
	 * Most of the growth at once: a record line is about 45 bytes; a
	 * low guess (64) costs one more growth, a high one a table twice
	 * the size for as long as the daemon runs.
	 */
	if (fstat(fd, &sb) == 0 && sb.st_size > 0)
		rent_reserve(t, t->nr + (size_t)sb.st_size / 64);
	for (;;) {
		sb_reserve(&in, LOAD_CHUNK + 1);
		ssize_t r = read(fd, in.buf + in.len, LOAD_CHUNK);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		in.len += (size_t)r;
		in.buf[in.len] = '\0';
		char *line = in.buf, *nl;
		while ((nl = memchr(line, '\n', in.len - (size_t)(line - in.buf)))) {
			*nl = '\0';
			/* a NUL inside ends the line early: then *p is not at its end */
			if ((size_t)(nl - line) != strlen(line) || !parse_line(t, line, oldest))
				t->skipped++;
			line = nl + 1;
		}
		size_t rest = in.len - (size_t)(line - in.buf);
		memmove(in.buf, line, rest);
		in.len = rest;
		/* a "line" longer than any record: count it once, drop it */
		if (in.len > LINE_MAX_LEN) {
			t->skipped++;
			in.len = 0;
		}
	}
	if (in.len)
		t->skipped++;
	sb_free(&in);
	close(fd);
}

void retry_put_rcpt(struct strbuf *sb, uint64_t msg_id, uint32_t rcpt,
		    const struct retry_rcpt *st)
{
	static const char hex[] = "0123456789abcdef";
	char id[18] = "r ";

	/* by hand, not sb_printf: a shard writes one per deferral */
	for (int i = 0; i < 16; i++)
		id[2 + i] = hex[(msg_id >> (4 * (15 - i))) & 15];
	sb_add(sb, id, sizeof(id));
	sb_addc(sb, ' ');
	sb_add_u64(sb, rcpt);
	sb_addc(sb, ' ');
	sb_add_u64(sb, st->attempts);
	sb_addc(sb, ' ');
	/* before 1970 is as stale as 1970 */
	sb_add_u64(sb, st->next_unix > 0 ? (uint64_t)st->next_unix : 0);
	sb_addc(sb, ' ');
	sb_add_u64(sb, st->delay_s);
	sb_addc(sb, ' ');
	if (st->vmta[0])
		sb_add(sb, st->vmta, strnlen(st->vmta, sizeof(st->vmta) - 1));
	else
		sb_addc(sb, '-');
	sb_addc(sb, '\n');
}

void retry_put_backoff(struct strbuf *sb, const char *queue, bool on, int64_t since)
{
	sb_printf(sb, "b %s %u %lld\n", queue, on ? 1u : 0u, (long long)since);
}

void retry_put_warm(struct strbuf *sb, const char *key, const struct retry_warm *w)
{
	sb_printf(sb, "w %s %lld %lld %u\n", key, (long long)w->first_day, (long long)w->day,
		  w->sent);
}

/*
 * compact - the table as one file, retry-base.log; the shards' files go,
 * except retry-<i>.log for i < nkeep, which this run's shards hold open:
 * those are emptied instead (their shards write nothing until the load is
 * done, so all they held is in the base now).
 */
static int compact(const struct retry_table *t, const char *dir, char **old, size_t nold,
		   uint32_t nkeep, char *err, size_t errlen)
{
	char *tmp = xasprintf("%s/retry-base.log.tmp", dir);
	char *base = xasprintf("%s/retry-base.log", dir);
	struct strbuf sb = { 0 };
	int rc = 0;

	for (size_t i = 0; i < t->rcap; i++)
		if (t->r[i].msg_id) {
			struct retry_rcpt st;
			rent_state(t, &t->r[i], &st);
			retry_put_rcpt(&sb, t->r[i].msg_id, t->r[i].rcpt, &st);
		}
	for (size_t i = 0; i < t->nb; i++)
		if (t->b[i].on)
			retry_put_backoff(&sb, t->b[i].queue, true, t->b[i].since);
	for (size_t i = 0; i < t->nw; i++)
		retry_put_warm(&sb, t->w[i].key, &t->w[i].w);
	FILE *f = fopen(tmp, "w");
	if (!f || (sb.len && fwrite(sb.buf, 1, sb.len, f) != sb.len) || fflush(f) != 0 ||
	    fsync(fileno(f)) != 0) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
	}
	if (f && fclose(f) != 0 && !rc) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
	}
	if (!rc && rename(tmp, base) < 0) {
		rc = -errno;
		snprintf(err, errlen, "rename %s: %s", tmp, strerror(errno));
	}
	/* their records are in the base now */
	for (size_t i = 0; !rc && i < nold; i++) {
		const char *name = strrchr(old[i], '/') + 1;
		unsigned idx;
		char end;
		if (sscanf(name, "retry-%u.lo%c", &idx, &end) == 2 && end == 'g' &&
		    idx < nkeep) {
			if (truncate(old[i], 0) < 0) {
				rc = -errno;
				snprintf(err, errlen, "truncate %s: %s", old[i], strerror(errno));
			}
		} else {
			unlink(old[i]);
		}
	}
	sb_free(&sb);
	free(tmp);
	free(base);
	return rc;
}

int retry_table_load(const char *dir, int64_t now, int64_t max_age_s, uint32_t nkeep,
		     struct retry_table **out, char *err, size_t errlen)
{
	struct retry_table *t = xcalloc(1, sizeof(*t));
	char *base = xasprintf("%s/retry-base.log", dir);
	char **old = NULL;
	size_t nold = 0;
	int rc = 0;

	load_file(t, base, now - max_age_s);
	DIR *d = opendir(dir);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d))) {
			size_t n = strlen(de->d_name);
			if (strncmp(de->d_name, "retry-", 6) != 0 || n < 11 ||
			    strcmp(de->d_name + n - 4, ".log") != 0 ||
			    strcmp(de->d_name, "retry-base.log") == 0)
				continue;
			old = xrealloc(old, (nold + 1) * sizeof(*old));
			old[nold] = xasprintf("%s/%s", dir, de->d_name);
			load_file(t, old[nold++], now - max_age_s);
		}
		closedir(d);
		sort_warm(t);
		rc = compact(t, dir, old, nold, nkeep, err, errlen);
	}
	for (size_t i = 0; i < nold; i++)
		free(old[i]);
	free(old);
	free(base);
	/* the state is whole even when it could not be compacted */
	*out = t;
	return rc;
}

size_t retry_table_count(const struct retry_table *t)
{
	return t ? t->nr : 0;
}

size_t retry_table_skipped(const struct retry_table *t)
{
	return t ? t->skipped : 0;
}

void retry_table_free(struct retry_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nb; i++)
		free(t->b[i].queue);
	free(t->b);
	for (size_t i = 0; i < t->nw; i++)
		free(t->w[i].key);
	free(t->w);
	free(t->r);
	for (uint32_t i = 0; i < t->nvmtas; i++)
		free(t->vmtas[i]);
	free(t->vmtas);
	free(t);
}

bool retry_table_rcpt(const struct retry_table *t, uint64_t msg_id, uint32_t rcpt,
		      struct retry_rcpt *out)
{
	const struct rent *e = t ? rent_find(t, msg_id, rcpt) : NULL;

	if (!e || !e->msg_id)
		return false;
	rent_state(t, e, out);
	return true;
}

bool retry_table_backoff(const struct retry_table *t, const char *queue, int64_t *since)
{
	for (size_t i = 0; t && i < t->nb; i++)
		if (strcmp(t->b[i].queue, queue) == 0 && t->b[i].on) {
			*since = t->b[i].since;
			return true;
		}
	return false;
}

bool retry_table_warm(const struct retry_table *t, const char *key, struct retry_warm *out)
{
	struct went k = { .key = (char *)key };
	const struct went *e = t && t->nw ? bsearch(&k, t->w, t->nw, sizeof(*t->w), went_cmp)
					  : NULL;

	if (!e)
		return false;
	*out = e->w;
	return true;
}
