/*
 * tests/fuzz/fuzz_dsn.c - libFuzzer target for the DSN composer: the
 * receiver's reply, the ORCPT and ENVID a client sent and the original
 * message are all untrusted.  Never a crash or leak; whatever dsn_build
 * accepts comes out CRLF-only, and, with headers returned (not the whole
 * message), with no line over 998 octets.  Single-threaded.
 *
 * Input: byte 0 = switches (kind, RET=FULL, plain text, a remote MTA),
 * then NUL-separated fields: reply text, ORCPT, ENVID, final recipient,
 * and the rest is the original message.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#include "engine/dsn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* next_field - up to the next NUL (or the end): a NUL-terminated copy. */
static char *next_field(const uint8_t **p, const uint8_t *end)
{
	const uint8_t *nul = memchr(*p, 0, (size_t)(end - *p));
	size_t n = nul ? (size_t)(nul - *p) : (size_t)(end - *p);
	char *s = xstrndup((const char *)*p, n);

	*p += nul ? n + 1 : n;
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t sw = data[0];
	const uint8_t *p = data + 1, *end = data + size;
	char *reply = next_field(&p, end);
	char *orcpt = next_field(&p, end);
	char *envid = next_field(&p, end);
	char *rcpt = next_field(&p, end);
	struct dsn_rcpt r[2] = {
		{ .final_rcpt = *rcpt ? rcpt : "u@example.org", .orcpt = *orcpt ? orcpt : NULL,
		  .status = sw & 1 ? "4.2.0" : "5.1.1",
		  .remote_mta = sw & 8 ? "mx.example.net" : NULL,
		  .diag = sw & 16 ? reply : NULL, .local_reason = reply,
		  .last_attempt = 1700000000, .will_retry_until = sw & 1 ? 1700086400 : 0 },
		{ .final_rcpt = "second@example.org", .status = sw & 1 ? "4.0.0" : "5.0.0",
		  .local_reason = "second" },
	};
	struct dsn_params prm = {
		.kind = sw & 1 ? DSN_DELAY : DSN_FAILURE,
		.reporting_mta = "mta.example.com",
		.to = "sender@example.com",
		.envid = *envid ? envid : NULL,
		.received_from_mta = sw & 32 ? "192.0.2.7" : NULL,
		.arrival = 1700000000,
		.now = 1700000100,
		.return_full = sw & 2,
		.plain_text = sw & 4,
		.original = (const char *)p,
		.original_len = (size_t)(end - p),
		.return_max = 4096,
		.rcpt = r,
		.nrcpt = sw & 64 ? 2 : 1,
		.unique = size,
	};
	struct strbuf out = { 0 };
	char err[256];

	if (dsn_build(&prm, &out, err, sizeof(err)) == 0) {
		const char *s = out.buf;
		size_t line = 0;
		bool full = prm.return_full && !prm.plain_text;
		for (size_t i = 0; i < out.len; i++) {
			if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
				abort();	/* a bare LF */
			if (s[i] == '\r' && (i + 1 == out.len || s[i + 1] != '\n'))
				abort();	/* a bare CR */
			line = s[i] == '\n' ? 0 : line + 1;
			if (!full && line > 998 + 1)
				abort();	/* a line over 998 octets */
		}
	}
	sb_free(&out);
	free(reply);
	free(orcpt);
	free(envid);
	free(rcpt);
	return 0;
}
