/*
 * config/load.c - the first pass of a load: walks the syntax tree once,
 * type-checks every directive against the table in directives.c, and
 * records "assignments" per block; stores values into settings structs
 * and fills them with the table's defaults.  Also the loader's small
 * helpers (diagnostics at file:line, arena arrays, word lists).
 *
 * Loader thread only, during cfg_load_*.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model_int.h"
#include "config/syntax.h"
#include "config/values.h"

/* ld_grow - make room for one more element in an arena-backed array. */
void *ld_grow(struct arena *a, void *items, size_t count, size_t *cap,
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

void ld_err(struct loader *L, const struct cfg_node *n, const char *fmt,
	    ...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(L->diags, DIAG_ERROR, n ? n->file : L->cfg->path,
		  n ? n->line : 0, fmt, ap);
	va_end(ap);
}

void ld_warn(struct loader *L, const struct cfg_node *n, const char *fmt,
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

struct cfg_origin ld_origin_of(const struct cfg_node *n)
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

struct cfg_regex *ld_keep_regex(struct loader *L, struct cfg_regex *re)
{
	struct cfg *c = L->cfg;

	*PUSH(L, c->regexes, c->n_regexes, c->cap_regexes) = re;
	return re;
}

/* ld_compile_regex - compile a config regex, reporting errors at node. */
const struct cfg_regex *ld_compile_regex(struct loader *L,
					 const struct cfg_node *n,
					 const char *what, const char *text)
{
	char e[ERRLEN];
	struct cfg_regex *re = NULL;

	if (cfg_regex_compile(text, &re, e, sizeof(e)) < 0) {
		ld_err(L, n, "'%s': %s", what, e);
		return NULL;
	}
	return ld_keep_regex(L, re);
}

/* ld_joined_words - a directive's words joined by single blanks. */
const char *ld_joined_words(struct loader *L, const struct cfg_node *n,
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

bool ld_want_one_word(struct loader *L, const struct cfg_node *n,
		      const char *what)
{
	if (n->nwords == 1)
		return true;
	if (n->nwords == 0)
		ld_err(L, n, "'%s' needs a value (%s)", n->name, what);
	else
		ld_err(L, n, "'%s' takes one value (%s), got '%s'", n->name, what,
		       n->raw);
	return false;
}

struct cfg_strlist ld_split_list(struct loader *L, const struct cfg_node *n)
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
				l.items = ld_grow(L->a, l.items, l.count, &cap,
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
			ld_err(L, n, "'%s': %s, got '%s'", n->name, e, text);
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

static bool valid_dkim_identity(const char *s)
{
	const char *at = strrchr(s, '@');

	if (str_ieq(s, "sender-or-from") || str_ieq(s, "from") || str_ieq(s, "sender"))
		return true;
	if (strpbrk(s, " \t;=<>\""))
		return false;
	return at ? ld_valid_domain_text(at + 1) : ld_valid_domain_text(s) && strchr(s, '.');
}

static bool parse_value(struct loader *L, const struct cfg_node *n,
			const struct cfg_directive *d, union cfg_value *v)
{
	switch (d->type) {
	case CT_STRLIST:
		v->list = ld_split_list(L, n);
		for (size_t i = 0; (d->flags & DF_HEADER_NAMES) && i < v->list.count; i++)
			for (const char *s = v->list.items[i]; *s; s++)
				if (*s <= ' ' || *s >= 0x7f || *s == ':' || *s == ';') {
					ld_err(L, n, "'%s': '%s' is not a header name", n->name,
					       v->list.items[i]);
					return false;
				}
		return true;
	case CT_STRING:
		if (n->nwords == 0) {
			/* PowerMTA loads `password ## FILL IN ##`: so do we, loudly */
			ld_warn(L, n, "'%s' has no value (everything after '#' is a comment); it is left unset",
				n->name);
			v->s = NULL;
			return true;
		}
		v->s = n->nwords == 1 ? (*n->words[0] ? arena_strdup(L->a, n->words[0]) : NULL)
				      : ld_joined_words(L, n, 0);
		if ((d->flags & DF_DKIM_IDENTITY) && v->s && !valid_dkim_identity(v->s)) {
			ld_err(L, n, "'%s': '%s' is not an identity (sender-or-from, from, sender, a domain, @domain or user@domain)",
			       n->name, v->s);
			return false;
		}
		if ((d->flags & DF_HOSTNAME) && v->s && !valid_host_name(v->s)) {
			ld_err(L, n, "'%s': '%s' is not a host name (labels of letters, digits and '-' joined by dots, as mail1.example.com) or an address literal ([192.0.2.1]); receivers refuse it in EHLO",
			       n->name, v->s);
			return false;
		}
		return true;
	case CT_SCHEDULE:
	case CT_DAILY:
		/* "10m, 10m, 1h" is written with blanks too */
		if (n->nwords == 0) {
			ld_err(L, n, "'%s' needs a value (%s)", n->name,
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
		if (!ld_want_one_word(L, n, "see `coremta check --help`"))
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

/* ld_apply_defaults - fill a settings struct from the table's defaults. */
void ld_apply_defaults(struct loader *L, enum cfg_scope scope, void *base,
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

void ld_apply_list(struct loader *L, void *base, struct cfg_origin *origin,
		   const struct assign_list *al)
{
	for (const struct assign *as = al->head; as; as = as->next) {
		store(L, base, as->d, &as->v);
		if (origin)
			origin[cfg_directive_index(as->d)] = as->origin;
	}
}

bool ld_valid_domain_text(const char *s)
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
	if (!*d || !ld_valid_domain_text(d))
		return false;
	p->d = d;
	return true;
}

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
			ld_err(L, n, "'%s' is not allowed in %s (it belongs in %s)",
			       n->name, cfg_scope_name(scope),
			       cfg_scope_name(elsewhere->scope));
		else
			unknown_directive(L, n, scope);
		return;
	}
	if (d->handler == H_GUIDE_MISNOMER) {
		ld_warn(L, n, "'%s' is %s; coremta ignores it", n->name, d->help);
		return;
	}
	if (d->type == CT_ACCEPTED) {
		ld_warn(L, n, "'%s' is accepted but not acted on", n->name);
		return;
	}
	const struct cfg_directive *canon = cfg_directive_canonical(d);
	struct assign as = { .d = canon, .origin = ld_origin_of(n) };
	size_t errors_before = L->diags->errors;
	bool keep;

	if (canon->type == CT_SPECIAL)
		keep = ld_parse_special(L, n, canon, scope_obj, &as);
	else
		keep = parse_value(L, n, canon, &as.v);
	if (keep && al)
		assign_push(L, al, &as);
	/* A value that is wrong gets its error, not also this warning. */
	if (!(canon->flags & DF_ACTED) && L->diags->errors == errors_before)
		ld_warn(L, n, "'%s' is accepted but not acted on", n->name);
}

static void nested_block_error(struct loader *L, const struct cfg_node *n,
			       const char *parent)
{
	ld_err(L, n, "<%s> is not allowed inside <%s>", n->name, parent);
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
		ld_err(L, n, "<domain> needs a pattern (*, name, *.name, [*.]name or [ip/len])");
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
			.origin = ld_origin_of(n),
		};
		if (!parse_dpat(L, n->args[i].text, &b.pat)) {
			ld_err(L, n, "<domain>: invalid domain pattern '%s' (expected *, name, *.name, [*.]name or [ip/len])",
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
		ld_err(L, n, "<%s> needs exactly one %s", n->name, what);
		return NULL;
	}
	return arena_strdup(L->a, n->args[0].text);
}

static void walk_source(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];

	if (n->nargs == 0) {
		ld_err(L, n, "<source> needs an IP, CIDR, 0/0 or a name such as {auth}");
		return;
	}
	struct assign_list al = { 0 };
	walk_directives(L, n, SCOPE_SOURCE, &al, NULL);
	unsigned seq = L->seq++;
	for (size_t i = 0; i < n->nargs; i++) {
		const char *t = n->args[i].text;
		struct sblock sb = { .seq = seq, .assigns = al, .origin = ld_origin_of(n) };
		if (strcmp(t, "*") == 0)
			t = "0/0";
		if (cfg_parse_cidr(t, &sb.net, e, sizeof(e)) == 0) {
			char canon[64];
			cfg_cidr_format(&sb.net, canon, sizeof(canon));
			sb.name = sb.net.prefix == 0 ? "0/0" : arena_strdup(L->a, canon);
		} else if (isdigit((unsigned char)t[0]) || strchr(t, ':')) {
			ld_err(L, n, "<source>: %s, got '%s'", e, t);
			continue;
		} else {
			sb.named = true;
			sb.name = arena_strdup(L->a, t);
		}
		*PUSH(L, c->sblocks, c->n_sblocks, c->cap_sblocks) = sb;
	}
}

struct vmta_rec *ld_find_vmta_rec(struct cfg *c, const char *name)
{
	for (size_t i = 0; i < c->n_vmtas; i++)
		if (strcmp(c->vmtas[i]->v.name, name) == 0)
			return c->vmtas[i];
	return NULL;
}

struct pool_rec *ld_find_pool_rec(struct cfg *c, const char *name)
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
	struct vmta_rec *v = ld_find_vmta_rec(c, name);
	if (v) {
		ld_err(L, n, "virtual-mta '%s' is already defined at %s:%d", name,
		       v->v.origin.file, v->v.origin.line);
		return;
	}
	v = arena_alloc(L->a, sizeof(*v));
	v->v.name = name;
	v->v.origin = ld_origin_of(n);
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
	if (ld_find_pool_rec(c, name)) {
		ld_err(L, n, "virtual-mta-pool '%s' is defined twice", name);
		return;
	}
	struct pool_rec *p = arena_alloc(L->a, sizeof(*p));
	p->p.name = name;
	p->p.origin = ld_origin_of(n);
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

	ld_apply_defaults(L, scope, obj, NULL);
	walk_directives(L, n, scope, &al, obj);
	ld_apply_list(L, obj, NULL, &al);
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
	p->origin = ld_origin_of(n);
	ld_apply_defaults(L, SCOPE_PROCESSOR, p, NULL);
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
	ld_apply_list(L, p, NULL, &al);
}

/* walk_address_list - a top-level <address-list NAME> */
static void walk_address_list(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;

	if (n->nargs == 0) {
		/* PowerMTA only reads one inside a processor; copies of such
		 * configs carry stray ones, so this is no reason to refuse */
		ld_warn(L, n, "<address-list> at top level without a name is used by nothing "
			"(suppression-lists names one); its contents are ignored");
		return;
	}
	const char *name = block_name(L, n, "list name");
	if (!name)
		return;
	const struct cfg_address_list *dup = cfg_address_list_find(c, name);
	if (dup) {
		ld_err(L, n, "address-list '%s' is already defined at %s:%d", name,
		       dup->origin.file, dup->origin.line);
		return;
	}
	struct cfg_address_list *al = PUSH(L, c->alists, c->n_alists, c->cap_alists);
	memset(al, 0, sizeof(*al));
	al->name = name;
	al->origin = ld_origin_of(n);
	for (const struct cfg_node *e = n->children; e; e = e->next)
		if (e->kind == CFG_NODE_BLOCK)
			nested_block_error(L, e, n->name);
		else
			directive(L, e, SCOPE_ADDRESS_LIST, NULL, &al->set);
}

static void walk_shard(struct loader *L, const struct cfg_node *n)
{
	struct cfg *c = L->cfg;
	char e[ERRLEN];
	uint64_t idx;

	if (n->nargs != 1 ||
	    cfg_parse_uint(n->args[0].text, 0, 1023, &idx, e, sizeof(e)) < 0) {
		ld_err(L, n, "<shard> needs a shard number from 0 to 1023");
		return;
	}
	for (size_t i = 0; i < c->n_shards; i++)
		if (c->shards[i].index == idx) {
			ld_err(L, n, "<shard %llu> is already defined at %s:%d",
			       (unsigned long long)idx, c->shards[i].origin.file,
			       c->shards[i].origin.line);
			return;
		}
	struct cfg_shard s = { .index = (uint32_t)idx, .cpu = -1,
			       .origin = ld_origin_of(n) };
	size_t cap = 0;
	for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
		if (ch->kind == CFG_NODE_BLOCK) {
			nested_block_error(L, ch, n->name);
			continue;
		}
		directive(L, ch, SCOPE_SHARD, NULL, &s);
		if (strcmp(ch->name, "domain") != 0)
			continue;
		struct cfg_strlist l = ld_split_list(L, ch);
		if (l.count == 0)
			ld_err(L, ch, "'domain' needs one or more domain patterns");
		for (size_t i = 0; i < l.count; i++) {
			size_t nexp = 0;
			const char **exp = NULL;
			if (cfg_syntax_expand(L->tree, L->a, l.items[i], &exp, &nexp) < 0) {
				ld_err(L, ch, "'domain': undefined or looping macro in '%s'",
				       l.items[i]);
				continue;
			}
			for (size_t k = 0; k < nexp; k++) {
				struct dpat p;
				if (!parse_dpat(L, exp[k], &p) || p.kind == DP_ALL) {
					ld_err(L, ch, "'domain': invalid domain pattern '%s' (expected name, *.name or [*.]name)",
					       exp[k]);
					continue;
				}
				s.domains.items = ld_grow(L->a, s.domains.items,
							  s.domains.count, &cap,
							  sizeof(char *));
				s.domains.items[s.domains.count++] = exp[k];
			}
		}
	}
	*PUSH(L, c->shards, c->n_shards, c->cap_shards) = s;
}

void ld_walk(struct loader *L, const struct cfg_tree *tree)
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
				ld_err(L, n, "<acct-file> needs a file path or |command");
				c->n_accts--;
				continue;
			}
			a->is_pipe = path[0] == '|';
			a->path = arena_strdup(L->a, a->is_pipe ? path + 1 : path);
			a->origin = ld_origin_of(n);
			walk_simple(L, n, SCOPE_ACCT, a);
		} else if (strcmp(b, "rejectlog-file") == 0) {
			struct cfg_rejectlog *r = PUSH(L, c->rejectlogs, c->n_rejectlogs,
						       c->cap_rejectlogs);
			memset(r, 0, sizeof(*r));
			r->path = block_name(L, n, "file path");
			r->origin = ld_origin_of(n);
			walk_simple(L, n, SCOPE_REJECTLOG, r);
		} else if (strcmp(b, "spool") == 0) {
			struct cfg_spool *s = PUSH(L, c->spools, c->n_spools, c->cap_spools);
			memset(s, 0, sizeof(*s));
			s->dir = block_name(L, n, "directory");
			s->origin = ld_origin_of(n);
			walk_simple(L, n, SCOPE_SPOOL, s);
		} else if (strcmp(b, "smtp-user") == 0) {
			struct cfg_smtp_user *u = PUSH(L, c->users, c->n_users, c->cap_users);
			memset(u, 0, sizeof(*u));
			u->name = block_name(L, n, "user name");
			u->origin = ld_origin_of(n);
			walk_simple(L, n, SCOPE_SMTP_USER, u);
		} else if (strcmp(b, "source-group") == 0) {
			const char *name = block_name(L, n, "group name");
			if (!name)
				continue;
			if (cfg_source_group_find(c, name)) {
				ld_err(L, n, "source-group '%s' is defined twice", name);
				continue;
			}
			struct cfg_source_group *g = PUSH(L, c->groups, c->n_groups,
							  c->cap_groups);
			memset(g, 0, sizeof(*g));
			g->name = name;
			g->origin = ld_origin_of(n);
			walk_simple(L, n, SCOPE_SOURCE_GROUP, g);
		} else if (strcmp(b, "smtp-pattern-list") == 0) {
			const char *name = block_name(L, n, "list name");
			if (!name)
				continue;
			if (cfg_smtp_pattern_list_find(c, name)) {
				ld_err(L, n, "smtp-pattern-list '%s' is defined twice", name);
				continue;
			}
			struct cfg_smtp_pattern_list *pl = PUSH(L, c->spls, c->n_spls, c->cap_spls);
			memset(pl, 0, sizeof(*pl));
			pl->name = name;
			pl->origin = ld_origin_of(n);
			walk_directives(L, n, SCOPE_SMTP_PATTERNS, NULL, pl);
		} else if (strcmp(b, "bounce-category-patterns") == 0) {
			for (const struct cfg_node *ch = n->children; ch; ch = ch->next) {
				if (ch->kind == CFG_NODE_BLOCK) {
					nested_block_error(L, ch, n->name);
				} else if (ch->name_orig && ch->name_orig[0] == '/') {
					/* PowerMTA's form: /regex/ category */
					if (ch->nwords != 1) {
						ld_err(L, ch, "bounce pattern expects /regex/ CATEGORY");
						continue;
					}
					struct cfg_bounce_rule r = {
						.re = ld_compile_regex(L, ch, "bounce pattern", ch->name_orig),
						.category = arena_strdup(L->a, ch->words[0]),
						.action = CFG_BOUNCE_CLASSIFY,
						.origin = ld_origin_of(ch),
					};
					if (r.re)
						*PUSH(L, c->bounce_rules, c->n_bounce_rules,
						      c->cap_bounce_rules) = r;
					/* the form is the `regex` row's second spelling */
					if (!(cfg_directive_find("regex", SCOPE_BOUNCE_PATTERNS)->flags &
					      DF_ACTED))
						ld_warn(L, ch, "bounce pattern '%s' is accepted but not acted on",
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
					ld_err(L, ch, "'%s' is not allowed in <domain-key-list> (only domain-key)",
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
			ld_warn(L, n, "<%s> is accepted but not acted on; its contents %s",
				b, strcmp(b, "pattern-list") == 0 ? "are checked, not used"
							      : "are ignored");
	}
}
