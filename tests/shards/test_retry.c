/*
 * tests/shards/test_retry.c - the retry state journal (shards/retry.h):
 * records written by the shards, loaded after a restart (the last record
 * of a key wins, stale ones are dropped), compacted into one file.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shards/retry.h"
#include "tests/lib/testlib.h"

static const int64_t NOW = 1800000000;

Test(retry, last_record_wins_stale_dropped_files_compacted)
{
	char *dir = testlib_tmpdir();
	struct strbuf a = { 0 }, b = { 0 };
	struct retry_rcpt st = { .attempts = 1, .next_unix = NOW + 600, .delay_s = 600 };

	retry_put_rcpt(&a, 0x1234, 0, &st);
	st.attempts = 2;
	st.next_unix = NOW + 1200;
	snprintf(st.vmta, sizeof(st.vmta), "vmta2");
	retry_put_rcpt(&a, 0x1234, 0, &st);		/* the later one wins */
	st = (struct retry_rcpt){ .attempts = 9, .next_unix = NOW - 40 * 86400, .delay_s = 60 };
	retry_put_rcpt(&a, 0x99, 3, &st);		/* stale: dropped */
	retry_put_backoff(&b, "example.org/vmta2", true, NOW - 100);
	retry_put_backoff(&b, "example.net/{default}", true, NOW - 50);
	retry_put_backoff(&b, "example.net/{default}", false, NOW - 10);
	sb_adds(&b, "garbage line\n");
	free(testlib_write(dir, "retry-0.log", sb_str(&a)));
	free(testlib_write(dir, "retry-1.log", sb_str(&b)));

	for (int round = 0; round < 2; round++) {
		struct retry_table *t;
		char err[256];
		cr_assert_eq(retry_table_load(dir, NOW, 30 * 86400, 0, &t, err, sizeof(err)), 0,
			     "%s", err);
		struct retry_rcpt got;
		cr_assert(retry_table_rcpt(t, 0x1234, 0, &got));
		cr_expect_eq(got.attempts, 2);
		cr_expect_eq(got.next_unix, NOW + 1200);
		cr_expect_eq(got.delay_s, 600);
		cr_expect_str_eq(got.vmta, "vmta2");
		cr_expect_not(retry_table_rcpt(t, 0x1234, 1, &got));
		cr_expect_not(retry_table_rcpt(t, 0x99, 3, &got), "a stale record came back");
		int64_t since = 0;
		cr_expect(retry_table_backoff(t, "example.org/vmta2", &since));
		cr_expect_eq(since, NOW - 100);
		cr_expect_not(retry_table_backoff(t, "example.net/{default}", &since));
		retry_table_free(t);
		/* compacted: one file holds it all, the shards' files are gone */
		char *p0 = xasprintf("%s/retry-0.log", dir), *p1 = xasprintf("%s/retry-1.log", dir);
		char *base = xasprintf("%s/retry-base.log", dir);
		cr_expect_neq(access(p0, F_OK), 0);
		cr_expect_neq(access(p1, F_OK), 0);
		cr_expect_eq(access(base, F_OK), 0);
		free(p0);
		free(p1);
		free(base);
	}
	sb_free(&a);
	sb_free(&b);
	testlib_rmrf(dir);
	free(dir);
}

/*
 * The files of this run's shards (retry-<i>.log, i < nkeep) are open for
 * appending while the loader compacts: emptied, not removed, or what the
 * shards append next would go to a removed file and be lost.
 */
Test(retry, open_shard_files_emptied_not_removed)
{
	char *dir = testlib_tmpdir();
	struct strbuf a = { 0 }, b = { 0 };
	struct retry_rcpt st = { .attempts = 3, .next_unix = NOW + 600, .delay_s = 600 };

	retry_put_rcpt(&a, 0x77, 1, &st);
	st.attempts = 4;
	retry_put_rcpt(&b, 0x88, 0, &st);
	free(testlib_write(dir, "retry-0.log", sb_str(&a)));
	free(testlib_write(dir, "retry-1.log", sb_str(&b)));
	char *p0 = xasprintf("%s/retry-0.log", dir), *p1 = xasprintf("%s/retry-1.log", dir);
	FILE *held = fopen(p0, "a");
	cr_assert(held);

	struct retry_table *t;
	char err[256];
	cr_assert_eq(retry_table_load(dir, NOW, 30 * 86400, 1, &t, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(retry_table_count(t), 2);
	retry_table_free(t);
	struct stat sb;
	cr_assert_eq(stat(p0, &sb), 0, "the open shard file was removed");
	cr_expect_eq(sb.st_size, 0, "its records are in the base, not twice");
	cr_expect_neq(access(p1, F_OK), 0, "a file no shard of this run holds stays");

	/* what the shard appends now is read by the next load */
	st.attempts = 5;
	sb_reset(&a);
	retry_put_rcpt(&a, 0x77, 1, &st);
	fputs(sb_str(&a), held);
	fclose(held);
	cr_assert_eq(retry_table_load(dir, NOW, 30 * 86400, 0, &t, err, sizeof(err)), 0, "%s", err);
	struct retry_rcpt got;
	cr_assert(retry_table_rcpt(t, 0x77, 1, &got));
	cr_expect_eq(got.attempts, 5);
	cr_assert(retry_table_rcpt(t, 0x88, 0, &got));
	cr_expect_eq(got.attempts, 4);
	retry_table_free(t);
	free(p0);
	free(p1);
	sb_free(&a);
	sb_free(&b);
	testlib_rmrf(dir);
	free(dir);
}

/*
 * Records go through the file and back unchanged at the edges of every
 * field: the hex id's 16 digits, 32-bit counters at their maximum, a
 * 127-octet virtual-mta, and "-" for the default.
 */
Test(retry, records_round_trip_at_the_edges_of_every_field)
{
	char *dir = testlib_tmpdir();
	struct strbuf a = { 0 };
	struct retry_rcpt st = { .attempts = UINT32_MAX, .next_unix = INT64_MAX,
				 .delay_s = UINT32_MAX };
	char longest[128];

	memset(longest, 'v', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	retry_put_rcpt(&a, UINT64_MAX, UINT32_MAX, &st);
	cr_expect_str_eq(sb_str(&a), "r ffffffffffffffff 4294967295 4294967295 "
			 "9223372036854775807 4294967295 -\n");
	snprintf(st.vmta, sizeof(st.vmta), "%s", longest);
	st.attempts = 0;
	st.next_unix = NOW;
	st.delay_s = 0;
	retry_put_rcpt(&a, 1, 0, &st);
	free(testlib_write(dir, "retry-0.log", sb_str(&a)));

	struct retry_table *t;
	struct retry_rcpt got;
	char err[256];
	cr_assert_eq(retry_table_load(dir, NOW, 30 * 86400, 0, &t, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(retry_table_skipped(t), 0);
	cr_assert(retry_table_rcpt(t, UINT64_MAX, UINT32_MAX, &got));
	cr_expect_eq(got.attempts, UINT32_MAX);
	cr_expect_eq(got.next_unix, INT64_MAX);
	cr_expect_eq(got.delay_s, UINT32_MAX);
	cr_expect_str_eq(got.vmta, "");
	cr_assert(retry_table_rcpt(t, 1, 0, &got));
	cr_expect_eq(got.attempts, 0);
	cr_expect_eq(got.next_unix, NOW);
	cr_expect_str_eq(got.vmta, longest);
	retry_table_free(t);
	sb_free(&a);
	testlib_rmrf(dir);
	free(dir);
}

/*
 * A line is a record only whole: a crash that cuts the last append short
 * must not load a wrong virtual-mta or time, and a field out
 * of range, a stray blank or trailing junk is no record either.  Each is
 * counted, and the records around them still load.
 */
Test(retry, torn_and_malformed_lines_are_counted_not_loaded)
{
	char *dir = testlib_tmpdir();
	struct strbuf a = { 0 };
	struct retry_rcpt st = { .attempts = 2, .next_unix = NOW + 600, .delay_s = 600 };
	static const char *const bad[] = {
		"r 0000000000000002 0 2 1800000600 600 - junk",	/* a seventh field */
		"r 0000000000000003 0 2  1800000600 600 -",	/* two blanks */
		"r 0000000000000004 4294967296 2 1800000600 600 -",	/* rcpt > 2^32-1 */
		"r 00000000000000005 0 2 1800000600 600 -",	/* 17 hex digits */
		"r 0000000000000000 0 2 1800000600 600 -",	/* id 0 */
		"r 000000000000000g 0 2 1800000600 600 -",
		"r 0000000000000006 0 -2 1800000600 600 -",
		"r 0000000000000007 0 2 1800000600 600",	/* no vmta */
		"b example.org/{default} 2 1800000000",		/* on is 0 or 1 */
		"w 192.0.2.1/site 20000 20001",			/* no count */
		"x something else",
		"",
	};

	retry_put_rcpt(&a, 1, 0, &st);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		sb_printf(&a, "%s\n", bad[i]);
	sb_add(&a, "r 0000000000000008 0 2 1800000600 600 -\0tail\n", 45);
	retry_put_backoff(&a, "example.org/{default}", true, NOW - 5);
	retry_put_rcpt(&a, 9, 1, &st);
	/* the last append, cut by a crash inside its virtual-mta's name */
	sb_adds(&a, "r 000000000000000a 0 2 1800000600 600 pool-b-membe");
	char *path = xasprintf("%s/retry-0.log", dir);
	FILE *f = fopen(path, "w");
	cr_assert(f && fwrite(a.buf, 1, a.len, f) == a.len && fclose(f) == 0);
	free(path);

	struct retry_table *t;
	struct retry_rcpt got;
	char err[256];
	int64_t since;
	cr_assert_eq(retry_table_load(dir, NOW, 30 * 86400, 0, &t, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(retry_table_count(t), 2, "%zu records loaded", retry_table_count(t));
	cr_expect(retry_table_rcpt(t, 1, 0, &got));
	cr_expect(retry_table_rcpt(t, 9, 1, &got));
	cr_expect(retry_table_backoff(t, "example.org/{default}", &since));
	for (uint64_t id = 2; id <= 10; id++)
		cr_expect_not(retry_table_rcpt(t, id, 0, &got), "bad record %llu loaded",
			      (unsigned long long)id);
	cr_expect_eq(retry_table_skipped(t), sizeof(bad) / sizeof(bad[0]) + 2);
	retry_table_free(t);

	/* compacted: only the records remain, and nothing is skipped now */
	cr_assert_eq(retry_table_load(dir, NOW, 30 * 86400, 0, &t, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(retry_table_count(t), 2);
	cr_expect_eq(retry_table_skipped(t), 0);
	retry_table_free(t);
	sb_free(&a);
	testlib_rmrf(dir);
	free(dir);
}
