/*
 * config/syntax.c - the config file format (see syntax.h): lines,
 * comments, quoting, /regex/ words, <block> nesting, `include` and
 * `domain-macro` expansion of block arguments.
 *
 * Owns nothing past one parse: nodes and strings go to the caller's
 * arena; temporaries (file buffers, glob results, scratch arrays) are
 * malloc'd and freed before the parse returns.  Called on the loader's
 * thread; there is no static mutable state, so separate parses may run
 * on separate threads.
 *
 * The input may be hostile (fuzzing, a config upload), so every
 * resource has a cap: line length, file size, block and include depth,
 * node count, macro expansion size and the number of errors reported.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

#include "config/syntax.h"

/* Caps: the input may be hostile, and a limit must fail, not exhaust. */
#define MAX_LINE		(64 * 1024)
#define MAX_FILE		(64 * 1024 * 1024)
#define MAX_BLOCK_DEPTH		16
#define MAX_INCLUDE_DEPTH	16
#define MAX_MACRO_DEPTH		16	/* $a naming $b naming ... */
#define MAX_NODES		1000000
#define MAX_ERRORS		100
#define MAX_EXPANSION		65536	/* values per expansion */
#define MAX_EXPANDED_VALUES	1000000	/* values from all of them */
#define MAX_EXPANDED_BYTES	(16 * 1024 * 1024)

/* One word of a line: where it was written and what it means. */
struct word {
	char *text;		/* arena; quotes removed */
	size_t start, end;	/* offsets in the line as written */
	bool regex;
};

/* A file being read; the chain up to the root detects include loops. */
struct source {
	const char *path;	/* arena; locations name it */
	const char *dir;	/* its includes resolve here; NULL = cwd */
	bool has_id;		/* text given in memory has no inode */
	dev_t dev;
	ino_t ino;
	int depth;		/* include depth, root = 0 */
	const struct source *up;
};

/* Where the next node of a list goes. */
struct sink {
	struct cfg_node **tail;
};

struct open_block {
	struct cfg_node *node;
	struct sink sink;	/* its children */
};

/* Per-file state: a block must close in the file that opened it. */
struct file_state {
	const struct source *src;
	struct sink *outer;		/* the includer's list or the root */
	const struct cfg_node *parent;	/* block holding the include */
	int parent_depth;
	int line;
	int top;
	struct open_block stack[MAX_BLOCK_DEPTH];
};

enum macro_state {
	MACRO_NEW,
	MACRO_BUSY,		/* being resolved: seen again, it loops */
	MACRO_DONE,
	MACRO_FAILED,		/* already reported */
};

struct macro {
	const char *name;
	const struct cfg_node *def;
	size_t order;		/* definition order: the first one wins */
	enum macro_state state;
	const char **vals;	/* fully expanded, arena */
	size_t nvals;
};

/* The tree's domain-macro table, sorted by name, every entry resolved. */
struct cfg_macro {
	struct macro *items;	/* arena */
	size_t count;
};

/* A growable array of strings, malloc'd; the strings are in the arena. */
struct strvec {
	const char **v;
	size_t n, cap;
};

struct parser {
	struct arena *a;
	struct diag_list *diags;
	size_t errors;		/* added by this parse */
	size_t nodes;
	bool stop;		/* a hard limit was hit: unwind quietly */
	struct word *words;	/* scratch for the current line */
	size_t nwords, capwords;
	struct strbuf sb;	/* scratch */
	struct macro *macros;	/* sorted by name once collected */
	size_t nmacros, capmacros;
	struct macro **busy;	/* resolution stack, for loop chains */
	size_t nbusy;
	size_t expanded_values;
	size_t expanded_bytes;
};

static const char *const include_blocks[] = {
	"source", "domain", "virtual-mta", "virtual-mta-pool",
	"smtp-pattern-list",
};

static void parse_text(struct parser *p, struct file_state *fs,
		       const char *text, size_t len);

/*
 * perr - add an error (only count it when there is no diag list, as for
 * cfg_syntax_expand); past MAX_ERRORS a broken input only adds noise.
 */
UTIL_PRINTF(4, 5)
static void perr(struct parser *p, const char *file, int line,
		 const char *fmt, ...)
{
	va_list ap;

	if (!p->diags) {
		p->errors++;
		return;
	}
	if (p->stop)
		return;
	va_start(ap, fmt);
	diag_vadd(p->diags, DIAG_ERROR, file, line, fmt, ap);
	va_end(ap);
	if (++p->errors >= MAX_ERRORS) {
		diag_add(p->diags, DIAG_ERROR, file, line,
			 "too many errors; giving up");
		p->errors++;
		p->stop = true;
	}
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_regex_flag(char c)
{
	return c == 'i' || c == 'm' || c == 's' || c == 'x';
}

static bool is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static bool is_tag_char(char c)
{
	return is_name_char(c) || c == '.';
}

static bool is_item_sep(char c)
{
	return c == ',' || is_blank(c);
}

/*
 * Remembers the last closing-slash search of a line.  Whether a '/'
 * closes a regex does not depend on where the regex began (the opening
 * '/' cannot belong to the backslash run escaping it), so a later word
 * reuses the answer and a line of many '/' words stays linear.
 */
struct regex_scan {
	size_t slash;		/* closing '/' last found, or SIZE_MAX */
	size_t end;		/* just past its flags */
	bool none;		/* none after the last search start */
};

/* regex_end - end of the /regex/ word opening at s[k], or 0 if plain */
static size_t regex_end(struct regex_scan *rs, const char *s, size_t n,
			size_t k)
{
	if (rs->none)
		return 0;
	if (rs->slash != SIZE_MAX && rs->slash > k)
		return rs->end;
	for (size_t i = k + 1; i < n; i++) {
		if (s[i] == '\\') {
			i++;	/* kept; an escaped '/' never closes */
			continue;
		}
		if (s[i] != '/')
			continue;
		size_t j = i + 1;
		while (j < n && is_regex_flag(s[j]))
			j++;
		if (j == n || is_blank(s[j])) {
			rs->slash = i;
			rs->end = j;
			return j;
		}
	}
	rs->none = true;
	return 0;
}

static void push_word(struct parser *p, struct word w)
{
	if (p->nwords == p->capwords) {
		p->capwords = p->capwords ? p->capwords * 2 : 16;
		p->words = xrealloc(p->words, p->capwords * sizeof(*p->words));
	}
	p->words[p->nwords++] = w;
}

/*
 * lex_quoted - append the "..." segment at s[*i] to sb, unescaping \" and
 * \\ (any other backslash stays, as regexes need it); false if it does
 * not end on this line.
 */
static bool lex_quoted(struct strbuf *sb, const char *s, size_t n, size_t *i)
{
	for (size_t k = *i + 1; k < n; k++) {
		if (s[k] == '"') {
			*i = k + 1;
			return true;
		}
		if (s[k] == '\\' && k + 1 < n &&
		    (s[k + 1] == '"' || s[k + 1] == '\\'))
			k++;
		sb_addc(sb, s[k]);
	}
	return false;
}

/*
 * lex_line - split the line s[0..n) (no newline, no NUL) into p->words.
 * *content_end is where the text stops, before trailing blanks and any
 * comment.  Returns 0, or -1 after reporting an unterminated quote.
 */
static int lex_line(struct parser *p, const char *file, int line,
		    const char *s, size_t n, size_t *content_end)
{
	struct regex_scan rs = { .slash = SIZE_MAX };
	size_t i = 0;

	p->nwords = 0;
	*content_end = 0;
	for (;;) {
		while (i < n && is_blank(s[i]))
			i++;
		if (i == n || s[i] == '#')
			break;

		struct word w = { .start = i };
		size_t e = s[i] == '/' ? regex_end(&rs, s, n, i) : 0;

		if (e) {
			w.text = arena_strndup(p->a, s + i, e - i);
			w.regex = true;
			i = e;
		} else {
			sb_reset(&p->sb);
			while (i < n && !is_blank(s[i]) && s[i] != '#') {
				if (s[i] != '"') {
					sb_addc(&p->sb, s[i++]);
				} else if (!lex_quoted(&p->sb, s, n, &i)) {
					perr(p, file, line,
					     "unterminated quoted string");
					return -1;
				}
			}
			w.text = arena_strndup(p->a, sb_str(&p->sb), p->sb.len);
		}
		w.end = i;
		*content_end = i;
		push_word(p, w);
	}
	return 0;
}

static struct cfg_node *new_node(struct parser *p, struct file_state *fs,
				 enum cfg_node_kind kind)
{
	if (p->nodes >= MAX_NODES) {
		perr(p, fs->src->path, fs->line,
		     "too many config nodes (limit %d)", MAX_NODES);
		p->stop = true;
		return NULL;
	}
	p->nodes++;

	struct cfg_node *n = arena_alloc(p->a, sizeof(*n));

	n->kind = kind;
	n->file = fs->src->path;
	n->line = fs->line;
	return n;
}

static struct sink *current_sink(struct file_state *fs)
{
	return fs->top ? &fs->stack[fs->top - 1].sink : fs->outer;
}

static const struct cfg_node *current_block(const struct file_state *fs)
{
	return fs->top ? fs->stack[fs->top - 1].node : fs->parent;
}

static void sink_add(struct sink *sk, struct cfg_node *n)
{
	*sk->tail = n;
	sk->tail = &n->next;
}

static const char *trim(struct parser *p, const char *s, size_t n)
{
	while (n && is_blank(*s)) {
		s++;
		n--;
	}
	while (n && is_blank(s[n - 1]))
		n--;
	return arena_strndup(p->a, s, n);
}

static void close_block(struct parser *p, struct file_state *fs,
			const char *name)
{
	const char *file = fs->src->path;

	if (fs->top == 0) {
		const struct cfg_node *up = fs->parent;

		if (up && strcmp(up->name, name) == 0)
			perr(p, file, fs->line,
			     "</%s> closes <%s> opened in another file (%s:%d); a block must close in the file that opens it",
			     name, name, up->file, up->line);
		else
			perr(p, file, fs->line, "</%s> without matching <%s>",
			     name, name);
		return;
	}

	const struct cfg_node *open = fs->stack[fs->top - 1].node;

	if (strcmp(open->name, name) == 0) {
		fs->top--;
		return;
	}
	perr(p, file, fs->line, "</%s> closes <%s> opened at %s:%d", name,
	     open->name, open->file, open->line);
	/*
	 * Resynchronise on an outer block of that name if there is one
	 * (an inner close tag was forgotten); otherwise the name is most
	 * likely a typo and the tag still closes the innermost block.
	 */
	for (int k = fs->top - 2; k >= 0; k--) {
		if (strcmp(fs->stack[k].node->name, name) == 0) {
			fs->top = k;
			return;
		}
	}
	fs->top--;
}

/* parse_tag - c[0..m) is "<name arg>" or "</name>", comment removed */
static void parse_tag(struct parser *p, struct file_state *fs, const char *c,
		      size_t m)
{
	const char *file = fs->src->path;
	int line = fs->line;

	if (m < 2 || c[m - 1] != '>') {
		if (memchr(c, '>', m)) {
			perr(p, file, line, "unexpected text after '>' in tag");
			return;
		}
		perr(p, file, line, "malformed tag: missing '>'");
		if (m < 2)
			return;
		/* Read on as if it were there, so the errors after this
		 * line are found in the same pass, not one per run. */
		char *fixed = arena_alloc(p->a, m + 2);
		memcpy(fixed, c, m);
		fixed[m] = '>';
		fixed[m + 1] = '\0';
		c = fixed;
		m++;
	}

	size_t last = m - 1;	/* the final '>' */
	bool closing = c[1] == '/';
	size_t i = closing ? 2 : 1;
	size_t ns = i;

	while (i < last && is_tag_char(c[i]))
		i++;
	if (i == ns && (i == last || is_blank(c[i]))) {
		perr(p, file, line, "empty tag name");
		return;
	}
	if (i < last && c[i] == '>') {
		perr(p, file, line, "unexpected text after '>' in tag");
		return;
	}
	if (i < last && !is_blank(c[i])) {
		perr(p, file, line, "invalid character in tag name");
		return;
	}

	const char *orig = arena_strndup(p->a, c + ns, i - ns);
	char *name = arena_strdup(p->a, orig);

	str_lower(name);
	if (closing) {
		while (i < last && is_blank(c[i]))
			i++;
		if (i < last)
			perr(p, file, line,
			     "closing tag </%s> takes no argument", name);
		close_block(p, fs, name);
		return;
	}

	if (fs->parent_depth + fs->top >= MAX_BLOCK_DEPTH) {
		/* This deep is hostile; going on would only cascade. */
		perr(p, file, line, "blocks nested too deeply (limit %d)",
		     MAX_BLOCK_DEPTH);
		p->stop = true;
		return;
	}

	struct cfg_node *n = new_node(p, fs, CFG_NODE_BLOCK);

	if (!n)
		return;
	n->name = name;
	n->name_orig = orig;
	n->block_raw = trim(p, c + i, last - i);
	sink_add(current_sink(fs), n);
	fs->stack[fs->top++] = (struct open_block){
		.node = n,
		.sink = { &n->children },
	};
}

/*
 * read_file - read a regular file into a malloc'd, NUL-terminated buffer.
 * Returns NULL, or why not (for "cannot open ...: <why>").
 */
static const char *read_file(const char *path, struct stat *st, char **bufp,
			     size_t *lenp)
{
	/* O_NONBLOCK: a FIFO must be refused, not waited on. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return strerror(errno);
	if (fstat(fd, st) < 0) {
		int e = errno;

		close(fd);
		return strerror(e);
	}
	if (S_ISDIR(st->st_mode)) {
		close(fd);
		return strerror(EISDIR);
	}
	if (!S_ISREG(st->st_mode)) {
		close(fd);
		return "not a regular file";
	}
	if (st->st_size > MAX_FILE) {
		close(fd);
		return "file too large (limit 64 MiB)";
	}

	/* The size is a hint only: the file may change while we read. */
	size_t cap = (size_t)st->st_size + 1, len = 0;
	char *buf = xmalloc(cap + 1);

	for (;;) {
		if (len == cap) {
			if (cap > MAX_FILE) {
				free(buf);
				close(fd);
				return "file too large (limit 64 MiB)";
			}
			cap *= 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t r = read(fd, buf + len, cap - len);

		if (r == 0)
			break;
		if (r < 0) {
			int e = errno;

			if (e == EINTR)
				continue;
			free(buf);
			close(fd);
			return strerror(e);
		}
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	*bufp = buf;
	*lenp = len;
	return NULL;
}

/* dir_of - the directory of path for resolving its includes, NULL = cwd */
static const char *dir_of(struct arena *a, const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return NULL;
	if (slash == path)
		return "/";
	return arena_strndup(a, path, (size_t)(slash - path));
}

static void report_include_loop(struct parser *p, struct file_state *fs,
				const struct source *match, const char *path)
{
	struct strbuf sb = { 0 };
	size_t n = 0;

	for (const struct source *s = fs->src; s != match; s = s->up)
		n++;
	/* The chain links point upward; print it from the outermost file. */
	for (size_t k = n + 1; k-- > 0;) {
		const struct source *s = fs->src;

		for (size_t j = 0; j < k; j++)
			s = s->up;
		sb_printf(&sb, "%s -> ", s->path);
	}
	sb_adds(&sb, path);
	perr(p, fs->src->path, fs->line, "include loop: %s", sb_str(&sb));
	sb_free(&sb);
}

/* include_one - splice the nodes of one file into the current list */
static void include_one(struct parser *p, struct file_state *fs,
			const char *path)
{
	const struct source *src = fs->src;
	struct stat st;
	char *buf;
	size_t len;

	if (src->depth >= MAX_INCLUDE_DEPTH) {
		perr(p, src->path, fs->line,
		     "includes nested too deeply (limit %d)",
		     MAX_INCLUDE_DEPTH);
		return;
	}

	const char *why = read_file(path, &st, &buf, &len);

	if (why) {
		perr(p, src->path, fs->line,
		     "cannot open included file '%s': %s", path, why);
		return;
	}
	for (const struct source *s = src; s; s = s->up) {
		if (s->has_id && s->dev == st.st_dev && s->ino == st.st_ino) {
			report_include_loop(p, fs, s, path);
			free(buf);
			return;
		}
	}

	char *copy = arena_strdup(p->a, path);
	struct source child = {
		.path = copy,
		.dir = dir_of(p->a, copy),
		.has_id = true,
		.dev = st.st_dev,
		.ino = st.st_ino,
		.depth = src->depth + 1,
		.up = src,
	};
	struct file_state cfs = {
		.src = &child,
		.outer = current_sink(fs),
		.parent = current_block(fs),
		.parent_depth = fs->parent_depth + fs->top,
	};

	parse_text(p, &cfs, buf, len);
	free(buf);
}

static int cmp_path(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

static bool has_glob_chars(const char *s)
{
	return strpbrk(s, "*?[") != NULL;
}

/* do_include - `include FILE`: a path or a glob, relative to the includer */
static void do_include(struct parser *p, struct file_state *fs)
{
	const char *file = fs->src->path;
	int line = fs->line;
	const struct cfg_node *blk = current_block(fs);

	if (blk) {
		bool ok = false;

		for (size_t i = 0; i < ARRAY_SIZE(include_blocks); i++)
			ok |= strcmp(blk->name, include_blocks[i]) == 0;
		if (!ok) {
			perr(p, file, line,
			     "include is not allowed inside <%s>", blk->name);
			return;
		}
	}
	if (p->nwords != 2 || !p->words[1].text[0]) {
		perr(p, file, line, "include takes one file name");
		return;
	}

	const char *rel = p->words[1].text;
	const char *dir = fs->src->dir;
	bool joined = rel[0] != '/' && dir;
	const char *sep = joined && dir[strlen(dir) - 1] != '/' ? "/" : "";
	char *path = joined ? arena_printf(p->a, "%s%s%s", dir, sep, rel) :
			      arena_strdup(p->a, rel);

	if (!has_glob_chars(rel)) {
		include_one(p, fs, path);
		return;
	}

	/* The directory is literal even if its name holds glob characters. */
	struct strbuf pat = { 0 };

	if (joined) {
		for (const char *c = dir; *c; c++) {
			if (strchr("*?[\\", *c))
				sb_addc(&pat, '\\');
			sb_addc(&pat, *c);
		}
		sb_adds(&pat, sep);
	}
	sb_adds(&pat, rel);

	glob_t g;
	int rc = glob(sb_str(&pat), GLOB_NOSORT | GLOB_MARK, NULL, &g);

	sb_free(&pat);
	if (rc == GLOB_NOMATCH) {
		if (!p->stop)
			diag_add(p->diags, DIAG_WARNING, file, line,
				 "include pattern '%s' matches no file", path);
	} else if (rc != 0) {
		perr(p, file, line, "cannot expand include pattern '%s'", path);
	} else {
		/* strcmp, not the locale: the order must not depend on LANG. */
		qsort(g.gl_pathv, g.gl_pathc, sizeof(char *), cmp_path);
		for (size_t i = 0; i < g.gl_pathc && !p->stop; i++) {
			/* A pattern names files; GLOB_MARK flags directories. */
			if (!str_has_suffix_ci(g.gl_pathv[i], "/"))
				include_one(p, fs, g.gl_pathv[i]);
		}
	}
	if (rc != GLOB_NOMATCH)
		globfree(&g);
}

/* parse_directive - the line's words are in p->words, s[0..end) the text */
static void parse_directive(struct parser *p, struct file_state *fs,
			    const char *s, size_t end)
{
	const struct word *w0 = &p->words[0];

	if (!w0->regex && str_ieq(w0->text, "include")) {
		do_include(p, fs);
		return;
	}

	struct cfg_node *n = new_node(p, fs, CFG_NODE_DIRECTIVE);

	if (!n)
		return;
	/* A /regex/ names lines in <bounce-category-patterns>: keep its case. */
	char *name = arena_strdup(p->a, w0->text);

	str_lower(name);
	n->name = name;
	n->name_orig = w0->text;
	n->raw = trim(p, s + w0->end, end - w0->end);
	n->nwords = p->nwords - 1;
	if (n->nwords) {
		n->words = arena_alloc(p->a, n->nwords * sizeof(*n->words));
		for (size_t i = 0; i < n->nwords; i++)
			n->words[i] = p->words[i + 1].text;
	}
	sink_add(current_sink(fs), n);
}

static void parse_line(struct parser *p, struct file_state *fs,
		       const char *s, size_t n)
{
	size_t end;

	if (lex_line(p, fs->src->path, fs->line, s, n, &end) < 0 ||
	    p->nwords == 0)
		return;

	size_t start = p->words[0].start;

	if (s[start] == '<')
		parse_tag(p, fs, s + start, end - start);
	else
		parse_directive(p, fs, s, end);
}

/* next_line - the line at *s (CR and LF removed); advances *s past it */
static size_t next_line(const char **s, const char *end, const char **line)
{
	const char *nl = memchr(*s, '\n', (size_t)(end - *s));
	size_t n = (size_t)((nl ? nl : end) - *s);

	*line = *s;
	*s = nl ? nl + 1 : end;
	if (n && (*line)[n - 1] == '\r')
		n--;
	return n;
}

/*
 * unclosed_regex - does this line of a pattern block open a /regex/ that
 * does not close on it?  Only the rule forms can: `/re/ category` in
 * <bounce-category-patterns> and `reply /re/ ...` in <smtp-pattern-list>.
 */
static bool unclosed_regex(const struct file_state *fs, const char *s,
			   size_t n)
{
	const struct cfg_node *b = current_block(fs);
	struct regex_scan rs = { .slash = SIZE_MAX };
	size_t i = 0;

	if (!b || b->kind != CFG_NODE_BLOCK)
		return false;
	bool bounce = strcmp(b->name, "bounce-category-patterns") == 0;
	if (!bounce && strcmp(b->name, "smtp-pattern-list") != 0)
		return false;
	while (i < n && is_blank(s[i]))
		i++;
	if (!bounce) {
		if (n - i < 5 || strncasecmp(s + i, "reply", 5) != 0)
			return false;
		i += 5;
		if (i == n || !is_blank(s[i]))
			return false;
		while (i < n && is_blank(s[i]))
			i++;
	}
	return i < n && s[i] == '/' && regex_end(&rs, s, n, i) == 0;
}

/* Lines a wrapped /regex/ may span; more is not a wrap but a typo. */
#define MAX_REGEX_WRAP 4

/*
 * join_wrapped_regex - public copies of PowerMTA's pattern blocks often
 * carry a rule wrapped inside its regex ("...not activa" / "ted)/ x").
 * Joins s[0..n) with the following lines until the regex closes; on
 * success the joined line is in p->sb, *rest moves past the lines taken,
 * one warning names them, and the count taken is returned.  A
 * continuation that is blank or opens a tag ends the attempt: then
 * nothing is joined and 0 is returned.
 */
static int join_wrapped_regex(struct parser *p, struct file_state *fs,
			      const char *s, size_t n, const char **rest,
			      const char *end)
{
	const char *cur = *rest;
	int first = fs->line, taken = 0;

	sb_reset(&p->sb);
	sb_add(&p->sb, s, n);
	while (taken < MAX_REGEX_WRAP && cur < end) {
		const char *l;
		size_t m = next_line(&cur, end, &l), k = 0;

		while (k < m && is_blank(l[k]))
			k++;
		if (k == m || l[k] == '<' || memchr(l, '\0', m) ||
		    p->sb.len + m > MAX_LINE)
			return 0;
		sb_add(&p->sb, l, m);
		taken++;
		if (!unclosed_regex(fs, sb_str(&p->sb), p->sb.len)) {
			*rest = cur;
			diag_add(p->diags, DIAG_WARNING, fs->src->path, first,
				 "the /regex/ on this line is not closed before "
				 "line %d ends it; lines %d-%d are joined as '%s' "
				 "(a rule wrapped when it was copied?)",
				 first + taken, first, first + taken,
				 sb_str(&p->sb) + strspn(sb_str(&p->sb), " \t"));
			return taken;
		}
	}
	return 0;
}

/* parse_text - parse one file's text into fs->outer, then check its blocks */
static void parse_text(struct parser *p, struct file_state *fs,
		       const char *text, size_t len)
{
	const char *s = text, *end = text + len;

	if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;		/* a UTF-8 byte order mark */
	while (s < end && !p->stop) {
		const char *line;
		size_t n = next_line(&s, end, &line);
		int taken;

		fs->line++;
		if (n > MAX_LINE) {
			perr(p, fs->src->path, fs->line,
			     "line too long (limit %d bytes)", MAX_LINE);
		} else if (memchr(line, '\0', n)) {
			perr(p, fs->src->path, fs->line, "NUL byte in line");
		} else if (p->diags && unclosed_regex(fs, line, n) &&
			   (taken = join_wrapped_regex(p, fs, line, n, &s, end))) {
			/* parse_line reuses p->sb: parse a copy */
			const char *joined = arena_strndup(p->a, sb_str(&p->sb),
							   p->sb.len);

			parse_line(p, fs, joined, strlen(joined));
			fs->line += taken;
		} else {
			parse_line(p, fs, line, n);
		}
	}
	for (int k = 0; k < fs->top; k++) {
		const struct cfg_node *b = fs->stack[k].node;

		perr(p, b->file, b->line, "<%s> opened here is never closed",
		     b->name);
	}
	fs->top = 0;
}

/* ---- domain-macro ---- */

/* next_item - the next comma/blank-separated item of s[0..n) from *pos */
static bool next_item(const char *s, size_t n, size_t *pos, const char **item,
		      size_t *len)
{
	size_t i = *pos;

	while (i < n && is_item_sep(s[i]))
		i++;
	if (i == n) {
		*pos = i;
		return false;
	}

	size_t b = i;

	while (i < n && !is_item_sep(s[i]))
		i++;
	*item = s + b;
	*len = i - b;
	*pos = i;
	return true;
}

static void strvec_push(struct strvec *sv, const char *s)
{
	if (sv->n == sv->cap) {
		sv->cap = sv->cap ? sv->cap * 2 : 8;
		sv->v = xrealloc(sv->v, sv->cap * sizeof(*sv->v));
	}
	sv->v[sv->n++] = s;
}

static void collect_macros(struct parser *p, const struct cfg_node *n)
{
	for (; n && !p->stop; n = n->next) {
		if (n->kind == CFG_NODE_BLOCK) {
			collect_macros(p, n->children);
			continue;
		}
		if (strcmp(n->name, "domain-macro") != 0)
			continue;
		if (n->nwords < 2) {
			perr(p, n->file, n->line,
			     "domain-macro needs a name and at least one value");
			continue;
		}

		const char *name = n->words[0];
		bool ok = name[0] != '\0';

		for (const char *c = name; *c; c++)
			ok &= is_name_char(*c);
		if (!ok) {
			perr(p, n->file, n->line,
			     "invalid domain-macro name '%s' (letters, digits, '_' and '-' only)",
			     name);
			continue;
		}
		if (p->nmacros == p->capmacros) {
			p->capmacros = p->capmacros ? p->capmacros * 2 : 16;
			p->macros = xrealloc(p->macros,
					     p->capmacros * sizeof(*p->macros));
		}
		p->macros[p->nmacros] = (struct macro){
			.name = name,
			.def = n,
			.order = p->nmacros,
		};
		p->nmacros++;
	}
}

static int cmp_macro(const void *x, const void *y)
{
	const struct macro *a = x, *b = y;
	int c = strcmp(a->name, b->name);

	if (c)
		return c;
	return a->order < b->order ? -1 : a->order > b->order;
}

static struct macro *find_macro(struct parser *p, const char *name, size_t len)
{
	size_t lo = 0, hi = p->nmacros;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const char *m = p->macros[mid].name;
		int c = strncmp(m, name, len);

		if (c == 0 && m[len])
			c = 1;
		if (c == 0)
			return &p->macros[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* One piece of a text being expanded: a literal, then a macro (or none). */
struct segment {
	const char *lit;
	size_t litlen;
	const struct macro *m;
};

static int resolve_macro(struct parser *p, struct macro *m);

/*
 * expand - push every expansion of s[0..n) (the cartesian product of the
 * $NAME references in it) onto out.  file:line locates errors.  Returns
 * the number of references (0: s was pushed as is), or -1 after an error
 * was reported (here or where a macro failed).
 */
static int expand(struct parser *p, const char *s, size_t n, const char *file,
		  int line, struct strvec *out)
{
	size_t nseg = 1;

	for (size_t i = 0; i + 1 < n; i++)
		nseg += s[i] == '$' && is_name_char(s[i + 1]);

	if (nseg == 1) {
		strvec_push(out, arena_strndup(p->a, s, n));
		return 0;
	}

	struct segment *seg = xcalloc(nseg, sizeof(*seg));
	size_t *idx = xcalloc(nseg, sizeof(*idx));
	size_t k = 0, lit = 0, total = 1;
	int ret = -1;

	for (size_t i = 0; i < n; i++) {
		if (s[i] != '$' || i + 1 == n || !is_name_char(s[i + 1]))
			continue;

		size_t b = i + 1, e = b;

		while (e < n && is_name_char(s[e]))
			e++;

		struct macro *m = find_macro(p, s + b, e - b);

		if (!m) {
			perr(p, file, line, "undefined domain-macro '%.*s'",
			     (int)(e - b), s + b);
			goto out;
		}
		if (resolve_macro(p, m) < 0)
			goto out;
		if (m->nvals == 0 || total > MAX_EXPANSION / m->nvals) {
			perr(p, file, line,
			     "domain-macro expansion of '%.*s' is too large (limit %d values)",
			     (int)n, s, MAX_EXPANSION);
			goto out;
		}
		total *= m->nvals;
		seg[k++] = (struct segment){ s + lit, i - lit, m };
		lit = e;
		i = e - 1;
	}
	seg[k++] = (struct segment){ s + lit, n - lit, NULL };

	if (p->expanded_values + total > MAX_EXPANDED_VALUES) {
		perr(p, file, line,
		     "domain-macro expansions too large in total (limit %d values)",
		     MAX_EXPANDED_VALUES);
		goto out;
	}
	p->expanded_values += total;

	/* Odometer over the value indices, last reference fastest. */
	for (;;) {
		sb_reset(&p->sb);
		for (size_t j = 0; j < k; j++) {
			sb_add(&p->sb, seg[j].lit, seg[j].litlen);
			if (seg[j].m)
				sb_adds(&p->sb, seg[j].m->vals[idx[j]]);
		}
		p->expanded_bytes += p->sb.len + 1;
		if (p->expanded_bytes > MAX_EXPANDED_BYTES) {
			perr(p, file, line,
			     "domain-macro expansions too large in total (limit %d bytes)",
			     MAX_EXPANDED_BYTES);
			goto out;
		}
		strvec_push(out,
			    arena_strndup(p->a, sb_str(&p->sb), p->sb.len));

		size_t j = k;

		while (j-- > 0) {
			if (!seg[j].m)
				continue;
			if (++idx[j] < seg[j].m->nvals)
				break;
			idx[j] = 0;
		}
		if (j == SIZE_MAX)
			break;
	}
	ret = (int)(k - 1);
out:
	free(idx);
	free(seg);
	return ret;
}

static void report_macro_loop(struct parser *p, struct macro *m)
{
	struct strbuf sb = { 0 };
	size_t from = p->nbusy;

	while (from > 0 && p->busy[from - 1] != m)
		from--;
	for (size_t i = from - 1; i < p->nbusy; i++)
		sb_printf(&sb, "%s -> ", p->busy[i]->name);
	sb_adds(&sb, m->name);
	perr(p, m->def->file, m->def->line, "domain-macro loop: %s",
	     sb_str(&sb));
	sb_free(&sb);
}

/* resolve_macro - expand m's values (and those it names) once */
struct macro_value {
	const char *s;
	size_t pos;
};

static int cmp_macro_value(const void *x, const void *y)
{
	const struct macro_value *a = x, *b = y;
	int c = strcasecmp(a->s, b->s);

	return c ? c : (a->pos > b->pos) - (a->pos < b->pos);
}

/*
 * drop_duplicate_values - real configs list a domain twice in one macro
 * (hotmail.com,...,hotmail.com); each copy would become its own <domain>
 * block and "override" itself.  Keep the first, say so once per name.
 */
static void drop_duplicate_values(struct parser *p, const struct macro *m,
				  struct strvec *vals)
{
	const struct cfg_node *d = m->def;
	struct macro_value *mv = xmalloc(vals->n * sizeof(*mv) + 1);
	bool *drop = xcalloc(vals->n + 1, sizeof(*drop));
	size_t kept = 0;

	for (size_t i = 0; i < vals->n; i++)
		mv[i] = (struct macro_value){ vals->v[i], i };
	qsort(mv, vals->n, sizeof(*mv), cmp_macro_value);
	for (size_t i = 1; i < vals->n; i++) {
		if (strcasecmp(mv[i].s, mv[i - 1].s) != 0)
			continue;
		drop[mv[i].pos] = true;
		bool first_dup = i < 2 || strcasecmp(mv[i].s, mv[i - 2].s) != 0;
		if (first_dup && p->diags)
			diag_add(p->diags, DIAG_WARNING, d->file, d->line,
				 "domain-macro %s lists '%s' more than once; "
				 "the repeats are ignored", m->name, mv[i].s);
	}
	for (size_t i = 0; i < vals->n; i++)
		if (!drop[i])
			vals->v[kept++] = vals->v[i];
	vals->n = kept;
	free(mv);
	free(drop);
}

static int resolve_macro(struct parser *p, struct macro *m)
{
	switch (m->state) {
	case MACRO_DONE:
		return 0;
	case MACRO_FAILED:
		return -1;
	case MACRO_BUSY:
		report_macro_loop(p, m);
		return -1;
	case MACRO_NEW:
		break;
	}

	const struct cfg_node *d = m->def;
	struct strvec vals = { 0 };

	if (p->nbusy >= MAX_MACRO_DEPTH) {
		perr(p, d->file, d->line,
		     "domain-macros nested too deeply (limit %d)",
		     MAX_MACRO_DEPTH);
		m->state = MACRO_FAILED;
		return -1;
	}
	m->state = MACRO_BUSY;
	p->busy = xrealloc(p->busy, (p->nbusy + 1) * sizeof(*p->busy));
	p->busy[p->nbusy++] = m;
	for (size_t w = 1; w < d->nwords && m->state == MACRO_BUSY; w++) {
		const char *s = d->words[w], *item;
		size_t n = strlen(s), pos = 0, len;

		while (next_item(s, n, &pos, &item, &len)) {
			if (expand(p, item, len, d->file, d->line, &vals) < 0) {
				m->state = MACRO_FAILED;
				break;
			}
		}
	}
	p->nbusy--;
	if (m->state == MACRO_BUSY && vals.n == 0) {
		perr(p, d->file, d->line,
		     "domain-macro needs a name and at least one value");
		m->state = MACRO_FAILED;
	}
	if (m->state == MACRO_BUSY) {
		drop_duplicate_values(p, m, &vals);
		m->vals = arena_alloc(p->a, vals.n * sizeof(*m->vals));
		memcpy(m->vals, vals.v, vals.n * sizeof(*m->vals));
		m->nvals = vals.n;
		m->state = MACRO_DONE;
	}
	free(vals.v);
	return m->state == MACRO_DONE ? 0 : -1;
}

static void expand_block_args(struct parser *p, struct cfg_node *n)
{
	for (; n && !p->stop; n = n->next) {
		if (n->kind != CFG_NODE_BLOCK)
			continue;

		const char *s = n->block_raw, *item;
		size_t len, pos = 0, slen = strlen(s);
		struct strvec vals = { 0 };
		struct cfg_block_arg *args = NULL;
		size_t nargs = 0, cap = 0;

		while (next_item(s, slen, &pos, &item, &len)) {
			vals.n = 0;

			/*
			 * Only domain patterns take macros: a '$' in an
			 * <acct-file |cmd $1> pipe or a name is literal.
			 */
			if (strcmp(n->name, "domain") != 0) {
				if (nargs == cap) {
					cap = cap ? cap * 2 : 4;
					args = xrealloc(args, cap * sizeof(*args));
				}
				args[nargs++] = (struct cfg_block_arg){
					.text = arena_strndup(p->a, item, len),
				};
				continue;
			}
			int refs = expand(p, item, len, n->file, n->line,
					  &vals);

			if (refs < 0)
				continue;
			for (size_t i = 0; i < vals.n; i++) {
				if (nargs == cap) {
					cap = cap ? cap * 2 : 4;
					args = xrealloc(args,
							cap * sizeof(*args));
				}
				args[nargs++] = (struct cfg_block_arg){
					.text = vals.v[i],
					.from_macro = refs > 0,
				};
			}
		}
		if (nargs) {
			n->args = arena_alloc(p->a, nargs * sizeof(*args));
			memcpy(n->args, args, nargs * sizeof(*args));
			n->nargs = nargs;
		}
		free(args);
		free(vals.v);
		expand_block_args(p, n->children);
	}
}

/* apply_macros - collect every definition in the tree, then expand */
static void apply_macros(struct parser *p, struct cfg_node *root)
{
	collect_macros(p, root);
	if (p->nmacros)
		qsort(p->macros, p->nmacros, sizeof(*p->macros), cmp_macro);

	/* Sorted by (name, order): a redefinition follows its first one. */
	size_t kept = 0;

	for (size_t i = 0; i < p->nmacros; i++) {
		struct macro *m = &p->macros[i];

		if (kept && strcmp(p->macros[kept - 1].name, m->name) == 0) {
			const struct cfg_node *first = p->macros[kept - 1].def;

			perr(p, m->def->file, m->def->line,
			     "domain-macro '%s' redefined (first defined at %s:%d)",
			     m->name, first->file, first->line);
			continue;
		}
		p->macros[kept++] = *m;
	}
	p->nmacros = kept;

	/* Resolve all, so a loop or a typo is reported even if unused. */
	for (size_t i = 0; i < p->nmacros && !p->stop; i++)
		resolve_macro(p, &p->macros[i]);
	/* Published below for cfg_syntax_expand(), which must not resolve. */
	for (size_t i = 0; i < p->nmacros; i++)
		if (p->macros[i].state != MACRO_DONE)
			p->macros[i].state = MACRO_FAILED;
	expand_block_args(p, root);
}

/* publish_macros - copy the resolved table into the arena for the tree */
static const struct cfg_macro *publish_macros(struct parser *p)
{
	if (!p->nmacros)
		return NULL;

	struct cfg_macro *t = arena_alloc(p->a, sizeof(*t));

	t->items = arena_alloc(p->a, p->nmacros * sizeof(*t->items));
	memcpy(t->items, p->macros, p->nmacros * sizeof(*t->items));
	t->count = p->nmacros;
	return t;
}

static int parse_root(struct arena *a, const struct source *src,
		      const char *text, size_t len, struct cfg_tree *out,
		      struct diag_list *diags)
{
	struct parser p = { .a = a, .diags = diags };
	struct cfg_node *head = NULL;
	struct sink sink = { &head };
	struct file_state fs = { .src = src, .outer = &sink };

	parse_text(&p, &fs, text, len);
	if (!p.stop) {
		apply_macros(&p, head);
		out->macros = publish_macros(&p);
	}
	out->root = head;
	out->complete = !p.stop;

	free(p.words);
	sb_free(&p.sb);
	free(p.macros);
	free(p.busy);
	return p.errors ? -EINVAL : 0;
}

int cfg_syntax_parse_file(struct arena *a, const char *path,
			  struct cfg_tree *out, struct diag_list *diags)
{
	struct stat st;
	char *buf;
	size_t len;
	const char *why = read_file(path, &st, &buf, &len);

	*out = (struct cfg_tree){ 0 };
	if (why) {
		diag_add(diags, DIAG_ERROR, path, 0,
			 "cannot open config file: %s", why);
		return -EINVAL;
	}

	const char *copy = arena_strdup(a, path);
	struct source src = {
		.path = copy,
		.dir = dir_of(a, copy),
		.has_id = true,
		.dev = st.st_dev,
		.ino = st.st_ino,
	};
	int ret = parse_root(a, &src, buf, len, out, diags);

	free(buf);
	return ret;
}

int cfg_syntax_parse_string(struct arena *a, const char *name,
			    const char *text, size_t len, const char *base_dir,
			    struct cfg_tree *out, struct diag_list *diags)
{
	struct source src = {
		.path = arena_strdup(a, name ? name : "<string>"),
		.dir = base_dir && *base_dir ? arena_strdup(a, base_dir) : NULL,
	};

	*out = (struct cfg_tree){ 0 };
	if (len > MAX_FILE) {
		diag_add(diags, DIAG_ERROR, src.path, 0,
			 "config text too large (limit 64 MiB)");
		return -EINVAL;
	}
	return parse_root(a, &src, len ? text : "", len, out, diags);
}

int cfg_syntax_expand(const struct cfg_tree *tree, struct arena *a,
		      const char *word, const char ***out, size_t *n)
{
	const struct cfg_macro *t = tree ? tree->macros : NULL;
	/*
	 * Every entry is DONE or FAILED (apply_macros), so resolve_macro()
	 * only reads them: the const is kept in fact if not in type.
	 */
	struct parser p = {
		.a = a,
		.macros = t ? t->items : NULL,
		.nmacros = t ? t->count : 0,
	};
	struct strvec vals = { 0 };
	int ret = expand(&p, word, strlen(word), NULL, 0, &vals);

	sb_free(&p.sb);
	*out = NULL;
	*n = 0;
	if (ret < 0 || p.errors) {
		free(vals.v);
		return -EINVAL;
	}
	*out = arena_alloc(a, vals.n * sizeof(**out));
	memcpy(*out, vals.v, vals.n * sizeof(**out));
	*n = vals.n;
	free(vals.v);
	return 0;
}
