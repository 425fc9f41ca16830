/*
 * util/log - the daemon's log lines and its log writer.
 *
 * log_msg() writes one line to stderr in the key=value form of the
 * delivery lines, so one parser reads every line of the log:
 *   coremta: level=warning event=spool-low intake=0 free=1048576 text="..."
 * level and event first, then the caller's fields, then the sentence for
 * people, quoted.  Any thread; each line is one write(2), so lines from
 * different threads never interleave.
 *
 * The writer:  Every thread logs plain lines to
 * stderr (fd 2); log_writer_start() turns fd 2 into a pipe read by a
 * process of its own, which puts an ISO 8601 UTC timestamp in front of
 * each line and appends it to the log file (log-file) or to the stderr
 * the daemon started with.  It rotates the file at midnight UTC keeping
 * `keep` old ones (log-rotate), and reopens it on request (SIGUSR1, after
 * an outside logrotate moved it).
 *
 * Why a process and not a thread: the lines a thread writes just before
 * the daemon dies (BUG_ON, a sanitizer report, kill -9) are still in the
 * pipe; the writer drains them and exits when the last writer is gone.
 * Why stamping there: the shards write batches of lines with io_uring and
 * need not know about time formats; a line's stamp is when the writer
 * read it, microseconds after it was written unless the writer lags.
 *
 * Main thread (start, reopen, finish).  log_stamp() and the rotation
 * helpers are pure and may be called from any thread.
 */
#ifndef COREMTA_UTIL_LOG_H
#define COREMTA_UTIL_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/util.h"

enum log_level {
	LOG_LEVEL_ERROR,	/* something failed: mail or a feature is affected */
	LOG_LEVEL_WARNING,	/* works, but not as configured or intended */
	LOG_LEVEL_NOTICE,	/* lifecycle: start, reload, stop, recovery */
	LOG_LEVEL_INFO,		/* routine events worth a line */
	LOG_LEVEL_DEBUG,
};

/* log_level_parse - "error" ... "debug" to *out; -EINVAL for others. */
int log_level_parse(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);
/*
 * log_set_level - lines above level are dropped (default notice).  Set
 * at start-up and reload (log-level); an atomic, so any thread may read
 * it while another sets it.
 */
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
/*
 * log_msg - one line: level, event (a short hyphenated name: "start",
 * "reload", "spool-low"), fields ("key=value ..." already formatted, or
 * NULL), and text (printf format; quoted and escaped here).
 */
void log_msg(enum log_level level, const char *event, const char *fields,
	     const char *fmt, ...) UTIL_PRINTF(4, 5);

/* "2026-12-07T00:42:51.123Z": the stamp's length, without a NUL. */
#define LOG_STAMP_LEN 24

struct log_params {
	int out_fd;		/* an open log file, or -1: the current stderr */
	const char *path;	/* out_fd's path (rotation, reopen); NULL: none */
	unsigned keep;		/* rotated files kept (path.1 ...); 0: never rotate */
	bool drop;		/* become uid/gid once out_fd is theirs */
	uid_t uid;
	gid_t gid;
	/* the wall clock in ms since the epoch; NULL: CLOCK_REALTIME */
	int64_t (*now_ms)(void *arg);
	void *clock_arg;
};

/* log_stamp - ms since the epoch as "YYYY-MM-DDThh:mm:ss.mmmZ" (+NUL). */
void log_stamp(int64_t ms, char out[LOG_STAMP_LEN + 1]);
/* log_next_midnight_ms - the first UTC midnight after ms. */
int64_t log_next_midnight_ms(int64_t ms);
/*
 * log_rotate_files - path.(keep-1) -> path.keep, ..., path -> path.1
 * (the oldest falls off).  Returns 0 or -errno of the first failed rename.
 */
int log_rotate_files(const char *path, unsigned keep);

/*
 * log_writer_run - the writer's loop: read in_fd until end of file,
 * stamp each line and append it to p->out_fd, rotating at midnight.
 * Each time ctl_fd is readable (a signalfd for SIGUSR1, or any fd a test
 * writes to) it is drained and the file reopened.  Takes ownership of
 * p->out_fd.  Returns 0 at end of input, or -errno if reading failed.
 */
int log_writer_run(int in_fd, int ctl_fd, const struct log_params *p);

struct log_writer;

/*
 * log_writer_start - fork the writer and point fd 2 at its pipe.  The
 * writer ignores SIGTERM, SIGINT and SIGHUP (they are the daemon's) and
 * exits once every copy of the pipe is closed.  Call it before any other
 * thread exists.  Returns 0, or -errno with err filled in.
 */
int log_writer_start(const struct log_params *p, struct log_writer **out,
		     char *err, size_t errlen);
/* log_writer_reopen - ask the writer to reopen its file (SIGUSR1). */
int log_writer_reopen(const struct log_writer *w);
/*
 * log_writer_finish - give fd 2 back its first target, wait (up to
 * timeout_ms) for the writer to drain and exit, and free w.  Returns the
 * writer's exit status, or -ETIMEDOUT (it is left to finish on its own).
 */
int log_writer_finish(struct log_writer *w, int timeout_ms);

#endif
