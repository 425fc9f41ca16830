/*
 * tests/config/test_values.c - the typed value parsers and formatters of
 * config/values.c, table by table: what is accepted, what it becomes,
 * what is refused and what the operator is told.
 *
 * Case structs hold their text in arrays, not pointers: Criterion copies
 * parameters into each test's own process.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "tests/lib/testlib.h"
#include "util/util.h"

#include "config/values.h"

#define KIB 1024ULL
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define TIB (1024 * GIB)
#define TEN_YEARS (3650ULL * 86400)

TestSuite(values, .timeout = 10);

/* ---- booleans ---------------------------------------------------------- */

struct bool_case {
	char in[16];
	int rc;
	bool want;
};

ParameterizedTestParameters(values, bool_table)
{
	static struct bool_case cases[] = {
		{ "yes", 0, true },	 { "no", 0, false },
		{ "true", 0, true },	 { "false", 0, false },
		{ "on", 0, true },	 { "off", 0, false },
		{ "YES", 0, true },	 { "On", 0, true },
		{ "FaLsE", 0, false },	 { "", -EINVAL, false },
		{ "y", -EINVAL, false }, { "1", -EINVAL, false },
		{ "0", -EINVAL, false }, { "yes ", -EINVAL, false },
		{ " no", -EINVAL, false }, { "yess", -EINVAL, false },
		{ "enable", -EINVAL, false },
	};
	return cr_make_param_array(struct bool_case, cases, ARRAY_SIZE(cases));
}

ParameterizedTest(struct bool_case *c, values, bool_table)
{
	bool out = !c->want;
	char err[128] = "";
	int rc = cfg_parse_bool(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc == 0)
		cr_expect_eq(out, c->want, "\"%s\"", c->in);
	else
		cr_expect_str_eq(err, "expected yes or no (or true/false, on/off)");
}

/* ---- unsigned integers -------------------------------------------------- */

struct uint_case {
	char in[32];
	uint64_t min, max;
	int rc;
	uint64_t want;
};

ParameterizedTestParameters(values, uint_table)
{
	static struct uint_case cases[] = {
		{ "0", 0, 10, 0, 0 },
		{ "10", 0, 10, 0, 10 },
		{ "007", 0, 10, 0, 7 },
		{ "18446744073709551615", 0, UINT64_MAX, 0, UINT64_MAX },
		{ "18446744073709551616", 0, UINT64_MAX, -EINVAL, 0 },
		{ "11", 0, 10, -EINVAL, 0 },
		{ "4", 5, 10, -EINVAL, 0 },
		{ "", 0, 10, -EINVAL, 0 },
		{ "-1", 0, 10, -EINVAL, 0 },
		{ "+1", 0, 10, -EINVAL, 0 },
		{ " 1", 0, 10, -EINVAL, 0 },
		{ "1 ", 0, 10, -EINVAL, 0 },
		{ "0x10", 0, 100, -EINVAL, 0 },
		{ "1e3", 0, 10000, -EINVAL, 0 },
		{ "unlimited", 0, 10, -EINVAL, 0 },
	};
	return cr_make_param_array(struct uint_case, cases, ARRAY_SIZE(cases));
}

ParameterizedTest(struct uint_case *c, values, uint_table)
{
	uint64_t out = 12345;
	char err[128] = "";
	int rc = cfg_parse_uint(c->in, c->min, c->max, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc == 0) {
		cr_expect_eq(out, c->want, "\"%s\"", c->in);
	} else {
		cr_expect_eq(out, 12345, "output touched on failure");
		cr_expect_neq(err[0], '\0', "\"%s\": no message", c->in);
	}
}

Test(values, uint_range_message)
{
	uint64_t out;
	char err[128];

	cr_assert_eq(cfg_parse_uint("11", 1, 10, &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err, "expected a whole number from 1 to 10");
	cr_assert_eq(cfg_parse_uint("x", 1, 10, &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err, "expected a whole number such as 100");
}

/* ---- intervals --------------------------------------------------------- */

struct interval_case {
	char in[40];
	int rc;
	uint64_t want;
};

ParameterizedTestParameters(values, interval_table)
{
	static struct interval_case cases[] = {
		{ "0", 0, 0 },
		{ "90", 0, 90 },
		{ "300s", 0, 300 },
		{ "10m", 0, 600 },
		{ "1h", 0, 3600 },
		{ "1H", 0, 3600 },
		{ "2d", 0, 172800 },
		{ "1w", 0, 604800 },
		{ "1w2d12h", 0, 820800 },
		{ "1w2d12h30m10s", 0, 822610 },
		{ "1h30m", 0, 5400 },
		{ "0s", 0, 0 },
		{ "3650d", 0, TEN_YEARS },
		{ "315360000", 0, TEN_YEARS },
		{ "315360001", -EINVAL, 0 },
		{ "3650d1s", -EINVAL, 0 },
		{ "3651d", -EINVAL, 0 },
		{ "99999999999999999999999s", -EINVAL, 0 },
		{ "", -EINVAL, 0 },
		{ "m", -EINVAL, 0 },
		{ "10x", -EINVAL, 0 },
		{ "10ms", -EINVAL, 0 },
		{ "1h30", -EINVAL, 0 },
		{ "30m1h", -EINVAL, 0 },
		{ "1h1h", -EINVAL, 0 },
		{ "-1s", -EINVAL, 0 },
		{ "1.5h", -EINVAL, 0 },
		{ " 1h", -EINVAL, 0 },
		{ "1h ", -EINVAL, 0 },
		{ "1 h", -EINVAL, 0 },
		{ "10min", -EINVAL, 0 },
	};
	return cr_make_param_array(struct interval_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct interval_case *c, values, interval_table)
{
	uint64_t out = 12345;
	char err[128] = "";
	int rc = cfg_parse_interval(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc == 0) {
		cr_expect_eq(out, c->want, "\"%s\": got %lu", c->in,
			     (unsigned long)out);
	} else {
		cr_expect_eq(out, 12345, "output touched on failure");
		cr_expect_neq(err[0], '\0', "\"%s\": no message", c->in);
	}
}

Test(values, interval_messages)
{
	uint64_t out;
	char err[128];

	cr_assert_eq(cfg_parse_interval("10x", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err, "expected a time interval such as 10m or 1w2d12h");
	cr_assert_eq(cfg_parse_interval("3651d", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err,
			 "expected a time interval of at most 10 years (3650d)");
}

/* ---- retry schedules ---------------------------------------------------- */

struct schedule_case {
	char in[64];
	int rc;
	uint32_t count;
	uint32_t want[4];
};

ParameterizedTestParameters(values, schedule_table)
{
	static struct schedule_case cases[] = {
		{ "10m,10m,1h,4h", 0, 4, { 600, 600, 3600, 14400 } },
		{ "10m, 1h", 0, 2, { 600, 3600 } },
		{ "10m,\t 1h", 0, 2, { 600, 3600 } },
		{ "1h", 0, 1, { 3600 } },
		{ "90,1d", 0, 2, { 90, 86400 } },
		{ "", -EINVAL, 0, { 0 } },
		{ "10m,,1h", -EINVAL, 0, { 0 } },
		{ "10m,", -EINVAL, 0, { 0 } },
		{ ",10m", -EINVAL, 0, { 0 } },
		{ "10m, ", -EINVAL, 0, { 0 } },
		{ "0s", -EINVAL, 0, { 0 } },
		{ "10m,0", -EINVAL, 0, { 0 } },
		{ "10m ,1h", -EINVAL, 0, { 0 } },
		{ "10m;1h", -EINVAL, 0, { 0 } },
		{ "10m,bad", -EINVAL, 0, { 0 } },
		{ "10m,3651d", -EINVAL, 0, { 0 } },
	};
	return cr_make_param_array(struct schedule_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct schedule_case *c, values, schedule_table)
{
	struct cfg_schedule out = { .count = 99 };
	char err[160] = "";
	int rc = cfg_parse_schedule(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d (%s)", c->in, rc, err);
	if (rc) {
		cr_expect_eq(out.count, 99, "output touched on failure");
		cr_expect_neq(err[0], '\0', "\"%s\": no message", c->in);
		return;
	}
	cr_assert_eq(out.count, c->count, "\"%s\"", c->in);
	for (uint32_t i = 0; i < c->count; i++)
		cr_expect_eq(out.seconds[i], c->want[i], "\"%s\"[%u]", c->in, i);
}

/* schedule_of - "1m,2m,...,Nm". */
static void schedule_of(unsigned n, char *buf, size_t len)
{
	size_t pos = 0;

	buf[0] = '\0';
	for (unsigned i = 1; i <= n; i++)
		pos += (size_t)snprintf(buf + pos, len - pos, "%s%um",
					i > 1 ? "," : "", i);
}

Test(values, schedule_holds_at_most_30)
{
	struct cfg_schedule out;
	char in[256], err[128];

	schedule_of(CFG_SCHEDULE_MAX, in, sizeof(in));
	cr_assert_eq(cfg_parse_schedule(in, &out, err, sizeof(err)), 0, "%s",
		     err);
	cr_expect_eq(out.count, CFG_SCHEDULE_MAX);
	cr_expect_eq(out.seconds[CFG_SCHEDULE_MAX - 1], 30 * 60);

	schedule_of(CFG_SCHEDULE_MAX + 1, in, sizeof(in));
	cr_assert_eq(cfg_parse_schedule(in, &out, err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err, "expected at most 30 retry intervals");
}

Test(values, schedule_messages_name_the_entry)
{
	struct cfg_schedule out;
	char err[160];

	cr_assert_eq(cfg_parse_schedule("10m,1h,0", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err,
			 "retry interval 3: expected an interval greater than 0");
	cr_assert_eq(cfg_parse_schedule("10m,x", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err, "retry interval 2: expected a time interval "
			      "such as 10m or 1w2d12h");
}

/* ---- sizes -------------------------------------------------------------- */

struct size_case {
	char in[32];
	int rc;
	uint64_t want;
};

ParameterizedTestParameters(values, size_table)
{
	static struct size_case cases[] = {
		{ "0", 0, 0 },
		{ "512", 0, 512 },
		{ "512b", 0, 512 },
		{ "512B", 0, 512 },
		{ "40K", 0, 40 * KIB },
		{ "40k", 0, 40 * KIB },
		{ "40kb", 0, 40 * KIB },
		{ "100M", 0, 100 * MIB },
		{ "100MB", 0, 100 * MIB },
		{ "1G", 0, GIB },
		{ "1gB", 0, GIB },
		{ "2t", 0, 2 * TIB },
		{ "16777215T", 0, 16777215 * TIB },
		{ "18446744073709551615", 0, UINT64_MAX },
		{ "16777216T", -EINVAL, 0 },
		{ "18446744073709551616", -EINVAL, 0 },
		{ "", -EINVAL, 0 },
		{ "K", -EINVAL, 0 },
		{ "10x", -EINVAL, 0 },
		{ "10kk", -EINVAL, 0 },
		{ "10bb", -EINVAL, 0 },
		{ "10kbb", -EINVAL, 0 },
		{ "10p", -EINVAL, 0 },
		{ "10KiB", -EINVAL, 0 },
		{ "-1K", -EINVAL, 0 },
		{ "1.5G", -EINVAL, 0 },
		{ "10 K", -EINVAL, 0 },
		{ "10K ", -EINVAL, 0 },
	};
	return cr_make_param_array(struct size_case, cases, ARRAY_SIZE(cases));
}

ParameterizedTest(struct size_case *c, values, size_table)
{
	uint64_t out = 12345;
	char err[128] = "";
	int rc = cfg_parse_size(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc == 0) {
		cr_expect_eq(out, c->want, "\"%s\"", c->in);
	} else {
		cr_expect_eq(out, 12345, "output touched on failure");
		cr_expect(strstr(err, "expected a size such as 40K, 100M or 1G"),
			  "\"%s\": %s", c->in, err);
	}
}

/* ---- rates -------------------------------------------------------------- */

struct rate_case {
	char in[32];
	int rc;
	bool unlimited, is_volume;
	uint64_t count;
	uint32_t period_s;
};

ParameterizedTestParameters(values, rate_table)
{
	static struct rate_case cases[] = {
		{ "1000/h", 0, false, false, 1000, 3600 },
		{ "500/hr", 0, false, false, 500, 3600 },
		{ "83/10m", 0, false, false, 83, 600 },
		{ "6/sec", 0, false, false, 6, 1 },
		{ "6/s", 0, false, false, 6, 1 },
		{ "2/seconds", 0, false, false, 2, 1 },
		{ "1/min", 0, false, false, 1, 60 },
		{ "1/Minute", 0, false, false, 1, 60 },
		{ "5/HOURS", 0, false, false, 5, 3600 },
		{ "1000/day", 0, false, false, 1000, 86400 },
		{ "1000/2days", 0, false, false, 1000, 172800 },
		{ "1000/1h", 0, false, false, 1000, 3600 },
		{ "6g/10h", 0, false, true, 6 * GIB, 36000 },
		{ "100M/h", 0, false, true, 100 * MIB, 3600 },
		{ "100MB/m", 0, false, true, 100 * MIB, 60 },
		{ "1000b/h", 0, false, true, 1000, 3600 },
		{ "1/3650d", 0, false, false, 1, TEN_YEARS },
		{ "unlimited", 0, true, false, 0, 0 },
		{ "UNLIMITED", 0, true, false, 0, 0 },
		{ "0", 0, true, false, 0, 0 },
		{ "0/h", 0, true, false, 0, 0 },
		{ "0g/h", 0, true, false, 0, 0 },
		{ .in = "", .rc = -EINVAL },
		{ .in = "1000", .rc = -EINVAL },
		{ .in = "00", .rc = -EINVAL },
		{ .in = "1000/", .rc = -EINVAL },
		{ .in = "/h", .rc = -EINVAL },
		{ .in = "1000/x", .rc = -EINVAL },
		{ .in = "1000/hh", .rc = -EINVAL },
		{ .in = "1000/0h", .rc = -EINVAL },
		{ .in = "0/0h", .rc = -EINVAL },
		{ .in = "1000/10", .rc = -EINVAL },
		{ .in = "1000/10ms", .rc = -EINVAL },
		{ .in = "1000/w", .rc = -EINVAL },
		{ .in = "1000/3651d", .rc = -EINVAL },
		{ .in = "-1/h", .rc = -EINVAL },
		{ .in = "1x/h", .rc = -EINVAL },
		{ .in = "1000/h ", .rc = -EINVAL },
		{ .in = "1000 /h", .rc = -EINVAL },
		{ .in = "1000/h/h", .rc = -EINVAL },
		{ .in = "18446744073709551616/h", .rc = -EINVAL },
		{ .in = "16777216t/h", .rc = -EINVAL },
		{ .in = "unlimited/h", .rc = -EINVAL },
	};
	return cr_make_param_array(struct rate_case, cases, ARRAY_SIZE(cases));
}

ParameterizedTest(struct rate_case *c, values, rate_table)
{
	struct cfg_rate out = { .count = 12345 };
	char err[128] = "";
	int rc = cfg_parse_rate(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc) {
		cr_expect_eq(out.count, 12345, "output touched on failure");
		cr_expect_neq(err[0], '\0', "\"%s\": no message", c->in);
		return;
	}
	cr_expect_eq(out.unlimited, c->unlimited, "\"%s\"", c->in);
	cr_expect_eq(out.is_volume, c->is_volume, "\"%s\"", c->in);
	cr_expect_eq(out.count, c->count, "\"%s\"", c->in);
	cr_expect_eq(out.period_s, c->period_s, "\"%s\"", c->in);
}

Test(values, rate_messages)
{
	struct cfg_rate out;
	char err[128];

	cr_assert_eq(cfg_parse_rate("1000", &out, err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err,
			 "expected a rate such as 500/h, 83/10m, 6g/10h or unlimited");
	cr_assert_eq(cfg_parse_rate("1000/w", &out, err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err, "expected a period unit (s, m, h or d) after the "
			      "slash, e.g. 500/h or 83/10m");
}

/* ---- CIDRs -------------------------------------------------------------- */

struct cidr_case {
	char in[48];
	int rc;
	int family;
	unsigned prefix;
	char canon[48];
};

ParameterizedTestParameters(values, cidr_table)
{
	static struct cidr_case cases[] = {
		{ "192.0.2.7", 0, AF_INET, 32, "192.0.2.7/32" },
		{ "10.1.0/24", 0, AF_INET, 24, "10.1.0.0/24" },
		{ "10.1/16", 0, AF_INET, 16, "10.1.0.0/16" },
		{ "10/8", 0, AF_INET, 8, "10.0.0.0/8" },
		{ "0/0", 0, AF_INET, 0, "0.0.0.0/0" },
		{ "0.0.0.0/0", 0, AF_INET, 0, "0.0.0.0/0" },
		{ "10.1.2.3/16", 0, AF_INET, 16, "10.1.0.0/16" },
		{ "192.0.2.7/31", 0, AF_INET, 31, "192.0.2.6/31" },
		{ "192.0.2.255/25", 0, AF_INET, 25, "192.0.2.128/25" },
		{ "255.255.255.255/1", 0, AF_INET, 1, "128.0.0.0/1" },
		{ "192.0.2.7/32", 0, AF_INET, 32, "192.0.2.7/32" },
		{ "::/0", 0, AF_INET6, 0, "::/0" },
		{ "2001:db8::/32", 0, AF_INET6, 32, "2001:db8::/32" },
		{ "2001:DB8::1", 0, AF_INET6, 128, "2001:db8::1/128" },
		{ "2001:db8:ffff::/33", 0, AF_INET6, 33, "2001:db8:8000::/33" },
		{ "2001:db8::1/64", 0, AF_INET6, 64, "2001:db8::/64" },
		{ "::ffff:192.0.2.7", 0, AF_INET6, 128, "::ffff:192.0.2.7/128" },
		{ .in = "", .rc = -EINVAL },
		{ .in = "10.1", .rc = -EINVAL },
		{ .in = "10", .rc = -EINVAL },
		{ .in = "256.0.0.0", .rc = -EINVAL },
		{ .in = "1.2.3.4.5", .rc = -EINVAL },
		{ .in = "10.01.0.0/16", .rc = -EINVAL },
		{ .in = "10..0/16", .rc = -EINVAL },
		{ .in = "10.1./16", .rc = -EINVAL },
		{ .in = ".10/8", .rc = -EINVAL },
		{ .in = "10.1.0.0/33", .rc = -EINVAL },
		{ .in = "::/129", .rc = -EINVAL },
		{ .in = "1.2.3.4/", .rc = -EINVAL },
		{ .in = "1.2.3.4/x", .rc = -EINVAL },
		{ .in = "1.2.3.4/-1", .rc = -EINVAL },
		{ .in = "1.2.3.4/24/8", .rc = -EINVAL },
		{ .in = "/24", .rc = -EINVAL },
		{ .in = "-1.0.0.0", .rc = -EINVAL },
		{ .in = "10.1.0.0/24 ", .rc = -EINVAL },
		{ .in = " 10.1.0.0", .rc = -EINVAL },
		{ .in = "2001:db8::g/32", .rc = -EINVAL },
		{ .in = "2001:db8:::1", .rc = -EINVAL },
		{ .in = "[2001:db8::]/32", .rc = -EINVAL },
		{ .in = "fe80::1%eth0", .rc = -EINVAL },
		{ .in = "example.com", .rc = -EINVAL },
	};
	return cr_make_param_array(struct cidr_case, cases, ARRAY_SIZE(cases));
}

ParameterizedTest(struct cidr_case *c, values, cidr_table)
{
	struct cfg_cidr out = { .family = -1 };
	char err[160] = "", canon[64];
	int rc = cfg_parse_cidr(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc) {
		cr_expect_eq(out.family, -1, "output touched on failure");
		cr_expect_neq(err[0], '\0', "\"%s\": no message", c->in);
		return;
	}
	cr_expect_eq(out.family, c->family, "\"%s\"", c->in);
	cr_expect_eq(out.prefix, c->prefix, "\"%s\"", c->in);
	cfg_cidr_format(&out, canon, sizeof(canon));
	cr_expect_str_eq(canon, c->canon, "\"%s\"", c->in);
}

Test(values, cidr_messages)
{
	struct cfg_cidr out;
	char err[160];

	cr_assert_eq(cfg_parse_cidr("10.1", &out, err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err,
			 "a short IPv4 form needs a prefix length, e.g. 10.1/16");
	cr_assert_eq(cfg_parse_cidr("10.0.0.0/40", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err,
			 "expected a prefix length from 0 to 32 after the slash");
}

/* cidr_contains_case - addr is written v4, v6, or v4 as "::ffff:a.b.c.d". */
struct contains_case {
	char net[48];
	char addr[48];
	bool want;
};

/* sockaddr_of - a sockaddr_in or sockaddr_in6 by the address's spelling. */
static void sockaddr_of(const char *text, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(text, ':')) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		cr_assert_eq(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1,
			     "%s", text);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		cr_assert_eq(inet_pton(AF_INET, text, &sin->sin_addr), 1, "%s",
			     text);
	}
}

ParameterizedTestParameters(values, cidr_contains_table)
{
	static struct contains_case cases[] = {
		{ "10.1.0/24", "10.1.0.0", true },
		{ "10.1.0/24", "10.1.0.255", true },
		{ "10.1.0/24", "10.1.1.0", false },
		{ "10.1.0/24", "9.1.0.1", false },
		{ "192.0.2.128/25", "192.0.2.200", true },
		{ "192.0.2.128/25", "192.0.2.127", false },
		{ "192.0.2.7", "192.0.2.7", true },
		{ "192.0.2.7", "192.0.2.6", false },
		{ "0/0", "203.0.113.9", true },
		{ "10.1.0/24", "::ffff:10.1.0.9", true },
		{ "10.1.0/24", "::ffff:10.1.1.9", false },
		{ "0/0", "::ffff:203.0.113.9", true },
		{ "0/0", "2001:db8::1", false },
		{ "10.0.0.1", "::a00:1", false },
		{ "2001:db8::/32", "2001:db8:1234::1", true },
		{ "2001:db8::/32", "2001:db9::1", false },
		{ "2001:db8:8000::/33", "2001:db8:ffff::1", true },
		{ "2001:db8:8000::/33", "2001:db8:7fff::1", false },
		{ "::1", "::1", true },
		{ "::1", "::2", false },
		{ "::/0", "2001:db8::1", true },
		{ "::/0", "192.0.2.7", false },
		{ "::/0", "::ffff:192.0.2.7", false },
	};
	return cr_make_param_array(struct contains_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct contains_case *c, values, cidr_contains_table)
{
	struct sockaddr_storage ss;
	struct cfg_cidr net;
	char err[160];

	cr_assert_eq(cfg_parse_cidr(c->net, &net, err, sizeof(err)), 0, "%s",
		     err);
	sockaddr_of(c->addr, &ss);
	cr_expect_eq(cfg_cidr_contains(&net, (struct sockaddr *)&ss), c->want,
		     "%s in %s", c->addr, c->net);
}

Test(values, cidr_contains_refuses_other_families)
{
	struct sockaddr_storage ss = { .ss_family = AF_UNIX };
	struct cfg_cidr net;
	char err[160];

	cr_assert_eq(cfg_parse_cidr("0/0", &net, err, sizeof(err)), 0);
	cr_expect_not(cfg_cidr_contains(&net, (struct sockaddr *)&ss));
	cr_expect_not(cfg_cidr_contains(&net, NULL));
}

Test(values, cidr_format_truncates_safely)
{
	struct cfg_cidr net;
	char err[160], buf[8];

	cr_assert_eq(cfg_parse_cidr("10.1.0/24", &net, err, sizeof(err)), 0);
	cfg_cidr_format(&net, buf, sizeof(buf));
	cr_expect_str_eq(buf, "10.1.0.");
}

/* ---- listener addresses ------------------------------------------------ */

struct listen_case {
	char in[48];
	int rc;
	int family;
	char addr[48];
	uint16_t port;
};

ParameterizedTestParameters(values, listen_table)
{
	static struct listen_case cases[] = {
		{ "127.0.0.1:2525", 0, AF_INET, "127.0.0.1", 2525 },
		{ "0.0.0.0:25", 0, AF_INET, "0.0.0.0", 25 },
		{ "*:25", 0, AF_INET, "0.0.0.0", 25 },
		{ "0/0:25", 0, AF_INET, "0.0.0.0", 25 },
		{ "192.0.2.7:65535", 0, AF_INET, "192.0.2.7", 65535 },
		{ "10.0.0.1:1", 0, AF_INET, "10.0.0.1", 1 },
		{ "[::1]:2525", 0, AF_INET6, "::1", 2525 },
		{ "[::]:25", 0, AF_INET6, "::", 25 },
		{ "[2001:db8::7]:587", 0, AF_INET6, "2001:db8::7", 587 },
		{ .in = "", .rc = -EINVAL },
		{ .in = "127.0.0.1", .rc = -EINVAL },
		{ .in = "127.0.0.1:", .rc = -EINVAL },
		{ "127.0.0.1:0", 0, AF_INET, "127.0.0.1", 0 },	/* the kernel picks */
		{ .in = "127.0.0.1:65536", .rc = -EINVAL },
		{ .in = "127.0.0.1:-1", .rc = -EINVAL },
		{ .in = "127.0.0.1:25x", .rc = -EINVAL },
		{ .in = "127.0.0.1: 25", .rc = -EINVAL },
		{ .in = ":25", .rc = -EINVAL },
		{ .in = "*:", .rc = -EINVAL },
		{ .in = "**:25", .rc = -EINVAL },
		{ .in = "::1:25", .rc = -EINVAL },
		{ .in = "[::1]", .rc = -EINVAL },
		{ .in = "[::1]25", .rc = -EINVAL },
		{ .in = "[::1:25", .rc = -EINVAL },
		{ .in = "[]:25", .rc = -EINVAL },
		{ .in = "[1.2.3.4]:25", .rc = -EINVAL },
		{ .in = "1.2.3:25", .rc = -EINVAL },
		{ .in = "10.0.0.0/8:25", .rc = -EINVAL },
		{ .in = "localhost:25", .rc = -EINVAL },
	};
	return cr_make_param_array(struct listen_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct listen_case *c, values, listen_table)
{
	struct cfg_sockaddr out = { .len = 12345 };
	char err[160] = "", text[INET6_ADDRSTRLEN];
	int rc = cfg_parse_listen_addr(c->in, &out, err, sizeof(err));

	cr_assert_eq(rc, c->rc, "\"%s\": rc %d", c->in, rc);
	if (rc) {
		cr_expect_eq(out.len, 12345, "output touched on failure");
		cr_expect_neq(err[0], '\0', "\"%s\": no message", c->in);
		return;
	}
	cr_assert_eq(out.ss.ss_family, c->family, "\"%s\"", c->in);
	if (c->family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&out.ss;

		cr_expect_eq(out.len, sizeof(*sin));
		cr_expect_eq(ntohs(sin->sin_port), c->port);
		inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out.ss;

		cr_expect_eq(out.len, sizeof(*sin6));
		cr_expect_eq(ntohs(sin6->sin6_port), c->port);
		inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
	}
	cr_expect_str_eq(text, c->addr, "\"%s\"", c->in);
}

Test(values, listen_messages)
{
	struct cfg_sockaddr out;
	char err[160];

	cr_assert_eq(cfg_parse_listen_addr("::1:25", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err,
			 "expected an IPv6 address in brackets, e.g. [::1]:2525");
	cr_assert_eq(cfg_parse_listen_addr("0.0.0.0:65536", &out, err, sizeof(err)),
		     -EINVAL);
	cr_expect_str_eq(err, "expected a port from 0 to 65535 after the colon");
}

/* ---- regular expressions ------------------------------------------------ */

struct regex_case {
	char re[48];
	char subject[48];
	bool want;
};

ParameterizedTestParameters(values, regex_table)
{
	static struct regex_case cases[] = {
		{ "/5\\.1\\.[1346]/", "550 5.1.1 user unknown", true },
		{ "/5\\.1\\.[1346]/", "550 5.1.2 bad domain", false },
		{ "5\\.2\\.2", "552 5.2.2 mailbox full", true },
		{ "5\\.2\\.2", "552 5x2x2 mailbox full", false },
		{ "/user unknown/i", "550 USER UNKNOWN", true },
		{ "/user unknown/", "550 USER UNKNOWN", false },
		{ "/^b/m", "a\nb", true },
		{ "/^b/", "a\nb", false },
		{ "/a.b/s", "a\nb", true },
		{ "/a.b/", "a\nb", false },
		{ "/a b c/x", "abc", true },
		{ "/a b c/", "abc", false },
		{ "/^B.C$/ims", "x\nb\nc", true },
		{ "/a/b/", "xa/by", true },
		{ "/a\\/b/", "xa/by", true },
		{ "/é/i", "CAFÉ", true },
		{ "/^.{4}$/", "café", true },
		{ "/abc/", "\xff\xfe abc", true },
		{ "/^\\d{3}/", "421 try later", true },
		{ "(a)(b)(c)(d)", "abcd", true },
		{ "/^$/m", "", true },
		/* PowerMTA's catch-all `// other` */
		{ "//", "", true },
		{ "//", "5.9.9;anything at all", true },
		{ "//i", "X", true },
	};
	return cr_make_param_array(struct regex_case, cases, ARRAY_SIZE(cases));
}

ParameterizedTest(struct regex_case *c, values, regex_table)
{
	struct cfg_regex *re = NULL;
	char err[160] = "";

	cr_assert_eq(cfg_regex_compile(c->re, &re, err, sizeof(err)), 0,
		     "%s: %s", c->re, err);
	cr_expect_str_eq(cfg_regex_source(re), c->re);
	cr_expect_eq(cfg_regex_match(re, c->subject, strlen(c->subject)),
		     c->want, "%s =~ \"%s\"", c->re, c->subject);
	cfg_regex_free(re);
}

struct regex_error_case {
	char re[32];
	char err[96];	/* a substring of the message */
};

ParameterizedTestParameters(values, regex_error_table)
{
	static struct regex_error_case cases[] = {
		{ "/(abc/", "bad regular expression at offset 4: missing closing parenthesis" },
		{ "(abc", "bad regular expression at offset 4: missing closing parenthesis" },
		{ "/a[b/", "bad regular expression at offset 3: missing terminating ]" },
		{ "/abc/g", "unknown regular expression flag 'g'; expected i, m, s or x" },
		{ "/abc/I", "unknown regular expression flag 'I'" },
		{ "/abc/i ", "unknown regular expression flag ' '" },
		{ "/abc", "expected a closing slash" },
		{ "/", "expected a closing slash" },
		{ "", "expected a non-empty regular expression" },
		{ "/\xff/", "bad regular expression at offset 0" },
		{ "*a", "bad regular expression at offset 0" },
	};
	return cr_make_param_array(struct regex_error_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct regex_error_case *c, values, regex_error_table)
{
	struct cfg_regex *re = (struct cfg_regex *)c;	/* must stay untouched */
	char err[160] = "";

	cr_assert_eq(cfg_regex_compile(c->re, &re, err, sizeof(err)), -EINVAL,
		     "\"%s\" compiled", c->re);
	cr_expect_eq(re, (struct cfg_regex *)c);
	cr_expect(strstr(err, c->err), "\"%s\": got \"%s\"", c->re, err);
}

Test(values, regex_match_honours_length)
{
	struct cfg_regex *re;
	char err[160];

	cr_assert_eq(cfg_regex_compile("/full$/", &re, err, sizeof(err)), 0);
	cr_expect(cfg_regex_match(re, "mailbox full of junk", 12));
	cr_expect_not(cfg_regex_match(re, "mailbox full of junk", 11));
	cr_expect_not(cfg_regex_match(re, "mailbox full of junk", 20));
	cr_expect_not(cfg_regex_match(re, NULL, 0));
	cfg_regex_free(re);
	cfg_regex_free(NULL);
}

struct regex_thread_arg {
	const struct cfg_regex *re;
	int hits;
};

static void *regex_thread(void *p)
{
	struct regex_thread_arg *a = p;
	static const char yes[] = "550 5.1.1 <x@example.com>: user unknown";
	static const char no[] = "250 2.0.0 ok queued";

	for (int i = 0; i < 2000; i++) {
		a->hits += cfg_regex_match(a->re, yes, sizeof(yes) - 1);
		a->hits += cfg_regex_match(a->re, no, sizeof(no) - 1);
	}
	return NULL;
}

Test(values, regex_is_shared_by_threads)
{
	struct regex_thread_arg args[4];
	pthread_t tids[4];
	struct cfg_regex *re;
	char err[160];

	cr_assert_eq(cfg_regex_compile("/5\\.1\\.1.*unknown/i", &re, err,
				       sizeof(err)), 0);
	for (int i = 0; i < 4; i++) {
		args[i] = (struct regex_thread_arg){ .re = re };
		cr_assert_eq(pthread_create(&tids[i], NULL, regex_thread,
					    &args[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(tids[i], NULL);
		cr_expect_eq(args[i].hits, 2000);
	}
	cfg_regex_free(re);
}

/* ---- formatters ---------------------------------------------------------- */

struct interval_fmt_case {
	uint64_t seconds;
	char want[32];
};

ParameterizedTestParameters(values, interval_format_table)
{
	static struct interval_fmt_case cases[] = {
		{ 0, "0s" },	   { 1, "1s" },	     { 59, "59s" },
		{ 60, "1m" },	   { 90, "1m30s" },  { 3600, "1h" },
		{ 5400, "1h30m" }, { 86400, "1d" },  { 604800, "1w" },
		{ 820800, "1w2d12h" },		     { 822610, "1w2d12h30m10s" },
		{ 3601, "1h1s" },  { TEN_YEARS, "521w3d" },
	};
	return cr_make_param_array(struct interval_fmt_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct interval_fmt_case *c, values, interval_format_table)
{
	char buf[32];
	uint64_t back;

	cfg_interval_format(c->seconds, buf, sizeof(buf));
	cr_expect_str_eq(buf, c->want);
	cr_assert_eq(cfg_parse_interval(buf, &back, NULL, 0), 0, "%s", buf);
	cr_expect_eq(back, c->seconds, "%s does not read back", buf);
}

struct size_fmt_case {
	uint64_t bytes;
	char want[32];
};

ParameterizedTestParameters(values, size_format_table)
{
	static struct size_fmt_case cases[] = {
		{ 0, "0b" },
		{ 512, "512b" },
		{ 1536, "1536b" },
		{ 1024, "1K" },
		{ 40 * KIB, "40K" },
		{ MIB + KIB, "1025K" },
		{ 100 * MIB, "100M" },
		{ GIB, "1G" },
		{ 2 * TIB, "2T" },
		{ 1024 * TIB, "1024T" },
		{ UINT64_MAX, "18446744073709551615b" },
	};
	return cr_make_param_array(struct size_fmt_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct size_fmt_case *c, values, size_format_table)
{
	char buf[32];
	uint64_t back;

	cfg_size_format(c->bytes, buf, sizeof(buf));
	cr_expect_str_eq(buf, c->want);
	cr_assert_eq(cfg_parse_size(buf, &back, NULL, 0), 0, "%s", buf);
	cr_expect_eq(back, c->bytes, "%s does not read back", buf);
}

struct rate_fmt_case {
	char in[32];
	char want[32];
};

ParameterizedTestParameters(values, rate_format_table)
{
	static struct rate_fmt_case cases[] = {
		{ "1000/h", "1000/h" },	    { "1000/hour", "1000/h" },
		{ "83/10m", "83/10m" },	    { "6/sec", "6/s" },
		{ "1000/day", "1000/d" },   { "1000/24h", "1000/d" },
		{ "5/90s", "5/90s" },	    { "5/120s", "5/2m" },
		{ "1/min", "1/m" },	    { "unlimited", "unlimited" },
		{ "0", "unlimited" },	    { "0/h", "unlimited" },
		{ "6g/10h", "6G/10h" },	    { "100MB/h", "100M/h" },
		{ "1000b/h", "1000b/h" },   { "1000/7d", "1000/7d" },
	};
	return cr_make_param_array(struct rate_fmt_case, cases,
				   ARRAY_SIZE(cases));
}

ParameterizedTest(struct rate_fmt_case *c, values, rate_format_table)
{
	struct cfg_rate r, back;
	char buf[32];

	cr_assert_eq(cfg_parse_rate(c->in, &r, NULL, 0), 0, "%s", c->in);
	cfg_rate_format(&r, buf, sizeof(buf));
	cr_expect_str_eq(buf, c->want);
	cr_assert_eq(cfg_parse_rate(buf, &back, NULL, 0), 0, "%s", buf);
	cr_expect(back.unlimited == r.unlimited &&
		  back.is_volume == r.is_volume && back.count == r.count &&
		  back.period_s == r.period_s, "%s does not read back", buf);
}

Test(values, schedule_format_reads_back)
{
	struct cfg_schedule s, back;
	char buf[64];

	cr_assert_eq(cfg_parse_schedule("10m, 600s,1h,240m", &s, NULL, 0), 0);
	cfg_schedule_format(&s, buf, sizeof(buf));
	cr_expect_str_eq(buf, "10m,10m,1h,4h");
	cr_assert_eq(cfg_parse_schedule(buf, &back, NULL, 0), 0);
	cr_expect_eq(back.count, s.count);
	cr_expect_arr_eq(back.seconds, s.seconds, s.count * sizeof(s.seconds[0]));
}

Test(values, formatters_truncate_and_terminate)
{
	struct cfg_schedule s;
	char buf[8];

	cfg_interval_format(822610, buf, 4);
	cr_expect_str_eq(buf, "1w2");

	memset(buf, 'x', sizeof(buf));
	cfg_size_format(40 * KIB, buf, 0);
	cr_expect_eq(buf[0], 'x', "wrote into a zero-length buffer");

	cr_assert_eq(cfg_parse_schedule("10m,10m,1h,4h", &s, NULL, 0), 0);
	cfg_schedule_format(&s, buf, sizeof(buf));
	cr_expect_str_eq(buf, "10m,10m");
}

/* ---- the err buffer ------------------------------------------------------ */

Test(values, err_is_bounded_and_optional)
{
	char err[8];
	uint64_t out;

	memset(err, 'x', sizeof(err));
	cr_assert_eq(cfg_parse_size("bogus", &out, err, sizeof(err)), -EINVAL);
	cr_expect_str_eq(err, "expecte");
	cr_expect_eq(cfg_parse_size("bogus", &out, NULL, 0), -EINVAL);
	cr_expect_eq(cfg_parse_interval("bogus", &out, err, 0), -EINVAL);
}

Test(values, uint_bad_bounds_are_a_bug, .signal = SIGABRT)
{
	testlib_expect_death();
	uint64_t out;

	cfg_parse_uint("5", 10, 1, &out, NULL, 0);
}
