/*
 * shards/warmup.c - warm-up caps (pure) and the per-shard counter table
 * (see warmup.h).  Threads: the table belongs to its shard.
 */
#include <stdlib.h>
#include <string.h>

#include "shards/warmup.h"
#include "util/hash.h"
#include "util/util.h"

uint32_t warmup_cap(const struct cfg_daily *d, int64_t first_day, int64_t today)
{
	if (!d->count)
		return WARMUP_NO_CAP;
	int64_t k = first_day && today > first_day ? today - first_day : 0;
	uint32_t i = k >= (int64_t)d->count ? d->count - 1 : (uint32_t)k;
	return d->per_day[i] == CFG_DAILY_UNLIMITED ? WARMUP_NO_CAP : d->per_day[i];
}

static uint64_t entry_hash(const void *item)
{
	return hash_str(HASH_SEED, ((const struct warm_entry *)item)->key);
}

static bool entry_key_eq(const void *item, const void *key)
{
	return strcmp(((const struct warm_entry *)item)->key, key) == 0;
}

struct warm_entry *warm_get(struct warm_table *t, const char *key,
			    const struct retry_table *seed, int64_t today)
{
	uint64_t h = hash_str(HASH_SEED, key);
	struct warm_entry *e = hash_tab_find(&t->entries, h, entry_key_eq, key);

	if (!e) {
		size_t len = strlen(key) + 1;
		e = xcalloc(1, sizeof(*e) + len);
		memcpy(e->key, key, len);
		if (!retry_table_warm(seed, key, &e->w))
			e->w = (struct retry_warm){ 0 };
		hash_tab_add(&t->entries, h, e, entry_hash);
	}
	if (e->w.day != today) {
		e->w.day = today;
		e->w.sent = 0;
	}
	return e;
}

void warm_table_free(struct warm_table *t)
{
	HASH_TAB_EACH(&t->entries, struct warm_entry, e)
		free(e);
	hash_tab_free(&t->entries);
}
