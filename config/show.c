/*
 * config/show.c - the reports of `coremta check`: --show (a queue's
 * effective settings), --source (a client's) with where each value came
 * from, and --reference (the directive table as Markdown for tuning.md).
 *
 * Any thread holding a reference; they write only to the FILE given.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model_int.h"
#include "config/values.h"

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
