/*
 * report - inbound reports parsed into structured results: asynchronous
 * bounces (RFC 3464 DSNs and the common non-standard forms: Exchange,
 * Gmail, qmail, Postfix and plain-text notices) and complaints (ARF,
 * RFC 5965, and Microsoft's JMRP).  Pure: no I/O, no clock, no globals.
 *
 * Threads: any; calls share nothing but the read-only configuration.
 * Ownership: every string and array of a struct report lives in the
 * caller's arena and dies with it.
 */
#ifndef COREMTA_SERVICES_REPORT_H
#define COREMTA_SERVICES_REPORT_H

#include <stddef.h>

#include "config/config.h"

struct arena;

enum report_kind {
	REPORT_UNKNOWN,		/* neither: deliver or forward it as configured */
	REPORT_BOUNCE,		/* rb records */
	REPORT_COMPLAINT,	/* f records */
};

struct report_field {
	const char *name;	/* as written: "Feedback-Type", "X-Job" */
	const char *value;	/* unfolded, trimmed */
};

/* One recipient a report is about. */
struct report_rcpt {
	const char *rcpt;	/* the address the mail was sent to */
	const char *orcpt;	/* DSN Original-Recipient, "rfc822;a@b", or NULL */
	const char *action;	/* failed, delayed, delivered, ...; NULL for f */
	const char *status;	/* "5.1.1"; NULL for f */
	const char *diag;	/* "smtp;550 5.1.1 ..." as reported, or NULL */
	const char *remote_mta;	/* "dns;mx.example.com" or NULL */
	const char *bounce_cat;	/* from <bounce-category-patterns>; NULL for f */
	enum cfg_bounce_class cls;
};

struct report {
	enum report_kind kind;
	const char *format;	/* rb: dsn, exchange, gmail, qmail, postfix,
				   text; f: arf, jmrp */
	const char *reporting_mta;	/* DSN Reporting-MTA, ARF Reporting-MTA */
	const char *env_id;		/* Original-Envelope-Id */
	size_t nrcpts;
	struct report_rcpt *rcpts;

	/* the original message as the report quotes it (headers only) */
	size_t norig;
	struct report_field *orig;
	const char *orig_message_id, *orig_job_id, *orig_from;

	/* complaints */
	const char *feedback_type;	/* abuse, fraud, ...; jmrp: abuse */
	const char *user_agent;
	const char *reported_domain;
	const char *source_ip;		/* ARF Source-IP */
	const char *original_mail_from;
	size_t narf;
	struct report_field *arf;	/* every feedback-report field */
};

/*
 * report_verp_decode - the recipient a VERP return path stands for
 * (PowerMTA's verp-default: "bounces-user=example.org@sender.example"
 * for user@example.org: the first '-' of the local part starts it, the
 * last '=' is its '@'), or NULL when env_rcpt is no VERP address.
 */
const char *report_verp_decode(const char *env_rcpt, struct arena *a);

/*
 * report_parse - msg (the whole message as received, CRLF or LF) into
 * *out.  env_rcpt is the address it came to (RCPT TO), for VERP; NULL
 * when unknown.  cfg classifies bounces (NULL: no bounce_cat, soft).
 * Returns 0 with out->kind set (REPORT_UNKNOWN when it is neither, or no
 * recipient could be found), never fails otherwise: a report is untrusted
 * input and every length is checked.
 */
int report_parse(const char *msg, size_t len, const char *env_rcpt,
		 const struct cfg *cfg, struct arena *a, struct report *out);

/*
 * report_add_rcpt - rcpt as the recipient of a report that named none
 * (the caller matched the quoted original's Message-ID to what it sent):
 * for REPORT_BOUNCE a failed recipient with status 5.0.0, classified with
 * cfg; for REPORT_COMPLAINT one reported recipient.  Sets out->kind.
 */
void report_add_rcpt(struct report *out, enum report_kind kind, const char *rcpt,
		     const struct cfg *cfg, struct arena *a);

/* report_field_get - the first field named name (any case), or NULL. */
const char *report_field_get(const struct report_field *f, size_t n,
			     const char *name);

#endif
