/*
 * tests/fuzz/fuzz_dkim.c - libFuzzer target for DKIM canonicalization and
 * signing (util/dkim.h): the message is whatever a client sent.  Never a
 * crash or leak, and:
 *   - the streaming body hash equals the hash of the one-shot canonical
 *     body, whatever the chunking, and so does its length;
 *   - a canonical body is canonical again (idempotent), ends in CRLF
 *     unless empty (relaxed only), has no empty line at its end, only
 *     CRLF line ends, and in relaxed form no tab, double space or
 *     space before CRLF;
 *   - relaxed header fields have lower-case names, no blank before or
 *     after the colon, no tab, and end in CRLF;
 *   - signing with an Ed25519 key either succeeds with one folded
 *     DKIM-Signature field or fails with -EINVAL.
 * Single-threaded.
 *
 * Input: byte 0 = switches (canonicalizations, chunk size seed), then
 * the message.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define XSPRINTF coremta_no_sprintf
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "util/util.h"
#include "util/dkim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) abort(); } while (0)

static void check_body(enum dkim_canon c, const char *out, size_t len)
{
	if (len == 0) {
		CHECK(c == DKIM_CANON_RELAXED);
		return;
	}
	CHECK(len >= 2 && out[len - 2] == '\r' && out[len - 1] == '\n');
	/* no empty line at the end (simple's lone CRLF body aside) */
	CHECK(len == 2 || len < 4 || memcmp(out + len - 4, "\r\n\r\n", 4) != 0);
	for (size_t i = 0; i < len; i++) {
		if (out[i] == '\n')
			CHECK(i > 0 && out[i - 1] == '\r');
		if (c == DKIM_CANON_RELAXED) {
			CHECK(out[i] != '\t');
			/* a space never ends a line (a bare CR after it is text) */
			if (out[i] == ' ')
				CHECK(i + 2 < len && out[i + 1] != ' ' &&
				      !(out[i + 1] == '\r' && out[i + 2] == '\n'));
		}
	}
}

static void check_fields(const char *out, size_t len)
{
	bool bol = true, in_name = true;

	for (size_t i = 0; i < len; i++) {
		char ch = out[i];
		CHECK(ch != '\t');
		if (bol) {
			CHECK(ch != ' ' && ch != ':');
			bol = false;
			in_name = true;
		}
		if (in_name) {
			CHECK(!(ch >= 'A' && ch <= 'Z'));
			if (ch == ':') {
				in_name = false;
				CHECK(out[i - 1] != ' ' && (i + 1 >= len || out[i + 1] != ' '));
			}
		}
		if (ch == '\n') {
			CHECK(i > 0 && out[i - 1] == '\r');
			CHECK(!in_name);
			bol = true;
		}
	}
	CHECK(bol);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dkim_key *key;

	if (size < 1)
		return 0;
	if (!key) {
		struct strbuf b64 = { 0 };
		/* the same seed as tests/data/dkim/ed25519-seed.b64 */
		sb_adds(&b64, "1z6VtP6Xz9kXblHEKQ7E86yAtmfO7HUAHCLpDCSUpro=");
		CHECK(dkim_key_parse(b64.buf, b64.len, "fuzz", &key, NULL, 0) == 0);
		sb_free(&b64);
	}
	uint8_t sw = data[0];
	const char *msg = (const char *)data + 1;
	size_t len = size - 1;
	size_t hend = dkim_header_end(msg, len);
	CHECK(hend <= len);

	for (int c = 0; c < 2; c++) {
		enum dkim_canon canon = (enum dkim_canon)c;
		struct strbuf once = { 0 }, again = { 0 };
		dkim_canon_body(canon, msg + hend, len - hend, &once);
		check_body(canon, sb_str(&once), once.len);
		dkim_canon_body(canon, sb_str(&once), once.len, &again);
		CHECK(again.len == once.len && memcmp(sb_str(&again), sb_str(&once), once.len) == 0);

		/* the stream, in chunks of 1..16 octets chosen by the input */
		struct dkim_body *b = dkim_body_new(canon);
		unsigned step = (sw >> 4) + 1;
		for (size_t off = hend; off < len; off += step)
			dkim_body_update(b, msg + off, len - off < step ? len - off : step);
		unsigned char got[DKIM_HASH_LEN], want[DKIM_HASH_LEN];
		uint64_t glen;
		dkim_body_final(b, got, &glen);
		dkim_body_free(b);
		wc_Sha256 sha;
		CHECK(wc_InitSha256(&sha) == 0);
		CHECK(wc_Sha256Update(&sha, (const byte *)sb_str(&once), (word32)once.len) == 0);
		CHECK(wc_Sha256Final(&sha, want) == 0);
		wc_Sha256Free(&sha);
		CHECK(glen == once.len && memcmp(got, want, sizeof(got)) == 0);
		sb_free(&once);
		sb_free(&again);
	}

	struct strbuf hdrs = { 0 };
	dkim_canon_headers(DKIM_CANON_RELAXED, msg, hend, dkim_default_headers,
			   dkim_default_header_count, &hdrs);
	check_fields(sb_str(&hdrs), hdrs.len);
	sb_free(&hdrs);

	struct dkim_sign_params p = {
		.key = key, .domain = "example.test", .selector = "ed25519",
		.header_canon = (enum dkim_canon)(sw & 1),
		.body_canon = (enum dkim_canon)((sw >> 1) & 1),
		.oversign = sw & 4, .body_length = sw & 8, .timestamp = 1700000000,
	};
	struct strbuf sig = { 0 };
	int rc = dkim_sign(&p, msg, len, &sig, NULL, 0);
	CHECK(rc == 0 || rc == -EINVAL);
	if (rc == 0) {
		CHECK(strncmp(sb_str(&sig), "DKIM-Signature: v=1; a=ed25519-sha256;", 38) == 0);
		CHECK(sig.len > 2 && memcmp(sig.buf + sig.len - 2, "\r\n", 2) == 0);
		CHECK(strstr(sb_str(&sig), "\r\n\r\n") == NULL);
	} else {
		CHECK(sig.len == 0);
	}
	sb_free(&sig);
	return 0;
}
