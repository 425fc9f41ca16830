/*
 * affinity - which shard (and so which pinned core) owns a receiving
 * domain, and how many shards this host runs.
 *
 * The domain map is the operator's <shard N> pins (most specific pattern
 * wins), and for every other domain a jump consistent hash of its name,
 * so that changing the shard count moves as few domains as possible.
 * A built map is immutable: any thread may call domain_map_shard().
 * domain_map_new()/free() run on the thread that loads the config.
 */
#ifndef COREMTA_AFFINITY_H
#define COREMTA_AFFINITY_H

#include <stdint.h>
#include <stdio.h>

#include "config/config.h"
#include "util/util.h"

struct domain_map;

/*
 * affinity_bind_thread - pin the calling thread to OS core pu and bind
 * its memory allocations to that core's NUMA node (hwloc).  Returns 0 or
 * -errno with err filled; a host without NUMA binding support only loses
 * the memory half (reported in err with rc 0 is not an error).
 */
int affinity_bind_thread(int pu, char *err, size_t errlen);

/*
 * affinity_arena_bind - give the calling thread a jemalloc arena of its
 * own (arenas.create, thread.arena; its tcache stays), so what it
 * allocates comes from pages it touched first, on its node.  *arena is
 * the arena's index.  Returns 0, -ENOTSUP when the process does not
 * allocate with jemalloc (the sanitizer builds), or -errno; err says why.
 * The arena lives as long as the process.
 */
int affinity_arena_bind(unsigned *arena, char *err, size_t errlen);

/*
 * affinity_free_home - free(p) for memory another thread allocated: it
 * goes straight back to the arena it came from, not into this thread's
 * cache, where it would be handed out again for this thread's own
 * allocations (and so a shard's queued recipients would sit in an intake
 * thread's arena).  Plain free() without jemalloc.  NULL ok; any thread.
 */
void affinity_free_home(void *p);

/*
 * affinity_background_purge - jemalloc's background threads on: freed
 * pages go back to the kernel after their decay time (10 s) even in an
 * arena whose thread allocates nothing more (an idle shard), so the RSS
 * follows what is held.  Main thread, before the shards start; 0,
 * -ENOTSUP (no jemalloc) or -errno.
 */
int affinity_background_purge(void);

/* affinity_arena_of - the arena p was allocated from; 0 or -errno. */
int affinity_arena_of(const void *p, unsigned *arena);

/* Bytes in live allocations, and of resident pages (jemalloc's view). */
struct affinity_mem {
	uint64_t allocated;
	uint64_t resident;
};

/*
 * affinity_mem_refresh - bring the figures below up to date (jemalloc's
 * "epoch"); then affinity_arena_stats (one arena) and affinity_mem_totals
 * (the process) read them.  Any thread; 0, -ENOTSUP or -errno.
 */
int affinity_mem_refresh(void);
int affinity_arena_stats(unsigned arena, struct affinity_mem *st);
int affinity_mem_totals(struct affinity_mem *st);

/*
 * affinity_shard_cpus - the OS core number each of nshards shards is
 * pinned to: a <shard N> block's cpu, else the first hardware thread of
 * the next physical core (hwloc order, SMT siblings never before every
 * core has one), skipping reserved-cpus.  More shards than cores is an
 * error unless allow-shard-oversubscription.  Returns 0 or -errno.
 */
int affinity_shard_cpus(const struct cfg *cfg, uint32_t nshards, int *cpus,
			char *err, size_t errlen);

/*
 * affinity_shard_count - the shards this host runs for cfg: 'shards N',
 * or with 'shards auto' one per physical core (hwloc) less the cores in
 * reserved-cpus, at least one.  Returns 0 or -errno with err filled.
 */
int affinity_shard_count(const struct cfg *cfg, uint32_t *count, char *err,
			 size_t errlen);

/*
 * domain_map_new - build the map for shard_count shards.  A <shard N>
 * with N >= shard_count is an error (diag at its file:line), -EINVAL.
 */
int domain_map_new(const struct cfg *cfg, uint32_t shard_count,
		   struct domain_map **out, struct diag_list *diags);
void domain_map_free(struct domain_map *map);

uint32_t domain_map_shard_count(const struct domain_map *map);
/* domain_map_shard - the shard of a domain (case-insensitive). */
uint32_t domain_map_shard(const struct domain_map *map, const char *domain);
/* domain_map_pinned_by - the <shard> pattern that placed it, or NULL. */
const char *domain_map_pinned_by(const struct domain_map *map,
				 const char *domain);

/* domain_map_print - the assignment, for `coremta check --shards`. */
void domain_map_print(const struct domain_map *map, const struct cfg *cfg,
		      const char *const *domains, size_t ndomains, FILE *out);

#endif
