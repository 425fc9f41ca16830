/*
 * config/values.h - PRIVATE to config/: typed value parsers for directive
 * values (booleans, intervals, retry schedules, sizes, rates, CIDRs,
 * listener addresses, PCRE2 regexes).  config.h re-exports the types.
 *
 * Pure functions; any thread.  Each parser returns 0, or -EINVAL and
 * writes into err (always NUL-terminated, at most errlen bytes) a short
 * phrase saying what was expected, e.g. "expected a time interval such as
 * 10m or 1w2d12h".  The caller prefixes file:line and the directive name.
 * Only cfg_regex_compile allocates; cfg_regex_free releases it.
 */
#ifndef COREMTA_CONFIG_VALUES_H
#define COREMTA_CONFIG_VALUES_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CFG_SCHEDULE_MAX 30	/* PowerMTA: at most 30 retry intervals */

/* A retry schedule: intervals in seconds; the last one repeats. */
struct cfg_schedule {
	uint32_t count;			/* 1..CFG_SCHEDULE_MAX */
	uint32_t seconds[CFG_SCHEDULE_MAX];
};

#define CFG_DAILY_MAX 60	/* days in a warm-up list */
#define CFG_DAILY_UNLIMITED UINT32_MAX

/*
 * Daily message caps, one per day of a warm-up (day 1 first); the last
 * one repeats.  count 0: no cap at all.  An entry may be unlimited.
 */
struct cfg_daily {
	uint32_t count;
	uint32_t per_day[CFG_DAILY_MAX];
};

/*
 * A rate: count events per period_s seconds.  "unlimited" and "0" both
 * mean no limit (PowerMTA's meaning of 0).  Volume rates ("6g/10h",
 * max-data-volume-rate) put bytes in count and set is_volume.
 */
struct cfg_rate {
	bool unlimited;
	bool is_volume;
	uint64_t count;
	uint32_t period_s;
};

/* An IPv4 or IPv6 network; family AF_INET or AF_INET6. */
struct cfg_cidr {
	int family;
	uint8_t prefix;			/* 0..32 or 0..128 */
	uint8_t addr[16];		/* network byte order, host bits zero */
};

/* A listener address: "ADDR:PORT", "[v6]:PORT" or "*:PORT"/"0/0:PORT". */
struct cfg_sockaddr {
	struct sockaddr_storage ss;
	socklen_t len;
};

/* A compiled PCRE2 pattern and the source text it came from. */
struct cfg_regex;

int cfg_parse_bool(const char *s, bool *out, char *err, size_t errlen);
/* Unsigned integer with bounds; "unlimited" is refused (callers decide). */
int cfg_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out,
		   char *err, size_t errlen);
/* "1w2d12h", "300s", "10m", a bare number is seconds; result in seconds. */
int cfg_parse_interval(const char *s, uint64_t *seconds, char *err,
		       size_t errlen);
/* "10m,10m,1h,4h": 1..30 intervals, each > 0. */
/*
 * "50,100,200/d,400/day,unlimited": daily caps (max-cold-virtual-mta-msg
 * writes each as N/d or N/day); "unlimited" alone: no cap.
 */
int cfg_parse_daily(const char *s, struct cfg_daily *out, char *err, size_t errlen);
void cfg_daily_format(const struct cfg_daily *d, char *buf, size_t buflen);
int cfg_parse_schedule(const char *s, struct cfg_schedule *out, char *err,
		       size_t errlen);
/* "40K", "100M", "1G", "2t", "512b", bare bytes; binary multiples (1K = 1024). */
int cfg_parse_size(const char *s, uint64_t *bytes, char *err, size_t errlen);
/*
 * "500/h", "83/10m", "6/sec", "1000/day", "unlimited", "0"; volume form
 * "6g/10h" (size units before the slash) sets is_volume.  Period units:
 * s sec m min h hr d day, optionally preceded by a multiplier.
 */
int cfg_parse_rate(const char *s, struct cfg_rate *out, char *err,
		   size_t errlen);
/* "0/0", "10.1.0/24" (short IPv4 forms), "192.0.2.7", "2001:db8::/32". */
int cfg_parse_cidr(const char *s, struct cfg_cidr *out, char *err,
		   size_t errlen);
bool cfg_cidr_contains(const struct cfg_cidr *net, const struct sockaddr *sa);
/* cfg_cidr_format - canonical text ("10.1.0.0/24") into buf. */
void cfg_cidr_format(const struct cfg_cidr *c, char *buf, size_t buflen);
int cfg_parse_listen_addr(const char *s, struct cfg_sockaddr *out, char *err,
			  size_t errlen);
/*
 * "/re/" (optionally followed by flags i, x, s, m) or a plain string that
 * is compiled as-is.  Compiled once with PCRE2 (UTF, JIT when available).
 */
int cfg_regex_compile(const char *s, struct cfg_regex **out, char *err,
		      size_t errlen);
/* 1 match, 0 no match; thread-safe (match data is per call). */
int cfg_regex_match(const struct cfg_regex *re, const char *subject,
		    size_t len);
const char *cfg_regex_source(const struct cfg_regex *re);
void cfg_regex_free(struct cfg_regex *re);

/* Formatting for `coremta check --show`. */
void cfg_interval_format(uint64_t seconds, char *buf, size_t buflen);
void cfg_size_format(uint64_t bytes, char *buf, size_t buflen);
void cfg_rate_format(const struct cfg_rate *r, char *buf, size_t buflen);
void cfg_schedule_format(const struct cfg_schedule *s, char *buf,
			 size_t buflen);

#endif
