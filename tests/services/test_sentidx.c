/*
 * tests/services/test_sentidx.c - the delivered-message index: recipients
 * gather under one Message-ID, lookups ignore <> and blanks, days past
 * the kept ones are gone, and the index survives a reopen.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <time.h>

#include "services/sentidx.h"
#include "tests/lib/testlib.h"
#include "util/util.h"

Test(sentidx, gathers_recipients_expires_old_days_and_reopens)
{
	char *dir = testlib_tmpdir();
	char *path = xasprintf("%s/idx", dir), err[256];
	struct sentidx *x = NULL;
	struct sentidx_reader *r = NULL;
	struct sentidx_hit hit;
	time_t now = time(NULL);

	cr_assert_eq(sentidx_open(path, 3, &x, err, sizeof(err)), 0, "%s", err);
	const struct sentidx_entry today[] = {
		{ "<a@s.example>", "one@example.org", "news@s.example", "job-1", "vmta1" },
		{ "<a@s.example>", "two@example.org", "news@s.example", "job-1", "vmta1" },
		{ "<a@s.example>", "ONE@example.org", "news@s.example", "job-1", "vmta1" },
		{ "", "nobody@example.org", NULL, NULL, NULL },
	};
	const struct sentidx_entry old = { "<old@s.example>", "x@example.org", NULL, NULL, NULL };
	cr_assert_eq(sentidx_put(x, &old, 1, now - 5 * 86400), 0);
	cr_assert_eq(sentidx_put(x, today, 4, now), 0);
	cr_assert_eq(sentidx_reader_new(x, &r), 0);

	cr_assert_eq(sentidx_get(r, " a@s.example ", &hit), 1);
	cr_expect_eq(hit.nrcpts, 2);
	cr_expect_str_eq(hit.rcpts[0], "one@example.org");
	cr_expect_str_eq(hit.rcpts[1], "two@example.org");
	cr_expect_str_eq(hit.mail_from, "news@s.example");
	cr_expect_str_eq(hit.job_id, "job-1");
	cr_expect_str_eq(hit.vmta, "vmta1");
	cr_expect_eq(sentidx_get(r, "<old@s.example>", &hit), 0, "a day past the kept three");
	cr_expect_eq(sentidx_get(r, "<nope@s.example>", &hit), 0);
	cr_expect_eq(sentidx_get(r, "<>", &hit), 0);
	sentidx_reader_free(r);
	sentidx_close(x);

	cr_assert_eq(sentidx_open(path, 3, &x, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sentidx_reader_new(x, &r), 0);
	cr_expect_eq(sentidx_get(r, "<a@s.example>", &hit), 1);
	cr_expect_str_eq(hit.vmta, "vmta1");
	sentidx_reader_free(r);
	sentidx_close(x);
	testlib_rmrf(dir);
	free(path), free(dir);
}
