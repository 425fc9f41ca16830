/*
 * util - the bottom layer: allocation that cannot fail, invariant checks,
 * growable strings, a bump arena and diagnostic lists.
 *
 * Every thread may call these; none of them keeps shared mutable state.
 * Knows nothing about mail.  Whoever creates an object frees it with the
 * matching *_free(), which tolerates NULL.
 */
#ifndef COREMTA_UTIL_H
#define COREMTA_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A broken invariant is a bug: report where and abort so a core is left. */
#define BUG_ON(cond)                                                       \
	do {                                                               \
		if (__builtin_expect(!!(cond), 0))                          \
			util_bug(__FILE__, __LINE__, #cond);               \
	} while (0)

/*
 * BUG - a case that cannot happen did: where, and the value that got
 * there ("unknown directive type 17"), then abort.
 */
#define BUG(...) util_bugf(__FILE__, __LINE__, __VA_ARGS__)

/* b64_value - the 6-bit value of a base64 character, -1 for any other. */
int b64_value(unsigned char c);

/* mem_has_8bit - any byte >= 0x80 in p[0..n), a word at a time. */
bool mem_has_8bit(const void *p, size_t n);

/* container_of - the struct that holds member at ptr (intrusive nodes). */
#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define UTIL_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

_Noreturn void util_bug(const char *file, int line, const char *what);
_Noreturn void util_bugf(const char *file, int line, const char *fmt, ...) UTIL_PRINTF(3, 4);

/* x* - allocate or abort: an MTA that cannot allocate cannot keep promises. */
void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) UTIL_PRINTF(1, 2);

/* strbuf - a growable NUL-terminated string; zero-initialised is empty. */
struct strbuf {
	char *buf;
	size_t len;
	size_t cap;
};

void sb_add(struct strbuf *sb, const char *s, size_t n);
void sb_adds(struct strbuf *sb, const char *s);
void sb_addc(struct strbuf *sb, char c);
void sb_printf(struct strbuf *sb, const char *fmt, ...) UTIL_PRINTF(2, 3);
void sb_vprintf(struct strbuf *sb, const char *fmt, va_list ap);
void sb_reset(struct strbuf *sb);
/* sb_reserve - room for <extra> more octets and a NUL past len. */
void sb_reserve(struct strbuf *sb, size_t extra);
/* sb_add_u64 - v in decimal (what %llu writes), without printf: per
 * message and per record on the hot paths. */
void sb_add_u64(struct strbuf *sb, uint64_t v);
/* sb_detach - hand the string to the caller (never NULL) and empty sb. */
char *sb_detach(struct strbuf *sb);
void sb_free(struct strbuf *sb);
static inline const char *sb_str(const struct strbuf *sb)
{
	return sb->buf ? sb->buf : "";
}

/*
 * arena - bump allocation for data that lives and dies together (a loaded
 * configuration).  Memory is returned only by arena_free().
 */
struct arena;

struct arena *arena_new(void);
void arena_free(struct arena *a);
void *arena_alloc(struct arena *a, size_t size);	/* zeroed, 16-aligned */
char *arena_strdup(struct arena *a, const char *s);
char *arena_strndup(struct arena *a, const char *s, size_t n);
char *arena_printf(struct arena *a, const char *fmt, ...) UTIL_PRINTF(2, 3);

/*
 * diag - a list of located messages ("file:line: severity: text"), the
 * way library code reports problems to whoever prints them.
 */
enum diag_severity {
	DIAG_NOTE,
	DIAG_WARNING,
	DIAG_ERROR,
};

struct diag {
	enum diag_severity severity;
	char *file;		/* NULL when the message has no location */
	int line;
	char *text;
};

struct diag_list {
	struct diag *items;
	size_t count;
	size_t cap;
	size_t errors;
	size_t warnings;
};

void diag_add(struct diag_list *dl, enum diag_severity sev, const char *file,
	      int line, const char *fmt, ...) UTIL_PRINTF(5, 6);
void diag_vadd(struct diag_list *dl, enum diag_severity sev, const char *file,
	       int line, const char *fmt, va_list ap);
/* diag_format - "file:line: warning: text" (location omitted if none). */
void diag_format(const struct diag *d, struct strbuf *out);
/* diag_find - first diagnostic whose formatted text contains needle. */
const struct diag *diag_find(const struct diag_list *dl, const char *needle);
void diag_free(struct diag_list *dl);

/* Small string helpers used by parsers. */
bool str_ieq(const char *a, const char *b);
/* err_printf - bounded formatting into a caller's error buffer (may be NULL). */
void err_printf(char *err, size_t errlen, const char *fmt, ...) UTIL_PRINTF(3, 4);
bool str_has_suffix_ci(const char *s, const char *suffix);
void str_lower(char *s);
/* write_all - all n bytes to a blocking fd, retrying short writes and
 * EINTR; 0 or -errno (what was written before the error stays written). */
int write_all(int fd, const void *buf, size_t n);
/* mono_ms - CLOCK_MONOTONIC in milliseconds (any thread). */
uint64_t mono_ms(void);
/* mono_us - CLOCK_MONOTONIC in microseconds (any thread). */
uint64_t mono_us(void);

#endif
