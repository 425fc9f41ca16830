/*
 * util/slots.h - generation-checked slot tables, and the one pair of
 * helpers that pack and unpack io_uring user_data.
 *
 * An io_uring completion names its object by (kind, slot, generation):
 * when a slot is freed and reused, the generation changes, so a late
 * completion for the old object is recognised as stale instead of being
 * applied to the new one.  Items never move (they live in fixed chunks),
 * so a pointer to a live item stays valid while others come and go.
 *
 * A table belongs to one thread.  Every item starts with a struct
 * slot_hdr; slot_alloc() zeroes the rest.
 */
#ifndef COREMTA_UTIL_SLOTS_H
#define COREMTA_UTIL_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SLOT_MAX 0xffffffu		/* 24 bits of user_data */

struct slot_hdr {
	uint32_t slot;
	uint32_t gen;
	bool used;
};

struct slot_table {
	size_t elsize;
	unsigned char **chunks;
	uint32_t nchunks;
	uint32_t count;			/* slots ever handed out: 0..count-1 */
	uint32_t *free_slots;
	uint32_t nfree;
	uint32_t live;
};

void slot_table_init(struct slot_table *t, size_t elsize);
/* slot_table_destroy - free the storage (not what items point to). */
void slot_table_destroy(struct slot_table *t);
/* slot_alloc - a zeroed item with a new generation; aborts past SLOT_MAX. */
void *slot_alloc(struct slot_table *t);
void slot_free(struct slot_table *t, void *item);
/* slot_get - the live item at slot with that generation, else NULL. */
void *slot_get(const struct slot_table *t, uint32_t slot, uint32_t gen);
/* slot_at - the item at slot i (< count) if live, else NULL: for sweeps. */
void *slot_at(const struct slot_table *t, uint32_t i);

/* user_data: 8 bits of kind, 24 bits of slot, 32 bits of generation. */
static inline uint64_t ud_pack(unsigned kind, uint32_t slot, uint32_t gen)
{
	return ((uint64_t)(kind & 0xff) << 56) | ((uint64_t)(slot & SLOT_MAX) << 32) | gen;
}

static inline void ud_unpack(uint64_t ud, unsigned *kind, uint32_t *slot,
			     uint32_t *gen)
{
	*kind = (unsigned)(ud >> 56);
	*slot = (uint32_t)(ud >> 32) & SLOT_MAX;
	*gen = (uint32_t)ud;
}

#endif
