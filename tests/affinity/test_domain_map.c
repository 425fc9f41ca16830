/*
 * tests/affinity/test_domain_map.c - the domain -> shard map: operator
 * pins win (most specific pattern), other domains spread by consistent
 * hash, and growing the shard count moves few domains.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "affinity/affinity.h"
#include "tests/lib/testlib.h"

static const char *pins_conf =
	"shards 4\n"
	"domain-macro ms outlook.com,hotmail.com\n"
	"<shard 3>\n"
	"    cpu 3\n"
	"    domain gmail.com, [*.]google.com\n"
	"</shard>\n"
	"<shard 2>\n"
	"    domain $ms\n"
	"    domain *.yahoo.com\n"
	"</shard>\n";

static struct domain_map *build(const char *text, uint32_t shards, struct cfg **cfg)
{
	struct diag_list dl = { 0 };
	struct domain_map *map = NULL;

	*cfg = testlib_load(text, &dl);
	char *t = testlib_diag_text(&dl);
	cr_assert_not_null(*cfg, "%s", t);
	free(t);
	cr_assert_eq(domain_map_new(*cfg, shards, &map, &dl), 0);
	diag_free(&dl);
	return map;
}

Test(domain_map, pins_win_most_specific_first)
{
	struct cfg *cfg;
	struct domain_map *map = build(pins_conf, 4, &cfg);
	static const struct { const char *d; uint32_t shard; const char *by; } cases[] = {
		{ "gmail.com", 3, "gmail.com" },
		{ "GMAIL.COM.", 3, "gmail.com" },
		{ "google.com", 3, "[*.]google.com" },
		{ "mail.google.com", 3, "[*.]google.com" },
		{ "outlook.com", 2, "outlook.com" },
		{ "hotmail.com", 2, "hotmail.com" },
		{ "mx.yahoo.com", 2, "*.yahoo.com" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		cr_expect_eq(domain_map_shard(map, cases[i].d), cases[i].shard, "%s", cases[i].d);
		cr_expect_str_eq(domain_map_pinned_by(map, cases[i].d), cases[i].by);
	}
	/* *.yahoo.com does not cover yahoo.com itself: it is hashed */
	cr_expect_null(domain_map_pinned_by(map, "yahoo.com"));
	cr_expect_lt(domain_map_shard(map, "yahoo.com"), 4);
	domain_map_free(map);
	cfg_free(cfg);
}

Test(domain_map, hash_spreads_and_is_stable)
{
	struct cfg *cfg;
	struct domain_map *m4 = build("shards 4\n", 4, &cfg);
	struct domain_map *m5 = NULL;
	struct diag_list dl = { 0 };
	unsigned counts[4] = { 0 }, moved = 0;
	const unsigned n = 20000;

	cr_assert_eq(domain_map_new(cfg, 5, &m5, &dl), 0);
	for (unsigned i = 0; i < n; i++) {
		char d[64];
		snprintf(d, sizeof(d), "d%u.example", i);
		uint32_t s4 = domain_map_shard(m4, d);
		cr_assert_lt(s4, 4);
		counts[s4]++;
		cr_assert_eq(domain_map_shard(m4, d), s4, "not deterministic");
		uint32_t s5 = domain_map_shard(m5, d);
		if (s5 != s4) {
			moved++;
			cr_assert_eq(s5, 4, "a domain moved between old shards");
		}
	}
	for (int s = 0; s < 4; s++)
		cr_expect(counts[s] > n / 4 * 9 / 10 && counts[s] < n / 4 * 11 / 10,
			  "shard %d has %u of %u", s, counts[s], n);
	/* jump hash: about 1/5 of the domains move to the new shard */
	cr_expect(moved > n / 5 * 8 / 10 && moved < n / 5 * 12 / 10, "moved %u", moved);
	domain_map_free(m4);
	domain_map_free(m5);
	diag_free(&dl);
	cfg_free(cfg);
}

Test(domain_map, pin_beyond_host_shards_is_an_error)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load("<shard 5>\n  domain x.org\n</shard>\n", &dl);
	struct domain_map *map = NULL;

	cr_assert_not_null(cfg);
	cr_expect_lt(domain_map_new(cfg, 2, &map, &dl), 0);
	cr_expect_null(map);
	char *t = testlib_diag_text(&dl);
	cr_expect(strstr(t, "test.conf:1: error: <shard 5> does not exist on this host: it runs 2 shards (0 to 1)"),
		  "%s", t);
	free(t);
	diag_free(&dl);
	cfg_free(cfg);
}

Test(domain_map, shard_count_auto_uses_cores)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load("shards auto\n", &dl);
	uint32_t n = 0;
	char e[128];

	cr_assert_not_null(cfg);
	cr_assert_eq(affinity_shard_count(cfg, &n, e, sizeof(e)), 0, "%s", e);
	cr_expect_geq(n, 1);
	cfg_free(cfg);
	cfg = testlib_load("shards 7\nallow-shard-oversubscription yes\n", &dl);
	cr_assert_eq(affinity_shard_count(cfg, &n, e, sizeof(e)), 0);
	cr_expect_eq(n, 7);
	cfg_free(cfg);
	diag_free(&dl);
}
