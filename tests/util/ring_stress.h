/*
 * tests/util/ring_stress.h - two threads through one SPSC ring, the
 * consumer sleeping on an eventfd by the ring's sleeping-consumer
 * protocol whenever the ring is empty.  Shared by the Criterion suite
 * (tests/util/test_ring.c) and the ThreadSanitizer driver
 * (tests/util/tsan_ring.c, `make tsan`), which Criterion cannot host
 * (Snaipe/Criterion#274).
 *
 * Called from one test thread; it starts and joins the producer itself.
 */
#ifndef COREMTA_TESTS_RING_STRESS_H
#define COREMTA_TESTS_RING_STRESS_H

#include <stddef.h>

/*
 * ring_stress - push items sequence numbers through a ring of capacity
 * cap in batches of up to batch, the consumer popping and sleeping when
 * it is empty.  0 when every item arrived once, in order, and no wake-up
 * was lost (a sleep longer than 5 s); else -1 with why filled.
 */
int ring_stress(size_t items, size_t cap, size_t batch, char *why, size_t whylen);

#endif
