/*
 * fbl - the closed feedback loop: the daemon's suppression store
 * (services/suppress.h) fed by hard bounces and complaints, checked at
 * RCPT time, and the processors that turn mail to <bounce-processor> and
 * <feedback-loop-processor> addresses into rb and f records.
 *
 * Threads: fbl_new/fbl_set_acct/fbl_free on the main thread, before the
 * intake threads and the accounting writer start and after they stopped.
 * fbl_rcpt_check(reader i) and fbl_on_message(producer i) on intake
 * thread i only; fbl_acct_params' callbacks on the accounting writer
 * thread.  The configuration must outlive the fbl.
 */
#ifndef COREMTA_FBL_H
#define COREMTA_FBL_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "services/acct.h"
#include "engine/smtp_session.h"

struct fbl;

/* fbl_store_dir - the store's directory for cfg (malloc'd): suppression-db,
 * else <disk-queue>/suppression.  Any thread. */
char *fbl_store_dir(const struct cfg *cfg);

/*
 * fbl_new - open the store (suppression-db, else <disk-queue>/suppression)
 * with one reader per intake thread.  0 and *out, or -errno with err.
 */
int fbl_new(const struct cfg *cfg, unsigned nreaders, struct fbl **out,
	    char *err, size_t errlen);
void fbl_free(struct fbl *f);

/* fbl_set_acct - where rb and f records go (intake producers 0..n-1). */
void fbl_set_acct(struct fbl *f, struct acct_writer *acct);

/*
 * fbl_acct_params - make the accounting writer feed b records to the
 * store (hard bounces; soft ones with suppress-soft-bounces-for).
 */
void fbl_acct_params(struct fbl *f, struct acct_params *ap);

/*
 * fbl_rcpt_check - NULL when rcpt may be sent to, else the reply refusing
 * it (valid until the next call with this reader).
 */
const char *fbl_rcpt_check(struct fbl *f, unsigned reader,
			   const struct cfg_source *src, const char *mail_from,
			   const char *rcpt);

enum fbl_verdict {
	FBL_DELIVER,		/* spool and deliver as usual */
	FBL_CONSUMED,		/* a report, recorded: answer 250, store nothing */
	FBL_FORWARD,		/* spool it for *forward_to instead of its recipients */
	FBL_KEPT,		/* deliver-unmatched-email no and nowhere to forward:
				 * written (fsynced) under <disk-queue>/unmatched,
				 * answer 250, store nothing */
};

/*
 * fbl_on_message - a finished message: when recipients are processor
 * addresses, parse it, write its rb or f records and suppress hard
 * bounces and complainers (durably, before returning).  FBL_CONSUMED only
 * when every recipient is a processor's, the report parsed, and
 * deliver-matched-email is no.  Mail only for processor addresses that is
 * no report (or, with forward-errors-to, a report the processor could not
 * use) goes to FBL_FORWARD (forward-errors-to, forward-unmatched-to),
 * FBL_DELIVER (deliver-unmatched-email yes) or FBL_KEPT; it is never
 * dropped (a failed write under FBL_KEPT delivers it instead).
 */
enum fbl_verdict fbl_on_message(struct fbl *f, unsigned producer,
				const struct smtp_message *msg, const char **forward_to);

/*
 * fbl_drop_suppressed - suppression-action bounce: the recipients of msg
 * that are suppressed get a b record (bounceCat suppressed) and are left
 * out.  Returns msg when none is (and always under reject, where RCPT
 * refused them), else *scratch: msg with the rest, possibly none, its
 * recipient array owned by reader slot producer until the next call.
 */
const struct smtp_message *fbl_drop_suppressed(struct fbl *f, unsigned producer,
					       const struct smtp_message *msg,
					       struct smtp_message *scratch);

#endif
