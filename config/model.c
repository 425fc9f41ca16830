/*
 * config/model.c - the life of a configuration: load a file or a string
 * (the tree walk, then resolution), share it by reference count, free
 * it with its last holder, and hand it to running threads in a mailbox.
 *
 * cfg_load_* run on one thread (the loader's).  cfg_ref, cfg_unref and
 * the mailbox calls may be made by any thread holding a reference; the
 * mailbox is the one place two threads meet over a configuration.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model_int.h"
#include "config/values.h"
#include "util/dkim.h"

static int load_tree(struct cfg *c, const struct cfg_tree *tree,
		     const struct cfg_load_opts *opts, struct diag_list *diags)
{
	static const struct cfg_load_opts none;
	struct loader L = { .cfg = c, .a = c->arena, .diags = diags,
			    .opts = opts ? opts : &none, .tree = tree };
	size_t errors_before = diags->errors;

	ld_walk(&L, tree);
	ld_resolve(&L);
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
