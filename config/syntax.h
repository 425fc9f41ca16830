/*
 * config/syntax.h - PRIVATE to config/: turns PowerMTA-style config text
 * into a tree of located nodes.  It knows the file format, not the
 * directives: lines, comments, quoting, /regex/ words, <block arg> ...
 * </block> nesting, `include FILE` (globs, relative paths, loop detection)
 * and `domain-macro NAME a,b,c` expansion in block arguments.
 *
 * Single-threaded (the loader's thread).  All nodes and strings live in
 * the arena passed in; nothing is freed separately.  Problems go to the
 * diag list as "file:line: error: ..." and the parse returns -EINVAL if
 * any error was added; the tree is then only good for finding more
 * errors (see `complete`), never for a configuration.
 */
#ifndef COREMTA_CONFIG_SYNTAX_H
#define COREMTA_CONFIG_SYNTAX_H

#include <stdbool.h>
#include <stddef.h>

#include "util/util.h"

enum cfg_node_kind {
	CFG_NODE_DIRECTIVE,	/* name value...           */
	CFG_NODE_BLOCK,		/* <name arg> children </name> */
};

/* One argument of a block after macro expansion. */
struct cfg_block_arg {
	const char *text;	/* e.g. "yahoo.com"; original case kept */
	bool from_macro;	/* produced by expanding a $MACRO */
};

struct cfg_node {
	enum cfg_node_kind kind;
	const char *name;	/* lower-cased directive or block tag */
	const char *name_orig;	/* the first word as written (a /regex/ in
				 * <bounce-category-patterns> keeps its case) */
	const char *file;	/* path as given/resolved; arena-owned */
	int line;		/* 1-based */

	/*
	 * Directive: the value as written (comment and outer blanks removed,
	 * quotes kept) and split into words: quotes removed with \" and \\
	 * unescaped, a /regex/ word kept whole with its slashes.  A quoted
	 * empty string "" is a word of length 0 (it clears inherited values).
	 */
	const char *raw;
	const char **words;
	size_t nwords;

	/*
	 * Block: the raw text between the tag name and '>' (trimmed; may be
	 * empty), and the argument list: raw split on commas/blanks; in
	 * <domain> blocks each $NAME or prefix.$NAME is expanded through the
	 * domain-macro definitions (elsewhere a "$" is literal).
	 */
	const char *block_raw;
	struct cfg_block_arg *args;
	size_t nargs;
	struct cfg_node *children;	/* first child, in file order */

	struct cfg_node *next;		/* next sibling, in file order */
};

struct cfg_macro;

struct cfg_tree {
	struct cfg_node *root;	/* first top-level node */
	/*
	 * Every line was read (no hard limit stopped the parse): after
	 * syntax errors the tree still holds every line that parsed, so the
	 * model can report its own errors in the same pass.
	 */
	bool complete;
	const struct cfg_macro *macros;	/* domain-macro definitions */
};

/*
 * Parse a file; `include` directives are replaced by the nodes of the
 * included files, in place (includes are legal anywhere; the model layer
 * rejects them in blocks where PowerMTA does not allow them, seeing
 * the CFG_NODE_DIRECTIVE "include" is gone - so syntax checks that rule:
 * include is allowed at top level and inside source, domain, virtual-mta,
 * virtual-mta-pool and smtp-pattern-list).  domain-macro directives stay
 * in the tree (the model may list them) and are also applied.
 */
int cfg_syntax_parse_file(struct arena *a, const char *path,
			  struct cfg_tree *out, struct diag_list *diags);

/*
 * Same for text held in memory (the embedded default config, fuzzing).
 * name is used as the file name in locations; includes resolve relative
 * to base_dir (NULL = current directory).
 */
int cfg_syntax_parse_string(struct arena *a, const char *name,
			    const char *text, size_t len, const char *base_dir,
			    struct cfg_tree *out, struct diag_list *diags);

/*
 * cfg_syntax_expand - expand $MACRO references in one word through the
 * domain-macro definitions of a parsed tree (for directive values such
 * as <shard>'s `domain` lines).  *out is an arena array of *n words.
 * Returns -EINVAL for an undefined or looping macro.
 */
int cfg_syntax_expand(const struct cfg_tree *tree, struct arena *a,
		      const char *word, const char ***out, size_t *n);

#endif
