/*
 * test_acct.c - the accounting writer (services/acct.c): PowerMTA CSV read
 * back with Python's csv module (a parser that is not ours), columns and
 * record-fields, times, rotation, delete-after, move-to, pipe commands
 * that die or are down (replay, spill, persistence across a stop), and
 * producers on several threads.  Nothing may be lost or duplicated.
 *
 * Each test runs in its own process with its own mkdtemp directory.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config/config.h"
#include "util/util.h"

#include "services/acct.h"

static char tdir[64];
static void **garbage;		/* freed by teardown: LeakSanitizer runs */
static size_t ngarbage, garbage_cap;

static void *gc(void *p)
{
	if (ngarbage == garbage_cap) {
		garbage_cap = garbage_cap ? 2 * garbage_cap : 64;
		garbage = xrealloc(garbage, garbage_cap * sizeof(*garbage));
	}
	garbage[ngarbage++] = p;
	return p;
}

UTIL_PRINTF(1, 2)
static char *fmt(const char *f, ...)
{
	struct strbuf sb = { 0 };
	va_list ap;

	va_start(ap, f);
	sb_vprintf(&sb, f, ap);
	va_end(ap);
	return gc(sb_detach(&sb));
}

static int rm_one(const char *path, const struct stat *sb, int flag,
		  struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	snprintf(tdir, sizeof(tdir), "/tmp/acct-test-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir));
}

static void teardown(void)
{
	nftw(tdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	for (size_t i = 0; i < ngarbage; i++)
		free(garbage[i]);
	free(garbage);
	garbage = NULL;
	ngarbage = garbage_cap = 0;
}

/* One timeout for the suite (Criterion 2.4.1 leaks a timer otherwise). */
TestSuite(acct, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ------------------------------------------------------ */

static void on_err(void *arg, const char *text)
{
	if (getenv("ACCT_TEST_VERBOSE"))
		fprintf(stderr, "acct: %s\n", text);
}

static char *tpath(const char *name)
{
	return fmt("%s/%s", tdir, name);
}

static struct acct_writer *writer_try(const char *conf,
				      const struct acct_params *pp,
				      unsigned nprod, char *err, size_t errlen,
				      int *rcp)
{
	struct diag_list dl = { 0 };
	struct cfg_load_opts opts = { 0 };
	struct cfg *cfg = NULL;
	struct acct_params p = pp ? *pp : (struct acct_params){ 0 };
	struct acct_writer *w = NULL;
	int rc = cfg_load_string("acct.conf", conf, tdir, &opts, &cfg, &dl);

	cr_assert_eq(rc, 0, "config does not load:\n%s", conf);
	diag_free(&dl);
	p.on_error = on_err;
	*rcp = acct_writer_new(cfg, &p, nprod, &w, err, errlen);
	/* the writer must not keep pointers into the configuration */
	cfg_free(cfg);
	return w;
}

static struct acct_writer *writer(const char *conf,
				  const struct acct_params *pp, unsigned nprod)
{
	char err[512] = "";
	int rc;
	struct acct_writer *w = writer_try(conf, pp, nprod, err, sizeof(err), &rc);

	cr_assert_eq(rc, 0, "acct_writer_new: %d %s", rc, err);
	return w;
}

static void finish(struct acct_writer *w)
{
	acct_writer_stop(w);
	acct_writer_free(w);
}

static struct acct_record base_record(enum acct_type ty)
{
	struct acct_record r = {
		.type = ty,
		.time_logged = 1700000000,
		.time_queued = 1700000000 - 90,
		.orig = "bounces@sender.example",
		.orcpt = "rfc822;orig@example.com",
		.src_type = "smtp",
		.src_mta = "app1.sender.example (10.0.0.5)",
		.dlv_type = "smtp",
		.dlv_source_ip = "192.0.2.10",
		.dlv_destination_ip = "198.51.100.7",
		.dlv_esmtp_available = "PIPELINING,8BITMIME,SIZE,STARTTLS",
		.dlv_size = 1234,
		.vmta = "vmta1",
		.job_id = "job-42",
		.env_id = "env-1",
		.queue = "example.com/vmta1",
		.vmta_pool = "pool1",
		.dlv_tls_protocol = "TLSv1.3",
		.dlv_tls_cipher = "TLS_AES_256_GCM_SHA384",
		.dsn_mta = "mx.example.com (198.51.100.7)",
	};

	switch (ty) {
	case ACCT_DELIVERY:
		r.dsn_action = "relayed";
		r.dsn_status = "2.0.0";
		r.dsn_diag = "smtp;250 2.0.0 Ok: queued as 4F1";
		r.bounce_cat = "success";
		break;
	case ACCT_BOUNCE:
		r.dsn_action = "failed";
		r.dsn_status = "5.1.1";
		r.dsn_diag = "smtp;550 5.1.1 user unknown";
		r.bounce_cat = "bad-mailbox";
		break;
	case ACCT_TRANSIENT:
	case ACCT_TRANSIENT_QUEUE:
		r.dsn_action = "delayed";
		r.dsn_status = "4.4.1";
		r.dsn_diag = "smtp;421 4.4.1 try later";
		r.bounce_cat = "no-answer-from-host";
		break;
	case ACCT_RECEIPT:
		r.rcv_source_ip = "10.0.0.5";
		r.rcv_destination_ip = "10.0.0.1";
		r.dsn_mta = NULL;
		break;
	case ACCT_REJECT:
		cr_assert_fail("reject lines: reject_record()");
	case ACCT_REMOTE_BOUNCE:
	case ACCT_FEEDBACK:
	case ACCT_REMOTE_STATUS:
		cr_assert_fail("rb, rs and f: built by their test");
	}
	return r;
}

static void emit(struct acct_writer *w, unsigned prod, enum acct_type ty, int i)
{
	char rcpt[64];
	struct acct_record r = base_record(ty);

	snprintf(rcpt, sizeof(rcpt), "user%d@example.com", i);
	r.rcpt = rcpt;
	cr_assert_eq(acct_emit(w, prod, &r), 0);
}

/* CSV read back by Python's csv module; fields split on control chars. */
struct csv_row {
	size_t n;
	char **f;
};

struct csv_file {
	size_t nrows;
	struct csv_row *rows;
};

static const char py_dump[] =
	"import csv, sys\n"
	"out = []\n"
	"for p in sys.argv[1:]:\n"
	"    with open(p, newline='', encoding='utf-8') as f:\n"
	"        rows = list(csv.reader(f, strict=True))\n"
	"    out.append('\\x1e'.join('\\x1f'.join(r) for r in rows))\n"
	"sys.stdout.write('\\x1d'.join(out))\n";

/* grow - make room for one more element, doubling. */
static void *grow(void *arr, size_t n, size_t *cap, size_t size)
{
	if (n < *cap)
		return arr;
	*cap = *cap ? *cap * 2 : 16;
	return xrealloc(arr, *cap * size);
}

/* csv_read_many - parse files with one Python run; freed by teardown. */
static struct csv_file *csv_read_many(char *const *paths, size_t npaths)
{
	struct csv_file *files = gc(xcalloc(npaths ? npaths : 1, sizeof(*files)));
	struct strbuf sb = { 0 };
	char **argv = gc(xcalloc(npaths + 4, sizeof(*argv)));
	int p[2], status;
	char buf[4096];
	ssize_t n;
	pid_t pid;

	argv[0] = (char *)"python3";
	argv[1] = (char *)"-c";
	argv[2] = (char *)py_dump;
	for (size_t i = 0; i < npaths; i++)
		argv[3 + i] = paths[i];
	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(p[1], 1);
		close(p[0]);
		close(p[1]);
		execvp("python3", argv);
		_exit(127);
	}
	close(p[1]);
	while ((n = read(p[0], buf, sizeof(buf))) > 0)
		sb_add(&sb, buf, (size_t)n);
	close(p[0]);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "python csv could not parse %s...", npaths ? paths[0] : "");

	char *s = gc(sb_detach(&sb)), *fe;

	/* n separators, n + 1 items; an empty file has no rows */
	for (size_t fi = 0; fi < npaths; fi++, s = fe + 1) {
		struct csv_file *cf = &files[fi];
		size_t rcap = 0;

		fe = strchr(s, '\x1d');
		cr_assert((fe != NULL) == (fi + 1 < npaths));
		if (!fe)
			fe = s + strlen(s);
		*fe = '\0';
		for (char *row = *s ? s : NULL, *re; row; row = re ? re + 1 : NULL) {
			struct csv_row r = { 0 };
			size_t fcap = 0;

			if ((re = strchr(row, '\x1e')))
				*re = '\0';
			for (char *f = row, *ffe; f; f = ffe ? ffe + 1 : NULL) {
				if ((ffe = strchr(f, '\x1f')))
					*ffe = '\0';
				r.f = grow(r.f, r.n, &fcap, sizeof(*r.f));
				r.f[r.n++] = f;
			}
			cf->rows = grow(cf->rows, cf->nrows, &rcap, sizeof(*cf->rows));
			cf->rows[cf->nrows++] = r;
			gc(r.f);
		}
		gc(cf->rows);
	}
	return files;
}

static struct csv_file csv_read(const char *path)
{
	char *paths[] = { (char *)path };

	return csv_read_many(paths, 1)[0];
}

static int col(const struct csv_file *cf, const char *name)
{
	cr_assert_gt(cf->nrows, 0);
	for (size_t i = 0; i < cf->rows[0].n; i++)
		if (!strcmp(cf->rows[0].f[i], name))
			return (int)i;
	return -1;
}

static const char *cell(const struct csv_file *cf, size_t row, const char *name)
{
	int c = col(cf, name);

	cr_assert_geq(c, 0, "no column %s", name);
	cr_assert_lt(row, cf->nrows);
	cr_assert_eq(cf->rows[row].n, cf->rows[0].n, "row %zu has %zu fields, header %zu",
		     row, cf->rows[row].n, cf->rows[0].n);
	return cf->rows[row].f[c];
}

static char *header_of(const struct csv_file *cf)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < cf->rows[0].n; i++) {
		if (i)
			sb_addc(&sb, ',');
		sb_adds(&sb, cf->rows[0].f[i]);
	}
	return gc(sb_detach(&sb));
}

static char *slurp(const char *path, size_t *len)
{
	struct strbuf sb = { 0 };
	char buf[4096];
	ssize_t n;
	int fd = open(path, O_RDONLY);

	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		sb_add(&sb, buf, (size_t)n);
	close(fd);
	if (len)
		*len = sb.len;
	return sb_detach(&sb);
}

/* expect_crlf - every line of a file without quoted newlines ends in CRLF. */
static void expect_crlf(const char *path)
{
	size_t len;
	char *s = slurp(path, &len);

	cr_assert_gt(len, 2);
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\n')
			cr_assert(i > 0 && s[i - 1] == '\r', "bare LF at %zu of %s", i, path);
	cr_expect(s[len - 2] == '\r' && s[len - 1] == '\n');
	free(s);
}

static const char *const default_header =
	"type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,"
	"dsnDiag,dsnMta,bounceCat,srcType,srcMta,dlvType,dlvSourceIp,"
	"dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,"
	"vmtaPool,dlvTlsProtocol,dlvTlsCipher";

/*
 * Records seen in files: every data row's rcpt (rows equal to the header
 * skipped, as a restarted pipe command gets the header again).
 */
struct seen {
	size_t n, cap;
	int *ids;
	size_t files;
};

static void seen_add_files(struct seen *s, char *const *paths, size_t n,
			   const char *header)
{
	struct csv_file *cfs = csv_read_many(paths, n);

	for (size_t i = 0; i < n; i++) {
		struct csv_file *cf = &cfs[i];

		cr_assert_gt(cf->nrows, 0, "%s is empty", paths[i]);
		cr_assert_str_eq(header_of(cf), header, "%s: header", paths[i]);
		s->files++;
		for (size_t r = 1; r < cf->nrows; r++) {
			int id;

			if (!strcmp(cf->rows[r].f[0], "type"))
				continue;
			cr_assert_eq(sscanf(cell(cf, r, "rcpt"), "user%d@", &id), 1);
			s->ids = grow(s->ids, s->n, &s->cap, sizeof(*s->ids));
			s->ids[s->n++] = id;
		}
	}
}

static void seen_add_file(struct seen *s, const char *path, const char *header)
{
	char *paths[] = { (char *)path };

	seen_add_files(s, paths, 1, header);
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* expect_exactly - ids 0..n-1, each once. */
static void expect_exactly(struct seen *s, int n)
{
	gc(s->ids);
	qsort(s->ids, s->n, sizeof(*s->ids), cmp_int);
	for (size_t i = 0; i < s->n; i++)
		cr_assert_eq(s->ids[i], (int)i, "record %zu: got id %d (dup or gap; %zu records)",
			     i, s->ids[i], s->n);
	cr_assert_eq(s->n, (size_t)n, "records: %zu, expected %d", s->n, n);
}

/* Data lines in a file of single-line records (header lines excluded). */
static int data_lines(const char *path)
{
	size_t len;
	int n = 0;
	char *s;

	if (access(path, F_OK) < 0)
		return 0;
	s = slurp(path, &len);
	for (char *l = s; l < s + len;) {
		char *e = memchr(l, '\n', (size_t)(s + len - l));

		if (!e)
			break;
		if (strncmp(l, "type,", 5))
			n++;
		l = e + 1;
	}
	free(s);
	return n;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void wait_lines(const char *path, int n, int secs)
{
	for (int i = 0; i < secs * 20 && data_lines(path) < n; i++)
		sleep_ms(50);
	cr_assert_eq(data_lines(path), n, "%s: %d lines, expected %d", path,
		     data_lines(path), n);
}

static void write_script(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
	cr_assert_eq(chmod(path, 0755), 0);
}

/* ---- format ------------------------------------------------------- */

Test(acct, every_type_default_columns)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records d,b,t,tq,r\n</acct-file>\n", file);
	struct acct_writer *w;
	char *expect_hdr = fmt("%s,rcvSourceIp,rcvDestinationIp", default_header);

	setenv("TZ", "UTC", 1);
	tzset();
	w = writer(conf, NULL, 1);
	emit(w, 0, ACCT_DELIVERY, 0);
	emit(w, 0, ACCT_BOUNCE, 1);
	emit(w, 0, ACCT_TRANSIENT, 2);
	emit(w, 0, ACCT_TRANSIENT_QUEUE, 3);
	emit(w, 0, ACCT_RECEIPT, 4);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 6);
	cr_expect_str_eq(header_of(&cf), expect_hdr);
	cr_expect_str_eq(cell(&cf, 1, "type"), "d");
	cr_expect_str_eq(cell(&cf, 1, "timeLogged"), "2023-11-14 22:13:20+0000");
	cr_expect_str_eq(cell(&cf, 1, "timeQueued"), "2023-11-14 22:11:50+0000");
	cr_expect_str_eq(cell(&cf, 1, "orig"), "bounces@sender.example");
	cr_expect_str_eq(cell(&cf, 1, "rcpt"), "user0@example.com");
	cr_expect_str_eq(cell(&cf, 1, "orcpt"), "rfc822;orig@example.com");
	cr_expect_str_eq(cell(&cf, 1, "dsnAction"), "relayed");
	cr_expect_str_eq(cell(&cf, 1, "dsnStatus"), "2.0.0 (success)");
	cr_expect_str_eq(cell(&cf, 1, "dsnDiag"), "smtp;250 2.0.0 Ok: queued as 4F1");
	cr_expect_str_eq(cell(&cf, 1, "dsnMta"), "mx.example.com (198.51.100.7)");
	cr_expect_str_eq(cell(&cf, 1, "bounceCat"), "success");
	cr_expect_str_eq(cell(&cf, 1, "srcType"), "smtp");
	cr_expect_str_eq(cell(&cf, 1, "dlvEsmtpAvailable"),
			 "PIPELINING,8BITMIME,SIZE,STARTTLS");
	cr_expect_str_eq(cell(&cf, 1, "dlvSize"), "1234");
	cr_expect_str_eq(cell(&cf, 1, "queue"), "example.com/vmta1");
	cr_expect_str_eq(cell(&cf, 1, "vmtaPool"), "pool1");
	cr_expect_str_eq(cell(&cf, 1, "dlvTlsCipher"), "TLS_AES_256_GCM_SHA384");
	cr_expect_str_eq(cell(&cf, 1, "rcvSourceIp"), "");	/* not a d column */

	cr_expect_str_eq(cell(&cf, 2, "type"), "b");
	cr_expect_str_eq(cell(&cf, 2, "dsnStatus"), "5.1.1 (bad destination mailbox address)");
	cr_expect_str_eq(cell(&cf, 2, "bounceCat"), "bad-mailbox");
	cr_expect_str_eq(cell(&cf, 3, "type"), "t");
	cr_expect_str_eq(cell(&cf, 3, "dsnAction"), "delayed");

	/* tq: queue-level, so no recipient columns */
	cr_expect_str_eq(cell(&cf, 4, "type"), "tq");
	cr_expect_str_eq(cell(&cf, 4, "rcpt"), "");
	cr_expect_str_eq(cell(&cf, 4, "orig"), "");
	cr_expect_str_eq(cell(&cf, 4, "timeQueued"), "");
	cr_expect_str_eq(cell(&cf, 4, "queue"), "example.com/vmta1");
	cr_expect_str_eq(cell(&cf, 4, "dsnStatus"), "4.4.1 (no answer from host)");
	cr_expect_str_eq(cell(&cf, 4, "dlvSourceIp"), "192.0.2.10");

	cr_expect_str_eq(cell(&cf, 5, "type"), "r");
	cr_expect_str_eq(cell(&cf, 5, "rcvSourceIp"), "10.0.0.5");
	cr_expect_str_eq(cell(&cf, 5, "rcvDestinationIp"), "10.0.0.1");
	cr_expect_str_eq(cell(&cf, 5, "srcMta"), "app1.sender.example (10.0.0.5)");
	expect_crlf(file);
}

Test(acct, quoting_commas_quotes_newlines)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct acct_record r = base_record(ACCT_BOUNCE);
	const char *diag = "smtp;550-5.1.1 <a@b>: \"no\", such user\r\n550 5.1.1 second line\nthird";
	size_t len;

	r.rcpt = "user0@example.com";
	r.dsn_diag = diag;
	r.orig = "a,b@example.com";
	r.dsn_status = "5.7.1";		/* its text has a comma */
	cr_assert_eq(acct_emit(w, 0, &r), 0);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 2);
	cr_expect_str_eq(cell(&cf, 1, "dsnDiag"), diag);
	cr_expect_str_eq(cell(&cf, 1, "orig"), "a,b@example.com");
	cr_expect_str_eq(cell(&cf, 1, "dsnStatus"),
			 "5.7.1 (delivery not authorized, message refused)");
	char *raw = gc(slurp(file, &len));

	cr_expect_not_null(strstr(raw, ",\"smtp;550-5.1.1 <a@b>: \"\"no\"\", such user\r\n550"));
	cr_expect_not_null(strstr(raw, ",\"a,b@example.com\","));
	cr_expect(len > 2 && raw[len - 2] == '\r' && raw[len - 1] == '\n');
	cr_expect_eq(strncmp(raw, "type,timeLogged,", 16), 0);
}

Test(acct, records_filter)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records d\n sync yes\n</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);

	for (int ty = ACCT_DELIVERY; ty <= ACCT_RECEIPT; ty++)
		emit(w, 0, (enum acct_type)ty, ty);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 2);
	cr_expect_str_eq(header_of(&cf), default_header);
	cr_expect_str_eq(cell(&cf, 1, "type"), "d");
	expect_crlf(file);
}

Test(acct, default_records_are_d_and_b)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct acct_stats st;

	for (int ty = ACCT_DELIVERY; ty <= ACCT_RECEIPT; ty++)
		emit(w, 0, (enum acct_type)ty, ty);
	cr_assert_eq(acct_writer_start(w), 0);
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);
	cr_expect_eq(st.records, 2, "t, tq and r are not even copied");

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 3);
	cr_expect_str_eq(cell(&cf, 1, "type"), "d");
	cr_expect_str_eq(cell(&cf, 2, "type"), "b");
}

Test(acct, record_fields_select_union_and_headers)
{
	char *file = tpath("acct.csv");
	char *donly = tpath("donly.csv");
	char *conf = fmt(
		"<acct-file %s>\n"
		" records d,b\n"
		" record-fields d *,!orcpt,header_Message-Id,totalSecondsQueued,userString\n"
		" user-string hello, world\n"
		"</acct-file>\n"
		"<acct-file %s>\n"
		" records d\n"
		" record-fields d type,timeLogged,rcpt,header_X-Job,!timeLogged\n"
		"</acct-file>\n", file, donly);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct acct_header_field hdrs[] = {
		{ "message-id", "<id1@x>" },
		{ "X-JOB", "newsletter \"7\"" },
	};
	struct acct_record r = base_record(ACCT_DELIVERY);

	r.rcpt = "user0@example.com";
	r.headers = hdrs;
	r.header_count = 2;
	cr_assert_eq(acct_emit(w, 0, &r), 0);
	r.type = ACCT_BOUNCE;
	r.dsn_status = "5.2.2";
	r.rcpt = "user1@example.com";
	cr_assert_eq(acct_emit(w, 0, &r), 0);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);
	char *expect = fmt("%s,totalSecondsQueued,userString,header_Message-Id",
				 default_header);

	cr_assert_eq(cf.nrows, 3);
	cr_expect_str_eq(header_of(&cf), expect, "orcpt stays: b records have it");
	cr_expect_str_eq(cell(&cf, 1, "orcpt"), "");
	cr_expect_str_eq(cell(&cf, 1, "header_Message-Id"), "<id1@x>");
	cr_expect_str_eq(cell(&cf, 1, "totalSecondsQueued"), "90");
	cr_expect_str_eq(cell(&cf, 1, "userString"), "hello, world");
	cr_expect_str_eq(cell(&cf, 2, "type"), "b");
	cr_expect_str_eq(cell(&cf, 2, "orcpt"), "rfc822;orig@example.com");
	cr_expect_str_eq(cell(&cf, 2, "header_Message-Id"), "");
	cr_expect_str_eq(cell(&cf, 2, "totalSecondsQueued"), "");
	cr_expect_str_eq(cell(&cf, 2, "dsnStatus"), "5.2.2 (mailbox full)");

	struct csv_file d = csv_read(donly);

	cr_assert_eq(d.nrows, 2);
	cr_expect_str_eq(header_of(&d), "type,rcpt,header_X-Job");
	cr_expect_str_eq(cell(&d, 1, "rcpt"), "user0@example.com");
	cr_expect_str_eq(cell(&d, 1, "header_X-Job"), "newsletter \"7\"");
}

Test(acct, unknown_field_is_an_error)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n record-fields d *,bogusField\n</acct-file>\n",
			       file);
	char err[512] = "";
	int rc;
	struct acct_writer *w = writer_try(conf, NULL, 1, err, sizeof(err), &rc);

	cr_expect_eq(rc, -EINVAL);
	cr_expect_null(w);
	cr_expect_not_null(strstr(err, "bogusField"), "%s", err);
	cr_expect_not_null(strstr(err, "acct.conf:1"), "%s", err);	/* the block */
}

Test(acct, iso_times_no_writes_time_t)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n iso-times no\n</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);

	emit(w, 0, ACCT_DELIVERY, 0);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 2);
	cr_expect_str_eq(cell(&cf, 1, "timeLogged"), "1700000000");
	cr_expect_str_eq(cell(&cf, 1, "timeQueued"), "1699999910");
}

Test(acct, status_texts)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "2.0.0", "2.0.0 (success)" },
		{ "2.1.5", "2.1.5 (destination address valid)" },
		{ "5.0.0", "5.0.0 (undefined status)" },
		{ "4.4.7", "4.4.7 (delivery time expired)" },
		{ "5.7.26", "5.7.26 (other or undefined security status)" },
		{ "4.9.9", "4.9.9 (undefined status)" },
		{ "5.1.1 (bad destination mailbox address)",
		  "5.1.1 (bad destination mailbox address)" },
		{ "weird", "weird" },
	};
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records d\n record-fields d rcpt,dsnStatus\n</acct-file>\n",
			       file);
	struct acct_writer *w = writer(conf, NULL, 1);

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct acct_record r = { .type = ACCT_DELIVERY, .dsn_status = cases[i].in };

		cr_assert_eq(acct_emit(w, 0, &r), 0);
	}
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 1 + ARRAY_SIZE(cases));
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		cr_expect_str_eq(cell(&cf, i + 1, "dsnStatus"), cases[i].out);
}

/* ---- files -------------------------------------------------------- */

static bool dated(const char *name, const char *stem, const char *ext)
{
	int y, m, d, n, end = 0;
	char fmt[64];

	snprintf(fmt, sizeof(fmt), "%s-%%4d-%%2d-%%2d-%%4d%s%%n", stem, ext);
	return sscanf(name, fmt, &y, &m, &d, &n, &end) == 4 &&
	       (size_t)end == strlen(name);
}

/* list_dated - STEM-YYYY-MM-DD-NNNN.EXT files in dir, as full paths. */
static size_t list_dated(const char *dir, const char *stem, const char *ext,
			 char ***out)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0;

	cr_assert_not_null(d);
	*out = NULL;
	while ((de = readdir(d))) {
		if (!dated(de->d_name, stem, ext))
			continue;
		*out = xrealloc(*out, (n + 1) * sizeof(**out));
		(*out)[n++] = fmt("%s/%s", dir, de->d_name);
	}
	closedir(d);
	gc(*out);
	return n;
}

Test(acct, max_size_rotation_keeps_every_record_once)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records d\n max-size 16k\n</acct-file>\n",
			       file);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct seen s = { 0 };
	struct acct_stats st;
	char **files;
	size_t n;

	for (int i = 0; i < 300; i++)		/* some before the start */
		emit(w, 0, ACCT_DELIVERY, i);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 300; i < 1000; i++) {
		emit(w, 0, ACCT_DELIVERY, i);
		if (i % 100 == 0)
			sleep_ms(5);
	}
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);

	n = list_dated(tdir, "acct", ".csv", &files);
	cr_expect_gt(n, 10, "%zu rotated files", n);
	cr_expect_eq(st.rotations, n);
	for (size_t i = 0; i < n; i++) {
		struct stat sb;

		cr_assert_eq(stat(files[i], &sb), 0);
		cr_expect_leq(sb.st_size, 16384, "%s: %lld bytes", files[i],
			      (long long)sb.st_size);
		expect_crlf(files[i]);
	}
	seen_add_files(&s, files, n, default_header);
	seen_add_file(&s, file, default_header);
	expect_exactly(&s, 1000);
	cr_expect_eq(st.errors, 0);
}

Test(acct, delete_after_removes_only_old_rotated_files)
{
	static const struct {
		const char *name;
		int age_hours;
		bool gone;
	} files[] = {
		{ "acct-2020-01-01-0000.csv", 240, true },
		{ "acct-2020-01-01-0001.csv", 30, true },
		{ "acct-2020-01-02-0000.csv", 2, false },	/* too young */
		{ "other-2020-01-01-0000.csv", 240, false },	/* not ours */
		{ "acct-2020-01-01.csv", 240, false },
		{ "acct.csv.bak", 240, false },
	};
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n delete-after 1d\n</acct-file>\n", file);
	struct acct_writer *w;
	struct acct_stats st;

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char *p = tpath(files[i].name);
		struct timeval tv[2];
		int fd = open(p, O_WRONLY | O_CREAT, 0644);

		cr_assert_geq(fd, 0);
		close(fd);
		gettimeofday(&tv[0], NULL);
		tv[0].tv_sec -= files[i].age_hours * 3600;
		tv[1] = tv[0];
		cr_assert_eq(utimes(p, tv), 0);
	}
	w = writer(conf, NULL, 1);
	acct_writer_stats(w, &st);
	acct_writer_free(w);
	cr_expect_eq(st.deleted_files, 2);
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char *p = tpath(files[i].name);

		cr_expect_eq(access(p, F_OK) < 0, files[i].gone, "%s", files[i].name);
	}
}

Test(acct, move_interval_moves_finished_files)
{
	char *file = tpath("acct.csv");
	char *moved = tpath("moved");
	char *conf = fmt("<acct-file %s>\n records d\n move-to %s\n move-interval 1s\n</acct-file>\n",
			       file, moved);
	struct acct_writer *w;
	struct seen s = { 0 };
	char **files;
	size_t n = 0;

	cr_assert_eq(mkdir(moved, 0755), 0);
	w = writer(conf, NULL, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 10; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	for (int i = 0; i < 100 && (n = list_dated(moved, "acct", ".csv", &files)) == 0; i++)
		sleep_ms(50);
	cr_assert_gt(n, 0, "nothing moved");
	for (int i = 10; i < 20; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	finish(w);

	n = list_dated(moved, "acct", ".csv", &files);
	seen_add_files(&s, files, n, default_header);
	seen_add_file(&s, file, default_header);
	expect_exactly(&s, 20);
	cr_expect_eq(list_dated(tdir, "acct", ".csv", &files), 0, "moved, not left");
}

Test(acct, other_header_is_rotated_away_same_header_appended)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records d\n</acct-file>\n", file);
	struct acct_writer *w;
	struct seen s = { 0 };
	char **files;
	FILE *f = fopen(file, "w");

	cr_assert_not_null(f);
	fputs("type,rcpt\r\nd,old@example.com\r\n", f);
	fclose(f);

	w = writer(conf, NULL, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	emit(w, 0, ACCT_DELIVERY, 0);
	finish(w);
	cr_assert_eq(list_dated(tdir, "acct", ".csv", &files), 1);
	char *old = gc(slurp(files[0], NULL));

	cr_expect_str_eq(old, "type,rcpt\r\nd,old@example.com\r\n");

	/* a restart with the same columns appends, without a second header */
	w = writer(conf, NULL, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	emit(w, 0, ACCT_DELIVERY, 1);
	finish(w);
	seen_add_file(&s, file, default_header);
	expect_exactly(&s, 2);
	cr_expect_eq(data_lines(file), 2);
}

Test(acct, file_moved_away_by_logrotate_is_recreated)
{
	char *file = tpath("acct.csv"), *old = tpath("acct.csv.1");
	char *conf = fmt("<acct-file %s>\n records d\n</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct seen s = { 0 };

	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 5; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	for (int i = 0; i < 100 && data_lines(file) < 5; i++)
		sleep_ms(20);
	cr_assert_eq(rename(file, old), 0);
	for (int i = 0; i < 100 && access(file, F_OK) < 0; i++)
		sleep_ms(20);
	for (int i = 5; i < 10; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	finish(w);
	cr_expect_eq(data_lines(old), 5);
	cr_expect_eq(data_lines(file), 5);
	seen_add_file(&s, old, default_header);
	seen_add_file(&s, file, default_header);
	expect_exactly(&s, 10);
}

Test(acct, file_modes)
{
	char *a = tpath("a.csv"), *b = tpath("b.csv");
	char *conf = fmt("<acct-file %s>\n world-readable yes\n</acct-file>\n"
			       "<acct-file %s>\n</acct-file>\n", a, b);
	struct stat sa, sb;

	umask(077);
	acct_writer_free(writer(conf, NULL, 1));
	cr_assert_eq(stat(a, &sa), 0);
	cr_assert_eq(stat(b, &sb), 0);
	cr_expect_eq(sa.st_mode & 0777, 0644);
	cr_expect_eq(sb.st_mode & 0777, 0640);
	cr_expect_eq(data_lines(a), 0);
	cr_expect_eq(strncmp(gc(slurp(a, NULL)), "type,", 5), 0, "a new file starts with its header");
}

/* ---- pipes -------------------------------------------------------- */

Test(acct, pipe_receives_everything)
{
	char *out = tpath("out.csv");
	char *conf = fmt("<acct-file |cat >> %s>\n records d,b\n</acct-file>\n", out);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct seen s = { 0 };

	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 2000; i++)
		emit(w, 0, i % 2 ? ACCT_BOUNCE : ACCT_DELIVERY, i);
	finish(w);		/* waits for cat to take it all and exit */

	struct csv_file cf = csv_read(out);

	cr_expect_eq(cf.nrows, 2001, "one header, every record");
	seen_add_file(&s, out, default_header);
	expect_exactly(&s, 2000);
	expect_crlf(out);
}

/* Reads line by line (as the shell's read does) and exits after $2 lines. */
static const char consumer_sh[] =
	"#!/bin/sh\n"
	"n=0\n"
	"while IFS= read -r line; do\n"
	"  printf '%s\\n' \"$line\" >> \"$1\"\n"
	"  n=$((n+1))\n"
	"  [ \"$n\" -ge \"$2\" ] && exit 0\n"
	"done\n";

Test(acct, pipe_command_that_dies_is_restarted_nothing_lost)
{
	char *out = tpath("out.csv");
	char *script = tpath("consumer.sh");
	char *conf = fmt("<acct-file |%s %s 12>\n records d\n retry-interval 1s\n</acct-file>\n",
			       script, out);
	struct acct_writer *w;
	struct seen s = { 0 };
	struct acct_stats st;

	write_script(script, consumer_sh);
	w = writer(conf, NULL, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 40; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	wait_lines(out, 40, 30);	/* 11 records per run: 4 runs */
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);

	cr_expect_geq(st.pipe_restarts, 3);
	seen_add_file(&s, out, default_header);
	expect_exactly(&s, 40);
}

/* Exits at once until the file $1 exists, then appends to $2. */
static const char gate_sh[] =
	"#!/bin/sh\n"
	"[ -f \"$1\" ] || exit 1\n"
	"exec cat >> \"$2\"\n";

Test(acct, pipe_down_buffers_spills_then_replays)
{
	char *out = tpath("out.csv"), *ok = tpath("ok"), *script = tpath("gate.sh");
	char *spill = tpath("spill");
	char *conf = fmt("<acct-file |%s %s %s>\n records d\n retry-interval 1s\n</acct-file>\n",
			       script, ok, out);
	struct acct_params p = { .spill_dir = spill, .mem_max = 2048 };
	struct acct_writer *w;
	struct seen s = { 0 };
	struct acct_stats st;

	write_script(script, gate_sh);
	cr_assert_eq(mkdir(spill, 0700), 0);
	w = writer(conf, &p, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 300; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	for (int i = 0; i < 100; i++) {
		acct_writer_stats(w, &st);
		if (st.spilled_bytes && st.errors >= 2)
			break;
		sleep_ms(50);
	}
	cr_expect_gt(st.spilled_bytes, 0, "records went to the spill file");
	cr_expect_geq(st.errors, 2, "the command failed and was retried");
	cr_assert_eq(data_lines(out), 0);

	int fd = open(ok, O_WRONLY | O_CREAT, 0644);

	cr_assert_geq(fd, 0);
	close(fd);
	for (int i = 300; i < 320; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	wait_lines(out, 320, 30);
	finish(w);
	seen_add_file(&s, out, default_header);
	expect_exactly(&s, 320);

	DIR *d = opendir(spill);
	struct dirent *de;
	int left = 0;

	while ((de = readdir(d)))
		left += de->d_name[0] != '.';
	closedir(d);
	cr_expect_eq(left, 0, "the spill file is gone once replayed");
}

Test(acct, pipe_backlog_survives_a_stop)
{
	char *out = tpath("out.csv"), *ok = tpath("ok"), *script = tpath("gate.sh");
	char *spill = tpath("spill");
	char *conf = fmt("<acct-file |%s %s %s>\n records d\n retry-interval 1s\n</acct-file>\n",
			       script, ok, out);
	struct acct_params p = { .spill_dir = spill };
	struct acct_writer *w;
	struct seen s = { 0 };
	struct stat sb;
	DIR *d;
	struct dirent *de;
	char *spilled = NULL;

	write_script(script, gate_sh);
	cr_assert_eq(mkdir(spill, 0700), 0);
	w = writer(conf, &p, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 50; i++)
		emit(w, 0, ACCT_DELIVERY, i);
	sleep_ms(300);
	finish(w);

	cr_assert_not_null(d = opendir(spill));
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			spilled = fmt("%s/%s", spill, de->d_name);
	closedir(d);
	cr_assert_not_null(spilled, "a spill file is left");
	cr_assert_eq(stat(spilled, &sb), 0);
	cr_expect_gt(sb.st_size, 0);

	int fd = open(ok, O_WRONLY | O_CREAT, 0644);

	cr_assert_geq(fd, 0);
	close(fd);
	w = writer(conf, &p, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	emit(w, 0, ACCT_DELIVERY, 50);
	wait_lines(out, 51, 30);
	finish(w);
	seen_add_file(&s, out, default_header);
	expect_exactly(&s, 51);
	cr_expect_neq(access(spilled, F_OK), 0, "replayed and removed");
}

/* Never reads until the file $1 exists: a stalled consumer. */
static const char stall_sh[] =
	"#!/bin/sh\n"
	"[ -f \"$1\" ] && exec cat >> \"$2\"\n"
	"exec sleep 60\n";

Test(acct, pipe_write_timeout_kills_and_replays)
{
	char *out = tpath("out.csv"), *ok = tpath("ok"), *script = tpath("stall.sh");
	char *conf = fmt("<acct-file |%s %s %s>\n records d\n write-timeout 1s\n"
			 " retry-interval 1s\n</acct-file>\n", script, ok, out);
	struct acct_writer *w;
	struct seen s = { 0 };
	struct acct_stats st = { 0 };

	write_script(script, stall_sh);
	w = writer(conf, NULL, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 600; i++)		/* more than a pipe holds */
		emit(w, 0, ACCT_DELIVERY, i);
	for (int i = 0; i < 100 && !st.errors; i++) {
		sleep_ms(50);
		acct_writer_stats(w, &st);
	}
	cr_assert_gt(st.errors, 0, "the stalled command timed out");

	int fd = open(ok, O_WRONLY | O_CREAT, 0644);

	cr_assert_geq(fd, 0);
	close(fd);
	wait_lines(out, 600, 30);
	finish(w);
	seen_add_file(&s, out, default_header);
	expect_exactly(&s, 600);
}

/* ---- producers ---------------------------------------------------- */

struct prod_arg {
	struct acct_writer *w;
	unsigned index;
	int first, count;
};

static void *producer_main(void *arg)
{
	struct prod_arg *a = arg;

	for (int i = 0; i < a->count; i++) {
		char rcpt[64];
		struct acct_record r = base_record(ACCT_DELIVERY);

		snprintf(rcpt, sizeof(rcpt), "user%d@example.com", a->first + i);
		r.rcpt = rcpt;
		if (acct_emit(a->w, a->index, &r) != 0)
			abort();
		if (i % 64 == 0)
			acct_flush(a->w, a->index);
	}
	while (acct_flush(a->w, a->index))
		sched_yield();
	return NULL;
}

Test(acct, concurrent_producers_lose_nothing)
{
	enum { NPROD = 4, PER = 5000 };
	char *file = tpath("acct.csv");
	char *out = tpath("out.csv");
	char *conf = fmt("<acct-file %s>\n records d\n</acct-file>\n"
			       "<acct-file |cat > %s>\n records d\n</acct-file>\n", file, out);
	struct acct_params p = { .ring_capacity = 16 };	/* overflow lists get used */
	struct acct_writer *w = writer(conf, &p, NPROD);
	pthread_t th[NPROD];
	struct prod_arg args[NPROD];
	struct seen s = { 0 }, sp = { 0 };
	struct acct_stats st;

	cr_assert_eq(acct_writer_start(w), 0);
	for (unsigned i = 0; i < NPROD; i++) {
		args[i] = (struct prod_arg){ w, i, (int)i * PER, PER };
		cr_assert_eq(pthread_create(&th[i], NULL, producer_main, &args[i]), 0);
	}
	for (unsigned i = 0; i < NPROD; i++)
		pthread_join(th[i], NULL);
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);

	cr_expect_eq(st.records, NPROD * PER);
	cr_expect_eq(st.lines, 2 * NPROD * PER);
	seen_add_file(&s, file, default_header);
	expect_exactly(&s, NPROD * PER);
	seen_add_file(&sp, out, default_header);
	expect_exactly(&sp, NPROD * PER);
}

Test(acct, full_overflow_is_back_pressure_not_loss)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records d\n</acct-file>\n", file);
	struct acct_params p = { .ring_capacity = 4, .overflow_max = 8 };
	struct acct_writer *w = writer(conf, &p, 1);
	struct acct_record r = base_record(ACCT_DELIVERY);
	struct seen s = { 0 };

	for (int i = 0; i < 12; i++)
		emit(w, 0, ACCT_DELIVERY, i);	/* 4 in the ring, 8 kept */
	r.rcpt = "user12@example.com";
	cr_expect_eq(acct_emit(w, 0, &r), -ENOBUFS);
	cr_expect_eq(acct_flush(w, 0), 8);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 0; i < 200 && acct_flush(w, 0); i++)
		sleep_ms(10);
	cr_expect_eq(acct_flush(w, 0), 0);
	cr_expect_eq(acct_emit(w, 0, &r), 0, "taken once the writer caught up");
	finish(w);
	seen_add_file(&s, file, default_header);
	expect_exactly(&s, 13);
}

Test(acct, no_acct_file_takes_nothing)
{
	struct acct_writer *w = writer("", NULL, 2);
	struct acct_stats st;

	emit(w, 1, ACCT_DELIVERY, 0);
	cr_assert_eq(acct_writer_start(w), 0);
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);
	cr_expect_eq(st.records, 0);
}

/* ---- reject logs -------------------------------------------------- */

static const char *const reject_header =
	"type,time,clientIp,helo,authUser,mailFrom,rcpt,reply";

static const enum acct_reject_kind all_kinds[] = {
	ACCT_REJECT_CONNECTION, ACCT_REJECT_RECIPIENT, ACCT_REJECT_MESSAGE,
	ACCT_REJECT_COMMAND,
};

/* reject_record - a reject line of kind k; rcpt (caller's) carries the id */
static struct acct_record reject_record(enum acct_reject_kind k, int id,
					char *rcpt, size_t len)
{
	snprintf(rcpt, len, "user%d@example.com", id);
	return (struct acct_record){
		.type = ACCT_REJECT,
		.reject_kind = k,
		.time_logged = 1700000000,
		.rcv_source_ip = "10.0.0.5",
		.helo = "app1.sender.example",
		.rcv_smtp_user = "app1",
		.orig = "bounces@sender.example",
		.rcpt = rcpt,
		.reply = "550 5.7.1 relaying denied",
	};
}

static void emit_reject(struct acct_writer *w, unsigned prod,
			enum acct_reject_kind k, int id)
{
	char rcpt[64];
	struct acct_record r = reject_record(k, id, rcpt, sizeof(rcpt));

	cr_assert_eq(acct_emit(w, prod, &r), 0);
}

/* header_rows - rows after the first that repeat the header */
static size_t header_rows(const struct csv_file *cf)
{
	size_t n = 0;

	for (size_t r = 1; r < cf->nrows; r++)
		n += cf->rows[r].n && !strcmp(cf->rows[r].f[0], "type");
	return n;
}

/* Each intake thread is a producer: a reject line and a d record per id. */
static void *reject_producer_main(void *arg)
{
	struct prod_arg *a = arg;

	for (int i = 0; i < a->count; i++) {
		int id = a->first + i;
		char rcpt[64];
		struct acct_record r = reject_record(all_kinds[id % 4], id, rcpt,
						     sizeof(rcpt));
		struct acct_record d = base_record(ACCT_DELIVERY);

		d.rcpt = rcpt;
		if (acct_emit(a->w, a->index, &r) != 0 ||
		    acct_emit(a->w, a->index, &d) != 0)
			abort();
		if (i % 64 == 0)
			acct_flush(a->w, a->index);
	}
	while (acct_flush(a->w, a->index))
		sched_yield();
	return NULL;
}

Test(acct, reject_lines_from_two_producers_header_once)
{
	enum { NPROD = 2, PER = 3000 };
	char *rej = tpath("rejects.log");
	char *file = tpath("acct.csv");
	char *conf = fmt("<rejectlog-file %s>\n</rejectlog-file>\n"
			 "<acct-file %s>\n records d\n</acct-file>\n", rej, file);
	struct acct_params p = { .ring_capacity = 16 };	/* overflow lists get used */
	struct acct_writer *w = writer(conf, &p, NPROD);
	pthread_t th[NPROD];
	struct prod_arg args[NPROD];
	struct seen s = { 0 }, sd = { 0 };
	struct acct_stats st;
	size_t kinds[128] = { 0 };

	cr_assert_eq(acct_writer_start(w), 0);
	for (unsigned i = 0; i < NPROD; i++) {
		args[i] = (struct prod_arg){ w, i, (int)i * PER, PER };
		cr_assert_eq(pthread_create(&th[i], NULL, reject_producer_main,
					    &args[i]), 0);
	}
	for (unsigned i = 0; i < NPROD; i++)
		pthread_join(th[i], NULL);
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);

	cr_expect_eq(st.records, 2 * NPROD * PER);
	cr_expect_eq(st.errors, 0);
	expect_crlf(rej);

	struct csv_file cf = csv_read(rej);

	cr_assert_str_eq(header_of(&cf), reject_header);
	cr_expect_eq(header_rows(&cf), 0, "the header is written once");
	cr_assert_eq(cf.nrows, 1 + NPROD * PER);
	for (size_t r = 1; r < cf.nrows; r++) {
		const char *ty = cell(&cf, r, "type");
		int id;

		cr_assert_eq(strlen(ty), 1, "row %zu: type '%s'", r, ty);
		kinds[(unsigned char)ty[0] & 127]++;
		cr_assert_eq(sscanf(cell(&cf, r, "rcpt"), "user%d@", &id), 1);
		cr_assert_eq(ty[0], (char)all_kinds[id % 4], "row %zu: id %d", r, id);
		cr_expect_str_eq(cell(&cf, r, "time"), "2023-11-14T22:13:20Z");
		cr_expect_str_eq(cell(&cf, r, "clientIp"), "10.0.0.5");
		cr_expect_str_eq(cell(&cf, r, "helo"), "app1.sender.example");
		cr_expect_str_eq(cell(&cf, r, "authUser"), "app1");
		cr_expect_str_eq(cell(&cf, r, "mailFrom"), "bounces@sender.example");
		cr_expect_str_eq(cell(&cf, r, "reply"), "550 5.7.1 relaying denied");
	}
	for (size_t k = 0; k < ARRAY_SIZE(all_kinds); k++)
		cr_expect_eq(kinds[all_kinds[k]], NPROD * PER / 4, "kind %c: %zu",
			     (char)all_kinds[k], kinds[all_kinds[k]]);
	seen_add_file(&s, rej, reject_header);
	expect_exactly(&s, NPROD * PER);
	/* the d records went to the acct-file only */
	seen_add_file(&sd, file, default_header);
	expect_exactly(&sd, NPROD * PER);
}

Test(acct, reject_quoting_field_by_field)
{
	static const struct {
		enum acct_reject_kind kind;
		const char *ip, *helo, *user, *from, *rcpt, *reply;
		const char *out[8];
	} cases[] = {
		{ ACCT_REJECT_RECIPIENT, "192.0.2.1", "a,b", "\"quoted\" user",
		  "", "x@example.com",
		  "550 5.1.1 \"x\", unknown\r\nsecond line",
		  { "r", "2023-11-14T22:13:20Z", "192.0.2.1", "a,b",
		    "\"quoted\" user", "", "x@example.com",
		    "550 5.1.1 \"x\", unknown\r\nsecond line" } },
		{ ACCT_REJECT_CONNECTION, "", NULL, NULL, NULL, NULL,
		  "421 4.7.0 too many connections",
		  { "c", "2023-11-14T22:13:20Z", "", "", "", "", "",
		    "421 4.7.0 too many connections" } },
		{ ACCT_REJECT_COMMAND, "2001:db8::1", "h\"", NULL, NULL, NULL,
		  "500 5.5.1 bare\nLF and \"\"",
		  { "p", "2023-11-14T22:13:20Z", "2001:db8::1", "h\"", "", "",
		    "", "500 5.5.1 bare\nLF and \"\"" } },
		{ ACCT_REJECT_MESSAGE, "10.1.2.3", "ok", "u", "a@b.example", NULL,
		  NULL,
		  { "m", "2023-11-14T22:13:20Z", "10.1.2.3", "ok", "u",
		    "a@b.example", "", "" } },
	};
	char *rej = tpath("rejects.log");
	char *conf = fmt("<rejectlog-file %s>\n records c,r\n</rejectlog-file>\n", rej);
	struct acct_writer *w = writer(conf, NULL, 1);
	size_t len;
	char *raw;

	/* times are UTC whatever the local zone */
	setenv("TZ", "Asia/Kolkata", 1);
	tzset();

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct acct_record r = {
			.type = ACCT_REJECT, .reject_kind = cases[i].kind,
			.time_logged = 1700000000, .rcv_source_ip = cases[i].ip,
			.helo = cases[i].helo, .rcv_smtp_user = cases[i].user,
			.orig = cases[i].from, .rcpt = cases[i].rcpt,
			.reply = cases[i].reply,
		};

		cr_assert_eq(acct_emit(w, 0, &r), 0);
	}
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	raw = gc(slurp(rej, &len));
	cr_assert(!strncmp(raw, fmt("%s\r\n", reject_header), strlen(reject_header) + 2),
		  "the header line, CRLF");
	cr_expect(len > 2 && !strcmp(raw + len - 2, "\r\n"));

	struct csv_file cf = csv_read(rej);

	cr_assert_eq(cf.nrows, 1 + ARRAY_SIZE(cases));
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		cr_assert_eq(cf.rows[i + 1].n, 8, "row %zu: %zu fields", i + 1,
			     cf.rows[i + 1].n);
		for (size_t f = 0; f < 8; f++)
			cr_expect_str_eq(cf.rows[i + 1].f[f], cases[i].out[f],
					 "row %zu field %s", i + 1, cf.rows[0].f[f]);
	}
}

Test(acct, reject_records_filter)
{
	char *only_r = tpath("r.log"), *only_c = tpath("c.log");
	char *both = tpath("both.log");
	char *conf = fmt("<rejectlog-file %s>\n records r\n</rejectlog-file>\n"
			 "<rejectlog-file %s>\n records connection\n</rejectlog-file>\n"
			 "<rejectlog-file %s>\n</rejectlog-file>\n",
			 only_r, only_c, both);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct csv_file *cfs;
	char *paths[] = { only_r, only_c, both };

	for (size_t k = 0; k < ARRAY_SIZE(all_kinds); k++) {
		cr_expect(acct_wants(w, ACCT_REJECT, all_kinds[k]));
		emit_reject(w, 0, all_kinds[k], (int)k);
	}
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	cfs = csv_read_many(paths, 3);
	cr_assert_eq(cfs[0].nrows, 2);
	cr_expect_str_eq(cell(&cfs[0], 1, "type"), "r");
	cr_assert_eq(cfs[1].nrows, 4);
	cr_expect_str_eq(cell(&cfs[1], 1, "type"), "c");
	cr_expect_str_eq(cell(&cfs[1], 2, "type"), "m");
	cr_expect_str_eq(cell(&cfs[1], 3, "type"), "p");
	cr_assert_eq(cfs[2].nrows, 5);
	for (size_t k = 0; k < 4; k++)
		cr_expect_eq(cell(&cfs[2], k + 1, "type")[0], (char)all_kinds[k]);
	for (size_t i = 0; i < 3; i++)
		cr_expect_str_eq(header_of(&cfs[i]), reject_header);
}

Test(acct, reject_kinds_nobody_records_are_not_taken)
{
	char *rej = tpath("r.log");
	char *conf = fmt("<rejectlog-file %s>\n records r\n</rejectlog-file>\n", rej);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct acct_stats st;

	cr_expect(acct_wants(w, ACCT_REJECT, ACCT_REJECT_RECIPIENT));
	cr_expect(!acct_wants(w, ACCT_REJECT, ACCT_REJECT_CONNECTION));
	cr_expect(!acct_wants(w, ACCT_REJECT, ACCT_REJECT_MESSAGE));
	cr_expect(!acct_wants(w, ACCT_REJECT, ACCT_REJECT_COMMAND));
	for (int i = 0; i < 40; i++)
		emit_reject(w, 0, all_kinds[i % 4], i);
	cr_assert_eq(acct_writer_start(w), 0);
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);
	cr_expect_eq(st.records, 10, "only r records were copied: %llu",
		     (unsigned long long)st.records);
	cr_expect_eq(data_lines(rej), 10);
}

Test(acct, reject_max_size_rotation_keeps_every_line_once)
{
	char *rej = tpath("rejects.log");
	char *conf = fmt("<rejectlog-file %s>\n max-size 4k\n</rejectlog-file>\n", rej);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct seen s = { 0 };
	struct acct_stats st;
	char **files;
	size_t n;

	for (int i = 0; i < 100; i++)		/* some before the start */
		emit_reject(w, 0, all_kinds[i % 4], i);
	cr_assert_eq(acct_writer_start(w), 0);
	for (int i = 100; i < 400; i++) {
		emit_reject(w, 0, all_kinds[i % 4], i);
		if (i % 50 == 0)
			sleep_ms(5);
	}
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);

	n = list_dated(tdir, "rejects", ".log", &files);
	cr_expect_gt(n, 5, "%zu rotated files", n);
	cr_expect_eq(st.rotations, n);
	for (size_t i = 0; i < n; i++) {
		struct stat sb;

		cr_assert_eq(stat(files[i], &sb), 0);
		cr_expect_leq(sb.st_size, 4096, "%s: %lld bytes", files[i],
			      (long long)sb.st_size);
		expect_crlf(files[i]);
	}
	/* every file, rotated or current, starts with the header */
	seen_add_files(&s, files, n, reject_header);
	seen_add_file(&s, rej, reject_header);
	expect_exactly(&s, 400);
	cr_expect_eq(st.errors, 0);
}

Test(acct, reject_log_without_acct_file)
{
	char *rej = tpath("rejects.log");
	char *conf = fmt("<rejectlog-file %s>\n</rejectlog-file>\n", rej);
	struct acct_writer *w = writer(conf, NULL, 2);
	struct acct_stats st;
	struct seen s = { 0 };

	cr_expect(!acct_wants(w, ACCT_DELIVERY, 0));
	cr_expect(!acct_wants(w, ACCT_BOUNCE, 0));
	cr_expect(!acct_wants(w, ACCT_RECEIPT, 0));
	emit(w, 0, ACCT_DELIVERY, 100);		/* nobody records d: a no-op */
	emit(w, 1, ACCT_RECEIPT, 101);
	emit_reject(w, 1, ACCT_REJECT_RECIPIENT, 0);
	cr_assert_eq(acct_writer_start(w), 0);
	emit_reject(w, 0, ACCT_REJECT_CONNECTION, 1);
	acct_writer_stop(w);
	acct_writer_stats(w, &st);
	acct_writer_free(w);
	cr_expect_eq(st.records, 2);
	cr_expect_eq(st.lines, 2);
	seen_add_file(&s, rej, reject_header);
	expect_exactly(&s, 2);
}

Test(acct, writer_needed_only_for_files_it_writes)
{
	static const struct {
		const char *conf;
		bool needed;
	} cases[] = {
		{ "", false },
		{ "<acct-file %s/a.csv>\n records rs\n</acct-file>\n", true },
		{ "<acct-file %s/a.csv>\n records f,rb,rs\n</acct-file>\n", true },
		{ "<acct-file %s/a.csv>\n</acct-file>\n", true },
		{ "<acct-file %s/a.csv>\n records r\n</acct-file>\n", true },
		{ "<rejectlog-file %s/r.log>\n</rejectlog-file>\n", true },
		{ "<rejectlog-file %s/r.log>\n records c\n</rejectlog-file>\n", true },
	};

	cr_expect(!acct_wants(NULL, ACCT_REJECT, ACCT_REJECT_CONNECTION));
	cr_expect(!acct_wants(NULL, ACCT_DELIVERY, 0));
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct diag_list dl = { 0 };
		struct cfg_load_opts opts = { 0 };
		struct cfg *cfg = NULL;
		char *conf = fmt(cases[i].conf, tdir);

		cr_assert_eq(cfg_load_string("acct.conf", conf, tdir, &opts, &cfg,
					     &dl), 0, "%s", conf);
		diag_free(&dl);
		cr_expect_eq(acct_writer_needed(cfg), cases[i].needed, "%s", conf);
		cfg_free(cfg);
	}
}

Test(acct, reject_log_same_header_appended_other_rotated)
{
	char *same = tpath("same.log"), *other = tpath("other.log");
	char *conf = fmt("<rejectlog-file %s>\n</rejectlog-file>\n"
			 "<rejectlog-file %s>\n</rejectlog-file>\n", same, other);
	struct acct_writer *w;
	struct seen s = { 0 };
	char **files;
	FILE *f;

	/* a log the intake threads wrote before: same columns */
	cr_assert_not_null(f = fopen(same, "w"));
	fprintf(f, "%s\r\nr,2023-11-14T22:13:19Z,10.0.0.5,,,,user0@example.com,550 no\r\n",
		reject_header);
	fclose(f);
	cr_assert_not_null(f = fopen(other, "w"));
	fputs("time,ip,reply\r\n1,2,3\r\n", f);
	fclose(f);

	w = writer(conf, NULL, 1);
	emit_reject(w, 0, ACCT_REJECT_RECIPIENT, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(same);

	cr_expect_eq(header_rows(&cf), 0);
	seen_add_file(&s, same, reject_header);
	expect_exactly(&s, 2);
	cr_assert_eq(list_dated(tdir, "other", ".log", &files), 1);
	cr_expect_str_eq(gc(slurp(files[0], NULL)), "time,ip,reply\r\n1,2,3\r\n",
			 "the old file, kept as it was");
	cr_expect_eq(data_lines(other), 1);
	cf = csv_read(other);
	cr_expect_str_eq(header_of(&cf), reject_header);
}

Test(acct, reject_log_that_cannot_be_opened_is_an_error)
{
	char err[512] = "";
	int rc;
	char *conf = fmt("<rejectlog-file %s/no/such/dir/r.log>\n</rejectlog-file>\n",
			 tdir);
	struct acct_writer *w = writer_try(conf, NULL, 1, err, sizeof(err), &rc);

	cr_expect_eq(rc, -ENOENT, "rc %d", rc);
	cr_expect_null(w);
	cr_expect(strstr(err, "rejectlog-file") && strstr(err, "/no/such/dir/r.log"),
		  "err: %s", err);
}

/* Rotated reject logs go after delete-after too, and only they. */
Test(acct, reject_log_delete_after_removes_old_rotated_files)
{
	static const struct {
		const char *name;
		int age_hours;
		bool gone;
	} files[] = {
		{ "reject-2020-01-01-0000.csv", 240, true },
		{ "reject-2020-01-02-0000.csv", 2, false },	/* too young */
		{ "acct-2020-01-01-0000.csv", 240, false },	/* not ours */
	};
	char *file = tpath("reject.csv");
	char *conf = fmt("<rejectlog-file %s>\n delete-after 1d\n</rejectlog-file>\n", file);
	struct acct_writer *w;
	struct acct_stats st;

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char *p = tpath(files[i].name);
		struct timeval tv[2];
		int fd = open(p, O_WRONLY | O_CREAT, 0644);

		cr_assert_geq(fd, 0);
		close(fd);
		gettimeofday(&tv[0], NULL);
		tv[0].tv_sec -= files[i].age_hours * 3600;
		tv[1] = tv[0];
		cr_assert_eq(utimes(p, tv), 0);
	}
	w = writer(conf, NULL, 1);
	acct_writer_stats(w, &st);
	acct_writer_free(w);
	cr_expect_eq(st.deleted_files, 1);
	for (size_t i = 0; i < ARRAY_SIZE(files); i++)
		cr_expect_eq(access(tpath(files[i].name), F_OK) < 0, files[i].gone, "%s",
			     files[i].name);
}

/* bounceClass (coremta extension): hard|soft from bounceCat and the
 * configuration's bounce-category-class lines, only when named. */
Test(acct, bounce_class_field_follows_configured_classes)
{
	char *file = tpath("acct.csv");
	char *conf = fmt(
		"bounce-category-class quota-issues hard\n"
		"bounce-category-class inactive-mailbox soft\n"
		"<acct-file %s>\n"
		" records b\n"
		" record-fields b rcpt,bounceCat,bounceClass\n"
		"</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);
	static const struct { const char *cat, *cls; } cases[] = {
		{ "bad-mailbox", "hard" },	/* built-in hard */
		{ "bad-domain", "hard" },
		{ "inactive-mailbox", "soft" },	/* overridden */
		{ "quota-issues", "hard" },	/* overridden */
		{ "spam-related", "soft" },
		{ "policy-related", "soft" },
		{ NULL, "" },			/* no category, no class */
	};
	struct acct_record r = base_record(ACCT_BOUNCE);

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		r.rcpt = fmt("u%zu@example.com", i);
		r.bounce_cat = cases[i].cat;
		cr_assert_eq(acct_emit(w, 0, &r), 0);
	}
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, ARRAY_SIZE(cases) + 1);
	cr_expect_str_eq(header_of(&cf), "type,rcpt,bounceCat,bounceClass");
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		cr_expect_str_eq(cell(&cf, i + 1, "bounceClass"), cases[i].cls,
				 "case %zu (%s)", i, cases[i].cat ? cases[i].cat : "none");
}

Test(acct, bounce_class_not_in_default_columns)
{
	char *file = tpath("acct.csv");
	char *conf = fmt("<acct-file %s>\n records b\n</acct-file>\n", file);
	struct acct_writer *w = writer(conf, NULL, 1);

	emit(w, 0, ACCT_BOUNCE, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_expect_str_eq(header_of(&cf), default_header);
}

/* rb and f records (issue #15): PowerMTA's columns, arf_ and default
 * header_ columns for f, the union with d in one file. */
Test(acct, remote_bounce_and_feedback_records)
{
	char *file = tpath("acct.csv");
	char *fonly = tpath("fbl.csv");
	char *conf = fmt(
		"<acct-file %s>\n"
		" records d,rb,f\n"
		" record-fields rb *,bounceClass\n"
		" record-fields f *,arf_Source-IP,arf_Original-Rcpt-To,header_Message-Id,bounceClass\n"
		"</acct-file>\n"
		"<acct-file %s>\n"
		" records feedback-loop\n"
		"</acct-file>\n", file, fonly);
	struct acct_writer *w = writer(conf, NULL, 1);
	struct acct_record rb = base_record(ACCT_BOUNCE);
	struct acct_header_field fh[] = {
		{ "Message-Id", "<m7@sender.example>" },
		{ "From", "News <news@sender.example>" },
		{ "X-Job", "job-7" },
		{ "arf_Source-IP", "192.0.2.10" },
		{ "arf_Original-Rcpt-To", "a@yahoo.com,b@yahoo.com" },
	};
	struct acct_record f = {
		.type = ACCT_FEEDBACK,
		.time_logged = 1700000000,
		.rep_source_ip = "198.51.100.9",
		.feedback_type = "abuse",
		.format = "arf",
		.user_agent = "Yahoo!-Mail-Feedback/2.0",
		.orig = "bounces@sender.example",
		.rcpt = "a@yahoo.com",
		.reporting_mta = "mta1.mail.yahoo.com",
		.reported_domain = "sender.example",
		.bounce_class = "hard",
		.headers = fh,
		.header_count = ARRAY_SIZE(fh),
	};
	const char *const *names;
	size_t nn = acct_header_names(w, &names);

	for (size_t i = 0; i < nn; i++)
		cr_expect(strncmp(names[i], "arf_", 4) != 0,
			  "producers are not asked for a message header '%s'", names[i]);
	rb.type = ACCT_REMOTE_BOUNCE;
	rb.rcpt = "gone@example.org";
	rb.dsn_reporting_mta = "mail.example.org";
	rb.format = "dsn";
	cr_assert_eq(acct_emit(w, 0, &rb), 0);
	cr_assert_eq(acct_emit(w, 0, &f), 0);
	emit(w, 0, ACCT_DELIVERY, 1);
	cr_assert_eq(acct_writer_start(w), 0);
	finish(w);

	struct csv_file cf = csv_read(file);

	cr_assert_eq(cf.nrows, 4);
	cr_expect_str_eq(cell(&cf, 1, "type"), "rb");
	cr_expect_str_eq(cell(&cf, 1, "rcpt"), "gone@example.org");
	cr_expect_str_eq(cell(&cf, 1, "dsnStatus"), "5.1.1 (bad destination mailbox address)");
	cr_expect_str_eq(cell(&cf, 1, "bounceCat"), "bad-mailbox");
	cr_expect_str_eq(cell(&cf, 1, "bounceClass"), "hard");
	cr_expect_str_eq(cell(&cf, 1, "dsnReportingMta"), "mail.example.org");
	cr_expect_str_eq(cell(&cf, 1, "format"), "dsn");
	cr_expect_str_eq(cell(&cf, 1, "feedbackType"), "");
	cr_expect_str_eq(cell(&cf, 2, "type"), "f");
	cr_expect_str_eq(cell(&cf, 2, "feedbackType"), "abuse");
	cr_expect_str_eq(cell(&cf, 2, "userAgent"), "Yahoo!-Mail-Feedback/2.0");
	cr_expect_str_eq(cell(&cf, 2, "repSourceIp"), "198.51.100.9");
	cr_expect_str_eq(cell(&cf, 2, "reportingMta"), "mta1.mail.yahoo.com");
	cr_expect_str_eq(cell(&cf, 2, "reportedDomain"), "sender.example");
	cr_expect_str_eq(cell(&cf, 2, "format"), "arf");
	cr_expect_str_eq(cell(&cf, 2, "rcpt"), "a@yahoo.com");
	cr_expect_str_eq(cell(&cf, 2, "arf_Source-IP"), "192.0.2.10");
	cr_expect_str_eq(cell(&cf, 2, "arf_Original-Rcpt-To"), "a@yahoo.com,b@yahoo.com");
	cr_expect_str_eq(cell(&cf, 2, "header_Message-Id"), "<m7@sender.example>");
	cr_expect_str_eq(cell(&cf, 2, "header_From"), "News <news@sender.example>");
	cr_expect_str_eq(cell(&cf, 2, "header_X-Job"), "job-7");
	cr_expect_str_eq(cell(&cf, 2, "bounceClass"), "hard");
	cr_expect_str_eq(cell(&cf, 2, "dsnStatus"), "", "not an f column");
	cr_expect_str_eq(cell(&cf, 3, "type"), "d");
	cr_expect_str_eq(cell(&cf, 3, "arf_Source-IP"), "");

	struct csv_file ff = csv_read(fonly);

	cr_assert_eq(ff.nrows, 2);
	cr_expect_str_eq(header_of(&ff),
			 "type,timeLogged,orig,rcpt,dlvSourceIp,envId,format,repSourceIp,"
			 "feedbackType,userAgent,reportingMta,reportedDomain,"
			 "header_From,header_Return-Path,header_X-Job,header_Subject");
	cr_expect_str_eq(cell(&ff, 1, "header_Subject"), "");
	cr_expect_str_eq(cell(&ff, 1, "header_X-Job"), "job-7");
}
