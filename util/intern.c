/*
 * util/intern.c - shared, refcounted copies of repeating strings (see
 * intern.h).  The table holds one reference to each entry; only its
 * owning thread hands out more, the others only give theirs back, so an
 * entry whose count the owner reads as 1 is held by nobody else and may
 * go.
 *
 * Threads: the table's owner, but intern_unref (any thread).
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"
#include "util/intern.h"
#include "util/util.h"

/* Recent first sightings remembered: a direct-mapped filter of hashes. */
#define SEEN_SLOTS 1024

struct ient {
	_Atomic uint32_t refs;		/* the table's, if in it, + holders' */
	uint64_t hash;
	char s[];
};

struct intern_tab {
	struct hash_tab tab;		/* struct ient */
	size_t max;
	uint64_t seen[SEEN_SLOTS];	/* hash | 1 of a first sighting; 0 none */
};

static struct ient *entry_of(const char *s)
{
	return (struct ient *)(void *)(s - offsetof(struct ient, s));
}

static uint64_t ient_hash(const void *item)
{
	return ((const struct ient *)item)->hash;
}

static bool ient_eq(const void *item, const void *key)
{
	return strcmp(((const struct ient *)item)->s, key) == 0;
}

static void ient_drop(struct ient *e)
{
	/* acq_rel: whoever frees sees every holder's reads done */
	if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
		free(e);
}

struct intern_tab *intern_tab_new(size_t max)
{
	struct intern_tab *t = xcalloc(1, sizeof(*t));

	t->max = max ? max : 1;
	return t;
}

void intern_tab_free(struct intern_tab *t)
{
	if (!t)
		return;
	HASH_TAB_EACH(&t->tab, struct ient, e)
		ient_drop(e);
	hash_tab_free(&t->tab);
	free(t);
}

/*
 * sweep - drop the entries only the table holds.  hash_tab has no
 * removal, so the survivors go into a fresh table; this runs only when
 * the table is full.
 */
static void sweep(struct intern_tab *t)
{
	struct hash_tab keep = { 0 };

	HASH_TAB_EACH(&t->tab, struct ient, e) {
		if (atomic_load_explicit(&e->refs, memory_order_acquire) == 1)
			free(e);
		else
			hash_tab_add(&keep, e->hash, e, ient_hash);
	}
	hash_tab_free(&t->tab);
	t->tab = keep;
}

const char *intern_get(struct intern_tab *t, const char *s)
{
	uint64_t h = hash_mix(hash_str(HASH_SEED, s));
	struct ient *e = hash_tab_find(&t->tab, h, ient_eq, s);

	if (e) {
		/* relaxed: only this thread adds references */
		atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
		return e->s;
	}
	uint64_t *seen = &t->seen[h % SEEN_SLOTS];
	if (*seen != (h | 1)) {
		*seen = h | 1;		/* the first sighting: not shared yet */
		return NULL;
	}
	if (t->tab.count >= t->max)
		sweep(t);
	if (t->tab.count >= t->max)
		return NULL;
	size_t len = strlen(s) + 1;
	e = xmalloc(sizeof(*e) + len);
	atomic_init(&e->refs, 2);	/* the table's and the caller's */
	e->hash = h;
	memcpy(e->s, s, len);
	hash_tab_add(&t->tab, h, e, ient_hash);
	return e->s;
}

void intern_unref(const char *s)
{
	if (s)
		ient_drop(entry_of(s));
}

size_t intern_count(const struct intern_tab *t)
{
	return t->tab.count;
}
