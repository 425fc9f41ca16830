/*
 * tests/lib/dnsmasq.h - a real dnsmasq serving test zones on
 * 127.0.0.1:<free port>, as a child process of the test.
 *
 * Test threads only.  dnsmasq runs in the foreground with no config file,
 * no /etc/hosts, no upstream servers and no pid file, plus the zone options
 * the test gives (--mx-host=..., --address=..., --local=/test/, ...).  It
 * dies with the test process (PR_SET_PDEATHSIG) even if teardown never
 * runs; dnsmasq_stop() kills it by PID and reaps it.
 */
#ifndef COREMTA_TESTS_DNSMASQ_H
#define COREMTA_TESTS_DNSMASQ_H

#include <stdbool.h>
#include <sys/types.h>

struct dnsmasq {
	pid_t pid;
	int port;
};

/* dnsmasq_path - the binary (COREMTA_DNSMASQ, /usr/sbin, PATH) or NULL. */
const char *dnsmasq_path(void);

/*
 * dnsmasq_start - start dnsmasq with opts (NULL-terminated) on port, or
 * on a free port if port is 0, and wait until it answers.  Returns 0 or
 * -errno (-ENOENT: no dnsmasq; -ETIMEDOUT: it never answered).
 */
int dnsmasq_start(struct dnsmasq *d, int port, const char *const *opts);

/*
 * dnsmasq_start_at - the same on another loopback address (127.0.0.x),
 * e.g. on port 53 for a tool that can only use the system resolver.
 */
int dnsmasq_start_at(struct dnsmasq *d, const char *addr, int port,
		     const char *const *opts);

/* dnsmasq_stop - SIGTERM, then SIGKILL after a second; reap.  Idempotent. */
void dnsmasq_stop(struct dnsmasq *d);

#endif
