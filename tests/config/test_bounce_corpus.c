/*
 * tests/config/test_bounce_corpus.c - the built-in bounce classification
 * against a corpus of real rejection texts (tests/data/bounce-corpus.tsv,
 * with the category a deliverability engineer would give each one), and
 * an operator rule in <bounce-category-patterns> winning over the set.
 *
 * Runs with cwd = tests/, like the other suites that read data/.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "tests/lib/testlib.h"

#define CORPUS "data/bounce-corpus.tsv"

struct entry {
	int line;
	char *expected;
	char *status_diag;
};

struct corpus {
	struct entry *e;
	size_t n, cap;
};

/* corpus_read - every entry of the TSV; a malformed line fails the test. */
static void corpus_read(struct corpus *c)
{
	FILE *f = fopen(CORPUS, "r");
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	int line = 0;

	cr_assert_not_null(f, "cannot open %s (the suite runs from tests/)", CORPUS);
	memset(c, 0, sizeof(*c));
	while ((len = getline(&buf, &cap, f)) >= 0) {
		line++;
		while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
			buf[--len] = '\0';
		if (len == 0 || buf[0] == '#')
			continue;
		char *tab1 = strchr(buf, '\t');
		char *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
		cr_assert(tab1 && tab2 && !strchr(tab2 + 1, '\t'),
			  "%s:%d: want 3 TAB-separated columns: %s", CORPUS, line, buf);
		*tab1 = *tab2 = '\0';
		cr_assert(tab1 > buf && tab2 > tab1 + 1 && tab2[1],
			  "%s:%d: empty column", CORPUS, line);
		if (c->n == c->cap) {
			c->cap = c->cap ? 2 * c->cap : 64;
			c->e = xrealloc(c->e, c->cap * sizeof(*c->e));
		}
		c->e[c->n++] = (struct entry){
			.line = line,
			.expected = xstrdup(buf),
			.status_diag = xstrdup(tab1 + 1),
		};
	}
	free(buf);
	fclose(f);
}

static void corpus_free(struct corpus *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->e[i].expected);
		free(c->e[i].status_diag);
	}
	free(c->e);
	memset(c, 0, sizeof(*c));
}

/* Reports every mismatch before failing, so one run shows the whole list. */
Test(bounce_corpus, builtin_rules_classify_every_entry)
{
	struct cfg *cfg = testlib_load_ok("");
	struct corpus c;
	size_t bad = 0;

	corpus_read(&c);
	for (size_t i = 0; i < c.n; i++) {
		const struct entry *e = &c.e[i];
		const char *got = NULL;
		cfg_bounce_classify(cfg, e->status_diag, &got);
		if (strcmp(got, e->expected) != 0) {
			bad++;
			cr_log_error("%s:%d: %s\n    expected %s, got %s", CORPUS,
				     e->line, e->status_diag, e->expected, got);
		}
	}
	cr_expect_eq(bad, 0, "%zu of %zu corpus entries misclassified", bad, c.n);
	corpus_free(&c);
	cfg_free(cfg);
}

Test(bounce_corpus, covers_enough_texts_and_categories)
{
	static const char *const known[] = {
		"bad-configuration", "bad-connection", "bad-domain", "bad-mailbox",
		"content-related", "inactive-mailbox", "invalid-sender",
		"message-expired", "no-answer-from-host", "other", "policy-related",
		"protocol-errors", "quota-issues", "relaying-issues", "routing-errors",
		"spam-related", "virus-related",
	};
	bool seen[sizeof(known) / sizeof(known[0])] = { 0 };
	size_t distinct = 0;
	struct corpus c;

	corpus_read(&c);
	cr_expect_geq(c.n, 50, "only %zu entries", c.n);
	for (size_t i = 0; i < c.n; i++) {
		size_t k = 0;
		while (k < sizeof(known) / sizeof(known[0]) &&
		       strcmp(known[k], c.e[i].expected) != 0)
			k++;
		cr_expect(k < sizeof(known) / sizeof(known[0]),
			  "%s:%d: '%s' is not a PowerMTA bounce category", CORPUS,
			  c.e[i].line, c.e[i].expected);
		if (k < sizeof(known) / sizeof(known[0]) && !seen[k]) {
			seen[k] = true;
			distinct++;
		}
		/* "X.Y.Z;" first, as the SMTP client builds it */
		const char *s = c.e[i].status_diag;
		unsigned a, b, d;
		int used = 0;
		cr_expect(sscanf(s, "%1u.%3u.%3u;%n", &a, &b, &d, &used) == 3 &&
			  used > 0 && (a == 4 || a == 5),
			  "%s:%d: status_diag must start with \"X.Y.Z;\": %s",
			  CORPUS, c.e[i].line, s);
	}
	cr_expect_geq(distinct, 12, "only %zu distinct categories", distinct);
	corpus_free(&c);
}

/*
 * An operator rule comes before the built-in set: it changes the one
 * corpus line it matches and no other.
 */
Test(bounce_corpus, operator_rule_overrides_builtin)
{
	struct cfg *plain = testlib_load_ok("");
	struct cfg *cfg = testlib_load_ok(
		"<bounce-category-patterns>\n"
		"    /\\[TSS04\\]/ policy-related\n"
		"</bounce-category-patterns>\n");
	struct corpus c;
	size_t changed = 0;

	corpus_read(&c);
	for (size_t i = 0; i < c.n; i++) {
		const char *mine = NULL, *builtin = NULL;
		const struct cfg_bounce_rule *r =
			cfg_bounce_classify(cfg, c.e[i].status_diag, &mine);
		cfg_bounce_classify(plain, c.e[i].status_diag, &builtin);
		if (!strstr(c.e[i].status_diag, "[TSS04]")) {
			cr_expect_str_eq(mine, builtin, "%s:%d", CORPUS, c.e[i].line);
			continue;
		}
		changed++;
		cr_expect_str_eq(builtin, "spam-related");
		cr_expect_str_eq(mine, "policy-related");
		cr_expect_str_eq(r->origin.file, "test.conf");
		cr_expect_eq(r->origin.line, 2);
	}
	cr_expect_eq(changed, 1, "the rule should match exactly one corpus line");
	corpus_free(&c);
	cfg_free(cfg);
	cfg_free(plain);
}
