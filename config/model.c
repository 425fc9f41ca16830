/*
 * config/model.c - builds the typed, immutable configuration model from
 * the syntax tree and answers the lookups of config.h.
 *
 * Loading runs on one thread (the loader's).  It walks the tree once,
 * type-checks every directive against the table in directives.c and
 * records "assignments"; then it resolves names and precomputes every
 * effective settings struct, so lookups on the hot path only search.
 * All memory lives in one arena owned by the struct cfg.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model.h"
#include "config/syntax.h"
#include "config/values.h"
#include "util/dkim.h"

#define ERRLEN 256

/* A parsed directive value, before it is stored into a settings struct. */
union cfg_value {
	bool b;
	uint64_t u;
	int e;
	const char *s;
	struct cfg_rate rate;
	const struct cfg_schedule *sched;
	const struct cfg_daily *daily;
	struct cfg_strlist list;
	const struct cfg_smtp_pattern_list *spl;
};

struct assign {
	const struct cfg_directive *d;	/* canonical row */
	union cfg_value v;
	const char *spl_name;		/* H_SMTP_PATTERN_REF before resolution */
	struct cfg_origin origin;
	struct assign *next;
};

struct assign_list {
	struct assign *head, **tail;
};

enum dpat_kind {
	DP_ALL,		/* *        */
	DP_EXACT,	/* d        */
	DP_SELF_SUB,	/* [*.]d    */
	DP_SUB,		/* *.d      */
	DP_LITERAL,	/* [ip/len] */
};

struct dpat {
	enum dpat_kind kind;
	const char *d;			/* lower-case, no brackets */
	struct cfg_cidr lit;
};

struct dblock {
	struct dpat pat;
	const char *text;		/* as written after expansion */
	bool from_macro;
	unsigned seq;			/* file order */
	struct assign_list *assigns;	/* shared by a block's patterns */
	struct cfg_origin origin;
};

struct dblock_list {
	struct dblock *items;
	size_t count, cap;
};

/* Effective queue settings with the origin of every field. */
struct qeff {
	struct cfg_queue q;		/* first: lookups hand out &q */
	struct cfg_origin *origin;	/* indexed by directive index */
};

struct qentry {
	struct dpat pat;
	struct qeff *eff;
};

struct qtable {
	struct qentry *exact, *self_sub, *sub, *literal;
	size_t n_exact, n_self_sub, n_sub, n_literal;
	struct qeff *all;
};

struct seff {
	struct cfg_source s;		/* first: lookups hand out &s */
	struct cfg_origin *origin;
};

struct sblock {
	bool named;
	const char *name;		/* named: "{auth}"; ip: canonical CIDR */
	struct cfg_cidr net;
	unsigned seq;
	struct assign_list assigns;
	struct cfg_origin origin;
};

struct ip_source {
	struct cfg_cidr net;
	bool any;			/* 0/0 and *: every family */
	struct seff *eff;		/* IP chain only */
	struct seff **named_eff;	/* [n_named], chain + named on top */
};

struct vmta_rec {
	struct cfg_vmta v;
	struct assign_list assigns;
	struct dblock_list domains;
	struct qtable *table;		/* shared with {default} when no overrides */
	struct cfg_source_host *hosts;
	size_t n_hosts, cap_hosts;
	struct cfg_domain_key *keys;
	size_t n_keys, cap_keys;
};

struct pool_rec {
	struct cfg_pool p;
	const char **member_names;
	struct cfg_origin *member_origins;
	size_t n_members, cap_members;
	struct dblock_list domains;
};

struct cfg {
	/*
	 * Holders: the loader, then every thread that runs on it (a reload
	 * hands each its own reference through a struct cfg_mailbox).
	 */
	_Atomic uint32_t refs;
	struct arena *arena;
	const char *path;

	struct cfg_global global;
	struct cfg_origin *global_origin;

	struct dblock_list domains;	/* global <domain> blocks */
	struct qtable *default_table;

	struct sblock *sblocks;
	size_t n_sblocks, cap_sblocks;
	const char **named;		/* distinct named sources */
	size_t n_named;
	struct ip_source *ip_sources;
	size_t n_ip_sources;
	struct seff **sblock_eff;	/* per written block, for lint */

	struct vmta_rec **vmtas;	/* sorted by name after load */
	size_t n_vmtas, cap_vmtas;
	struct pool_rec **pools;
	size_t n_pools, cap_pools;

	struct cfg_acct *accts;
	size_t n_accts, cap_accts;
	struct cfg_rejectlog *rejectlogs;
	size_t n_rejectlogs, cap_rejectlogs;
	struct cfg_spool *spools;
	size_t n_spools, cap_spools;
	struct cfg_smtp_user *users;
	size_t n_users, cap_users;
	struct cfg_source_group *groups;
	size_t n_groups, cap_groups;
	struct cfg_smtp_pattern_list *spls;
	size_t n_spls, cap_spls;
	struct cfg_pattern_list *pls;
	size_t n_pls, cap_pls;
	struct cfg_bounce_rule *bounce_rules;
	size_t n_bounce_rules, cap_bounce_rules;
	struct cfg_processor *procs;
	size_t n_procs, cap_procs;
	struct cfg_address_list *alists;
	size_t n_alists, cap_alists;
	struct bounce_class *bounce_classes;	/* operator's, file order */
	size_t n_bounce_classes, cap_bounce_classes;
	struct cfg_shard *shards;
	size_t n_shards, cap_shards;
	struct cfg_listener *listeners;
	size_t n_listeners, cap_listeners;
	struct cfg_http_access *http;
	size_t n_http, cap_http;
	struct cfg_source_host *ghosts;
	size_t n_ghosts, cap_ghosts;
	struct cfg_domain_key *gkeys;	/* top level and <domain-key-list> */
	size_t n_gkeys, cap_gkeys;
	struct dkim_key **dkim_keys;	/* every key loaded: freed with the cfg */
	size_t n_dkim_keys, cap_dkim_keys;
	struct cfg_conn_limit *connlim;
	size_t n_connlim, cap_connlim;
	struct cfg_mx_rollup *rollups;
	size_t n_rollups, cap_rollups;

	struct cfg_domain_pattern_info *pattern_info;
	size_t n_pattern_info, cap_pattern_info;
	const struct assign_list **pattern_assigns;	/* parallel to pattern_info */
	size_t n_pattern_assigns, cap_pattern_assigns;

	struct cfg_regex **regexes;	/* freed with the cfg */
	size_t n_regexes, cap_regexes;
};

/* bounce-category-class CATEGORY hard|soft */
struct bounce_class {
	const char *category;
	enum cfg_bounce_class cls;
};

/* Loader state: lives for one load. */
struct loader {
	struct cfg *cfg;
	struct arena *a;
	struct diag_list *diags;
	const struct cfg_load_opts *opts;
	const struct cfg_tree *tree;
	struct assign_list global_assigns;
	unsigned seq;
};

/* Shards of a core-to-domain map: which line pinned each pattern. */
struct shard_pin {
	const char *pattern;
	uint32_t shard;
	struct cfg_origin origin;
};

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

/* grow - make room for one more element in an arena-backed array. */
static void *grow(struct arena *a, void *items, size_t count, size_t *cap,
		  size_t elsize)
{
	if (count < *cap)
		return items;
	size_t ncap = *cap ? *cap * 2 : 8;
	void *n = arena_alloc(a, ncap * elsize);
	if (count)
		memcpy(n, items, count * elsize);
	*cap = ncap;
	return n;
}

#define PUSH(L, arr, n, cap)                                                 \
	((arr) = grow((L)->a, (arr), (n), &(cap), sizeof(*(arr))), &(arr)[(n)++])

static void err(struct loader *L, const struct cfg_node *n, const char *fmt,
		...) UTIL_PRINTF(3, 4);
static void err(struct loader *L, const struct cfg_node *n, const char *fmt,
		...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(L->diags, DIAG_ERROR, n ? n->file : L->cfg->path,
		  n ? n->line : 0, fmt, ap);
	va_end(ap);
}

static void warn(struct loader *L, const struct cfg_node *n, const char *fmt,
		 ...) UTIL_PRINTF(3, 4);
static void warn(struct loader *L, const struct cfg_node *n, const char *fmt,
		 ...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(L->diags, DIAG_WARNING, n ? n->file : L->cfg->path,
		  n ? n->line : 0, fmt, ap);
	va_end(ap);
}

/* unknown - unknown names warn, or fail under --strict. */
static void unknown(struct loader *L, const struct cfg_node *n, const char *fmt,
		    ...) UTIL_PRINTF(3, 4);
static void unknown(struct loader *L, const struct cfg_node *n, const char *fmt,
		    ...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(L->diags, L->opts->strict ? DIAG_ERROR : DIAG_WARNING,
		  n->file, n->line, fmt, ap);
	va_end(ap);
}

/* unknown_directive - with the likely intended name, for a typo */
static void unknown_directive(struct loader *L, const struct cfg_node *n,
			      enum cfg_scope scope)
{
	const char *near = cfg_directive_suggest(n->name, scope);

	if (near)
		unknown(L, n, "unknown directive '%s' in %s; did you mean '%s'?",
			n->name, cfg_scope_name(scope), near);
	else
		unknown(L, n, "unknown directive '%s' in %s", n->name,
			cfg_scope_name(scope));
}

static struct cfg_origin origin_of(const struct cfg_node *n)
{
	return (struct cfg_origin){ .file = n->file, .line = n->line };
}

static void assign_push(struct loader *L, struct assign_list *al,
			struct assign *as)
{
	struct assign *copy = arena_alloc(L->a, sizeof(*copy));

	*copy = *as;
	copy->next = NULL;
	if (!al->tail)
		al->tail = &al->head;
	*al->tail = copy;
	al->tail = &copy->next;
}

static struct cfg_regex *keep_regex(struct loader *L, struct cfg_regex *re)
{
	struct cfg *c = L->cfg;

	*PUSH(L, c->regexes, c->n_regexes, c->cap_regexes) = re;
	return re;
}

/* compile_regex - compile a config regex, reporting errors at node. */
static const struct cfg_regex *compile_regex(struct loader *L,
					     const struct cfg_node *n,
					     const char *what, const char *text)
{
	char e[ERRLEN];
	struct cfg_regex *re = NULL;

	if (cfg_regex_compile(text, &re, e, sizeof(e)) < 0) {
		err(L, n, "'%s': %s", what, e);
		return NULL;
	}
	return keep_regex(L, re);
}

/* joined_words - a directive's words joined by single blanks. */
static const char *joined_words(struct loader *L, const struct cfg_node *n,
				size_t from)
{
	struct strbuf sb = { 0 };

	for (size_t i = from; i < n->nwords; i++) {
		if (i > from)
			sb_addc(&sb, ' ');
		sb_adds(&sb, n->words[i]);
	}
	const char *s = arena_strdup(L->a, sb_str(&sb));
	sb_free(&sb);
	return s;
}

/* ------------------------------------------------------------------ */
/* typed values                                                         */

static bool want_one_word(struct loader *L, const struct cfg_node *n,
			  const char *what)
{
	if (n->nwords == 1)
		return true;
	if (n->nwords == 0)
		err(L, n, "'%s' needs a value (%s)", n->name, what);
	else
		err(L, n, "'%s' takes one value (%s), got '%s'", n->name, what,
		    n->raw);
	return false;
}

static struct cfg_strlist split_list(struct loader *L, const struct cfg_node *n)
{
	struct cfg_strlist l = { 0 };
	size_t cap = 0;

	for (size_t i = 0; i < n->nwords; i++) {
		const char *w = n->words[i];
		if (!*w)
			continue;
		while (*w) {
			size_t len = strcspn(w, ",");
			if (len) {
				l.items = grow(L->a, l.items, l.count, &cap,
					       sizeof(*l.items));
				l.items[l.count++] = arena_strndup(L->a, w, len);
			}
			w += len;
			if (*w == ',')
				w++;
		}
	}
	return l;
}

static const char *uint_expectation(const struct cfg_directive *d, char *buf,
				    size_t len)
{
	snprintf(buf, len, "expected a whole number from %llu to %llu%s",
		 (unsigned long long)d->min, (unsigned long long)d->max,
		 (d->flags & DF_UNLIMITED_0) ? " or 'unlimited'" : "");
	return buf;
}

/*
 * parse_value - type-check a directive's words into a value.  Returns
 * false (after reporting file:line) when the value is not acceptable.
 * def_text parses a table default instead of node words (node is NULL).
 */
static bool parse_text(struct loader *L, const struct cfg_node *n,
		       const struct cfg_directive *d, const char *text,
		       union cfg_value *v)
{
	char e[ERRLEN];
	int rc = 0;

	switch (d->type) {
	case CT_BOOL:
		rc = cfg_parse_bool(text, &v->b, e, sizeof(e));
		break;
	case CT_UINT:
		if ((d->flags & DF_UNLIMITED_0) && str_ieq(text, "unlimited")) {
			v->u = 0;
			return true;
		}
		rc = cfg_parse_uint(text, d->min, d->max, &v->u, e, sizeof(e));
		if (rc < 0)
			uint_expectation(d, e, sizeof(e));
		break;
	case CT_INTERVAL_NEVER:
		if (str_ieq(text, "never")) {
			v->u = 0;
			return true;
		}
		/* fall through */
	case CT_INTERVAL:
		rc = cfg_parse_interval(text, &v->u, e, sizeof(e));
		break;
	case CT_SCHEDULE: {
		struct cfg_schedule *s = arena_alloc(L->a, sizeof(*s));
		rc = cfg_parse_schedule(text, s, e, sizeof(e));
		v->sched = s;
		break;
	}
	case CT_DAILY: {
		struct cfg_daily *dl = arena_alloc(L->a, sizeof(*dl));
		rc = cfg_parse_daily(text, dl, e, sizeof(e));
		v->daily = dl;
		break;
	}
	case CT_SIZE:
		if (str_ieq(text, "unlimited")) {
			v->u = 0;
			return true;
		}
		rc = cfg_parse_size(text, &v->u, e, sizeof(e));
		break;
	case CT_RATE:
		rc = cfg_parse_rate(text, &v->rate, e, sizeof(e));
		break;
	case CT_ENUM:
		for (int i = 0; d->choices[i]; i++)
			if (str_ieq(text, d->choices[i])) {
				v->e = i;
				return true;
			}
		{
			struct strbuf sb = { 0 };
			for (int i = 0; d->choices[i]; i++)
				sb_printf(&sb, "%s%s", i ? ", " : "",
					  d->choices[i]);
			snprintf(e, sizeof(e), "expected one of %s", sb_str(&sb));
			sb_free(&sb);
		}
		rc = -EINVAL;
		break;
	case CT_STRING:
		v->s = *text ? arena_strdup(L->a, text) : NULL;
		return true;
	default:
		BUG("unknown directive type %d for '%s'", (int)d->type, d->name);
	}
	if (rc < 0) {
		if (n)
			err(L, n, "'%s': %s, got '%s'", n->name, e, text);
		return false;
	}
	return true;
}

/* valid_host_name - an RFC 1123 domain name or an RFC 5321 literal */
static bool valid_host_name(const char *s)
{
	size_t len = strlen(s);

	if (s[0] == '[') {
		char lit[INET6_ADDRSTRLEN + 8];
		unsigned char buf[sizeof(struct in6_addr)];
		if (len < 3 || s[len - 1] != ']' || len - 2 >= sizeof(lit))
			return false;
		memcpy(lit, s + 1, len - 2);
		lit[len - 2] = '\0';
		if (strncasecmp(lit, "IPv6:", 5) == 0)
			return inet_pton(AF_INET6, lit + 5, buf) == 1;
		return inet_pton(AF_INET, lit, buf) == 1;
	}
	if (len && s[len - 1] == '.')
		len--;		/* the root's dot */
	if (len == 0 || len > 253)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			     (c >= '0' && c <= '9');
		if (!alnum && (c != '-' || label == 0))
			return false;
		if (++label > 63)
			return false;
	}
	return s[len - 1] != '-';
}

static bool valid_domain_text(const char *s);

static bool valid_dkim_identity(const char *s)
{
	const char *at = strrchr(s, '@');

	if (str_ieq(s, "sender-or-from") || str_ieq(s, "from") || str_ieq(s, "sender"))
		return true;
	if (strpbrk(s, " \t;=<>\""))
		return false;
	return at ? valid_domain_text(at + 1) : valid_domain_text(s) && strchr(s, '.');
}

static bool parse_value(struct loader *L, const struct cfg_node *n,
			const struct cfg_directive *d, union cfg_value *v)
{
	switch (d->type) {
	case CT_STRLIST:
		v->list = split_list(L, n);
		for (size_t i = 0; (d->flags & DF_HEADER_NAMES) && i < v->list.count; i++)
			for (const char *s = v->list.items[i]; *s; s++)
				if (*s <= ' ' || *s >= 0x7f || *s == ':' || *s == ';') {
					err(L, n, "'%s': '%s' is not a header name", n->name,
					    v->list.items[i]);
					return false;
				}
		return true;
	case CT_STRING:
		if (n->nwords == 0) {
			/* PowerMTA loads `password ## FILL IN ##`: so do we, loudly */
			warn(L, n, "'%s' has no value (everything after '#' is a comment); it is left unset",
			     n->name);
			v->s = NULL;
			return true;
		}
		v->s = n->nwords == 1 ? (*n->words[0] ? arena_strdup(L->a, n->words[0]) : NULL)
				      : joined_words(L, n, 0);
		if ((d->flags & DF_DKIM_IDENTITY) && v->s && !valid_dkim_identity(v->s)) {
			err(L, n, "'%s': '%s' is not an identity (sender-or-from, from, sender, a domain, @domain or user@domain)",
			    n->name, v->s);
			return false;
		}
		if ((d->flags & DF_HOSTNAME) && v->s && !valid_host_name(v->s)) {
			err(L, n, "'%s': '%s' is not a host name (labels of letters, digits and '-' joined by dots, as mail1.example.com) or an address literal ([192.0.2.1]); receivers refuse it in EHLO",
			    n->name, v->s);
			return false;
		}
		return true;
	case CT_SCHEDULE:
	case CT_DAILY:
		/* "10m, 10m, 1h" is written with blanks too */
		if (n->nwords == 0) {
			err(L, n, "'%s' needs a value (%s)", n->name,
			    d->type == CT_DAILY ? "daily caps such as 50/d,100/d,200/d"
						: "a retry schedule such as 10m,1h,4h");
			return false;
		}
		{
			struct strbuf sb = { 0 };
			for (size_t i = 0; i < n->nwords; i++)
				sb_adds(&sb, n->words[i]);
			bool ok = parse_text(L, n, d, sb_str(&sb), v);
			sb_free(&sb);
			return ok;
		}
	default:
		if (!want_one_word(L, n, "see `coremta check --help`"))
			return false;
		return parse_text(L, n, d, n->words[0], v);
	}
}

/* store - write a value into the settings struct at the row's offset. */
static void store(struct loader *L, void *base, const struct cfg_directive *d,
		  const union cfg_value *v)
{
	char *field = (char *)base + d->offset;

	switch (d->type) {
	case CT_BOOL:
		*(bool *)field = v->b;
		break;
	case CT_UINT:
		*(uint32_t *)field = (uint32_t)v->u;
		break;
	case CT_INTERVAL:
	case CT_INTERVAL_NEVER:
	case CT_SIZE:
		*(uint64_t *)field = v->u;
		break;
	case CT_SCHEDULE:
		*(struct cfg_schedule *)field = *v->sched;
		break;
	case CT_DAILY:
		*(struct cfg_daily *)field = *v->daily;
		break;
	case CT_RATE:
		*(struct cfg_rate *)field = v->rate;
		break;
	case CT_ENUM:
		*(int *)field = v->e;
		break;
	case CT_STRING:
		*(const char **)field = v->s;
		break;
	case CT_STRLIST: {
		/* Lists accumulate along inheritance; "" alone clears. */
		struct cfg_strlist *l = (struct cfg_strlist *)field;
		if (v->list.count == 0) {
			*l = (struct cfg_strlist){ 0 };
			break;
		}
		const char **items = arena_alloc(L->a, (l->count + v->list.count) *
							       sizeof(*items));
		if (l->count)
			memcpy(items, l->items, l->count * sizeof(*items));
		memcpy(items + l->count, v->list.items,
		       v->list.count * sizeof(*items));
		l->items = items;
		l->count += v->list.count;
		break;
	}
	case CT_SPECIAL:
		switch (d->handler) {
		case H_SMTP_PATTERN_REF:
			*(const struct cfg_smtp_pattern_list **)field = v->spl;
			break;
		case H_DISK_QUEUE:
		case H_SOURCE_IP:
			*(const char **)field = v->s;
			break;
		case H_SHARDS:
			*(uint32_t *)field = (uint32_t)v->u;
			break;
		case H_RECORDS:
			*(unsigned *)field = (unsigned)v->u;
			break;
		default:
			BUG("directive '%s': handler %d stores no value", d->name, (int)d->handler);
		}
		break;
	default:
		BUG("directive '%s': unknown type %d", d->name, (int)d->type);
	}
}

/* apply_defaults - fill a settings struct from the table's defaults. */
static void apply_defaults(struct loader *L, enum cfg_scope scope, void *base,
			   struct cfg_origin *origin)
{
	for (size_t i = 0; i < cfg_directive_count; i++) {
		const struct cfg_directive *d = &cfg_directives[i];
		if (d->scope != scope || !d->def || d->type == CT_ACCEPTED ||
		    (d->flags & DF_ALIAS))
			continue;
		if (d->type == CT_SPECIAL && d->handler != H_DISK_QUEUE &&
		    d->handler != H_SHARDS && d->handler != H_RECORDS)
			continue;
		union cfg_value v = { 0 };
		bool ok;
		if (d->type == CT_SPECIAL) {
			switch (d->handler) {
			case H_DISK_QUEUE:
				v.s = d->def;
				ok = true;
				break;
			case H_SHARDS:
				v.u = 0;	/* auto */
				ok = true;
				break;
			default: {
				/* H_RECORDS: parse like the directive would */
				unsigned bits = 0;
				const char *p = d->def;
				while (*p) {
					size_t len = strcspn(p, ",");
					char t[8];
					snprintf(t, sizeof(t), "%.*s", (int)len, p);
					if (scope == SCOPE_REJECTLOG)
						bits |= strcmp(t, "c") == 0 ? CFG_REC_REJECT_CONN
									    : CFG_REC_REJECT_RCPT;
					else
						bits |= strcmp(t, "d") == 0 ? CFG_REC_DELIVERY
									    : CFG_REC_BOUNCE;
					p += len + (p[len] == ',');
				}
				v.u = bits;
				ok = true;
			}
			}
		} else if (d->type == CT_STRLIST) {
			continue;
		} else {
			ok = parse_text(L, NULL, d, d->def, &v);
		}
		BUG_ON(!ok);	/* a default that does not parse is a table bug */
		store(L, base, d, &v);
		if (origin)
			origin[i] = (struct cfg_origin){ 0 };
	}
}

static void apply_list(struct loader *L, void *base, struct cfg_origin *origin,
		       const struct assign_list *al)
{
	for (const struct assign *as = al->head; as; as = as->next) {
		store(L, base, as->d, &as->v);
		if (origin)
			origin[cfg_directive_index(as->d)] = as->origin;
	}
}

/* ------------------------------------------------------------------ */
/* domain patterns                                                      */

static bool valid_domain_text(const char *s)
{
	if (!*s || strlen(s) > 253)
		return false;
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80))
			return false;
	}
	return s[0] != '.' && !strstr(s, "..");
}

static bool parse_dpat(struct loader *L, const char *text, struct dpat *p)
{
	char e[ERRLEN];
	size_t len = strlen(text);
	char *d;

	memset(p, 0, sizeof(*p));
	if (strcmp(text, "*") == 0) {
		p->kind = DP_ALL;
		p->d = "*";
		return true;
	}
	if (strncmp(text, "[*.]", 4) == 0) {
		p->kind = DP_SELF_SUB;
		d = arena_strdup(L->a, text + 4);
	} else if (strncmp(text, "*.", 2) == 0) {
		p->kind = DP_SUB;
		d = arena_strdup(L->a, text + 2);
	} else if (text[0] == '[' && len > 2 && text[len - 1] == ']') {
		p->kind = DP_LITERAL;
		d = arena_strndup(L->a, text + 1, len - 2);
		if (cfg_parse_cidr(d, &p->lit, e, sizeof(e)) < 0)
			return false;
		p->d = d;
		return true;
	} else {
		p->kind = DP_EXACT;
		d = arena_strdup(L->a, text);
	}
	/* a root dot changes nothing; "*." leaves nothing to take it from */
	size_t dlen = strlen(d);
	if (dlen && d[dlen - 1] == '.')
		d[dlen - 1] = '\0';
	str_lower(d);
	if (!*d || !valid_domain_text(d))
		return false;
	p->d = d;
	return true;
}

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

static bool cidr_within(const struct cfg_cidr *inner, const struct cfg_cidr *outer)
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
		return p->kind == DP_LITERAL && cidr_within(&p->lit, &q->lit);
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
		apply_list(L, &eff->q, eff->origin, chain[i]->assigns);
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
				if (cidr_within(&c, &t->literal[i].pat.lit) &&
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

/* ------------------------------------------------------------------ */
/* special directives                                                   */

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
	char *text = arena_strdup(L->a, joined_words(L, n, 0));
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
		err(L, n, "'domain-key' expects SELECTOR,DOMAIN,KEYFILE, got '%s'", joined_words(L, n, 0));
		return false;
	}
	for (const char *s = part[0]; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_') {
			err(L, n, "'domain-key': '%s' is not a selector (letters, digits, '-', '_' and dots)",
			    part[0]);
			return false;
		}
	if (strcmp(part[1], "*") != 0 && !valid_domain_text(part[1])) {
		err(L, n, "'domain-key': '%s' is not a domain (or *)", part[1]);
		return false;
	}
	const char *path = key_path(L, n, part[2]);
	struct dkim_key *key = NULL;
	if (dkim_key_load(path, &key, e, sizeof(e)) < 0) {
		err(L, n, "'domain-key': %s", e);
		return false;
	}
	*PUSH(L, c->dkim_keys, c->n_dkim_keys, c->cap_dkim_keys) = key;
	if (dkim_key_alg(key) == DKIM_RSA_SHA256 && dkim_key_bits(key) < DKIM_RSA_GOOD_BITS)
		warn(L, n, "'domain-key': '%s' is a %u-bit RSA key; receivers expect %u bits (Gmail treats shorter keys as weak)",
		     path, dkim_key_bits(key), DKIM_RSA_GOOD_BITS);
	for (char *s = part[1]; *s; s++)
		*s = (char)tolower((unsigned char)*s);
	struct cfg_domain_key k = {
		.selector = part[0], .domain = part[1], .path = path,
		.key = key, .origin = origin_of(n),
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
		err(L, n, "'smtp-listener' needs ADDR:PORT");
		return false;
	}
	struct cfg_listener li = { .origin = origin_of(n),
				   .text = arena_strdup(L->a, n->words[0]) };
	if (cfg_parse_listen_addr(n->words[0], &li.addr, e, sizeof(e)) < 0) {
		err(L, n, "'smtp-listener': %s, got '%s'", e, n->words[0]);
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
			err(L, n, "'smtp-listener': unknown option '%s' (expected source=NAME or tls=immediate)",
			    w);
			return false;
		}
	}
	for (size_t i = 0; i < c->n_listeners; i++)
		if (c->listeners[i].addr.len == li.addr.len &&
		    memcmp(&c->listeners[i].addr.ss, &li.addr.ss,
			   li.addr.len) == 0) {
			err(L, n, "'smtp-listener': %s is already a listener (%s:%d)",
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
		err(L, n, "'http-access' expects CIDR none|monitor|operator|admin[,deny-logs]");
		return false;
	}
	struct cfg_http_access h = { .origin = origin_of(n) };
	if (cfg_parse_cidr(n->words[0], &h.net, e, sizeof(e)) < 0) {
		err(L, n, "'http-access': %s, got '%s'", e, n->words[0]);
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
			err(L, n, "'http-access': unknown access level '%s' (expected none, monitor, operator or admin)",
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
		err(L, n, "'smtp-source-host' expects IP HOSTNAME");
		return false;
	}
	struct cfg_cidr ip;
	if (cfg_parse_cidr(n->words[0], &ip, e, sizeof(e)) < 0) {
		err(L, n, "'smtp-source-host': %s, got '%s'", e, n->words[0]);
		return false;
	}
	struct cfg_source_host h = {
		.ip = arena_strdup(L->a, n->words[0]),
		.hostname = arena_strdup(L->a, n->words[1]),
		.origin = origin_of(n),
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

	if (!want_one_word(L, n, "an IPv4 or IPv6 address"))
		return false;
	if (inet_pton(AF_INET, n->words[0], buf) != 1 &&
	    inet_pton(AF_INET6, n->words[0], buf) != 1) {
		err(L, n, "'%s': expected an IPv4 or IPv6 address, got '%s'",
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
	if (!want_one_word(L, n, "a directory"))
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

	if (!want_one_word(L, n, "auto or a number of shards"))
		return false;
	if (str_ieq(n->words[0], "auto")) {
		as->v.u = 0;
		return true;
	}
	if (cfg_parse_uint(n->words[0], 1, 1024, &as->v.u, e, sizeof(e)) < 0) {
		err(L, n, "'shards': expected 'auto' or a number from 1 to 1024, got '%s'",
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

	if (!want_one_word(L, n, "a virtual-mta name"))
		return false;
	for (size_t i = 0; i < p->n_members; i++)
		if (strcmp(p->member_names[i], n->words[0]) == 0) {
			warn(L, n, "virtual-mta '%s' is listed twice in pool '%s'",
			     n->words[0], p->p.name);
			return false;
		}
	size_t cap_origins = p->cap_members;
	p->member_origins = grow(L->a, p->member_origins, p->n_members,
				 &cap_origins, sizeof(*p->member_origins));
	p->member_origins[p->n_members] = origin_of(n);
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
	struct cfg_strlist l = split_list(L, n);

	if (l.count == 0) {
		err(L, n, "'records' needs a list of record types");
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
			err(L, n, "'records': unknown record type '%s' (expected %s)",
			    t, reject ? "c or r" : "d, b, t, tq, r, f, rb or rs");
			return false;
		}
		bits |= rt->bit;
		if (!rt->acted)
			warn(L, n, "'records': '%s' (%s) records are accepted but never written yet",
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
		err(L, n, "'record-fields' expects TYPE FIELD,FIELD,...");
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
		err(L, n, "'record-fields': unknown record type '%s'", n->words[0]);
		return false;
	}
	struct cfg_node sub = *n;
	sub.words = n->words + 1;
	sub.nwords = n->nwords - 1;
	struct cfg_record_fields rf = { .record = bit, .fields = split_list(L, &sub) };
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
	if (!want_one_word(L, n, "the name of an <smtp-pattern-list>"))
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
		err(L, n, "'reply' expects /regex/ ACTION[,ACTION...]");
		return false;
	}
	struct cfg_smtp_pattern p = { .origin = origin_of(n) };
	p.re = compile_regex(L, n, "reply", n->words[0]);
	if (!p.re)
		return false;
	struct cfg_node sub = *n;
	sub.words = n->words + 1;
	sub.nwords = n->nwords - 1;
	struct cfg_strlist acts = split_list(L, &sub);
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
				err(L, n, "'reply': reenable-after: %s, got '%s'",
				    e, a + 15);
				return false;
			}
		} else {
			err(L, n, "'reply': unknown action '%s' (expected mode=backoff, mode=normal, skip-mx, bounce-queue, bounce-rcpt, disable-source-ip[,reenable-after=T] or defer-queue)",
			    a);
			return false;
		}
	}
	if ((p.actions & CFG_ACT_MODE_BACKOFF) && (p.actions & CFG_ACT_MODE_NORMAL)) {
		err(L, n, "'reply': mode=backoff and mode=normal contradict each other");
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
	struct cfg_bounce_rule r = { .origin = origin_of(n),
				     .action = CFG_BOUNCE_CLASSIFY };

	if (n->nwords < 2) {
		err(L, n, "'regex' expects \"REGEX\" action delete|classify [category NAME], or \"REGEX\" CATEGORY");
		return false;
	}
	r.re = compile_regex(L, n, "regex", n->words[0]);
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
					err(L, n, "'regex': unknown action '%s' (expected delete or classify)", v);
					return false;
				}
			} else if (str_ieq(k, "category")) {
				r.category = arena_strdup(L->a, v);
			} else {
				err(L, n, "'regex': unknown keyword '%s' (expected action or category)", k);
				return false;
			}
		}
		if (i != n->nwords) {
			err(L, n, "'regex': '%s' has no value", n->words[i]);
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
		err(L, n, "'bounce-category-class' expects CATEGORY hard|soft");
		return false;
	}
	if (str_ieq(n->words[1], "hard"))
		bc.cls = CFG_BOUNCE_HARD;
	else if (str_ieq(n->words[1], "soft"))
		bc.cls = CFG_BOUNCE_SOFT;
	else {
		err(L, n, "'bounce-category-class': expected hard or soft, got '%s'",
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

	if (!want_one_word(L, n, str_ieq(n->name, "domain") ? "a domain" : "an address or /regex/"))
		return false;
	const char *w = n->words[0];
	if (w[0] == '/' && !str_ieq(n->name, "domain")) {
		const struct cfg_regex *re = compile_regex(L, n, "address", w);
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
	struct cfg_pattern_rule r = { .origin = origin_of(n),
				      .recipient_priority = -1 };
	size_t i = 0;

	if (strcmp(n->name, "header") == 0) {
		r.field = CFG_MATCH_HEADER;
		if (n->nwords < 2) {
			err(L, n, "'header' expects NAME /regex/ ACTIONS");
			return false;
		}
		r.header = arena_strdup(L->a, n->words[i++]);
	} else {
		r.field = strcmp(n->name, "mail-from") == 0 ? CFG_MATCH_MAIL_FROM
							     : CFG_MATCH_RCPT_TO;
	}
	if (i >= n->nwords) {
		err(L, n, "'%s' expects /regex/ ACTIONS", n->name);
		return false;
	}
	r.re = compile_regex(L, n, n->name, n->words[i++]);
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
			warn(L, n, "'recipient-priority=' is accepted but not acted on");
		}
		else {
			err(L, n, "'%s': unknown action '%s' (expected virtual-mta=NAME or recipient-priority=N)",
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

	if (!want_one_word(L, n, "a core number"))
		return false;
	if (cfg_parse_uint(n->words[0], 0, 4095, &cpu, e, sizeof(e)) < 0) {
		err(L, n, "'cpu': expected a core number from 0 to 4095, got '%s'",
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
	struct cfg_conn_limit cl = { .is_mx = n->name[0] == 'm', .origin = origin_of(n) };
	uint64_t max;

	if (n->nwords != 2) {
		err(L, n, "'%s' expects %s N", n->name, cl.is_mx ? "MX-PATTERN" : "CIDR");
		return false;
	}
	if (cl.is_mx) {
		cl.mx = arena_strdup(L->a, n->words[0]);
	} else if (cfg_parse_cidr(n->words[0], &cl.net, e, sizeof(e)) < 0) {
		err(L, n, "'%s': %s, got '%s'", n->name, e, n->words[0]);
		return false;
	}
	if (cfg_parse_uint(n->words[1], 1, 100000, &max, e, sizeof(e)) < 0) {
		err(L, n, "'%s': %s, got '%s'", n->name, e, n->words[1]);
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
	struct cfg_mx_rollup mr = { .origin = origin_of(n) };

	if (n->nwords < 2 || n->nwords > 3 ||
	    (n->nwords == 3 && !str_ieq(n->words[2], "rollup-by-ip"))) {
		err(L, n, "'mx' expects PATTERN NAME.rollup [rollup-by-ip]");
		return false;
	}
	mr.by_ip = n->nwords == 3;
	mr.pattern = arena_strdup(L->a, n->words[0]);
	if (mr.by_ip && cfg_parse_cidr(n->words[0], &mr.net, e, sizeof(e)) < 0) {
		err(L, n, "'mx ... rollup-by-ip': %s, got '%s'", e, n->words[0]);
		return false;
	}
	size_t len = strlen(n->words[1]);
	if (len <= 7 || !str_ieq(n->words[1] + len - 7, ".rollup") ||
	    strspn(n->words[1], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != len) {
		err(L, n, "'mx': the rollup name must be a name ending in .rollup, got '%s'",
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

static bool parse_special(struct loader *L, const struct cfg_node *n,
			  const struct cfg_directive *d, void *scope_obj,
			  struct assign *as)
{
	special_fn *fn = (unsigned)d->handler < H_COUNT ? special_handlers[d->handler]
							: NULL;

	if (!fn)
		BUG("directive '%s': unknown handler %d", n->name, (int)d->handler);
	return fn(L, n, d, scope_obj, as);
}

/* ------------------------------------------------------------------ */
/* tree walk                                                            */

/*
 * directive - type-check one directive of a block and record it.
 * scope_obj is the object special handlers add to (vmta, pool, acct...).
 */
static void directive(struct loader *L, const struct cfg_node *n,
		      enum cfg_scope scope, struct assign_list *al,
		      void *scope_obj)
{
	const struct cfg_directive *d = cfg_directive_find(n->name, scope);

	if (!d) {
		const struct cfg_directive *elsewhere = cfg_directive_in_any_scope(n->name);
		if (elsewhere)
			err(L, n, "'%s' is not allowed in %s (it belongs in %s)",
			    n->name, cfg_scope_name(scope),
			    cfg_scope_name(elsewhere->scope));
		else
			unknown_directive(L, n, scope);
		return;
	}
	if (d->handler == H_GUIDE_MISNOMER) {
		warn(L, n, "'%s' is %s; coremta ignores it", n->name, d->help);
		return;
	}
	if (d->type == CT_ACCEPTED) {
		warn(L, n, "'%s' is accepted but not acted on", n->name);
		return;
	}
	const struct cfg_directive *canon = cfg_directive_canonical(d);
	struct assign as = { .d = canon, .origin = origin_of(n) };
	size_t errors_before = L->diags->errors;
	bool keep;

	if (canon->type == CT_SPECIAL)
		keep = parse_special(L, n, canon, scope_obj, &as);
	else
		keep = parse_value(L, n, canon, &as.v);
	if (keep && al)
		assign_push(L, al, &as);
	/* A value that is wrong gets its error, not also this warning. */
	if (!(canon->flags & DF_ACTED) && L->diags->errors == errors_before)
		warn(L, n, "'%s' is accepted but not acted on", n->name);
}

static void nested_block_error(struct loader *L, const struct cfg_node *n,
			       const char *parent)
{
	err(L, n, "<%s> is not allowed inside <%s>", n->name, parent);
}

static void walk_directives(struct loader *L, const struct cfg_node *block,
			    enum cfg_scope scope, struct assign_list *al,
			    void *scope_obj)
{
	for (const struct cfg_node *n = block->children; n; n = n->next) {
		if (n->kind == CFG_NODE_BLOCK)
			nested_block_error(L, n, block->name);
		else
			directive(L, n, scope, al, scope_obj);
	}
}

static void add_domain_blocks(struct loader *L, const struct cfg_node *n,
			      struct dblock_list *bl, const char *owner,
			      bool in_pool)
{
	struct assign_list *al = arena_alloc(L->a, sizeof(*al));

	if (n->nargs == 0) {
		err(L, n, "<domain> needs a pattern (*, name, *.name, [*.]name or [ip/len])");
		return;
	}
	walk_directives(L, n, SCOPE_DOMAIN, al, NULL);
	unsigned seq = L->seq++;
	for (size_t i = 0; i < n->nargs; i++) {
		struct dblock b = {
			.text = arena_strdup(L->a, n->args[i].text),
			.from_macro = n->args[i].from_macro,
			.seq = seq,
			.assigns = al,
			.origin = origin_of(n),
		};
		if (!parse_dpat(L, n->args[i].text, &b.pat)) {
			err(L, n, "<domain>: invalid domain pattern '%s' (expected *, name, *.name, [*.]name or [ip/len])",
			    n->args[i].text);
			continue;
		}
		*PUSH(L, bl->items, bl->count, bl->cap) = b;
		struct cfg *c = L->cfg;
		*PUSH(L, c->pattern_info, c->n_pattern_info, c->cap_pattern_info) =
			(struct cfg_domain_pattern_info){
				.pattern = b.text, .vmta = owner,
				.in_pool = in_pool, .origin = b.origin,
			};
		*PUSH(L, c->pattern_assigns, c->n_pattern_assigns,
		      c->cap_pattern_assigns) = al;
	}
}

static const char *block_name(struct loader *L, const struct cfg_node *n,
			      const char *what)
{
	if (n->nargs != 1 || !*n->args[0].text) {
		err(L, n, "<%s> needs exactly one %s", n->name, what);
		return NULL;
	}
	return arena_strdup(L->a, n->args[0].text);
}

static void walk_source(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];

	if (n->nargs == 0) {
		err(L, n, "<source> needs an IP, CIDR, 0/0 or a name such as {auth}");
		return;
	}
	struct assign_list al = { 0 };
	walk_directives(L, n, SCOPE_SOURCE, &al, NULL);
	unsigned seq = L->seq++;
	for (size_t i = 0; i < n->nargs; i++) {
		const char *t = n->args[i].text;
		struct sblock sb = { .seq = seq, .assigns = al, .origin = origin_of(n) };
		if (strcmp(t, "*") == 0)
			t = "0/0";
		if (cfg_parse_cidr(t, &sb.net, e, sizeof(e)) == 0) {
			char canon[64];
			cfg_cidr_format(&sb.net, canon, sizeof(canon));
			sb.name = sb.net.prefix == 0 ? "0/0" : arena_strdup(L->a, canon);
		} else if (isdigit((unsigned char)t[0]) || strchr(t, ':')) {
			err(L, n, "<source>: %s, got '%s'", e, t);
			continue;
		} else {
			sb.named = true;
			sb.name = arena_strdup(L->a, t);
		}
		*PUSH(L, c->sblocks, c->n_sblocks, c->cap_sblocks) = sb;
	}
}

static struct vmta_rec *find_vmta_rec(struct cfg *c, const char *name)
{
	for (size_t i = 0; i < c->n_vmtas; i++)
		if (strcmp(c->vmtas[i]->v.name, name) == 0)
			return c->vmtas[i];
	return NULL;
}

static struct pool_rec *find_pool_rec(struct cfg *c, const char *name)
{
	for (size_t i = 0; i < c->n_pools; i++)
		if (strcmp(c->pools[i]->p.name, name) == 0)
			return c->pools[i];
	return NULL;
}

static void walk_vmta(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	const char *name = block_name(L, n, "virtual-mta name");

	if (!name)
		return;
	struct vmta_rec *v = find_vmta_rec(c, name);
	if (v) {
		err(L, n, "virtual-mta '%s' is already defined at %s:%d", name,
		    v->v.origin.file, v->v.origin.line);
		return;
	}
	v = arena_alloc(L->a, sizeof(*v));
	v->v.name = name;
	v->v.origin = origin_of(n);
	for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
		if (ch->kind == CFG_NODE_BLOCK) {
			if (strcmp(ch->name, "domain") == 0)
				add_domain_blocks(L, ch, &v->domains, name, false);
			else
				nested_block_error(L, ch, n->name);
		} else {
			directive(L, ch, SCOPE_VMTA, &v->assigns, v);
		}
	}
	*PUSH(L, c->vmtas, c->n_vmtas, c->cap_vmtas) = v;
}

static void walk_pool(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	const char *name = block_name(L, n, "pool name");

	if (!name)
		return;
	if (find_pool_rec(c, name)) {
		err(L, n, "virtual-mta-pool '%s' is defined twice", name);
		return;
	}
	struct pool_rec *p = arena_alloc(L->a, sizeof(*p));
	p->p.name = name;
	p->p.origin = origin_of(n);
	for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
		if (ch->kind == CFG_NODE_BLOCK) {
			if (strcmp(ch->name, "domain") == 0)
				add_domain_blocks(L, ch, &p->domains, name, true);
			else
				nested_block_error(L, ch, n->name);
		} else {
			directive(L, ch, SCOPE_POOL, NULL, p);
		}
	}
	*PUSH(L, c->pools, c->n_pools, c->cap_pools) = p;
}

/* walk_simple - blocks whose settings are a plain struct, no inheritance. */
static void walk_simple(struct loader *L, const struct cfg_node *n,
			enum cfg_scope scope, void *obj)
{
	struct assign_list al = { 0 };

	apply_defaults(L, scope, obj, NULL);
	walk_directives(L, n, scope, &al, obj);
	apply_list(L, obj, NULL, &al);
}

/* walk_processor - <bounce-processor> or <feedback-loop-processor> */
static void walk_processor(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	struct cfg_processor *p = PUSH(L, c->procs, c->n_procs, c->cap_procs);
	struct assign_list al = { 0 };

	memset(p, 0, sizeof(*p));
	p->kind = strcmp(n->name, "bounce-processor") == 0 ? CFG_PROC_BOUNCE
							    : CFG_PROC_FEEDBACK;
	p->origin = origin_of(n);
	apply_defaults(L, SCOPE_PROCESSOR, p, NULL);
	for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
		if (ch->kind != CFG_NODE_BLOCK) {
			directive(L, ch, SCOPE_PROCESSOR, &al, p);
		} else if (strcmp(ch->name, "address-list") == 0) {
			for (const struct cfg_node *e = ch->children; e; e = e->next)
				if (e->kind == CFG_NODE_BLOCK)
					nested_block_error(L, e, ch->name);
				else
					directive(L, e, SCOPE_ADDRESS_LIST, NULL, &p->addrs);
		} else {
			nested_block_error(L, ch, n->name);
		}
	}
	apply_list(L, p, NULL, &al);
}

/* walk_address_list - a top-level <address-list NAME> */
static void walk_address_list(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;

	if (n->nargs == 0) {
		/* PowerMTA only reads one inside a processor; copies of such
		 * configs carry stray ones, so this is no reason to refuse */
		warn(L, n, "<address-list> at top level without a name is used by nothing "
		     "(suppression-lists names one); its contents are ignored");
		return;
	}
	const char *name = block_name(L, n, "list name");
	if (!name)
		return;
	const struct cfg_address_list *dup = cfg_address_list_find(c, name);
	if (dup) {
		err(L, n, "address-list '%s' is already defined at %s:%d", name,
		    dup->origin.file, dup->origin.line);
		return;
	}
	struct cfg_address_list *al = PUSH(L, c->alists, c->n_alists, c->cap_alists);
	memset(al, 0, sizeof(*al));
	al->name = name;
	al->origin = origin_of(n);
	for (const struct cfg_node *e = n->children; e; e = e->next)
		if (e->kind == CFG_NODE_BLOCK)
			nested_block_error(L, e, n->name);
		else
			directive(L, e, SCOPE_ADDRESS_LIST, NULL, &al->set);
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

static void walk_shard(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];
	uint64_t idx;

	if (n->nargs != 1 ||
	    cfg_parse_uint(n->args[0].text, 0, 1023, &idx, e, sizeof(e)) < 0) {
		err(L, n, "<shard> needs a shard number from 0 to 1023");
		return;
	}
	for (size_t i = 0; i < c->n_shards; i++)
		if (c->shards[i].index == idx) {
			err(L, n, "<shard %llu> is already defined at %s:%d",
			    (unsigned long long)idx, c->shards[i].origin.file,
			    c->shards[i].origin.line);
			return;
		}
	struct cfg_shard s = { .index = (uint32_t)idx, .cpu = -1,
			       .origin = origin_of(n) };
	size_t cap = 0;
	for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
		if (ch->kind == CFG_NODE_BLOCK) {
			nested_block_error(L, ch, n->name);
			continue;
		}
		directive(L, ch, SCOPE_SHARD, NULL, &s);
		if (strcmp(ch->name, "domain") != 0)
			continue;
		struct cfg_strlist l = split_list(L, ch);
		if (l.count == 0)
			err(L, ch, "'domain' needs one or more domain patterns");
		for (size_t i = 0; i < l.count; i++) {
			size_t nexp = 0;
			const char **exp = NULL;
			if (cfg_syntax_expand(L->tree, L->a, l.items[i], &exp, &nexp) < 0) {
				err(L, ch, "'domain': undefined or looping macro in '%s'",
				    l.items[i]);
				continue;
			}
			for (size_t k = 0; k < nexp; k++) {
				struct dpat p;
				if (!parse_dpat(L, exp[k], &p) || p.kind == DP_ALL) {
					err(L, ch, "'domain': invalid domain pattern '%s' (expected name, *.name or [*.]name)",
					    exp[k]);
					continue;
				}
				s.domains.items = grow(L->a, s.domains.items,
						       s.domains.count, &cap,
						       sizeof(char *));
				s.domains.items[s.domains.count++] = exp[k];
			}
		}
	}
	*PUSH(L, c->shards, c->n_shards, c->cap_shards) = s;
}

static void walk(struct loader *L, const struct cfg_tree *tree)
{
	struct cfg *c = L->cfg;

	for (const struct cfg_node *n = tree->root; n; n = n->next) {
		if (n->kind == CFG_NODE_DIRECTIVE) {
			directive(L, n, SCOPE_GLOBAL, &L->global_assigns, NULL);
			continue;
		}
		const char *b = n->name;
		if (strcmp(b, "source") == 0) {
			walk_source(L, n);
		} else if (strcmp(b, "domain") == 0) {
			add_domain_blocks(L, n, &c->domains, NULL, false);
		} else if (strcmp(b, "virtual-mta") == 0) {
			walk_vmta(L, n);
		} else if (strcmp(b, "virtual-mta-pool") == 0) {
			walk_pool(L, n);
		} else if (strcmp(b, "acct-file") == 0) {
			struct cfg_acct *a = PUSH(L, c->accts, c->n_accts, c->cap_accts);
			memset(a, 0, sizeof(*a));
			const char *path = n->block_raw;
			if (!path || !*path) {
				err(L, n, "<acct-file> needs a file path or |command");
				c->n_accts--;
				continue;
			}
			a->is_pipe = path[0] == '|';
			a->path = arena_strdup(L->a, a->is_pipe ? path + 1 : path);
			a->origin = origin_of(n);
			walk_simple(L, n, SCOPE_ACCT, a);
		} else if (strcmp(b, "rejectlog-file") == 0) {
			struct cfg_rejectlog *r = PUSH(L, c->rejectlogs, c->n_rejectlogs,
						       c->cap_rejectlogs);
			memset(r, 0, sizeof(*r));
			r->path = block_name(L, n, "file path");
			r->origin = origin_of(n);
			walk_simple(L, n, SCOPE_REJECTLOG, r);
		} else if (strcmp(b, "spool") == 0) {
			struct cfg_spool *s = PUSH(L, c->spools, c->n_spools, c->cap_spools);
			memset(s, 0, sizeof(*s));
			s->dir = block_name(L, n, "directory");
			s->origin = origin_of(n);
			walk_simple(L, n, SCOPE_SPOOL, s);
		} else if (strcmp(b, "smtp-user") == 0) {
			struct cfg_smtp_user *u = PUSH(L, c->users, c->n_users, c->cap_users);
			memset(u, 0, sizeof(*u));
			u->name = block_name(L, n, "user name");
			u->origin = origin_of(n);
			walk_simple(L, n, SCOPE_SMTP_USER, u);
		} else if (strcmp(b, "source-group") == 0) {
			const char *name = block_name(L, n, "group name");
			if (!name)
				continue;
			if (cfg_source_group_find(c, name)) {
				err(L, n, "source-group '%s' is defined twice", name);
				continue;
			}
			struct cfg_source_group *g = PUSH(L, c->groups, c->n_groups,
							  c->cap_groups);
			memset(g, 0, sizeof(*g));
			g->name = name;
			g->origin = origin_of(n);
			walk_simple(L, n, SCOPE_SOURCE_GROUP, g);
		} else if (strcmp(b, "smtp-pattern-list") == 0) {
			const char *name = block_name(L, n, "list name");
			if (!name)
				continue;
			if (cfg_smtp_pattern_list_find(c, name)) {
				err(L, n, "smtp-pattern-list '%s' is defined twice", name);
				continue;
			}
			struct cfg_smtp_pattern_list *pl = PUSH(L, c->spls, c->n_spls, c->cap_spls);
			memset(pl, 0, sizeof(*pl));
			pl->name = name;
			pl->origin = origin_of(n);
			walk_directives(L, n, SCOPE_SMTP_PATTERNS, NULL, pl);
		} else if (strcmp(b, "bounce-category-patterns") == 0) {
			for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
				if (ch->kind == CFG_NODE_BLOCK) {
					nested_block_error(L, ch, n->name);
				} else if (ch->name_orig && ch->name_orig[0] == '/') {
					/* PowerMTA's form: /regex/ category */
					if (ch->nwords != 1) {
						err(L, ch, "bounce pattern expects /regex/ CATEGORY");
						continue;
					}
					struct cfg_bounce_rule r = {
						.re = compile_regex(L, ch, "bounce pattern", ch->name_orig),
						.category = arena_strdup(L->a, ch->words[0]),
						.action = CFG_BOUNCE_CLASSIFY,
						.origin = origin_of(ch),
					};
					if (r.re)
						*PUSH(L, c->bounce_rules, c->n_bounce_rules,
						      c->cap_bounce_rules) = r;
					/* the form is the `regex` row's second spelling */
					if (!(cfg_directive_find("regex", SCOPE_BOUNCE_PATTERNS)->flags &
					      DF_ACTED))
						warn(L, ch, "bounce pattern '%s' is accepted but not acted on",
						     ch->name_orig);
				} else {
					directive(L, ch, SCOPE_BOUNCE_PATTERNS, NULL, NULL);
				}
			}
		} else if (strcmp(b, "pattern-list") == 0) {
			const char *name = block_name(L, n, "list name");
			if (!name)
				continue;
			struct cfg_pattern_list *pl = PUSH(L, c->pls, c->n_pls, c->cap_pls);
			memset(pl, 0, sizeof(*pl));
			pl->name = name;
			walk_directives(L, n, SCOPE_PATTERN_LIST, NULL, pl);
		} else if (strcmp(b, "shard") == 0) {
			walk_shard(L, n);
		} else if (strcmp(b, "domain-key-list") == 0) {
			for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
				if (ch->kind == CFG_NODE_BLOCK)
					nested_block_error(L, ch, n->name);
				else if (strcmp(ch->name, "domain-key") != 0)
					err(L, ch, "'%s' is not allowed in <domain-key-list> (only domain-key)",
					    ch->name);
				else
					directive(L, ch, SCOPE_GLOBAL, NULL, NULL);
			}
		} else if (strcmp(b, "bounce-processor") == 0 ||
			   strcmp(b, "feedback-loop-processor") == 0) {
			walk_processor(L, n);
		} else if (strcmp(b, "address-list") == 0) {
			walk_address_list(L, n);
		} else if (strcmp(b, "mx-rollup-list") == 0) {
			for (const struct cfg_node *ch = n->children; ch; ch = ch->next)
				if (ch->kind == CFG_NODE_BLOCK)
					nested_block_error(L, ch, n->name);
				else
					directive(L, ch, SCOPE_MX_ROLLUP, NULL, NULL);

		} else if (!cfg_block_find(b)) {
			unknown(L, n, "unknown block <%s>; its contents are ignored", b);
		}
		/* the block table says what is acted on, for every block */
		const struct cfg_block_def *def = cfg_block_find(b);
		if (def && !def->acted)
			warn(L, n, "<%s> is accepted but not acted on; its contents %s",
			     b, strcmp(b, "pattern-list") == 0 ? "are checked, not used"
							      : "are ignored");
	}
}

/* ------------------------------------------------------------------ */
/* resolution                                                           */

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
			struct vmta_rec *v = find_vmta_rec(c, p->member_names[k]);
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
		if (find_vmta_rec(c, p->p.name))
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
		struct pool_rec *p = v->v.pool ? find_pool_rec(c, v->v.pool) : NULL;
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
	return outer->prefix == 0 || cidr_within(inner, outer);
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
			apply_list(L, &e->s, e->origin, &c->sblocks[i].assigns);
	e->s.name = name;
}

static void build_sources(struct loader *L)
{
	struct cfg *c = L->cfg;
	struct seff base = { 0 };
	size_t cap_named = 0, cap_ip = 0;
	struct cfg_cidr any = { .family = AF_INET, .prefix = 0 };

	base.origin = arena_alloc(L->a, cfg_directive_count * sizeof(*base.origin));
	apply_defaults(L, SCOPE_SOURCE, &base.s, base.origin);

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
			apply_list(L, &ip->eff->s, ip->eff->origin, &chain[i]->assigns);
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
				.re = keep_regex(L, re),
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
		apply_defaults(L, SCOPE_VMTA, &v->v, NULL);
		apply_list(L, &v->v, NULL, &v->assigns);
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
	apply_defaults(L, SCOPE_GLOBAL, g, c->global_origin);
	/* a top-level directive set twice: the later wins, say so */
	for (const struct assign *x = L->global_assigns.head; x; x = x->next)
		for (const struct assign *y = x->next; y; y = y->next)
			if (x->d == y->d && x->d->type != CT_STRLIST) {
				diag_add(L->diags, DIAG_WARNING, y->origin.file, y->origin.line,
					 "'%s' overrides the value set at %s:%d", y->d->name,
					 x->origin.file, x->origin.line);
				break;
			}
	apply_list(L, g, c->global_origin, &L->global_assigns);
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
			*PUSH(L, res, nres, cap) = keep_regex(L, re);
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

/* ------------------------------------------------------------------ */
/* load / free                                                          */

static int load_tree(struct cfg *c, const struct cfg_tree *tree,
		     const struct cfg_load_opts *opts, struct diag_list *diags)
{
	static const struct cfg_load_opts none;
	struct loader L = { .cfg = c, .a = c->arena, .diags = diags,
			    .opts = opts ? opts : &none, .tree = tree };
	size_t errors_before = diags->errors;

	walk(&L, tree);
	finish_global(&L);
	resolve_pools(&L);
	resolve_suppression_lists(&L);
	finish_vmtas(&L);
	check_vmta_refs(&L);
	check_shards(&L);

	struct cfg_queue qdef = { 0 };
	struct cfg_origin *qorigin = arena_alloc(c->arena, cfg_directive_count *
								   sizeof(*qorigin));
	apply_defaults(&L, SCOPE_DOMAIN, &qdef, qorigin);
	build_queues(&L, &qdef, qorigin);
	build_sources(&L);
	check_listener_sources(&L);
	add_builtin_bounce_rules(&L);
	return diags->errors > errors_before ? -EINVAL : 0;
}

static int load_common(struct cfg *c, int parse_rc, const struct cfg_tree *tree,
		       const struct cfg_load_opts *opts, struct cfg **out,
		       struct diag_list *diags)
{
	int rc = parse_rc;

	if (rc == 0)
		rc = load_tree(c, tree, opts, diags);
	else if (tree->complete)
		(void)load_tree(c, tree, opts, diags);	/* more errors, one pass */
	if (rc < 0) {
		cfg_free(c);
		return rc;
	}
	*out = c;
	return 0;
}

static struct cfg *cfg_new(const char *path)
{
	struct cfg *c = xcalloc(1, sizeof(*c));

	atomic_init(&c->refs, 1);
	c->arena = arena_new();
	c->path = arena_strdup(c->arena, path);
	return c;
}

int cfg_load_file(const char *path, const struct cfg_load_opts *opts,
		  struct cfg **out, struct diag_list *diags)
{
	struct cfg *c = cfg_new(path);
	struct cfg_tree tree = { 0 };
	int rc = cfg_syntax_parse_file(c->arena, path, &tree, diags);

	return load_common(c, rc, &tree, opts, out, diags);
}

int cfg_load_string(const char *name, const char *text, const char *base_dir,
		    const struct cfg_load_opts *opts, struct cfg **out,
		    struct diag_list *diags)
{
	struct cfg *c = cfg_new(name);
	struct cfg_tree tree = { 0 };
	int rc = cfg_syntax_parse_string(c->arena, name, text, strlen(text),
					 base_dir, &tree, diags);

	return load_common(c, rc, &tree, opts, out, diags);
}

const struct cfg *cfg_ref(const struct cfg *cfg)
{
	/* the count is the one mutable part of an immutable configuration */
	struct cfg *c = (struct cfg *)cfg;

	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return cfg;
}

void cfg_unref(const struct cfg *cfg)
{
	if (cfg)
		cfg_free((struct cfg *)cfg);
}

void cfg_free(struct cfg *cfg)
{
	if (!cfg)
		return;
	uint32_t was = atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel);
	BUG_ON(was == 0);
	if (was > 1)
		return;
	for (size_t i = 0; i < cfg->n_regexes; i++)
		cfg_regex_free(cfg->regexes[i]);
	for (size_t i = 0; i < cfg->n_dkim_keys; i++)
		dkim_key_free(cfg->dkim_keys[i]);
	arena_free(cfg->arena);
	free(cfg);
}

/* ------------------------------------------------------------------ */
/* lookups                                                              */

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
	BUG_ON(1);	/* the built-in catch-all always matches */
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

/* ------------------------------------------------------------------ */
/* model.h: origins and written blocks                                  */

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

/* ------------------------------------------------------------------ */
/* reports                                                              */

static void format_field(const struct cfg_directive *d, const void *base,
			 char *buf, size_t len)
{
	const char *field = (const char *)base + d->offset;

	switch (d->type) {
	case CT_BOOL:
		snprintf(buf, len, "%s", *(const bool *)field ? "yes" : "no");
		break;
	case CT_UINT: {
		uint32_t v = *(const uint32_t *)field;
		if (v == 0 && (d->flags & DF_UNLIMITED_0))
			snprintf(buf, len, "unlimited");
		else
			snprintf(buf, len, "%u", v);
		break;
	}
	case CT_INTERVAL_NEVER:
		if (*(const uint64_t *)field == 0) {
			snprintf(buf, len, "never");
			break;
		}
		/* fall through */
	case CT_INTERVAL:
		cfg_interval_format(*(const uint64_t *)field, buf, len);
		break;
	case CT_SIZE:
		if (*(const uint64_t *)field == 0)
			snprintf(buf, len, "0 (unlimited)");
		else
			cfg_size_format(*(const uint64_t *)field, buf, len);
		break;
	case CT_SCHEDULE:
		cfg_schedule_format((const struct cfg_schedule *)field, buf, len);
		break;
	case CT_DAILY:
		cfg_daily_format((const struct cfg_daily *)field, buf, len);
		break;
	case CT_RATE:
		cfg_rate_format((const struct cfg_rate *)field, buf, len);
		break;
	case CT_ENUM:
		snprintf(buf, len, "%s", d->choices[*(const int *)field]);
		break;
	case CT_STRING: {
		const char *s = *(const char *const *)field;
		snprintf(buf, len, "%s", s ? s : "(unset)");
		break;
	}
	case CT_STRLIST: {
		const struct cfg_strlist *l = (const struct cfg_strlist *)field;
		size_t off = 0;
		buf[0] = '\0';
		for (size_t i = 0; i < l->count && off < len; i++)
			off += (size_t)snprintf(buf + off, len - off, "%s%s",
						i ? "," : "", l->items[i]);
		if (!l->count)
			snprintf(buf, len, "(none)");
		break;
	}
	case CT_SPECIAL:
		if (d->handler == H_SMTP_PATTERN_REF) {
			const struct cfg_smtp_pattern_list *p =
				*(const struct cfg_smtp_pattern_list *const *)field;
			snprintf(buf, len, "%s", p ? p->name : "(none)");
		} else {
			snprintf(buf, len, "?");
		}
		break;
	default:
		snprintf(buf, len, "?");
	}
}

static void show_fields(enum cfg_scope scope, const void *base,
			const struct cfg_origin *origin, FILE *out)
{
	for (size_t i = 0; i < cfg_directive_count; i++) {
		const struct cfg_directive *d = &cfg_directives[i];
		char val[512];
		if (d->scope != scope || d->type == CT_ACCEPTED || (d->flags & DF_ALIAS))
			continue;
		if (d->type == CT_SPECIAL && d->handler != H_SMTP_PATTERN_REF)
			continue;
		format_field(d, base, val, sizeof(val));
		/* a value nothing reads must not look like one that works */
		const char *mark = (d->flags & DF_ACTED) ? "" : "  [not acted on]";
		if (origin[i].file)
			fprintf(out, "  %-34s %-24s %s:%d%s\n", d->name, val,
				origin[i].file, origin[i].line, mark);
		else
			fprintf(out, "  %-34s %-24s default%s\n", d->name, val, mark);
	}
}

int cfg_show_queue(const struct cfg *cfg, const char *domain, const char *vmta,
		   FILE *out)
{
	const struct cfg_queue *q = cfg_queue_lookup(cfg, domain, vmta);

	if (!q)
		return -ENOENT;
	const struct qeff *e = (const struct qeff *)q;
	fprintf(out, "queue %s/%s (most specific match: <domain %s>)\n", domain,
		vmta ? vmta : "{default}", q->pattern);
	show_fields(SCOPE_DOMAIN, q, e->origin, out);
	return 0;
}

int cfg_show_source(const struct cfg *cfg, const char *ip, const char *named,
		    FILE *out)
{
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1)
		sin->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1)
		sin6->sin6_family = AF_INET6;
	else
		return -EINVAL;
	const struct cfg_source *s = cfg_source_lookup(cfg, (struct sockaddr *)&ss, named);
	if (!s)
		return -ENOENT;
	const struct seff *e = (const struct seff *)s;
	fprintf(out, "source for client %s%s%s (most specific match: <source %s>)\n",
		ip, named ? " as " : "", named ? named : "", s->name);
	show_fields(SCOPE_SOURCE, s, e->origin, out);
	return 0;
}

void cfg_directive_reference(FILE *out)
{
	static const char *const type_names[] = {
		[CT_BOOL] = "yes/no", [CT_UINT] = "number",
		[CT_INTERVAL] = "interval", [CT_INTERVAL_NEVER] = "interval or never",
		[CT_SCHEDULE] = "interval list", [CT_DAILY] = "daily caps", [CT_SIZE] = "size",
		[CT_RATE] = "rate", [CT_STRING] = "text", [CT_STRLIST] = "list",
		[CT_ENUM] = "choice", [CT_SPECIAL] = "see text",
		[CT_ACCEPTED] = "any",
	};

	for (int s = 0; s < SCOPE_COUNT; s++) {
		fprintf(out, "\n### %s\n\n", cfg_scope_name((enum cfg_scope)s));
		fprintf(out, "| directive | value | default | status | meaning |\n");
		fprintf(out, "|---|---|---|---|---|\n");
		for (size_t i = 0; i < cfg_directive_count; i++) {
			const struct cfg_directive *d = &cfg_directives[i];
			if ((int)d->scope != s)
				continue;
			const struct cfg_directive *c = cfg_directive_canonical(d);
			char value[160];
			if (d->type == CT_UINT && d->max)
				snprintf(value, sizeof(value), "%s %llu-%llu%s%s",
					 type_names[d->type], (unsigned long long)d->min,
					 (unsigned long long)d->max,
					 d->unit ? " " : "", d->unit ? d->unit : "");
			else if (d->type == CT_ENUM) {
				size_t off = 0;
				value[0] = '\0';
				for (int k = 0; d->choices[k]; k++)
					off += (size_t)snprintf(value + off, sizeof(value) - off,
								"%s%s", k ? " \\| " : "",
								d->choices[k]);
			} else
				snprintf(value, sizeof(value), "%s%s%s",
					 type_names[d->type], d->unit ? " " : "",
					 d->unit ? d->unit : "");
			const char *status = d->type == CT_ACCEPTED ? "accepted, ignored"
					     : d->handler == H_GUIDE_MISNOMER ? "explained, ignored"
					     : (c->flags & DF_ACTED) ? "acted on"
								      : "parsed, not acted on yet";
			fprintf(out, "| `%s` | %s | %s | %s | %s |\n", d->name, value,
				d->def ? d->def : "-", status, d->help);
		}
	}
	fprintf(out, "\n### blocks\n\n| block | status | meaning |\n|---|---|---|\n");
	for (size_t i = 0; i < cfg_block_count; i++)
		fprintf(out, "| `<%s>` | %s | %s |\n", cfg_blocks[i].name,
			cfg_blocks[i].acted ? "acted on" : "accepted, contents ignored",
			cfg_blocks[i].help);
	fprintf(out, "\n### record types (`records`)\n\n| type | in | status |\n|---|---|---|\n");
	for (size_t i = 0; i < cfg_record_type_count; i++) {
		const struct cfg_record_def *r = &cfg_record_types[i];
		fprintf(out, "| `%s` (%s) | %s | %s |\n", r->name, r->long_name,
			r->rejectlog ? "<rejectlog-file>" : "<acct-file>",
			r->acted ? "written" : "accepted, never written yet");
	}
}

/* ------------------------------------------------------------------ */
/* hand-over to running threads                                         */

void cfg_mailbox_post(struct cfg_mailbox *mb, const struct cfg *cfg)
{
	const struct cfg *was = atomic_exchange_explicit(&mb->next, cfg_ref(cfg),
							 memory_order_acq_rel);
	/* a thread that never took the one before: that one is superseded */
	cfg_unref(was);
}

const struct cfg *cfg_mailbox_take(struct cfg_mailbox *mb)
{
	/* a load first: the common case (nothing posted) writes nothing */
	if (!atomic_load_explicit(&mb->next, memory_order_relaxed))
		return NULL;
	return atomic_exchange_explicit(&mb->next, NULL, memory_order_acq_rel);
}

bool cfg_mailbox_pending(struct cfg_mailbox *mb)
{
	return atomic_load_explicit(&mb->next, memory_order_acquire) != NULL;
}

void cfg_mailbox_clear(struct cfg_mailbox *mb)
{
	cfg_unref(cfg_mailbox_take(mb));
}
