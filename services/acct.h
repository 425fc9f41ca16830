/*
 * acct - the accounting writer: PowerMTA-format CSV records (d, b, t, tq,
 * r, rb, f) for every <acct-file> of a configuration, plain files and |pipes,
 * and the lines of every <rejectlog-file> (refused connections,
 * recipients, messages and commands).
 *
 * Threads: one writer thread (acct_writer_start) owns every file, pipe,
 * child process and spill file.  Each producer (an intake or shard thread)
 * is given an index 0..nproducers-1 and calls acct_emit()/acct_flush()
 * with that index only, from one thread at a time: each index is a
 * single-producer ring into the writer.  new/start/stop/free run on the
 * controlling thread; acct_writer_stats() and acct_wants() on any thread;
 * acct_writer_needed() anywhere.  Several intake threads refusing commands
 * are several producers of one reject log: only the writer thread appends
 * to and rotates it, so lines of two threads never interleave and two
 * threads never rotate the same path at once.
 *
 * Never blocking: acct_emit() copies the record (one malloc) and pushes it
 * on the producer's ring.  When the ring is full the copy goes on the
 * producer's private overflow list, pushed again on its next acct_emit()
 * or acct_flush(); a producer calls acct_flush() once per loop turn so a
 * quiet producer's overflow does not linger.  Only when that list holds
 * params.overflow_max records does acct_emit() refuse (-ENOBUFS) without
 * taking the record: that is back-pressure for the caller (stop taking
 * work), never a silent drop.
 *
 * Batching: the writer drains every ring, formats each record once per
 * file and issues one write(2) per file per batch (plus one per
 * rotation).  sync yes adds one fdatasync per file per batch.
 *
 * Pipes (<acct-file |command>): the command runs under /bin/sh -c in its
 * own process group and receives the header line, then records.  When it
 * dies, breaks the pipe or stalls longer than write-timeout, the records
 * it had not read yet (the pipe's unread bytes, rounded back to a record
 * start) are kept, and the command is restarted after retry-interval with
 * a fresh header.  Meanwhile records queue in memory (params.mem_max per
 * pipe) and then in a spill file under params.spill_dir; both are replayed
 * in order.  At acct_writer_stop() what a pipe could not take stays in
 * its spill file (named after the command) and is replayed by the next
 * writer for the same command.  A record the command read but did not
 * process before dying cannot be seen from here: at-least-once for
 * consumers that read line by line, as the shell's `read` does.
 *
 * Files: the configured path is always the current file and starts with
 * the header line.  A full file (max-size) or, with move-to, one older
 * than move-interval is renamed STEM-YYYY-MM-DD-NNNN.EXT (the date it was
 * opened, the first free NNNN) into move-to or next to it; without
 * move-to such rotated files older than delete-after are deleted.  A
 * current file whose header line differs from the configured columns is
 * rotated away at start-up rather than appended to.  A file moved away
 * behind the writer's back (logrotate) is noticed within a second and
 * started again.
 *
 * Reject logs are files of this kind with fixed columns
 *   type,time,clientIp,helo,authUser,mailFrom,rcpt,reply
 * (type c, r, m or p; time ISO 8601 UTC "2023-11-14T22:13:20Z"; RFC 4180
 * quoting, CRLF).  max-size rotates them by the same renaming, so no
 * reject line is ever overwritten; <rejectlog-file> has no move-to or
 * delete-after, so rotated reject logs stay until the operator removes
 * them.  Mode 0640, no fdatasync.
 *
 * Errors are returned by acct_writer_new() in err, and otherwise counted
 * in struct acct_stats and described to params.on_error (called on the
 * writer thread); nothing is printed here.
 */
#ifndef COREMTA_ACCT_H
#define COREMTA_ACCT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct cfg;
struct acct_writer;
struct strbuf;

enum acct_type {
	ACCT_DELIVERY,		/* d */
	ACCT_BOUNCE,		/* b: local bounce */
	ACCT_TRANSIENT,		/* t: one recipient deferred */
	ACCT_TRANSIENT_QUEUE,	/* tq: a whole queue deferred */
	ACCT_RECEIPT,		/* r: accepted from a client */
	ACCT_REJECT,		/* a <rejectlog-file> line, see reject_kind */
	ACCT_REMOTE_BOUNCE,	/* rb: an asynchronous bounce report */
	ACCT_FEEDBACK,		/* f: one recipient of a complaint (ARF, JMRP) */
	ACCT_REMOTE_STATUS,	/* rs: a report that is no failure (delayed,
				 * delivered, relayed, expanded) */
};

/*
 * What a reject line refused; the value is the line's type letter.
 * records c selects c, m and p (everything but a single recipient),
 * records r selects r.
 */
enum acct_reject_kind {
	ACCT_REJECT_CONNECTION = 'c',	/* greeting refused, or ended by 421 */
	ACCT_REJECT_RECIPIENT = 'r',	/* one RCPT TO */
	ACCT_REJECT_MESSAGE = 'm',	/* MAIL FROM, DATA/BDAT or the content */
	ACCT_REJECT_COMMAND = 'p',	/* protocol: unknown, out of order, syntax */
};

struct acct_header_field {
	const char *name;	/* "Message-Id": matched without case */
	const char *value;
};

/*
 * One record.  NULL strings and zero numbers are written as empty fields.
 * Every string is copied by acct_emit(); the caller keeps its own.
 *
 * An ACCT_REJECT record uses reject_kind and these members, in its
 * column order: time_logged (time), rcv_source_ip (clientIp), helo,
 * rcv_smtp_user (authUser), orig (mailFrom), rcpt, reply.  The rest is
 * ignored.
 */
struct acct_record {
	enum acct_type type;
	time_t time_logged;	/* 0: the time of acct_emit() */
	time_t time_queued;
	const char *orig;	/* MAIL FROM */
	const char *rcpt;
	const char *orcpt;
	const char *dsn_action;	/* relayed, failed, delayed */
	const char *dsn_status;	/* "5.1.1": " (text)" of RFC 3463 is added */
	const char *dsn_diag;	/* "smtp;250 2.0.0 Ok" */
	const char *dsn_mta;	/* "mx.example.com (192.0.2.1)" */
	const char *bounce_cat;
	const char *bounce_class;	/* NULL: hard|soft from bounce_cat */
	const char *src_type;	/* smtp, api */
	const char *src_mta;	/* client name / address (r) */
	const char *dlv_type;	/* smtp */
	const char *dlv_source_ip;
	const char *dlv_destination_ip;
	const char *dlv_esmtp_available;	/* "PIPELINING,8BITMIME,..." */
	uint64_t dlv_size;
	const char *vmta;
	const char *job_id;
	const char *env_id;
	const char *queue;	/* "domain/vmta" */
	const char *vmta_pool;
	const char *dlv_tls_protocol;
	const char *dlv_tls_cipher;
	const char *rcv_source_ip;	/* r; the client's address (reject) */
	const char *rcv_destination_ip;	/* r */
	const char *rcv_smtp_user;	/* AUTH user (r, reject) */
	/* rb and f (report_parse()'s results) */
	const char *dsn_reporting_mta;	/* rb: the report's Reporting-MTA */
	const char *format;	/* rb: dsn, qmail, ...; f: arf, jmrp */
	const char *rep_source_ip;	/* f, rb: the report's sender */
	const char *feedback_type;	/* f: abuse, fraud, ... */
	const char *user_agent;	/* f */
	const char *reporting_mta;	/* f */
	const char *reported_domain;	/* f */
	size_t header_count;
	/*
	 * for header_NAME; and for arf_NAME columns, a field named "arf_NAME"
	 * (so no header of that name can be a column)
	 */
	const struct acct_header_field *headers;
	/* ACCT_REJECT only */
	enum acct_reject_kind reject_kind;
	const char *helo;	/* the client's HELO/EHLO name */
	const char *reply;	/* what we answered: "550 5.7.1 ...", no CRLF */
};

/* Tuning; a zeroed struct (or NULL) gives the defaults in brackets. */
struct acct_params {
	const char *spill_dir;	/* pipe spill files ["/tmp"] */
	size_t ring_capacity;	/* records per producer ring [4096] */
	size_t overflow_max;	/* records a producer holds locally [1 << 20] */
	size_t mem_max;		/* bytes a pipe queues in memory before
				   spilling; a file's unwritten bytes beyond
				   4x this stall the writer [4 MiB] */
	/* on the writer thread (or in acct_writer_new); text is borrowed */
	void (*on_error)(void *arg, const char *text);
	void *arg;
	/*
	 * A consumer of records beside the files (the suppression store's
	 * feed): every record of a type in sink_types (1 << enum acct_type)
	 * goes to on_record on the writer thread, borrowed for the call;
	 * on_flush follows each batch that had any.  Those types are taken
	 * (acct_wants) even when no file records them.
	 */
	unsigned sink_types;
	/* header fields the sink wants in its records (acct_collect_headers
	 * collects them for it even when no file writes them); borrowed */
	const char *const *sink_headers;
	size_t n_sink_headers;
	void (*on_record)(void *sink_arg, const struct acct_record *rec);
	void (*on_flush)(void *sink_arg);
	void *sink_arg;
};

struct acct_stats {
	uint64_t records;	/* taken from the producers */
	uint64_t lines;		/* record lines formatted, all files */
	uint64_t bytes;		/* written to files and pipes */
	uint64_t errors;	/* failed writes, opens, renames, spawns */
	uint64_t pipe_restarts;
	uint64_t spilled_bytes;	/* written to spill files */
	uint64_t rotations;
	uint64_t deleted_files;	/* by delete-after */
	uint64_t stalls;	/* turns the writer left rings undrained */
};

/*
 * acct_writer_needed - does cfg have a file this writer would write: an
 * <acct-file> recording d, b, t, tq, r, rb or f, or a <rejectlog-file>?  Without
 * one a daemon need not create a writer at all.
 */
bool acct_writer_needed(const struct cfg *cfg);

/*
 * acct_writer_new - check every <acct-file> of cfg (record-fields names),
 * open the files and every <rejectlog-file> (rotating a current file with
 * another header) and delete expired rotated files.  The directories must
 * exist.  cfg is not referenced afterwards.  Returns 0 and *out, or
 * -errno with a message in err naming the file.  An acct-file whose
 * records name only types this writer never produces (rs) is
 * skipped.  A cfg with no file at all gives a writer that takes nothing.
 */
int acct_writer_new(const struct cfg *cfg, const struct acct_params *params,
		    unsigned nproducers, struct acct_writer **out, char *err,
		    size_t errlen);

/* acct_writer_start - start the writer thread (and the pipe commands). */
int acct_writer_start(struct acct_writer *w);

/*
 * acct_writer_stop - write everything emitted so far and join the thread.
 * Call only once no producer calls acct_emit()/acct_flush() any more (they
 * are joined): the records left on their overflow lists are written too.
 * Pipes get up to write-timeout to take their backlog, then are closed
 * and their commands awaited; the rest stays in the spill files.
 */
void acct_writer_stop(struct acct_writer *w);

/* acct_writer_free - stop if running, then free; records never written
   (no start) are discarded. */
void acct_writer_free(struct acct_writer *w);

/*
 * acct_wants - would acct_emit() take a record of this type (and, for
 * ACCT_REJECT, reject_kind; ignored otherwise)?  Lets a producer skip
 * building records no file writes.  Fixed at acct_writer_new(); false for
 * a NULL writer.
 */
bool acct_wants(const struct acct_writer *w, enum acct_type type,
		enum acct_reject_kind reject_kind);

/*
 * acct_emit - queue a copy of rec for every file recording its type (and
 * reject kind).  0 when taken (or when no file records it), -ENOBUFS when
 * the producer already holds params.overflow_max records: rec was not
 * taken.
 */
int acct_emit(struct acct_writer *w, unsigned producer,
	      const struct acct_record *rec);

/*
 * acct_header_names - the header_NAME columns any file records (without
 * the prefix, each once): a producer passes those headers of a message in
 * acct_record.headers.  Fixed from acct_writer_new() on: any thread.
 */
size_t acct_header_names(const struct acct_writer *w, const char *const **names);

/*
 * acct_collect_headers - the fields of msg's header section (up to the
 * first empty line) that some file records as header_NAME, unfolded, in
 * out[] (at most ACCT_HEADERS_MAX); their values live in scratch until
 * its next use.  Returns how many; 0 at once when no file asks.  The
 * caller's thread owns scratch.
 */
#define ACCT_HEADERS_MAX 64
size_t acct_collect_headers(const struct acct_writer *w, const char *msg, size_t len,
			    struct acct_header_field *out, struct strbuf *scratch);

/* acct_flush - push the producer's overflow list; returns what remains. */
size_t acct_flush(struct acct_writer *w, unsigned producer);

void acct_writer_stats(const struct acct_writer *w, struct acct_stats *out);

#endif
