/*
 * tests/services/test_suppress.c - the suppression store: add, lookup per
 * scope and per domain, expiry and purge, remove, import of address-list
 * files with precise errors, export, reopen, and a writer process killed
 * with SIGKILL mid-stream losing nothing it reported committed.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "services/suppress.h"
#include "tests/lib/testlib.h"

static char *dir;

static void setup(void)
{
	dir = testlib_tmpdir();
}

static void teardown(void)
{
	testlib_rmrf(dir);
	free(dir);
}

TestSuite(suppress, .init = setup, .fini = teardown, .timeout = 60);

/* small maps: the tests must not reserve 32 GiB of address space each */
static const struct suppress_params small = { .map_size = 64u << 20 };

static struct suppress *open_store(void)
{
	char err[256] = "";
	struct suppress *s = NULL;
	char *path = xasprintf("%s/db", dir);
	int rc = suppress_open(path, &small, &s, err, sizeof(err));

	free(path);
	cr_assert_eq(rc, 0, "suppress_open: %d %s", rc, err);
	return s;
}

static struct suppress_reader *reader(struct suppress *s)
{
	struct suppress_reader *r = NULL;

	cr_assert_eq(suppress_reader_new(s, &r), 0);
	return r;
}

Test(suppress, add_then_lookup_by_scope)
{
	struct suppress *s = open_store();
	struct suppress_entry e[] = {
		{ .addr = "Gone@Example.COM", .kind = SUPPRESS_HARD_BOUNCE,
		  .reason = "5.1.1 bad-mailbox rb", .added = 1700000000 },
		{ .addr = "angry@example.org", .scope = SUPPRESS_SENDER_DOMAIN,
		  .scope_value = "news.example", .kind = SUPPRESS_COMPLAINT,
		  .reason = "abuse f" },
		{ .addr = "v@example.net", .scope = SUPPRESS_VMTA,
		  .scope_value = "vmta1", .kind = SUPPRESS_HARD_BOUNCE },
		{ .addr = "@dead.example", .kind = SUPPRESS_LIST },
	};
	struct suppress_reader *r;
	struct suppress_hit hit;
	time_t now = time(NULL);

	cr_assert_eq(suppress_add(s, e, ARRAY_SIZE(e)), 0);
	cr_expect_eq(suppress_count(s), 4);
	r = reader(s);

	cr_assert_eq(suppress_check(r, "gone@example.com", NULL, NULL, now, &hit), 1,
		     "addresses are matched without case");
	cr_expect_eq(hit.scope, SUPPRESS_GLOBAL);
	cr_expect_eq(hit.kind, SUPPRESS_HARD_BOUNCE);
	cr_expect_eq(hit.added, 1700000000);
	cr_expect_eq(hit.expires, 0);
	cr_expect_str_eq(hit.reason, "5.1.1 bad-mailbox rb");
	cr_expect_not(hit.whole_domain);
	cr_expect_eq(suppress_check(r, "gone@example.com", "any.example", "vmta9", now, NULL), 1,
		     "a global entry covers every sender");

	cr_expect_eq(suppress_check(r, "angry@example.org", NULL, NULL, now, NULL), 0);
	cr_expect_eq(suppress_check(r, "angry@example.org", "other.example", NULL, now, NULL), 0);
	cr_expect_eq(suppress_check(r, "angry@example.org", "NEWS.example", NULL, now, &hit), 1);
	cr_expect_eq(hit.scope, SUPPRESS_SENDER_DOMAIN);
	cr_expect_eq(hit.kind, SUPPRESS_COMPLAINT);

	cr_expect_eq(suppress_check(r, "v@example.net", NULL, "vmta2", now, NULL), 0);
	cr_expect_eq(suppress_check(r, "v@example.net", NULL, "vmta1", now, &hit), 1);
	cr_expect_eq(hit.scope, SUPPRESS_VMTA);

	cr_expect_eq(suppress_check(r, "anyone@dead.example", NULL, NULL, now, &hit), 1);
	cr_expect(hit.whole_domain);
	cr_expect_eq(suppress_check(r, "anyone@sub.dead.example", NULL, NULL, now, NULL), 0);
	cr_expect_eq(suppress_check(r, "fine@example.com", NULL, NULL, now, NULL), 0);
	cr_expect_eq(suppress_check(r, "not-an-address", NULL, NULL, now, NULL), -EINVAL);

	suppress_reader_free(r);
	suppress_close(s);
}

Test(suppress, reader_sees_later_commits)
{
	struct suppress *s = open_store();
	struct suppress_reader *r = reader(s);
	struct suppress_entry e = { .addr = "late@example.com", .kind = SUPPRESS_LIST };
	time_t now = time(NULL);

	cr_expect_eq(suppress_check(r, "late@example.com", NULL, NULL, now, NULL), 0);
	cr_assert_eq(suppress_add(s, &e, 1), 0);
	cr_expect_eq(suppress_check(r, "late@example.com", NULL, NULL, now, NULL), 1);
	cr_assert_eq(suppress_remove(s, "LATE@example.com", SUPPRESS_GLOBAL, NULL), 0);
	cr_expect_eq(suppress_check(r, "late@example.com", NULL, NULL, now, NULL), 0);
	cr_expect_eq(suppress_remove(s, "late@example.com", SUPPRESS_GLOBAL, NULL), -ENOENT);
	suppress_reader_free(r);
	suppress_close(s);
}

Test(suppress, soft_entries_expire_and_purge)
{
	struct suppress *s = open_store();
	time_t now = time(NULL);
	struct suppress_entry e[] = {
		{ .addr = "full@example.com", .kind = SUPPRESS_SOFT_BOUNCE,
		  .expires = now + 3600, .reason = "4.2.2 quota-issues" },
		{ .addr = "old@example.com", .kind = SUPPRESS_SOFT_BOUNCE,
		  .expires = now - 1 },
		{ .addr = "hard@example.com", .kind = SUPPRESS_HARD_BOUNCE },
	};
	struct suppress_entry soft_again = { .addr = "hard@example.com",
					     .kind = SUPPRESS_SOFT_BOUNCE,
					     .expires = now + 60 };
	struct suppress_reader *r;
	struct suppress_hit hit;
	size_t removed = 0;

	cr_assert_eq(suppress_add(s, e, ARRAY_SIZE(e)), 0);
	cr_assert_eq(suppress_add(s, &soft_again, 1), 0);
	r = reader(s);
	cr_expect_eq(suppress_check(r, "full@example.com", NULL, NULL, now, &hit), 1);
	cr_expect_eq(hit.expires, now + 3600);
	cr_expect_eq(suppress_check(r, "full@example.com", NULL, NULL, now + 3600, NULL), 0,
		     "gone once its expiry passed");
	cr_expect_eq(suppress_check(r, "old@example.com", NULL, NULL, now, NULL), 0);
	cr_expect_eq(suppress_check(r, "hard@example.com", NULL, NULL, now + 86400, &hit), 1,
		     "a soft bounce does not shorten a hard entry");
	cr_expect_eq(hit.kind, SUPPRESS_HARD_BOUNCE);

	cr_assert_eq(suppress_purge(s, now, &removed), 0);
	cr_expect_eq(removed, 1);
	cr_expect_eq(suppress_count(s), 2);
	suppress_reader_free(r);
	suppress_close(s);
}

Test(suppress, invalid_entries_write_nothing)
{
	struct suppress *s = open_store();
	struct suppress_entry e[] = {
		{ .addr = "ok@example.com", .kind = SUPPRESS_LIST },
		{ .addr = "no spaces@example.com", .kind = SUPPRESS_LIST },
	};
	struct suppress_entry noscope = { .addr = "x@example.com",
					  .scope = SUPPRESS_VMTA,
					  .kind = SUPPRESS_LIST };

	cr_expect_eq(suppress_add(s, e, 2), -EINVAL);
	cr_expect_eq(suppress_add(s, &noscope, 1), -EINVAL);
	cr_expect_eq(suppress_count(s), 0, "one transaction: all or nothing");
	suppress_close(s);
}

Test(suppress, import_address_list_and_export)
{
	struct suppress *s = open_store();
	char *list = testlib_write(dir, "list.txt",
				   "# PowerMTA address-list lines and bare addresses\n"
				   "address one@example.com\n"
				   "\n"
				   "  two@Example.com  \n"
				   "domain closed.example\n"
				   "@gone.example\n");
	struct suppress_entry tmpl = { .kind = SUPPRESS_LIST, .reason = "import list.txt" };
	char err[512] = "";
	size_t n = 0;
	char *out = xasprintf("%s/export.csv", dir);
	FILE *f;

	cr_assert_eq(suppress_import(s, list, &tmpl, &n, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(n, 4);
	f = fopen(out, "w");
	cr_assert_not_null(f);
	cr_assert_eq(suppress_export(s, f, time(NULL)), 0);
	fclose(f);

	char buf[2048] = "";
	f = fopen(out, "r");
	size_t len = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[len] = '\0';
	cr_expect(strstr(buf, "one@example.com,global,,list,") != NULL, "%s", buf);
	cr_expect(strstr(buf, "two@example.com,global,,list,") != NULL, "%s", buf);
	cr_expect(strstr(buf, "@closed.example,global,,list,") != NULL, "%s", buf);
	cr_expect(strstr(buf, ",0,import list.txt\n") != NULL, "%s", buf);

	char *bad = testlib_write(dir, "bad.txt",
				  "fine@example.com\naddress /^spam.*@/\n");
	cr_expect_eq(suppress_import(s, bad, &tmpl, &n, err, sizeof(err)), -EINVAL);
	cr_expect_eq(n, 0);
	cr_expect(strstr(err, "bad.txt:2: '/^spam.*@/': a /regex/ cannot be imported") != NULL,
		  "%s", err);
	char *bad2 = testlib_write(dir, "bad2.txt", "fine2@example.com\nnot an address\n");
	cr_expect_eq(suppress_import(s, bad2, &tmpl, &n, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "bad2.txt:2: 'not an address' is not an address") != NULL,
		  "%s", err);
	cr_expect_eq(suppress_count(s), 4, "a failed import adds nothing");

	free(list);
	free(bad);
	free(bad2);
	free(out);
	suppress_close(s);
}

Test(suppress, survives_reopen)
{
	struct suppress *s = open_store();
	struct suppress_entry e = { .addr = "kept@example.com", .kind = SUPPRESS_COMPLAINT,
				    .reason = "abuse" };

	cr_assert_eq(suppress_add(s, &e, 1), 0);
	suppress_close(s);
	s = open_store();
	struct suppress_reader *r = reader(s);
	struct suppress_hit hit;

	cr_expect_eq(suppress_check(r, "kept@example.com", NULL, NULL, time(NULL), &hit), 1);
	cr_expect_str_eq(hit.reason, "abuse");
	suppress_reader_free(r);
	suppress_close(s);
}

/*
 * A child process adds entries one transaction at a time and reports each
 * committed index on a pipe; it is killed with SIGKILL mid-stream.  Every
 * reported entry must be there after reopening, and the store must take
 * writes again (no lock left behind by the dead writer).
 */
Test(suppress, writer_killed_loses_nothing_committed)
{
	int fds[2];
	char *path = xasprintf("%s/db", dir);

	cr_assert_eq(pipe(fds), 0);
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		struct suppress *s = NULL;
		char err[256];

		close(fds[0]);
		if (suppress_open(path, &small, &s, err, sizeof(err)))
			_exit(2);
		for (unsigned i = 0;; i++) {
			char addr[64];
			struct suppress_entry e = { .addr = addr, .kind = SUPPRESS_HARD_BOUNCE,
						    .reason = "5.1.1 bad-mailbox" };
			snprintf(addr, sizeof(addr), "user%u@example.com", i);
			if (suppress_add(s, &e, 1))
				_exit(3);
			if (write(fds[1], &i, sizeof(i)) != sizeof(i))
				_exit(4);
		}
	}
	close(fds[1]);

	unsigned last = 0, got;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	/* let it commit a few hundred, then kill it wherever it is */
	while (read(fds[0], &got, sizeof(got)) == sizeof(got)) {
		last = got;
		if (last >= 300)
			break;
	}
	cr_assert_geq(last, 300, "the writer died on its own");
	kill(pid, SIGKILL);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_expect(WIFSIGNALED(status));
	/* what it reported after our last read is committed too */
	while (read(fds[0], &got, sizeof(got)) == sizeof(got))
		last = got;
	close(fds[0]);

	struct suppress *s = open_store();
	struct suppress_reader *r = reader(s);
	time_t now = time(NULL);

	for (unsigned i = 0; i <= last; i++) {
		char addr[64];
		snprintf(addr, sizeof(addr), "user%u@example.com", i);
		cr_assert_eq(suppress_check(r, addr, NULL, NULL, now, NULL), 1,
			     "%s was reported committed and is lost", addr);
	}
	cr_expect_geq(suppress_count(s), last + 1);
	struct suppress_entry e = { .addr = "after@example.com", .kind = SUPPRESS_LIST };
	cr_expect_eq(suppress_add(s, &e, 1), 0, "the dead writer left the lock held");
	cr_expect_eq(suppress_check(r, "after@example.com", NULL, NULL, now, NULL), 1);
	suppress_reader_free(r);
	suppress_close(s);
	free(path);
}
