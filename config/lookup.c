/*
 * config/lookup.c - answers the lookups of config.h on a loaded model
 * (queue settings by domain and virtual-mta, source settings by client
 * address, bounce classification, pools, lists, ...) and model.h's
 * questions for lint (where a value came from, which blocks were written).
 *
 * Any thread holding a reference: the model is immutable after load,
 * and nothing here writes to it.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model_int.h"
#include "config/values.h"

static struct qeff *qfind(const struct qentry *arr, size_t n, const char *d)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(d, arr[mid].pat.d);
		if (c == 0)
			return arr[mid].eff;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* qtable_lookup - most specific entry: d, [*.]d, *.parent, [*.]parent ... */
static const struct qeff *qtable_lookup(const struct qtable *t,
					const char *domain)
{
	char buf[256];
	size_t len = strlen(domain);
	struct qeff *e;

	if (len == 0 || len >= sizeof(buf))
		return t->all;
	for (size_t i = 0; i <= len; i++)
		buf[i] = (char)tolower((unsigned char)domain[i]);
	if (len > 1 && buf[len - 1] == '.')
		buf[--len] = '\0';

	if (buf[0] == '[' && t->n_literal) {
		struct cfg_cidr c;
		char e2[8], inner[64];
		snprintf(inner, sizeof(inner), "%.*s", (int)(len - 2), buf + 1);
		if (len > 2 && buf[len - 1] == ']' &&
		    cfg_parse_cidr(inner, &c, e2, sizeof(e2)) == 0) {
			const struct qentry *best = NULL;
			for (size_t i = 0; i < t->n_literal; i++)
				if (ld_cidr_within(&c, &t->literal[i].pat.lit) &&
				    (!best || t->literal[i].pat.lit.prefix >
						      best->pat.lit.prefix))
					best = &t->literal[i];
			if (best)
				return best->eff;
		}
		return t->all;
	}
	if ((e = qfind(t->exact, t->n_exact, buf)))
		return e;
	if ((e = qfind(t->self_sub, t->n_self_sub, buf)))
		return e;
	for (const char *s = strchr(buf, '.'); s; s = strchr(s + 1, '.')) {
		if ((e = qfind(t->sub, t->n_sub, s + 1)))
			return e;
		if ((e = qfind(t->self_sub, t->n_self_sub, s + 1)))
			return e;
	}
	return t->all;
}

const char *cfg_path(const struct cfg *cfg)
{
	return cfg->path;
}

const struct cfg_global *cfg_global(const struct cfg *cfg)
{
	return &cfg->global;
}

static const struct vmta_rec *vmta_rec_find(const struct cfg *cfg,
					    const char *name)
{
	size_t lo = 0, hi = cfg->n_vmtas;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(name, cfg->vmtas[mid]->v.name);
		if (c == 0)
			return cfg->vmtas[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const struct cfg_queue *cfg_queue_lookup(const struct cfg *cfg,
					 const char *domain, const char *vmta)
{
	const struct qtable *t = cfg->default_table;

	if (vmta && strcmp(vmta, "{default}") != 0) {
		const struct vmta_rec *v = vmta_rec_find(cfg, vmta);
		if (!v)
			return NULL;
		t = v->table;
	}
	return &qtable_lookup(t, domain)->q;
}

static bool client_in(const struct ip_source *ip, const struct sockaddr *sa)
{
	return ip->any || cfg_cidr_contains(&ip->net, sa);
}

const struct cfg_source *cfg_source_lookup(const struct cfg *cfg,
					   const struct sockaddr *client,
					   const char *named)
{
	const struct ip_source *best = &cfg->ip_sources[0];

	for (size_t i = 1; client && i < cfg->n_ip_sources; i++) {
		const struct ip_source *ip = &cfg->ip_sources[i];
		if (client_in(ip, client) && ip->net.prefix > best->net.prefix)
			best = ip;
	}
	if (!named)
		return &best->eff->s;
	for (size_t j = 0; j < cfg->n_named; j++)
		if (strcmp(cfg->named[j], named) == 0)
			return &best->named_eff[j]->s;
	return NULL;
}

size_t cfg_vmta_count(const struct cfg *cfg)
{
	return cfg->n_vmtas;
}

const struct cfg_vmta *cfg_vmta_at(const struct cfg *cfg, size_t i)
{
	return i < cfg->n_vmtas ? &cfg->vmtas[i]->v : NULL;
}

const struct cfg_vmta *cfg_vmta_find(const struct cfg *cfg, const char *name)
{
	const struct vmta_rec *v = vmta_rec_find(cfg, name);

	return v ? &v->v : NULL;
}

size_t cfg_pool_count(const struct cfg *cfg)
{
	return cfg->n_pools;
}

const struct cfg_pool *cfg_pool_at(const struct cfg *cfg, size_t i)
{
	return i < cfg->n_pools ? &cfg->pools[i]->p : NULL;
}

const struct cfg_pool *cfg_pool_find(const struct cfg *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_pools; i++)
		if (strcmp(cfg->pools[i]->p.name, name) == 0)
			return &cfg->pools[i]->p;
	return NULL;
}

#define SIMPLE_ACCESSORS(kind, type, arr, n)                                  \
	size_t cfg_##kind##_count(const struct cfg *cfg)                     \
	{                                                                    \
		return cfg->n;                                               \
	}                                                                    \
	const type *cfg_##kind##_at(const struct cfg *cfg, size_t i)         \
	{                                                                    \
		return i < cfg->n ? &cfg->arr[i] : NULL;                      \
	}

SIMPLE_ACCESSORS(acct, struct cfg_acct, accts, n_accts)
SIMPLE_ACCESSORS(rejectlog, struct cfg_rejectlog, rejectlogs, n_rejectlogs)
SIMPLE_ACCESSORS(spool, struct cfg_spool, spools, n_spools)
SIMPLE_ACCESSORS(bounce_rule, struct cfg_bounce_rule, bounce_rules, n_bounce_rules)
SIMPLE_ACCESSORS(shard, struct cfg_shard, shards, n_shards)

const struct cfg_bounce_rule *cfg_bounce_classify(const struct cfg *cfg,
						  const char *status_diag,
						  const char **category)
{
	const struct cfg_bounce_rule *hit = NULL;
	size_t len = strlen(status_diag);

	for (size_t i = 0; i < cfg->n_bounce_rules; i++) {
		const struct cfg_bounce_rule *r = &cfg->bounce_rules[i];
		if (cfg_regex_match(r->re, status_diag, len) != 1)
			continue;
		if (!hit)
			hit = r;
		if (r->category) {
			*category = r->category;
			return hit;
		}
	}
	/* the built-in catch-all always matches: a model without it is broken */
	BUG("cfg_bounce_classify: none of %zu bounce rules matched '%s'",
	    cfg->n_bounce_rules, status_diag);
}

const struct cfg_source_group *cfg_source_groups(const struct cfg *cfg, size_t *n)
{
	*n = cfg->n_groups;
	return cfg->groups;
}

const struct cfg_source_group *cfg_source_group_find(const struct cfg *cfg,
						     const char *name)
{
	for (size_t i = 0; i < cfg->n_groups; i++)
		if (strcmp(cfg->groups[i].name, name) == 0)
			return &cfg->groups[i];
	return NULL;
}

size_t cfg_processor_count(const struct cfg *cfg)
{
	return cfg->n_procs;
}

bool cfg_address_set_match_regex(const struct cfg_address_set *set, const char *rcpt)
{
	size_t len = strlen(rcpt);

	for (size_t k = 0; k < set->address_re_count; k++)
		if (cfg_regex_match(set->address_res[k], rcpt, len) == 1)
			return true;
	return false;
}

bool cfg_address_set_match(const struct cfg_address_set *set, const char *rcpt)
{
	const char *at = strrchr(rcpt, '@');

	for (size_t k = 0; k < set->addresses.count; k++)
		if (str_ieq(set->addresses.items[k], rcpt))
			return true;
	for (size_t k = 0; at && k < set->domains.count; k++)
		if (str_ieq(set->domains.items[k], at + 1))
			return true;
	return cfg_address_set_match_regex(set, rcpt);
}

const struct cfg_processor *cfg_processor_match(const struct cfg *cfg,
						const char *rcpt)
{
	for (size_t i = 0; i < cfg->n_procs; i++)
		if (cfg_address_set_match(&cfg->procs[i].addrs, rcpt))
			return &cfg->procs[i];
	return NULL;
}

size_t cfg_address_list_count(const struct cfg *cfg)
{
	return cfg->n_alists;
}

const struct cfg_address_list *cfg_address_list_at(const struct cfg *cfg, size_t i)
{
	return i < cfg->n_alists ? &cfg->alists[i] : NULL;
}

const struct cfg_address_list *cfg_address_list_find(const struct cfg *cfg,
						     const char *name)
{
	for (size_t i = 0; i < cfg->n_alists; i++)
		if (str_ieq(cfg->alists[i].name, name))
			return &cfg->alists[i];
	return NULL;
}

/* The categories that say the address itself is dead (issue #15). */
static const char *const builtin_hard_categories[] = {
	"bad-mailbox", "bad-domain", "inactive-mailbox",
};

enum cfg_bounce_class cfg_bounce_class_of(const struct cfg *cfg,
					  const char *category)
{
	if (!category)
		return CFG_BOUNCE_SOFT;
	/* the last line for a category wins, as a later setting does */
	for (size_t i = cfg->n_bounce_classes; i-- > 0;)
		if (str_ieq(cfg->bounce_classes[i].category, category))
			return cfg->bounce_classes[i].cls;
	for (size_t i = 0; i < ARRAY_SIZE(builtin_hard_categories); i++)
		if (str_ieq(builtin_hard_categories[i], category))
			return CFG_BOUNCE_HARD;
	return CFG_BOUNCE_SOFT;
}

const char *cfg_bounce_class_name(enum cfg_bounce_class c)
{
	return c == CFG_BOUNCE_HARD ? "hard" : "soft";
}

const struct cfg_smtp_user *cfg_smtp_user_find(const struct cfg *cfg,
					       const char *name)
{
	for (size_t i = 0; i < cfg->n_users; i++)
		if (cfg->users[i].name && strcmp(cfg->users[i].name, name) == 0)
			return &cfg->users[i];
	return NULL;
}

const struct cfg_smtp_pattern_list *
cfg_smtp_pattern_list_find(const struct cfg *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_spls; i++)
		if (strcmp(cfg->spls[i].name, name) == 0)
			return &cfg->spls[i];
	return NULL;
}

const struct cfg_pattern_list *cfg_pattern_list_find(const struct cfg *cfg,
						     const char *name)
{
	for (size_t i = 0; i < cfg->n_pls; i++)
		if (strcmp(cfg->pls[i].name, name) == 0)
			return &cfg->pls[i];
	return NULL;
}

/*
 * cfg_pattern_route - rules in file order; the first that matches and
 * names a virtual-mta wins.  A rule with only recipient-priority= routes
 * nothing, so the search goes on past it.
 */
const char *cfg_pattern_route(const struct cfg_pattern_list *pl,
			      const struct cfg_route_msg *m)
{
	for (size_t i = 0; pl && i < pl->count; i++) {
		const struct cfg_pattern_rule *r = &pl->rules[i];
		bool hit = false;

		if (!r->virtual_mta)
			continue;
		switch (r->field) {
		case CFG_MATCH_MAIL_FROM: {
			const char *f = m->mail_from ? m->mail_from : "";
			hit = cfg_regex_match(r->re, f, strlen(f)) == 1;
			break;
		}
		case CFG_MATCH_RCPT_TO:
			for (size_t k = 0; k < m->nrcpt && !hit; k++) {
				const char *a = m->rcpt(m->ctx, k);
				hit = cfg_regex_match(r->re, a, strlen(a)) == 1;
			}
			break;
		case CFG_MATCH_HEADER:
			hit = m->header && m->header(m->ctx, r->header, r->re);
			break;
		}
		if (hit)
			return r->virtual_mta;
	}
	return NULL;
}

static struct cfg_origin origin_by_name(const struct cfg_origin *origins,
					const char *directive, enum cfg_scope scope)
{
	const struct cfg_directive *d = cfg_directive_find(directive, scope);

	BUG_ON(!d);
	return origins[cfg_directive_index(cfg_directive_canonical(d))];
}

struct cfg_origin cfg_queue_origin(const struct cfg_queue *q, const char *directive)
{
	const struct qeff *e = (const struct qeff *)q;

	return origin_by_name(e->origin, directive, SCOPE_DOMAIN);
}

struct cfg_origin cfg_source_origin(const struct cfg_source *s, const char *directive)
{
	const struct seff *e = (const struct seff *)s;

	return origin_by_name(e->origin, directive, SCOPE_SOURCE);
}

struct cfg_origin cfg_global_origin(const struct cfg *cfg, const char *directive)
{
	return origin_by_name(cfg->global_origin, directive, SCOPE_GLOBAL);
}

size_t cfg_domain_pattern_count(const struct cfg *cfg)
{
	return cfg->n_pattern_info;
}

const struct cfg_domain_pattern_info *cfg_domain_pattern_at(const struct cfg *cfg,
							    size_t i)
{
	return i < cfg->n_pattern_info ? &cfg->pattern_info[i] : NULL;
}

bool cfg_domain_pattern_uint(const struct cfg *cfg, size_t i,
			     const char *directive, uint64_t *value,
			     struct cfg_origin *where)
{
	const struct cfg_directive *d = cfg_directive_find(directive, SCOPE_DOMAIN);
	bool found = false;

	BUG_ON(!d || d->type != CT_UINT || i >= cfg->n_pattern_assigns);
	d = cfg_directive_canonical(d);
	for (const struct assign *as = cfg->pattern_assigns[i]->head; as; as = as->next)
		if (as->d == d) {
			*value = as->v.u;
			*where = as->origin;
			found = true;	/* the last one written wins */
		}
	return found;
}

size_t cfg_source_block_count(const struct cfg *cfg)
{
	return cfg->n_sblocks;
}

const struct cfg_source *cfg_source_block_effective(const struct cfg *cfg,
						    size_t i,
						    struct cfg_origin *where)
{
	if (i >= cfg->n_sblocks || !cfg->sblock_eff[i])
		return NULL;
	if (where)
		*where = cfg->sblocks[i].origin;
	return &cfg->sblock_eff[i]->s;
}
