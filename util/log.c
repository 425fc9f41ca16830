/*
 * util/log.c - the log lines (log_msg, any thread) and the log writer
 * process: stamps, rotation, reopen (see log.h).  log_writer_start/
 * reopen/finish run on the daemon's main thread; log_writer_run is the
 * whole life of the writer process (or of a test's thread).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"
#include "util/log.h"

#define DAY_MS		86400000LL
#define READ_CHUNK	65536
#define PIPE_BYTES	(1 << 20)	/* room for the shards' batches under a burst */
/*
 * After a read that did not fill READ_CHUNK the writer lets lines gather
 * this long before it looks again: under load the shards hand over a
 * batch per loop turn, and a wake-up, read and write for each cost more
 * than the lines themselves.  At 10 MB/s of lines the pipe fills in
 * 100 ms, so 5 ms never blocks a writer; a line waits at most that long.
 */
#define GATHER_US	5000

/* A line longer than this is cut (and still ends with '"' and a newline):
 * 4 KiB is PIPE_BUF, the most one write(2) to the writer's pipe puts in
 * one piece. */
#define LINE_MAX_BYTES 4096

static const char *const level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARNING] = "warning",
	[LOG_LEVEL_NOTICE] = "notice",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

/* Written by the main thread only; atomic so readers on other threads see
 * a whole value (relaxed: no other data depends on it). */
static _Atomic int log_threshold = LOG_LEVEL_NOTICE;

int log_level_parse(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(level_names); i++)
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	return -EINVAL;
}

const char *log_level_name(enum log_level level)
{
	return (size_t)level < ARRAY_SIZE(level_names) ? level_names[level] : "unknown";
}

void log_set_level(enum log_level level)
{
	atomic_store_explicit(&log_threshold, (int)level, memory_order_relaxed);
}

bool log_enabled(enum log_level level)
{
	return (int)level <= atomic_load_explicit(&log_threshold, memory_order_relaxed);
}

/* format_line - "coremta: level=... event=... [fields] text=\"...\"\n" in
 * line[LINE_MAX_BYTES], cut to fit; returns its length. */
static size_t format_line(char *line, enum log_level level, const char *event,
			  const char *fields, const char *text)
{
	const size_t cap = LINE_MAX_BYTES;
	int n = snprintf(line, cap, "coremta: level=%s event=%s%s%s text=\"",
			 log_level_name(level), event, fields && *fields ? " " : "",
			 fields ? fields : "");
	size_t len = n < 0 ? 0 : (size_t)n < cap - 3 ? (size_t)n : cap - 3;

	/* room is kept for the closing quote and the newline */
	for (const char *p = text; *p && len < cap - 3; p++) {
		if ((*p == '"' || *p == '\\') && len < cap - 4)
			line[len++] = '\\';
		line[len++] = (unsigned char)*p < 0x20 ? '?' : *p;
	}
	line[len++] = '"';
	line[len++] = '\n';
	return len;
}

void log_msg(enum log_level level, const char *event, const char *fields,
	     const char *fmt, ...)
{
	char text[LINE_MAX_BYTES], line[LINE_MAX_BYTES];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	size_t len = format_line(line, level, event, fields, text);
	/* best effort: a log line that cannot be written has nowhere to go */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void log_stamp(int64_t ms, char out[LOG_STAMP_LEN + 1])
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	int frac = (int)(ms % 1000);

	gmtime_r(&s, &tm);
	/* 19 characters for any year 1000-9999, then ".mmmZ" */
	if (strftime(out, LOG_STAMP_LEN + 1, "%Y-%m-%dT%H:%M:%S", &tm) != 19)
		memcpy(out, "0000-00-00T00:00:00", 20);
	out[19] = '.';
	out[20] = (char)('0' + frac / 100);
	out[21] = (char)('0' + frac / 10 % 10);
	out[22] = (char)('0' + frac % 10);
	out[23] = 'Z';
	out[24] = '\0';
}

/* Unix time has no leap seconds: every UTC day is DAY_MS long. */
int64_t log_next_midnight_ms(int64_t ms)
{
	return (ms / DAY_MS + 1) * DAY_MS;
}

int log_rotate_files(const char *path, unsigned keep)
{
	int rc = 0;

	for (unsigned k = keep; k > 1 && rc == 0; k--) {
		char *from = xasprintf("%s.%u", path, k - 1);
		char *to = xasprintf("%s.%u", path, k);
		if (rename(from, to) < 0 && errno != ENOENT)
			rc = -errno;
		free(from);
		free(to);
	}
	if (rc == 0 && keep > 0) {
		char *to = xasprintf("%s.1", path);
		if (rename(path, to) < 0 && errno != ENOENT)
			rc = -errno;
		free(to);
	}
	return rc;
}

struct writer {
	const struct log_params *p;
	int out;
	bool bol;			/* the next byte starts a line */
	int64_t next_rotation;		/* INT64_MAX: never */
	struct strbuf buf;
};

static int64_t now_ms(const struct writer *w)
{
	struct timespec ts;

	if (w->p->now_ms)
		return w->p->now_ms(w->p->clock_arg);
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* note - a line of the writer's own, stamped like the others. */
/* note - the writer's own line (event=log), stamped, straight into the file */
static void note(struct writer *w, enum log_level level, const char *fmt, ...)
	UTIL_PRINTF(3, 4);
static void note(struct writer *w, enum log_level level, const char *fmt, ...)
{
	char stamp[LOG_STAMP_LEN + 1], text[LINE_MAX_BYTES], line[LINE_MAX_BYTES];
	struct strbuf sb = { 0 };
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_stamp(now_ms(w), stamp);
	sb_printf(&sb, "%s%s ", w->bol ? "" : "\n", stamp);
	sb_add(&sb, line, format_line(line, level, "log", NULL, text));
	(void)write_all(w->out, sb.buf, sb.len);
	w->bol = true;
	sb_free(&sb);
}

/* reopen - a new descriptor for path; on failure the old one stays. */
static void reopen(struct writer *w, const char *why)
{
	if (!w->p->path)
		return;
	int fd = open(w->p->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd < 0) {
		note(w, LOG_LEVEL_ERROR, "cannot reopen %s (%s): %s; still writing to the file that was open",
		     w->p->path, why, strerror(errno));
		return;
	}
	close(w->out);
	w->out = fd;
	note(w, LOG_LEVEL_NOTICE, "%s %s", why, w->p->path);
}

static void rotate(struct writer *w, int64_t now)
{
	int rc = log_rotate_files(w->p->path, w->p->keep);

	w->next_rotation = log_next_midnight_ms(now);
	if (rc < 0) {
		note(w, LOG_LEVEL_ERROR, "cannot rotate %s (log-rotate %u): %s; the directory must be writable "
		     "by the user coremta runs as", w->p->path, w->p->keep, strerror(-rc));
		return;
	}
	reopen(w, "rotated at midnight UTC, new");
}

static void maybe_rotate(struct writer *w)
{
	int64_t now = now_ms(w);

	if (now >= w->next_rotation)
		rotate(w, now);
}

/* stamp_chunk - the bytes read, a stamp in front of every line they start. */
static void stamp_chunk(struct writer *w, const char *s, size_t n)
{
	char stamp[LOG_STAMP_LEN + 1];

	log_stamp(now_ms(w), stamp);
	sb_reset(&w->buf);
	while (n > 0) {
		if (w->bol) {
			sb_add(&w->buf, stamp, LOG_STAMP_LEN);
			sb_addc(&w->buf, ' ');
		}
		const char *nl = memchr(s, '\n', n);
		size_t len = nl ? (size_t)(nl - s) + 1 : n;
		sb_add(&w->buf, s, len);
		w->bol = nl != NULL;
		s += len;
		n -= len;
	}
	(void)write_all(w->out, w->buf.buf, w->buf.len);
}

int log_writer_run(int in_fd, int ctl_fd, const struct log_params *p)
{
	struct writer w = {
		.p = p,
		.out = p->out_fd >= 0 ? p->out_fd : STDERR_FILENO,
		.bol = true,
		.next_rotation = INT64_MAX,
	};
	char *in = xmalloc(READ_CHUNK);
	int rc = 0;

	if (p->path && p->keep > 0)
		w.next_rotation = log_next_midnight_ms(now_ms(&w));
	for (;;) {
		int timeout = -1;
		if (w.next_rotation != INT64_MAX) {
			int64_t left = w.next_rotation - now_ms(&w);
			timeout = left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
		}
		struct pollfd pf[2] = { { in_fd, POLLIN, 0 }, { ctl_fd, POLLIN, 0 } };
		int n = poll(pf, ctl_fd >= 0 ? 2 : 1, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		maybe_rotate(&w);
		/* lines already waiting go to the file that was open */
		if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = read(in_fd, in, READ_CHUNK);
			if (r < 0 && errno != EINTR && errno != EAGAIN) {
				rc = -errno;
				break;
			}
			if (r == 0)
				break;
			if (r > 0)
				stamp_chunk(&w, in, (size_t)r);
			if (r > 0 && r < READ_CHUNK)
				usleep(GATHER_US);
		}
		if (ctl_fd >= 0 && (pf[1].revents & POLLIN)) {
			char drain[256];
			ssize_t r = read(ctl_fd, drain, sizeof(drain));
			(void)r;
			reopen(&w, "reopened");
		}
	}
	if (!w.bol)
		(void)write_all(w.out, "\n", 1);
	if (w.out != STDERR_FILENO)
		close(w.out);
	sb_free(&w.buf);
	free(in);
	return rc;
}

struct log_writer {
	pid_t pid;
	int saved_fd;		/* what fd 2 was before the pipe */
};

/* writer_main - the child: never returns. */
static _Noreturn void writer_main(int in_fd, const struct log_params *p)
{
	struct sigaction ign = { .sa_handler = SIG_IGN };
	sigset_t usr1;

	/* the daemon's signals; the writer ends when its input does */
	sigaction(SIGTERM, &ign, NULL);
	sigaction(SIGINT, &ign, NULL);
	sigaction(SIGHUP, &ign, NULL);
	sigaction(SIGPIPE, &ign, NULL);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	int sfd = signalfd(-1, &usr1, SFD_CLOEXEC);
	prctl(PR_SET_NAME, "coremta-log");
	if (p->drop && geteuid() == 0) {
		/* the file stays reopenable after the drop */
		if (p->out_fd >= 0 && fchown(p->out_fd, p->uid, p->gid) < 0)
			log_msg(LOG_LEVEL_ERROR, "log", NULL, "chown %s: %s", p->path, strerror(errno));
		if (setgroups(0, NULL) < 0 || setgid(p->gid) < 0 || setuid(p->uid) < 0) {
			log_msg(LOG_LEVEL_ERROR, "log", NULL, "cannot drop privileges: %s", strerror(errno));
			_exit(1);
		}
	}
	int rc = log_writer_run(in_fd, sfd, p);
	_exit(rc < 0 ? 1 : 0);
}

int log_writer_start(const struct log_params *p, struct log_writer **out,
		     char *err, size_t errlen)
{
	int fds[2];

	/* started with fd 2 closed: the pipe must not take its number */
	if (fcntl(STDERR_FILENO, F_GETFD) < 0) {
		int null = open("/dev/null", O_WRONLY);
		if (null >= 0 && null != STDERR_FILENO) {
			dup2(null, STDERR_FILENO);
			close(null);
		}
	}
	if (pipe2(fds, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "log writer: pipe: %s", strerror(errno));
		return -errno;
	}
	(void)fcntl(fds[1], F_SETPIPE_SZ, PIPE_BYTES);	/* best effort */
	int saved = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
	if (saved < 0) {
		int e = errno;
		snprintf(err, errlen, "log writer: dup stderr: %s", strerror(e));
		close(fds[0]);
		close(fds[1]);
		return -e;
	}
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		snprintf(err, errlen, "log writer: fork: %s", strerror(e));
		close(fds[0]);
		close(fds[1]);
		close(saved);
		return -e;
	}
	if (pid == 0) {
		close(fds[1]);
		close(saved);
		writer_main(fds[0], p);
	}
	close(fds[0]);
	if (p->out_fd >= 0)
		close(p->out_fd);	/* the writer's now */
	if (dup2(fds[1], STDERR_FILENO) < 0) {
		int e = errno;
		snprintf(err, errlen, "log writer: dup2: %s", strerror(e));
		close(fds[1]);
		close(saved);
		return -e;
	}
	close(fds[1]);
	struct log_writer *w = xcalloc(1, sizeof(*w));
	w->pid = pid;
	w->saved_fd = saved;
	*out = w;
	return 0;
}

int log_writer_reopen(const struct log_writer *w)
{
	return w && kill(w->pid, SIGUSR1) < 0 ? -errno : 0;
}

int log_writer_finish(struct log_writer *w, int timeout_ms)
{
	int status = 0, rc = -ETIMEDOUT;

	if (!w)
		return 0;
	fflush(stderr);
	dup2(w->saved_fd, STDERR_FILENO);	/* closes our end of the pipe */
	close(w->saved_fd);
	for (int waited = 0; waited <= timeout_ms; waited += 10) {
		pid_t r = waitpid(w->pid, &status, WNOHANG);
		if (r == w->pid) {
			rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
			break;
		}
		if (r < 0) {
			rc = -errno;
			break;
		}
		usleep(10 * 1000);
	}
	free(w);
	return rc;
}
