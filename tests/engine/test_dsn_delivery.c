/*
 * tests/engine/test_dsn_delivery.c - DSNs end to end: Python's smtplib
 * injects with RFC 3461 parameters, the daemon (sanitizer build) meets
 * scripted receivers on loopback, and the DSN the sender's receiver gets
 * is parsed by Python's email package (tests/engine/dsn_e2e.py).
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* py - run dsn_e2e.py with args; assert it exits 0. */
static void py(const char *const *args)
{
	const char *argv[40] = { "/usr/bin/python3", "engine/dsn_e2e.py" };
	size_t n = 2;
	char *out = NULL, *err = NULL;

	for (; *args && n < 39; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	int rc = testlib_run(argv, 60, &out, &err);
	cr_assert_eq(rc, 0, "dsn_e2e.py %s %s: %s%s", argv[2], argv[3], out, err);
	free(out);
	free(err);
}

static void send_py(const struct testlib_daemon *d, const char *const *args)
{
	char port[16];
	const char *argv[32] = { "send", port };
	size_t n = 2;

	snprintf(port, sizeof(port), "%d", d->port);
	for (; *args && n < 31; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	py(argv);
}

/* save_message - the ith message the peer got, to a file; its path. */
static char *save_message(const struct testlib_daemon *d, struct smtp_peer *p, size_t i)
{
	const struct smtp_peer_msg *m = smtp_peer_message(p, i);
	char name[32];

	cr_assert_not_null(m, "no message %zu", i);
	cr_assert_eq(m->size, m->body_len, "the DSN was cut short");
	snprintf(name, sizeof(name), "dsn-%zu.eml", i);
	return testlib_write(d->dir, name, m->body);
}

/* wait_peer - n messages at the peer, or fail showing the daemon's log. */
static void wait_peer(const struct testlib_daemon *d, struct smtp_peer *p, size_t n,
		      const char *what)
{
	if (smtp_peer_wait_messages(p, n, 20000) == 0)
		return;
	char *log = testlib_read_file(d->log);
	struct strbuf cmds = { 0 };
	const struct smtp_peer_cmd_rec *c;
	for (size_t i = 0; (c = smtp_peer_command(p, i)); i++)
		sb_printf(&cmds, "  %u %s -> %s\n", c->conn, c->line, c->reply);
	cr_assert_fail("%s; the receiver saw:\n%s\nthe daemon's log:\n%s", what,
		       sb_str(&cmds), log);
}

/* has_failure_notice - the peer (arg) got a DSN that reports a failure. */
static bool has_failure_notice(void *arg)
{
	const struct smtp_peer_msg *m;

	for (size_t i = 0; (m = smtp_peer_message(arg, i)); i++)
		if (strstr(m->body, "Action: failed"))
			return true;
	return false;
}

/*
 * A 5xx to one of two recipients: the sender gets one RFC 3464 report
 * naming that recipient only, with the receiver's reply, ORCPT, ENVID and
 * the whole message back (RET=FULL), from the null sender.
 */
Test(dsn_delivery, bounce_sends_rfc3464_report_to_the_sender, .timeout = 120)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "<nobody@",
		  .reply = "550 5.1.1 <nobody@bad.test>: Recipient address rejected: User unknown" },
	};
	struct smtp_peer *rcv = testlib_peer_on("127.0.0.21", rules, 1);
	struct smtp_peer *snd = testlib_peer_on("127.0.0.22", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain bad.test>\n    smtp-hosts [127.0.0.21]:%d\n</domain>\n"
		"<domain sender.test>\n    smtp-hosts [127.0.0.22]:%d\n</domain>\n",
		smtp_peer_port(rcv), smtp_peer_port(snd));

	testlib_daemon_start_or_fail(&d, conf);
	send_py(&d, (const char *[]){ "alice@sender.test", "nobody@bad.test,ok@bad.test",
				      "--ret", "FULL", "--envid", "env-4711",
				      "--notify", "FAILURE", "--orcpt", "Nobody@Bad.test",
				      "--subject", "quarterly report", NULL });
	wait_peer(&d, rcv, 1, "ok@ was not delivered");
	wait_peer(&d, snd, 1, "no DSN reached the sender");
	const struct smtp_peer_msg *m = smtp_peer_message(snd, 0);
	cr_expect_str_eq(m->mail_from, "", "a DSN goes out from the null sender");
	cr_assert_eq(m->nrcpt, 1);
	cr_expect_str_eq(m->rcpts[0], "alice@sender.test");
	char *file = save_message(&d, snd, 0);
	py((const char *[]){ "check", file, "--to", "alice@sender.test", "--action", "failed",
			     "--rcpt", "nobody@bad.test=5.1.1=550 5.1.1",
			     "--orcpt", "nobody@bad.test=Nobody@Bad.test",
			     "--envid", "env-4711", "--returned", "full",
			     "--subject", "quarterly report", NULL });
	/* exactly one notice, and nothing for the delivered recipient */
	cr_expect(testlib_peer_stays(snd, 1, 1500), "more than one DSN");
	free(file);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	smtp_peer_free(snd);
	free(conf);
}

/*
 * No DSN to the null sender, for NOTIFY=NEVER, for a bounce rule's
 * "action delete", or with deliver-bounces no;
 * the bounces themselves still happen.  A DSN that bounces makes none.
 */
Test(dsn_delivery, no_report_for_null_sender_never_delete_or_deliver_bounces_no, .timeout = 120)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "<full@", .reply = "552 5.2.2 mailbox full" },
		{ .cmd = SMTP_PEER_RCPT, .reply = "550 5.1.1 no such user" },
	};
	struct smtp_peer *rcv = testlib_peer_on("127.0.0.23", rules, 2);
	struct testlib_daemon d = { 0 };
	/* the senders' domain bounces too: a DSN to it must not loop */
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<bounce-category-patterns>\n    regex \"5\\.2\\.2\" action delete\n"
		"</bounce-category-patterns>\n"
		"<domain *>\n    smtp-hosts [127.0.0.23]:%d\n</domain>\n",
		smtp_peer_port(rcv));

	testlib_daemon_start_or_fail(&d, conf);
	/* the source guide's "action delete": bounced silently */
	send_py(&d, (const char *[]){ "frank@sender.test", "full@bad.test", NULL });
	send_py(&d, (const char *[]){ "", "a@bad.test", NULL });
	send_py(&d, (const char *[]){ "bob@sender.test", "b@bad.test", "--notify", "NEVER", NULL });
	send_py(&d, (const char *[]){ "carol@sender.test", "c@bad.test", NULL });
	cr_assert(testlib_wait_log(&d, "result=bounced", NULL, 4, 20000));
	/* carol's DSN is tried and bounced; no DSN is made for a DSN */
	cr_assert(testlib_wait_log(&d, "to=<carol@sender.test>", "result=bounced", 1, 20000),
		  "carol@ got no DSN");
	cr_expect(testlib_log_stays(&d, "to=<bob@sender.test>", NULL, 0, 1500),
		  "NOTIFY=NEVER was ignored");
	cr_expect_eq(testlib_log_lines(&d, "to=<frank@sender.test>", NULL), 0,
		     "action delete still sent a DSN");
	cr_expect_eq(testlib_log_lines(&d, "result=bounced", NULL), 5);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);

	/* deliver-bounces no: bounces, no notices */
	struct testlib_daemon d2 = { 0 };
	char *conf2 = xasprintf(TESTLIB_CONF_HEAD "deliver-bounces no\n"
		"<domain *>\n    smtp-hosts [127.0.0.23]:%d\n</domain>\n",
		smtp_peer_port(rcv));
	testlib_daemon_start_or_fail(&d2, conf2);
	send_py(&d2, (const char *[]){ "dave@sender.test", "d@bad.test", NULL });
	cr_assert(testlib_wait_log(&d2, "to=<d@bad.test>", "result=bounced", 1, 20000));
	cr_expect(testlib_log_stays(&d2, "to=<dave@sender.test>", NULL, 0, 1500),
		  "deliver-bounces no sent a DSN");
	testlib_daemon_stop(&d2, SIGTERM);
	testlib_daemon_cleanup(&d2);
	smtp_peer_free(rcv);
	free(conf);
	free(conf2);
}

/*
 * NOTIFY=DELAY,FAILURE to a receiver that only ever defers: delay notices
 * every notify-of-delay-every, then a failure notice at bounce-after with
 * status 5.4.7 and the last reply; headers only by default.
 */
Test(dsn_delivery, delay_notices_then_expiry_report, .timeout = 120)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .reply = "451 4.2.0 mailbox busy, try later" },
	};
	struct smtp_peer *rcv = testlib_peer_on("127.0.0.24", rules, 1);
	struct smtp_peer *snd = testlib_peer_on("127.0.0.25", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain slow.test>\n    smtp-hosts [127.0.0.24]:%d\n    retry-after 1s\n"
		"    bounce-after 7s\n    notify-of-delay-every 3s\n</domain>\n"
		"<domain sender.test>\n    smtp-hosts [127.0.0.25]:%d\n</domain>\n",
		smtp_peer_port(rcv), smtp_peer_port(snd));

	testlib_daemon_start_or_fail(&d, conf);
	send_py(&d, (const char *[]){ "erin@sender.test", "late@slow.test",
				      "--notify", "DELAY,FAILURE", "--subject", "waiting", NULL });
	cr_assert(testlib_wait_log(&d, "to=<late@slow.test>", "result=expired", 1, 30000),
		  "late@ never expired");
	/* about 3 s and 6 s in: delay notices, then the failure */
	wait_peer(&d, snd, 2, "expected delays + a failure");
	cr_expect(testlib_wait_until(has_failure_notice, snd, 20000), "no failure notice");
	struct smtp_peer_stats st;
	smtp_peer_stats(snd, &st);
	size_t failed = 0, delayed = 0;
	for (size_t i = 0; i < st.messages; i++) {
		char *file = save_message(&d, snd, i);
		bool fail = strstr(smtp_peer_message(snd, i)->body, "Action: failed") != NULL;
		failed += fail;
		delayed += !fail;
		py((const char *[]){ "check", file, "--to", "erin@sender.test",
				     "--action", fail ? "failed" : "delayed",
				     "--rcpt", fail ? "late@slow.test=5.4.7"
						    : "late@slow.test=4.2.0=451 4.2.0",
				     "--returned", "headers", "--subject", "waiting", NULL });
		free(file);
	}
	cr_expect_eq(failed, 1, "%zu failure notices", failed);
	/* 7 s of bounce-after, a notice each 3 s: 2 (1 if an attempt straddled 6 s) */
	cr_expect(delayed >= 1 && delayed <= 2, "%zu delay notices", delayed);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	smtp_peer_free(snd);
	free(conf);
}
