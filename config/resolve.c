/*
 * config/resolve.c - the second pass of a load: resolves names (pools,
 * pattern lists, sources), checks references across blocks, and
 * precomputes every effective settings struct (queue tables per
 * virtual-mta, sources per network), so lookups on the hot path only
 * search.  Also the built-in bounce classification rules.
 *
 * Loader thread only, during cfg_load_*.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model_int.h"
#include "config/values.h"

static bool dpat_equal(const struct dpat *a, const struct dpat *b)
{
	if (a->kind != b->kind)
		return false;
	if (a->kind == DP_LITERAL)
		return a->lit.family == b->lit.family &&
		       a->lit.prefix == b->lit.prefix &&
		       memcmp(a->lit.addr, b->lit.addr, 16) == 0;
	return strcmp(a->d, b->d) == 0;
}

/* is_subdomain - a is b or below b ("x.gmail.com" of "gmail.com"). */
static bool is_subdomain(const char *a, const char *b, bool strictly)
{
	size_t la = strlen(a), lb = strlen(b);

	if (la == lb)
		return !strictly && strcmp(a, b) == 0;
	return la > lb && a[la - lb - 1] == '.' && strcmp(a + la - lb, b) == 0;
}

bool ld_cidr_within(const struct cfg_cidr *inner, const struct cfg_cidr *outer)
{
	if (inner->family != outer->family || inner->prefix < outer->prefix)
		return false;
	unsigned full = outer->prefix / 8, rest = outer->prefix % 8;
	if (memcmp(inner->addr, outer->addr, full) != 0)
		return false;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));
		if ((inner->addr[full] & mask) != (outer->addr[full] & mask))
			return false;
	}
	return true;
}

/* covers - q matches every domain that p matches. */
static bool covers(const struct dpat *q, const struct dpat *p)
{
	switch (q->kind) {
	case DP_ALL:
		return true;
	case DP_EXACT:
		return p->kind == DP_EXACT && strcmp(p->d, q->d) == 0;
	case DP_SELF_SUB:
		return p->kind != DP_ALL && p->kind != DP_LITERAL &&
		       is_subdomain(p->d, q->d, false);
	case DP_SUB:
		if (p->kind == DP_SUB)
			return is_subdomain(p->d, q->d, false);
		return (p->kind == DP_EXACT || p->kind == DP_SELF_SUB) &&
		       is_subdomain(p->d, q->d, true);
	case DP_LITERAL:
		return p->kind == DP_LITERAL && ld_cidr_within(&p->lit, &q->lit);
	}
	return false;
}

/* Chain order: general before specific; macro-made before explicit. */
static int dblock_chain_cmp(const void *pa, const void *pb)
{
	const struct dblock *a = *(const struct dblock *const *)pa;
	const struct dblock *b = *(const struct dblock *const *)pb;

	if (!dpat_equal(&a->pat, &b->pat))
		return covers(&a->pat, &b->pat) ? -1 : 1;
	if (a->from_macro != b->from_macro)
		return a->from_macro ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static void apply_domain_chain(struct loader *L, struct qeff *eff,
			       const struct dblock_list *bl,
			       const struct dpat *target)
{
	const struct dblock **chain = xcalloc(bl->count + 1, sizeof(*chain));
	size_t n = 0;

	for (size_t i = 0; i < bl->count; i++)
		if (covers(&bl->items[i].pat, target))
			chain[n++] = &bl->items[i];
	qsort(chain, n, sizeof(*chain), dblock_chain_cmp);
	for (size_t i = 0; i < n; i++) {
		ld_apply_list(L, &eff->q, eff->origin, chain[i]->assigns);
		eff->q.pattern = chain[i]->text;
	}
	free(chain);
}

static int qentry_cmp(const void *pa, const void *pb)
{
	const struct qentry *a = pa, *b = pb;

	return strcmp(a->pat.d, b->pat.d);
}

static void add_unique_pat(struct loader *L, struct dpat **pats, size_t *n,
			   size_t *cap, const struct dpat *p)
{
	for (size_t i = 0; i < *n; i++)
		if (dpat_equal(&(*pats)[i], p))
			return;
	*PUSH(L, *pats, *n, *cap) = *p;
}

/*
 * build_qtable - precompute the effective settings for every pattern that
 * could be the most specific match, for one virtual-mta.  Layers: global
 * <domain>s, then the pool's, then the VMTA's own.  Matching patterns of
 * one domain are nested, so the chain of a pattern is exactly the
 * patterns that cover it.
 */
static struct qtable *build_qtable(struct loader *L,
				   const struct dblock_list *const *layers,
				   size_t nlayers, const struct cfg_queue *defaults,
				   const struct cfg_origin *def_origin)
{
	struct qtable *t = arena_alloc(L->a, sizeof(*t));
	struct dpat *pats = NULL;
	size_t npats = 0, cap = 0;
	struct dpat all = { .kind = DP_ALL, .d = "*" };

	add_unique_pat(L, &pats, &npats, &cap, &all);
	for (size_t l = 0; l < nlayers; l++)
		for (size_t i = 0; i < layers[l]->count; i++)
			add_unique_pat(L, &pats, &npats, &cap,
				       &layers[l]->items[i].pat);

	size_t cap_e = 0, cap_ss = 0, cap_s = 0, cap_l = 0;
	for (size_t i = 0; i < npats; i++) {
		struct qeff *eff = arena_alloc(L->a, sizeof(*eff));
		eff->q = *defaults;
		eff->q.pattern = "*";
		eff->origin = arena_alloc(L->a, cfg_directive_count *
							sizeof(*eff->origin));
		memcpy(eff->origin, def_origin,
		       cfg_directive_count * sizeof(*eff->origin));
		for (size_t l = 0; l < nlayers; l++)
			apply_domain_chain(L, eff, layers[l], &pats[i]);
		struct qentry e = { .pat = pats[i], .eff = eff };
		switch (pats[i].kind) {
		case DP_ALL:
			t->all = eff;
			break;
		case DP_EXACT:
			*PUSH(L, t->exact, t->n_exact, cap_e) = e;
			break;
		case DP_SELF_SUB:
			*PUSH(L, t->self_sub, t->n_self_sub, cap_ss) = e;
			break;
		case DP_SUB:
			*PUSH(L, t->sub, t->n_sub, cap_s) = e;
			break;
		case DP_LITERAL:
			*PUSH(L, t->literal, t->n_literal, cap_l) = e;
			break;
		}
	}
	if (t->n_exact)
		qsort(t->exact, t->n_exact, sizeof(*t->exact), qentry_cmp);
	if (t->n_self_sub)
		qsort(t->self_sub, t->n_self_sub, sizeof(*t->self_sub), qentry_cmp);
	if (t->n_sub)
		qsort(t->sub, t->n_sub, sizeof(*t->sub), qentry_cmp);
	return t;
}

/* resolve_suppression_lists - every name a source's suppression-lists
 * gives is a top-level <address-list> */
static void resolve_suppression_lists(struct loader *L)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < c->n_sblocks; i++)
		for (const struct assign *as = c->sblocks[i].assigns.head; as; as = as->next) {
			if (strcmp(as->d->name, "suppression-lists") != 0)
				continue;
			for (size_t k = 0; k < as->v.list.count; k++)
				if (!cfg_address_list_find(c, as->v.list.items[k]))
					diag_add(L->diags, DIAG_ERROR, as->origin.file,
						 as->origin.line,
						 "suppression-lists: no <address-list %s> is defined",
						 as->v.list.items[k]);
		}
}

static void resolve_spl_refs(struct loader *L, struct assign_list *al)
{
	for (struct assign *as = al ? al->head : NULL; as; as = as->next) {
		if (!as->spl_name)
			continue;
		as->v.spl = cfg_smtp_pattern_list_find(L->cfg, as->spl_name);
		if (!as->v.spl)
			diag_add(L->diags, DIAG_ERROR, as->origin.file, as->origin.line,
				 "'smtp-pattern-list': no <smtp-pattern-list %s> is defined",
				 as->spl_name);
	}
}

static void resolve_dblocks(struct loader *L, struct dblock_list *bl)
{
	const struct assign_list *done = NULL;

	for (size_t i = 0; i < bl->count; i++) {
		if (bl->items[i].assigns == done)
			continue;
		done = bl->items[i].assigns;
		resolve_spl_refs(L, bl->items[i].assigns);
	}
}

/* warn_duplicates - the same directive twice for one pattern in one scope. */
static void warn_duplicates(struct loader *L, const struct dblock_list *bl)
{
	for (size_t i = 0; i < bl->count; i++) {
		for (size_t j = i + 1; j < bl->count; j++) {
			const struct dblock *a = &bl->items[i], *b = &bl->items[j];
			if (!dpat_equal(&a->pat, &b->pat) || a->from_macro != b->from_macro)
				continue;
			for (const struct assign *x = a->assigns->head; x; x = x->next)
				for (const struct assign *y = b->assigns->head; y; y = y->next)
					if (x->d == y->d && x->d->type != CT_STRLIST)
						diag_add(L->diags, DIAG_WARNING,
							 y->origin.file, y->origin.line,
							 "'%s' for <domain %s> overrides the value set at %s:%d",
							 y->d->name, b->text,
							 x->origin.file, x->origin.line);
		}
	}
}

static int vmta_cmp(const void *pa, const void *pb)
{
	const struct vmta_rec *a = *(const struct vmta_rec *const *)pa;
	const struct vmta_rec *b = *(const struct vmta_rec *const *)pb;

	return strcmp(a->v.name, b->v.name);
}

static void resolve_pools(struct loader *L)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < c->n_pools; i++) {
		struct pool_rec *p = c->pools[i];
		const struct cfg_vmta **members =
			arena_alloc(L->a, (p->n_members + 1) * sizeof(*members));
		size_t n = 0;
		for (size_t k = 0; k < p->n_members; k++) {
			struct vmta_rec *v = ld_find_vmta_rec(c, p->member_names[k]);
			if (!v) {
				diag_add(L->diags, DIAG_ERROR, p->member_origins[k].file,
					 p->member_origins[k].line,
					 "'virtual-mta': no <virtual-mta %s> is defined",
					 p->member_names[k]);
				continue;
			}
			members[n++] = &v->v;
			if (!p->domains.count)
				continue;
			if (v->v.pool && strcmp(v->v.pool, p->p.name) != 0) {
				diag_add(L->diags, DIAG_ERROR, p->member_origins[k].file,
					 p->member_origins[k].line,
					 "virtual-mta '%s' is in two pools with <domain> blocks ('%s' and '%s'); its settings would be ambiguous",
					 v->v.name, v->v.pool, p->p.name);
				continue;
			}
			v->v.pool = p->p.name;
		}
		p->p.members = members;
		p->p.member_count = n;
		if (n == 0)
			diag_add(L->diags, DIAG_ERROR, p->p.origin.file, p->p.origin.line,
				 "virtual-mta-pool '%s' has no members", p->p.name);
		if (ld_find_vmta_rec(c, p->p.name))
			diag_add(L->diags, DIAG_ERROR, p->p.origin.file, p->p.origin.line,
				 "'%s' is both a virtual-mta and a virtual-mta-pool",
				 p->p.name);
	}
}

static void build_queues(struct loader *L, struct cfg_queue *defaults,
			 struct cfg_origin *def_origin)
{
	struct cfg *c = L->cfg;
	const struct dblock_list *layers[3];

	resolve_dblocks(L, &c->domains);
	warn_duplicates(L, &c->domains);
	for (size_t i = 0; i < c->n_pools; i++) {
		resolve_dblocks(L, &c->pools[i]->domains);
		warn_duplicates(L, &c->pools[i]->domains);
	}
	for (size_t i = 0; i < c->n_vmtas; i++) {
		resolve_dblocks(L, &c->vmtas[i]->domains);
		warn_duplicates(L, &c->vmtas[i]->domains);
	}
	layers[0] = &c->domains;
	c->default_table = build_qtable(L, layers, 1, defaults, def_origin);
	for (size_t i = 0; i < c->n_vmtas; i++) {
		struct vmta_rec *v = c->vmtas[i];
		struct pool_rec *p = v->v.pool ? ld_find_pool_rec(c, v->v.pool) : NULL;
		size_t n = 0;
		layers[n++] = &c->domains;
		if (p && p->domains.count)
			layers[n++] = &p->domains;
		if (v->domains.count)
			layers[n++] = &v->domains;
		v->table = n == 1 ? c->default_table
				  : build_qtable(L, layers, n, defaults, def_origin);
	}
}

static int sblock_chain_cmp(const void *pa, const void *pb)
{
	const struct sblock *a = *(const struct sblock *const *)pa;
	const struct sblock *b = *(const struct sblock *const *)pb;

	if (a->net.prefix != b->net.prefix)
		return a->net.prefix < b->net.prefix ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static bool source_net_contains(const struct cfg_cidr *outer,
				const struct cfg_cidr *inner)
{
	return outer->prefix == 0 || ld_cidr_within(inner, outer);
}

static struct seff *new_seff(struct loader *L, const struct seff *from)
{
	struct seff *e = arena_alloc(L->a, sizeof(*e));

	e->s = from->s;
	e->origin = arena_alloc(L->a, cfg_directive_count * sizeof(*e->origin));
	memcpy(e->origin, from->origin, cfg_directive_count * sizeof(*e->origin));
	return e;
}

static void apply_named(struct loader *L, struct seff *e, const char *name)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < c->n_sblocks; i++)
		if (c->sblocks[i].named && strcmp(c->sblocks[i].name, name) == 0)
			ld_apply_list(L, &e->s, e->origin, &c->sblocks[i].assigns);
	e->s.name = name;
}

static void build_sources(struct loader *L)
{
	struct cfg *c = L->cfg;
	struct seff base = { 0 };
	size_t cap_named = 0, cap_ip = 0;
	struct cfg_cidr any = { .family = AF_INET, .prefix = 0 };

	base.origin = arena_alloc(L->a, cfg_directive_count * sizeof(*base.origin));
	ld_apply_defaults(L, SCOPE_SOURCE, &base.s, base.origin);

	/* distinct named sources and networks (0/0 always present) */
	struct ip_source root = { .net = any, .any = true };
	*PUSH(L, c->ip_sources, c->n_ip_sources, cap_ip) = root;
	for (size_t i = 0; i < c->n_sblocks; i++) {
		struct sblock *sb = &c->sblocks[i];
		if (sb->named) {
			bool seen = false;
			for (size_t k = 0; k < c->n_named; k++)
				seen |= strcmp(c->named[k], sb->name) == 0;
			if (!seen)
				*PUSH(L, c->named, c->n_named, cap_named) = sb->name;
			continue;
		}
		bool seen = sb->net.prefix == 0;
		for (size_t k = 0; k < c->n_ip_sources && !seen; k++)
			seen = c->ip_sources[k].net.prefix == sb->net.prefix &&
			       c->ip_sources[k].net.family == sb->net.family &&
			       memcmp(c->ip_sources[k].net.addr, sb->net.addr, 16) == 0;
		if (!seen)
			*PUSH(L, c->ip_sources, c->n_ip_sources, cap_ip) =
				(struct ip_source){ .net = sb->net };
	}

	const struct sblock **chain = xcalloc(c->n_sblocks + 1, sizeof(*chain));
	for (size_t k = 0; k < c->n_ip_sources; k++) {
		struct ip_source *ip = &c->ip_sources[k];
		size_t n = 0;
		for (size_t i = 0; i < c->n_sblocks; i++)
			if (!c->sblocks[i].named &&
			    source_net_contains(&c->sblocks[i].net, &ip->net))
				chain[n++] = &c->sblocks[i];
		qsort(chain, n, sizeof(*chain), sblock_chain_cmp);
		ip->eff = new_seff(L, &base);
		for (size_t i = 0; i < n; i++)
			ld_apply_list(L, &ip->eff->s, ip->eff->origin, &chain[i]->assigns);
		char name[64];
		cfg_cidr_format(&ip->net, name, sizeof(name));
		ip->eff->s.name = ip->any ? "0/0" : arena_strdup(L->a, name);
		ip->named_eff = arena_alloc(L->a, (c->n_named + 1) * sizeof(struct seff *));
		for (size_t j = 0; j < c->n_named; j++) {
			ip->named_eff[j] = new_seff(L, ip->eff);
			apply_named(L, ip->named_eff[j], c->named[j]);
		}
	}
	free(chain);

	/* per written block, the effective settings it produces (for lint) */
	c->sblock_eff = arena_alloc(L->a, (c->n_sblocks + 1) * sizeof(struct seff *));
	for (size_t i = 0; i < c->n_sblocks; i++) {
		struct sblock *sb = &c->sblocks[i];
		struct ip_source *root_ip = &c->ip_sources[0];
		if (sb->named) {
			for (size_t j = 0; j < c->n_named; j++)
				if (strcmp(c->named[j], sb->name) == 0)
					c->sblock_eff[i] = root_ip->named_eff[j];
			continue;
		}
		for (size_t k = 0; k < c->n_ip_sources; k++) {
			struct ip_source *ip = &c->ip_sources[k];
			if ((sb->net.prefix == 0 && ip->any) ||
			    (ip->net.prefix == sb->net.prefix && !ip->any &&
			     ip->net.family == sb->net.family &&
			     memcmp(ip->net.addr, sb->net.addr, 16) == 0))
				c->sblock_eff[i] = ip->eff;
		}
	}
}

static void check_listener_sources(struct loader *L)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < c->n_listeners; i++) {
		const char *s = c->listeners[i].source;
		bool found = !s;
		for (size_t k = 0; k < c->n_named && !found; k++)
			found = strcmp(c->named[k], s) == 0;
		if (!found)
			diag_add(L->diags, DIAG_ERROR, c->listeners[i].origin.file,
				 c->listeners[i].origin.line,
				 "'smtp-listener': source=%s names no <source %s> block", s, s);
	}
	for (size_t i = 0; i < c->n_users; i++) {
		const char *s = c->users[i].source;
		bool found = !s;
		for (size_t k = 0; k < c->n_named && !found; k++)
			found = strcmp(c->named[k], s) == 0;
		if (!found)
			diag_add(L->diags, DIAG_ERROR, c->users[i].origin.file,
				 c->users[i].origin.line,
				 "<smtp-user %s>: 'source %s' names no <source %s> block",
				 c->users[i].name, s, s);
	}
	size_t gi = cfg_directive_index(cfg_directive_find("source-group", SCOPE_SOURCE));
	for (size_t i = 0; i < c->n_sblocks; i++) {
		const struct seff *e = c->sblock_eff[i];
		if (!e || !e->s.source_group || cfg_source_group_find(c, e->s.source_group))
			continue;
		const struct cfg_origin *o = &e->origin[gi];
		diag_add(L->diags, DIAG_ERROR, o->file, o->line,
			 "'source-group %s' names no <source-group %s> block",
			 e->s.source_group, e->s.source_group);
	}
}

static bool vmta_or_pool_exists(const struct cfg *c, const char *name)
{
	return cfg_vmta_find(c, name) || cfg_pool_find(c, name);
}

/* reroute names in <domain> blocks: a virtual-mta or a pool */
static void check_reroute_refs(struct loader *L, const struct dblock_list *bl)
{
	const struct assign_list *done = NULL;

	for (size_t i = 0; i < bl->count; i++) {
		if (bl->items[i].assigns == done)
			continue;
		done = bl->items[i].assigns;
		for (const struct assign *as = done->head; as; as = as->next)
			if ((strcmp(as->d->name, "reroute-to-virtual-mta") == 0 ||
			     strcmp(as->d->name, "backoff-reroute-to-virtual-mta") == 0) &&
			    as->v.s && *as->v.s && !vmta_or_pool_exists(L->cfg, as->v.s))
				diag_add(L->diags, DIAG_ERROR, as->origin.file, as->origin.line,
					 "'%s': no virtual-mta or pool named '%s'", as->d->name,
					 as->v.s);
	}
}

static void check_vmta_refs(struct loader *L)
{
	struct cfg *c = L->cfg;

	check_reroute_refs(L, &c->domains);
	for (size_t i = 0; i < c->n_pools; i++)
		check_reroute_refs(L, &c->pools[i]->domains);
	for (size_t i = 0; i < c->n_vmtas; i++)
		check_reroute_refs(L, &c->vmtas[i]->domains);

	for (size_t i = 0; i < c->n_sblocks; i++)
		for (const struct assign *as = c->sblocks[i].assigns.head; as; as = as->next) {
			const char *dn = as->d->name;
			if (as->d->scope != SCOPE_SOURCE || as->d->type != CT_STRING ||
			    !as->v.s || !*as->v.s)
				continue;
			const char *name = as->v.s;
			if ((strcmp(dn, "default-virtual-mta") == 0 ||
			     strcmp(dn, "invalid-virtual-mta-fallback") == 0) &&
			    !vmta_or_pool_exists(c, name))
				diag_add(L->diags, DIAG_ERROR, as->origin.file, as->origin.line,
					 "'%s': no virtual-mta or pool named '%s'", dn, name);
			else if (strcmp(dn, "pattern-list") == 0 && !cfg_pattern_list_find(c, name))
				diag_add(L->diags, DIAG_ERROR, as->origin.file, as->origin.line,
					 "'pattern-list': no <pattern-list %s> is defined", name);
		}
	for (const struct assign *as = L->global_assigns.head; as; as = as->next)
		if (strcmp(as->d->name, "cold-virtual-mta") == 0)
			for (size_t k = 0; k < as->v.list.count; k++)
				if (!cfg_vmta_find(c, as->v.list.items[k]))
					diag_add(L->diags, DIAG_ERROR, as->origin.file, as->origin.line,
						 "'cold-virtual-mta': no virtual-mta named '%s'",
						 as->v.list.items[k]);
	for (size_t i = 0; i < c->n_pls; i++)
		for (size_t k = 0; k < c->pls[i].count; k++) {
			const struct cfg_pattern_rule *r = &c->pls[i].rules[k];
			if (r->virtual_mta && !vmta_or_pool_exists(c, r->virtual_mta))
				diag_add(L->diags, DIAG_ERROR, r->origin.file, r->origin.line,
					 "'virtual-mta=%s': no virtual-mta or pool of that name",
					 r->virtual_mta);
		}
}

/* check_shards - one domain in two shards is an error; so is a shared cpu. */
static void check_shards(struct loader *L)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < c->n_shards; i++) {
		const struct cfg_shard *a = &c->shards[i];
		if (c->global.shard_count && a->index >= c->global.shard_count)
			diag_add(L->diags, DIAG_ERROR, a->origin.file, a->origin.line,
				 "<shard %u> does not exist: 'shards %u' numbers them 0 to %u",
				 a->index, c->global.shard_count, c->global.shard_count - 1);
		for (size_t j = i + 1; j < c->n_shards; j++) {
			const struct cfg_shard *b = &c->shards[j];
			if (a->cpu >= 0 && a->cpu == b->cpu &&
			    !c->global.allow_shard_oversubscription)
				diag_add(L->diags, DIAG_ERROR, b->origin.file, b->origin.line,
					 "<shard %u> uses cpu %d, already given to <shard %u> at %s:%d (set allow-shard-oversubscription yes to share cores)",
					 b->index, b->cpu, a->index, a->origin.file, a->origin.line);
		}
		for (size_t k = 0; k < a->domains.count; k++)
			for (size_t j = i; j < c->n_shards; j++) {
				const struct cfg_shard *b = &c->shards[j];
				for (size_t m = (j == i ? k + 1 : 0); m < b->domains.count; m++)
					if (strcasecmp(a->domains.items[k], b->domains.items[m]) == 0)
						diag_add(L->diags, DIAG_ERROR, b->origin.file, b->origin.line,
							 "domain '%s' is pinned to <shard %u> and to <shard %u>: a domain belongs to exactly one shard",
							 b->domains.items[m], a->index, b->index);
			}
	}
}

/*
 * Built-in bounce classification, matched after the operator's rules
 * against "X.Y.Z;reply text"; the first match wins.  As in PowerMTA's
 * shipped set, the text rules come before the status-code rules: many
 * receivers put a generic or wrong code on a reply (5.5.0 and 5.4.1 for an
 * unknown user, 5.2.1 for "addressee unknown", 5.7.1 for relaying, block
 * lists and DMARC alike), while the text says what happened.
 *
 * Among the text rules, the order settles replies that name two things:
 * the cause before its consequence (a full mailbox before the retry
 * timeout that followed it, an expired message before the refused
 * connection that made it expire); failed authentication and IP block
 * lists before the spam, content or sender they mention; the sender and
 * the domain before the mailbox words.  The generic
 * policy words come last among the texts, and a bare "rejected" is not one
 * of them: it says nothing of why, so such replies keep their code's class.
 * tests/data/bounce-corpus.tsv holds the real replies these rules answer.
 */
static const struct {
	const char *re;
	const char *category;
} builtin_bounce_rules[] = {
	/* recipient's storage: "over quota", "mailbox is full", 452 wording */
	{ "/mailbox (is |was )?full|full mailbox|over (the )?(storage )?quota|(?<!sending )quota exceeded|exceeded (its |the )?(storage|quota)|out of storage|storage (space|allocation)|insufficient (disk |system )?(space|storage)|mailbox size limit/i", "quota-issues" },
	/* queue lifetime ran out (Exchange, Exim, sendmail wording) */
	{ "/message (has )?expired|expired after|(queue|delivery) time expired|retry time(out)? (not reached|exceeded)|failing for a long time|could not be delivered for|too long in (the )?queue/i", "message-expired" },
	{ "/\\bvirus|malware|trojan|infected with/i", "virus-related" },
	/* failed SPF/DKIM/DMARC or rDNS checks: the texts often add "to protect our users from spam" */
	{ "/\\bdmarc\\b|\\bspf\\b|\\bdkim\\b|unauthenticated|sender policy framework|\\bptr\\b|reverse dns|\\brdns\\b|cannot find your (host ?name|reverse)/i", "policy-related" },
	/* our side must change: TLS or SMTP AUTH required or refused */
	{ "/starttls|\\btls\\b[^;]{0,20}required|requires? (encryption|\\btls\\b)|authentication (is )?required|username and password|password (not accepted|incorrect)|incorrect authentication/i", "bad-configuration" },
	/* the message itself breaks RFC 5322; checked before "spam" for the same reason */
	{ "/rfc ?5322|malformed|not rfc[- ]?\\d* ?compliant|invalid (header|characters)|bare ?line ?feed/i", "content-related" },
	/* IP or domain reputation: DNSBLs, provider block lists, complaints */
	{ "/spam|black ?-?list|block ?-?list|blocked using|\\bdnsbl|\\brbl\\b|blackhole|reputation|unsolicited|junk mail|user complaints|banned (sending ip|sender)/i", "spam-related" },
	{ "/relay(ing)? (access )?(denied|not permitted|prohibited|not allowed|refused)|unable to relay|not permitted to relay/i", "relaying-issues" },
	/* the envelope sender is wrong, not merely unwelcome */
	{ "/sender (address|domain)[^;]{0,40}(not found|does not exist|invalid|unknown|not (a )?valid|unverified|fully-qualified|unresolvable)|invalid sender|sender denied|domain of sender address/i", "invalid-sender" },
	{ "/\\b(account|mailbox|user|address|recipient)\\b[^.;]{0,40}?\\b((is|has been)( now| currently| temporarily)? )?(disabled|inactive|suspended|deactivated|discontinued|closed)|\\binactive (e-?mail )?(user|account|mailbox|address)|no longer (active|in use)/i", "inactive-mailbox" },
	{ "/host or domain name not found|host unknown|unknown host|domain (name )?(not found|does not exist|doesn't exist|unknown)|no such domain|non-?existent ?(domain|hosts?)\\b|null mx|no (mx|mail exchanger)s?\\b|no address for any (mx|mail exchanger)|could not find a mail server|unknown mail server|invalid domain|accepts no mail/i", "bad-domain" },
	{ "/\\b(no such|unknown|invalid|illegal|non-?existent|bad) (local )?(user|mailbox|recipient|address|alias|account|addressee)|\\b(user|mailbox|recipient|addressee|account|address|alias)\\b[^.;]{0,40}?\\b(unknown|not found|does not exist|doesn't exist|not exist)|recipientnotfound|doesn't have an? \\S+ account|no mailbox here|mailbox (unavailable|not found)|no longer (valid|available|on (this |the )?server)|unroutea?ble address|not a valid (mailbox|recipient)|not listed in (the )?(\\S+ )?directory/i", "bad-mailbox" },
	/*
	 * Exchange Online's directory-based edge blocking: the recipient is not
	 * in the tenant's directory.  Postfix says "Recipient address rejected"
	 * for any recipient restriction, with other codes, so the code is kept.
	 */
	{ "/^[45]\\.4\\.1;recipient address rejected/i", "bad-mailbox" },
	{ "/loops? back to myself|mail loop|routing loop|loop detected|too many hops|hop count|exceeded \\d+ hops|unable to route|routing error/i", "routing-errors" },
	/* the receiver's rate limits (reputation-based ones are spam-related above) */
	{ "/receiving mail (too quickly|at a rate)|too many (concurrent |simultaneous )?(connections|messages|sessions|recipients)|rate limit|throttl|too fast|(sending|relay) (quota|limits?) exceeded/i", "policy-related" },
	/* the session broke after it started */
	{ "/lost connection|connection (dropped|reset|closed)|broken pipe|conversation with \\S+ timed out|timeout\\W+closing connection|timed out while (sending|receiving)|read error|premature (end|eof)/i", "bad-connection" },
	/* no session at all */
	{ "/connection (timed out|refused)|timed out while connecting|no route to host|network is unreachable|host (is )?unreachable|(unable|failed) to (connect|establish)|could not connect|wasn't able to establish|no answer|not responding|did not respond/i", "no-answer-from-host" },
	{ "/syntax error|unrecognized command|command (unrecognized|not recognized|not implemented)|bad sequence|protocol (error|violation)|line too long|out of sequence/i", "protocol-errors" },
	/* size and attachments */
	{ "/message (size|too (big|large))|(e-?mail|message) size|size (exceeds|limit)|exceeds? (the |fixed )?(maximum |allowed )?(message )?size|too (big|large)|attachment|message content|content (rejected|refused|policy|filter)/i", "content-related" },
	/* receiver policy in general: allow lists, greylisting, "denied" */
	{ "/polic(y|ies)|prohibit|not authori[sz]ed|denied|refused|banned|not (allowed|accepted|permitted)|client host rejected|(white|allow) ?list|greylist/i", "policy-related" },
	/* RFC 3463 codes (and RFC 7505's X.1.10, null MX) when the text said nothing we know */
	{ "/^[45]\\.1\\.[1346];/", "bad-mailbox" },
	{ "/^[45]\\.1\\.(2|10);/", "bad-domain" },
	{ "/^[45]\\.1\\.[78];/", "invalid-sender" },
	{ "/^[45]\\.2\\.1;/", "inactive-mailbox" },
	{ "/^[45]\\.2\\.2;/", "quota-issues" },
	{ "/^[45]\\.2\\.3;/", "content-related" },
	{ "/^[45]\\.3\\.4;/", "content-related" },
	{ "/^[45]\\.3\\.5;/", "bad-configuration" },
	{ "/^[45]\\.4\\.1;/", "no-answer-from-host" },
	{ "/^[45]\\.4\\.2;/", "bad-connection" },
	{ "/^[45]\\.4\\.[346];/", "routing-errors" },
	{ "/^[45]\\.4\\.7;/", "message-expired" },
	{ "/^[45]\\.5\\.\\d+;/", "protocol-errors" },
	{ "/^[45]\\.6\\.\\d+;/", "content-related" },
	{ "/^[45]\\.7\\.\\d+;/", "policy-related" },
	{ "/^2\\.\\d+\\.\\d+;/", "success" },
	{ "/^/", "other" },
};

static void add_builtin_bounce_rules(struct loader *L)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < ARRAY_SIZE(builtin_bounce_rules); i++) {
		char e[ERRLEN];
		struct cfg_regex *re = NULL;
		int rc = cfg_regex_compile(builtin_bounce_rules[i].re, &re, e, sizeof(e));
		BUG_ON(rc < 0);	/* the built-in set is ours: it must compile */
		*PUSH(L, c->bounce_rules, c->n_bounce_rules, c->cap_bounce_rules) =
			(struct cfg_bounce_rule){
				.re = ld_keep_regex(L, re),
				.category = builtin_bounce_rules[i].category,
				.action = CFG_BOUNCE_CLASSIFY,
			};
	}
}

static void finish_vmtas(struct loader *L)
{
	struct cfg *c = L->cfg;

	for (size_t i = 0; i < c->n_vmtas; i++) {
		struct vmta_rec *v = c->vmtas[i];
		const char *name = v->v.name;
		struct cfg_origin o = v->v.origin;
		const char *pool = v->v.pool;
		ld_apply_defaults(L, SCOPE_VMTA, &v->v, NULL);
		ld_apply_list(L, &v->v, NULL, &v->assigns);
		v->v.name = name;
		v->v.origin = o;
		v->v.pool = pool;
		v->v.source_hosts = v->hosts;
		v->v.source_host_count = v->n_hosts;
		v->v.domain_keys = (struct cfg_domain_keys){ v->n_keys, v->keys };
	}
	if (c->n_vmtas)
		qsort(c->vmtas, c->n_vmtas, sizeof(*c->vmtas), vmta_cmp);
}

static void finish_global(struct loader *L)
{
	struct cfg *c = L->cfg;
	struct cfg_global *g = &c->global;

	c->global_origin = arena_alloc(L->a, cfg_directive_count * sizeof(*c->global_origin));
	ld_apply_defaults(L, SCOPE_GLOBAL, g, c->global_origin);
	/* a top-level directive set twice: the later wins, say so */
	for (const struct assign *x = L->global_assigns.head; x; x = x->next)
		for (const struct assign *y = x->next; y; y = y->next)
			if (x->d == y->d && x->d->type != CT_STRLIST) {
				diag_add(L->diags, DIAG_WARNING, y->origin.file, y->origin.line,
					 "'%s' overrides the value set at %s:%d", y->d->name,
					 x->origin.file, x->origin.line);
				break;
			}
	ld_apply_list(L, g, c->global_origin, &L->global_assigns);
	/* relay-address /re/: compiled once, matched against the whole address */
	const struct cfg_regex **res = NULL;
	size_t nres = 0, cap = 0;
	for (const struct assign *x = L->global_assigns.head; x; x = x->next) {
		if (strcmp(x->d->name, "relay-address") != 0)
			continue;
		for (size_t i = 0; i < x->v.list.count; i++) {
			const char *text = x->v.list.items[i];
			char e[ERRLEN];
			struct cfg_regex *re = NULL;
			if (text[0] != '/')
				continue;
			if (cfg_regex_compile(text, &re, e, sizeof(e)) < 0) {
				diag_add(L->diags, DIAG_ERROR, x->origin.file, x->origin.line,
					 "'relay-address': %s", e);
				continue;
			}
			*PUSH(L, res, nres, cap) = ld_keep_regex(L, re);
		}
	}
	g->relay_address_res = res;
	g->relay_address_re_count = nres;
	if (!c->n_listeners) {
		char e[ERRLEN];
		struct cfg_listener li = { .text = "0.0.0.0:25" };
		int rc = cfg_parse_listen_addr(li.text, &li.addr, e, sizeof(e));
		BUG_ON(rc < 0);
		*PUSH(L, c->listeners, c->n_listeners, c->cap_listeners) = li;
	}
	g->listeners = c->listeners;
	g->listener_count = c->n_listeners;
	g->http_access = c->http;
	g->http_access_count = c->n_http;
	g->source_hosts = c->ghosts;
	g->source_host_count = c->n_ghosts;
	g->domain_keys = (struct cfg_domain_keys){ c->n_gkeys, c->gkeys };
	g->conn_limits = c->connlim;
	g->conn_limit_count = c->n_connlim;
	g->mx_rollups = c->rollups;
	g->mx_rollup_count = c->n_rollups;
	/* <spool DIR> names the spool when disk-queue does not */
	if (!c->global_origin[cfg_directive_index(cfg_directive_find("disk-queue", SCOPE_GLOBAL))].file &&
	    c->n_spools && c->spools[0].dir)
		g->spool_dir = c->spools[0].dir;
	if (c->n_spools > 1)
		diag_add(L->diags, DIAG_WARNING, c->spools[1].origin.file,
			 c->spools[1].origin.line,
			 "only one spool directory is used today; '%s' is ignored",
			 c->spools[1].dir);
}

/*
 * ld_resolve - everything a load does after the walk.  Pools learn their
 * members before the virtual-mtas are finished (a vmta's pool decides
 * its <domain> layers), and every name is checked before the effective
 * settings are built from it.
 */
void ld_resolve(struct loader *L)
{
	struct cfg_queue qdef = { 0 };
	struct cfg_origin *qorigin;

	finish_global(L);
	resolve_pools(L);
	resolve_suppression_lists(L);
	finish_vmtas(L);
	check_vmta_refs(L);
	check_shards(L);

	qorigin = arena_alloc(L->a, cfg_directive_count * sizeof(*qorigin));
	ld_apply_defaults(L, SCOPE_DOMAIN, &qdef, qorigin);
	build_queues(L, &qdef, qorigin);
	build_sources(L);
	check_listener_sources(L);
	add_builtin_bounce_rules(L);
}
