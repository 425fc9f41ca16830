/*
 * tests/lib/dnsmasq.c - start and stop a real dnsmasq for DNS tests
 * (dnsmasq.h).  Test threads only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

#include "tests/lib/dnsmasq.h"

#define READY_TIMEOUT_MS 5000
#define START_ATTEMPTS	 5	/* a free port can be taken before dnsmasq binds it */

const char *dnsmasq_path(void)
{
	static const char *const dirs[] = { "/usr/sbin", "/usr/bin", "/sbin", "/bin" };
	static char found[256];
	const char *env = getenv("COREMTA_DNSMASQ");

	if (env && *env)
		return access(env, X_OK) == 0 ? env : NULL;
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		snprintf(found, sizeof(found), "%s/dnsmasq", dirs[i]);
		if (access(found, X_OK) == 0)
			return found;
	}
	return NULL;
}

/* free_port - a port free for both UDP and TCP on 127.0.0.1 right now. */
static int free_port(void)
{
	for (int attempt = 0; attempt < 20; attempt++) {
		struct sockaddr_in sa = { .sin_family = AF_INET };
		socklen_t len = sizeof(sa);
		int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int port = -1;

		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (u >= 0 && t >= 0 &&
		    bind(u, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		    getsockname(u, (struct sockaddr *)&sa, &len) == 0 &&
		    bind(t, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			port = ntohs(sa.sin_port);
		if (u >= 0)
			close(u);
		if (t >= 0)
			close(t);
		if (port > 0)
			return port;
	}
	return -1;
}

/* answers - does something answer DNS on addr:port (any rcode)? */
static bool answers(int fd, const char *addr, int port)
{
	static const unsigned char query[] = {
		0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
		5, 'r', 'e', 'a', 'd', 'y', 7, 'i', 'n', 'v', 'a', 'l', 'i', 'd', 0,
		0, 1, 0, 1,
	};
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	unsigned char buf[512];

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return false;
	if (sendto(fd, query, sizeof(query), 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return false;
	if (poll(&pfd, 1, 50) <= 0)
		return false;
	return recv(fd, buf, sizeof(buf), 0) >= 12 && buf[0] == 0x12 && buf[1] == 0x34;
}

static void child_exec(const char *path, const char *addr, int port,
		       const char *const *opts, pid_t parent)
{
	const char *argv[64];
	char portarg[32], addrarg[64];
	size_t n = 0;
	int devnull;

	/* Die with the test process even if its teardown never runs. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);
	/*
	 * Criterion talks to its workers over pipes: an inherited end would
	 * keep a finished test waiting for EOF.
	 */
	devnull = open("/dev/null", O_RDWR);
	if (devnull >= 0 && !getenv("COREMTA_TEST_VERBOSE")) {
		dup2(devnull, 1);
		dup2(devnull, 2);
	}
	if (devnull >= 0)
		dup2(devnull, 0);
	for (int fd = 3; fd < 1024; fd++)
		close(fd);

	snprintf(portarg, sizeof(portarg), "--port=%d", port);
	argv[n++] = path;
	argv[n++] = "--keep-in-foreground";
	argv[n++] = "--conf-file=/dev/null";
	argv[n++] = "--no-resolv";
	argv[n++] = "--no-hosts";
	argv[n++] = "--pid-file";	/* no argument: no pid file */
	argv[n++] = "--log-facility=-";
	snprintf(addrarg, sizeof(addrarg), "--listen-address=%s", addr);
	argv[n++] = addrarg;
	argv[n++] = "--bind-interfaces";
	argv[n++] = portarg;
	if (geteuid() == 0) {
		/* Changing uid/gid would clear PR_SET_PDEATHSIG. */
		argv[n++] = "--user=root";
		argv[n++] = "--group=root";
	}
	for (size_t i = 0; opts && opts[i] && n < ARRAY_SIZE(argv) - 1; i++)
		argv[n++] = opts[i];
	argv[n] = NULL;
	execv(path, (char *const *)argv);
	_exit(127);
}

static int start_once(struct dnsmasq *d, const char *path, const char *addr,
		      int port, const char *const *opts)
{
	pid_t parent = getpid();
	uint64_t deadline;
	int fd, status;

	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0)
		child_exec(path, addr, port, opts, parent);
	d->port = port;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		dnsmasq_stop(d);
		return -errno;
	}
	deadline = mono_ms() + READY_TIMEOUT_MS;
	while (mono_ms() < deadline) {
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			/* Bad option or port taken: dnsmasq exits at once. */
			d->pid = 0;
			close(fd);
			return -EADDRINUSE;
		}
		if (answers(fd, addr, port)) {
			close(fd);
			return 0;
		}
	}
	close(fd);
	dnsmasq_stop(d);
	return -ETIMEDOUT;
}

int dnsmasq_start(struct dnsmasq *d, int port, const char *const *opts)
{
	return dnsmasq_start_at(d, "127.0.0.1", port, opts);
}

int dnsmasq_start_at(struct dnsmasq *d, const char *addr, int port,
		     const char *const *opts)
{
	const char *path = dnsmasq_path();
	int rc = -EADDRINUSE;

	d->pid = 0;
	d->port = 0;
	if (!path)
		return -ENOENT;
	for (int i = 0; i < START_ATTEMPTS && rc == -EADDRINUSE; i++) {
		int p = port ? port : free_port();

		if (p < 0)
			return -EADDRINUSE;
		rc = start_once(d, path, addr, p, opts);
		if (port && rc == -EADDRINUSE)
			usleep(100 * 1000);	/* our own previous one may still be closing */
	}
	return rc;
}

void dnsmasq_stop(struct dnsmasq *d)
{
	uint64_t deadline;
	int status;

	if (d->pid <= 0)
		return;
	kill(d->pid, SIGTERM);
	deadline = mono_ms() + 1000;
	while (waitpid(d->pid, &status, WNOHANG) == 0) {
		if (mono_ms() >= deadline) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &status, 0);
			break;
		}
		usleep(5 * 1000);
	}
	d->pid = 0;
}
