/*
 * tests/util/test_log.c - the log writer: ISO 8601 UTC stamps on every
 * line (also lines that arrive in pieces), rotation at midnight UTC
 * keeping log-rotate files (on a fake clock), reopen on request, and the
 * last partial line at end of input.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/lib/testlib.h"
#include "util/log.h"

#define DAY_MS 86400000LL
/* 2026-12-07T23:59:59.500Z */
#define LATE_EVENING (1796687999500LL)

Test(log, stamp_is_iso8601_utc_with_milliseconds)
{
	char s[LOG_STAMP_LEN + 1];

	log_stamp(0, s);
	cr_expect_str_eq(s, "1970-01-01T00:00:00.000Z");
	log_stamp(LATE_EVENING, s);
	cr_expect_str_eq(s, "2026-12-07T23:59:59.500Z");
	log_stamp(LATE_EVENING + 500 + 7, s);
	cr_expect_str_eq(s, "2026-12-08T00:00:00.007Z");
	cr_expect_eq(strlen(s), LOG_STAMP_LEN);
}

Test(log, next_midnight_is_utc)
{
	cr_expect_eq(log_next_midnight_ms(LATE_EVENING), LATE_EVENING + 500);
	cr_expect_eq(log_next_midnight_ms(LATE_EVENING + 500), LATE_EVENING + 500 + DAY_MS);
	cr_expect_eq(log_next_midnight_ms(0), DAY_MS);
}

struct run {
	int in[2];		/* the daemon's fd 2 */
	int ctl[2];		/* stands for SIGUSR1 */
	struct log_params p;
	_Atomic int64_t now;
	pthread_t thread;
	int rc;
};

static int64_t fake_now(void *arg)
{
	struct run *r = arg;

	return atomic_load(&r->now);
}

static void *writer(void *arg)
{
	struct run *r = arg;

	r->rc = log_writer_run(r->in[0], r->ctl[0], &r->p);
	return NULL;
}

static void run_start(struct run *r, const char *path, unsigned keep)
{
	cr_assert_eq(pipe(r->in), 0);
	cr_assert_eq(pipe(r->ctl), 0);
	atomic_store(&r->now, LATE_EVENING - 1000);
	r->p = (struct log_params){
		.out_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640),
		.path = path, .keep = keep, .now_ms = fake_now, .clock_arg = r,
	};
	cr_assert_geq(r->p.out_fd, 0);
	cr_assert_eq(pthread_create(&r->thread, NULL, writer, r), 0);
}

static void run_end(struct run *r)
{
	close(r->in[1]);
	pthread_join(r->thread, NULL);
	close(r->in[0]);
	close(r->ctl[0]);
	close(r->ctl[1]);
	cr_expect_eq(r->rc, 0);
}

static void put(struct run *r, const char *s)
{
	cr_assert_eq(write(r->in[1], s, strlen(s)), (ssize_t)strlen(s));
}

/* wait_for - until path contains needle (the writer runs in its own thread). */
static char *wait_for(const char *path, const char *needle)
{
	bool there = testlib_wait_file(path, needle, 1, 5000);
	char *text = testlib_read_file(path);

	cr_assert(there, "'%s' never reached %s:\n%s", needle, path, text);
	return text;
}

Test(log, every_line_is_stamped_once_even_in_pieces)
{
	char *dir = testlib_tmpdir();
	char *path = xasprintf("%s/coremta.log", dir);
	struct run r = { 0 };

	run_start(&r, path, 0);
	put(&r, "first line\nsecond ");
	free(wait_for(path, "second "));
	put(&r, "half\nthird\n");
	free(wait_for(path, "third"));
	put(&r, "no newline at the end");
	run_end(&r);
	char *text = testlib_read_file(path);
	cr_expect_str_eq(text,
			 "2026-12-07T23:59:58.500Z first line\n"
			 "2026-12-07T23:59:58.500Z second half\n"
			 "2026-12-07T23:59:58.500Z third\n"
			 "2026-12-07T23:59:58.500Z no newline at the end\n");
	cr_expect(testlib_every_line_stamped(text));
	free(text);
	testlib_rmrf(dir);
	free(dir), free(path);
}

/* log-rotate 2: at each midnight UTC, log -> log.1 -> log.2, the oldest goes. */
Test(log, rotates_at_midnight_utc_keeping_log_rotate_files)
{
	char *dir = testlib_tmpdir();
	char *path = xasprintf("%s/coremta.log", dir);
	char *one = xasprintf("%s.1", path), *two = xasprintf("%s.2", path);
	char *three = xasprintf("%s.3", path);
	struct run r = { 0 };

	run_start(&r, path, 2);
	put(&r, "day one\n");
	free(wait_for(path, "day one"));
	atomic_store(&r.now, LATE_EVENING + 600);	/* 00:00:00.100 */
	put(&r, "day two\n");
	free(wait_for(path, "day two"));
	atomic_store(&r.now, LATE_EVENING + 600 + DAY_MS);
	put(&r, "day three\n");
	free(wait_for(path, "day three"));
	atomic_store(&r.now, LATE_EVENING + 600 + 2 * DAY_MS);
	put(&r, "day four\n");
	free(wait_for(path, "day four"));
	run_end(&r);

	char *t0 = testlib_read_file(path), *t1 = testlib_read_file(one);
	char *t2 = testlib_read_file(two);
	cr_expect(strstr(t0, "2026-12-10T00:00:00.100Z day four"), "%s", t0);
	cr_expect(!strstr(t0, "day three"), "%s", t0);
	cr_expect(strstr(t1, "day three") && !strstr(t1, "day two"), "%s", t1);
	cr_expect(strstr(t2, "day two") && !strstr(t2, "day three"), "%s", t2);
	cr_expect(access(three, F_OK) != 0, "log-rotate 2 keeps two old files, not three");
	cr_expect(testlib_every_line_stamped(t0) && testlib_every_line_stamped(t1) && testlib_every_line_stamped(t2));
	free(t0), free(t1), free(t2);
	testlib_rmrf(dir);
	free(dir), free(path), free(one), free(two), free(three);
}

/* After an outside logrotate moved the file, a reopen starts a new one. */
Test(log, reopen_after_the_file_was_moved)
{
	char *dir = testlib_tmpdir();
	char *path = xasprintf("%s/coremta.log", dir);
	char *moved = xasprintf("%s/coremta.log.old", dir);
	struct run r = { 0 };

	run_start(&r, path, 0);
	put(&r, "before\n");
	free(wait_for(path, "before"));
	cr_assert_eq(rename(path, moved), 0);
	cr_assert_eq(write(r.ctl[1], "x", 1), 1);
	free(wait_for(path, "reopened"));
	put(&r, "after\n");
	free(wait_for(path, "after"));
	run_end(&r);
	char *old = testlib_read_file(moved), *now = testlib_read_file(path);
	cr_expect(strstr(old, "before") && !strstr(old, "after"), "%s", old);
	cr_expect(strstr(now, "after") && !strstr(now, "before"), "%s", now);
	free(old), free(now);
	testlib_rmrf(dir);
	free(dir), free(path), free(moved);
}

Test(log, rotate_files_shifts_and_drops_the_oldest)
{
	char *dir = testlib_tmpdir();
	char *path = xasprintf("%s/l", dir);

	free(testlib_write(dir, "l", "0"));
	free(testlib_write(dir, "l.1", "1"));
	free(testlib_write(dir, "l.2", "2"));
	cr_expect_eq(log_rotate_files(path, 2), 0);
	char *a = testlib_read_file(path), *b = xasprintf("%s.1", path), *c = xasprintf("%s.2", path);
	char *tb = testlib_read_file(b), *tc = testlib_read_file(c);
	cr_expect_str_eq(a, "");
	cr_expect_str_eq(tb, "0");
	cr_expect_str_eq(tc, "1");
	free(a), free(b), free(c), free(tb), free(tc);
	testlib_rmrf(dir);
	free(dir), free(path);
}

/* captured - what log_msg wrote to fd 2 while fn ran (through a pipe). */
static char *captured(void (*fn)(void))
{
	int p[2], saved = dup(STDERR_FILENO);
	static char buf[8192];

	cr_assert_eq(pipe(p), 0);
	cr_assert_geq(saved, 0);
	dup2(p[1], STDERR_FILENO);
	close(p[1]);
	fn();
	dup2(saved, STDERR_FILENO);
	close(saved);
	ssize_t n = read(p[0], buf, sizeof(buf) - 1);
	close(p[0]);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static void two_lines(void)
{
	log_set_level(LOG_LEVEL_NOTICE);
	log_msg(LOG_LEVEL_WARNING, "spool-low", "intake=0 free=42", "only %d bytes \"left\"\\%s", 42,
		"\n");
	log_msg(LOG_LEVEL_INFO, "host-quirk", NULL, "dropped: info is above notice");
	log_msg(LOG_LEVEL_NOTICE, "start", NULL, "plain");
}

Test(log, lines_are_key_value_with_quoted_text_and_levels_filter)
{
	char *out = captured(two_lines);

	cr_expect_str_eq(out,
			 "coremta: level=warning event=spool-low intake=0 free=42 "
			 "text=\"only 42 bytes \\\"left\\\"\\\\?\"\n"
			 "coremta: level=notice event=start text=\"plain\"\n");
}

static void long_line(void)
{
	static char big[10000];

	memset(big, 'x', sizeof(big) - 1);
	log_set_level(LOG_LEVEL_DEBUG);
	log_msg(LOG_LEVEL_DEBUG, "start", NULL, "%s", big);
	log_set_level(LOG_LEVEL_NOTICE);
}

Test(log, a_long_line_is_cut_but_still_ends_the_line)
{
	char *out = captured(long_line);
	size_t n = strlen(out);

	cr_expect_leq(n, 4096, "one write of at most PIPE_BUF bytes");
	cr_expect_str_eq(out + n - 3, "x\"\n");
}

Test(log, level_names_round_trip)
{
	enum log_level l;

	for (int i = LOG_LEVEL_ERROR; i <= LOG_LEVEL_DEBUG; i++) {
		cr_expect_eq(log_level_parse(log_level_name((enum log_level)i), &l), 0);
		cr_expect_eq((int)l, i);
	}
	cr_expect_eq(log_level_parse("verbose", &l), -EINVAL);
}
