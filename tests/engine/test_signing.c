/*
 * tests/engine/test_signing.c - DKIM at intake (engine/signing.c): which
 * messages are signed and by which keys (table-driven, real keys), and
 * end to end: a message through the daemon (sanitizer build) to a
 * receiver on loopback, deferred once and then delivered, whose copy is
 * verified by dkimpy and OpenDKIM with the keys in dnsmasq.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "engine/signing.h"
#include "util/util.h"
#include "tests/lib/dnsmasq.h"
#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* sig_summary - "d=X s=Y a=Z" of each signature in text, ' | ' between. */
static char *sig_summary(const char *text)
{
	struct strbuf sb = { 0 };
	const char *p = text;

	while ((p = strstr(p, "DKIM-Signature:"))) {
		const char *end = strstr(p + 1, "DKIM-Signature:");
		const char *tags[] = { "d=", "s=", "a=", "i=" };
		if (sb.len)
			sb_adds(&sb, " | ");
		for (size_t t = 0; t < ARRAY_SIZE(tags); t++) {
			const char *v = strstr(p, tags[t]);
			/* a tag starts after "; " or a fold */
			while (v && (!end || v < end) && v[-1] != ' ' && v[-1] != '\t')
				v = strstr(v + 1, tags[t]);
			if (!v || (end && v > end))
				continue;
			sb_printf(&sb, "%s%.*s", t ? " " : "", (int)strcspn(v, ";"), v);
		}
		p++;
	}
	return sb_detach(&sb);
}

struct sel_case {
	const char *name;
	const char *conf;	/* after the keys */
	const char *vmta;
	const char *headers;	/* the message's header section */
	const char *rcpt1, *rcpt2;
	const char *want;	/* sig_summary, "" = not signed */
};

#define KEYS                                                           \
	"domain-key rsa2048, example.test, data/dkim/rsa2048.key\n"    \
	"domain-key ed25519, esp.test, data/dkim/ed25519.key\n"

static const struct sel_case sel_cases[] = {
	{ "aligned with From:", KEYS "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: Alice <alice@example.test>\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256" },
	{ "a parent domain's key", KEYS "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@news.Example.TEST\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256" },
	{ "not asked for", KEYS, NULL,
	  "From: alice@example.test\r\n", "b@r.test", NULL, "" },
	{ "no key for the author", KEYS "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@other.test\r\n", "b@r.test", NULL, "" },
	/* no author domain, no identity: nothing to align with */
	{ "an empty From:", KEYS "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From:\r\n", "b@r.test", NULL, "" },
	{ "fallback identity", KEYS "<domain *>\ndkim-sign yes\ndkim-identity-fallback @esp.test\n</domain>\n",
	  NULL, "From: alice@other.test\r\n", "b@r.test", NULL,
	  "d=esp.test s=ed25519 a=ed25519-sha256" },
	{ "author and Sender: (the ESP) both sign", KEYS "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@example.test\r\nSender: bounces@esp.test\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256 | d=esp.test s=ed25519 a=ed25519-sha256" },
	{ "dkim-identity from ignores Sender:", KEYS
	  "<domain *>\ndkim-sign yes\ndkim-identity from\n</domain>\n", NULL,
	  "From: alice@example.test\r\nSender: bounces@esp.test\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256" },
	{ "fixed identity sets i=", KEYS
	  "<domain *>\ndkim-sign yes\ndkim-identity mailer@news.example.test\n</domain>\n", NULL,
	  "From: alice@example.test\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256 i=mailer@news.example.test" },
	{ "one recipient's queue says yes", KEYS "<domain yes.test>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@example.test\r\n", "b@no.test", "c@yes.test",
	  "d=example.test s=rsa2048 a=rsa-sha256" },
	{ "dkim-algorithm filters keys", KEYS "domain-key ed25519, example.test, data/dkim/ed25519.key\n"
	  "<domain *>\ndkim-sign yes\ndkim-algorithm ed25519-sha256\n</domain>\n", NULL,
	  "From: alice@example.test\r\n", "b@r.test", NULL,
	  "d=example.test s=ed25519 a=ed25519-sha256" },
	{ "RSA and Ed25519 for one domain", KEYS "domain-key ed25519, example.test, data/dkim/ed25519.key\n"
	  "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@example.test\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256 | d=example.test s=ed25519 a=ed25519-sha256" },
	{ "* signs for the author", "domain-key any, *, data/dkim/ed25519.key\n"
	  "<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@Client.test\r\n", "b@r.test", NULL,
	  "d=client.test s=any a=ed25519-sha256" },
	{ "the virtual-mta's key shadows the global one", KEYS
	  "<virtual-mta v1>\ndomain-key v1, example.test, data/dkim/ed25519.key\n"
	  "<domain *>\ndkim-sign yes\n</domain>\n</virtual-mta>\n", "v1",
	  "From: alice@example.test\r\n", "b@r.test", NULL,
	  "d=example.test s=v1 a=ed25519-sha256" },
	{ "<domain-key-list>", "<domain-key-list>\ndomain-key k1, example.test, data/dkim/rsa1024.key\n"
	  "</domain-key-list>\n<domain *>\ndkim-sign yes\n</domain>\n", NULL,
	  "From: alice@example.test\r\n", "b@r.test", NULL,
	  "d=example.test s=k1 a=rsa-sha256" },
	{ "a pool: its members' <domain> settings", KEYS
	  "<virtual-mta m1>\n</virtual-mta>\n<virtual-mta-pool p1>\nvirtual-mta m1\n"
	  "<domain *>\ndkim-sign yes\n</domain>\n</virtual-mta-pool>\n", "p1",
	  "From: alice@example.test\r\n", "b@r.test", NULL,
	  "d=example.test s=rsa2048 a=rsa-sha256" },
};

Test(signing, key_selection_table)
{
	for (size_t i = 0; i < ARRAY_SIZE(sel_cases); i++) {
		const struct sel_case *sc = &sel_cases[i];
		struct diag_list dl = { 0 };
		struct cfg *cfg = testlib_load(sc->conf, &dl);
		char *diags = testlib_diag_text(&dl);
		cr_assert_not_null(cfg, "%s: %s", sc->name, diags);
		struct smtp_rcpt rcpts[2] = { { .addr = sc->rcpt1 }, { .addr = sc->rcpt2 } };
		char *data = xasprintf("%sTo: b@r.test\r\nSubject: s\r\n\r\nbody\r\n", sc->headers);
		struct smtp_message msg = {
			.mail_from = "alice@example.test", .rcpt_count = sc->rcpt2 ? 2 : 1,
			.rcpts = rcpts, .data = data, .len = strlen(data),
		};
		struct strbuf out = { 0 };
		int n = signing_apply(cfg, sc->vmta, &msg, NULL, 1700000000, &out);
		char *got = sig_summary(sb_str(&out));
		cr_expect_str_eq(got, sc->want, "%s: %d signatures:\n%s", sc->name, n, sb_str(&out));
		if (*sc->want) {
			/* the signatures go on top of the unchanged message */
			cr_expect(out.len > msg.len &&
				  memcmp(out.buf + out.len - msg.len, data, msg.len) == 0, "%s", sc->name);
		} else {
			cr_expect_eq(n, 0, "%s", sc->name);
			cr_expect_eq(out.len, 0, "%s", sc->name);
		}
		free(got), sb_free(&out), free(data), free(diags);
		cfg_free(cfg);
		diag_free(&dl);
	}
}

/* ---- config: keys are checked at load time, at file:line ---- */

Test(signing, bad_keys_are_file_line_errors)
{
	static const struct {
		const char *line, *needle;
		bool error;
	} cases[] = {
		{ "domain-key s, example.test, data/dkim/no-such.key",
		  "test.conf:1: error: 'domain-key': cannot read key file 'data/dkim/no-such.key': No such file or directory", true },
		{ "domain-key s, example.test, data/dkim/malformed.key",
		  "test.conf:1: error: 'domain-key': 'data/dkim/malformed.key' is not an RSA or Ed25519 private key", true },
		{ "domain-key s, example.test, data/dkim/rsa512.key",
		  "test.conf:1: error: 'domain-key': 'data/dkim/rsa512.key' is a 512-bit RSA key", true },
		{ "domain-key s, example.test, data/dkim/rsa1024.key",
		  "test.conf:1: warning: 'domain-key': 'data/dkim/rsa1024.key' is a 1024-bit RSA key; receivers expect 2048 bits", false },
		{ "domain-key s, example.test",
		  "test.conf:1: error: 'domain-key' expects SELECTOR,DOMAIN,KEYFILE", true },
		{ "domain-key s;x, example.test, data/dkim/ed25519.key",
		  "test.conf:1: error: 'domain-key': 's;x' is not a selector", true },
		{ "domain-key s, exa mple.test, data/dkim/ed25519.key",
		  "is not a domain", true },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct diag_list dl = { 0 };
		char *text = xasprintf("%s\n", cases[i].line);
		struct cfg *cfg = testlib_load(text, &dl);
		char *diags = testlib_diag_text(&dl);
		cr_expect_eq(cfg == NULL, cases[i].error, "%s:\n%s", cases[i].line, diags);
		cr_expect(strstr(diags, cases[i].needle), "%s: expected '%s' in:\n%s",
			  cases[i].line, cases[i].needle, diags);
		cfg_free(cfg), free(diags), free(text);
		diag_free(&dl);
	}
}

Test(signing, bad_dkim_settings_are_errors)
{
	static const char *const bad[] = {
		"<domain *>\ndkim-identity who knows\n</domain>\n",
		"<domain *>\ndkim-identity-fallback nodots\n</domain>\n",
		"<domain *>\ndkim-headers from,bad:name\n</domain>\n",
		"<domain *>\ndkim-algorithm rsa-sha1\n</domain>\n",
		"<domain *>\ndkim-body-canon nofws\n</domain>\n",
		"<domain-key-list>\nmax-smtp-out 3\n</domain-key-list>\n",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct diag_list dl = { 0 };
		struct cfg *cfg = testlib_load(bad[i], &dl);
		char *diags = testlib_diag_text(&dl);
		cr_expect_null(cfg, "loaded:\n%s", bad[i]);
		cr_expect(strstr(diags, "test.conf:2: error:"), "%s", diags);
		cfg_free(cfg), free(diags);
		diag_free(&dl);
	}
}

/* ---- end to end ---- */

/* What one end-to-end run is made of. */
struct e2e {
	const char *peer_addr;	/* the receiver, 127.0.0.x */
	const char *ns;		/* dnsmasq, 127.0.53.x:53 */
	unsigned caps;		/* the receiver's EHLO (CHUNKING: BDAT out) */
	bool bdat_in;		/* inject with BDAT (two chunks) instead of DATA */
	const char *keys;	/* "domain-key" lines; %s = tests/ */
	const char *domain_extra;	/* more <domain *> lines */
	const char *message;
	const char *want;	/* sig_summary of the delivered copy */
	size_t nsigs;
};

/* The client: smtplib (DATA, dot-stuffing) or raw BDAT chunks. */
static const char inject_py[] =
	"import smtplib, socket, sys\n"
	"port, path, bdat = int(sys.argv[1]), sys.argv[2], sys.argv[3] == 'bdat'\n"
	"msg = open(path, 'rb').read()\n"
	"if not bdat:\n"
	"    s = smtplib.SMTP('127.0.0.1', port)\n"
	"    s.sendmail('alice@example.test', ['bob@rcpt.test'], msg)\n"
	"    s.quit()\n"
	"    sys.exit(0)\n"
	"s = socket.create_connection(('127.0.0.1', port))\n"
	"f = s.makefile('rb')\n"
	"def reply():\n"
	"    while True:\n"
	"        l = f.readline()\n"
	"        if l[3:4] != b'-':\n"
	"            return l\n"
	"def cmd(c, want=b'250'):\n"
	"    s.sendall(c)\n"
	"    r = reply()\n"
	"    if not r.startswith(want):\n"
	"        sys.exit('%r -> %r' % (c[:40], r))\n"
	"reply()\n"
	"cmd(b'EHLO client.test\\r\\n')\n"
	"cmd(b'MAIL FROM:<alice@example.test>\\r\\n')\n"
	"cmd(b'RCPT TO:<bob@rcpt.test>\\r\\n')\n"
	"h = len(msg) // 2\n"
	"cmd(b'BDAT %d\\r\\n' % h + msg[:h])\n"
	"cmd(b'BDAT %d LAST\\r\\n' % (len(msg) - h) + msg[h:])\n"
	"cmd(b'QUIT\\r\\n', b'221')\n";

/*
 * run_e2e - the daemon signs what the client sends; the receiver's copy
 * must carry e->want and pass dkimpy and OpenDKIM, each signature.
 */
static void run_e2e(const struct e2e *e)
{
	if (geteuid() != 0)
		cr_skip_test("needs root: dnsmasq on port 53 and a mount namespace for OpenDKIM");
	/* the first delivery attempt is deferred: the retry sends the stored copy */
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_DATA_END, .nth = 1, .reply = "451 4.3.0 try again" },
	};
	struct smtp_peer *rcv = testlib_peer_start(e->peer_addr, 0, e->caps, rules, 1);
	char cwd[PATH_MAX];
	cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
	struct testlib_daemon d = { 0 };
	char *keys = xasprintf(e->keys, cwd, cwd);
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mta.test.invalid\n"
		"shards 1\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
		"%s"
		"<domain *>\n    smtp-hosts [%s]:%d\n    retry-after 1s\n"
		"    dkim-sign yes\n%s</domain>\n",
		keys, e->peer_addr, smtp_peer_port(rcv), e->domain_extra);
	testlib_daemon_start_or_fail(&d, conf);

	char *eml = testlib_write(d.dir, "in.eml", e->message);
	char port[16];
	snprintf(port, sizeof(port), "%d", d.port);
	const char *argv[] = { "/usr/bin/python3", "-c", inject_py, port, eml,
			       e->bdat_in ? "bdat" : "data", NULL };
	char *out = NULL, *err = NULL;
	cr_assert_eq(testlib_run(argv, 30, &out, &err), 0, "%s%s", out, err);
	free(out), free(err);
	if (smtp_peer_wait_messages(rcv, 1, 30000) != 0) {
		char *log = testlib_read_file(d.log);
		cr_assert_fail("nothing delivered; the daemon's log:\n%s", log);
	}
	const struct smtp_peer_msg *m = smtp_peer_message(rcv, 0);
	cr_expect_eq(m->bdat, (e->caps & SMTP_PEER_CAP_CHUNKING) != 0);
	char *got = sig_summary(m->body);
	cr_expect_str_eq(got, e->want, "%s", m->body);
	free(got);
	char *file = testlib_write(d.dir, "delivered.eml", m->body);

	struct dnsmasq dns = { 0 };
	char *pub = testlib_read_file("data/dkim/public.txt");
	const char *opts[4] = { 0 };
	size_t n = 0;
	for (char *line = strtok(pub, "\n"); line && n < 3; line = strtok(NULL, "\n")) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = '\0';
		struct strbuf sb = { 0 };
		sb_printf(&sb, "--txt-record=%s._domainkey.example.test", line);
		for (size_t off = 0, len = strlen(colon + 2); off < len; off += 200)
			sb_printf(&sb, ",%.*s", (int)(len - off < 200 ? len - off : 200), colon + 2 + off);
		opts[n++] = sb_detach(&sb);
	}
	free(pub);
	int rc = dnsmasq_start_at(&dns, e->ns, 53, opts);
	cr_assert_eq(rc, 0, "dnsmasq on %s:53", e->ns);
	const char *vargv[] = { "/usr/bin/python3", "util/dkim_verify.py", e->ns, file, NULL };
	out = err = NULL;
	rc = testlib_run(vargv, 60, &out, &err);
	cr_expect_eq(rc, 0, "the delivered copy does not verify:\n%s%s\n%s", out, err, m->body);
	size_t passed = 0;
	for (const char *p = out; (p = strstr(p, "dkimpy=pass opendkim=pass")); p++)
		passed++;
	cr_expect_eq(passed, e->nsigs, "%s", out);
	free(out), free(err);
	dnsmasq_stop(&dns);
	for (size_t i = 0; i < n; i++)
		free((char *)opts[i]);
	free(file), free(eml), free(conf), free(keys);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_stop(rcv);
	smtp_peer_free(rcv);
}

/* DATA in and out: dot lines are stuffed on both wires; two keys sign. */
Test(signing, daemon_signs_once_and_the_delivered_copy_verifies, .timeout = 180)
{
	struct e2e e = {
		.peer_addr = "127.0.0.51", .ns = "127.0.53.3",
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
			SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
		.keys = "domain-key rsa2048, example.test, %s/data/dkim/rsa2048.key\n"
			"domain-key ed25519, example.test, %s/data/dkim/ed25519.key\n",
		.domain_extra = "    dkim-add-timestamp yes\n",
		/* dot lines, 8-bit text, a folded Subject, trailing blank lines */
		.message = "From: Alice <alice@example.test>\r\nTo: bob@rcpt.test\r\n"
			   "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nSubject: quarterly\r\n\treport\r\n"
			   "Content-Type: text/plain; charset=utf-8\r\n\r\n"
			   ".\r\n..two dots\r\n.leading dot\r\ncaf\xc3\xa9 \xe2\x82\xac\r\n\r\n\r\n",
		.want = "d=example.test s=rsa2048 a=rsa-sha256 | "
			"d=example.test s=ed25519 a=ed25519-sha256",
		.nsigs = 2,
	};
	run_e2e(&e);
}

/* BDAT in and out, simple/simple, the last line without CRLF. */
Test(signing, bdat_message_signed_simple_verifies, .timeout = 180)
{
	struct e2e e = {
		.peer_addr = "127.0.0.52", .ns = "127.0.53.4",
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
			SMTP_PEER_CAP_CHUNKING | SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
		.bdat_in = true,
		.keys = "domain-key ed25519, example.test, %s/data/dkim/ed25519.key\n%.0s",
		.domain_extra = "    dkim-headers-canon simple\n    dkim-body-canon simple\n"
				"    dkim-add-body-limit yes\n",
		.message = "From: alice@example.test\r\nTo: bob@rcpt.test\r\n"
			   "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nSubject:  two  spaces \r\n\r\n"
			   ".dot first\r\n  indented  \r\nno final line end",
		.want = "d=example.test s=ed25519 a=ed25519-sha256",
		.nsigs = 1,
	};
	run_e2e(&e);
}

/* `coremta check` names the key that would not sign, at file:line. */
Test(signing, check_reports_keys_at_file_line)
{
	char cwd[PATH_MAX];
	cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
	char *dir = testlib_tmpdir();
	char *text = xasprintf("host-name mta.example.test\n"
			       "domain-key ok, example.test, %s/data/dkim/ed25519.key\n"
			       "domain-key short, example.test, %s/data/dkim/rsa512.key\n"
			       "domain-key gone, example.test, %s/missing.pem\n"
			       "domain-key weak, example.test, %s/data/dkim/rsa1024.key\n",
			       cwd, cwd, dir, cwd);
	char *conf = testlib_write(dir, "dkim.conf", text);
	const char *argv[] = { testlib_coremta_bin(), "check", "-c", conf, NULL };
	char *out = NULL, *err = NULL;

	cr_expect_eq(testlib_run(argv, 60, &out, &err), 1, "%s%s", out, err);
	char *want[] = {
		xasprintf("%s:3: error: 'domain-key': '%s/data/dkim/rsa512.key' is a 512-bit RSA key",
			  conf, cwd),
		xasprintf("%s:4: error: 'domain-key': cannot read key file '%s/missing.pem'", conf, dir),
		xasprintf("%s:5: warning: 'domain-key': '%s/data/dkim/rsa1024.key' is a 1024-bit RSA key",
			  conf, cwd),
	};
	for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
		cr_expect(strstr(out, want[i]), "'%s' not in:\n%s", want[i], out);
		free(want[i]);
	}
	cr_expect_null(strstr(out, ":2: error"), "%s", out);
	free(out), free(err), free(conf), free(text);
	testlib_rmrf(dir);
	free(dir);
}

/* ---- streamed messages (issue 18, part 2) ---- */

struct tail_src {
	const char *p;
	size_t len;
	unsigned reads;
};

static int tail_read(const void *arg, uint64_t off, void *buf, size_t n)
{
	struct tail_src *t = (struct tail_src *)arg;

	cr_assert_leq(off + n, t->len);
	memcpy(buf, t->p + off, n);
	t->reads++;
	return 0;
}

static int tail_fail(const void *arg, uint64_t off, void *buf, size_t n)
{
	(void)arg, (void)off, (void)buf, (void)n;
	return -EIO;
}

/*
 * A message that streamed to the spool is signed over all of its body:
 * the same signatures as when the whole message is in memory, whatever
 * the split; an unreadable tail leaves it unsigned, never signed wrong.
 */
Test(signing, a_streamed_body_is_signed_whole)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load(KEYS "domain-key ed25519, example.test, data/dkim/ed25519.key\n"
				       "<domain *>\ndkim-sign yes\ndkim-body-canon simple\n</domain>\n", &dl);
	cr_assert_not_null(cfg);
	struct strbuf whole = { 0 };
	sb_adds(&whole, "From: alice@example.test\r\nTo: b@r.test\r\nSubject: big\r\n\r\n");
	while (whole.len < (300u << 10))
		sb_adds(&whole, "a line of the body  with  spaces \t and tabs\r\n");
	sb_adds(&whole, "\r\n\r\n");	/* trailing empty lines: canonicalized away */
	struct smtp_rcpt rcpt = { .addr = "b@r.test" };
	struct smtp_message msg = {
		.mail_from = "alice@example.test", .rcpt_count = 1, .rcpts = &rcpt,
		.data = whole.buf, .len = whole.len,
	};
	struct strbuf ref = { 0 };
	cr_assert_eq(signing_apply(cfg, NULL, &msg, NULL, 1700000000, &ref), 2);
	size_t sigs = ref.len - whole.len;

	static const size_t heads[] = { 58, 100, 4096, 200000 };
	for (size_t i = 0; i < ARRAY_SIZE(heads); i++) {
		struct tail_src t = { .p = whole.buf + heads[i], .len = whole.len - heads[i] };
		struct signing_tail tail = { .len = t.len, .read = tail_read, .arg = &t };
		struct smtp_message part = msg;
		part.len = heads[i];
		part.spilled = t.len;
		struct strbuf out = { 0 };
		cr_assert_eq(signing_apply(cfg, NULL, &part, &tail, 1700000000, &out), 2);
		cr_expect_gt(t.reads, 0);
		/* RSA is deterministic and Ed25519 too: the very same fields */
		cr_expect_eq(out.len, sigs + heads[i], "head %zu", heads[i]);
		cr_expect(memcmp(out.buf, ref.buf, sigs) == 0, "head %zu: signatures differ", heads[i]);
		cr_expect(memcmp(out.buf + sigs, whole.buf, heads[i]) == 0);
		sb_free(&out);
	}
	struct signing_tail bad = { .len = 10, .read = tail_fail };
	struct smtp_message part = msg;
	part.len = whole.len - 10;
	part.spilled = 10;
	struct strbuf out = { 0 };
	struct testlib_capture cap;
	testlib_stderr_capture(&cap);
	int rc = signing_apply(cfg, NULL, &part, &bad, 1700000000, &out);
	char *said = testlib_stderr_release(&cap);
	cr_expect_lt(rc, 0);
	cr_expect_eq(out.len, 0, "nothing to store from a failed signing");
	cr_expect(strstr(said, "level=error event=dkim ") && strstr(said, "goes unsigned"),
		  "the failure is logged: %s", said);
	free(said);
	sb_free(&out);
	sb_free(&ref);
	sb_free(&whole);
	cfg_free(cfg);
	diag_free(&dl);
}
