/*
 * shards/caps.c - connection counts per destination shared by the shards
 * (see caps.h): an open-addressing table of atomics whose entries are
 * claimed with a compare-and-swap and never freed.
 *
 * Threads: caps_new/free on the main thread; the rest from any shard.
 */
#include <fnmatch.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "shards/caps.h"
#include "shards/dns.h"
#include "shards/sched.h"
#include "util/hash.h"
#include "util/util.h"

struct caps {
	const struct cfg_global *g;
	uint32_t mask;
	_Atomic uint64_t want_total_until;	/* under total-max-smtp-out */
	_Atomic uint64_t want_any_until;	/* some want, anywhere */
	struct cap_dest *e;
};

struct caps *caps_new(const struct cfg *cfg, uint32_t nentries)
{
	struct caps *t = xcalloc(1, sizeof(*t));
	uint32_t n = 64;

	t->g = cfg ? cfg_global(cfg) : NULL;
	while (n < nentries)
		n <<= 1;
	t->mask = n - 1;
	t->e = xcalloc(n, sizeof(*t->e));
	return t;
}

void caps_free(struct caps *t)
{
	if (!t)
		return;
	free(t->e);
	free(t);
}

static uint64_t mix_src(uint64_t h, const char *src)
{
	h = hash_bytes(h, "\xff", 1);
	return src ? hash_str(h, src) : h;
}

/* dest_key - FNV-1a over family, address, port and source; never 0. */
static uint64_t dest_key(const struct dns_addr *a, const char *src)
{
	const unsigned char *p = a->family == AF_INET6 ? (const unsigned char *)&a->ip.v6
						      : (const unsigned char *)&a->ip.v4;
	size_t n = a->family == AF_INET6 ? sizeof(a->ip.v6) : sizeof(a->ip.v4);
	uint8_t port[2] = { a->port & 0xff, a->port >> 8 };
	uint64_t h = hash_bytes(HASH_SEED ^ (uint64_t)a->family, p, n);

	h = mix_src(hash_bytes(h, port, sizeof(port)), src);
	return h ? h : 1;
}

/* mx_key - FNV-1a over the lower-cased name, apart from dest_key's. */
static uint64_t mx_key(const char *mx, const char *src)
{
	/* another seed, so a name never collides with dest_key's bytes */
	uint64_t h = mix_src(hash_str_lower(0x84222325cbf29ce4ull, mx), src);

	return h ? h : 1;
}

/* claim - the entry of key, claimed on first use; NULL when full. */
static struct cap_dest *claim(struct caps *t, uint64_t key)
{
	for (uint32_t k = 0, i = (uint32_t)key & t->mask; k <= t->mask;
	     k++, i = (i + 1) & t->mask) {
		struct cap_dest *d = &t->e[i];
		uint64_t cur = atomic_load_explicit(&d->key, memory_order_acquire);
		if (cur == key)
			return d;
		if (cur)
			continue;
		uint64_t zero = 0;
		if (atomic_compare_exchange_strong_explicit(&d->key, &zero, key,
							    memory_order_acq_rel,
							    memory_order_acquire) ||
		    zero == key)
			return d;
	}
	return NULL;
}

/* set_limit - the first configured limit that matches, once per entry. */
static void set_limit(struct caps *t, struct cap_dest *d, const struct dns_addr *a,
		      const char *mx)
{
	uint32_t limit = 0;

	if (atomic_load_explicit(&d->limit1, memory_order_relaxed))
		return;
	for (size_t i = 0; t->g && i < t->g->conn_limit_count && !limit; i++) {
		const struct cfg_conn_limit *cl = &t->g->conn_limits[i];
		if (cl->is_mx && mx) {
			if (fnmatch(cl->mx, mx, FNM_CASEFOLD) == 0)
				limit = cl->max;
		} else if (!cl->is_mx && a) {
			struct sockaddr_storage ss;
			dns_addr_sockaddr(a, &ss);
			if (cfg_cidr_contains(&cl->net, (const struct sockaddr *)&ss))
				limit = cl->max;
		}
	}
	atomic_store_explicit(&d->limit1, limit + 1, memory_order_relaxed);
}

struct cap_dest *caps_dest(struct caps *t, const struct dns_addr *a, const char *src)
{
	struct cap_dest *d = claim(t, dest_key(a, src));

	if (d)
		set_limit(t, d, a, NULL);
	return d;
}

struct cap_dest *caps_mx(struct caps *t, const char *mx, const char *src)
{
	if (!mx || !*mx)
		return NULL;
	struct cap_dest *d = claim(t, mx_key(mx, src));

	if (d)
		set_limit(t, d, NULL, mx);
	return d;
}

/* dest_cap - the limit in force at d: configured or learned; 0 none. */
static uint32_t dest_cap(const struct cap_dest *d, uint64_t now_ms)
{
	uint32_t limit1 = atomic_load_explicit(&d->limit1, memory_order_relaxed);
	uint32_t cap = limit1 ? limit1 - 1 : 0;

	if (atomic_load_explicit(&d->learned_until, memory_order_relaxed) > now_ms) {
		uint32_t learned = atomic_load_explicit(&d->learned, memory_order_relaxed);
		if (learned && (!cap || learned < cap))
			cap = learned;
	}
	return cap;
}

uint32_t caps_room(const struct cap_dest *d, uint64_t now_ms)
{
	return sched_cap_room(dest_cap(d, now_ms),
			      atomic_load_explicit(&d->conns, memory_order_relaxed));
}

bool caps_reserve(struct cap_dest *d, uint64_t now_ms)
{
	if (!d)
		return true;
	uint32_t cap = dest_cap(d, now_ms);
	uint32_t prev = atomic_fetch_add_explicit(&d->conns, 1, memory_order_relaxed);

	if (cap && prev >= cap) {
		atomic_fetch_sub_explicit(&d->conns, 1, memory_order_relaxed);
		return false;
	}
	return true;
}

void caps_release(struct cap_dest *d)
{
	if (d)
		atomic_fetch_sub_explicit(&d->conns, 1, memory_order_relaxed);
}

void caps_learn(struct cap_dest *d, uint32_t open, uint64_t now_ms)
{
	uint32_t cur = 0;

	if (atomic_load_explicit(&d->learned_until, memory_order_relaxed) > now_ms)
		cur = atomic_load_explicit(&d->learned, memory_order_relaxed);
	atomic_store_explicit(&d->learned, sched_learn_cap(cur, open), memory_order_relaxed);
	atomic_store_explicit(&d->learned_until, now_ms + SCHED_LEARNED_CAP_MS,
			      memory_order_relaxed);
}

void caps_want(struct caps *t, struct cap_dest *d, uint64_t now_ms)
{
	atomic_store_explicit(&d->want_until, now_ms + SCHED_WANT_MS, memory_order_relaxed);
	atomic_store_explicit(&t->want_any_until, now_ms + SCHED_WANT_MS, memory_order_relaxed);
}

void caps_want_total(struct caps *t, uint64_t now_ms)
{
	atomic_store_explicit(&t->want_total_until, now_ms + SCHED_WANT_MS,
			      memory_order_relaxed);
	atomic_store_explicit(&t->want_any_until, now_ms + SCHED_WANT_MS, memory_order_relaxed);
}

bool caps_any_want(const struct caps *t, uint64_t now_ms)
{
	return atomic_load_explicit(&t->want_any_until, memory_order_relaxed) > now_ms;
}

bool caps_total_wanted(const struct caps *t, uint64_t now_ms)
{
	return atomic_load_explicit(&t->want_total_until, memory_order_relaxed) > now_ms;
}

bool caps_wanted(const struct cap_dest *d, uint64_t now_ms)
{
	return atomic_load_explicit(&d->want_until, memory_order_relaxed) > now_ms;
}
