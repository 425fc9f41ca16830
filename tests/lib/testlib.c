/*
 * tests/lib/testlib.c - helpers for the Criterion suites (testlib.h).
 * Test threads only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <curl/curl.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

void testlib_need(const char *path, const char *package)
{
	if (access(path, X_OK) == 0)
		return;
	if (getenv("CI"))
		cr_assert_fail("%s is not installed: apt-get install %s, or make deps", path,
			       package);
	cr_skip_test("%s is not installed (apt-get install %s, or make deps)", path, package);
}

const char *testlib_shared_dir(void)
{
	const char *env = getenv("COREMTA_SHARED");
	struct stat st;

	if (env && *env)
		return env;
	if (stat("../shared/reference", &st) == 0)
		return "../shared";
	return "../../shared";
}

const char *testlib_coremta_bin(void)
{
	const char *env = getenv("COREMTA_BIN");

	return env && *env ? env : "../build/coremta-san";
}

char *testlib_tmpdir(void)
{
	char *d = xstrdup("/tmp/coremta-test-XXXXXX");

	BUG_ON(!mkdtemp(d));
	return d;
}

static int rm_one(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void testlib_rmrf(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *testlib_write(const char *dir, const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", dir, name);
	FILE *f = fopen(path, "w");

	BUG_ON(!f);
	fputs(text, f);
	fclose(f);
	return path;
}

char *testlib_diag_text(const struct diag_list *dl)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < dl->count; i++) {
		diag_format(&dl->items[i], &sb);
		sb_addc(&sb, '\n');
	}
	return sb_detach(&sb);
}

struct cfg *testlib_load(const char *text, struct diag_list *dl)
{
	struct cfg *cfg = NULL;

	if (cfg_load_string("test.conf", text, NULL, NULL, &cfg, dl) < 0)
		return NULL;
	return cfg;
}

struct cfg *testlib_load_ok(const char *text)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load(text, &dl);
	char *t = testlib_diag_text(&dl);

	cr_assert_not_null(cfg, "config failed to load:\n%s", t);
	free(t);
	diag_free(&dl);
	return cfg;
}

static void drain(int fd, struct strbuf *sb)
{
	char buf[4096];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		sb_add(sb, buf, (size_t)n);
}

int testlib_run(const char *const *argv, int timeout_s, char **out, char **err)
{
	int po[2], pe[2];
	struct strbuf so = { 0 }, se = { 0 };

	BUG_ON(pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0);
	pid_t parent = getpid();
	pid_t pid = fork();
	BUG_ON(pid < 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(po[1], 1);
		dup2(pe[1], 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	fcntl(po[0], F_SETFL, O_NONBLOCK);
	fcntl(pe[0], F_SETFL, O_NONBLOCK);
	time_t deadline = time(NULL) + timeout_s;
	int open_fds = 2, status = -1;
	struct pollfd pfd[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
	while (open_fds > 0 && time(NULL) < deadline) {
		if (poll(pfd, 2, 200) < 0 && errno != EINTR)
			break;
		for (int i = 0; i < 2; i++) {
			if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP)))
				continue;
			char buf[4096];
			ssize_t n = read(pfd[i].fd, buf, sizeof(buf));
			if (n > 0) {
				sb_add(i ? &se : &so, buf, (size_t)n);
			} else if (n == 0) {
				close(pfd[i].fd);
				pfd[i].fd = -1;
				open_fds--;
			}
		}
	}
	if (open_fds > 0)
		kill(pid, SIGKILL);
	int ws;
	waitpid(pid, &ws, 0);
	for (int i = 0; i < 2; i++)
		if (pfd[i].fd >= 0) {
			drain(pfd[i].fd, i ? &se : &so);
			close(pfd[i].fd);
		}
	if (open_fds == 0 && WIFEXITED(ws))
		status = WEXITSTATUS(ws);
	*out = sb_detach(&so);
	*err = sb_detach(&se);
	return status;
}

int testlib_send(int port, const char *rcpt, const char *headers)
{
	int fd = testlib_dial(port);
	struct strbuf cmd = { 0 }, in = { 0 };
	char buf[4096];
	int code = -1;

	if (fd < 0)
		return -1;
	sb_printf(&cmd, "EHLO t\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<%s>\r\nDATA\r\n", rcpt);
	if (send(fd, cmd.buf, cmd.len, MSG_NOSIGNAL) < 0)
		goto out;
	while (!strstr(sb_str(&in), "354 ")) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			goto out;
		sb_add(&in, buf, (size_t)r);
	}
	sb_reset(&cmd);
	sb_printf(&cmd, "Subject: test\r\n%s\r\nbody\r\n.\r\nQUIT\r\n", headers ? headers : "");
	if (send(fd, cmd.buf, cmd.len, MSG_NOSIGNAL) < 0)
		goto out;
	size_t mark = in.len;
	while (!strstr(sb_str(&in) + mark, "221 ")) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		sb_add(&in, buf, (size_t)r);
	}
	code = in.len > mark ? atoi(sb_str(&in) + mark) : -1;
out:
	sb_free(&in);
	sb_free(&cmd);
	close(fd);
	return code;
}

int testlib_reserve_port(const char *addr, int *fd)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;

	BUG_ON(inet_pton(AF_INET, addr ? addr : "127.0.0.1", &a.sin_addr) != 1);
	/*
	 * As every listener here: the connections a peer accepts on it
	 * inherit it, so that a receiver started on the port again after
	 * this one stopped is not refused for their TIME_WAIT.
	 */
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	cr_assert(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 &&
		  getsockname(s, (struct sockaddr *)&a, &len) == 0,
		  "reserve a port on %s: %s", addr ? addr : "127.0.0.1", strerror(errno));
	if (fd)
		*fd = s;
	else
		close(s);
	return ntohs(a.sin_port);
}

char *testlib_replace_all(const char *text, const char *key, const char *val)
{
	struct strbuf sb = { 0 };
	const char *p;

	while (*key && (p = strstr(text, key))) {
		sb_add(&sb, text, (size_t)(p - text));
		sb_adds(&sb, val);
		text = p + strlen(key);
	}
	sb_adds(&sb, text);
	return sb_detach(&sb);
}

int testlib_dial_addr(const char *addr, int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { .tv_sec = 10 };

	BUG_ON(inet_pton(AF_INET, addr, &a.sin_addr) != 1);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

int testlib_dial(int port)
{
	return testlib_dial_addr("127.0.0.1", port);
}

int testlib_log_port(const struct testlib_daemon *d, const char *addr)
{
	char *text = testlib_read_file(d->log);
	char *key = xasprintf("event=listening addr=%s port=", addr);
	int port = -1;

	for (const char *p = text; (p = strstr(p, key)); p += strlen(key))
		port = atoi(p + strlen(key));
	free(key);
	free(text);
	return port;
}

/* private_tmpfs - in a new mount namespace, a tmpfs at dir/spool. */
static int private_tmpfs(const char *dir, const char *opts)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/spool", dir);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return -1;
	if (unshare(CLONE_NEWNS) < 0 ||
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
		return -1;
	return 0;
}

bool testlib_private_tmpfs_ok(char *why, size_t whylen)
{
	char *dir = testlib_tmpdir();
	int pipefd[2];
	int err = 0;

	BUG_ON(pipe(pipefd) < 0);
	pid_t pid = fork();
	BUG_ON(pid < 0);
	if (pid == 0) {
		int e = private_tmpfs(dir, "size=1m") < 0 ? errno : 0;
		ssize_t w = write(pipefd[1], &e, sizeof(e));
		(void)w;
		_exit(0);
	}
	close(pipefd[1]);
	if (read(pipefd[0], &err, sizeof(err)) != (ssize_t)sizeof(err))
		err = EIO;
	close(pipefd[0]);
	waitpid(pid, NULL, 0);
	testlib_rmrf(dir);
	free(dir);
	if (err)
		snprintf(why, whylen, "unshare(CLONE_NEWNS) + mount tmpfs: %s "
			 "(needs root or CAP_SYS_ADMIN)", strerror(err));
	return err == 0;
}

/* log_file_of - the path a config's log-file line names, or NULL. */
static char *log_file_of(const char *conf)
{
	for (const char *p = conf; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		p += strspn(p, " \t");
		if (strncmp(p, "log-file ", 9) == 0) {
			p += 9;
			p += strspn(p, " \t");
			return xstrndup(p, strcspn(p, " \t\r\n"));
		}
	}
	return NULL;
}

/* file_size - bytes in path now, 0 when it does not exist. */
static size_t file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

/*
 * started - the text the daemon logged since this start (from offset
 * on), once it logged that its configuration is loaded; else NULL.
 */
static char *started(const struct testlib_daemon *d, size_t offset)
{
	char *text = testlib_read_file(d->log);

	if (strlen(text) >= offset) {
		memmove(text, text + offset, strlen(text + offset) + 1);
		if (strstr(text, "event=listening addr=") && strstr(text, " loaded: "))
			return text;
	}
	free(text);
	return NULL;
}

/* learn_ports - d->ports[] from the "listening addr=A port=P" lines of text. */
static void learn_ports(struct testlib_daemon *d, const char *text)
{
	const char *p = text;

	d->nports = 0;
	while ((p = strstr(p, "event=listening addr=")) &&
	       d->nports < ARRAY_SIZE(d->ports)) {
		const char *port = strstr(p, " port=");
		if (!port)
			break;
		d->ports[d->nports++] = atoi(port + 6);
		p = port;
	}
	d->port = d->nports ? d->ports[0] : 0;
}

int testlib_daemon_start(struct testlib_daemon *d, const char *conf_text)
{
	if (!d->dir)
		d->dir = testlib_tmpdir();
	/* every listener written with @PORT@ binds a port the kernel picks */
	char *t1 = testlib_replace_all(conf_text, "@PORT@", "0");
	char sinkbuf[16];
	snprintf(sinkbuf, sizeof(sinkbuf), "%d", d->sink_port);
	char *t3 = testlib_replace_all(t1, "@SINK@", sinkbuf);
	char *t2 = testlib_replace_all(t3, "@DIR@", d->dir);
	free(t3);
	free(d->conf);
	d->conf = testlib_write(d->dir, "coremta.conf", t2);
	free(d->log);
	d->log = log_file_of(t2);
	free(t1);
	free(t2);
	free(d->err);
	d->err = xasprintf("%s/coremta.stderr", d->dir);
	if (!d->log)
		d->log = xstrdup(d->err);
	size_t offset = file_size(d->log);
	pid_t parent = getpid();
	pid_t pid = fork();
	BUG_ON(pid < 0);
	if (pid == 0) {
		/* a failed assertion ends the test early: the daemon goes with it */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		int fd = open(d->err, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(fd, 2);
		dup2(fd, 1);
		if (d->spool_tmpfs && private_tmpfs(d->dir, d->spool_tmpfs) < 0) {
			dprintf(2, "testlib: private tmpfs: %s\n", strerror(errno));
			_exit(127);
		}
		execl(testlib_coremta_bin(), "coremta", "-c", d->conf, (char *)NULL);
		_exit(127);
	}
	d->pid = pid;
	for (int waited = 0; waited < TESTLIB_START_MS; waited += 20) {
		char *text = started(d, offset);
		if (text) {
			learn_ports(d, text);
			free(text);
			return 0;
		}
		int ws;
		if (waitpid(pid, &ws, WNOHANG) == pid) {
			d->pid = 0;
			return -1;
		}
		usleep(20 * 1000);
	}
	return -1;
}

int testlib_daemon_stop(struct testlib_daemon *d, int sig)
{
	int ws = 0;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, sig);
	for (int i = 0; i < 200; i++) {
		if (waitpid(d->pid, &ws, WNOHANG) == d->pid) {
			d->pid = 0;
			return ws;
		}
		usleep(50 * 1000);
	}
	kill(d->pid, SIGKILL);
	waitpid(d->pid, &ws, 0);
	d->pid = 0;
	return -1;
}

void testlib_daemon_finish(struct testlib_daemon *d)
{
	int ws = testlib_daemon_stop(d, SIGTERM);
	char *log = testlib_read_file(d->log);

	/* a clean exit: no sanitizer report, nothing left hanging */
	cr_expect_eq(ws, 0, "the daemon exited with status %d: %s", ws, log);
	if (getenv("SHOW_LOG"))
		fprintf(stderr, "%s\n", log);
	free(log);
	testlib_daemon_cleanup(d);
}

void testlib_daemon_cleanup(struct testlib_daemon *d)
{
	if (d->pid > 0)
		testlib_daemon_stop(d, SIGKILL);
	if (d->dir)
		testlib_rmrf(d->dir);
	free(d->dir);
	free(d->conf);
	free(d->log);
	free(d->err);
	memset(d, 0, sizeof(*d));
}

char *testlib_read_file(const char *path)
{
	struct strbuf sb = { 0 };
	int fd = open(path, O_RDONLY);

	if (fd >= 0) {
		drain(fd, &sb);
		close(fd);
	}
	return sb_detach(&sb);
}

size_t testlib_count_delivered(const struct testlib_daemon *d, const char *needle)
{
	char *text = testlib_read_file(d->log);
	size_t n = 0;

	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
		if (strstr(line, "result=delivered") && strstr(line, needle))
			n++;
	free(text);
	return n;
}

bool testlib_every_line_stamped(const char *text)
{
	regex_t re;
	char *copy = xstrdup(text), *save = NULL;
	bool ok = true;

	BUG_ON(regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z ",
		       REG_EXTENDED | REG_NOSUB) != 0);
	for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		ok &= regexec(&re, l, 0, NULL, 0) == 0;
	regfree(&re);
	free(copy);
	return ok;
}

size_t testlib_log_lines(const struct testlib_daemon *d, const char *a, const char *b)
{
	char *text = testlib_read_file(d->log);
	char *save = NULL;
	size_t n = 0;

	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (strstr(line, a) && (!b || strstr(line, b)))
			n++;
	free(text);
	return n;
}

bool testlib_wait_until(bool (*holds)(void *arg), void *arg, int timeout_ms)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (holds(arg))
			return true;
		clock_gettime(CLOCK_MONOTONIC, &t);
		int64_t ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
		if (ms >= timeout_ms)
			return holds(arg);
		usleep(ms < 200 ? 5 * 1000 : 20 * 1000);
	}
}

bool testlib_stays(bool (*holds)(void *arg), void *arg, int ms)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (!holds(arg))
			return false;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= ms)
			return holds(arg);
		usleep(20 * 1000);
	}
}

struct peer_count {
	struct smtp_peer *p;
	size_t n;
};

static bool peer_at(void *arg)
{
	struct peer_count *c = arg;
	struct smtp_peer_stats st;

	smtp_peer_stats(c->p, &st);
	return st.messages == c->n;
}

bool testlib_peer_stays(struct smtp_peer *p, size_t n, int ms)
{
	struct peer_count c = { p, n };

	return testlib_stays(peer_at, &c, ms);
}

struct log_wait {
	const struct testlib_daemon *d;
	const char *a, *b;
	size_t n;
};

static bool log_has(void *arg)
{
	const struct log_wait *w = arg;

	return testlib_log_lines(w->d, w->a, w->b) >= w->n;
}

bool testlib_wait_log(const struct testlib_daemon *d, const char *a, const char *b,
		      size_t n, int timeout_ms)
{
	struct log_wait w = { d, a, b, n };

	return testlib_wait_until(log_has, &w, timeout_ms);
}

static bool log_at(void *arg)
{
	const struct log_wait *w = arg;

	return testlib_log_lines(w->d, w->a, w->b) == w->n;
}

bool testlib_log_stays(const struct testlib_daemon *d, const char *a, const char *b,
		       size_t n, int ms)
{
	struct log_wait w = { d, a, b, n };

	return testlib_stays(log_at, &w, ms);
}

struct file_wait {
	const char *path, *needle;
	size_t n;
};

static bool file_has(void *arg)
{
	const struct file_wait *w = arg;
	char *text = testlib_read_file(w->path);
	size_t n = 0;

	for (const char *p = text; (p = strstr(p, w->needle)); p++)
		n++;
	free(text);
	return n >= w->n;
}

bool testlib_wait_file(const char *path, const char *needle, size_t n, int timeout_ms)
{
	struct file_wait w = { path, needle, n };

	return testlib_wait_until(file_has, &w, timeout_ms);
}

void testlib_daemon_start_or_fail(struct testlib_daemon *d, const char *conf_text)
{
	if (testlib_daemon_start(d, conf_text) < 0) {
		char *log = d->log ? testlib_read_file(d->log) : xstrdup("");
		char *err = d->err && strcmp(d->err, d->log) ? testlib_read_file(d->err)
							      : xstrdup("");
		cr_assert_fail("coremta did not start:\n%s%s", log, err);
	}
}

struct smtp_peer *testlib_peer_start(const char *addr, int port, unsigned caps,
				     const struct smtp_peer_rule *rules, size_t nrules)
{
	char err[256];
	struct smtp_peer_opts o = {
		.addr = addr, .port = port, .caps = caps, .rules = rules, .nrules = nrules,
	};
	struct smtp_peer *p = smtp_peer_start(&o, err, sizeof(err));

	cr_assert_not_null(p, "receiver %s: %s", addr ? addr : "127.0.0.1", err);
	return p;
}

struct smtp_peer *testlib_peer_on(const char *addr, const struct smtp_peer_rule *rules,
				  size_t nrules)
{
	return testlib_peer_start(addr, 0, SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
				  SMTP_PEER_CAP_ENHANCEDSTATUSCODES | SMTP_PEER_CAP_CHUNKING,
				  rules, nrules);
}

static int death_saved_stderr = -1;
static FILE *death_capture;

/* show_death_capture - the test did not die: its stderr is the story */
static void show_death_capture(void)
{
	char buf[4096];
	size_t n;

	if (!death_capture || death_saved_stderr < 0)
		return;
	fflush(stderr);
	rewind(death_capture);
	while ((n = fread(buf, 1, sizeof(buf), death_capture)) > 0)
		if (write(death_saved_stderr, buf, n) < 0)
			break;
}

void testlib_expect_death(void)
{
	fflush(stderr);
	death_capture = tmpfile();
	if (!death_capture || (death_saved_stderr = dup(STDERR_FILENO)) < 0)
		return;	/* then the output is simply not hidden */
	dup2(fileno(death_capture), STDERR_FILENO);
	atexit(show_death_capture);
}

void testlib_stderr_capture(struct testlib_capture *c)
{
	fflush(stderr);
	c->file = tmpfile();
	c->saved_fd = dup(STDERR_FILENO);
	cr_assert(c->file && c->saved_fd >= 0, "capture stderr: %s", strerror(errno));
	dup2(fileno(c->file), STDERR_FILENO);
}

char *testlib_stderr_release(struct testlib_capture *c)
{
	struct strbuf sb = { 0 };
	char buf[4096];
	size_t n;

	fflush(stderr);
	dup2(c->saved_fd, STDERR_FILENO);
	close(c->saved_fd);
	rewind(c->file);
	while ((n = fread(buf, 1, sizeof(buf), c->file)) > 0)
		sb_add(&sb, buf, n);
	fclose(c->file);
	return sb_detach(&sb);
}

int testlib_swaks(const struct testlib_daemon *d, const char *from, const char *to,
		  const char *header, char **out)
{
	char server[64], *o = NULL, *err = NULL;

	snprintf(server, sizeof(server), "127.0.0.1:%d", d->port);
	const char *argv[] = { "/usr/bin/swaks", "--server", server, "--timeout", "20",
			       "--from", from, "--to", to,
			       header ? "--add-header" : NULL, header, NULL };
	int rc = testlib_run(argv, 60, &o, &err);
	if (out)
		*out = xasprintf("%s%s", o ? o : "", err ? err : "");
	free(o);
	free(err);
	return rc;
}

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
	sb_add(arg, data, size * n);
	return size * n;
}

char *testlib_http_url(const char *url, const char *method, const char *from,
		       const char *key, long *status)
{
	CURL *h = curl_easy_init();
	struct strbuf body = { 0 };
	struct curl_slist *hdr = NULL;

	cr_assert_not_null(h);
	curl_easy_setopt(h, CURLOPT_URL, url);
	/* https: the test certificate names localhost, not 127.0.0.1 */
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	if (strcmp(method, "POST") == 0)
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
	if (from)
		curl_easy_setopt(h, CURLOPT_INTERFACE, from);
	if (key) {
		char *k = xasprintf("X-API-Key: %s", key);
		hdr = curl_slist_append(hdr, k);
		free(k);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	}
	*status = -1;
	if (curl_easy_perform(h) == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
	sb_addc(&body, '\0');
	return sb_detach(&body);
}

char *testlib_http(int port, const char *method, const char *path, const char *from,
		   const char *key, long *status)
{
	char *url = xasprintf("http://127.0.0.1:%d%s", port, path);
	char *body = testlib_http_url(url, method, from, key, status);

	free(url);
	return body;
}

double testlib_sum_metric(const char *text, const char *name)
{
	double sum = 0;
	size_t n = strlen(name);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, name, n) != 0 || (p[n] != ' ' && p[n] != '{'))
			continue;
		const char *sp = strchr(p, ' ');
		if (p[n] == '{')
			sp = strchr(strchr(p, '}'), ' ');
		sum += strtod(sp + 1, NULL);
	}
	return sum;
}
