/*
 * tests/util/test_ring.c - SPSC rings: order, capacity as back-pressure,
 * and a two-thread stress run in which every item arrives once, in order.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>

#include "util/ring.h"

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

#define STRESS_ITEMS 2000000u

static void *producer(void *arg)
{
	struct spsc_ring *r = arg;
	uintptr_t next = 1;
	void *batch[32];

	while (next <= STRESS_ITEMS) {
		size_t n = 0;
		for (; n < 32 && next + n <= STRESS_ITEMS; n++)
			batch[n] = (void *)(next + n);
		size_t pushed = spsc_ring_push(r, batch, n);
		next += pushed;
		if (!pushed)
			sched_yield();
	}
	return NULL;
}

Test(ring, two_threads_every_item_once_in_order, .timeout = 60)
{
	struct spsc_ring *r = spsc_ring_new(1024);
	pthread_t t;
	uintptr_t expect = 1;
	void *out[64];

	cr_assert_eq(pthread_create(&t, NULL, producer, r), 0);
	while (expect <= STRESS_ITEMS) {
		size_t n = spsc_ring_pop(r, out, 64);
		for (size_t i = 0; i < n; i++, expect++)
			cr_assert_eq((uintptr_t)out[i], expect);
		if (!n)
			sched_yield();
	}
	pthread_join(t, NULL);
	cr_expect_eq(spsc_ring_count(r), 0);
	spsc_ring_free(r);
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
