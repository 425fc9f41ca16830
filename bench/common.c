/*
 * bench/common.c - clocks, option parsing, weighted lists, latency samples,
 * per-second series, JSON helpers and a timer heap for coremta-bench.
 *
 * Called from the thread that runs a subcommand's loop; no shared state.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

double bench_wall_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* bench_parse_addr - see bench.h. */
int bench_parse_addr(const char *s, struct sockaddr_in *out, bool loopback_only)
{
	const char *colon = strrchr(s, ':');
	char host[64];
	uint64_t port;

	if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	if (bench_parse_u64(colon + 1, &port) < 0 || port > 65535)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)port);
	if (strcmp(host, "localhost") == 0)
		out->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	else if (inet_pton(AF_INET, host, &out->sin_addr) != 1)
		return -EINVAL;
	if (loopback_only && (ntohl(out->sin_addr.s_addr) >> 24) != 127)
		return -EPERM;
	return 0;
}

void bench_format_addr(const struct sockaddr_in *sa, char *buf, size_t len)
{
	char ip[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
	snprintf(buf, len, "%s:%u", ip, ntohs(sa->sin_port));
}

int bench_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

int bench_parse_double(const char *s, double *out)
{
	char *end;
	double v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || !isfinite(v) || v < 0)
		return -EINVAL;
	*out = v;
	return 0;
}

/* parse_scaled - a non-negative number followed by a unit from a table. */
static int parse_scaled(const char *s, const char *const *units,
			const double *scale, size_t nunits, double *out)
{
	char *end;
	double v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || !isfinite(v) || v < 0)
		return -EINVAL;
	for (size_t i = 0; i < nunits; i++) {
		if (strcmp(end, units[i]) == 0) {
			*out = v * scale[i];
			return 0;
		}
	}
	return -EINVAL;
}

int bench_parse_size(const char *s, uint64_t *out)
{
	static const char *const units[] = { "", "b", "k", "K", "m", "M" };
	static const double scale[] = { 1, 1, 1024, 1024, 1048576, 1048576 };
	double v;
	int rc = parse_scaled(s, units, scale, ARRAY_SIZE(units), &v);

	if (rc < 0)
		return rc;
	if (v > 1e12)
		return -ERANGE;
	*out = (uint64_t)v;
	return 0;
}

int bench_parse_seconds(const char *s, double *out)
{
	static const char *const units[] = { "", "s", "ms", "m", "h" };
	static const double scale[] = { 1, 1, 0.001, 60, 3600 };

	return parse_scaled(s, units, scale, ARRAY_SIZE(units), out);
}

void bench_wlist_add(struct bench_wlist *wl, const char *name, double weight,
		     uint64_t value)
{
	if (wl->count == wl->cap) {
		wl->cap = wl->cap ? wl->cap * 2 : 16;
		wl->items = xrealloc(wl->items, wl->cap * sizeof(*wl->items));
	}
	wl->items[wl->count++] = (struct bench_witem){
		.name = xstrdup(name), .weight = weight, .value = value,
	};
}

/* bench_wlist_parse - see bench.h; appends to wl. */
int bench_wlist_parse(struct bench_wlist *wl, const char *s, bool sizes)
{
	char *copy = xstrdup(s), *save = NULL, *tok;
	int rc = 0;

	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(tok, ':');
		double w = 1;
		uint64_t value = 0;

		if (colon) {
			*colon = '\0';
			if (bench_parse_double(colon + 1, &w) < 0) {
				rc = -EINVAL;
				break;
			}
		}
		if (!*tok || (sizes && bench_parse_size(tok, &value) < 0)) {
			rc = -EINVAL;
			break;
		}
		bench_wlist_add(wl, tok, w, value);
	}
	free(copy);
	if (rc == 0 && wl->count == 0)
		rc = -EINVAL;
	return rc;
}

void bench_wlist_seal(struct bench_wlist *wl)
{
	free(wl->cum);
	wl->cum = xmalloc((wl->count ? wl->count : 1) * sizeof(double));
	wl->total = 0;
	for (size_t i = 0; i < wl->count; i++) {
		wl->total += wl->items[i].weight;
		wl->cum[i] = wl->total;
	}
}

/* bench_wlist_pick - an index drawn by weight (binary search). */
size_t bench_wlist_pick(const struct bench_wlist *wl, uint64_t *rng)
{
	double x = (double)(bench_rand(rng) >> 11) * 0x1p-53 * wl->total;
	size_t lo = 0, hi = wl->count - 1;

	BUG_ON(wl->count == 0 || !wl->cum);
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (x < wl->cum[mid])
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

void bench_wlist_free(struct bench_wlist *wl)
{
	for (size_t i = 0; i < wl->count; i++)
		free(wl->items[i].name);
	free(wl->items);
	free(wl->cum);
	memset(wl, 0, sizeof(*wl));
}

/* Two million samples (8 MB) keep percentiles exact for any usual run. */
#define SAMPLES_CAP (2u << 20)

void bench_samples_add(struct bench_samples *s, uint64_t us)
{
	uint32_t v = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;

	s->seen++;
	if (us > s->max_us)
		s->max_us = us;
	if (s->n < SAMPLES_CAP) {
		if (s->n == s->cap) {
			s->cap = s->cap ? s->cap * 2 : 4096;
			s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
		}
		s->v[s->n++] = v;
		return;
	}
	/* Reservoir sampling keeps a uniform sample of everything seen. */
	if (!s->rng)
		s->rng = 0x9E3779B97F4A7C15ULL;
	uint64_t j = bench_rand(&s->rng) % s->seen;
	if (j < s->n)
		s->v[j] = v;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* pct_sorted - p-th percentile (nearest rank) of sorted samples, in µs. */
static double pct_sorted(const struct bench_samples *s, double p)
{
	size_t k = (size_t)ceil(p / 100.0 * (double)s->n);

	if (!s->n)
		return 0;
	k = k ? k - 1 : 0;
	return s->v[k < s->n ? k : s->n - 1];
}

double bench_samples_pct(struct bench_samples *s, double p)
{
	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), cmp_u32);
	return pct_sorted(s, p);
}

/* bench_samples_json - {"count":..,"p50":..} in milliseconds. */
void bench_samples_json(struct bench_samples *s, struct strbuf *out)
{
	static const double pcts[] = { 50, 90, 99, 99.9 };
	static const char *const names[] = { "p50", "p90", "p99", "p999" };

	sb_printf(out, "{\"count\": %llu", (unsigned long long)s->seen);
	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), cmp_u32);
	for (size_t i = 0; i < ARRAY_SIZE(pcts); i++) {
		sb_printf(out, ", \"%s\": ", names[i]);
		bench_json_num(out, pct_sorted(s, pcts[i]) / 1000.0);
	}
	sb_adds(out, ", \"max\": ");
	bench_json_num(out, (double)s->max_us / 1000.0);
	sb_addc(out, '}');
}

void bench_samples_free(struct bench_samples *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

void bench_series_add(struct bench_series *s, uint64_t since_start_ns)
{
	size_t sec = since_start_ns / 1000000000ULL;

	if (sec >= BENCH_SERIES_MAX)
		sec = BENCH_SERIES_MAX - 1;
	if (sec >= s->n) {
		size_t n = sec + 1 > s->n * 2 ? sec + 1 : s->n * 2;

		if (n > BENCH_SERIES_MAX)
			n = BENCH_SERIES_MAX;
		s->v = xrealloc(s->v, n * sizeof(*s->v));
		memset(s->v + s->n, 0, (n - s->n) * sizeof(*s->v));
		s->n = n;
	}
	s->v[sec]++;
}

/* bench_series_json - the buckets up to the last non-empty one. */
void bench_series_json(const struct bench_series *s, struct strbuf *out)
{
	size_t last = s->n;

	while (last > 0 && s->v[last - 1] == 0)
		last--;
	sb_addc(out, '[');
	for (size_t i = 0; i < last; i++)
		sb_printf(out, "%s%u", i ? "," : "", s->v[i]);
	sb_addc(out, ']');
}

void bench_series_free(struct bench_series *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

void bench_json_str(struct strbuf *out, const char *s)
{
	sb_addc(out, '"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\') {
			sb_addc(out, '\\');
			sb_addc(out, (char)ch);
		} else if (ch < 0x20) {
			sb_printf(out, "\\u%04x", ch);
		} else {
			sb_addc(out, (char)ch);
		}
	}
	sb_addc(out, '"');
}

void bench_json_num(struct strbuf *out, double v)
{
	if (!isfinite(v))
		v = 0;
	/* Unix times need microseconds; small values need no trailing zeros. */
	if (fabs(v) >= 1e6)
		sb_printf(out, "%.6f", v);
	else
		sb_printf(out, "%.6g", v);
}

int bench_write_file(const char *path, const char *data, size_t len)
{
	char *tmp = xasprintf("%s.tmp%ld", path, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc = 0;

	if (fd < 0) {
		rc = -errno;
		free(tmp);
		return rc;
	}
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			break;
		}
		data += n;
		len -= (size_t)n;
	}
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc < 0)
		unlink(tmp);
	free(tmp);
	return rc;
}

static void heap_swap(struct bench_timer *a, struct bench_timer *b)
{
	struct bench_timer t = *a;

	*a = *b;
	*b = t;
}

void bench_timer_add(struct bench_timers *t, uint64_t when, uint32_t idx,
		     uint32_t gen)
{
	size_t i;

	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 64;
		t->h = xrealloc(t->h, t->cap * sizeof(*t->h));
	}
	i = t->n++;
	t->h[i] = (struct bench_timer){ .when = when, .idx = idx, .gen = gen };
	while (i > 0 && t->h[(i - 1) / 2].when > t->h[i].when) {
		heap_swap(&t->h[(i - 1) / 2], &t->h[i]);
		i = (i - 1) / 2;
	}
}

bool bench_timer_pop(struct bench_timers *t, uint64_t now, struct bench_timer *out)
{
	size_t i = 0;

	if (!t->n || t->h[0].when > now)
		return false;
	*out = t->h[0];
	t->h[0] = t->h[--t->n];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < t->n && t->h[l].when < t->h[m].when)
			m = l;
		if (r < t->n && t->h[r].when < t->h[m].when)
			m = r;
		if (m == i)
			break;
		heap_swap(&t->h[i], &t->h[m]);
		i = m;
	}
	return true;
}

uint64_t bench_timer_next(const struct bench_timers *t)
{
	return t->n ? t->h[0].when : UINT64_MAX;
}

void bench_timers_free(struct bench_timers *t)
{
	free(t->h);
	memset(t, 0, sizeof(*t));
}
