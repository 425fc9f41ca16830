/*
 * engine/signing - DKIM at intake: decides whether a message is signed,
 * which domain-keys sign it, and puts the DKIM-Signature fields on top of
 * the copy that goes to the spool.  Signing happens once per message,
 * after DATA and before the group commit: the signatures are part of the
 * stored record, so every recipient, every retry and a restart after a
 * crash deliver the same signed bytes, and a crash can never leave a
 * message half-signed (the record is written whole or not at all).
 *
 * Policy (PowerMTA's names, tuning.md "DKIM"):
 *   - signed when the <domain> queue of ANY recipient (through the chosen
 *     virtual-mta) says dkim-sign yes; the first such queue's dkim-*
 *     settings apply to the message, since it is signed only once;
 *   - the keys tried are the virtual-mta's domain-keys, then the
 *     top-level ones (<domain-key-list> included), in file order; for a
 *     domain the virtual-mta has keys for, the top-level ones are not used;
 *   - every key whose domain is the From: author's domain or a parent of
 *     it (DMARC alignment) signs, and so does every key matching the
 *     dkim-identity's domain (Sender:, or a fixed @domain): the author's
 *     and the ESP's signatures.  A '*' key signs for the From: domain.
 *     When none matches, the keys of dkim-identity-fallback sign.
 *
 * Threads: intake threads; reads only the immutable struct cfg.  The
 * keys are shared read-only (util/dkim.h).
 */
#ifndef COREMTA_ENGINE_SIGNING_H
#define COREMTA_ENGINE_SIGNING_H

#include <stdint.h>

#include "config/config.h"
#include "engine/smtp_session.h"
#include "util/util.h"

/* At most this many signatures on one message. */
#define SIGNING_MAX_SIGNATURES 8

/*
 * The part of a streamed message that is not in memory (msg->spilled
 * octets after msg->data): read() fills buf from offset off, 0 or -errno.
 */
struct signing_tail {
	uint64_t len;
	int (*read)(const void *arg, uint64_t off, void *buf, size_t n);
	const void *arg;
};

/*
 * signing_apply - when msg is to be signed, out receives the signature
 * fields followed by msg->data: the message to store (then the tail, if
 * any, which is hashed here but not copied: tail may be NULL).  vmta is the
 * virtual-mta (or pool) the message goes through, NULL for the default.
 * Returns the number of signatures (0: not signed, out untouched), or
 * -errno when signing was wanted but failed: the message then goes
 * unsigned, and one line on stderr says why.
 */
int signing_apply(const struct cfg *cfg, const char *vmta,
		  const struct smtp_message *msg, const struct signing_tail *tail,
		  int64_t now, struct strbuf *out);

#endif
