/*
 * tests/util/ring_stress.c - the two-thread ring run (ring_stress.h).
 * The calling thread consumes; one producer thread it starts and joins.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/ring.h"

#include "tests/util/ring_stress.h"

/* A consumer asleep this long lost its wake-up: the producer had pushed. */
#define LOST_WAKEUP_MS 5000

struct stress {
	struct spsc_ring *r;
	size_t items, batch;
	int wake_fd;
};

static void *producer(void *arg)
{
	struct stress *s = arg;
	uintptr_t next = 1;
	void *batch[64];
	const uint64_t one = 1;

	while (next <= s->items) {
		size_t n = 0;
		for (; n < s->batch && next + n <= s->items; n++)
			batch[n] = (void *)(next + n);
		size_t pushed = spsc_ring_push(s->r, batch, n);
		next += pushed;
		if (pushed && spsc_ring_consumer_sleeping(s->r) &&
		    write(s->wake_fd, &one, sizeof(one)) != sizeof(one))
			return (void *)(intptr_t)errno;
		if (!pushed)
			sched_yield();
	}
	return NULL;
}

int ring_stress(size_t items, size_t cap, size_t batch, char *why, size_t whylen)
{
	struct stress s = { .r = spsc_ring_new(cap), .items = items,
			    .batch = batch > 64 ? 64 : batch,
			    .wake_fd = eventfd(0, EFD_CLOEXEC) };
	uintptr_t expect = 1;
	void *out[64], *perr = NULL;
	pthread_t t;
	int rc = 0;

	if (s.wake_fd < 0 || pthread_create(&t, NULL, producer, &s) != 0) {
		snprintf(why, whylen, "eventfd or thread: %s", strerror(errno));
		spsc_ring_free(s.r);
		return -1;
	}
	while (rc == 0 && expect <= items) {
		size_t n = spsc_ring_pop(s.r, out, 64);
		for (size_t i = 0; i < n && rc == 0; i++, expect++)
			if ((uintptr_t)out[i] != expect) {
				snprintf(why, whylen, "item %zu arrived where %zu was due",
					 (size_t)(uintptr_t)out[i], (size_t)expect);
				rc = -1;
			}
		if (n || rc)
			continue;
		spsc_ring_prepare_sleep(s.r);
		if (spsc_ring_count(s.r) == 0) {
			struct pollfd p = { .fd = s.wake_fd, .events = POLLIN };
			uint64_t v;
			if (poll(&p, 1, LOST_WAKEUP_MS) == 0) {
				snprintf(why, whylen, "lost wake-up: asleep %d ms at item %zu",
					 LOST_WAKEUP_MS, (size_t)expect);
				rc = -1;
			} else if (read(s.wake_fd, &v, sizeof(v)) < 0) {
				snprintf(why, whylen, "eventfd read: %s", strerror(errno));
				rc = -1;
			}
		}
		spsc_ring_finish_sleep(s.r);
	}
	if (rc) {
		/* the producer may be stuck on a full ring: drain until it is done */
		while (pthread_tryjoin_np(t, &perr) == EBUSY)
			spsc_ring_pop(s.r, out, 64);
	} else {
		pthread_join(t, &perr);
		if (perr) {
			snprintf(why, whylen, "eventfd write: %s", strerror((int)(intptr_t)perr));
			rc = -1;
		} else if (spsc_ring_count(s.r) != 0) {
			snprintf(why, whylen, "%zu items left after the last", spsc_ring_count(s.r));
			rc = -1;
		}
	}
	close(s.wake_fd);
	spsc_ring_free(s.r);
	return rc;
}
