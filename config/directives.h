/*
 * config/directives.h - PRIVATE to config/: the one table that declares
 * every directive coremta knows (name, scope, type, default, field,
 * bounds, unit, help).  The loader, the defaults, `coremta check --show`
 * and the directive reference in tuning.md all read it.
 *
 * The table is constant data; any thread may read it.
 */
#ifndef COREMTA_CONFIG_DIRECTIVES_H
#define COREMTA_CONFIG_DIRECTIVES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Which settings struct a directive's field lives in (= where it may be). */
enum cfg_scope {
	SCOPE_GLOBAL,		/* struct cfg_global, top level */
	SCOPE_SOURCE,		/* struct cfg_source, <source> */
	SCOPE_DOMAIN,		/* struct cfg_queue, <domain> */
	SCOPE_VMTA,		/* struct cfg_vmta, <virtual-mta> */
	SCOPE_POOL,		/* <virtual-mta-pool> */
	SCOPE_ACCT,		/* struct cfg_acct, <acct-file> */
	SCOPE_REJECTLOG,	/* struct cfg_rejectlog, <rejectlog-file> */
	SCOPE_SPOOL,		/* struct cfg_spool, <spool> */
	SCOPE_SMTP_USER,	/* struct cfg_smtp_user, <smtp-user> */
	SCOPE_SMTP_PATTERNS,	/* <smtp-pattern-list> */
	SCOPE_BOUNCE_PATTERNS,	/* <bounce-category-patterns> */
	SCOPE_PATTERN_LIST,	/* <pattern-list> */
	SCOPE_SHARD,		/* struct cfg_shard, <shard> */
	SCOPE_SOURCE_GROUP,	/* struct cfg_source_group, <source-group> */
	SCOPE_PROCESSOR,	/* struct cfg_processor, <bounce-processor> and
				   <feedback-loop-processor> */
	SCOPE_ADDRESS_LIST,	/* a processor's <address-list> */
	SCOPE_MX_ROLLUP,	/* <mx-rollup-list> */
	SCOPE_COUNT
};

enum cfg_type {
	CT_BOOL,
	CT_UINT,		/* uint32_t; "unlimited" allowed with DF_UNLIMITED_0 */
	CT_INTERVAL,		/* uint64_t seconds */
	CT_INTERVAL_NEVER,	/* uint64_t seconds; "never" = 0 */
	CT_SCHEDULE,		/* struct cfg_schedule */
	CT_DAILY,		/* struct cfg_daily */
	CT_SIZE,		/* uint64_t bytes; "unlimited" = 0 */
	CT_RATE,		/* struct cfg_rate */
	CT_STRING,		/* const char *; "" clears */
	CT_STRLIST,		/* struct cfg_strlist; repeatable, accumulates */
	CT_ENUM,		/* int, one of the names in choices */
	CT_SPECIAL,		/* handled by the loader (handler id below) */
	CT_ACCEPTED,		/* PowerMTA directive coremta does not use */
};

enum cfg_handler {
	H_NONE,
	H_INCLUDE,		/* expanded by the syntax layer */
	H_DOMAIN_MACRO,		/* expanded by the syntax layer */
	H_LISTENER,
	H_HTTP_ACCESS,
	H_SOURCE_HOST,
	H_SOURCE_IP,
	H_DISK_QUEUE,
	H_SHARDS,
	H_POOL_MEMBER,
	H_SMTP_PATTERN_REPLY,
	H_BOUNCE_REGEX,		/* regex "..." action X | category */
	H_PATTERN_RULE,
	H_RECORDS,
	H_RECORD_FIELDS,
	H_SMTP_PATTERN_REF,
	H_SHARD_CPU,
	H_SHARD_DOMAIN,
	H_GUIDE_MISNOMER,	/* a guide's name for no real directive: explain */
	H_DOMAIN_KEY,		/* SELECTOR,DOMAIN,KEYFILE: loads the key */
	H_CONN_LIMIT,		/* ip-/mx-connection-limit X N */
	H_BOUNCE_CLASS,		/* bounce-category-class CATEGORY hard|soft */
	H_ADDRESS_ENTRY,	/* <address-list>: domain NAME | address ADDR|/re/ */
	H_MX_ROLLUP,		/* <mx-rollup-list>: mx PATTERN NAME [rollup-by-ip] */
	H_COUNT
};

enum cfg_directive_flags {
	DF_ACTED = 1u << 0,		/* coremta acts on it today */
	DF_UNLIMITED_0 = 1u << 1,	/* CT_UINT: "unlimited" means 0 */
	DF_ALIAS = 1u << 2,		/* another name for the row in alias_of */
	DF_HOSTNAME = 1u << 3,		/* CT_STRING: a domain name or [literal] */
	DF_DKIM_IDENTITY = 1u << 4,	/* CT_STRING: sender-or-from|from|sender|[user]@domain */
	DF_HEADER_NAMES = 1u << 5,	/* CT_STRLIST: header field names */
};

struct cfg_directive {
	const char *name;
	enum cfg_scope scope;
	enum cfg_type type;
	const char *def;		/* default in config syntax, or NULL */
	size_t offset;			/* into the scope's struct */
	const char *field;		/* that member's name, for the audit test */
	uint64_t min, max;		/* CT_UINT bounds */
	const char *const *choices;	/* CT_ENUM names, NULL-terminated */
	enum cfg_handler handler;
	unsigned flags;
	const char *alias_of;		/* DF_ALIAS: the canonical name */
	const char *unit;		/* for the reference: "connections" */
	const char *help;		/* one line */
};

extern const struct cfg_directive cfg_directives[];
extern const size_t cfg_directive_count;

/* A block tag coremta knows: <name ...> ... </name>. */
struct cfg_block_def {
	const char *name;
	bool acted;			/* its contents are acted on today */
	const char *help;
};

extern const struct cfg_block_def cfg_blocks[];
extern const size_t cfg_block_count;

/* cfg_block_find - the row for a block tag, or NULL. */
const struct cfg_block_def *cfg_block_find(const char *name);

/* A record type of `records` in <acct-file> or <rejectlog-file>. */
struct cfg_record_def {
	const char *name, *long_name;
	unsigned bit;			/* CFG_REC_* */
	bool rejectlog;			/* a <rejectlog-file> type */
	bool acted;			/* records of this type are written */
};

extern const struct cfg_record_def cfg_record_types[];
extern const size_t cfg_record_type_count;

/*
 * cfg_directive_suggest - the known name closest to a misspelt one
 * (preferring scope), or NULL when none is close enough to be a typo.
 */
const char *cfg_directive_suggest(const char *name, enum cfg_scope scope);

/* cfg_directive_find - the row for name in scope, or NULL. */
const struct cfg_directive *cfg_directive_find(const char *name,
					       enum cfg_scope scope);
/* cfg_directive_in_any_scope - the first row with that name, or NULL. */
const struct cfg_directive *cfg_directive_in_any_scope(const char *name);
/* cfg_directive_canonical - the row an alias stands for (itself if none). */
const struct cfg_directive *
cfg_directive_canonical(const struct cfg_directive *d);
const char *cfg_scope_name(enum cfg_scope scope);
size_t cfg_directive_index(const struct cfg_directive *d);

#endif
