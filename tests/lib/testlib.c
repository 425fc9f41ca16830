/*
 * tests/lib/testlib.c - helpers for the Criterion suites (testlib.h).
 * Test threads only.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

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
	pid_t pid = fork();
	BUG_ON(pid < 0);
	if (pid == 0) {
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
