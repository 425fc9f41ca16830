/*
 * fuzz_retry - libFuzzer target for the retry state files (shards/retry.c):
 * the input is a shard's retry-0.log.  Whatever it holds, the load must
 * not crash, and what it keeps must survive its own compaction: loading
 * the compacted retry-base.log again gives the same records (as a set of
 * lines, since the table's order follows its hash), and no skipped line.
 * Single-threaded, one directory (tmpfs when there is one) reused by
 * every run.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shards/retry.h"
#include "util/util.h"

#define NOW 1800000000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fdir[64];

static void remove_dir(void)
{
	char *p = xasprintf("%s/retry-base.log", fdir);
	unlink(p);
	free(p);
	p = xasprintf("%s/retry-0.log", fdir);
	unlink(p);
	free(p);
	rmdir(fdir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	snprintf(fdir, sizeof(fdir), "/dev/shm/fuzz-retry-XXXXXX");
	if (!mkdtemp(fdir)) {
		snprintf(fdir, sizeof(fdir), "/tmp/fuzz-retry-XXXXXX");
		if (!mkdtemp(fdir))
			abort();
	}
	atexit(remove_dir);
	return 0;
}

static int line_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* sorted_base - retry-base.log's lines, sorted, joined by '\n' */
static char *sorted_base(void)
{
	char *path = xasprintf("%s/retry-base.log", fdir);
	FILE *f = fopen(path, "r");
	char **lines = NULL, buf[2048];
	size_t n = 0;
	struct strbuf out = { 0 };

	free(path);
	if (!f)
		abort();
	while (fgets(buf, sizeof(buf), f)) {
		lines = xrealloc(lines, (n + 1) * sizeof(*lines));
		lines[n++] = xstrdup(buf);
	}
	fclose(f);
	if (n)
		qsort(lines, n, sizeof(*lines), line_cmp);
	for (size_t i = 0; i < n; i++) {
		sb_adds(&out, lines[i]);
		free(lines[i]);
	}
	free(lines);
	return sb_detach(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *path = xasprintf("%s/retry-0.log", fdir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	struct retry_table *t;
	char err[512];

	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
		abort();
	close(fd);
	free(path);
	if (retry_table_load(fdir, NOW, 30 * 86400, 0, &t, err, sizeof(err)) != 0)
		abort();
	size_t count = retry_table_count(t);
	retry_table_free(t);
	char *first = sorted_base();

	if (retry_table_load(fdir, NOW, 30 * 86400, 0, &t, err, sizeof(err)) != 0)
		abort();
	if (retry_table_count(t) != count || retry_table_skipped(t) != 0)
		abort();
	retry_table_free(t);
	char *second = sorted_base();
	if (strcmp(first, second) != 0)
		abort();
	free(first);
	free(second);
	return 0;
}
