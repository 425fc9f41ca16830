/*
 * affinity/domain_map.c - the domain -> shard map and the shard count.
 *
 * Built on the config-loading thread; immutable afterwards, so every
 * thread may look domains up without locks.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hwloc.h>

#include "affinity/affinity.h"
#include "util/hash.h"

struct pin {
	const char *pattern;		/* as written */
	const char *d;			/* lower-case, prefix removed */
	enum { PIN_EXACT, PIN_SELF_SUB, PIN_SUB } kind;
	uint32_t shard;
};

struct domain_map {
	uint32_t shard_count;
	struct pin *pins;		/* sorted by (kind, d) */
	size_t n_pins;
};

int affinity_shard_count(const struct cfg *cfg, uint32_t *count, char *err,
			 size_t errlen)
{
	const struct cfg_global *g = cfg_global(cfg);
	hwloc_topology_t topo;

	if (g->shard_count) {
		*count = g->shard_count;
		return 0;
	}
	if (hwloc_topology_init(&topo) < 0 || hwloc_topology_load(topo) < 0) {
		snprintf(err, errlen, "hwloc could not read the CPU topology");
		return -EIO;
	}
	int cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
	if (cores <= 0)
		cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
	/* A reserved core takes its whole physical core out of the shards. */
	int reserved = 0;
	for (size_t i = 0; i < g->reserved_cpus.count; i++) {
		char *end;
		long pu = strtol(g->reserved_cpus.items[i], &end, 10);
		if (*end || pu < 0) {
			snprintf(err, errlen, "reserved-cpus: '%s' is not a core number",
				 g->reserved_cpus.items[i]);
			hwloc_topology_destroy(topo);
			return -EINVAL;
		}
		if (hwloc_get_pu_obj_by_os_index(topo, (unsigned)pu))
			reserved++;
	}
	hwloc_topology_destroy(topo);
	*count = cores - reserved > 0 ? (uint32_t)(cores - reserved) : 1;
	return 0;
}

int affinity_bind_thread(int pu, char *err, size_t errlen)
{
	hwloc_topology_t topo;
	int rc = 0;

	err[0] = '\0';
	if (hwloc_topology_init(&topo) < 0 || hwloc_topology_load(topo) < 0) {
		snprintf(err, errlen, "hwloc could not read the CPU topology");
		return -EIO;
	}
	hwloc_obj_t obj = hwloc_get_pu_obj_by_os_index(topo, (unsigned)pu);
	if (!obj) {
		snprintf(err, errlen, "cpu %d does not exist on this host", pu);
		hwloc_topology_destroy(topo);
		return -EINVAL;
	}
	if (hwloc_set_cpubind(topo, obj->cpuset, HWLOC_CPUBIND_THREAD) < 0) {
		snprintf(err, errlen, "cannot pin to cpu %d: %s", pu, strerror(errno));
		rc = -errno;
	} else if (obj->nodeset &&
		   hwloc_set_membind(topo, obj->nodeset, HWLOC_MEMBIND_BIND,
				     HWLOC_MEMBIND_THREAD | HWLOC_MEMBIND_BYNODESET) < 0) {
		/* pinned; memory stays first-touch, which is local anyway */
		snprintf(err, errlen, "memory binding to cpu %d's node unavailable: %s",
			 pu, strerror(errno));
	}
	hwloc_topology_destroy(topo);
	return rc;
}

static bool reserved_pu(const struct cfg_global *g, unsigned pu)
{
	for (size_t i = 0; i < g->reserved_cpus.count; i++)
		if (strtoul(g->reserved_cpus.items[i], NULL, 10) == pu)
			return true;
	return false;
}

int affinity_shard_cpus(const struct cfg *cfg, uint32_t nshards, int *cpus,
			char *err, size_t errlen)
{
	const struct cfg_global *g = cfg_global(cfg);
	hwloc_topology_t topo;

	if (hwloc_topology_init(&topo) < 0 || hwloc_topology_load(topo) < 0) {
		snprintf(err, errlen, "hwloc could not read the CPU topology");
		return -EIO;
	}
	/* first PU of every core not reserved, then the SMT siblings */
	int ncores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
	int npus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
	int *order = xcalloc((size_t)(npus > 0 ? npus : 1), sizeof(int));
	int n = 0;
	for (int pass = 0; pass < 2; pass++) {
		for (int c = 0; c < ncores; c++) {
			hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, (unsigned)c);
			for (unsigned k = 0; core && k < core->arity; k++) {
				hwloc_obj_t pu = core->children[k];
				if (pu->type != HWLOC_OBJ_PU || (pass == 0) != (k == 0))
					continue;
				if (!reserved_pu(g, pu->os_index) && n < npus)
					order[n++] = (int)pu->os_index;
			}
		}
	}
	if (n == 0)	/* no core information: take the PUs as they come */
		for (int p = 0; p < npus; p++) {
			hwloc_obj_t pu = hwloc_get_obj_by_type(topo, HWLOC_OBJ_PU, (unsigned)p);
			if (pu && !reserved_pu(g, pu->os_index))
				order[n++] = (int)pu->os_index;
		}
	hwloc_topology_destroy(topo);
	/* the physical cores alone are what "one shard per core" means */
	int usable = ncores > 0 ? ncores - (int)g->reserved_cpus.count : n;
	if (usable < 1)
		usable = 1;
	if ((int)nshards > usable && !g->allow_shard_oversubscription) {
		snprintf(err, errlen,
			 "%u shards on a host with %d usable core%s: set allow-shard-oversubscription yes, or fewer shards",
			 nshards, usable, usable == 1 ? "" : "s");
		free(order);
		return -EINVAL;
	}
	int next = 0;
	for (uint32_t i = 0; i < nshards; i++) {
		cpus[i] = -1;
		for (size_t k = 0; k < cfg_shard_count(cfg); k++)
			if (cfg_shard_at(cfg, k)->index == i)
				cpus[i] = cfg_shard_at(cfg, k)->cpu;
		if (cpus[i] < 0)
			cpus[i] = n ? order[next++ % n] : -1;
	}
	free(order);
	return 0;
}

static int pin_cmp(const void *pa, const void *pb)
{
	const struct pin *a = pa, *b = pb;

	if (a->kind != b->kind)
		return a->kind < b->kind ? -1 : 1;
	return strcmp(a->d, b->d);
}

int domain_map_new(const struct cfg *cfg, uint32_t shard_count,
		   struct domain_map **out, struct diag_list *diags)
{
	struct domain_map *m = xcalloc(1, sizeof(*m));
	size_t total = 0;
	int rc = 0;

	BUG_ON(shard_count == 0);
	m->shard_count = shard_count;
	for (size_t i = 0; i < cfg_shard_count(cfg); i++)
		total += cfg_shard_at(cfg, i)->domains.count;
	m->pins = xcalloc(total + 1, sizeof(*m->pins));
	for (size_t i = 0; i < cfg_shard_count(cfg); i++) {
		const struct cfg_shard *s = cfg_shard_at(cfg, i);
		if (s->index >= shard_count) {
			diag_add(diags, DIAG_ERROR, s->origin.file, s->origin.line,
				 "<shard %u> does not exist on this host: it runs %u shard%s (0 to %u); lower the shard number or set 'shards'",
				 s->index, shard_count, shard_count == 1 ? "" : "s",
				 shard_count - 1);
			rc = -EINVAL;
			continue;
		}
		for (size_t k = 0; k < s->domains.count; k++) {
			struct pin *p = &m->pins[m->n_pins++];
			const char *t = s->domains.items[k];
			p->pattern = t;
			p->shard = s->index;
			if (strncmp(t, "[*.]", 4) == 0) {
				p->kind = PIN_SELF_SUB;
				t += 4;
			} else if (strncmp(t, "*.", 2) == 0) {
				p->kind = PIN_SUB;
				t += 2;
			} else {
				p->kind = PIN_EXACT;
			}
			char *d = xstrdup(t);
			str_lower(d);
			p->d = d;
		}
	}
	qsort(m->pins, m->n_pins, sizeof(*m->pins), pin_cmp);
	if (rc < 0) {
		domain_map_free(m);
		return rc;
	}
	*out = m;
	return 0;
}

void domain_map_free(struct domain_map *map)
{
	if (!map)
		return;
	for (size_t i = 0; i < map->n_pins; i++)
		free((char *)map->pins[i].d);
	free(map->pins);
	free(map);
}

uint32_t domain_map_shard_count(const struct domain_map *map)
{
	return map->shard_count;
}

static const struct pin *pin_find(const struct domain_map *m, int kind,
				  const char *d)
{
	struct pin key = { .kind = kind, .d = d };

	return bsearch(&key, m->pins, m->n_pins, sizeof(*m->pins), pin_cmp);
}

/* Most specific first: d, [*.]d, then *.p and [*.]p for each parent p. */
static const struct pin *pin_lookup(const struct domain_map *m, const char *d)
{
	const struct pin *p;

	if (!m->n_pins)
		return NULL;
	if ((p = pin_find(m, PIN_EXACT, d)) || (p = pin_find(m, PIN_SELF_SUB, d)))
		return p;
	for (const char *s = strchr(d, '.'); s; s = strchr(s + 1, '.'))
		if ((p = pin_find(m, PIN_SUB, s + 1)) ||
		    (p = pin_find(m, PIN_SELF_SUB, s + 1)))
			return p;
	return NULL;
}

/* name_hash - FNV-1a of the lower-cased name, then a 64-bit finaliser. */
static uint64_t name_hash(const char *d)
{
	return hash_mix(hash_str(HASH_SEED, d));
}

/*
 * jump_hash - Lamping and Veach's jump consistent hash: going from n to
 * n+1 shards moves only 1/(n+1) of the domains.
 */
static uint32_t jump_hash(uint64_t key, uint32_t buckets)
{
	int64_t b = -1, j = 0;

	while (j < (int64_t)buckets) {
		b = j;
		key = key * 2862933555777941757ull + 1;
		j = (int64_t)((double)(b + 1) *
			      ((double)(1ll << 31) / (double)((key >> 33) + 1)));
	}
	return (uint32_t)b;
}

static void normalise(const char *domain, char *buf, size_t len)
{
	size_t n = 0;

	for (; domain[n] && n + 1 < len; n++)
		buf[n] = (char)tolower((unsigned char)domain[n]);
	buf[n] = '\0';
	if (n > 1 && buf[n - 1] == '.')
		buf[n - 1] = '\0';
}

uint32_t domain_map_shard(const struct domain_map *map, const char *domain)
{
	char d[256];
	const struct pin *p;

	normalise(domain, d, sizeof(d));
	if ((p = pin_lookup(map, d)))
		return p->shard;
	return jump_hash(name_hash(d), map->shard_count);
}

const char *domain_map_pinned_by(const struct domain_map *map,
				 const char *domain)
{
	char d[256];
	const struct pin *p;

	normalise(domain, d, sizeof(d));
	p = pin_lookup(map, d);
	return p ? p->pattern : NULL;
}

void domain_map_print(const struct domain_map *map, const struct cfg *cfg,
		      const char *const *domains, size_t ndomains, FILE *out)
{
	fprintf(out, "shards: %u\n", map->shard_count);
	for (uint32_t s = 0; s < map->shard_count; s++) {
		const struct cfg_shard *cs = NULL;
		for (size_t i = 0; i < cfg_shard_count(cfg); i++)
			if (cfg_shard_at(cfg, i)->index == s)
				cs = cfg_shard_at(cfg, i);
		fprintf(out, "shard %u: cpu %s", s, cs && cs->cpu >= 0 ? "" : "auto");
		if (cs && cs->cpu >= 0)
			fprintf(out, "%d", cs->cpu);
		fprintf(out, "; pinned:");
		size_t pinned = 0;
		for (size_t i = 0; i < map->n_pins; i++)
			if (map->pins[i].shard == s) {
				fprintf(out, " %s", map->pins[i].pattern);
				pinned++;
			}
		fprintf(out, "%s; other domains by consistent hash\n",
			pinned ? "" : " (none)");
	}
	for (size_t i = 0; i < ndomains; i++) {
		const char *by = domain_map_pinned_by(map, domains[i]);
		fprintf(out, "%s -> shard %u (%s%s)\n", domains[i],
			domain_map_shard(map, domains[i]),
			by ? "pinned by " : "hash", by ? by : "");
	}
}
