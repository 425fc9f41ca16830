/*
 * spool - the durable message store behind "250 OK" (DESIGN.md, "Durability
 * contract"): append-only segment files of message records, an append-only
 * journal of per-recipient outcomes, group commit, start-up recovery and
 * reclamation, all under one directory:
 *
 *   DIR/seg/<16 hex>.seg       message records (envelope + body)
 *   DIR/journal/<16 hex>.jnl   outcome records
 *   DIR/quarantine/            corrupt records and files, set aside
 *   DIR/ids                    the id reservation (every id issued is below)
 *
 * Threads: a struct spool is owned by ONE thread (the intake thread); every
 * function taking a struct spool is called from that thread only.
 * spool_verify() and spool_segment_path() keep no state and may be called
 * from any thread: a shard reads a body through its own fd (pread or
 * io_uring) at the place a struct spool_ref names, then verifies it.
 *
 * Memory: spool_open() allocates the spool and spool_close() frees it with
 * all it owns.  Envelopes, refs and strings handed to callbacks are borrowed
 * for the duration of the call.  spool_segment_path() returns a string the
 * caller frees.
 *
 * Errors: functions return 0 (or a count) on success and -errno on failure;
 * spool_error() describes the last failure.  Nothing is printed.
 *
 * Durability: a message is on stable storage once a spool_commit() (or a
 * spool_commit_begin()/spool_commit_done() pair) begun after its
 * spool_append() has returned 0; an outcome likewise after its
 * spool_journal(), by a commit that syncs the journal.  Only then may 250
 * be sent (or the outcome be treated as final).  After a crash, recovery returns every committed message with
 * every recipient whose outcome was not committed (at-least-once).
 */
#ifndef COREMTA_SPOOL_H
#define COREMTA_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/mail.h"
#include "util/spoolrec.h"
#include "util/util.h"

struct spool;

/* Hard limits of the record format. */
#define SPOOL_MAX_RCPT		65536u		/* recipients per message */
#define SPOOL_MAX_BODY		(1u << 30)	/* body bytes per message */
#define SPOOL_MAX_FIELD		65000u		/* bytes per envelope string */

/* Final outcomes of one recipient, as journaled. */
enum spool_outcome {
	SPOOL_DELIVERED = 1,
	SPOOL_BOUNCED,
	SPOOL_EXPIRED,
	SPOOL_DELETED,
};

struct spool_rcpt {
	const char *addr;	/* forward-path without <>; never NULL */
	const char *orcpt;	/* ORCPT= as received, or NULL */
	uint32_t notify;	/* SPOOL_NOTIFY_* */
	uint32_t index;		/* journal key: position in the message as
				 * received.  spool_append() ignores it and
				 * numbers the recipients 0..nrcpt-1. */
};

struct spool_envelope {
	const char *mail_from;	/* reverse-path without <>; "" = null sender */
	const char *envid;	/* ENVID=, or NULL */
	const char *source_ip;	/* client address as text, or NULL */
	const char *vmta;	/* virtual-mta name, or NULL */
	const char *job_id;	/* x-job, or NULL */
	const char *auth_user;	/* authenticated user, or NULL */
	uint64_t size;		/* SIZE= as declared, 0 if absent */
	int64_t queued;		/* unix seconds; 0 on append means now */
	uint8_t ret;		/* enum mail_ret */
	uint8_t body_type;	/* enum mail_body */
	bool smtputf8;
	bool has_8bit;		/* recovery only: the body has octets above
				 * 127 (seen when recovery verified it) */
	const struct spool_rcpt *rcpt;
	size_t nrcpt;		/* 1..SPOOL_MAX_RCPT */
};


/* Zero fields take the default. */
struct spool_opts {
	uint64_t segment_size;	/* roll to a new segment past this: 64 MiB */
	uint64_t journal_size;	/* roll to a new journal past this: 16 MiB */
	int64_t move_after;	/* seconds: spool_maintain() moves messages out
				 * of segments older than this: 3600; <0 never */
	uint32_t move_budget;	/* messages moved per spool_maintain(): 1000 */
	bool delete_corrupted;	/* keep no copy of corrupt data in
				 * quarantine/ (spool-delete-corrupted);
				 * it is still counted and reported */
};

/* A corrupt region found by recovery (the first SPOOL_REPORT_MAX). */
#define SPOOL_REPORT_MAX 16

struct spool_bad {
	uint64_t seq;		/* sequence number of the segment or journal */
	uint64_t off;
	uint64_t len;
	bool journal;		/* in a journal file, not a segment */
	bool whole_file;	/* unreadable file header: file moved aside */
};

struct spool_stats {
	uint64_t segments;	/* segment files scanned */
	uint64_t journals;	/* journal files scanned */
	uint64_t records;	/* valid message records, old copies included */
	uint64_t outcomes;	/* valid journal records */
	uint64_t messages;	/* messages with unfinished recipients */
	uint64_t recipients;	/* unfinished recipients */
	uint64_t truncated;	/* torn tails cut off (never acknowledged) */
	uint64_t truncated_bytes;
	uint64_t recycled_tails;	/* a recycled segment's earlier life, cut */
	uint64_t quarantined;	/* corrupt regions or files set aside */
	size_t nbad;
	struct spool_bad bad[SPOOL_REPORT_MAX];
};

/* spool_maintain() adds to these. */
struct spool_maint_stats {
	uint64_t segments_deleted;
	uint64_t journals_deleted;
	uint64_t moved;
	uint64_t errors;	/* messages that could not be moved */
};

struct spool_usage {
	uint64_t messages;	/* with unfinished recipients */
	uint64_t recipients;	/* unfinished */
	uint64_t segments;
	uint64_t journals;
	uint64_t bytes;		/* segment bytes on disk */
};

/*
 * spool_open - create (if need be) and lock the spool in <dir>.  Fails with
 * -EWOULDBLOCK if another process holds it.  <opts> may be NULL.  On error
 * <err> (if not NULL) says why.  Call spool_recover() next.
 */
int spool_open(const char *dir, const struct spool_opts *opts,
	       struct spool **out, struct strbuf *err);

/*
 * spool_close - release the lock and free everything; tolerates NULL.
 * Does not commit: appends and outcomes not committed may be lost.
 */
void spool_close(struct spool *sp);

/* spool_error - text of the last failure ("" if none). */
const char *spool_error(const struct spool *sp);

/*
 * spool_recover - scan every segment and journal, verify every record,
 * truncate torn tails, quarantine corrupt records, apply the outcomes, then
 * call <fn> for each message that still has unfinished recipients, oldest
 * first.  It blocks until done; spool_recover_begin/step below do the same
 * in steps.  env->rcpt holds only those recipients (with their journal index).
 * <fn> may call spool_journal() and spool_append(); a non-zero return stops
 * the walk and is returned.  Must be called exactly once, before anything
 * but spool_error() and spool_close().  Afterwards run spool_maintain() to
 * delete what recovery found finished.
 */
typedef int spool_recover_fn(void *ctx, const struct spool_envelope *env,
			     const struct spool_ref *ref);

int spool_recover(struct spool *sp, spool_recover_fn *fn, void *ctx,
		  struct spool_stats *st);

/*
 * spool_recover_begin/step - spool_recover() in bounded steps, so the
 * owner takes new mail while old mail is recovered.  begin lists the
 * files and reserves ids (DIR/ids); from then on spool_append(),
 * spool_journal() and commits work: new mail goes to a fresh segment,
 * under ids no old record or outcome carries, and new outcomes to a fresh
 * journal file.  (Without a valid reservation from the previous run,
 * begin reads every file first, as spool_recover() does.)  Each step
 * scans segments, then journals, then calls <fn> for each message with
 * unfinished recipients, for about <budget_us> (> 0) microseconds.
 * A positive return from <fn> means "not taken now": the step ends and
 * the same message is offered again by the next one.  Returns 1 while
 * work remains, 0 when recovery is done (*st, given to begin and kept
 * until then, is final), -errno on failure.  spool_maintain() does
 * nothing until then.  Outcomes may be journaled only for messages the
 * owner appended or was handed.
 */
int spool_recover_begin(struct spool *sp, struct spool_stats *st);
int spool_recover_step(struct spool *sp, spool_recover_fn *fn, void *ctx,
		       uint32_t budget_us);
/* spool_recovering - begun and not finished */
bool spool_recovering(const struct spool *sp);

/*
 * spool_append - add one message to the active segment and fill <ref>.
 * The records of one commit are written together by spool_commit_begin()
 * (one pwrite; a big or streamed one is written at once), so a write error
 * may surface there: the records stay buffered and that commit, retried,
 * writes them again.  Not durable until the next commit.  -EINVAL or
 * -E2BIG for an envelope the format cannot hold; an I/O error leaves the
 * spool usable (answer 451 and go on).
 */
int spool_append(struct spool *sp, const struct spool_envelope *env,
		 const void *body, size_t body_len, struct spool_ref *ref);

/*
 * Streaming intake: a spill holds the tail of one incoming body while it
 * arrives, in an unnamed file beside the segments, so the memory a message
 * costs is a window, not its size.  spool_append_spilled() stores body
 * (in memory) followed by the spill's bytes as one record, copying the
 * spill inside the kernel.  A spill is not durable and not part of the
 * spool: a crash forgets it.  Reset it for the next message; free it with
 * its connection.  Same thread as the spool; spool_spill_read() is for
 * whoever must see the stored bytes again (DKIM's body hash).
 */
struct spool_spill;

int spool_spill_new(struct spool *sp, struct spool_spill **out);
/* spool_spill_write - append n bytes; 0 or -errno (-ENOSPC: disk full). */
int spool_spill_write(struct spool_spill *t, const void *p, size_t n);
int spool_spill_read(const struct spool_spill *t, uint64_t off, void *p,
		     size_t n);
/* spool_spill_len - bytes spilled so far; 0 for NULL. */
uint64_t spool_spill_len(const struct spool_spill *t);
void spool_spill_reset(struct spool_spill *t);
void spool_spill_free(struct spool_spill *t);

int spool_append_spilled(struct spool *sp, const struct spool_envelope *env,
			 const void *body, size_t body_len,
			 const struct spool_spill *tail, struct spool_ref *ref);

/*
 * spool_journal - record the final outcome of recipient <rcpt> (its index)
 * of message <id>.  Buffered; durable at the next commit.  -ENOENT for an
 * unknown message, -EALREADY for a recipient already finished (nothing is
 * written).  The message is forgotten with its last recipient.
 */
int spool_journal(struct spool *sp, uint64_t id, uint32_t rcpt,
		  enum spool_outcome outcome);

/*
 * spool_commit - make every append and outcome so far durable: one
 * fdatasync per file written since the last commit (plus an fsync of a
 * directory that gained a file).  Blocks.  A failed sync is sticky: the
 * page cache may have dropped the data, so every later append and commit
 * fails too; close and reopen the spool (recovery re-reads the disk).
 */
int spool_commit(struct spool *sp);

/*
 * spool_commit_begin/done - spool_commit() in two halves so the syncs can
 * go through io_uring (IORING_OP_FSYNC, with IORING_FSYNC_DATASYNC where
 * datasync is set), in any order or in parallel.  begin writes the buffered
 * records and outcomes and returns how many entries *fds holds (possibly 0); the array
 * and fds stay valid until done, which must follow with 0 or the first
 * failure's -errno.  A negative return from begin has nothing to complete.
 * One commit in flight at a time; appends and outcomes may continue
 * meanwhile and belong to the next commit.  Do not close the spool with a
 * commit in flight.
 *
 * <sync_journal> false leaves the journal out of the syncs (it is still
 * written, so a killed process loses nothing the kernel holds): those
 * outcomes become durable with a later commit that syncs it.  Only a
 * crash of the machine can lose them, and then their recipients are
 * delivered again (at-least-once, DESIGN.md); the caller bounds how long
 * that window is (journal-sync-delay).  spool_commit() syncs everything.
 */
struct spool_sync {
	int fd;
	bool datasync;		/* fdatasync (a file) rather than fsync (a dir) */
};

int spool_commit_begin(struct spool *sp, bool sync_journal,
		       const struct spool_sync **fds);
int spool_commit_done(struct spool *sp, int result);

/*
 * spool_journal_flush - write the buffered outcomes to the journal file
 * without a sync: from then on only a crash of the machine loses them.
 * spool_journal_unsynced - outcomes recorded that no finished commit
 * synced yet (buffered, written, or a new journal file's name).
 */
int spool_journal_flush(struct spool *sp);
bool spool_journal_unsynced(const struct spool *sp);

/*
 * spool_maintain - reclaim space; run it periodically between commits
 * (-EBUSY while one is in flight).  Deletes segments with no unfinished
 * recipient and journal files no remaining segment needs, then moves the
 * messages of segments older than move_after (up to move_budget of them) to
 * the active segment with only their unfinished recipients, commits, and
 * reports each move to <fn> (may be NULL) so the owner can pass the new ref
 * to whoever reads the body (<fn> may call spool_journal(), not
 * spool_maintain()).  The old copy stays readable until the next
 * spool_maintain() call.  Blocks on fsync when it moved something.  <now> is
 * the current time (unix seconds).  Returns 1 if messages remain to move,
 * 0 if not, -errno on failure.
 */
typedef void spool_moved_fn(void *ctx, const struct spool_ref *from,
			    const struct spool_ref *to);

int spool_maintain(struct spool *sp, int64_t now, spool_moved_fn *fn,
		   void *ctx, struct spool_maint_stats *st);

/*
 * spool_locate - where message <id>'s current copy is (it may have moved
 * since its ref was handed out): 0, or -ENOENT once it is finished.
 */
int spool_locate(struct spool *sp, uint64_t id, struct spool_ref *ref);

/*
 * spool_read - read and verify the body of <ref> into <body> (at least
 * ref->body_len bytes).  -ENOENT if the segment is gone, -EBADMSG if the
 * record does not verify, -EMSGSIZE if <cap> is too small.
 */
int spool_read(struct spool *sp, const struct spool_ref *ref, void *body,
	       size_t cap);

/* spool_verify and spool_segment_path: util/spoolrec.h */

/* spool_dir - the directory the spool was opened on. */
const char *spool_dir(const struct spool *sp);

/* spool_free_bytes - space available to this user on the spool's fs. */
int spool_free_bytes(struct spool *sp, uint64_t *bytes);

/*
 * Finished segments are kept (at most two, as "<seq>.free" in seg/) and
 * reused as the next segments: writing into blocks a file already has
 * spares each commit's fdatasync the inode write and block allocation of
 * a growing file.  They are kept only while the disk has four segments'
 * worth free beyond <bytes> (spool_set_keep_free: what the owner keeps
 * free for itself); spool_release_pool() deletes them (before mail is
 * refused for space) and says how many went; spool_pooled() counts them.
 */
void spool_set_keep_free(struct spool *sp, uint64_t bytes);
size_t spool_release_pool(struct spool *sp);
size_t spool_pooled(const struct spool *sp);

/* spool_usage - live counts, for metrics. */
void spool_usage(const struct spool *sp, struct spool_usage *u);

#endif
