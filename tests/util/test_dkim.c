/*
 * tests/util/test_dkim.c - DKIM keys, canonicalization and signatures
 * (util/dkim.h).  Canonicalization is held to RFC 6376's own example and
 * to exact expectations; signatures are held to two independent
 * verifiers (dkimpy and OpenDKIM, tests/util/dkim_verify.py) reading the
 * public keys (made by openssl, tests/data/dkim/public.txt) from a real
 * dnsmasq on 127.0.53.x:53.  Test threads only.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/dkim.h"
#include "util/util.h"
#include "tests/lib/dnsmasq.h"
#include "tests/lib/testlib.h"

#define KEYDIR "data/dkim/"

static struct dkim_key *load(const char *name)
{
	struct dkim_key *k = NULL;
	char err[256] = "";
	int rc = dkim_key_load(name, &k, err, sizeof(err));

	cr_assert_eq(rc, 0, "%s: %s", name, err);
	return k;
}

/* ---- keys ---- */

Test(dkim_key, loads_pkcs1_pkcs8_and_raw_ed25519)
{
	static const struct {
		const char *file;
		enum dkim_alg alg;
		unsigned bits;
	} cases[] = {
		{ KEYDIR "rsa2048.key", DKIM_RSA_SHA256, 2048 },	/* PKCS#8 */
		{ KEYDIR "rsa1024.key", DKIM_RSA_SHA256, 1024 },	/* PKCS#1 */
		{ KEYDIR "ed25519.key", DKIM_ED25519_SHA256, 256 },	/* PKCS#8 */
		{ KEYDIR "ed25519-seed.b64", DKIM_ED25519_SHA256, 256 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct dkim_key *k = load(cases[i].file);
		cr_expect_eq(dkim_key_alg(k), cases[i].alg, "%s", cases[i].file);
		cr_expect_eq(dkim_key_bits(k), cases[i].bits, "%s", cases[i].file);
		dkim_key_free(k);
	}
}

Test(dkim_key, refuses_short_malformed_and_missing_keys)
{
	static const struct {
		const char *file;
		const char *needle;
	} cases[] = {
		{ KEYDIR "rsa512.key", "512-bit RSA key" },
		{ KEYDIR "malformed.key", "is not an RSA or Ed25519 private key" },
		{ KEYDIR "public.txt", "is not an RSA or Ed25519 private key" },
		{ KEYDIR "no-such.key", "No such file or directory" },
		{ KEYDIR, "is not a key file" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct dkim_key *k = NULL;
		char err[256] = "";
		int rc = dkim_key_load(cases[i].file, &k, err, sizeof(err));
		cr_expect_lt(rc, 0, "%s loaded", cases[i].file);
		cr_expect_null(k);
		cr_expect(strstr(err, cases[i].needle), "%s: '%s' lacks '%s'",
			  cases[i].file, err, cases[i].needle);
	}
}

Test(dkim_key, refuses_encrypted_keys)
{
	static const char pem[] = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n"
				  "-----END ENCRYPTED PRIVATE KEY-----\n";
	struct dkim_key *k = NULL;
	char err[256] = "";

	cr_expect_lt(dkim_key_parse(pem, sizeof(pem) - 1, "enc.pem", &k, err, sizeof(err)), 0);
	cr_expect(strstr(err, "encrypted"), "%s", err);
}

/* The DNS record the module prints is the one openssl derives. */
Test(dkim_key, dns_record_matches_openssl)
{
	char *pub = testlib_read_file(KEYDIR "public.txt");
	static const char *const keys[] = { "rsa2048", "rsa1024", "ed25519" };

	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		char *path = xasprintf(KEYDIR "%s.key", keys[i]);
		struct dkim_key *k = load(path);
		struct strbuf rec = { 0 };
		cr_assert_eq(dkim_key_dns_record(k, &rec), 0);
		char *line = xasprintf("%s: %s\n", keys[i], rec.buf);
		cr_expect(strstr(pub, line), "%s not in public.txt", line);
		free(line), sb_free(&rec), dkim_key_free(k), free(path);
	}
	free(pub);
}

/* ---- canonicalization ---- */

/* RFC 6376 section 3.4.5, the specification's own example. */
Test(dkim_canon, rfc6376_example)
{
	static const char msg[] = "A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
	static const char *const names[] = { "a", "b" };
	size_t hend = dkim_header_end(msg, sizeof(msg) - 1);
	struct strbuf sb = { 0 };

	dkim_canon_headers(DKIM_CANON_RELAXED, msg, hend, names, 2, &sb);
	cr_expect_str_eq(sb.buf, "a:X\r\nb:Y Z\r\n");
	sb_reset(&sb);
	dkim_canon_headers(DKIM_CANON_SIMPLE, msg, hend, names, 2, &sb);
	cr_expect_str_eq(sb.buf, "A: X\r\nB : Y\t\r\n\tZ  \r\n");
	sb_reset(&sb);
	dkim_canon_body(DKIM_CANON_RELAXED, msg + hend, sizeof(msg) - 1 - hend, &sb);
	cr_expect_str_eq(sb.buf, " C\r\nD E\r\n");
	sb_reset(&sb);
	dkim_canon_body(DKIM_CANON_SIMPLE, msg + hend, sizeof(msg) - 1 - hend, &sb);
	cr_expect_str_eq(sb.buf, " C \r\nD \t E\r\n");
	sb_free(&sb);
}

struct body_case {
	const char *name;
	const char *in;
	size_t len;		/* 0: strlen(in) */
	const char *simple, *relaxed;
};

#define BC(n, i, s, r) { n, i, 0, s, r }

static const struct body_case body_cases[] = {
	BC("empty", "", "\r\n", ""),
	BC("only blank lines", "\r\n\r\n\r\n", "\r\n", ""),
	BC("trailing blank lines", "a\r\n\r\n\r\n", "a\r\n", "a\r\n"),
	BC("inner blank lines kept", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"),
	BC("no final CRLF (BDAT)", "a\r\nb", "a\r\nb\r\n", "a\r\nb\r\n"),
	BC("whitespace lines at the end", "a\r\n \t\r\n  \r\n", "a\r\n \t\r\n  \r\n", "a\r\n"),
	BC("whitespace runs", "a \t b  \r\n\tc\r\n", "a \t b  \r\n\tc\r\n", "a b\r\n c\r\n"),
	BC("bare LF ends a line", "a\nb\r\n\n\n", "a\r\nb\r\n", "a\r\nb\r\n"),
	BC("bare CR is text", "a\rb\r\n", "a\rb\r\n", "a\rb\r\n"),
	BC("CR at the very end", "a\r", "a\r\r\n", "a\r\r\n"),
	BC("dot lines (unstuffed)", ".\r\n..x\r\n", ".\r\n..x\r\n", ".\r\n..x\r\n"),
	BC("8-bit", "caf\xc3\xa9 \xff\r\n", "caf\xc3\xa9 \xff\r\n", "caf\xc3\xa9 \xff\r\n"),
	{ "NUL inside", "a\0b\r\n", 5, "a\0b\r\n", "a\0b\r\n" },
};

static void expect_body(enum dkim_canon c, const struct body_case *bc,
			const char *want)
{
	size_t len = bc->len ? bc->len : strlen(bc->in);
	size_t wlen = bc->len ? len : strlen(want);
	struct strbuf sb = { 0 };

	dkim_canon_body(c, bc->in, len, &sb);
	cr_expect(sb.len == wlen && memcmp(sb.buf ? sb.buf : "", want, wlen) == 0,
		  "%s (%s): got %zu octets '%.*s'", bc->name,
		  c == DKIM_CANON_SIMPLE ? "simple" : "relaxed", sb.len,
		  (int)sb.len, sb.buf ? sb.buf : "");
	sb_free(&sb);
}

Test(dkim_canon, body_table)
{
	for (size_t i = 0; i < ARRAY_SIZE(body_cases); i++) {
		expect_body(DKIM_CANON_SIMPLE, &body_cases[i], body_cases[i].simple);
		expect_body(DKIM_CANON_RELAXED, &body_cases[i], body_cases[i].relaxed);
	}
}

/* Streaming (intake writes DATA as it arrives) hashes like one shot. */
Test(dkim_canon, body_hash_independent_of_chunking)
{
	static const char body[] = "a \t\r\n\r\nb\r\r\n  c\n\r\n\r\n.\r\n \r\n";
	size_t len = sizeof(body) - 1;

	for (int c = 0; c < 2; c++) {
		unsigned char want[DKIM_HASH_LEN], got[DKIM_HASH_LEN];
		uint64_t wl, gl;
		struct dkim_body *b = dkim_body_new((enum dkim_canon)c);
		dkim_body_update(b, body, len);
		dkim_body_final(b, want, &wl);
		dkim_body_free(b);
		for (size_t step = 1; step < len; step++) {
			b = dkim_body_new((enum dkim_canon)c);
			for (size_t off = 0; off < len; off += step)
				dkim_body_update(b, body + off, len - off < step ? len - off : step);
			dkim_body_final(b, got, &gl);
			dkim_body_free(b);
			cr_expect(memcmp(want, got, sizeof(got)) == 0 && wl == gl,
				  "canon %d, chunks of %zu", c, step);
		}
	}
}

Test(dkim_canon, header_selection_bottom_up_and_oversigned)
{
	static const char hdr[] = "To: one\r\nSubject: s\r\nTo: two\r\nX-Other: o\r\n"
				  "Bad line without colon\r\n\r\n";
	static const char *const names[] = { "to", "to", "to", "reply-to", "subject" };
	struct strbuf sb = { 0 };

	dkim_canon_headers(DKIM_CANON_RELAXED, hdr, sizeof(hdr) - 1, names,
			   ARRAY_SIZE(names), &sb);
	/* the last To first; the third "to" and reply-to find nothing */
	cr_expect_str_eq(sb.buf, "to:two\r\nto:one\r\nsubject:s\r\n");
	sb_free(&sb);
}

Test(dkim_canon, header_end_cases)
{
	cr_expect_eq(dkim_header_end("A: b\r\n\r\nbody", 13), 8);
	cr_expect_eq(dkim_header_end("A: b\n\nbody", 10), 6);
	cr_expect_eq(dkim_header_end("A: b\r\n", 6), 6);	/* no body */
	cr_expect_eq(dkim_header_end("\r\nbody", 6), 2);	/* no header */
	cr_expect_eq(dkim_header_end("A: b\r\n \r\nc", 11), 11);	/* WSP line folds */
}

/* ---- signing, checked by dkimpy and OpenDKIM ---- */

Test(dkim_sign, refuses_bad_parameters)
{
	struct dkim_key *k = load(KEYDIR "ed25519.key");
	static const char msg[] = "From: a@example.test\r\n\r\nx\r\n";
	struct dkim_sign_params p = { .key = k, .domain = "example.test", .selector = "s;x" };
	struct strbuf out = { 0 };
	char err[256] = "";

	cr_expect_eq(dkim_sign(&p, msg, sizeof(msg) - 1, &out, err, sizeof(err)), -EINVAL);
	p.selector = "s";
	p.domain = "exa mple.test";
	cr_expect_eq(dkim_sign(&p, msg, sizeof(msg) - 1, &out, err, sizeof(err)), -EINVAL);
	p.domain = "example.test";
	static const char *const nohdr[] = { "x-absent" };
	p.headers = nohdr;
	p.nheaders = 1;
	cr_expect_eq(dkim_sign(&p, msg, sizeof(msg) - 1, &out, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "none of the headers"), "%s", err);
	cr_expect_eq(out.len, 0);
	dkim_key_free(k);
}

/*
 * The hard cases, each a whole message as the spool holds it.  What the
 * verifiers read is the message as a receiving MTA stores it: with bare
 * LFs as CRLF (RECEIVED_CRLF), and with the empty line after a header
 * section that had none (ADD_EMPTY_LINE: OpenDKIM's reader needs it; to
 * DKIM "no body" and "empty body" are the same message, RFC 6376 3.4.3).
 */
enum { AS_SIGNED, RECEIVED_CRLF, ADD_EMPTY_LINE };

struct msg_case {
	const char *name;
	const char *text;
	int verifier_form;
};

static char long_line[3100];

#define DATE "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"

static const struct msg_case msg_cases[] = {
	{ "plain", "From: Alice <alice@example.test>\r\nTo: bob@rcpt.test\r\n"
		   "Subject: hello\r\n" DATE
		   "Message-ID: <1@example.test>\r\n\r\nHello Bob.\r\n", AS_SIGNED },
	{ "empty body", "From: alice@example.test\r\nSubject: empty\r\n" DATE "\r\n", AS_SIGNED },
	{ "no body at all", "From: alice@example.test\r\nSubject: nothing\r\n" DATE,
	  ADD_EMPTY_LINE },
	{ "trailing blank lines", "From: alice@example.test\r\n" DATE "\r\nbody\r\n\r\n\r\n\r\n",
	  AS_SIGNED },
	{ "only blank lines", "From: alice@example.test\r\n" DATE "\r\n\r\n\r\n", AS_SIGNED },
	{ "whitespace everywhere", "From:   alice@example.test  \r\nSubject:\ta \t b   \r\n" DATE
				   "\r\n  lead and trail  \r\n\t\r\nx \t y\r\n \r\n", AS_SIGNED },
	{ "folded headers", "From: Alice\r\n <alice@example.test>\r\nSubject: one\r\n"
			    "\ttwo\r\n   three\r\nTo: a@r.test,\r\n\tb@r.test\r\n" DATE
			    "\r\nbody\r\n", AS_SIGNED },
	/* RFC 5322 allows these more than once (OpenDKIM refuses two To:) */
	{ "duplicated headers", "From: alice@example.test\r\nResent-To: one@r.test\r\n"
				"Resent-Cc: c1@r.test\r\nResent-To: two@r.test\r\n" DATE
				"Resent-Cc: c2@r.test\r\nResent-To: three@r.test\r\n\r\nb\r\n",
	  AS_SIGNED },
	{ "dot-stuffing lines", "From: alice@example.test\r\n" DATE
				"\r\n.\r\n..\r\n.x\r\n...\r\nend\r\n", AS_SIGNED },
	{ "8-bit body", "From: alice@example.test\r\nContent-Type: text/plain; charset=utf-8\r\n"
			"Content-Transfer-Encoding: 8bit\r\n" DATE
			"\r\ncaf\xc3\xa9 na\xc3\xafve \xe2\x82\xac \xff\r\n", AS_SIGNED },
	{ "BDAT without final CRLF", "From: alice@example.test\r\n" DATE "\r\nline one\r\nno end",
	  AS_SIGNED },
	{ "bare LF lines", "From: alice@example.test\nSubject: lf\n" DATE
			   "\nline\nnext\r\nmixed\n\n", RECEIVED_CRLF },
	{ "over 998 octets", long_line, AS_SIGNED },
	{ "upper-case names", "From: alice@example.test\r\nSUBJECT: case\r\ntO: x@r.test\r\n"
			      DATE "\r\nx\r\n", AS_SIGNED },
};

/* One key with its selector in the test zone (tests/data/dkim/public.txt). */
struct signer {
	const char *file, *selector;
};

static const struct signer signers[] = {
	{ KEYDIR "rsa2048.key", "rsa2048" },
	{ KEYDIR "ed25519.key", "ed25519" },
};

static void fill_long_line(void)
{
	size_t n = snprintf(long_line, sizeof(long_line),
			    "From: alice@example.test\r\n" DATE "\r\n");
	for (; n < sizeof(long_line) - 3; n++)
		long_line[n] = (char)('a' + n % 26);
	memcpy(long_line + n, "\r\n", 3);
}

/* as_received - the form the verifiers read (see msg_case). */
static void as_received(int form, const char *text, size_t len, struct strbuf *out)
{
	for (size_t i = 0; i < len; i++) {
		if (form == RECEIVED_CRLF && text[i] == '\n' && (i == 0 || text[i - 1] != '\r'))
			sb_addc(out, '\r');
		sb_addc(out, text[i]);
	}
	if (form == ADD_EMPTY_LINE)
		sb_adds(out, "\r\n");
}

/* dns_opts - dnsmasq options serving every key of public.txt. */
static const char **dns_opts(void)
{
	char *pub = testlib_read_file(KEYDIR "public.txt");
	const char **opts = xcalloc(8, sizeof(*opts));
	size_t n = 0;

	for (char *line = strtok(pub, "\n"); line && n < 7; line = strtok(NULL, "\n")) {
		char *colon = strchr(line, ':');
		cr_assert_not_null(colon);
		*colon = '\0';
		const char *rec = colon + 2;
		/* TXT strings hold 255 octets: split, verifiers join them */
		struct strbuf sb = { 0 };
		sb_printf(&sb, "--txt-record=%s._domainkey.example.test", line);
		for (size_t off = 0, len = strlen(rec); off < len; off += 200)
			sb_printf(&sb, ",%.*s", (int)(len - off < 200 ? len - off : 200), rec + off);
		opts[n++] = sb_detach(&sb);
	}
	free(pub);
	return opts;
}

static void free_opts(const char **opts)
{
	for (size_t i = 0; opts[i]; i++)
		free((char *)opts[i]);
	free(opts);
}

/*
 * verify - run both verifiers over files; returns how many signatures
 * passed both, and how many lines there were, in *lines.
 */
static size_t verify(const char *ns, char **files, size_t nfiles, size_t *lines,
		     char **report)
{
	const char **argv = xcalloc(nfiles + 4, sizeof(*argv));
	char *out = NULL, *err = NULL;
	size_t pass = 0;

	argv[0] = "/usr/bin/python3";
	argv[1] = "util/dkim_verify.py";
	argv[2] = ns;
	for (size_t i = 0; i < nfiles; i++)
		argv[3 + i] = files[i];
	int rc = testlib_run(argv, 300, &out, &err);
	cr_assert(rc == 0 || rc == 1, "dkim_verify.py exited %d:\n%s\n%s", rc, out, err);
	*lines = 0;
	for (char *l = out; l && *l;) {
		char *nl = strchr(l, '\n');
		(*lines)++;
		pass += strstr(l, "dkimpy=pass opendkim=pass") &&
			(!nl || strstr(l, "dkimpy=pass opendkim=pass") < nl);
		l = nl ? nl + 1 : l + strlen(l);
	}
	*report = xasprintf("%s%s", out, err);
	free(out), free(err), free(argv);
	return pass;
}

/* start_dns - dnsmasq on addr:53 (the system resolver's port: OpenDKIM). */
static void start_dns(struct dnsmasq *dns, const char *addr)
{
	if (geteuid() != 0)
		cr_skip_test("needs root: dnsmasq on port 53 and a mount namespace for OpenDKIM");
	const char **opts = dns_opts();
	int rc = dnsmasq_start_at(dns, addr, 53, opts);
	free_opts(opts);
	cr_assert_eq(rc, 0, "dnsmasq on %s:53: %s", addr, strerror(-rc));
}

static char *write_msg(const char *dir, size_t n, const struct strbuf *sig,
		       const char *text, size_t len)
{
	char *path = xasprintf("%s/m%03zu.eml", dir, n);
	FILE *f = fopen(path, "wb");

	cr_assert_not_null(f);
	fwrite(sig->buf, 1, sig->len, f);
	fwrite(text, 1, len, f);
	fclose(f);
	return path;
}

Test(dkim_sign, hard_cases_verify_with_dkimpy_and_opendkim, .timeout = 300)
{
	struct dnsmasq dns = { 0 };
	char *dir = testlib_tmpdir();
	char **files = NULL;
	size_t nfiles = 0;

	fill_long_line();
	start_dns(&dns, "127.0.53.1");
	for (size_t s = 0; s < ARRAY_SIZE(signers); s++) {
		struct dkim_key *k = load(signers[s].file);
		for (size_t m = 0; m < ARRAY_SIZE(msg_cases); m++)
			for (int c = 0; c < 4; c++) {
				const struct msg_case *mc = &msg_cases[m];
				const char *text = mc->text;
				size_t len = strlen(text);
				struct dkim_sign_params p = {
					.key = k, .domain = "example.test",
					.selector = signers[s].selector,
					.header_canon = (enum dkim_canon)(c & 1),
					.body_canon = (enum dkim_canon)(c >> 1),
					.oversign = true,
					/* the optional tags on some of them */
					.timestamp = m % 2 ? 1700000000 : 0,
					.expire = m % 4 == 1 ? 4000000000 : 0,
					.body_length = m % 3 == 0,
					.identity = m % 5 == 0 ? "alice@example.test" : NULL,
				};
				struct strbuf sig = { 0 };
				char err[256] = "";
				cr_assert_eq(dkim_sign(&p, text, len, &sig, err, sizeof(err)), 0,
					     "%s: %s", mc->name, err);
				files = xrealloc(files, (nfiles + 1) * sizeof(*files));
				struct strbuf rcvd = { 0 };
				as_received(mc->verifier_form, text, len, &rcvd);
				files[nfiles] = write_msg(dir, nfiles, &sig, rcvd.buf, rcvd.len);
				nfiles++;
				sb_free(&sig);
				sb_free(&rcvd);
			}
		dkim_key_free(k);
	}
	size_t lines;
	char *report;
	size_t pass = verify("127.0.53.1", files, nfiles, &lines, &report);
	cr_expect_eq(lines, nfiles, "%s", report);
	cr_expect_eq(pass, nfiles, "%zu of %zu signatures verify:\n%s", pass, nfiles, report);
	free(report);
	for (size_t i = 0; i < nfiles; i++)
		free(files[i]);
	free(files);
	dnsmasq_stop(&dns);
	testlib_rmrf(dir);
	free(dir);
}

/* A changed body or header must fail both verifiers: the test can fail. */
Test(dkim_sign, tampered_messages_fail_both_verifiers, .timeout = 120)
{
	static const char msg[] = "From: alice@example.test\r\nTo: bob@rcpt.test\r\n"
				  "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nSubject: pay 10 EUR\r\n\r\nPay 10 EUR to account 1.\r\n";
	static const struct { const char *from, *to; } edits[] = {
		{ "10 EUR to", "90 EUR to" },		/* body */
		{ "Subject: pay 10", "Subject: pay 90" },	/* signed header */
		{ "To: bob@rcpt.test\r\n", "To: bob@rcpt.test\r\nReply-To: eve@evil.test\r\n" },
		{ "To: bob@rcpt.test\r\n", "To: bob@rcpt.test\r\nSubject: added\r\n" },
	};
	struct dnsmasq dns = { 0 };
	char *dir = testlib_tmpdir();
	char *files[2 * ARRAY_SIZE(edits) * ARRAY_SIZE(signers)];
	size_t nfiles = 0;

	start_dns(&dns, "127.0.53.2");
	for (size_t s = 0; s < ARRAY_SIZE(signers); s++) {
		struct dkim_key *k = load(signers[s].file);
		for (size_t e = 0; e < ARRAY_SIZE(edits); e++) {
			/* relaxed/relaxed, the most forgiving; l= does not cover headers */
			struct dkim_sign_params p = { .key = k, .domain = "example.test",
						      .selector = signers[s].selector,
						      .oversign = true };
			struct strbuf sig = { 0 }, bad = { 0 };
			char err[256];
			cr_assert_eq(dkim_sign(&p, msg, sizeof(msg) - 1, &sig, err, sizeof(err)), 0);
			const char *at = strstr(msg, edits[e].from);
			cr_assert_not_null(at);
			sb_add(&bad, msg, (size_t)(at - msg));
			sb_adds(&bad, edits[e].to);
			sb_adds(&bad, at + strlen(edits[e].from));
			files[nfiles] = write_msg(dir, nfiles, &sig, bad.buf, bad.len);
			nfiles++;
			sb_free(&sig), sb_free(&bad);
		}
		dkim_key_free(k);
	}
	size_t lines;
	char *report;
	size_t pass = verify("127.0.53.2", files, nfiles, &lines, &report);
	cr_expect_eq(lines, nfiles, "%s", report);
	cr_expect_eq(pass, 0, "a tampered message verified:\n%s", report);
	/* and neither verifier alone let one through */
	cr_expect_null(strstr(report, "dkimpy=pass"), "%s", report);
	cr_expect_null(strstr(report, "opendkim=pass"), "%s", report);
	free(report);
	for (size_t i = 0; i < nfiles; i++)
		free(files[i]);
	dnsmasq_stop(&dns);
	testlib_rmrf(dir);
	free(dir);
}
