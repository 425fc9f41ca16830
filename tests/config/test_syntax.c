/*
 * tests/config/test_syntax.c - the config file format (config/syntax.h).
 *
 * Each table row is config text and the expected tree, written as a
 * compact dump (`D name [word]...` for a directive, `B tag(arg,~arg) {
 * ... }` for a block, `~` marking an argument produced by a macro), or
 * the exact diagnostics.  Include cases build their files in a mkdtemp
 * directory and print paths relative to it.
 */
/* Criterion's generated test functions have no prototypes. */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "util/util.h"

#include "config/syntax.h"
#include "tests/lib/testlib.h"

TestSuite(syntax, .timeout = 30);

/* ---- helpers ---- */

static void dump_nodes(struct strbuf *sb, const struct cfg_node *n, bool loc)
{
	for (; n; n = n->next) {
		if (loc)
			sb_printf(sb, "%s:%d:", n->file, n->line);
		if (n->kind == CFG_NODE_DIRECTIVE) {
			sb_printf(sb, "D %s", n->name);
			for (size_t i = 0; i < n->nwords; i++)
				sb_printf(sb, " [%s]", n->words[i]);
		} else {
			sb_printf(sb, "B %s(", n->name);
			for (size_t i = 0; i < n->nargs; i++)
				sb_printf(sb, "%s%s%s", i ? "," : "",
					  n->args[i].from_macro ? "~" : "",
					  n->args[i].text);
			sb_adds(sb, ") {");
			if (n->children) {
				sb_adds(sb, " ");
				dump_nodes(sb, n->children, loc);
				sb_adds(sb, " ");
			}
			sb_adds(sb, "}");
		}
		if (n->next)
			sb_adds(sb, "; ");
	}
}

/* dump - the tree as one line, paths made relative to dir if given */
static char *dump(const struct cfg_tree *t, bool loc, const char *dir)
{
	struct strbuf sb = { 0 };

	dump_nodes(&sb, t->root, loc);
	if (!dir)
		return sb_detach(&sb);

	char *prefix = xasprintf("%s/", dir);
	char *s = testlib_replace_all(sb_str(&sb), prefix, "");

	free(prefix);
	sb_free(&sb);
	return s;
}

/* diags_text - every diagnostic formatted, one per line */
static char *diags_text(const struct diag_list *dl, const char *dir)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < dl->count; i++) {
		if (i)
			sb_addc(&sb, '\n');
		diag_format(&dl->items[i], &sb);
	}
	if (!dir)
		return sb_detach(&sb);

	char *prefix = xasprintf("%s/", dir);
	char *s = testlib_replace_all(sb_str(&sb), prefix, "");

	free(prefix);
	sb_free(&sb);
	return s;
}

struct parsed {
	struct arena *a;
	struct diag_list diags;
	struct cfg_tree tree;
	int ret;
};

static void parse_text(struct parsed *r, const char *text, size_t len)
{
	*r = (struct parsed){ .a = arena_new() };
	r->ret = cfg_syntax_parse_string(r->a, "t.conf", text, len, NULL,
					 &r->tree, &r->diags);
}

static void parsed_free(struct parsed *r)
{
	diag_free(&r->diags);
	arena_free(r->a);
}

/*
 * Criterion re-executes the test binary for each test, so a parameter
 * holding a pointer into the parent's image would dangle; the parameter
 * is an index into a file-scope table instead.
 */
#define MAX_CASES 128

static struct criterion_test_params index_params(size_t n)
{
	static size_t idx[MAX_CASES];

	BUG_ON(n > MAX_CASES);
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, n);
}

/* ---- text -> tree ---- */

struct tree_case {
	const char *text;
	const char *dump;
};

static const struct tree_case tree_cases[] = {
	{ "", "" },
	{ "\n\n   \n\t\n", "" },
	{ "# only a comment\n   # indented\n", "" },
	{ "log-file /var/log/x", "D log-file [/var/log/x]" },
	{ "Log-File /var/log/X\n", "D log-file [/var/log/X]" },
	{ "  \t max-smtp-out \t  20  \n", "D max-smtp-out [20]" },
	{ "a 1\nb 2", "D a [1]; D b [2]" },
	{ "a 1\r\nb 2\r\n\r\n", "D a [1]; D b [2]" },
	{ "\xEF\xBB\xBF" "a 1\n", "D a [1]" },
	{ "run-as-root", "D run-as-root" },
	{ "password ## YOUR PASSWORD HERE ##", "D password" },

	/* comments, quotes and regexes */
	{ "log-file /var/log/pmta.log  # comment",
	  "D log-file [/var/log/pmta.log]" },
	{ "a b#c d", "D a [b]" },
	{ "a \"b # c\" d", "D a [b # c] [d]" },
	{ "a \"x\\\"y\" \"p\\\\q\" \"r\\.s\"",
	  "D a [x\"y] [p\\q] [r\\.s]" },
	{ "max-size \"\"", "D max-size []" },
	{ "a \"\" \"\" b", "D a [] [] [b]" },
	{ "a x\"y z\"w", "D a [xy zw]" },
	/* Outside quotes a backslash is an ordinary character. */
	{ "a b\\c d\\\\e x\\.23", "D a [b\\c] [d\\\\e] [x\\.23]" },
	{ "/5\\.1\\.[1346]/ bad-mailbox",
	  "D /5\\.1\\.[1346]/ [bad-mailbox]" },
	{ "/Mailbox Full/i quota-issues",
	  "D /mailbox full/i [quota-issues]" },
	{ "reply /^550 #5/i mode=backoff # why",
	  "D reply [/^550 #5/i] [mode=backoff]" },
	{ "x /a\\/b #c/ y", "D x [/a\\/b #c/] [y]" },
	{ "x /a\\/ # c", "D x [/a\\/]" },
	{ "x /abc/imsx y", "D x [/abc/imsx] [y]" },
	{ "x /abc/q # c", "D x [/abc/q]" },
	{ "x /a/b/ y", "D x [/a/b/] [y]" },
	{ "x /\"q/ y", "D x [/\"q/] [y]" },
	{ "x a/b/ y", "D x [a/b/] [y]" },
	{ "x //", "D x [//]" },
	{ "domain-key k, d.example,  /etc/pmta/mypmta.pem",
	  "D domain-key [k,] [d.example,] [/etc/pmta/mypmta.pem]" },

	/* blocks */
	{ "<domain gmail.com>\nmax-smtp-out 10\n</domain>",
	  "B domain(gmail.com) { D max-smtp-out [10] }" },
	{ "<Domain Example.COM>\n</DOMAIN>", "B domain(Example.COM) {}" },
	{ "<bounce-processor>\n</bounce-processor>",
	  "B bounce-processor() {}" },
	{ "<source {auth}>  # named source\n</source> # end",
	  "B source({auth}) {}" },
	{ "<domain [*.]example.com>\n</domain>",
	  "B domain([*.]example.com) {}" },
	{ "<domain a.com, b.com,c.com\td.com>\n</domain>",
	  "B domain(a.com,b.com,c.com,d.com) {}" },
	{ "<acct-file |/usr/local/bin/acct_etl --logfile acct_etl.log>\n"
	  "records d\n</acct-file>",
	  "B acct-file(|/usr/local/bin/acct_etl,--logfile,acct_etl.log) "
	  "{ D records [d] }" },
	{ "<virtual-mta-pool default>\n  virtual-mta mta1\n"
	  "  <domain *>\n    max-smtp-out 20  # per domain\n  </domain>\n"
	  "</virtual-mta-pool>\nhttp-mgmt-port 8080",
	  "B virtual-mta-pool(default) { D virtual-mta [mta1]; "
	  "B domain(*) { D max-smtp-out [20] } }; "
	  "D http-mgmt-port [8080]" },
	{ "<a>\n<b>\n<c>\n</c>\n</b>\n<b>\n</b>\n</a>",
	  "B a() { B b() { B c() {} }; B b() {} }" },

	/* domain-macro */
	{ "domain-macro tlds com,co.uk\n<domain yahoo.$tlds>\n</domain>",
	  "D domain-macro [tlds] [com,co.uk]; "
	  "B domain(~yahoo.com,~yahoo.co.uk) {}" },
	{ "<domain $m>\n</domain>\ndomain-macro m a.com, b.com c.com",
	  "B domain(~a.com,~b.com,~c.com) {}; "
	  "D domain-macro [m] [a.com,] [b.com] [c.com]" },
	{ "domain-macro a x,y\ndomain-macro b $a.com,z.org\n"
	  "<domain $b>\n</domain>",
	  "D domain-macro [a] [x,y]; D domain-macro [b] [$a.com,z.org]; "
	  "B domain(~x.com,~y.com,~z.org) {}" },
	{ "domain-macro h mx,smtp\ndomain-macro t com,net\n"
	  "<domain $h.$t>\n</domain>",
	  "D domain-macro [h] [mx,smtp]; D domain-macro [t] [com,net]; "
	  "B domain(~mx.com,~mx.net,~smtp.com,~smtp.net) {}" },
	{ "domain-macro t com\n<domain gmail.com, yahoo.$t,aol.com>\n"
	  "</domain>",
	  "D domain-macro [t] [com]; "
	  "B domain(gmail.com,~yahoo.com,aol.com) {}" },
	{ "<domain a$ $.x b$-c>\n</domain>\ndomain-macro -c z",
	  "B domain(a$,$.x,~bz) {}; D domain-macro [-c] [z]" },
	{ "<virtual-mta v>\ndomain-macro t org\n<domain x.$t>\n</domain>\n"
	  "</virtual-mta>",
	  "B virtual-mta(v) { D domain-macro [t] [org]; "
	  "B domain(~x.org) {} }" },
	{ "domain-macro t com\nrelay-domain $t", /* words stay as written */
	  "D domain-macro [t] [com]; D relay-domain [$t]" },
};

ParameterizedTestParameters(syntax, tree)
{
	return index_params(ARRAY_SIZE(tree_cases));
}

ParameterizedTest(size_t *i, syntax, tree)
{
	const struct tree_case *c = &tree_cases[*i];
	struct parsed r;

	parse_text(&r, c->text, strlen(c->text));
	char *got = dump(&r.tree, false, NULL);
	char *dg = diags_text(&r.diags, NULL);

	cr_expect_eq(r.ret, 0, "input:\n%s\ndiags:\n%s", c->text, dg);
	cr_expect_eq(r.diags.count, 0, "input:\n%s\ndiags:\n%s", c->text, dg);
	cr_expect_str_eq(got, c->dump, "input:\n%s", c->text);
	free(got);
	free(dg);
	parsed_free(&r);
}

/* ---- raw directive values ---- */

struct raw_case {
	const char *text;
	const char *raw;
};

static const struct raw_case raw_cases[] = {
	{ "a", "" },
	{ "a   \t", "" },
	{ "a  b   c  # x", "b   c" },
	{ "a \"x y\"  z", "\"x y\"  z" },
	{ "a \"\"", "\"\"" },
	{ "reply /^5 x/i  mode=backoff # c", "/^5 x/i  mode=backoff" },
	{ "log-file /var/log/pmta/pmta.log   # logrotate",
	  "/var/log/pmta/pmta.log" },
	{ "domain-key k, d.example,  /etc/k.pem\r",
	  "k, d.example,  /etc/k.pem" },
};

ParameterizedTestParameters(syntax, raw)
{
	return index_params(ARRAY_SIZE(raw_cases));
}

ParameterizedTest(size_t *i, syntax, raw)
{
	const struct raw_case *c = &raw_cases[*i];
	struct parsed r;

	parse_text(&r, c->text, strlen(c->text));
	cr_assert_eq(r.ret, 0);
	cr_assert_not_null(r.tree.root);
	cr_expect_str_eq(r.tree.root->raw, c->raw, "input: %s", c->text);
	parsed_free(&r);
}

/* ---- text -> diagnostics ---- */

struct diag_case {
	const char *text;
	const char *diags;	/* all of them, one per line */
};

static const struct diag_case diag_cases[] = {
	{ "a \"b", "t.conf:1: error: unterminated quoted string" },
	{ "a \"b\\\"", "t.conf:1: error: unterminated quoted string" },
	{ "a b\\\"c", "t.conf:1: error: unterminated quoted string" },
	{ "ok 1\na \"b\nc 2\nd \"e # f",
	  "t.conf:2: error: unterminated quoted string\n"
	  "t.conf:4: error: unterminated quoted string" },
	{ "<source x>\n<domain y>\n</source>",
	  "t.conf:3: error: </source> closes <domain> opened at t.conf:2" },
	{ "<source x>\n</domain>",
	  "t.conf:2: error: </domain> closes <source> opened at t.conf:1" },
	{ "a 1\n<domain x>\nb 2\n",
	  "t.conf:2: error: <domain> opened here is never closed" },
	{ "<a>\n<b>\n",
	  "t.conf:1: error: <a> opened here is never closed\n"
	  "t.conf:2: error: <b> opened here is never closed" },
	{ "</domain>",
	  "t.conf:1: error: </domain> without matching <domain>" },
	{ "<domain x", "t.conf:1: error: malformed tag: missing '>'\n"
		       "t.conf:1: error: <domain> opened here is never closed" },
	{ "<", "t.conf:1: error: malformed tag: missing '>'" },
	{ "<domain x> y", "t.conf:1: error: unexpected text after '>' in tag" },
	{ "<a>b>", "t.conf:1: error: unexpected text after '>' in tag" },
	{ "<>", "t.conf:1: error: empty tag name" },
	{ "< domain x>", "t.conf:1: error: empty tag name" },
	{ "</>", "t.conf:1: error: empty tag name" },
	{ "<dom@in x>", "t.conf:1: error: invalid character in tag name" },
	{ "<a>\n</a x>",
	  "t.conf:2: error: closing tag </a> takes no argument" },
	{ "<acct-file x>\ninclude y.conf\n</acct-file>",
	  "t.conf:2: error: include is not allowed inside <acct-file>" },
	{ "include", "t.conf:1: error: include takes one file name" },
	{ "include a b", "t.conf:1: error: include takes one file name" },
	{ "include \"\"", "t.conf:1: error: include takes one file name" },

	/* domain-macro */
	{ "<domain $nope>\n</domain>",
	  "t.conf:1: error: undefined domain-macro 'nope'" },
	{ "domain-macro a x.$zz",
	  "t.conf:1: error: undefined domain-macro 'zz'" },
	{ "domain-macro a x.$b\ndomain-macro b $a\n<domain $b>\n</domain>",
	  "t.conf:1: error: domain-macro loop: a -> b -> a" },
	{ "domain-macro c $b\ndomain-macro b $c, x",
	  "t.conf:2: error: domain-macro loop: b -> c -> b" },
	{ "domain-macro a $a", "t.conf:1: error: domain-macro loop: a -> a" },
	{ "domain-macro a x\n\ndomain-macro a y",
	  "t.conf:3: error: domain-macro 'a' redefined "
	  "(first defined at t.conf:1)" },
	{ "domain-macro a",
	  "t.conf:1: error: domain-macro needs a name and at least one value" },
	{ "domain-macro a , ,",
	  "t.conf:1: error: domain-macro needs a name and at least one value" },
	{ "domain-macro a.b x",
	  "t.conf:1: error: invalid domain-macro name 'a.b' "
	  "(letters, digits, '_' and '-' only)" },

	/* several errors in one pass */
	{ "<source x>\nq \"open\n</domain>\n<domain $u>\n</domain>",
	  "t.conf:2: error: unterminated quoted string\n"
	  "t.conf:3: error: </domain> closes <source> opened at t.conf:1\n"
	  "t.conf:4: error: undefined domain-macro 'u'" },
};

ParameterizedTestParameters(syntax, diagnostics)
{
	return index_params(ARRAY_SIZE(diag_cases));
}

ParameterizedTest(size_t *i, syntax, diagnostics)
{
	const struct diag_case *c = &diag_cases[*i];
	struct parsed r;

	parse_text(&r, c->text, strlen(c->text));
	char *got = diags_text(&r.diags, NULL);

	cr_expect_eq(r.ret, -EINVAL, "input:\n%s", c->text);
	cr_expect_str_eq(got, c->diags, "input:\n%s", c->text);
	free(got);
	parsed_free(&r);
}

/* ---- single cases ---- */

Test(syntax, locations)
{
	static const char text[] =
		"\n# c\na 1\n<domain x>\n\n  b 2\n</domain>\n<source y>\n</source>";
	struct parsed r;

	parse_text(&r, text, strlen(text));
	char *got = dump(&r.tree, true, NULL);

	cr_expect_eq(r.ret, 0);
	cr_expect_str_eq(got, "t.conf:3:D a [1]; t.conf:4:B domain(x) "
				"{ t.conf:6:D b [2] }; t.conf:8:B source(y) {}");
	free(got);
	parsed_free(&r);
}

Test(syntax, nul_byte_is_an_error)
{
	static const char text[] = "a 1\nb \0 2\nc 3";
	struct parsed r;

	parse_text(&r, text, sizeof(text) - 1);
	char *got = diags_text(&r.diags, NULL);
	char *tree = dump(&r.tree, false, NULL);

	cr_expect_eq(r.ret, -EINVAL);
	cr_expect_str_eq(got, "t.conf:2: error: NUL byte in line");
	cr_expect_str_eq(tree, "D a [1]; D c [3]");
	free(got);
	free(tree);
	parsed_free(&r);
}

Test(syntax, line_too_long)
{
	size_t n = 64 * 1024 + 1;
	char *text = xmalloc(n + 16);
	struct parsed r;

	memcpy(text, "ok 1\na ", 7);
	memset(text + 7, 'x', n - 2);
	memcpy(text + 5 + n, "\nb 2", 5);
	parse_text(&r, text, strlen(text));
	char *got = diags_text(&r.diags, NULL);
	char *tree = dump(&r.tree, false, NULL);

	cr_expect_eq(r.ret, -EINVAL);
	cr_expect_str_eq(got, "t.conf:2: error: line too long (limit 65536 bytes)");
	cr_expect_str_eq(tree, "D ok [1]; D b [2]");
	free(got);
	free(tree);
	free(text);
	parsed_free(&r);
}

Test(syntax, longest_line_is_accepted)
{
	size_t n = 64 * 1024;
	char *text = xmalloc(n + 1);
	struct parsed r;

	memcpy(text, "a ", 2);
	memset(text + 2, 'x', n - 2);
	text[n] = '\0';
	parse_text(&r, text, n);
	cr_expect_eq(r.ret, 0);
	cr_expect_eq(r.diags.count, 0);
	free(text);
	parsed_free(&r);
}

Test(syntax, nesting_depth_is_capped)
{
	struct strbuf sb = { 0 };
	struct parsed r;

	for (int i = 0; i < 16; i++)
		sb_adds(&sb, "<a>\n");
	for (int i = 0; i < 16; i++)
		sb_adds(&sb, "</a>\n");
	parse_text(&r, sb_str(&sb), sb.len);
	cr_expect_eq(r.ret, 0, "16 levels are allowed");
	parsed_free(&r);

	sb_reset(&sb);
	for (int i = 0; i < 17; i++)
		sb_adds(&sb, "<a>\n");
	parse_text(&r, sb_str(&sb), sb.len);
	char *got = diags_text(&r.diags, NULL);

	cr_expect_eq(r.ret, -EINVAL);
	cr_expect_str_eq(got,
			 "t.conf:17: error: blocks nested too deeply (limit 16)");
	free(got);
	sb_free(&sb);
	parsed_free(&r);
}

Test(syntax, errors_are_capped)
{
	struct strbuf sb = { 0 };
	struct parsed r;

	for (int i = 0; i < 1000; i++)
		sb_adds(&sb, "a \"\n");
	parse_text(&r, sb_str(&sb), sb.len);
	cr_expect_eq(r.ret, -EINVAL);
	cr_expect_lt(r.diags.count, 200);
	cr_expect_not_null(diag_find(&r.diags, "too many errors; giving up"));
	sb_free(&sb);
	parsed_free(&r);
}

Test(syntax, macro_expansion_is_capped)
{
	/* 16^5 values: more than one argument may expand to. */
	static const char text[] =
		"domain-macro a 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f\n"
		"domain-macro b $a$a$a$a$a\n";
	struct parsed r;

	parse_text(&r, text, strlen(text));
	char *got = diags_text(&r.diags, NULL);

	cr_expect_eq(r.ret, -EINVAL);
	cr_expect_str_eq(got, "t.conf:2: error: domain-macro expansion of "
				"'$a$a$a$a$a' is too large (limit 65536 values)");
	free(got);
	parsed_free(&r);
}

Test(syntax, node_count_is_capped)
{
	size_t lines = 1000001;
	char *text = xmalloc(lines * 2 + 1);
	struct parsed r;

	for (size_t i = 0; i < lines; i++)
		memcpy(text + 2 * i, "a\n", 2);
	parse_text(&r, text, lines * 2);
	char *got = diags_text(&r.diags, NULL);

	cr_expect_eq(r.ret, -EINVAL);
	cr_expect_str_eq(got, "t.conf:1000001: error: too many config nodes "
				"(limit 1000000)");
	free(got);
	free(text);
	parsed_free(&r);
}

Test(syntax, missing_root_file)
{
	struct arena *a = arena_new();
	struct diag_list dl = { 0 };
	struct cfg_tree t;

	cr_expect_eq(cfg_syntax_parse_file(a, "/nonexistent/coremta.conf", &t,
					   &dl), -EINVAL);
	char *got = diags_text(&dl, NULL);

	cr_expect_str_eq(got, "/nonexistent/coremta.conf: error: cannot open "
				"config file: No such file or directory");
	cr_expect_null(t.root);
	free(got);
	diag_free(&dl);
	arena_free(a);
}

Test(syntax, name_orig_keeps_case)
{
	static const char text[] =
		"<Bounce-Category-Patterns>\n/Mailbox Full/i Quota\n"
		"Regex \"5\\.2\\.2\" x\n</bounce-category-patterns>";
	struct parsed r;

	parse_text(&r, text, strlen(text));
	cr_assert_eq(r.ret, 0);

	const struct cfg_node *b = r.tree.root, *d = b->children;

	cr_expect_str_eq(b->name, "bounce-category-patterns");
	cr_expect_str_eq(b->name_orig, "Bounce-Category-Patterns");
	cr_expect_str_eq(d->name, "/mailbox full/i");
	cr_expect_str_eq(d->name_orig, "/Mailbox Full/i");
	cr_expect_str_eq(d->words[0], "Quota");
	cr_expect_str_eq(d->next->name, "regex");
	cr_expect_str_eq(d->next->name_orig, "Regex");
	parsed_free(&r);
}

/* cfg_syntax_expand - the model's way to expand directive words */
Test(syntax, expand_words)
{
	static const char text[] =
		"domain-macro t com,co.uk\ndomain-macro h mx,$t\n"
		"domain-macro a $b\ndomain-macro b $a\n";
	struct parsed r;
	const char **out;
	size_t n;

	parse_text(&r, text, strlen(text));
	cr_assert_eq(r.ret, -EINVAL, "the a/b loop is reported once");
	cr_expect_eq(r.diags.count, 1);

	cr_assert_eq(cfg_syntax_expand(&r.tree, r.a, "yahoo.$t", &out, &n), 0);
	cr_assert_eq(n, 2);
	cr_expect_str_eq(out[0], "yahoo.com");
	cr_expect_str_eq(out[1], "yahoo.co.uk");

	cr_assert_eq(cfg_syntax_expand(&r.tree, r.a, "$h", &out, &n), 0);
	cr_assert_eq(n, 3);
	cr_expect_str_eq(out[2], "co.uk");

	cr_assert_eq(cfg_syntax_expand(&r.tree, r.a, "plain.com", &out, &n), 0);
	cr_assert_eq(n, 1);
	cr_expect_str_eq(out[0], "plain.com");

	cr_expect_eq(cfg_syntax_expand(&r.tree, r.a, "x.$nope", &out, &n),
		     -EINVAL);
	cr_expect_eq(n, 0);
	cr_expect_eq(cfg_syntax_expand(&r.tree, r.a, "$a", &out, &n), -EINVAL);
	cr_expect_eq(r.diags.count, 1, "expand adds no diagnostics");
	parsed_free(&r);

	parse_text(&r, "a 1", 3);
	cr_expect_null(r.tree.macros);
	cr_expect_eq(cfg_syntax_expand(&r.tree, r.a, "$t", &out, &n), -EINVAL);
	cr_expect_eq(cfg_syntax_expand(&r.tree, r.a, "t", &out, &n), 0);
	parsed_free(&r);
}

/* ---- include ---- */

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	return remove(path);
}

/* make_tree - write name/content pairs under dir; "{D}" becomes dir */
static void make_tree(const char *dir, const char *const *files)
{
	for (size_t i = 0; files[i]; i += 2) {
		char *path = xasprintf("%s/%s", dir, files[i]);
		char *text = testlib_replace_all(files[i + 1], "{D}", dir);

		for (char *s = strchr(path + strlen(dir) + 1, '/'); s;
		     s = strchr(s + 1, '/')) {
			*s = '\0';
			cr_assert(mkdir(path, 0700) == 0 || errno == EEXIST);
			*s = '/';
		}
		if (str_has_suffix_ci(path, "/")) {
			cr_assert(mkdir(path, 0700) == 0 || errno == EEXIST);
		} else {
			FILE *f = fopen(path, "w");

			cr_assert_not_null(f, "%s: %s", path, strerror(errno));
			fputs(text, f);
			fclose(f);
		}
		free(path);
		free(text);
	}
}

struct include_case {
	const char *files[16];	/* name, content, ...; entry is main.conf */
	const char *dump;	/* with locations */
	const char *diags;
	int ret;
};

static const struct include_case include_cases[] = {
	{ { "main.conf", "a 1\ninclude sub/b.conf\nc 3\n",
	    "sub/b.conf", "# b\nb 2\n" },
	  "main.conf:1:D a [1]; sub/b.conf:2:D b [2]; main.conf:3:D c [3]",
	  "", 0 },
	/* Relative to the including file, not to the root. */
	{ { "main.conf", "include sub/b.conf\n",
	    "sub/b.conf", "include c.conf\n",
	    "sub/c.conf", "c 3\n" },
	  "sub/c.conf:1:D c [3]", "", 0 },
	{ { "main.conf", "include \"{D}/abs dir/x.conf\"\n",
	    "abs dir/x.conf", "x 1\n" },
	  "abs dir/x.conf:1:D x [1]", "", 0 },
	{ { "main.conf", "<domain x>\ninclude d.conf\n</domain>\ne 5\n",
	    "d.conf", "max-smtp-out 5\n<smtp-pattern-list p>\n"
		      "include p.conf\n</smtp-pattern-list>\n",
	    "p.conf", "reply /^421/ mode=backoff\n" },
	  "main.conf:1:B domain(x) { d.conf:1:D max-smtp-out [5]; "
	  "d.conf:2:B smtp-pattern-list(p) { "
	  "p.conf:1:D reply [/^421/] [mode=backoff] } }; "
	  "main.conf:4:D e [5]",
	  "", 0 },
	{ { "main.conf", "include conf.d/*.conf\n",
	    "conf.d/b.conf", "b 2\n",
	    "conf.d/a.conf", "a 1\n",
	    "conf.d/B.conf", "B 0\n",
	    "conf.d/c.txt", "c 3\n",
	    "conf.d/old.conf/", "" },
	  "conf.d/B.conf:1:D b [0]; conf.d/a.conf:1:D a [1]; "
	  "conf.d/b.conf:1:D b [2]",
	  "", 0 },
	{ { "main.conf", "a 1\ninclude conf.d/*.conf\n",
	    "conf.d/", "" },
	  "main.conf:1:D a [1]",
	  "main.conf:2: warning: include pattern 'conf.d/*.conf' "
	  "matches no file", 0 },
	{ { "main.conf", "include nope.conf\n" },
	  NULL,
	  "main.conf:1: error: cannot open included file 'nope.conf': "
	  "No such file or directory", -EINVAL },
	{ { "main.conf", "include sub\n", "sub/", "" },
	  NULL,
	  "main.conf:1: error: cannot open included file 'sub': "
	  "Is a directory", -EINVAL },
	{ { "main.conf", "include main.conf\n" },
	  NULL,
	  "main.conf:1: error: include loop: main.conf -> main.conf",
	  -EINVAL },
	{ { "main.conf", "include a.conf\n",
	    "a.conf", "include b.conf\n",
	    "b.conf", "include ./a.conf\n" },
	  NULL,
	  "b.conf:1: error: include loop: a.conf -> b.conf "
	  "-> ./a.conf", -EINVAL },
	/* Including the same file twice side by side is no loop. */
	{ { "main.conf", "include a.conf\ninclude a.conf\n",
	    "a.conf", "a 1\n" },
	  "a.conf:1:D a [1]; a.conf:1:D a [1]", "", 0 },
	{ { "main.conf", "include a.conf\n", "a.conf", "<domain x>\n" },
	  NULL,
	  "a.conf:1: error: <domain> opened here is never closed",
	  -EINVAL },
	{ { "main.conf", "<domain x>\ninclude a.conf\n",
	    "a.conf", "</domain>\n" },
	  NULL,
	  "a.conf:1: error: </domain> closes <domain> opened in another "
	  "file (main.conf:1); a block must close in the file that "
	  "opens it\n"
	  "main.conf:1: error: <domain> opened here is never closed",
	  -EINVAL },
	{ { "main.conf", "<domain x>\ninclude a.conf\n</domain>\n",
	    "a.conf", "<smtp-user u>\ninclude b.conf\n</smtp-user>\n",
	    "b.conf", "" },
	  NULL,
	  "a.conf:2: error: include is not allowed inside <smtp-user>",
	  -EINVAL },
	{ { "main.conf", "<virtual-mta v>\ninclude a.conf\n"
			 "</virtual-mta>\n",
	    "a.conf", "include b.conf\n",
	    "b.conf", "<domain *>\n</domain>\n" },
	  "main.conf:1:B virtual-mta(v) { b.conf:1:B domain(*) {} }",
	  "", 0 },
	/* Macros are collected over the whole tree. */
	{ { "main.conf", "<domain yahoo.$t>\n</domain>\ninclude m.conf\n",
	    "m.conf", "domain-macro t com,net\n" },
	  "main.conf:1:B domain(~yahoo.com,~yahoo.net) {}; "
	  "m.conf:1:D domain-macro [t] [com,net]",
	  "", 0 },
	{ { "main.conf", "domain-macro t com\ninclude m.conf\n",
	    "m.conf", "\ndomain-macro t net\n" },
	  NULL,
	  "m.conf:2: error: domain-macro 't' redefined (first defined "
	  "at main.conf:1)", -EINVAL },
};

ParameterizedTestParameters(syntax, include)
{
	return index_params(ARRAY_SIZE(include_cases));
}

ParameterizedTest(size_t *i, syntax, include)
{
	const struct include_case *c = &include_cases[*i];
	char tmpl[] = "/tmp/coremta-syntax-XXXXXX";
	char *dir = mkdtemp(tmpl);

	cr_assert_not_null(dir);
	make_tree(dir, c->files);

	char *main_conf = xasprintf("%s/main.conf", dir);
	struct arena *a = arena_new();
	struct diag_list dl = { 0 };
	struct cfg_tree t;
	int ret = cfg_syntax_parse_file(a, main_conf, &t, &dl);
	char *got = diags_text(&dl, dir);
	char *tree = dump(&t, true, dir);

	cr_expect_eq(ret, c->ret, "diags:\n%s", got);
	cr_expect_str_eq(got, c->diags);
	if (c->dump)
		cr_expect_str_eq(tree, c->dump);
	free(got);
	free(tree);
	free(main_conf);
	diag_free(&dl);
	arena_free(a);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

Test(syntax, include_depth_is_capped)
{
	char tmpl[] = "/tmp/coremta-syntax-XXXXXX";
	char *dir = mkdtemp(tmpl);

	cr_assert_not_null(dir);
	for (int i = 0; i <= 17; i++) {
		char *path = xasprintf("%s/f%d.conf", dir, i);
		FILE *f = fopen(path, "w");

		cr_assert_not_null(f);
		fprintf(f, "include f%d.conf\n", i + 1);
		fclose(f);
		free(path);
	}

	char *root = xasprintf("%s/f0.conf", dir);
	struct arena *a = arena_new();
	struct diag_list dl = { 0 };
	struct cfg_tree t;
	int ret = cfg_syntax_parse_file(a, root, &t, &dl);
	char *got = diags_text(&dl, dir);

	cr_expect_eq(ret, -EINVAL);
	cr_expect_str_eq(got,
			 "f16.conf:1: error: includes nested too deeply (limit 16)");
	free(got);
	free(root);
	diag_free(&dl);
	arena_free(a);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

Test(syntax, string_includes_resolve_against_base_dir)
{
	char tmpl[] = "/tmp/coremta-syntax-XXXXXX";
	char *dir = mkdtemp(tmpl);
	static const char *const files[] = { "inc.conf", "x 1\n", NULL };
	static const char text[] = "include inc.conf\n";

	cr_assert_not_null(dir);
	make_tree(dir, files);

	struct arena *a = arena_new();
	struct diag_list dl = { 0 };
	struct cfg_tree t;
	int ret = cfg_syntax_parse_string(a, "default", text, strlen(text),
					  dir, &t, &dl);
	char *tree = dump(&t, true, dir);

	cr_expect_eq(ret, 0);
	cr_expect_eq(dl.count, 0);
	cr_expect_str_eq(tree, "inc.conf:1:D x [1]");
	free(tree);
	diag_free(&dl);
	arena_free(a);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the reference configurations ---- */

/* find_block - the first block named name among n and its siblings */
static const struct cfg_node *find_node(const struct cfg_node *n,
					const char *name)
{
	for (; n; n = n->next)
		if (strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

/* parse_data_config - one of the project's own test configurations */
static void parse_data_config(const char *file, struct arena *a,
			      struct cfg_tree *t)
{
	char *path = xasprintf("data/configs/%s", file);
	struct diag_list dl = { 0 };
	int ret = cfg_syntax_parse_file(a, path, t, &dl);
	char *got = diags_text(&dl, NULL);

	cr_expect_eq(ret, 0, "%s:\n%s", path, got);
	free(got);
	free(path);
	diag_free(&dl);
}

Test(syntax, guide_conf)
{
	struct arena *a = arena_new();
	struct cfg_tree t;

	parse_data_config("guide.conf", a, &t);

	const struct cfg_node *b = find_node(t.root, "bounce-category-patterns");

	cr_assert_not_null(b);
	struct strbuf sb = { 0 };

	dump_nodes(&sb, b->children, false);
	cr_expect_str_eq(sb_str(&sb), "D regex [5\\.2\\.2] [action] [delete]; "
				      "D /5\\.1\\.[1346]/ [bad-mailbox]");
	sb_free(&sb);
	arena_free(a);
}

Test(syntax, esp_demo_conf)
{
	struct arena *a = arena_new();
	struct cfg_tree t;

	parse_data_config("esp-demo.conf", a, &t);

	const struct cfg_node *n = find_node(t.root, "log-file");

	cr_assert_not_null(n);
	cr_expect_eq(n->nwords, 1);
	cr_expect_str_eq(n->words[0], "/var/log/pmta/pmta.log");

	n = find_node(t.root, "domain-key");
	cr_assert_not_null(n);
	cr_expect_str_eq(n->raw, "s1, esp.example.net,  ../dkim/rsa2048.key");

	n = find_node(t.root, "smtp-user");
	cr_assert_not_null(n);
	cr_assert_not_null(n->children);
	cr_expect_str_eq(n->children->name, "password");
	cr_expect_eq(n->children->nwords, 0, "## starts a comment");

	n = find_node(t.root, "acct-file");
	n = n ? find_node(n->next, "acct-file") : NULL;
	cr_assert_not_null(n);
	cr_expect_str_eq(n->block_raw,
			 "|/usr/local/bin/acct-loader --log loader.log");

	n = find_node(t.root, "virtual-mta-pool");
	cr_assert_not_null(n);
	struct strbuf sb = { 0 };

	dump_nodes(&sb, n->children, false);
	cr_expect_str_eq(sb_str(&sb),
			 "D virtual-mta [main1]; B domain(*) { "
			 "D max-smtp-out [20]; D bounce-after [4d12h]; "
			 "D retry-after [10m]; D dkim-sign [yes] }");
	sb_free(&sb);
	arena_free(a);
}

/* Rules wrapped inside their regex are joined, with one warning each. */
Test(syntax, wrapped_regex_rules_are_joined)
{
	static const char text[] =
		"<bounce-category-patterns>\n"
		"    /(disabled|expired|inactive|not activa\n"
		"ted)/ inactive-mailbox\n"
		"    /a\n"
		"b\n"
		"c/ other\n"
		"    // other    # catch-all\n"
		"</bounce-category-patterns>\n"
		"<smtp-pattern-list x>\n"
		"    reply /^421 too many\n"
		" connections/ mode=backoff\n"
		"</smtp-pattern-list>\n";
	struct arena *a = arena_new();
	struct cfg_tree t;
	struct diag_list dl = { 0 };

	cr_assert_eq(cfg_syntax_parse_string(a, "w.conf", text, strlen(text), NULL,
					     &t, &dl), 0);
	char *got = diags_text(&dl, NULL);
	cr_expect(strstr(got, "w.conf:2: warning: the /regex/ on this line is not closed before line 3 ends it; lines 2-3 are joined as '/(disabled|expired|inactive|not activated)/ inactive-mailbox'"),
		  "%s", got);
	cr_expect(strstr(got, "w.conf:4: warning: the /regex/ on this line is not closed before line 6 ends it; lines 4-6 are joined as '/abc/ other'"),
		  "%s", got);
	cr_expect(strstr(got, "w.conf:10: warning: the /regex/ on this line is not closed before line 11 ends it; lines 10-11 are joined as 'reply /^421 too many connections/ mode=backoff'"),
		  "%s", got);
	cr_expect_eq(dl.count, 3, "%s", got);

	struct strbuf sb = { 0 };
	dump_nodes(&sb, t.root->children, false);
	cr_expect_str_eq(sb_str(&sb),
			 "D /(disabled|expired|inactive|not activated)/ [inactive-mailbox]; "
			 "D /abc/ [other]; D // [other]");
	sb_reset(&sb);
	dump_nodes(&sb, t.root->next->children, false);
	cr_expect_str_eq(sb_str(&sb), "D reply [/^421 too many connections/] [mode=backoff]");
	cr_expect_eq(t.root->children->next->line, 4, "the rule is located where it starts");
	cr_expect_eq(t.root->children->next->next->line, 7, "later lines keep their numbers");
	sb_free(&sb);
	free(got);
	diag_free(&dl);
	arena_free(a);
}

/* An unclosed regex that a blank line or a tag ends is not joined. */
Test(syntax, unclosed_regex_before_blank_line_is_not_joined)
{
	static const char text[] =
		"<bounce-category-patterns>\n"
		"    /abc other\n"
		"\n"
		"    /def/ other\n"
		"</bounce-category-patterns>\n";
	struct arena *a = arena_new();
	struct cfg_tree t;
	struct diag_list dl = { 0 };

	cfg_syntax_parse_string(a, "u.conf", text, strlen(text), NULL, &t, &dl);
	cr_expect_null(diag_find(&dl, "joined"));
	struct strbuf sb = { 0 };
	dump_nodes(&sb, t.root->children, false);
	cr_expect_str_eq(sb_str(&sb), "D /abc [other]; D /def/ [other]");
	sb_free(&sb);
	diag_free(&dl);
	arena_free(a);
}

/* A missing '>' is an error, and the lines after it are still read. */
Test(syntax, missing_angle_bracket_recovers)
{
	static const char text[] =
		"<domain x.test\n"
		"    max-smtp-out 5\n"
		"</domain>\n"
		"<source 1.2.3.4>\n"
		"</source>\n";
	struct arena *a = arena_new();
	struct cfg_tree t;
	struct diag_list dl = { 0 };

	cr_expect_eq(cfg_syntax_parse_string(a, "m.conf", text, strlen(text), NULL,
					     &t, &dl), -EINVAL);
	char *got = diags_text(&dl, NULL);
	cr_expect_eq(dl.errors, 1, "%s", got);
	cr_expect(strstr(got, "m.conf:1: error: malformed tag: missing '>'"), "%s", got);
	cr_expect(t.complete);
	struct strbuf sb = { 0 };
	dump_nodes(&sb, t.root, false);
	cr_expect_str_eq(sb_str(&sb), "B domain(x.test) { D max-smtp-out [5] }; B source(1.2.3.4) {}");
	sb_free(&sb);
	free(got);
	diag_free(&dl);
	arena_free(a);
}
