/*
 * tests/util/test_ring.c - SPSC rings: order, capacity as back-pressure,
 * and a two-thread stress run (ring_stress.c) in which every item arrives
 * once, in order, and the sleeping consumer is always woken.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdint.h>

#include "util/ring.h"

#include "tests/util/ring_stress.h"

Test(ring, order_and_backpressure)
{
	struct spsc_ring *r = spsc_ring_new(5);
	void *in[10], *out[10];

	cr_assert_eq(spsc_ring_capacity(r), 8);
	for (uintptr_t i = 0; i < 10; i++)
		in[i] = (void *)(i + 1);
	cr_expect_eq(spsc_ring_push(r, in, 10), 8, "a full ring takes what fits");
	cr_expect_eq(spsc_ring_push(r, in, 1), 0);
	cr_expect_eq(spsc_ring_count(r), 8);
	cr_expect_eq(spsc_ring_pop(r, out, 3), 3);
	for (uintptr_t i = 0; i < 3; i++)
		cr_expect_eq(out[i], (void *)(i + 1));
	cr_expect_eq(spsc_ring_push(r, in + 8, 2), 2);
	cr_expect_eq(spsc_ring_pop(r, out, 10), 7);
	cr_expect_eq(out[4], (void *)8);
	cr_expect_eq(out[5], (void *)9);
	cr_expect_eq(spsc_ring_pop(r, out, 10), 0);
	spsc_ring_free(r);
}

/* the producer wakes the consumer each time it may be asleep: none is lost */
Test(ring, two_threads_every_item_once_in_order, .timeout = 60)
{
	char why[256];

	cr_expect_eq(ring_stress(2000000, 1024, 32, why, sizeof(why)), 0, "%s", why);
	cr_expect_eq(ring_stress(200000, 2, 1, why, sizeof(why)), 0, "a tiny ring: %s", why);
}

Test(ring, sleep_flag)
{
	struct spsc_ring *r = spsc_ring_new(4);

	cr_expect_not(spsc_ring_consumer_sleeping(r));
	spsc_ring_prepare_sleep(r);
	cr_expect(spsc_ring_consumer_sleeping(r));
	spsc_ring_finish_sleep(r);
	cr_expect_not(spsc_ring_consumer_sleeping(r));
	spsc_ring_free(r);
}
