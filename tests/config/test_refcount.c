/*
 * tests/config/test_refcount.c - the reference count of a configuration
 * and the mailbox a reload hands it to running threads with: who frees
 * it, a superseded post, and a swap under concurrent consumers (ASan
 * finds a use after free or a leak; the counts find a lost reference).
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "config/config.h"
#include "tests/lib/testlib.h"

static struct cfg *load_one(const char *text)
{
	struct diag_list dl = { 0 };
	struct cfg *c = testlib_load(text, &dl);

	cr_assert(c, "%s", testlib_diag_text(&dl));
	diag_free(&dl);
	return c;
}

#define BASE "smtp-listener 127.0.0.1:2525\n<domain *>\n    max-smtp-out %d\n</domain>\n"

static const char *conf_text(int n)
{
	static char buf[8][128];
	snprintf(buf[n % 8], sizeof(buf[0]), BASE, n);
	return buf[n % 8];
}

static uint32_t max_out(const struct cfg *c)
{
	return cfg_queue_lookup(c, "example.org", NULL)->max_smtp_out;
}

Test(refcount, last_holder_frees)
{
	struct cfg *c = load_one(conf_text(3));
	const struct cfg *held = cfg_ref(c);

	cr_assert_eq(held, c);
	cfg_free(c);		/* the loader lets go first */
	cr_assert_eq(max_out(held), 3, "freed while a holder remained");
	cfg_unref(held);	/* ASan: a leak here if this did not free */
	cfg_unref(NULL);
}

Test(refcount, empty_mailbox_gives_nothing)
{
	struct cfg_mailbox mb = { 0 };

	cr_assert_null(cfg_mailbox_take(&mb));
	cfg_mailbox_clear(&mb);
}

Test(refcount, take_owns_the_posted_reference)
{
	struct cfg_mailbox mb = { 0 };
	struct cfg *c = load_one(conf_text(4));

	cfg_mailbox_post(&mb, c);
	cfg_free(c);		/* the reloader's reference is gone */
	const struct cfg *got = cfg_mailbox_take(&mb);
	cr_assert_eq(got, c);
	cr_assert_eq(max_out(got), 4);
	cr_assert_null(cfg_mailbox_take(&mb), "taken twice");
	cfg_unref(got);
}

Test(refcount, newer_post_supersedes_untaken_one)
{
	struct cfg_mailbox mb = { 0 };
	struct cfg *a = load_one(conf_text(1));
	struct cfg *b = load_one(conf_text(2));

	cfg_mailbox_post(&mb, a);
	cfg_free(a);		/* only the mailbox holds a: the next post frees it */
	cfg_mailbox_post(&mb, b);
	cfg_free(b);
	const struct cfg *got = cfg_mailbox_take(&mb);
	cr_assert_eq(max_out(got), 2, "the newest configuration wins");
	cfg_unref(got);
}

Test(refcount, clear_drops_what_waits)
{
	struct cfg_mailbox mb = { 0 };
	struct cfg *c = load_one(conf_text(5));

	cfg_mailbox_post(&mb, c);
	cfg_free(c);
	cfg_mailbox_clear(&mb);	/* ASan: leaked if not freed here */
	cr_assert_null(cfg_mailbox_take(&mb));
}

/*
 * Consumers switch as a shard does: at each turn take what is posted,
 * read the configuration they run on, drop the old one.  The producer
 * posts a new one every few turns and drops its own reference at once,
 * so each configuration lives exactly as long as its last reader.
 */
#define NCONS 4
#define POSTS 500

struct consumer {
	struct cfg_mailbox mb;
	const struct cfg *cur;
	_Atomic bool *done;
	uint64_t switches;
	bool bad;
};

static void *consume(void *arg)
{
	struct consumer *k = arg;
	uint32_t last = max_out(k->cur);

	for (;;) {
		bool done = atomic_load(k->done);
		const struct cfg *next = cfg_mailbox_take(&k->mb);
		if (next) {
			cfg_unref(k->cur);
			k->cur = next;
			k->switches++;
		}
		uint32_t now = max_out(k->cur);
		/* posts count up: a consumer never goes back to an older one */
		if (now < last)
			k->bad = true;
		last = now;
		if (done && !next)
			break;
	}
	return NULL;
}

Test(refcount, swap_under_concurrent_consumers, .timeout = 60)
{
	struct consumer k[NCONS];
	pthread_t th[NCONS];
	_Atomic bool done = false;
	struct cfg *first = load_one(conf_text(1));

	for (int i = 0; i < NCONS; i++) {
		k[i] = (struct consumer){ .cur = cfg_ref(first), .done = &done };
		cr_assert_eq(pthread_create(&th[i], NULL, consume, &k[i]), 0);
	}
	cfg_free(first);
	/* each post a new configuration, max-smtp-out rising */
	for (int p = 0; p < POSTS; p++) {
		struct cfg *c = load_one(conf_text(p + 2));
		for (int i = 0; i < NCONS; i++)
			cfg_mailbox_post(&k[i].mb, c);
		cfg_free(c);
	}
	atomic_store(&done, true);
	for (int i = 0; i < NCONS; i++) {
		pthread_join(th[i], NULL);
		cr_expect(!k[i].bad, "consumer %d went back to an older configuration", i);
		cr_expect_geq(k[i].switches, 1);
		cr_expect_eq(max_out(k[i].cur), POSTS + 1, "consumer %d missed the last post", i);
		cfg_unref(k[i].cur);
	}
}
