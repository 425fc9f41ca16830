/*
 * config/values.c - typed parsers and formatters for directive values.
 *
 * Owns the text forms of booleans, numbers, intervals, retry schedules,
 * sizes, rates, CIDRs, listener addresses and regexes: what is accepted,
 * what each refusal says, and the canonical form `coremta check` prints.
 *
 * Pure functions; any thread may call them.  Only cfg_regex_compile
 * allocates.  The internal helpers work on [p, end) ranges so the list
 * and rate parsers can reuse them without copying, and they return
 * -EINVAL (bad syntax) or -ERANGE (too large) without text: only the
 * public functions decide what the operator reads.  Outputs are written
 * only on success.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "util/util.h"

#include "config/values.h"

/* Ten 365-day years: longer than any sane retry or rate period. */
#define INTERVAL_MAX_S (10ULL * 365 * 86400)

/*
 * Per-match interpreter memory cap.  Subjects are remote SMTP replies and
 * bounce texts, so a bad pattern must not let a peer grow our heap; the
 * PCRE2 default is 20 GB.  The JIT path uses its own small stack.
 */
#define REGEX_HEAP_LIMIT_KIB 16384

static const char interval_expected[] =
	"expected a time interval such as 10m or 1w2d12h";
static const char size_expected[] = "expected a size such as 40K, 100M or 1G";
static const char rate_expected[] =
	"expected a rate such as 500/h, 83/10m, 6g/10h or unlimited";
static const char cidr_expected[] =
	"expected an IPv4 or IPv6 address or network such as 192.0.2.7, "
	"10.1.0/24 or 2001:db8::/32";
static const char listen_expected[] =
	"expected ADDRESS:PORT such as 0.0.0.0:25, *:25 or [::1]:2525";

/* fail - write the operator's message into err (if any) and refuse. */
static int UTIL_PRINTF(3, 4) fail(char *err, size_t errlen, const char *fmt,
				  ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* The C library's ctype answers per locale; config syntax is ASCII. */
static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* range_ieq - [p, end) equals word, ignoring ASCII case. */
static bool range_ieq(const char *p, const char *end, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(end - p) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower(p[i]) != lower(word[i]))
			return false;
	return true;
}

/*
 * parse_digits - decimal digits at *pp (at least one), advancing *pp.
 * No sign, no blanks, no base prefix: strtoull would accept all three.
 */
static int parse_digits(const char **pp, const char *end, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0;

	if (p == end || !is_digit(*p))
		return -EINVAL;
	for (; p < end && is_digit(*p); p++) {
		unsigned d = (unsigned)(*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*pp = p;
	*out = v;
	return 0;
}

/* parse_number - [p, end) is nothing but a decimal number. */
static int parse_number(const char *p, const char *end, uint64_t *out)
{
	int rc = parse_digits(&p, end, out);

	if (rc)
		return rc;
	return p == end ? 0 : -EINVAL;
}

int cfg_parse_bool(const char *s, bool *out, char *err, size_t errlen)
{
	static const char *const yes[] = { "yes", "true", "on" };
	static const char *const no[] = { "no", "false", "off" };

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (str_ieq(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (str_ieq(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return fail(err, errlen, "expected yes or no (or true/false, on/off)");
}

int cfg_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out,
		   char *err, size_t errlen)
{
	uint64_t v;
	int rc;

	BUG_ON(min > max);
	rc = parse_number(s, s + strlen(s), &v);
	if (rc == -EINVAL)
		return fail(err, errlen, "expected a whole number such as 100");
	if (rc || v < min || v > max)
		return fail(err, errlen,
			    "expected a whole number from %" PRIu64 " to %" PRIu64,
			    min, max);
	*out = v;
	return 0;
}

/* Interval units, largest first; a value must use them in this order. */
static const struct interval_unit {
	char name;
	uint32_t seconds;
} interval_units[] = {
	{ 'w', 7 * 86400 },
	{ 'd', 86400 },
	{ 'h', 3600 },
	{ 'm', 60 },
	{ 's', 1 },
};

/*
 * parse_interval - [p, end) to seconds.  Units must appear largest first
 * and at most once: "30m1h" or "1m1m" is more likely a typo than intent.
 * A bare number is seconds, but "1h30" is refused as ambiguous.
 */
static int parse_interval(const char *p, const char *end, uint64_t *out)
{
	uint64_t total = 0;
	size_t next = 0;

	do {
		uint64_t n;
		size_t i;
		int rc = parse_digits(&p, end, &n);

		if (rc)
			return rc;
		if (p == end && next == 0) {
			if (n > INTERVAL_MAX_S)
				return -ERANGE;
			*out = n;
			return 0;
		}
		if (p == end)
			return -EINVAL;
		for (i = next; i < ARRAY_SIZE(interval_units); i++)
			if (lower(*p) == interval_units[i].name)
				break;
		if (i == ARRAY_SIZE(interval_units))
			return -EINVAL;
		p++;
		if (n > INTERVAL_MAX_S / interval_units[i].seconds)
			return -ERANGE;
		total += n * interval_units[i].seconds;
		if (total > INTERVAL_MAX_S)
			return -ERANGE;
		next = i + 1;
	} while (p < end);
	*out = total;
	return 0;
}

int cfg_parse_interval(const char *s, uint64_t *seconds, char *err,
		       size_t errlen)
{
	uint64_t v;
	int rc = parse_interval(s, s + strlen(s), &v);

	if (rc == -ERANGE)
		return fail(err, errlen,
			    "expected a time interval of at most 10 years (3650d)");
	if (rc)
		return fail(err, errlen, "%s", interval_expected);
	*seconds = v;
	return 0;
}

int cfg_parse_daily(const char *s, struct cfg_daily *out, char *err, size_t errlen)
{
	struct cfg_daily d = { 0 };
	const char *p = s, *end = s + strlen(s);

	if (strcasecmp(s, "unlimited") == 0) {
		*out = d;
		return 0;
	}
	for (;;) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *stop = comma ? comma : end;
		size_t n = (size_t)(stop - p);
		char *num_end;

		if (d.count == CFG_DAILY_MAX)
			return fail(err, errlen, "expected at most %d daily caps", CFG_DAILY_MAX);
		if (n == 9 && strncasecmp(p, "unlimited", 9) == 0) {
			d.per_day[d.count++] = CFG_DAILY_UNLIMITED;
		} else {
			errno = 0;
			unsigned long long v = p < stop && *p >= '0' && *p <= '9'
					       ? strtoull(p, &num_end, 10) : (num_end = (char *)p, 0);
			size_t rest = (size_t)(stop - num_end);
			if (num_end == p || errno || v >= CFG_DAILY_UNLIMITED ||
			    !(rest == 0 || (rest == 2 && strncasecmp(num_end, "/d", 2) == 0) ||
			      (rest == 4 && strncasecmp(num_end, "/day", 4) == 0)))
				return fail(err, errlen,
					    "daily cap %u: expected a count of messages per day "
					    "(N, N/d or N/day) or unlimited, as in 50/d,100/d,500/d",
					    d.count + 1);
			d.per_day[d.count++] = (uint32_t)v;
		}
		if (!comma)
			break;
		for (p = comma + 1; p < end && (*p == ' ' || *p == '\t'); p++)
			;
	}
	*out = d;
	return 0;
}

int cfg_parse_schedule(const char *s, struct cfg_schedule *out, char *err,
		       size_t errlen)
{
	struct cfg_schedule sch = { 0 };
	const char *p = s, *end = s + strlen(s);

	for (;;) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *stop = comma ? comma : end;
		uint64_t v;
		int rc;

		if (sch.count == CFG_SCHEDULE_MAX)
			return fail(err, errlen,
				    "expected at most %d retry intervals",
				    CFG_SCHEDULE_MAX);
		if (p == stop)
			return fail(err, errlen,
				    "retry interval %u is empty; expected a list "
				    "such as 10m,10m,1h,4h", sch.count + 1);
		rc = parse_interval(p, stop, &v);
		if (rc == -ERANGE)
			return fail(err, errlen,
				    "retry interval %u: expected at most 10 years "
				    "(3650d)", sch.count + 1);
		if (rc)
			return fail(err, errlen, "retry interval %u: %s",
				    sch.count + 1, interval_expected);
		if (v == 0)
			return fail(err, errlen,
				    "retry interval %u: expected an interval "
				    "greater than 0", sch.count + 1);
		sch.seconds[sch.count++] = (uint32_t)v;
		if (!comma)
			break;
		/* "10m, 1h" reads naturally; allow blanks after a comma. */
		for (p = comma + 1; p < end && (*p == ' ' || *p == '\t'); p++)
			;
	}
	*out = sch;
	return 0;
}

/*
 * parse_size - [p, end) to bytes: digits, then nothing or b (bytes), or
 * k, m, g, t with an optional trailing b ("100MB").  Binary multiples.
 */
static int parse_size(const char *p, const char *end, uint64_t *out)
{
	static const char units[] = "kmgt";
	uint64_t n, mult = 1;
	int rc = parse_digits(&p, end, &n);

	if (rc)
		return rc;
	if (p < end) {
		char c = lower(*p);
		const char *u = memchr(units, c, sizeof(units) - 1);

		if (c == 'b') {
			p++;
		} else if (u) {
			mult = 1ULL << (10 * (u - units + 1));
			p++;
			if (p < end && lower(*p) == 'b')
				p++;
		}
	}
	if (p != end)
		return -EINVAL;
	if (n > UINT64_MAX / mult)
		return -ERANGE;
	*out = n * mult;
	return 0;
}

int cfg_parse_size(const char *s, uint64_t *bytes, char *err, size_t errlen)
{
	uint64_t v;
	int rc = parse_size(s, s + strlen(s), &v);

	if (rc == -ERANGE)
		return fail(err, errlen, "size too large; %s", size_expected);
	if (rc)
		return fail(err, errlen, "%s", size_expected);
	*bytes = v;
	return 0;
}

/* Rate period units; "m" is a minute here but a megabyte in a size. */
static const struct period_unit {
	const char *name;
	uint32_t seconds;
} period_units[] = {
	{ "s", 1 },	  { "sec", 1 },	    { "second", 1 },  { "seconds", 1 },
	{ "m", 60 },	  { "min", 60 },    { "minute", 60 }, { "minutes", 60 },
	{ "h", 3600 },	  { "hr", 3600 },   { "hour", 3600 }, { "hours", 3600 },
	{ "d", 86400 },	  { "day", 86400 }, { "days", 86400 },
};

int cfg_parse_rate(const char *s, struct cfg_rate *out, char *err,
		   size_t errlen)
{
	const char *end = s + strlen(s);
	const char *slash = memchr(s, '/', (size_t)(end - s));
	const struct period_unit *unit = NULL;
	struct cfg_rate r = { 0 };
	uint64_t count, mult = 1;
	const char *p;
	int rc;

	if (str_ieq(s, "unlimited") || strcmp(s, "0") == 0) {
		r.unlimited = true;
		*out = r;
		return 0;
	}
	if (!slash)
		return fail(err, errlen, "%s", rate_expected);

	/* A size unit before the slash makes it a volume rate ("6g/10h"). */
	r.is_volume = slash > s && is_alpha(slash[-1]);
	rc = r.is_volume ? parse_size(s, slash, &count) :
			   parse_number(s, slash, &count);
	if (rc == -ERANGE)
		return fail(err, errlen, "rate too large; %s", rate_expected);
	if (rc)
		return fail(err, errlen, "%s", rate_expected);

	p = slash + 1;
	if (p < end && is_digit(*p)) {
		rc = parse_digits(&p, end, &mult);
		if (rc || mult == 0)
			return fail(err, errlen,
				    "expected a period greater than 0 after "
				    "the slash, e.g. 500/h or 83/10m");
	}
	for (size_t i = 0; i < ARRAY_SIZE(period_units); i++) {
		if (range_ieq(p, end, period_units[i].name)) {
			unit = &period_units[i];
			break;
		}
	}
	if (!unit)
		return fail(err, errlen,
			    "expected a period unit (s, m, h or d) after the "
			    "slash, e.g. 500/h or 83/10m");
	if (mult > INTERVAL_MAX_S / unit->seconds)
		return fail(err, errlen,
			    "expected a rate period of at most 10 years");

	/* PowerMTA reads a zero count as "no limit", as it does bare "0". */
	if (count == 0) {
		memset(&r, 0, sizeof(r));
		r.unlimited = true;
	} else {
		r.count = count;
		r.period_s = (uint32_t)(mult * unit->seconds);
	}
	*out = r;
	return 0;
}

/*
 * parse_ipv4 - one to four dotted decimal octets into addr (missing ones
 * are zero, as in "10.1.0/24"); *noctets says how many were written.
 * Leading zeros are refused: other tools read "010" as octal.
 */
static int parse_ipv4(const char *p, const char *end, uint8_t addr[4],
		      int *noctets)
{
	int n = 0;

	memset(addr, 0, 4);
	for (;;) {
		const char *start = p;
		uint64_t v;

		if (n == 4 || parse_digits(&p, end, &v) || v > 255 ||
		    (p - start > 1 && *start == '0'))
			return -EINVAL;
		addr[n++] = (uint8_t)v;
		if (p == end)
			break;
		if (*p != '.')
			return -EINVAL;
		p++;
	}
	*noctets = n;
	return 0;
}

/* parse_ipv6 - [p, end) is an IPv6 address inet_pton accepts. */
static int parse_ipv6(const char *p, const char *end, uint8_t addr[16])
{
	char buf[INET6_ADDRSTRLEN];
	size_t n = (size_t)(end - p);

	if (n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, p, n);
	buf[n] = '\0';
	return inet_pton(AF_INET6, buf, addr) == 1 ? 0 : -EINVAL;
}

/* prefix_mask - the mask for the partial byte after prefix % 8 bits. */
static uint8_t prefix_mask(unsigned prefix)
{
	return (uint8_t)(0xff00u >> (prefix % 8));
}

int cfg_parse_cidr(const char *s, struct cfg_cidr *out, char *err,
		   size_t errlen)
{
	const char *end = s + strlen(s);
	const char *slash = memchr(s, '/', (size_t)(end - s));
	const char *aend = slash ? slash : end;
	struct cfg_cidr c = { 0 };
	unsigned maxbits;

	if (memchr(s, ':', (size_t)(aend - s))) {
		if (parse_ipv6(s, aend, c.addr))
			return fail(err, errlen, "%s", cidr_expected);
		c.family = AF_INET6;
		maxbits = 128;
	} else {
		int noctets;

		if (parse_ipv4(s, aend, c.addr, &noctets))
			return fail(err, errlen, "%s", cidr_expected);
		/* Without a prefix "10.1" would be a guess (inet_aton: 10.0.0.1). */
		if (!slash && noctets < 4)
			return fail(err, errlen,
				    "a short IPv4 form needs a prefix length, "
				    "e.g. 10.1/16");
		c.family = AF_INET;
		maxbits = 32;
	}

	c.prefix = (uint8_t)maxbits;
	if (slash) {
		uint64_t v;

		if (parse_number(slash + 1, end, &v) || v > maxbits)
			return fail(err, errlen,
				    "expected a prefix length from 0 to %u "
				    "after the slash", maxbits);
		c.prefix = (uint8_t)v;
	}

	/* Store the network, not the host the operator happened to type. */
	if (c.prefix < maxbits) {
		unsigned full = c.prefix / 8;

		c.addr[full] &= prefix_mask(c.prefix);
		memset(c.addr + full + 1, 0, maxbits / 8 - full - 1);
	}
	*out = c;
	return 0;
}

/*
 * cfg_cidr_contains - sa lies inside net.  An IPv4-mapped IPv6 address
 * (a dual-stack socket's view of an IPv4 peer) is treated as the IPv4
 * address it carries, so it matches IPv4 networks and not IPv6 ones;
 * otherwise families never mix ("::/0" does not hold 192.0.2.7).
 */
bool cfg_cidr_contains(const struct cfg_cidr *net, const struct sockaddr *sa)
{
	const uint8_t *a;
	unsigned full;
	int family;

	if (!sa)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const void *)sa;

		a = (const uint8_t *)&sin->sin_addr;
		family = AF_INET;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const void *)sa;

		a = sin6->sin6_addr.s6_addr;
		family = AF_INET6;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			a += 12;
			family = AF_INET;
		}
	} else {
		return false;
	}
	if (family != net->family)
		return false;

	full = net->prefix / 8;
	if (memcmp(a, net->addr, full) != 0)
		return false;
	return net->prefix % 8 == 0 ||
	       ((a[full] ^ net->addr[full]) & prefix_mask(net->prefix)) == 0;
}

void cfg_cidr_format(const struct cfg_cidr *c, char *buf, size_t buflen)
{
	char addr[INET6_ADDRSTRLEN];

	BUG_ON(c->family != AF_INET && c->family != AF_INET6);
	BUG_ON(!inet_ntop(c->family, c->addr, addr, sizeof(addr)));
	snprintf(buf, buflen, "%s/%u", addr, c->prefix);
}

/*
 * cfg_parse_listen_addr - "*" and "0/0" mean the IPv4 wildcard 0.0.0.0,
 * as in PowerMTA's default "0.0.0.0:25"; IPv6 listeners are spelled out
 * ("[::]:25").  Host names are refused: a listener binds an address.
 */
int cfg_parse_listen_addr(const char *s, struct cfg_sockaddr *out, char *err,
			  size_t errlen)
{
	const char *end = s + strlen(s);
	const char *host, *hend, *colon;
	bool v6 = *s == '[';
	struct cfg_sockaddr a;
	uint64_t port;

	memset(&a, 0, sizeof(a));
	if (v6) {
		host = s + 1;
		hend = memchr(host, ']', (size_t)(end - host));
		if (!hend || hend + 1 == end || hend[1] != ':')
			return fail(err, errlen, "%s", listen_expected);
		colon = hend + 1;
	} else {
		host = s;
		colon = NULL;
		for (const char *p = s; p < end; p++)
			if (*p == ':')
				colon = p;
		if (!colon)
			return fail(err, errlen, "%s", listen_expected);
		hend = colon;
		if (memchr(host, ':', (size_t)(hend - host)))
			return fail(err, errlen,
				    "expected an IPv6 address in brackets, "
				    "e.g. [::1]:2525");
	}

	if (v6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;

		if (parse_ipv6(host, hend, sin6->sin6_addr.s6_addr))
			return fail(err, errlen, "%s", listen_expected);
		sin6->sin6_family = AF_INET6;
		a.len = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
		uint8_t v4[4];
		int noctets;

		if (range_ieq(host, hend, "*") || range_ieq(host, hend, "0/0")) {
			memset(v4, 0, sizeof(v4));
		} else if (parse_ipv4(host, hend, v4, &noctets) ||
			   noctets != 4) {
			return fail(err, errlen, "%s", listen_expected);
		}
		memcpy(&sin->sin_addr, v4, sizeof(v4));
		sin->sin_family = AF_INET;
		a.len = sizeof(*sin);
	}

	/* port 0: one the kernel picks, logged as "listening addr=A port=P" */
	if (parse_number(colon + 1, end, &port) || port > 65535)
		return fail(err, errlen,
			    "expected a port from 0 to 65535 after the colon");
	if (a.ss.ss_family == AF_INET)
		((struct sockaddr_in *)&a.ss)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)&a.ss)->sin6_port = htons((uint16_t)port);
	*out = a;
	return 0;
}

struct cfg_regex {
	pcre2_code *code;
	pcre2_match_context *mctx;	/* limits only; read-only when matching */
	char *source;			/* the text as written, slashes and flags */
};

/*
 * PCRE2 allocates through xmalloc like the rest of coremta, so match data
 * cannot come back NULL on the hot path; REGEX_HEAP_LIMIT_KIB bounds what
 * one match may ask for.
 */
static void *regex_malloc(PCRE2_SIZE size, void *data)
{
	return xmalloc(size);
}

static void regex_free_mem(void *ptr, void *data)
{
	free(ptr);
}

int cfg_regex_compile(const char *s, struct cfg_regex **out, char *err,
		      size_t errlen)
{
	const char *end = s + strlen(s), *pat = s, *pend = end;
	uint32_t opts = PCRE2_UTF;
	pcre2_general_context *gctx;
	pcre2_compile_context *cctx;
	pcre2_match_context *mctx;
	struct cfg_regex *re;
	PCRE2_SIZE erroff;
	pcre2_code *code;
	int errcode;

#ifdef PCRE2_MATCH_INVALID_UTF
	/* Bounce texts are not always valid UTF-8; they must still match. */
	opts |= PCRE2_MATCH_INVALID_UTF;
#endif
	if (*s == '/') {
		const char *close = NULL;

		for (const char *p = s + 1; p < end; p++)
			if (*p == '/')
				close = p;
		if (!close)
			return fail(err, errlen,
				    "expected a closing slash, as in /5\\.1\\.1/i");
		for (const char *f = close + 1; f < end; f++) {
			switch (*f) {
			case 'i':
				opts |= PCRE2_CASELESS;
				break;
			case 'm':
				opts |= PCRE2_MULTILINE;
				break;
			case 's':
				opts |= PCRE2_DOTALL;
				break;
			case 'x':
				opts |= PCRE2_EXTENDED;
				break;
			default:
				return fail(err, errlen,
					    "unknown regular expression flag "
					    "'%c'; expected i, m, s or x", *f);
			}
		}
		pat = s + 1;
		pend = close;
	}
	/* PowerMTA's shipped patterns end with `// other`: an empty
	 * slashed regex is the catch-all.  A bare empty word is a slip. */
	if (pat == pend && *s != '/')
		return fail(err, errlen,
			    "expected a non-empty regular expression");

	gctx = pcre2_general_context_create(regex_malloc, regex_free_mem, NULL);
	cctx = pcre2_compile_context_create(gctx);
	code = pcre2_compile((PCRE2_SPTR)pat, (PCRE2_SIZE)(pend - pat), opts,
			     &errcode, &erroff, cctx);
	pcre2_compile_context_free(cctx);
	if (!code) {
		PCRE2_UCHAR msg[128];

		pcre2_general_context_free(gctx);
		if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
			snprintf((char *)msg, sizeof(msg), "error %d", errcode);
		return fail(err, errlen,
			    "bad regular expression at offset %zu: %s",
			    (size_t)erroff, (const char *)msg);
	}
	/* Without JIT (unsupported CPU, no exec memory) the interpreter runs. */
	(void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);

	mctx = pcre2_match_context_create(gctx);
	pcre2_set_heap_limit(mctx, REGEX_HEAP_LIMIT_KIB);
	pcre2_general_context_free(gctx);

	re = xmalloc(sizeof(*re));
	re->code = code;
	re->mctx = mctx;
	re->source = xstrdup(s);
	*out = re;
	return 0;
}

/*
 * cfg_regex_match - match data is made per call from the pattern, so any
 * number of threads may share one compiled regex.  A match-time failure
 * (backtracking or heap limit hit) counts as no match.
 */
int cfg_regex_match(const struct cfg_regex *re, const char *subject,
		    size_t len)
{
	pcre2_match_data *md;
	int rc;

	md = pcre2_match_data_create_from_pattern(re->code, NULL);
	BUG_ON(!md);
	rc = pcre2_match(re->code, (PCRE2_SPTR)(subject ? subject : ""),
			 (PCRE2_SIZE)len, 0, 0, md, re->mctx);
	pcre2_match_data_free(md);
	return rc >= 0;
}

const char *cfg_regex_source(const struct cfg_regex *re)
{
	return re->source;
}

void cfg_regex_free(struct cfg_regex *re)
{
	if (!re)
		return;
	pcre2_code_free(re->code);
	pcre2_match_context_free(re->mctx);
	free(re->source);
	free(re);
}

/* out - appending into a caller's fixed buffer; truncates, stays NUL-ended. */
struct out {
	char *buf;
	size_t size;
	size_t len;	/* what the text would need; may exceed size */
};

static void out_init(struct out *o, char *buf, size_t size)
{
	o->buf = buf;
	o->size = size;
	o->len = 0;
	if (size)
		buf[0] = '\0';
}

static void UTIL_PRINTF(2, 3) out_printf(struct out *o, const char *fmt, ...)
{
	bool room = o->len < o->size;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(room ? o->buf + o->len : NULL, room ? o->size - o->len : 0,
		      fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n;
}

static void interval_out(struct out *o, uint64_t seconds)
{
	if (seconds == 0) {
		out_printf(o, "0s");
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(interval_units); i++) {
		uint64_t n = seconds / interval_units[i].seconds;

		if (n) {
			out_printf(o, "%" PRIu64 "%c", n, interval_units[i].name);
			seconds %= interval_units[i].seconds;
		}
	}
}

void cfg_interval_format(uint64_t seconds, char *buf, size_t buflen)
{
	struct out o;

	out_init(&o, buf, buflen);
	interval_out(&o, seconds);
}

/*
 * size_out - the largest binary unit that divides exactly; plain bytes
 * keep a "b" so a volume rate ("1000b/h") reads back as a volume.
 */
static void size_out(struct out *o, uint64_t bytes)
{
	static const char units[] = "KMGT";

	for (int i = 3; i >= 0 && bytes; i--) {
		uint64_t unit = 1ULL << (10 * (i + 1));

		if (bytes % unit == 0) {
			out_printf(o, "%" PRIu64 "%c", bytes / unit, units[i]);
			return;
		}
	}
	out_printf(o, "%" PRIu64 "b", bytes);
}

void cfg_size_format(uint64_t bytes, char *buf, size_t buflen)
{
	struct out o;

	out_init(&o, buf, buflen);
	size_out(&o, bytes);
}

void cfg_rate_format(const struct cfg_rate *r, char *buf, size_t buflen)
{
	static const struct interval_unit units[] = {
		{ 'd', 86400 }, { 'h', 3600 }, { 'm', 60 }, { 's', 1 },
	};
	struct out o;

	out_init(&o, buf, buflen);
	if (r->unlimited) {
		out_printf(&o, "unlimited");
		return;
	}
	BUG_ON(r->period_s == 0);
	if (r->is_volume)
		size_out(&o, r->count);
	else
		out_printf(&o, "%" PRIu64, r->count);
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		uint32_t n = r->period_s / units[i].seconds;

		if (r->period_s % units[i].seconds)
			continue;
		if (n == 1)
			out_printf(&o, "/%c", units[i].name);
		else
			out_printf(&o, "/%" PRIu32 "%c", n, units[i].name);
		return;
	}
}

void cfg_daily_format(const struct cfg_daily *d, char *buf, size_t buflen)
{
	struct out o;

	out_init(&o, buf, buflen);
	if (!d->count)
		out_printf(&o, "unlimited");
	for (uint32_t i = 0; i < d->count && i < CFG_DAILY_MAX; i++) {
		if (d->per_day[i] == CFG_DAILY_UNLIMITED)
			out_printf(&o, "%sunlimited", i ? "," : "");
		else
			out_printf(&o, "%s%u/d", i ? "," : "", d->per_day[i]);
	}
}

void cfg_schedule_format(const struct cfg_schedule *s, char *buf,
			 size_t buflen)
{
	struct out o;

	BUG_ON(s->count > CFG_SCHEDULE_MAX);
	out_init(&o, buf, buflen);
	for (uint32_t i = 0; i < s->count; i++) {
		if (i)
			out_printf(&o, ",");
		interval_out(&o, s->seconds[i]);
	}
}
