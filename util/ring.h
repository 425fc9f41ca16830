/*
 * util/ring.h - bounded single-producer/single-consumer rings of pointers,
 * the only way coremta's threads hand work to each other.
 *
 * Exactly one thread pushes and exactly one thread pops a given ring;
 * either may be any thread.  Indices live on separate cache lines and each
 * side caches the other's index, so a push or pop touches shared memory
 * only when its cached view runs out.  Batches are published with one
 * release store.  A full ring is back-pressure: push returns fewer items
 * than asked and the caller slows down; nothing is dropped.
 *
 * The ring does not own what the pointers point to: ownership passes
 * from the producer to the consumer with each item.
 */
#ifndef COREMTA_UTIL_RING_H
#define COREMTA_UTIL_RING_H

#include <stdbool.h>
#include <stddef.h>

struct spsc_ring;

/* spsc_ring_new - capacity is rounded up to a power of two (>= 2). */
struct spsc_ring *spsc_ring_new(size_t capacity);
void spsc_ring_free(struct spsc_ring *r);
size_t spsc_ring_capacity(const struct spsc_ring *r);

/* Producer side.  Returns how many of items[0..n) were queued, in order. */
size_t spsc_ring_push(struct spsc_ring *r, void *const *items, size_t n);
/* Consumer side.  Returns how many items were taken into out[0..max). */
size_t spsc_ring_pop(struct spsc_ring *r, void **out, size_t max);

/* Either side, approximate (the other side may be moving). */
size_t spsc_ring_count(const struct spsc_ring *r);

/*
 * Sleeping consumer protocol, so a producer wakes a consumer with a
 * syscall only when it may be asleep:
 *   consumer: spsc_ring_prepare_sleep(); if spsc_ring_count() == 0, sleep;
 *             spsc_ring_finish_sleep() after waking.
 *   producer: after pushing a batch, if spsc_ring_consumer_sleeping(),
 *             wake it (eventfd or IORING_OP_MSG_RING).
 */
void spsc_ring_prepare_sleep(struct spsc_ring *r);
void spsc_ring_finish_sleep(struct spsc_ring *r);
bool spsc_ring_consumer_sleeping(const struct spsc_ring *r);

#endif
