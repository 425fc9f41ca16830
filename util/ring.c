/*
 * util/ring.c - lock-free SPSC rings (see ring.h).  One producer thread
 * and one consumer thread per ring; C11 atomics provide the ordering.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "util/ring.h"
#include "util/util.h"

#define CACHE_LINE 64

struct spsc_ring {
	/* consumer-written */
	_Alignas(CACHE_LINE) _Atomic size_t head;
	size_t tail_cache;		/* consumer's view of tail */
	_Atomic bool sleeping;
	/* producer-written */
	_Alignas(CACHE_LINE) _Atomic size_t tail;
	size_t head_cache;		/* producer's view of head */
	/* read-only after creation */
	_Alignas(CACHE_LINE) size_t mask;
	void **slots;
};

struct spsc_ring *spsc_ring_new(size_t capacity)
{
	struct spsc_ring *r;
	size_t cap = 2;

	while (cap < capacity)
		cap <<= 1;
	BUG_ON(posix_memalign((void **)&r, CACHE_LINE, sizeof(*r)) != 0);
	*r = (struct spsc_ring){ .mask = cap - 1 };
	atomic_init(&r->head, 0);
	atomic_init(&r->tail, 0);
	atomic_init(&r->sleeping, false);
	r->slots = xcalloc(cap, sizeof(*r->slots));
	return r;
}

void spsc_ring_free(struct spsc_ring *r)
{
	if (!r)
		return;
	free(r->slots);
	free(r);
}

size_t spsc_ring_capacity(const struct spsc_ring *r)
{
	return r->mask + 1;
}

size_t spsc_ring_push(struct spsc_ring *r, void *const *items, size_t n)
{
	size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	size_t cap = r->mask + 1;

	if (cap - (tail - r->head_cache) < n)
		r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
	size_t room = cap - (tail - r->head_cache);
	if (n > room)
		n = room;
	for (size_t i = 0; i < n; i++)
		r->slots[(tail + i) & r->mask] = items[i];
	/* one release store publishes the whole batch */
	atomic_store_explicit(&r->tail, tail + n, memory_order_release);
	return n;
}

size_t spsc_ring_pop(struct spsc_ring *r, void **out, size_t max)
{
	size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);

	if (r->tail_cache - head < max)
		r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
	size_t avail = r->tail_cache - head;
	if (max > avail)
		max = avail;
	for (size_t i = 0; i < max; i++)
		out[i] = r->slots[(head + i) & r->mask];
	atomic_store_explicit(&r->head, head + max, memory_order_release);
	return max;
}

size_t spsc_ring_count(const struct spsc_ring *r)
{
	size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	size_t head = atomic_load_explicit(&r->head, memory_order_acquire);

	return tail - head;
}

void spsc_ring_prepare_sleep(struct spsc_ring *r)
{
	/* seq_cst pairs with the producer's check after its publish */
	atomic_store_explicit(&r->sleeping, true, memory_order_seq_cst);
}

void spsc_ring_finish_sleep(struct spsc_ring *r)
{
	atomic_store_explicit(&r->sleeping, false, memory_order_relaxed);
}

bool spsc_ring_consumer_sleeping(const struct spsc_ring *r)
{
	atomic_thread_fence(memory_order_seq_cst);
	return atomic_load_explicit(&r->sleeping, memory_order_relaxed);
}
