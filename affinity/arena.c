/*
 * affinity/arena.c - a jemalloc arena per shard thread, and the arenas'
 * statistics.
 *
 * DESIGN.md, "Memory": a shard's memory stays on its NUMA node.  hwloc's
 * membind (domain_map.c) sets the policy of the pages the thread touches
 * first; a private arena makes sure the pages its allocations come from
 * are ones it touched, not extents an intake thread's arena first touched
 * on another node.  The thread keeps its tcache (jemalloc reattaches it).
 *
 * mallctl is referenced weakly: the release binary links jemalloc, the
 * sanitizer builds keep the sanitizer's allocator and have no mallctl, so
 * there every call answers -ENOTSUP and the shards run on the process's
 * allocator as before.
 *
 * A thread's tcache caches what the thread frees, whichever arena it came
 * from, and hands it out again for the thread's own allocations: a shard
 * freeing an intake's 32-byte job would get it back as a 32-byte qrcpt,
 * in the intake's arena.  affinity_free_home() sends memory that crossed
 * threads back to its own arena instead.
 *
 * Threads: affinity_arena_bind on the thread being bound (a shard, at
 * start); the statistics and lookups from any thread (jemalloc locks).
 * An arena lives as long as the process: jemalloc cannot hand one back
 * while memory of it may still be referenced.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jemalloc/jemalloc.h>

#include "affinity/affinity.h"

#pragma weak mallctl
#pragma weak dallocx

/* ctl - mallctl, 0 or -errno; -ENOTSUP when jemalloc is not the allocator. */
static int ctl(const char *name, void *old, size_t *oldlen, void *new, size_t newlen)
{
	if (!mallctl)
		return -ENOTSUP;
	int rc = mallctl(name, old, oldlen, new, newlen);
	return rc ? -rc : 0;
}

static int read_size(const char *name, uint64_t *v)
{
	size_t x, len = sizeof(x);
	int rc = ctl(name, &x, &len, NULL, 0);

	if (rc == 0)
		*v = x;
	return rc;
}

int affinity_arena_bind(unsigned *arena, char *err, size_t errlen)
{
	unsigned a;
	size_t len = sizeof(a);
	int rc = ctl("arenas.create", &a, &len, NULL, 0);

	if (rc < 0) {
		snprintf(err, errlen, "cannot create a jemalloc arena: %s",
			 rc == -ENOTSUP ? "the allocator is not jemalloc" : strerror(-rc));
		return rc;
	}
	rc = ctl("thread.arena", NULL, NULL, &a, sizeof(a));
	if (rc < 0) {
		snprintf(err, errlen, "cannot bind the thread to jemalloc arena %u: %s", a,
			 strerror(-rc));
		return rc;
	}
	/*
	 * The tcache keeps what it cached from the old arena and would hand
	 * that out first: return it, so that from now on everything comes
	 * from the new arena, and check that it does.
	 */
	rc = ctl("thread.tcache.flush", NULL, NULL, NULL, 0);
	if (rc < 0 && rc != -EFAULT) {
		snprintf(err, errlen, "cannot flush the thread cache: %s", strerror(-rc));
		return rc;
	}
	void *probe = malloc(64);
	unsigned got = 0;
	rc = affinity_arena_of(probe, &got);
	free(probe);
	if (rc == 0 && got != a) {
		snprintf(err, errlen, "jemalloc arena %u bound, but allocations come from %u",
			 a, got);
		return -EIO;
	}
	*arena = a;
	return 0;
}

int affinity_background_purge(void)
{
	bool on = true;

	return ctl("background_thread", NULL, NULL, &on, sizeof(on));
}

int affinity_arena_of(const void *p, unsigned *arena)
{
	size_t len = sizeof(*arena);

	return ctl("arenas.lookup", arena, &len, &p, sizeof(p));
}

int affinity_mem_refresh(void)
{
	uint64_t epoch = 1;

	return ctl("epoch", NULL, NULL, &epoch, sizeof(epoch));
}

int affinity_arena_stats(unsigned arena, struct affinity_mem *st)
{
	char name[64];
	uint64_t small = 0, large = 0;
	int rc;

	snprintf(name, sizeof(name), "stats.arenas.%u.small.allocated", arena);
	if ((rc = read_size(name, &small)) < 0)
		return rc;
	snprintf(name, sizeof(name), "stats.arenas.%u.large.allocated", arena);
	if ((rc = read_size(name, &large)) < 0)
		return rc;
	snprintf(name, sizeof(name), "stats.arenas.%u.resident", arena);
	if ((rc = read_size(name, &st->resident)) < 0)
		return rc;
	st->allocated = small + large;
	return 0;
}

int affinity_mem_totals(struct affinity_mem *st)
{
	int rc = read_size("stats.allocated", &st->allocated);

	return rc < 0 ? rc : read_size("stats.resident", &st->resident);
}

void affinity_free_home(void *p)
{
	if (p && dallocx)
		dallocx(p, MALLOCX_TCACHE_NONE);
	else
		free(p);
}
