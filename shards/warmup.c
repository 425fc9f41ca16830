/*
 * shards/warmup.c - warm-up caps (pure) and the per-shard counter table
 * (see warmup.h).  Threads: the table belongs to its shard.
 */
#include <stdlib.h>
#include <string.h>

#include "shards/warmup.h"
#include "util/util.h"

uint32_t warmup_cap(const struct cfg_daily *d, int64_t first_day, int64_t today)
{
	if (!d->count)
		return WARMUP_NO_CAP;
	int64_t k = first_day && today > first_day ? today - first_day : 0;
	uint32_t i = k >= (int64_t)d->count ? d->count - 1 : (uint32_t)k;
	return d->per_day[i] == CFG_DAILY_UNLIMITED ? WARMUP_NO_CAP : d->per_day[i];
}

static size_t key_hash(const char *k, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 1099511628211ull;
	return (size_t)(h % n);
}

static void grow(struct warm_table *t)
{
	size_t n = t->nbuckets ? t->nbuckets * 2 : 64;
	struct warm_entry **b = xcalloc(n, sizeof(*b));

	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct warm_entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			size_t h = key_hash(e->key, n);
			e->next = b[h];
			b[h] = e;
		}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

struct warm_entry *warm_get(struct warm_table *t, const char *key,
			    const struct retry_table *seed, int64_t today)
{
	struct warm_entry *e = NULL;

	if (t->nbuckets)
		for (e = t->buckets[key_hash(key, t->nbuckets)]; e; e = e->next)
			if (strcmp(e->key, key) == 0)
				break;
	if (!e) {
		if (t->count >= t->nbuckets)
			grow(t);
		size_t len = strlen(key) + 1;
		e = xcalloc(1, sizeof(*e) + len);
		memcpy(e->key, key, len);
		if (!retry_table_warm(seed, key, &e->w))
			e->w = (struct retry_warm){ 0 };
		size_t h = key_hash(key, t->nbuckets);
		e->next = t->buckets[h];
		t->buckets[h] = e;
		t->count++;
	}
	if (e->w.day != today) {
		e->w.day = today;
		e->w.sent = 0;
	}
	return e;
}

void warm_table_free(struct warm_table *t)
{
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct warm_entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	free(t->buckets);
	*t = (struct warm_table){ 0 };
}
