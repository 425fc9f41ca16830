/*
 * dsn - RFC 3464 delivery status notifications composed from an original
 * message (RFC 3461 DSN parameters, RFC 6522 multipart/report).
 *
 * Pure: no I/O, no global state, any thread.  dsn_build() only appends to
 * the caller's strbuf; the caller owns every input and the output.
 *
 * Shape of a DSN (default): multipart/report; report-type=delivery-status
 *   1. text/plain, us-ascii: the explanation for a human, ASCII only;
 *   2. message/delivery-status: Reporting-MTA ... and one block per rcpt;
 *   3. message/rfc822 (RET=FULL and not larger than return_max) or
 *      text/rfc822-headers (the header section, at most 64 KiB).
 * plain_text (PowerMTA "dsn-format plain-text") puts the same three pieces
 * into one text/plain body.
 *
 * Internationalised addresses (RFC 6533): a final or original recipient
 * with non-ASCII octets is written as "utf-8;" utf-8-addr-unitext (raw
 * UTF-8; space, '+', '=', '\' as \x{HEX}); the report part then becomes
 * message/global-delivery-status (report-type=global-delivery-status).
 * Part 1 stays ASCII: such addresses are shown there with \x{HEX} escapes.
 * Remote replies and local reasons are ASCII by RFC 5321; other octets in
 * them become '?' rather than corrupt the 7-bit parts.
 */
#ifndef COREMTA_DSN_H
#define COREMTA_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

enum dsn_kind { DSN_FAILURE, DSN_DELAY };

struct dsn_rcpt {
	const char *final_rcpt;		/* the address we tried: "user@example.com" */
	const char *orcpt;		/* ORCPT= as received, e.g. "rfc822;User@Example.com" (xtext already decoded), or NULL */
	const char *status;		/* RFC 3463 "5.1.1" */
	const char *remote_mta;		/* receiver's host name (or IP) or NULL when no receiver answered */
	const char *diag;		/* the receiver's reply "550 5.1.1 user unknown" or NULL (local decision) */
	const char *local_reason;	/* human text when diag is NULL: "message expired after 4 days" */
	int64_t last_attempt;		/* unix seconds, 0: none */
	int64_t will_retry_until;	/* DSN_DELAY: unix seconds of bounce-after expiry, 0: omit */
};

struct dsn_params {
	enum dsn_kind kind;
	const char *reporting_mta;	/* our host name: Reporting-MTA: dns; NAME and the From: domain */
	const char *from;		/* From: address; NULL = "MAILER-DAEMON@<reporting_mta>" */
	const char *to;			/* the original MAIL FROM (never empty: callers never send a DSN to <>) */
	const char *envid;		/* Original-Envelope-Id or NULL */
	const char *received_from_mta;	/* client IP the original came from, or NULL */
	int64_t arrival;		/* when we accepted the original (unix seconds), 0: omit */
	int64_t now;			/* Date: */
	bool return_full;		/* RET=FULL: whole message as message/rfc822; else headers only as text/rfc822-headers */
	bool plain_text;		/* dsn-format plain-text: a single text/plain part, no multipart/report */
	const char *original;		/* the original message as spooled: RFC 5322, CRLF line ends, not dot-stuffed */
	size_t original_len;		/* 0: no third part */
	size_t return_max;		/* RET=FULL longer than this returns headers only (0 = 10 MiB) */
	const struct dsn_rcpt *rcpt;
	size_t nrcpt;			/* >= 1 */
	uint64_t unique;		/* caller-unique number for Message-ID and the MIME boundary */
};

/* The returned header section is cut (on a field boundary) beyond this. */
#define DSN_HEADERS_MAX (64 * 1024)
#define DSN_RETURN_MAX_DEFAULT ((size_t)10 * 1024 * 1024)

/*
 * dsn_build - append the whole DSN message (headers + body, CRLF, not
 * dot-stuffed) to out.  0, or -EINVAL with a reason in err (out is then
 * unchanged).  Every generated line ends in CRLF and is at most 998
 * octets; only a returned message/rfc822 keeps the original's own long
 * lines (its line ends are made CRLF).  The same parameters give the same
 * bytes.
 */
int dsn_build(const struct dsn_params *p, struct strbuf *out, char *err, size_t errlen);

#endif
