/*
 * tests/lib/testlib.h - helpers shared by the Criterion suites: where the
 * reference material is, temporary directories, loading configs from
 * text, and running the coremta binary with a time limit.
 *
 * Test threads only.  Strings returned are malloc'd; the caller frees.
 */
#ifndef COREMTA_TESTLIB_H
#define COREMTA_TESTLIB_H

#include <stdbool.h>
#include <stdio.h>

#include "config/config.h"
#include "util/util.h"

/*
 * testlib_need - skip the test when the program at path is not installed
 * (the reason names the Debian package), as a developer without it
 * cannot run it; under CI (CI set) fail instead.  The tools suite
 * (tests/lib/test_tools.c) fails once for each missing program.
 */
void testlib_need(const char *path, const char *package);

/* ../shared as CI lays it out (COREMTA_SHARED overrides). */
const char *testlib_shared_dir(void);
/* The sanitizer build of the daemon (COREMTA_BIN), for CLI tests. */
const char *testlib_coremta_bin(void);

char *testlib_tmpdir(void);
void testlib_rmrf(const char *dir);
/* testlib_replace_all - text with every key replaced by val (free it); an empty key replaces nothing. */
char *testlib_replace_all(const char *text, const char *key, const char *val);
/* testlib_write - create dir/name with text; returns the path. */
char *testlib_write(const char *dir, const char *name, const char *text);

/* testlib_diag_text - every diagnostic formatted, one per line. */
char *testlib_diag_text(const struct diag_list *dl);

/*
 * testlib_load - load text as "test.conf" (includes relative to base_dir).
 * Returns the config or NULL; diagnostics go to dl.
 */
struct cfg *testlib_load(const char *text, struct diag_list *dl);
/* testlib_load_ok - the same, failing the test with the diagnostics if it does not load. */
struct cfg *testlib_load_ok(const char *text);

/*
 * testlib_run - run argv[0] with argv, capture stdout and stderr, kill it
 * after timeout_s.  Returns the exit status, or -1 if it did not exit.
 */
int testlib_run(const char *const *argv, int timeout_s, char **out, char **err);


/* ---- a coremta daemon under test (the sanitizer build) ---- */

struct testlib_daemon {
	int pid;
	/*
	 * The port of its first listener, and of each in config order, as
	 * the daemon logged them ("listening addr=A port=P") at its latest
	 * start: "@PORT@" in the config is 0, the kernel picks.
	 */
	int port;
	int ports[8];
	size_t nports;
	int sink_port;		/* replaces "@SINK@" in the config */
	char *dir;		/* temporary directory: config, spool, logs */
	char *conf;
	char *log;		/* its log: the file log-file names, else its stderr */
	char *err;		/* its stderr */
	/*
	 * Mount options ("size=6m") for a tmpfs of its own at @DIR@/spool in
	 * a private mount namespace (unshare -m), or NULL.  The test sees
	 * it as /proc/<pid>/root@DIR@/spool; testlib_private_tmpfs_ok()
	 * first.
	 */
	const char *spool_tmpfs;
};

/*
 * testlib_private_tmpfs_ok - can this process unshare its mount namespace
 * and mount a tmpfs (root, or CAP_SYS_ADMIN)?  false with why filled.
 */
bool testlib_private_tmpfs_ok(char *why, size_t whylen);

/*
 * testlib_expect_death - for a test that must abort (.signal = SIGABRT):
 * what it writes to stderr (the "coremta: BUG at ..." line) is kept out
 * of the run's output, and shown only when the test ends without dying,
 * which is when it fails and the text says why.
 */
void testlib_expect_death(void);

/*
 * testlib_stderr_capture - what the code under test writes to fd 2 from
 * now on goes to a file instead of the run's output (a line a test
 * provokes on purpose is not an error to a reader);
 * testlib_stderr_release gives fd 2 back and returns the text (free it).
 */
struct testlib_capture {
	FILE *file;
	int saved_fd;
};
void testlib_stderr_capture(struct testlib_capture *c);
char *testlib_stderr_release(struct testlib_capture *c);

/* testlib_dial - a TCP connection to 127.0.0.1:port (10 s receive timeout), or -1. */
int testlib_dial(int port);
/* testlib_dial_addr - the same to IPv4 addr:port. */
int testlib_dial_addr(const char *addr, int port);
/*
 * testlib_log_port - the port of the latest "listening addr=ADDR" line the
 * daemon logged (at a start or a reload), or -1.
 */
int testlib_log_port(const struct testlib_daemon *d, const char *addr);

/*
 * testlib_send - one message to the SMTP server on 127.0.0.1:port from
 * s@example.org to rcpt, with extra header lines (each ending in CRLF;
 * NULL: none); the reply code after the data, or -1.
 */
int testlib_send(int port, const char *rcpt, const char *headers);

/*
 * testlib_reserve_port - a port the kernel picks on addr (NULL:
 * 127.0.0.1), bound and not listening: connections to it are refused, as
 * to a receiver that is down, and nothing else can take it.  *fd holds
 * it: hand it to a peer (smtp_peer_opts.reserved_fd), or close it just
 * before starting a program that only takes a port number (smtp-sink,
 * bhm, Postfix, the daemon's http-mgmt-port), the one window left where
 * something else could bind it.  fd NULL: closed at once.
 */
int testlib_reserve_port(const char *addr, int *fd);

/* How long testlib_daemon_start waits for the daemon to be up (ms). */
#define TESTLIB_START_MS 20000

/*
 * testlib_daemon_start - write conf_text (with "@PORT@" replaced by 0 and
 * "@DIR@" by d->dir) to d->dir/coremta.conf, start coremta on it and wait
 * until it logs its listeners and that its configuration is loaded;
 * d->port and d->ports[] are then the ports it listens on.  d->dir is
 * created when NULL (reuse it to restart on the same spool: the ports
 * change).  Returns 0 or -1 (d->log says why).
 */
int testlib_daemon_start(struct testlib_daemon *d, const char *conf_text);
/* testlib_daemon_start_or_fail - the same, failing the test with the log. */
void testlib_daemon_start_or_fail(struct testlib_daemon *d, const char *conf_text);
/* testlib_daemon_stop - send sig, wait (up to 10 s, then SIGKILL). */
int testlib_daemon_stop(struct testlib_daemon *d, int sig);
/*
 * testlib_daemon_finish - stop with SIGTERM, expect a clean exit (status
 * 0: no sanitizer report), show the log when SHOW_LOG is set, clean up.
 */
void testlib_daemon_finish(struct testlib_daemon *d);
void testlib_daemon_cleanup(struct testlib_daemon *d);
/* testlib_read_file - whole file, "" when missing. */
char *testlib_read_file(const char *path);
/*
 * testlib_count_delivered - delivery log lines of the daemon (its stderr)
 * that say result=delivered and contain needle.
 */
size_t testlib_count_delivered(const struct testlib_daemon *d, const char *needle);
struct smtp_peer;
struct smtp_peer_rule;

/*
 * TESTLIB_CONF_RELAY - the head of a daemon config for the delivery
 * suites: listen on 127.0.0.1:@PORT@, spool in @DIR@, two shards on any
 * machine, and relay for 127.0.0.1 with source_extra (directive lines,
 * each ending in "\n") added to its <source>.  TESTLIB_CONF_HEAD: none.
 */
#define TESTLIB_CONF_RELAY(source_extra)             \
	"smtp-listener 127.0.0.1:@PORT@\n"          \
	"disk-queue @DIR@/spool\n"                  \
	"host-name mta.test.invalid\n"              \
	"shards 2\n"                                \
	"allow-shard-oversubscription yes\n"        \
	"<source 127.0.0.1>\n"                      \
	"    always-allow-relaying yes\n"           \
	source_extra                                \
	"</source>\n"
#define TESTLIB_CONF_HEAD TESTLIB_CONF_RELAY("")

/*
 * testlib_peer_on - testlib_peer_start on addr, any port, with the
 * extensions a modern receiver offers (PIPELINING, 8BITMIME,
 * ENHANCEDSTATUSCODES, CHUNKING), or fail the test.
 */
struct smtp_peer *testlib_peer_on(const char *addr, const struct smtp_peer_rule *rules,
				  size_t nrules);

/*
 * testlib_peer_start - a scripted receiver (tests/lib/smtp_peer.h) on
 * addr:port (0: any port) offering caps, or fail the test.
 */
struct smtp_peer *testlib_peer_start(const char *addr, int port, unsigned caps,
				     const struct smtp_peer_rule *rules, size_t nrules);

/*
 * testlib_every_line_stamped - each line of text starts with an ISO 8601
 * UTC stamp and a space, as the daemon's log writer puts them.
 */
bool testlib_every_line_stamped(const char *text);

/*
 * testlib_swaks - one message into the daemon with swaks, MAIL FROM from,
 * RCPT TO to, and one more header when header is not NULL.  Returns
 * swaks's exit status; *out (if out) gets its output, freed by the caller.
 */
int testlib_swaks(const struct testlib_daemon *d, const char *from, const char *to,
		  const char *header, char **out);

/* testlib_log_lines - lines of the daemon's log with a (and b, if given). */
size_t testlib_log_lines(const struct testlib_daemon *d, const char *a, const char *b);
/*
 * testlib_wait_until - poll holds(arg) until it is true (then true) or
 * timeout_ms passed (then false): how a test waits for something another
 * process or thread does, instead of sleeping and hoping.
 */
bool testlib_wait_until(bool (*holds)(void *arg), void *arg, int timeout_ms);
/*
 * testlib_stays - the other half: that something does NOT happen.  holds
 * (arg) is checked until ms passed; true when it held throughout, false
 * as soon as it does not (the test fails at once, not after the wait).
 */
bool testlib_stays(bool (*holds)(void *arg), void *arg, int ms);
/* testlib_peer_stays - the peer's accepted messages stay at n for ms. */
bool testlib_peer_stays(struct smtp_peer *p, size_t n, int ms);
/* testlib_log_stays - the daemon's lines with a (and b) stay at n for ms. */
bool testlib_log_stays(const struct testlib_daemon *d, const char *a, const char *b,
		       size_t n, int ms);
/* testlib_wait_file - until path holds needle n times (true), or timeout_ms passed. */
bool testlib_wait_file(const char *path, const char *needle, size_t n, int timeout_ms);
/* testlib_wait_log - until n such lines (true), or timeout_ms passed. */
bool testlib_wait_log(const struct testlib_daemon *d, const char *a, const char *b,
		      size_t n, int timeout_ms);


/*
 * testlib_http_url - one request (GET or POST) to url from local address
 * from (NULL: the kernel's choice) with X-API-Key key (NULL: none); the
 * body, and the status in *status (-1: no answer).  testlib_http: to
 * http://127.0.0.1:port<path>.
 */
char *testlib_http_url(const char *url, const char *method, const char *from,
		       const char *key, long *status);
char *testlib_http(int port, const char *method, const char *path, const char *from,
		   const char *key, long *status);
/* testlib_sum_metric - the sum of every sample of name (any labels) in text. */
double testlib_sum_metric(const char *text, const char *name);

#endif
