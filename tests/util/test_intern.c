/*
 * tests/util/test_intern.c - the intern table: strings are shared from
 * their second sighting, unique ones (VERP senders) never enter, the
 * table stays within its bound and drops what nobody holds, and a shared
 * string outlives its table while held (ASan and LSan watch the frees).
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "util/intern.h"

Test(intern, shared_from_the_second_sighting)
{
	struct intern_tab *t = intern_tab_new(16);

	cr_expect_null(intern_get(t, "news@example.com"), "a first sighting is not shared");
	const char *a = intern_get(t, "news@example.com");
	const char *b = intern_get(t, "news@example.com");
	cr_assert_not_null(a);
	cr_expect_eq(a, b, "one copy for every holder");
	cr_expect_str_eq(a, "news@example.com");
	cr_expect_eq(intern_count(t), 1);
	intern_unref(a);
	intern_unref(b);
	intern_tab_free(t);
}

Test(intern, verp_senders_never_enter)
{
	struct intern_tab *t = intern_tab_new(64);
	char s[64];

	for (int i = 0; i < 20000; i++) {
		snprintf(s, sizeof(s), "bounce-%d-user=example.org@lists.example.com", i);
		cr_assert_null(intern_get(t, s), "unique sender %d was shared", i);
	}
	cr_expect_eq(intern_count(t), 0);
	intern_tab_free(t);
}

Test(intern, bounded_and_drops_what_nobody_holds)
{
	struct intern_tab *t = intern_tab_new(3);
	const char *held[4];
	char s[32];

	for (int i = 0; i < 4; i++) {
		snprintf(s, sizeof(s), "vmta-%d", i);
		intern_get(t, s);
		held[i] = intern_get(t, s);
	}
	cr_expect_not_null(held[0]);
	cr_expect_not_null(held[2]);
	cr_expect_null(held[3], "a full table of strings in use took a fourth");
	cr_expect_eq(intern_count(t), 3);
	/* vmta-1 is let go: the next newcomer takes its place */
	intern_unref(held[1]);
	const char *n = intern_get(t, "vmta-3");
	cr_assert_not_null(n, "the unused string was not dropped to make room");
	cr_expect_eq(intern_count(t), 3);
	/* and what is still held is still the same copy */
	const char *again = intern_get(t, "vmta-0");
	cr_expect_eq(again, held[0]);
	intern_unref(again);
	intern_unref(held[0]);
	intern_unref(held[2]);
	intern_unref(n);
	intern_tab_free(t);
}

Test(intern, a_held_string_outlives_its_table)
{
	struct intern_tab *t = intern_tab_new(8);

	intern_get(t, "127.0.0.1");
	const char *s = intern_get(t, "127.0.0.1");
	cr_assert_not_null(s);
	intern_tab_free(t);
	cr_expect_str_eq(s, "127.0.0.1");	/* ASan: no use after free */
	intern_unref(s);			/* LSan: and no leak after */
}

struct dropper {
	const char **refs;
	int n;
};

static void *drop_all(void *arg)
{
	struct dropper *d = arg;

	for (int i = 0; i < d->n; i++)
		intern_unref(d->refs[i]);
	return NULL;
}

/* references given back on another thread while the owner goes on */
Test(intern, references_given_back_on_another_thread)
{
	enum { N = 20000 };
	struct intern_tab *t = intern_tab_new(2);
	static const char *refs[N];

	intern_get(t, "sender@example.com");
	for (int i = 0; i < N; i++)
		cr_assert_not_null(refs[i] = intern_get(t, "sender@example.com"));
	struct dropper d = { refs, N };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, drop_all, &d), 0);
	/* meanwhile the owner shares more and makes room (sweeps) */
	for (int i = 0; i < 1000; i++) {
		char s[32];
		snprintf(s, sizeof(s), "job-%d", i % 7);
		const char *x = intern_get(t, s);
		intern_unref(x);
	}
	pthread_join(th, NULL);
	const char *x = intern_get(t, "sender@example.com");
	if (x)
		cr_expect_str_eq(x, "sender@example.com");
	intern_unref(x);
	intern_tab_free(t);
}
