/*
 * config/model_int.h - PRIVATE to config/: the model's internals that the
 * loader's files share (load.c walks and stores, special.c parses the
 * special directives, resolve.c resolves and precomputes, lookup.c and
 * show.c read the result, model.c owns its life): struct cfg, the loader
 * state and the records between the passes.  config.h stays the one
 * public header; model.h is what lint.c may see.
 *
 * Functions shared between these files carry the ld_ prefix ("loader"),
 * which keeps them clear of libc's err() and warn() and other modules.
 * Threads: the loader's alone while struct loader exists; afterwards the
 * model is immutable and any thread holding a reference may read it.
 */
#ifndef COREMTA_CONFIG_MODEL_INT_H
#define COREMTA_CONFIG_MODEL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model.h"
#include "config/syntax.h"
#include "config/values.h"
#include "util/util.h"

struct dkim_key;

/* Room for one error text from values.c or dkim.c. */
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

/* load.c: helpers every pass uses */

/* ld_grow - make room for one more element in an arena-backed array. */
void *ld_grow(struct arena *a, void *items, size_t count, size_t *cap,
	      size_t elsize);

/* PUSH - append to an arena array: a pointer to the new (last) element. */
#define PUSH(L, arr, n, cap)                                                 \
	((arr) = ld_grow((L)->a, (arr), (n), &(cap), sizeof(*(arr))), &(arr)[(n)++])

/* ld_err, ld_warn - a diagnostic at n's file:line (the file's when n is NULL). */
void ld_err(struct loader *L, const struct cfg_node *n, const char *fmt,
	    ...) UTIL_PRINTF(3, 4);
void ld_warn(struct loader *L, const struct cfg_node *n, const char *fmt,
	     ...) UTIL_PRINTF(3, 4);

struct cfg_origin ld_origin_of(const struct cfg_node *n);
/* ld_keep_regex - the cfg frees re with itself; returns re. */
struct cfg_regex *ld_keep_regex(struct loader *L, struct cfg_regex *re);
/* ld_compile_regex - compile a config regex, reporting errors at n. */
const struct cfg_regex *ld_compile_regex(struct loader *L,
					 const struct cfg_node *n,
					 const char *what, const char *text);
/* ld_joined_words - n's words from `from` on, joined by single blanks. */
const char *ld_joined_words(struct loader *L, const struct cfg_node *n,
			    size_t from);
/* ld_want_one_word - true if n has exactly one word; else reports it. */
bool ld_want_one_word(struct loader *L, const struct cfg_node *n,
		      const char *what);
/* ld_split_list - n's words split at commas, empty items dropped. */
struct cfg_strlist ld_split_list(struct loader *L, const struct cfg_node *n);
bool ld_valid_domain_text(const char *s);

/* ld_apply_defaults - fill a settings struct from the table's defaults. */
void ld_apply_defaults(struct loader *L, enum cfg_scope scope, void *base,
		       struct cfg_origin *origin);
/* ld_apply_list - store a block's assignments, recording their origins. */
void ld_apply_list(struct loader *L, void *base, struct cfg_origin *origin,
		   const struct assign_list *al);
struct vmta_rec *ld_find_vmta_rec(struct cfg *c, const char *name);
struct pool_rec *ld_find_pool_rec(struct cfg *c, const char *name);

/* ld_walk - the first pass: every block and directive of the tree. */
void ld_walk(struct loader *L, const struct cfg_tree *tree);

/* special.c */

/*
 * ld_parse_special - a CT_SPECIAL directive, by its handler.  true when
 * as holds a value to record as an assignment.
 */
bool ld_parse_special(struct loader *L, const struct cfg_node *n,
		      const struct cfg_directive *d, void *scope_obj,
		      struct assign *as);

/* resolve.c */

/* ld_cidr_within - every address of inner is in outer. */
bool ld_cidr_within(const struct cfg_cidr *inner, const struct cfg_cidr *outer);
/* ld_resolve - the second pass, after ld_walk: names, checks, tables. */
void ld_resolve(struct loader *L);

#endif
