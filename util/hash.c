/*
 * util/hash.c - FNV-1a and the open-addressing table.  No state of its
 * own: any thread, each on its own tables.
 */
#include "util/hash.h"

#include <stdlib.h>

#include "util/util.h"

#define FNV_PRIME 0x100000001b3ull

uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * FNV_PRIME;
	return h;
}

uint64_t hash_str(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * FNV_PRIME;
	return h;
}

uint64_t hash_str_lower(uint64_t h, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		h = (h ^ (ch >= 'A' && ch <= 'Z' ? ch + 32u : ch)) * FNV_PRIME;
	}
	return h;
}

uint64_t hash_mix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

void *hash_tab_find(const struct hash_tab *t, uint64_t h, hash_tab_eq_fn *eq,
		    const void *key)
{
	if (!t->cap)
		return NULL;
	for (size_t i = h & (t->cap - 1); t->slot[i]; i = (i + 1) & (t->cap - 1))
		if (eq(t->slot[i], key))
			return t->slot[i];
	return NULL;
}

static void place(void **slot, size_t cap, uint64_t h, void *item)
{
	size_t i = h & (cap - 1);

	while (slot[i])
		i = (i + 1) & (cap - 1);
	slot[i] = item;
}

void hash_tab_add(struct hash_tab *t, uint64_t h, void *item, hash_tab_hash_fn *hash_of)
{
	if ((t->count + 1) * 2 > t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 64;
		void **nslot = xcalloc(ncap, sizeof(*nslot));
		for (size_t i = 0; i < t->cap; i++)
			if (t->slot[i])
				place(nslot, ncap, hash_of(t->slot[i]), t->slot[i]);
		free(t->slot);
		t->slot = nslot;
		t->cap = ncap;
	}
	place(t->slot, t->cap, h, item);
	t->count++;
}

void *hash_tab_remove(struct hash_tab *t, uint64_t h, hash_tab_eq_fn *eq, const void *key,
		      hash_tab_hash_fn *hash_of)
{
	if (!t->cap)
		return NULL;
	size_t mask = t->cap - 1, hole = h & mask;

	while (t->slot[hole] && !eq(t->slot[hole], key))
		hole = (hole + 1) & mask;
	void *item = t->slot[hole];
	if (!item)
		return NULL;
	t->slot[hole] = NULL;
	t->count--;
	/*
	 * Backward shift: an item further along the run may fill the hole
	 * unless its home slot lies (cyclically) after the hole and at or
	 * before where it sits, where a lookup would stop at the hole first.
	 */
	for (size_t j = (hole + 1) & mask; t->slot[j]; j = (j + 1) & mask) {
		size_t home = hash_of(t->slot[j]) & mask;
		bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
		if (stays)
			continue;
		t->slot[hole] = t->slot[j];
		t->slot[j] = NULL;
		hole = j;
	}
	return item;
}

void hash_tab_free(struct hash_tab *t)
{
	free(t->slot);
	*t = (struct hash_tab){ 0 };
}
