/*
 * tests/engine/test_fbl.c - the closed feedback loop end to end: the
 * daemon (sanitizer build) sends to a scripted receiver, gets an async
 * bounce and an ARF complaint on its processor addresses (built by
 * Python's email package, sent with smtplib: tests/engine/fbl_e2e.py) and
 * a 550 from the receiver; then every one of those addresses is refused
 * at RCPT, with rb, f and b records in the accounting file, and the
 * reports themselves are never relayed.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "engine/fbl.h"
#include "services/sentidx.h"
#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* what every daemon here runs with: one shard, relaying for 127.0.0.1 */
#define DAEMON_HEAD                            \
	"smtp-listener 127.0.0.1:@PORT@\n"     \
	"disk-queue @DIR@/spool\n"             \
	"host-name mta.test.invalid\n"         \
	"shards 1\n"                           \
	"allow-shard-oversubscription yes\n"

/* py - run fbl_e2e.py with args; 0 when it exited 0, its stderr in *why */
static int py_try(const char *const *args, char **why)
{
	const char *argv[24] = { "/usr/bin/python3", "engine/fbl_e2e.py" };
	size_t n = 2;
	char *out = NULL, *err = NULL;

	for (; *args && n < 23; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	int rc = testlib_run(argv, 60, &out, &err);
	free(out);
	if (why)
		*why = err;
	else
		free(err);
	return rc;
}

static void py(const struct testlib_daemon *d, const char *const *args)
{
	char *why = NULL;

	if (py_try(args, &why) != 0) {
		char *log = testlib_read_file(d->log);
		cr_assert_fail("fbl_e2e.py %s: %s\nthe daemon's log:\n%s", args[0], why, log);
	}
	free(why);
}

/* acct_has - the record appears within 10 s (the writer is asynchronous) */
static void acct_has(const struct testlib_daemon *d, const char *const *args)
{
	char *why = NULL;

	for (int i = 0; i < 50; i++) {
		free(why);
		why = NULL;
		if (py_try(args, &why) == 0) {
			free(why);
			return;
		}
		usleep(200 * 1000);
	}
	cr_assert_fail("%s", why);
	(void)d;
}

/* receiver - the scripted downstream MTA on addr */
static struct smtp_peer *receiver(const char *addr, const struct smtp_peer_rule *rules,
				  size_t nrules)
{
	return testlib_peer_start(addr, 0, SMTP_PEER_CAP_PIPELINING |
				  SMTP_PEER_CAP_ENHANCEDSTATUSCODES, rules, nrules);
}

Test(fbl, bounce_and_complaint_suppress_the_next_send, .timeout = 180)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "<hardfail@",
		  .reply = "550 5.1.1 <hardfail@example.org>: Recipient address rejected: User unknown" },
	};
	struct smtp_peer *rcv = receiver("127.0.0.61", rules, 1);
	struct testlib_daemon d = { 0 };
	char port[16];
	char *conf = xasprintf(
		DAEMON_HEAD
		"relay-domain bounces.sender.example\n"
		"relay-domain fbl.sender.example\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
		"<domain example.org>\n    smtp-hosts [127.0.0.61]:%d\n</domain>\n"
		"<bounce-processor>\n  <address-list>\n    domain bounces.sender.example\n"
		"  </address-list>\n</bounce-processor>\n"
		"<feedback-loop-processor>\n  <address-list>\n    address fbl@fbl.sender.example\n"
		"  </address-list>\n</feedback-loop-processor>\n"
		"<acct-file @DIR@/acct.csv>\n  records d,b,rb,rs,f\n"
		"  record-fields rb *,bounceClass\n"
		"  record-fields b *,bounceClass\n"
		"</acct-file>\n",
		smtp_peer_port(rcv));

	testlib_daemon_start_or_fail(&d, conf);
	snprintf(port, sizeof(port), "%d", d.port);
	char *acct = xasprintf("%s/acct.csv", d.dir);
	const char *from = "bounces-x@bounces.sender.example";

	/* 1. the first send: all three accepted, hardfail@ refused downstream */
	py(&d, (const char *[]){ "send", port, "news@sender.example",
				 "gone@example.org=250,angry@example.org=250,hardfail@example.org=250",
				 NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 1, 20000), 0, "nothing delivered");
	acct_has(&d, (const char *[]){ "acct", acct, "b", "hardfail@example.org",
				       "bounceCat=bad-mailbox", "bounceClass=hard", NULL });

	/* 2. the async bounce and the complaint arrive on the processors */
	py(&d, (const char *[]){ "dsn", port, "bounces-gone=example.org@bounces.sender.example",
				 "gone@example.org", "5.1.1",
				 "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
				 NULL });
	py(&d, (const char *[]){ "arf", port, "fbl@fbl.sender.example", "angry@example.org", NULL });
	/* a delay notice is an rs record and suppresses nothing */
	py(&d, (const char *[]){ "dsn", port, "bounces-slow=example.org@bounces.sender.example",
				 "slow@example.org", "4.2.2",
				 "452 4.2.2 <slow@example.org>: mailbox full, still trying", NULL });
	acct_has(&d, (const char *[]){ "acct", acct, "rb", "gone@example.org",
				       "bounceCat=bad-mailbox", "bounceClass=hard",
				       "dsnStatus=5.1.1 (bad destination mailbox address)",
				       "dsnReportingMta=mx.example.org", "format=dsn",
				       "orig=bounces-gone=example.org@bounces.sender.example",
				       "jobId=job-e2e", NULL });
	acct_has(&d, (const char *[]){ "acct", acct, "f", "angry@example.org",
				       "feedbackType=abuse", "format=arf",
				       "userAgent=Yahoo!-Mail-Feedback/2.0",
				       "reportedDomain=sender.example", "dlvSourceIp=192.0.2.10",
				       "header_From=News <news@sender.example>",
				       "header_X-Job=job-e2e", NULL });

	acct_has(&d, (const char *[]){ "acct", acct, "rs", "slow@example.org",
				       "dsnAction=delayed", "format=dsn",
				       "dsnReportingMta=mx.example.org", NULL });

	/* 3. the b record reaches the store through the accounting writer */
	py(&d, (const char *[]){ "wait-refused", port, from, "hardfail@example.org", "10", NULL });

	/* 4. send to all again: each refused at RCPT; a fresh one is not */
	py(&d, (const char *[]){ "send", port, "news@sender.example",
				 "gone@example.org=550,angry@example.org=550,"
				 "hardfail@example.org=550,fresh@example.org=250,"
				 "slow@example.org=250", NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 2, 20000), 0, "fresh@ not delivered");
	cr_expect(testlib_peer_stays(rcv, 2, 500),
		  "more messages reached the receiver: reports were relayed?");
	const struct smtp_peer_msg *m = smtp_peer_message(rcv, 1);
	cr_assert_not_null(m);
	cr_expect_eq(m->nrcpt, 2);
	cr_expect_str_eq(m->rcpts[0], "fresh@example.org");

	/* 5. the store is durable: a restart still refuses them */
	testlib_daemon_stop(&d, SIGKILL);
	testlib_daemon_start_or_fail(&d, conf);
	snprintf(port, sizeof(port), "%d", d.port);
	py(&d, (const char *[]){ "send", port, "other@sender.example",
				 "gone@example.org=550,angry@example.org=550,"
				 "hardfail@example.org=550", NULL });

	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	free(acct);
	free(conf);
}

/* suppression-file: PowerMTA address-list files imported at start, and
 * checked at RCPT in every scope the store knows. */
Test(fbl, suppression_file_imported_at_start)
{
	char *dir = testlib_tmpdir();
	char *list = testlib_write(dir, "list.txt",
				   "# static suppression list\naddress listed@example.org\n"
				   "domain blocked.example\n");
	char *bad = testlib_write(dir, "bad.txt", "ok@example.org\naddress /^x/\n");
	char *text = xasprintf("disk-queue %s\nsuppression-file %s\n", dir, list);
	char *badtext = xasprintf("disk-queue %s\nsuppression-db %s/db2\nsuppression-file %s\n",
				  dir, dir, bad);
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load(text, &dl);
	struct cfg *badcfg = testlib_load(badtext, &dl);
	struct fbl *f = NULL;
	char err[512] = "";

	cr_assert_not_null(cfg);
	cr_assert_not_null(badcfg);
	cr_assert_eq(fbl_new(cfg, 1, &f, err, sizeof(err)), 0, "%s", err);
	cr_expect_null(fbl_rcpt_check(f, 0, NULL, "news@sender.example", "fine@example.org"));
	const char *r = fbl_rcpt_check(f, 0, NULL, "news@sender.example", "Listed@example.org");
	cr_assert_not_null(r);
	cr_expect(strncmp(r, "550 5.7.1 ", 10) == 0, "%s", r);
	cr_expect(strstr(r, "list") != NULL, "%s", r);
	r = fbl_rcpt_check(f, 0, NULL, "", "anyone@blocked.example");
	cr_assert_not_null(r);
	cr_expect(strstr(r, "whole domain") != NULL, "%s", r);
	fbl_free(f);

	f = NULL;
	cr_expect_lt(fbl_new(badcfg, 1, &f, err, sizeof(err)), 0);
	cr_expect_null(f);
	cr_expect(strstr(err, "bad.txt:2:") != NULL, "%s", err);

	cfg_free(cfg);
	cfg_free(badcfg);
	diag_free(&dl);
	testlib_rmrf(dir);
	free(dir), free(list), free(bad), free(text), free(badtext);
}

/* suppression-action bounce: accepted at RCPT, never sent, a b record
 * with bounceCat suppressed; the others of the message are delivered. */
Test(fbl, bounce_action_accepts_and_records_suppressed, .timeout = 120)
{
	struct smtp_peer *rcv = receiver("127.0.0.62", NULL, 0);
	struct testlib_daemon d = { 0 };
	char port[16];

	d.dir = testlib_tmpdir();
	char *list = testlib_write(d.dir, "list.txt", "address listed@example.org\n");
	char *conf = xasprintf(
		DAEMON_HEAD
		"suppression-action bounce\n"
		"suppression-file %s\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
		"<domain example.org>\n    smtp-hosts [127.0.0.62]:%d\n</domain>\n"
		"<acct-file @DIR@/acct.csv>\n  records d,b\n</acct-file>\n",
		list, smtp_peer_port(rcv));

	testlib_daemon_start_or_fail(&d, conf);
	snprintf(port, sizeof(port), "%d", d.port);
	char *acct = xasprintf("%s/acct.csv", d.dir);

	py(&d, (const char *[]){ "send", port, "news@sender.example",
				 "listed@example.org=250,ok@example.org=250", NULL });
	py(&d, (const char *[]){ "send", port, "news@sender.example",
				 "listed@example.org=250", NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 1, 20000), 0, "ok@ not delivered");
	acct_has(&d, (const char *[]){ "acct", acct, "b", "listed@example.org",
				       "bounceCat=suppressed",
				       "dsnStatus=5.7.1 (delivery not authorized, message refused)",
				       NULL });
	acct_has(&d, (const char *[]){ "acct", acct, "d", "ok@example.org", NULL });
	cr_expect(testlib_peer_stays(rcv, 1, 500), "the suppressed recipient was sent");
	const struct smtp_peer_msg *m = smtp_peer_message(rcv, 0);
	cr_assert_not_null(m);
	cr_expect_eq(m->nrcpt, 1);
	cr_expect_str_eq(m->rcpts[0], "ok@example.org");

	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	free(acct), free(conf), free(list);
}

/* run_suppress - `coremta suppress -c CONF args...`; its exit status, its
 * standard output in *out */
static int run_suppress(const struct testlib_daemon *d, const char *const *args, char **out)
{
	char *conf = xasprintf("%s/coremta.conf", d->dir);
	const char *argv[16] = { testlib_coremta_bin(), "suppress", "-c", conf };
	size_t n = 4;
	char *err = NULL;

	for (; *args && n < 15; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	int rc = testlib_run(argv, 30, out, &err);
	free(err);
	free(conf);
	return rc;
}

/* `coremta suppress` works on the running daemon's store: an address the
 * operator adds is refused at the next RCPT, and sent to again once
 * removed; show and export see what the daemon itself added. */
Test(fbl, operator_suppress_command_on_running_daemon, .timeout = 120)
{
	struct smtp_peer *rcv = receiver("127.0.0.63", NULL, 0);
	struct testlib_daemon d = { 0 };
	char port[16];
	char *out = NULL;

	d.dir = testlib_tmpdir();
	char *conf = xasprintf(
		DAEMON_HEAD
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
		"<domain example.org>\n    smtp-hosts [127.0.0.63]:%d\n</domain>\n",
		smtp_peer_port(rcv));

	testlib_daemon_start_or_fail(&d, conf);
	snprintf(port, sizeof(port), "%d", d.port);

	cr_expect_eq(run_suppress(&d, (const char *[]){ "show", "later@example.org", NULL }, &out), 1);
	free(out);
	cr_assert_eq(run_suppress(&d, (const char *[]){ "add", "Later@Example.org", "--reason",
							 "asked by phone", NULL }, &out), 0, "%s", out);
	free(out);
	py(&d, (const char *[]){ "send", port, "news@sender.example",
				 "later@example.org=550,ok@example.org=250", NULL });
	cr_assert_eq(run_suppress(&d, (const char *[]){ "show", "later@example.org", NULL }, &out), 0);
	cr_expect(strstr(out, "asked by phone") != NULL, "%s", out);
	free(out);
	cr_assert_eq(run_suppress(&d, (const char *[]){ "export", NULL }, &out), 0);
	cr_expect(strstr(out, "later@example.org,global,,list,") != NULL, "%s", out);
	free(out);
	/* the same through `coremta ctl suppress` */
	char *conf_path = xasprintf("%s/coremta.conf", d.dir), *err = NULL;
	const char *via_ctl[] = { testlib_coremta_bin(), "ctl", "-c", conf_path, "suppress",
				  "show", "later@example.org", NULL };
	cr_expect_eq(testlib_run(via_ctl, 30, &out, &err), 0, "ctl suppress show: %s", err);
	cr_expect(strstr(out, "asked by phone") != NULL, "%s", out);
	free(out), free(err), free(conf_path);

	cr_assert_eq(run_suppress(&d, (const char *[]){ "remove", "later@example.org", NULL }, &out), 0);
	free(out);
	py(&d, (const char *[]){ "send", port, "news@sender.example", "later@example.org=250", NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 2, 20000), 0, "not delivered");
	cr_expect_eq(run_suppress(&d, (const char *[]){ "remove", "later@example.org", NULL }, &out), 1);
	free(out);
	cr_expect_eq(run_suppress(&d, (const char *[]){ "add", "not-an-address", NULL }, &out), 65);
	free(out);

	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	free(conf);
}

/* source_of - the effective <source> for a client at ip */
static const struct cfg_source *source_of(const struct cfg *cfg, const char *ip)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };

	cr_assert_eq(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
	return cfg_source_lookup(cfg, (const struct sockaddr *)&sin, NULL);
}

/* A top-level <address-list> named by a source's suppression-lists: its
 * addresses, domains and /regex/ lines are refused for that source only;
 * its exact lines are in the store (and leave it when the configuration
 * drops them); an unknown list name is a file:line error. */
Test(fbl, address_list_suppresses_for_the_sources_that_name_it)
{
	char *dir = testlib_tmpdir();
	const char *lists =
		"<address-list unsubscribed>\n"
		"  address gone@example.org\n"
		"  domain closed.example\n"
		"  address /^spamtrap-[0-9]+@/\n"
		"</address-list>\n"
		"<source 127.0.0.1>\n  suppression-lists unsubscribed\n</source>\n";
	char *text = xasprintf("disk-queue %s\n%s", dir, lists);
	char *text2 = xasprintf("disk-queue %s\n<address-list unsubscribed>\n"
				"  address other@example.org\n</address-list>\n"
				"<source 127.0.0.1>\n  suppression-lists unsubscribed\n</source>\n", dir);
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load(text, &dl);
	struct fbl *f = NULL;
	char err[512] = "";

	cr_assert_not_null(cfg, "%s", testlib_diag_text(&dl));
	const struct cfg_source *listed = source_of(cfg, "127.0.0.1");
	const struct cfg_source *other = source_of(cfg, "127.0.0.2");
	cr_assert_not_null(listed);
	cr_assert_not_null(other);
	cr_assert_eq(fbl_new(cfg, 1, &f, err, sizeof(err)), 0, "%s", err);
	const char *r = fbl_rcpt_check(f, 0, listed, "news@sender.example", "Gone@example.org");
	cr_assert_not_null(r);
	cr_expect(strncmp(r, "550 5.7.1 ", 10) == 0, "%s", r);
	cr_expect(strstr(r, "address-list unsubscribed") != NULL, "%s", r);
	cr_expect_not_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "x@closed.example"));
	cr_expect_not_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "spamtrap-42@any.example"));
	cr_expect_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "spamtrap-x@any.example"));
	cr_expect_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "fine@example.org"));
	/* a source that does not name the list sends to all of them */
	cr_expect_null(fbl_rcpt_check(f, 0, other, "a@b.example", "gone@example.org"));
	cr_expect_null(fbl_rcpt_check(f, 0, other, "a@b.example", "spamtrap-42@any.example"));
	fbl_free(f);
	cfg_free(cfg);

	/* the list changed: gone@ is no longer suppressed, other@ is */
	cfg = testlib_load(text2, &dl);
	cr_assert_not_null(cfg);
	listed = source_of(cfg, "127.0.0.1");
	cr_assert_eq(fbl_new(cfg, 1, &f, err, sizeof(err)), 0, "%s", err);
	cr_expect_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "gone@example.org"));
	cr_expect_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "x@closed.example"));
	cr_expect_not_null(fbl_rcpt_check(f, 0, listed, "a@b.example", "other@example.org"));
	fbl_free(f);
	cfg_free(cfg);

	/* a name that is no list */
	diag_free(&dl);
	dl = (struct diag_list){ 0 };
	cr_expect_null(testlib_load("<source 0/0>\n  suppression-lists nosuch\n</source>\n", &dl));
	char *diags = testlib_diag_text(&dl);
	cr_expect(strstr(diags, ":2: ") && strstr(diags, "no <address-list nosuch> is defined"),
		  "%s", diags);
	free(diags);

	diag_free(&dl);
	testlib_rmrf(dir);
	free(dir), free(text), free(text2);
}

/* Mail for processor addresses that is no usable report: forwarded
 * (forward-unmatched-to, forward-errors-to for a report of the other
 * kind) or, with deliver-unmatched-email no and nowhere to forward, kept
 * under <disk-queue>/unmatched; never relayed to the processor address,
 * never dropped. */
Test(fbl, unmatched_and_error_mail_forwarded_or_kept, .timeout = 120)
{
	struct smtp_peer *rcv = receiver("127.0.0.64", NULL, 0);
	struct testlib_daemon d = { 0 };
	char port[16];

	d.dir = testlib_tmpdir();
	char *conf = xasprintf(
		DAEMON_HEAD
		"relay-domain bounces.sender.example\n"
		"relay-domain fbl.sender.example\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
		"<domain example.org>\n    smtp-hosts [127.0.0.64]:%d\n</domain>\n"
		"<bounce-processor>\n  deliver-unmatched-email no\n"
		"  forward-unmatched-to postmaster@example.org\n"
		"  <address-list>\n    domain bounces.sender.example\n  </address-list>\n"
		"</bounce-processor>\n"
		"<feedback-loop-processor>\n  deliver-unmatched-email no\n"
		"  forward-errors-to abuse-desk@example.org\n"
		"  <address-list>\n    address fbl@fbl.sender.example\n  </address-list>\n"
		"</feedback-loop-processor>\n",
		smtp_peer_port(rcv));

	testlib_daemon_start_or_fail(&d, conf);
	snprintf(port, sizeof(port), "%d", d.port);

	/* 1. no report, to the bounce processor: forward-unmatched-to */
	py(&d, (const char *[]){ "send", port, "someone@else.example",
				 "x@bounces.sender.example=250", NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 1, 20000), 0, "unmatched mail not forwarded");
	const struct smtp_peer_msg *m = smtp_peer_message(rcv, 0);
	cr_assert_not_null(m);
	cr_expect_eq(m->nrcpt, 1);
	cr_expect_str_eq(m->rcpts[0], "postmaster@example.org");

	/* 2. a bounce report to the complaint processor: forward-errors-to */
	py(&d, (const char *[]){ "dsn", port, "fbl@fbl.sender.example", "gone@example.org",
				 "5.1.1", "550 5.1.1 user unknown", NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 2, 20000), 0, "error report not forwarded");
	m = smtp_peer_message(rcv, 1);
	cr_assert_not_null(m);
	cr_expect_eq(m->nrcpt, 1);
	cr_expect_str_eq(m->rcpts[0], "abuse-desk@example.org");

	/* 3. no report, to the complaint processor, nowhere to forward: kept */
	py(&d, (const char *[]){ "send", port, "someone@else.example",
				 "fbl@fbl.sender.example=250", NULL });
	char *kept_dir = xasprintf("%s/spool/unmatched", d.dir);
	const char *ls[] = { "/bin/sh", "-c", "cat \"$0\"/*.eml", kept_dir, NULL };
	char *out = NULL, *err = NULL;
	cr_expect_eq(testlib_run(ls, 10, &out, &err), 0, "%s", err);
	cr_expect(out && strstr(out, "hello") && strstr(out, "someone@else.example"),
		  "kept file: %s", out ? out : "(none)");
	cr_expect(testlib_peer_stays(rcv, 2, 300), "not 2 messages at the receiver");

	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	free(out), free(err), free(kept_dir), free(conf);
}

/* A report that names no recipient but quotes the original's Message-ID
 * is matched to what was delivered under it (the sent index, fed by the
 * d records); one that lacks the X-Job gets the job from there too. */
Test(fbl, report_matched_by_message_id, .timeout = 120)
{
	struct smtp_peer *rcv = receiver("127.0.0.65", NULL, 0);
	struct testlib_daemon d = { 0 };
	char port[16];

	d.dir = testlib_tmpdir();
	char *conf = xasprintf(
		DAEMON_HEAD
		"relay-domain bounces.sender.example\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n    process-x-job yes\n</source>\n"
		"<domain example.org>\n    smtp-hosts [127.0.0.65]:%d\n</domain>\n"
		"<bounce-processor>\n  <address-list>\n    domain bounces.sender.example\n"
		"  </address-list>\n</bounce-processor>\n"
		"<acct-file @DIR@/acct.csv>\n  records d,rb\n</acct-file>\n",
		smtp_peer_port(rcv));

	testlib_daemon_start_or_fail(&d, conf);
	snprintf(port, sizeof(port), "%d", d.port);
	char *acct = xasprintf("%s/acct.csv", d.dir);

	py(&d, (const char *[]){ "send-id", port, "news@sender.example", "quiet@example.org",
				 "<stmt-1@sender.example>", "job-77", NULL });
	py(&d, (const char *[]){ "send-id", port, "news@sender.example", "gone@example.org",
				 "<orig-gone@example.org>", "job-88", NULL });
	cr_assert_eq(smtp_peer_wait_messages(rcv, 2, 20000), 0, "not delivered");
	acct_has(&d, (const char *[]){ "acct", acct, "d", "quiet@example.org", NULL });
	acct_has(&d, (const char *[]){ "acct", acct, "d", "gone@example.org", NULL });
	/* the index is written after the batch's records: wait for it */
	char *sdir = xasprintf("%s/spool/sent-index", d.dir), err[256];
	struct sentidx *x = NULL;
	struct sentidx_reader *xr = NULL;
	struct sentidx_hit hit;
	int found = 0;
	cr_assert_eq(sentidx_open(sdir, 7, &x, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sentidx_reader_new(x, &xr), 0);
	for (int i = 0; i < 100 && found != 1; i++) {
		if ((found = sentidx_get(xr, "<stmt-1@sender.example>", &hit)) != 1)
			usleep(100 * 1000);
	}
	cr_assert_eq(found, 1, "stmt-1 never reached the sent index");
	cr_expect_eq(hit.nrcpts, 1);
	cr_expect_str_eq(hit.rcpts[0], "quiet@example.org");
	cr_expect_str_eq(hit.job_id, "job-77");
	sentidx_reader_free(xr);
	sentidx_close(x);
	free(sdir);

	/* no recipient in it anywhere: the Message-ID is the only link */
	py(&d, (const char *[]){ "text-bounce", port, "bounces@bounces.sender.example",
				 "<stmt-1@sender.example>", NULL });
	acct_has(&d, (const char *[]){ "acct", acct, "rb", "quiet@example.org",
				       "jobId=job-77", "dsnAction=failed", NULL });
	/* a DSN quoting an original whose X-Job is job-e2e keeps its own; the
	 * recipient is the DSN's */
	py(&d, (const char *[]){ "dsn", port, "bounces@bounces.sender.example",
				 "gone@example.org", "5.1.1", "550 5.1.1 user unknown", NULL });
	acct_has(&d, (const char *[]){ "acct", acct, "rb", "gone@example.org",
				       "jobId=job-e2e", NULL });

	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(rcv);
	free(acct), free(conf);
}
