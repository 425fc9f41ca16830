/*
 * tests/util/test_hash.c - FNV-1a against the published test vectors, the
 * lower-casing variant, and the table through growth.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "util/hash.h"

Test(hash, fnv1a_vectors)
{
	/* from the FNV reference (Fowler/Noll/Vo test suite) */
	cr_expect_eq(hash_str(HASH_SEED, ""), 0xcbf29ce484222325ull);
	cr_expect_eq(hash_str(HASH_SEED, "a"), 0xaf63dc4c8601ec8cull);
	cr_expect_eq(hash_str(HASH_SEED, "foobar"), 0x85944171f73967e8ull);
	cr_expect_eq(hash_bytes(HASH_SEED, "foobar", 6), 0x85944171f73967e8ull);
	cr_expect_eq(hash_str_lower(HASH_SEED, "FooBAR"), 0x85944171f73967e8ull);
	/* chaining continues the hash: "foo" then "bar" is "foobar" */
	cr_expect_eq(hash_str(hash_str(HASH_SEED, "foo"), "bar"), 0x85944171f73967e8ull);
	cr_expect_neq(hash_mix(1), hash_mix(2));
	cr_expect_eq(hash_mix(0), 0, "the finaliser maps 0 to 0");
}

struct named {
	char name[24];
};

static uint64_t named_hash(const void *item)
{
	return hash_str(HASH_SEED, ((const struct named *)item)->name);
}

static bool named_eq(const void *item, const void *key)
{
	return strcmp(((const struct named *)item)->name, key) == 0;
}

Test(hash, table_grows_and_finds_every_item)
{
	enum { N = 5000 };
	static struct named items[N];
	struct hash_tab t = { 0 };

	cr_expect_null(hash_tab_find(&t, 1, named_eq, "x"), "an empty table finds nothing");
	for (int i = 0; i < N; i++) {
		snprintf(items[i].name, sizeof(items[i].name), "d%d.example", i);
		hash_tab_add(&t, named_hash(&items[i]), &items[i], named_hash);
	}
	cr_expect_eq(t.count, N);
	cr_expect_geq(t.cap, 2 * N, "the table stays at most half full");
	for (int i = 0; i < N; i++)
		cr_expect_eq(hash_tab_find(&t, named_hash(&items[i]), named_eq, items[i].name),
			     &items[i], "item %d lost", i);
	cr_expect_null(hash_tab_find(&t, hash_str(HASH_SEED, "absent"), named_eq, "absent"));
	size_t seen = 0;
	HASH_TAB_EACH(&t, struct named, it)
		seen += it >= items && it < items + N;
	cr_expect_eq(seen, N);
	hash_tab_free(&t);
	cr_expect_eq(t.cap, 0);
}

/* A weak hash (a few bits) makes long runs that wrap around the table. */
static uint64_t weak_hash(const void *item)
{
	return (uint64_t)(((const struct named *)item)->name[0] & 3) + 60;
}

/*
 * Removal against a model: random adds and removes, every item findable
 * until removed, never after, and the count right, with runs that wrap
 * past the table's end (weak_hash puts every home near slot 60 of 64).
 */
Test(hash, remove_keeps_every_other_item_findable)
{
	enum { N = 28 };
	static struct named items[N];
	bool in[N] = { false };
	struct hash_tab t = { 0 };
	unsigned seed = 7;
	size_t count = 0;

	for (int i = 0; i < N; i++)
		snprintf(items[i].name, sizeof(items[i].name), "%c%d", 'a' + i % 26, i);
	for (int step = 0; step < 20000; step++) {
		int k = rand_r(&seed) % N;
		uint64_t h = weak_hash(&items[k]);
		if (in[k]) {
			cr_assert_eq(hash_tab_remove(&t, h, named_eq, items[k].name, weak_hash), &items[k]);
			in[k] = false;
			count--;
		} else {
			cr_assert_null(hash_tab_remove(&t, h, named_eq, items[k].name, weak_hash),
				       "removed %s, which was not there", items[k].name);
			hash_tab_add(&t, h, &items[k], weak_hash);
			in[k] = true;
			count++;
		}
		cr_assert_eq(t.count, count);
		for (int i = 0; i < N; i++) {
			void *got = hash_tab_find(&t, weak_hash(&items[i]), named_eq, items[i].name);
			cr_assert_eq(got, in[i] ? &items[i] : NULL, "step %d: %s %s", step,
				     items[i].name, in[i] ? "lost" : "still found");
		}
	}
	hash_tab_free(&t);
}
