/*
 * config/special.c - the handlers of CT_SPECIAL directives, the ones
 * whose value is more than one typed word (smtp-listener, domain-key,
 * reply, records, ...): one function per handler id of the directive
 * table, found through special_handlers[].
 *
 * Loader thread only, during cfg_load_*.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model_int.h"
#include "config/values.h"
#include "util/dkim.h"

/* trim - cut blanks at both ends, in place. */
static char *trim(char *s)
{
	size_t len;

	while (*s == ' ' || *s == '\t')
		s++;
	len = strlen(s);
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		s[--len] = '\0';
	return s;
}

/* key_path - a relative KEYFILE is relative to the file that names it. */
static const char *key_path(struct loader *L, const struct cfg_node *n,
			    const char *path)
{
	const char *slash = n->file ? strrchr(n->file, '/') : NULL;

	if (path[0] == '/' || !slash)
		return path;
	return arena_printf(L->a, "%.*s/%s", (int)(slash - n->file), n->file, path);
}

/*
 * special_domain_key - SELECTOR,DOMAIN,KEYFILE: the key is read now, so a
 * key that would not sign is an error here, not a surprise at delivery,
 * and a root-only key file works (we load before the privilege drop).
 */
static bool special_domain_key(struct loader *L, const struct cfg_node *n,
			       const struct cfg_directive *d, void *scope_obj,
			       struct assign *as)
{
	struct vmta_rec *v = scope_obj;
	struct cfg *c = L->cfg;
	char *text = arena_strdup(L->a, ld_joined_words(L, n, 0));
	char *part[3];
	size_t np = 0;
	char e[ERRLEN];

	for (char *p = text; np < 3; np++) {
		char *comma = np < 2 ? strchr(p, ',') : NULL;
		if (comma)
			*comma = '\0';
		part[np] = trim(p);
		if (!comma) {
			np++;
			break;
		}
		p = comma + 1;
	}
	if (np != 3 || !*part[0] || !*part[1] || !*part[2]) {
		ld_err(L, n, "'domain-key' expects SELECTOR,DOMAIN,KEYFILE, got '%s'", ld_joined_words(L, n, 0));
		return false;
	}
	for (const char *s = part[0]; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_') {
			ld_err(L, n, "'domain-key': '%s' is not a selector (letters, digits, '-', '_' and dots)",
			       part[0]);
			return false;
		}
	if (strcmp(part[1], "*") != 0 && !ld_valid_domain_text(part[1])) {
		ld_err(L, n, "'domain-key': '%s' is not a domain (or *)", part[1]);
		return false;
	}
	const char *path = key_path(L, n, part[2]);
	struct dkim_key *key = NULL;
	if (dkim_key_load(path, &key, e, sizeof(e)) < 0) {
		ld_err(L, n, "'domain-key': %s", e);
		return false;
	}
	*PUSH(L, c->dkim_keys, c->n_dkim_keys, c->cap_dkim_keys) = key;
	if (dkim_key_alg(key) == DKIM_RSA_SHA256 && dkim_key_bits(key) < DKIM_RSA_GOOD_BITS)
		ld_warn(L, n, "'domain-key': '%s' is a %u-bit RSA key; receivers expect %u bits (Gmail treats shorter keys as weak)",
			path, dkim_key_bits(key), DKIM_RSA_GOOD_BITS);
	for (char *s = part[1]; *s; s++)
		*s = (char)tolower((unsigned char)*s);
	struct cfg_domain_key k = {
		.selector = part[0], .domain = part[1], .path = path,
		.key = key, .origin = ld_origin_of(n),
	};
	if (v)
		*PUSH(L, v->keys, v->n_keys, v->cap_keys) = k;
	else
		*PUSH(L, c->gkeys, c->n_gkeys, c->cap_gkeys) = k;
	return false;
}

/* special_listener - smtp-listener ADDR:PORT [source=NAME] [tls=immediate] */
static bool special_listener(struct loader *L, const struct cfg_node *n,
			     const struct cfg_directive *d, void *scope_obj,
			     struct assign *as)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];

	if (n->nwords < 1) {
		ld_err(L, n, "'smtp-listener' needs ADDR:PORT");
		return false;
	}
	struct cfg_listener li = { .origin = ld_origin_of(n),
				   .text = arena_strdup(L->a, n->words[0]) };
	if (cfg_parse_listen_addr(n->words[0], &li.addr, e, sizeof(e)) < 0) {
		ld_err(L, n, "'smtp-listener': %s, got '%s'", e, n->words[0]);
		return false;
	}
	for (size_t i = 1; i < n->nwords; i++) {
		const char *w = n->words[i];
		if (strncasecmp(w, "source=", 7) == 0 && w[7]) {
			li.source = arena_strdup(L->a, w + 7);
		} else if (str_ieq(w, "tls=immediate") ||
			   str_ieq(w, "immediate-tls") ||
			   str_ieq(w, "tls=yes")) {
			li.immediate_tls = true;
		} else {
			ld_err(L, n, "'smtp-listener': unknown option '%s' (expected source=NAME or tls=immediate)",
			       w);
			return false;
		}
	}
	for (size_t i = 0; i < c->n_listeners; i++)
		if (c->listeners[i].addr.len == li.addr.len &&
		    memcmp(&c->listeners[i].addr.ss, &li.addr.ss,
			   li.addr.len) == 0) {
			ld_err(L, n, "'smtp-listener': %s is already a listener (%s:%d)",
			       li.text, c->listeners[i].origin.file,
			       c->listeners[i].origin.line);
			return false;
		}
	*PUSH(L, c->listeners, c->n_listeners, c->cap_listeners) = li;
	return false;
}

/* special_http_access - http-access CIDR LEVEL[,deny-logs] */
static bool special_http_access(struct loader *L, const struct cfg_node *n,
				const struct cfg_directive *d, void *scope_obj,
				struct assign *as)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];

	if (n->nwords != 2) {
		ld_err(L, n, "'http-access' expects CIDR none|monitor|operator|admin[,deny-logs]");
		return false;
	}
	struct cfg_http_access h = { .origin = ld_origin_of(n) };
	if (cfg_parse_cidr(n->words[0], &h.net, e, sizeof(e)) < 0) {
		ld_err(L, n, "'http-access': %s, got '%s'", e, n->words[0]);
		return false;
	}
	char *lv = arena_strdup(L->a, n->words[1]);
	for (char *tok = strtok(lv, ","); tok; tok = strtok(NULL, ",")) {
		if (str_ieq(tok, "none"))
			h.level = CFG_HTTP_NONE;
		else if (str_ieq(tok, "monitor"))
			h.level = CFG_HTTP_MONITOR;
		else if (str_ieq(tok, "operator"))
			h.level = CFG_HTTP_OPERATOR;
		else if (str_ieq(tok, "admin"))
			h.level = CFG_HTTP_ADMIN;
		else if (str_ieq(tok, "deny-logs"))
			h.deny_logs = true;
		else {
			ld_err(L, n, "'http-access': unknown access level '%s' (expected none, monitor, operator or admin)",
			       tok);
			return false;
		}
	}
	*PUSH(L, c->http, c->n_http, c->cap_http) = h;
	return false;
}

/* special_source_host - smtp-source-host IP HOSTNAME (global or per vmta) */
static bool special_source_host(struct loader *L, const struct cfg_node *n,
				const struct cfg_directive *d, void *scope_obj,
				struct assign *as)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];

	if (n->nwords != 2) {
		ld_err(L, n, "'smtp-source-host' expects IP HOSTNAME");
		return false;
	}
	struct cfg_cidr ip;
	if (cfg_parse_cidr(n->words[0], &ip, e, sizeof(e)) < 0) {
		ld_err(L, n, "'smtp-source-host': %s, got '%s'", e, n->words[0]);
		return false;
	}
	struct cfg_source_host h = {
		.ip = arena_strdup(L->a, n->words[0]),
		.hostname = arena_strdup(L->a, n->words[1]),
		.origin = ld_origin_of(n),
	};
	if (scope_obj) {
		struct vmta_rec *v = scope_obj;
		*PUSH(L, v->hosts, v->n_hosts, v->cap_hosts) = h;
	} else {
		*PUSH(L, c->ghosts, c->n_ghosts, c->cap_ghosts) = h;
	}
	return false;
}

/* special_source_ip - an IPv4 or IPv6 address, kept as written */
static bool special_source_ip(struct loader *L, const struct cfg_node *n,
			      const struct cfg_directive *d, void *scope_obj,
			      struct assign *as)
{
	unsigned char buf[16];

	if (!ld_want_one_word(L, n, "an IPv4 or IPv6 address"))
		return false;
	if (inet_pton(AF_INET, n->words[0], buf) != 1 &&
	    inet_pton(AF_INET6, n->words[0], buf) != 1) {
		ld_err(L, n, "'%s': expected an IPv4 or IPv6 address, got '%s'",
		       n->name, n->words[0]);
		return false;
	}
	as->v.s = arena_strdup(L->a, n->words[0]);
	return true;
}

/* special_disk_queue - disk-queue DIR */
static bool special_disk_queue(struct loader *L, const struct cfg_node *n,
			       const struct cfg_directive *d, void *scope_obj,
			       struct assign *as)
{
	if (!ld_want_one_word(L, n, "a directory"))
		return false;
	as->v.s = arena_strdup(L->a, n->words[0]);
	return true;
}

/* special_shards - shards auto|N (auto is 0) */
static bool special_shards(struct loader *L, const struct cfg_node *n,
			   const struct cfg_directive *d, void *scope_obj,
			   struct assign *as)
{
	char e[ERRLEN];

	if (!ld_want_one_word(L, n, "auto or a number of shards"))
		return false;
	if (str_ieq(n->words[0], "auto")) {
		as->v.u = 0;
		return true;
	}
	if (cfg_parse_uint(n->words[0], 1, 1024, &as->v.u, e, sizeof(e)) < 0) {
		ld_err(L, n, "'shards': expected 'auto' or a number from 1 to 1024, got '%s'",
		       n->words[0]);
		return false;
	}
	return true;
}

/* special_pool_member - a pool's virtual-mta NAME: resolved after the walk */
static bool special_pool_member(struct loader *L, const struct cfg_node *n,
				const struct cfg_directive *d, void *scope_obj,
				struct assign *as)
{
	struct pool_rec *p = scope_obj;

	if (!ld_want_one_word(L, n, "a virtual-mta name"))
		return false;
	for (size_t i = 0; i < p->n_members; i++)
		if (strcmp(p->member_names[i], n->words[0]) == 0) {
			ld_warn(L, n, "virtual-mta '%s' is listed twice in pool '%s'",
				n->words[0], p->p.name);
			return false;
		}
	size_t cap_origins = p->cap_members;
	p->member_origins = ld_grow(L->a, p->member_origins, p->n_members,
				    &cap_origins, sizeof(*p->member_origins));
	p->member_origins[p->n_members] = ld_origin_of(n);
	*PUSH(L, p->member_names, p->n_members, p->cap_members) =
		arena_strdup(L->a, n->words[0]);
	BUG_ON(cap_origins != p->cap_members);
	return false;
}

/* special_records - <acct-file>, <rejectlog-file>: records TYPE,TYPE... */
static bool special_records(struct loader *L, const struct cfg_node *n,
			    const struct cfg_directive *d, void *scope_obj,
			    struct assign *as)
{
	bool reject = d->scope == SCOPE_REJECTLOG;
	unsigned bits = 0;
	struct cfg_strlist l = ld_split_list(L, n);

	if (l.count == 0) {
		ld_err(L, n, "'records' needs a list of record types");
		return false;
	}
	for (size_t i = 0; i < l.count; i++) {
		const char *t = l.items[i];
		const struct cfg_record_def *rt = NULL;
		for (size_t k = 0; k < cfg_record_type_count; k++) {
			const struct cfg_record_def *r = &cfg_record_types[k];
			if (r->rejectlog == reject &&
			    (str_ieq(t, r->name) || str_ieq(t, r->long_name)))
				rt = r;
		}
		if (!rt) {
			ld_err(L, n, "'records': unknown record type '%s' (expected %s)",
			       t, reject ? "c or r" : "d, b, t, tq, r, f, rb or rs");
			return false;
		}
		bits |= rt->bit;
		if (!rt->acted)
			ld_warn(L, n, "'records': '%s' (%s) records are accepted but never written yet",
				t, rt->long_name);
	}
	as->v.u = bits;
	return true;
}

/* special_record_fields - record-fields TYPE FIELD,FIELD... */
static bool special_record_fields(struct loader *L, const struct cfg_node *n,
				  const struct cfg_directive *d, void *scope_obj,
				  struct assign *as)
{
	struct cfg_acct *acct = scope_obj;

	if (n->nwords < 2) {
		ld_err(L, n, "'record-fields' expects TYPE FIELD,FIELD,...");
		return false;
	}
	static const struct { const char *t; unsigned bit; } types[] = {
		{ "d", CFG_REC_DELIVERY }, { "b", CFG_REC_BOUNCE },
		{ "t", CFG_REC_TRANSIENT }, { "tq", CFG_REC_TRANSIENT_QUEUE },
		{ "r", CFG_REC_RECEIPT }, { "f", CFG_REC_FEEDBACK },
		{ "rb", CFG_REC_REMOTE_BOUNCE }, { "rs", CFG_REC_REMOTE_STATUS },
	};
	unsigned bit = 0;
	for (size_t k = 0; k < ARRAY_SIZE(types); k++)
		if (str_ieq(n->words[0], types[k].t))
			bit = types[k].bit;
	if (!bit) {
		ld_err(L, n, "'record-fields': unknown record type '%s'", n->words[0]);
		return false;
	}
	struct cfg_node sub = *n;
	sub.words = n->words + 1;
	sub.nwords = n->nwords - 1;
	struct cfg_record_fields rf = { .record = bit, .fields = ld_split_list(L, &sub) };
	struct cfg_record_fields *arr = arena_alloc(
		L->a, (acct->record_fields_count + 1) * sizeof(*arr));
	if (acct->record_fields_count)
		memcpy(arr, acct->record_fields,
		       acct->record_fields_count * sizeof(*arr));
	arr[acct->record_fields_count++] = rf;
	acct->record_fields = arr;
	return false;
}

/* special_smtp_pattern_ref - smtp-pattern-list NAME: resolved after the walk */
static bool special_smtp_pattern_ref(struct loader *L, const struct cfg_node *n,
				     const struct cfg_directive *d, void *scope_obj,
				     struct assign *as)
{
	if (!ld_want_one_word(L, n, "the name of an <smtp-pattern-list>"))
		return false;
	as->spl_name = arena_strdup(L->a, n->words[0]);
	return true;
}

/* special_smtp_pattern_reply - <smtp-pattern-list>: reply /re/ ACTION,... */
static bool special_smtp_pattern_reply(struct loader *L, const struct cfg_node *n,
				       const struct cfg_directive *d, void *scope_obj,
				       struct assign *as)
{
	char e[ERRLEN];
	struct cfg_smtp_pattern_list *pl = scope_obj;

	if (n->nwords < 2) {
		ld_err(L, n, "'reply' expects /regex/ ACTION[,ACTION...]");
		return false;
	}
	struct cfg_smtp_pattern p = { .origin = ld_origin_of(n) };
	p.re = ld_compile_regex(L, n, "reply", n->words[0]);
	if (!p.re)
		return false;
	struct cfg_node sub = *n;
	sub.words = n->words + 1;
	sub.nwords = n->nwords - 1;
	struct cfg_strlist acts = ld_split_list(L, &sub);
	for (size_t i = 0; i < acts.count; i++) {
		const char *a = acts.items[i];
		if (str_ieq(a, "mode=backoff"))
			p.actions |= CFG_ACT_MODE_BACKOFF;
		else if (str_ieq(a, "mode=normal"))
			p.actions |= CFG_ACT_MODE_NORMAL;
		else if (str_ieq(a, "skip-mx"))
			p.actions |= CFG_ACT_SKIP_MX;
		else if (str_ieq(a, "bounce-queue"))
			p.actions |= CFG_ACT_BOUNCE_QUEUE;
		else if (str_ieq(a, "bounce-rcpt"))
			p.actions |= CFG_ACT_BOUNCE_RCPT;
		else if (str_ieq(a, "disable-source-ip"))
			p.actions |= CFG_ACT_DISABLE_SOURCE_IP;
		else if (str_ieq(a, "defer-queue"))
			p.actions |= CFG_ACT_DEFER_QUEUE;
		else if (strncasecmp(a, "reenable-after=", 15) == 0) {
			if (cfg_parse_interval(a + 15, &p.reenable_after, e,
					       sizeof(e)) < 0) {
				ld_err(L, n, "'reply': reenable-after: %s, got '%s'",
				       e, a + 15);
				return false;
			}
		} else {
			ld_err(L, n, "'reply': unknown action '%s' (expected mode=backoff, mode=normal, skip-mx, bounce-queue, bounce-rcpt, disable-source-ip[,reenable-after=T] or defer-queue)",
			       a);
			return false;
		}
	}
	if ((p.actions & CFG_ACT_MODE_BACKOFF) && (p.actions & CFG_ACT_MODE_NORMAL)) {
		ld_err(L, n, "'reply': mode=backoff and mode=normal contradict each other");
		return false;
	}
	struct cfg_smtp_pattern *arr = arena_alloc(L->a, (pl->count + 1) * sizeof(*arr));
	if (pl->count)
		memcpy(arr, pl->patterns, pl->count * sizeof(*arr));
	arr[pl->count++] = p;
	pl->patterns = arr;
	return false;
}

/*
 * special_bounce_regex - regex "RE" action delete|classify [category CAT],
 * or regex "RE" CAT
 */
static bool special_bounce_regex(struct loader *L, const struct cfg_node *n,
				 const struct cfg_directive *d, void *scope_obj,
				 struct assign *as)
{
	struct cfg *c = L->cfg;
	struct cfg_bounce_rule r = { .origin = ld_origin_of(n),
				     .action = CFG_BOUNCE_CLASSIFY };

	if (n->nwords < 2) {
		ld_err(L, n, "'regex' expects \"REGEX\" action delete|classify [category NAME], or \"REGEX\" CATEGORY");
		return false;
	}
	r.re = ld_compile_regex(L, n, "regex", n->words[0]);
	if (!r.re)
		return false;
	size_t i = 1;
	if (n->nwords == 2) {
		r.category = arena_strdup(L->a, n->words[1]);
	} else {
		for (; i + 1 < n->nwords; i += 2) {
			const char *k = n->words[i], *v = n->words[i + 1];
			if (str_ieq(k, "action")) {
				if (str_ieq(v, "delete"))
					r.action = CFG_BOUNCE_DELETE;
				else if (str_ieq(v, "classify") || str_ieq(v, "bounce"))
					r.action = CFG_BOUNCE_CLASSIFY;
				else {
					ld_err(L, n, "'regex': unknown action '%s' (expected delete or classify)", v);
					return false;
				}
			} else if (str_ieq(k, "category")) {
				r.category = arena_strdup(L->a, v);
			} else {
				ld_err(L, n, "'regex': unknown keyword '%s' (expected action or category)", k);
				return false;
			}
		}
		if (i != n->nwords) {
			ld_err(L, n, "'regex': '%s' has no value", n->words[i]);
			return false;
		}
	}
	*PUSH(L, c->bounce_rules, c->n_bounce_rules, c->cap_bounce_rules) = r;
	return false;
}

/* special_bounce_class - bounce-category-class CATEGORY hard|soft */
static bool special_bounce_class(struct loader *L, const struct cfg_node *n,
				 const struct cfg_directive *d, void *scope_obj,
				 struct assign *as)
{
	struct cfg *c = L->cfg;
	struct bounce_class bc;

	if (n->nwords != 2) {
		ld_err(L, n, "'bounce-category-class' expects CATEGORY hard|soft");
		return false;
	}
	if (str_ieq(n->words[1], "hard"))
		bc.cls = CFG_BOUNCE_HARD;
	else if (str_ieq(n->words[1], "soft"))
		bc.cls = CFG_BOUNCE_SOFT;
	else {
		ld_err(L, n, "'bounce-category-class': expected hard or soft, got '%s'",
		       n->words[1]);
		return false;
	}
	bc.category = arena_strdup(L->a, n->words[0]);
	*PUSH(L, c->bounce_classes, c->n_bounce_classes,
	      c->cap_bounce_classes) = bc;
	return false;
}

/* special_address_entry - <address-list>: domain NAME | address ADDR|/re/ */
static bool special_address_entry(struct loader *L, const struct cfg_node *n,
				  const struct cfg_directive *d, void *scope_obj,
				  struct assign *as)
{
	struct cfg_address_set *p = scope_obj;
	struct cfg_strlist *l = str_ieq(n->name, "domain") ? &p->domains : &p->addresses;

	if (!ld_want_one_word(L, n, str_ieq(n->name, "domain") ? "a domain" : "an address or /regex/"))
		return false;
	const char *w = n->words[0];
	if (w[0] == '/' && !str_ieq(n->name, "domain")) {
		const struct cfg_regex *re = ld_compile_regex(L, n, "address", w);
		if (!re)
			return false;
		const struct cfg_regex **arr = arena_alloc(L->a, (p->address_re_count + 1) * sizeof(*arr));
		if (p->address_re_count)
			memcpy(arr, p->address_res, p->address_re_count * sizeof(*arr));
		arr[p->address_re_count++] = re;
		p->address_res = arr;
		return false;
	}
	const char **items = arena_alloc(L->a, (l->count + 1) * sizeof(*items));
	if (l->count)
		memcpy(items, l->items, l->count * sizeof(*items));
	items[l->count++] = arena_strdup(L->a, w);
	l->items = items;
	return false;
}

/*
 * special_pattern_rule - <pattern-list>: mail-from|rcpt-to /re/ ACTIONS,
 * or header NAME /re/ ACTIONS
 */
static bool special_pattern_rule(struct loader *L, const struct cfg_node *n,
				 const struct cfg_directive *d, void *scope_obj,
				 struct assign *as)
{
	char e[ERRLEN];
	struct cfg_pattern_list *pl = scope_obj;
	struct cfg_pattern_rule r = { .origin = ld_origin_of(n),
				      .recipient_priority = -1 };
	size_t i = 0;

	if (strcmp(n->name, "header") == 0) {
		r.field = CFG_MATCH_HEADER;
		if (n->nwords < 2) {
			ld_err(L, n, "'header' expects NAME /regex/ ACTIONS");
			return false;
		}
		r.header = arena_strdup(L->a, n->words[i++]);
	} else {
		r.field = strcmp(n->name, "mail-from") == 0 ? CFG_MATCH_MAIL_FROM
							     : CFG_MATCH_RCPT_TO;
	}
	if (i >= n->nwords) {
		ld_err(L, n, "'%s' expects /regex/ ACTIONS", n->name);
		return false;
	}
	r.re = ld_compile_regex(L, n, n->name, n->words[i++]);
	if (!r.re)
		return false;
	for (; i < n->nwords; i++) {
		const char *w = n->words[i];
		uint64_t prio;
		if (strncasecmp(w, "virtual-mta=", 12) == 0 && w[12])
			r.virtual_mta = arena_strdup(L->a, w + 12);
		else if (strncasecmp(w, "recipient-priority=", 19) == 0 &&
			 cfg_parse_uint(w + 19, 0, 100, &prio, e, sizeof(e)) == 0) {
			r.recipient_priority = (int)prio;
			ld_warn(L, n, "'recipient-priority=' is accepted but not acted on");
		}
		else {
			ld_err(L, n, "'%s': unknown action '%s' (expected virtual-mta=NAME or recipient-priority=N)",
			       n->name, w);
			return false;
		}
	}
	struct cfg_pattern_rule *arr = arena_alloc(L->a, (pl->count + 1) * sizeof(*arr));
	if (pl->count)
		memcpy(arr, pl->rules, pl->count * sizeof(*arr));
	arr[pl->count++] = r;
	pl->rules = arr;
	return false;
}

/* special_shard_cpu - a <shard>'s cpu N */
static bool special_shard_cpu(struct loader *L, const struct cfg_node *n,
			      const struct cfg_directive *d, void *scope_obj,
			      struct assign *as)
{
	char e[ERRLEN];
	struct cfg_shard *s = scope_obj;
	uint64_t cpu;

	if (!ld_want_one_word(L, n, "a core number"))
		return false;
	if (cfg_parse_uint(n->words[0], 0, 4095, &cpu, e, sizeof(e)) < 0) {
		ld_err(L, n, "'cpu': expected a core number from 0 to 4095, got '%s'",
		       n->words[0]);
		return false;
	}
	s->cpu = (int)cpu;
	return false;
}

/* special_conn_limit - ip-connection-limit CIDR N | mx-connection-limit MX N */
static bool special_conn_limit(struct loader *L, const struct cfg_node *n,
			       const struct cfg_directive *d, void *scope_obj,
			       struct assign *as)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];
	struct cfg_conn_limit cl = { .is_mx = n->name[0] == 'm', .origin = ld_origin_of(n) };
	uint64_t max;

	if (n->nwords != 2) {
		ld_err(L, n, "'%s' expects %s N", n->name, cl.is_mx ? "MX-PATTERN" : "CIDR");
		return false;
	}
	if (cl.is_mx) {
		cl.mx = arena_strdup(L->a, n->words[0]);
	} else if (cfg_parse_cidr(n->words[0], &cl.net, e, sizeof(e)) < 0) {
		ld_err(L, n, "'%s': %s, got '%s'", n->name, e, n->words[0]);
		return false;
	}
	if (cfg_parse_uint(n->words[1], 1, 100000, &max, e, sizeof(e)) < 0) {
		ld_err(L, n, "'%s': %s, got '%s'", n->name, e, n->words[1]);
		return false;
	}
	cl.max = (uint32_t)max;
	*PUSH(L, c->connlim, c->n_connlim, c->cap_connlim) = cl;
	return false;
}

/* special_mx_rollup - <mx-rollup-list>: mx PATTERN NAME.rollup [rollup-by-ip] */
static bool special_mx_rollup(struct loader *L, const struct cfg_node *n,
			      const struct cfg_directive *d, void *scope_obj,
			      struct assign *as)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];
	struct cfg_mx_rollup mr = { .origin = ld_origin_of(n) };

	if (n->nwords < 2 || n->nwords > 3 ||
	    (n->nwords == 3 && !str_ieq(n->words[2], "rollup-by-ip"))) {
		ld_err(L, n, "'mx' expects PATTERN NAME.rollup [rollup-by-ip]");
		return false;
	}
	mr.by_ip = n->nwords == 3;
	mr.pattern = arena_strdup(L->a, n->words[0]);
	if (mr.by_ip && cfg_parse_cidr(n->words[0], &mr.net, e, sizeof(e)) < 0) {
		ld_err(L, n, "'mx ... rollup-by-ip': %s, got '%s'", e, n->words[0]);
		return false;
	}
	size_t len = strlen(n->words[1]);
	if (len <= 7 || !str_ieq(n->words[1] + len - 7, ".rollup") ||
	    strspn(n->words[1], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != len) {
		ld_err(L, n, "'mx': the rollup name must be a name ending in .rollup, got '%s'",
		       n->words[1]);
		return false;
	}
	char *name = arena_strdup(L->a, n->words[1]);
	for (char *p = name; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	mr.name = name;
	*PUSH(L, c->rollups, c->n_rollups, c->cap_rollups) = mr;
	return false;
}

/*
 * special_elsewhere - include and domain-macro were expanded by the syntax
 * layer, and a <shard>'s domain list is collected by walk_shard (which
 * expands macros): nothing to store here.
 */
static bool special_elsewhere(struct loader *L, const struct cfg_node *n,
			      const struct cfg_directive *d, void *scope_obj,
			      struct assign *as)
{
	return false;
}

/*
 * special_fn - parse one CT_SPECIAL directive at n.  scope_obj is the
 * object of the block it sits in (vmta_rec, pool_rec, cfg_acct, ...; NULL
 * at top level).  Returns true when as->v (or as->spl_name) holds a value
 * for the caller to record and store() to write later; false when the
 * handler kept what it parsed itself, or reported an error at n.
 */
typedef bool special_fn(struct loader *L, const struct cfg_node *n,
			const struct cfg_directive *d, void *scope_obj,
			struct assign *as);

/* The handler of each id the directive table names; NULL: none. */
static special_fn *const special_handlers[H_COUNT] = {
	[H_INCLUDE] = special_elsewhere,
	[H_DOMAIN_MACRO] = special_elsewhere,
	[H_SHARD_DOMAIN] = special_elsewhere,
	[H_DOMAIN_KEY] = special_domain_key,
	[H_LISTENER] = special_listener,
	[H_HTTP_ACCESS] = special_http_access,
	[H_SOURCE_HOST] = special_source_host,
	[H_SOURCE_IP] = special_source_ip,
	[H_DISK_QUEUE] = special_disk_queue,
	[H_SHARDS] = special_shards,
	[H_POOL_MEMBER] = special_pool_member,
	[H_RECORDS] = special_records,
	[H_RECORD_FIELDS] = special_record_fields,
	[H_SMTP_PATTERN_REF] = special_smtp_pattern_ref,
	[H_SMTP_PATTERN_REPLY] = special_smtp_pattern_reply,
	[H_BOUNCE_REGEX] = special_bounce_regex,
	[H_BOUNCE_CLASS] = special_bounce_class,
	[H_ADDRESS_ENTRY] = special_address_entry,
	[H_PATTERN_RULE] = special_pattern_rule,
	[H_SHARD_CPU] = special_shard_cpu,
	[H_CONN_LIMIT] = special_conn_limit,
	[H_MX_ROLLUP] = special_mx_rollup,
};

bool ld_parse_special(struct loader *L, const struct cfg_node *n,
		      const struct cfg_directive *d, void *scope_obj,
		      struct assign *as)
{
	special_fn *fn = (unsigned)d->handler < H_COUNT ? special_handlers[d->handler]
							: NULL;

	if (!fn)
		BUG("directive '%s': unknown handler %d", n->name, (int)d->handler);
	return fn(L, n, d, scope_obj, as);
}
