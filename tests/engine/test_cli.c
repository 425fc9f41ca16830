/*
 * tests/engine/test_cli.c - the coremta command as an operator runs it:
 * exit statuses of `coremta check`, its report, --show, --source,
 * --shards, --reference, and the daemon's start, reload and clean stop.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

static int check(const char *const *args, char **out, char **err)
{
	const char *argv[16] = { testlib_coremta_bin(), "check" };
	size_t n = 2;

	for (; *args && n < 15; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	return testlib_run(argv, 60, out, err);
}

Test(cli, check_exit_statuses)
{
	char *dir = testlib_tmpdir();
	char *good = testlib_write(dir, "good.conf",
		"process-user coremta\n<domain *>\n  max-msg-per-connection 100\n</domain>\n");
	char *bad = testlib_write(dir, "bad.conf", "<domain *>\n  max-smtp-out many\n</domain>\n");
	char *out, *err;

	cr_expect_eq(check((const char *[]){ "-c", good, NULL }, &out, &err), 0, "%s%s", out, err);
	cr_expect(strstr(out, "0 errors"), "%s", out);
	free(out), free(err);

	cr_expect_eq(check((const char *[]){ "-c", good, "--strict", NULL }, &out, &err), 2,
		     "%s", out);
	free(out), free(err);

	cr_expect_eq(check((const char *[]){ "-c", bad, NULL }, &out, &err), 1);
	char *want = xasprintf("%s:2: error: 'max-smtp-out': expected a whole number", bad);
	cr_expect(strstr(out, want), "%s", out);
	cr_expect(strstr(out, "1 error, 0 warnings; not loaded"), "%s", out);
	free(want), free(out), free(err);

	cr_expect_eq(check((const char *[]){ "-c", "/nonexistent.conf", NULL }, &out, &err), 1);
	cr_expect(strstr(out, "/nonexistent.conf"), "%s", out);
	free(out), free(err);

	cr_expect_eq(check((const char *[]){ "--bogus", NULL }, &out, &err), 64);
	free(out), free(err);

	testlib_rmrf(dir);
	free(dir), free(good), free(bad);
}

/* Regression: `coremta -c` with no file said "unknown option '-c'". */
Test(cli, option_c_without_a_file_says_it_needs_one)
{
	const char *argv[] = { testlib_coremta_bin(), "-c", NULL };
	char *out, *err;

	cr_expect_eq(testlib_run(argv, 30, &out, &err), 64);
	cr_expect(strstr(err, "option '-c' needs a configuration file"), "%s", err);
	cr_expect(!strstr(err, "unknown option"), "%s", err);
	free(out), free(err);

	cr_expect_eq(check((const char *[]){ "--show", NULL }, &out, &err), 64);
	cr_expect(strstr(err, "option '--show' needs a value: --show DOMAIN[/VMTA]"), "%s", err);
	free(out), free(err);
}

Test(cli, check_reference_configs_and_show)
{
	char *seed = xasprintf("data/configs/guide.conf");
	char *out, *err;

	cr_expect_eq(check((const char *[]){ "-c", seed, "--show", "gmail.com/vmta-ip1",
					     "--source", "127.0.0.1", "--shards", "gmail.com", NULL },
			   &out, &err), 0, "%s%s", out, err);
	cr_expect(strstr(out, "queue gmail.com/vmta-ip1 (most specific match: <domain gmail.com>)"), "%s", out);
	char *want = xasprintf("max-msg-rate                       1000/h                   %s:67", seed);
	cr_expect(strstr(out, want), "%s", out);
	cr_expect(strstr(out, "source for client 127.0.0.1 (most specific match: <source 127.0.0.1/32>)"), "%s", out);
	cr_expect(strstr(out, "gmail.com -> shard "), "%s", out);
	free(want), free(out), free(err);

	cr_expect_eq(check((const char *[]){ "-c", seed, "--show", "x.org/nosuch", NULL },
			   &out, &err), 1);
	cr_expect(strstr(err, "no virtual-mta named 'nosuch'"), "%s", err);
	free(out), free(err), free(seed);
}

Test(cli, reference_table_is_in_tuning_md)
{
	char *out, *err;
	FILE *f = fopen("../tuning.md", "r");
	struct strbuf sb = { 0 };
	char buf[4096];
	size_t n;

	cr_assert_eq(check((const char *[]){ "--reference", NULL }, &out, &err), 0);
	cr_assert_not_null(f, "tuning.md is missing");
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		sb_add(&sb, buf, n);
	fclose(f);
	cr_expect(strstr(sb_str(&sb), out) != NULL,
		  "tuning.md's directive reference is stale: regenerate it with `make tuning-reference`");
	free(out), free(err);
	sb_free(&sb);
}

/* The daemon loads, reports, reloads on SIGHUP and stops on SIGTERM. */
Test(cli, daemon_lifecycle, .timeout = 60)
{
	struct testlib_daemon d = { 0 };

	testlib_daemon_start_or_fail(&d, "smtp-listener 127.0.0.1:@PORT@\ndisk-queue @DIR@/spool\n");
	char *want = xasprintf("listening addr=127.0.0.1 port=%d", d.port);
	cr_expect_gt(d.port, 0, "port 0 in the config: the kernel picks one");
	/* a broken config on reload keeps the running one */
	free(testlib_write(d.dir, "coremta.conf", "smtp-listener nonsense\n"));
	kill(d.pid, SIGHUP);
	cr_expect(testlib_wait_log(&d, "failed; the running configuration is unchanged", NULL, 1,
				   10000));
	int ws = testlib_daemon_stop(&d, SIGTERM);
	cr_expect(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %d", ws);

	char *log_text = testlib_read_file(d.log);
	cr_expect(strstr(log_text, "loaded: 1 listener (first 127.0.0.1:0)"), "%s", log_text);
	cr_expect(strstr(log_text, want), "%s", log_text);
	cr_expect(strstr(log_text, "recovered: 0 messages"), "%s", log_text);
	cr_expect(strstr(log_text, "SIGTERM received, stopping"), "%s", log_text);
	free(log_text), free(want);
	testlib_daemon_cleanup(&d);
}

static bool port_accepts(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

	close(fd);
	return ok;
}

/*
 * `make run`: with no -c the embedded configuration starts in an empty
 * directory, creating its spool and log directories.
 */
Test(cli, embedded_config_starts_in_an_empty_directory, .timeout = 60)
{
	if (port_accepts(2525))
		cr_skip_test("127.0.0.1:2525 is in use; the embedded config listens there");
	char *dir = testlib_tmpdir();
	char *log = xasprintf("%s/stderr", dir);
	pid_t parent = getpid();
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent || chdir(dir) < 0)
			_exit(127);
		FILE *f = freopen(log, "w", stderr);
		(void)f;
		execl(testlib_coremta_bin(), "coremta", (char *)NULL);
		_exit(127);
	}
	bool up = testlib_wait_file(log, "event=listening addr=127.0.0.1 port=2525", 1,
				    TESTLIB_START_MS) && port_accepts(2525);
	kill(pid, SIGTERM);
	int ws = 0;
	waitpid(pid, &ws, 0);
	char *text = testlib_read_file(log);
	cr_expect(up, "the embedded config never listened:\n%s", text);
	cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %d:\n%s", ws, text);
	char *acct = xasprintf("%s/var/log/acct.csv", dir);
	char *csv = testlib_read_file(acct);
	cr_expect(strncmp(csv, "type,", 5) == 0, "no accounting header in %s: '%s'", acct, csv);
	testlib_rmrf(dir);
	free(dir), free(log), free(text), free(acct), free(csv);
}

/* A log directory that cannot be made is a clean error, not a crash. */
Test(cli, unusable_log_directory_is_a_clean_error)
{
	char *dir = testlib_tmpdir();
	char *text = xasprintf("smtp-listener 127.0.0.1:0\ndisk-queue %s/spool\n"
			       "<acct-file /proc/coremta-no-such-dir/acct.csv>\n</acct-file>\n",
			       dir);
	char *conf = testlib_write(dir, "d.conf", text);
	const char *argv[] = { testlib_coremta_bin(), "-c", conf, NULL };
	char *out = NULL, *err = NULL;
	int rc = testlib_run(argv, 30, &out, &err);

	cr_expect(rc > 0, "exit status %d (a signal or success):\n%s", rc, err);
	cr_expect(strstr(err, "acct.csv"), "the error does not name the file:\n%s", err);
	cr_expect_not(strstr(err, "BUG"), "%s", err);
	testlib_rmrf(dir);
	free(dir), free(text), free(conf), free(out), free(err);
}

/*
 * log-file is acted on: every line stamped (ISO 8601 UTC), nothing left
 * on stderr, and SIGUSR1 reopens the file after an outside logrotate.
 */
Test(cli, log_file_stamped_and_reopened_on_sigusr1, .timeout = 60)
{
	struct testlib_daemon d = { 0 };

	testlib_daemon_start_or_fail(&d,
		"smtp-listener 127.0.0.1:@PORT@\ndisk-queue @DIR@/spool\n"
		"log-file @DIR@/log/coremta.log\nlog-rotate 3\n");
	char *path = xasprintf("%s/log/coremta.log", d.dir);
	char *moved = xasprintf("%s/log/coremta.log.moved", d.dir);
	cr_expect_str_eq(d.log, path, "the daemon's log is its log-file");
	char *text = testlib_read_file(path);
	cr_expect(strstr(text, "loaded: 1 listener"), "%s", text);
	free(text);
	cr_assert_eq(rename(path, moved), 0);
	kill(d.pid, SIGUSR1);
	cr_expect(testlib_wait_file(path, "event=log text=\"reopened ", 1, 5000));
	int ws = testlib_daemon_stop(&d, SIGTERM);
	cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "status %d", ws);

	char *before = testlib_read_file(moved), *after = testlib_read_file(path);
	char *err = testlib_read_file(d.err);
	cr_expect(strstr(before, "Z coremta: level=notice event=started version=0.1.0 "), "%s", before);
	/* the daemon's note and the writer's reopen race: either file has it */
	cr_expect(strstr(before, "SIGUSR1 received: reopening the log file") ||
		  strstr(after, "SIGUSR1 received: reopening the log file"), "%s%s", before, after);
	cr_expect(strstr(after, "coremta: level=notice event=log text=\"reopened "), "%s", after);
	cr_expect(!strstr(before, "SIGTERM received"), "%s", before);
	cr_expect(strstr(after, "SIGTERM received, stopping"), "%s", after);
	cr_expect(testlib_every_line_stamped(before), "%s", before);
	cr_expect(testlib_every_line_stamped(after), "%s", after);
	cr_expect_str_eq(err, "", "with log-file, stderr stays empty");
	free(before), free(after), free(err), free(path), free(moved);
	testlib_daemon_cleanup(&d);
}

/* Without log-file the lines go to stderr, stamped all the same. */
Test(cli, stderr_lines_are_stamped, .timeout = 60)
{
	struct testlib_daemon d = { 0 };

	testlib_daemon_start_or_fail(&d, "smtp-listener 127.0.0.1:@PORT@\ndisk-queue @DIR@/spool\n");
	testlib_daemon_stop(&d, SIGTERM);
	char *text = testlib_read_file(d.log);
	cr_expect(strstr(text, "SIGTERM received, stopping"), "%s", text);
	cr_expect(testlib_every_line_stamped(text), "%s", text);
	free(text);
	testlib_daemon_cleanup(&d);
}

/*
 * Regression: with `process-user nobody` coremta stopped on "acct-file
 * ...: Permission denied" without naming the directory or the user; and
 * the lint's own fix, `process-user coremta`, failed with a bare "does
 * not exist".  Both now say what to do.
 */
Test(cli, process_user_errors_say_what_to_fix, .timeout = 60)
{
	if (geteuid() != 0)
		cr_skip_test("needs root: the daemon only changes user when started as root");
	char *dir = testlib_tmpdir();
	char *acct = xasprintf("%s/acct", dir);
	cr_assert_eq(mkdir(acct, 0755), 0);	/* root's: nobody cannot write here */
	char *text = xasprintf("smtp-listener 127.0.0.1:0\ndisk-queue %s/spool\n"
			       "process-user nobody\n<acct-file %s/acct.csv>\n  records d\n"
			       "</acct-file>\n", dir, acct);
	char *conf = testlib_write(dir, "nobody.conf", text);
	const char *argv[] = { testlib_coremta_bin(), "-c", conf, NULL };
	char *out, *err;

	/* the daemon must stop by itself, saying why */
	cr_expect_eq(testlib_run(argv, 30, &out, &err), 1, "%s", err);
	char *want = xasprintf("acct-file %s/acct.csv: directory %s is not writable by nobody", acct,
			       acct);
	cr_expect(strstr(err, want), "%s", err);
	cr_expect(strstr(err, "chown nobody "), "%s", err);
	free(out), free(err), free(want), free(text), free(conf);

	text = xasprintf("smtp-listener 127.0.0.1:0\ndisk-queue %s/spool\n"
			 "process-user coremta-no-such-user\n", dir);
	conf = testlib_write(dir, "nouser.conf", text);
	argv[2] = conf;
	cr_expect_eq(testlib_run(argv, 30, &out, &err), 1, "%s", err);
	cr_expect(strstr(err, "process-user 'coremta-no-such-user' does not exist: create it (useradd"),
		  "%s", err);
	free(out), free(err), free(text), free(conf), free(acct);
	testlib_rmrf(dir);
	free(dir);
}

/* README's quick start and make install use these: they load clean. */
Test(cli, example_configs_load_without_errors_or_warnings)
{
	static const char *const files[] = { "../examples/sink.conf", "../examples/coremta.conf" };

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char *out, *err;
		cr_expect_eq(check((const char *[]){ "-c", files[i], NULL }, &out, &err), 0,
			     "%s%s", out, err);
		cr_expect(strstr(out, "0 errors, 0 warnings"), "%s: %s", files[i], out);
		free(out), free(err);
	}
}

/* Typos fatal, PowerMTA-only directives not: --unknown-fatal. */
Test(cli, unknown_fatal_fails_on_typos_only)
{
	char *dir = testlib_tmpdir();
	char *typo = testlib_write(dir, "typo.conf",
		"process-user coremta\n<domain *>\n  max-smpt-out 10\n</domain>\n");
	char *pmta = testlib_write(dir, "pmta.conf",
		"process-user coremta\npostmaster a@example.org\n<domain *>\n</domain>\n");
	char *out, *err;

	cr_expect_eq(check((const char *[]){ "-c", typo, "--unknown-fatal", NULL }, &out, &err), 1,
		     "%s", out);
	char *want = xasprintf("%s:3: error: unknown directive 'max-smpt-out' in <domain>; did you mean 'max-smtp-out'?", typo);
	cr_expect(strstr(out, want), "%s", out);
	free(want), free(out), free(err);

	/* postmaster is known, just not acted on: a warning, exit 0 */
	cr_expect_eq(check((const char *[]){ "-c", pmta, "--unknown-fatal", NULL }, &out, &err), 0,
		     "%s", out);
	cr_expect(strstr(out, "'postmaster' is accepted but not acted on"), "%s", out);
	free(out), free(err);

	cr_expect_eq(check((const char *[]){ "-c", NULL }, &out, &err), 64);
	cr_expect(strstr(err, "option '-c' needs a file"), "%s", err);
	free(out), free(err);

	testlib_rmrf(dir);
	free(dir), free(typo), free(pmta);
}
