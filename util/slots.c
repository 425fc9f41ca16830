/*
 * util/slots.c - generation-checked slot tables (see slots.h).  Owned by
 * one thread; no shared state.
 */
#include <stdlib.h>
#include <string.h>

#include "util/slots.h"
#include "util/util.h"

#define CHUNK 256u

void slot_table_init(struct slot_table *t, size_t elsize)
{
	BUG_ON(elsize < sizeof(struct slot_hdr));
	memset(t, 0, sizeof(*t));
	t->elsize = elsize;
}

void slot_table_destroy(struct slot_table *t)
{
	for (uint32_t i = 0; i < t->nchunks; i++)
		free(t->chunks[i]);
	free(t->chunks);
	free(t->free_slots);
	memset(t, 0, sizeof(*t));
}

static struct slot_hdr *hdr_at(const struct slot_table *t, uint32_t i)
{
	return (struct slot_hdr *)(t->chunks[i / CHUNK] + (size_t)(i % CHUNK) * t->elsize);
}

void *slot_alloc(struct slot_table *t)
{
	uint32_t slot;

	if (t->nfree) {
		slot = t->free_slots[--t->nfree];
	} else {
		BUG_ON(t->count >= SLOT_MAX);
		if (t->count == t->nchunks * CHUNK) {
			t->chunks = xrealloc(t->chunks, (t->nchunks + 1) * sizeof(*t->chunks));
			t->chunks[t->nchunks++] = xcalloc(CHUNK, t->elsize);
			t->free_slots = xrealloc(t->free_slots,
						 (size_t)t->nchunks * CHUNK * sizeof(uint32_t));
		}
		slot = t->count++;
	}
	struct slot_hdr *h = hdr_at(t, slot);
	uint32_t gen = h->gen + 1;
	memset(h, 0, t->elsize);
	h->slot = slot;
	h->gen = gen;
	h->used = true;
	t->live++;
	return h;
}

void slot_free(struct slot_table *t, void *item)
{
	struct slot_hdr *h = item;

	BUG_ON(!h->used);
	h->used = false;
	t->free_slots[t->nfree++] = h->slot;
	t->live--;
}

void *slot_get(const struct slot_table *t, uint32_t slot, uint32_t gen)
{
	if (slot >= t->count)
		return NULL;
	struct slot_hdr *h = hdr_at(t, slot);
	return h->used && h->gen == gen ? h : NULL;
}

void *slot_at(const struct slot_table *t, uint32_t i)
{
	if (i >= t->count)
		return NULL;
	struct slot_hdr *h = hdr_at(t, i);
	return h->used ? h : NULL;
}
