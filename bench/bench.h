/*
 * bench/bench.h - what the parts of coremta-bench share: the two
 * subcommands' entry points, option parsing, statistics and JSON output
 * (common.c), one SMTP connection over io_uring with optional TLS
 * (smtp_wire.c) and the wolfSSL glue (tls.c).
 *
 * Each subcommand runs one single-threaded event loop; nothing here keeps
 * global mutable state except tls.c's wolfSSL context, set up once before
 * the loop starts.  Whoever creates an object frees it with the matching
 * *_free().  Library functions return 0 or -errno (or a documented value)
 * and leave printing to the subcommand's top level.
 */
#ifndef COREMTA_BENCH_H
#define COREMTA_BENCH_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <liburing.h>

#include "util/util.h"

int bench_send_main(int argc, char **argv);
/* bench_dkim_main - `coremta-bench dkim-sign`: signatures per CPU-second. */
int bench_dkim_main(int argc, char **argv);
int bench_sink_main(int argc, char **argv);

/* ---- common.c: clocks, parsing, statistics, JSON ---- */

uint64_t bench_now_ns(void);	/* CLOCK_MONOTONIC: intervals, X-Bench-T */
double bench_wall_s(void);	/* CLOCK_REALTIME, seconds: reports only */

/* bench_rand - xorshift64*: cheap, and each loop seeds its own state. */
static inline uint64_t bench_rand(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* bench_chance - true with probability p (0..1). */
static inline bool bench_chance(uint64_t *state, double p)
{
	return p > 0 && (double)(bench_rand(state) >> 11) * 0x1p-53 < p;
}

/*
 * bench_parse_addr - "a.b.c.d:port" into *out.  With loopback_only, an
 * address outside 127.0.0.0/8 is -EPERM: the load generator must never
 * be pointed at someone else's server.
 */
int bench_parse_addr(const char *s, struct sockaddr_in *out, bool loopback_only);
void bench_format_addr(const struct sockaddr_in *sa, char *buf, size_t len);
/* bench_parse_size - "5000", "5k", "2m" (k = 1024) into bytes. */
int bench_parse_size(const char *s, uint64_t *out);
/* bench_parse_seconds - "10", "10s", "500ms", "2m", "1h" into seconds. */
int bench_parse_seconds(const char *s, double *out);
int bench_parse_double(const char *s, double *out);
int bench_parse_u64(const char *s, uint64_t *out);

/*
 * A weighted list "a:40,b:20,c" (weight 1 when omitted).  With sizes, the
 * names are sizes ("2k:50,5k:40") and value holds the byte count.
 */
struct bench_witem {
	char *name;
	double weight;
	uint64_t value;
};

struct bench_wlist {
	struct bench_witem *items;
	double *cum;		/* cumulative weights, for binary search */
	size_t count;
	size_t cap;
	double total;
};

int bench_wlist_parse(struct bench_wlist *wl, const char *s, bool sizes);
void bench_wlist_add(struct bench_wlist *wl, const char *name, double weight,
		     uint64_t value);
/* bench_wlist_seal - compute the cumulative table; call before pick. */
void bench_wlist_seal(struct bench_wlist *wl);
size_t bench_wlist_pick(const struct bench_wlist *wl, uint64_t *rng);
void bench_wlist_free(struct bench_wlist *wl);

/*
 * Latency samples in microseconds: all of them up to a cap, then a
 * reservoir sample, so memory stays bounded on long runs while the max
 * and count stay exact.
 */
struct bench_samples {
	uint32_t *v;
	size_t n;
	size_t cap;
	uint64_t seen;
	uint64_t max_us;
	uint64_t rng;
};

void bench_samples_add(struct bench_samples *s, uint64_t us);
/* bench_samples_pct - p-th percentile (0..100) in microseconds; sorts. */
double bench_samples_pct(struct bench_samples *s, double p);
void bench_samples_json(struct bench_samples *s, struct strbuf *out);
void bench_samples_free(struct bench_samples *s);

/* Per-second event counts from a start time; bounded length. */
#define BENCH_SERIES_MAX 86400
struct bench_series {
	uint32_t *v;
	size_t n;
};

void bench_series_add(struct bench_series *s, uint64_t since_start_ns);
void bench_series_json(const struct bench_series *s, struct strbuf *out);
void bench_series_free(struct bench_series *s);

/* JSON helpers: a quoted, escaped string; a finite number. */
void bench_json_str(struct strbuf *out, const char *s);
void bench_json_num(struct strbuf *out, double v);
/* bench_write_file - write data to path via a temporary and rename. */
int bench_write_file(const char *path, const char *data, size_t len);

/* A min-heap of timers; a stale entry is recognised by its owner's gen. */
struct bench_timer {
	uint64_t when;
	uint32_t idx;
	uint32_t gen;
};

struct bench_timers {
	struct bench_timer *h;
	size_t n;
	size_t cap;
};

void bench_timer_add(struct bench_timers *t, uint64_t when, uint32_t idx,
		     uint32_t gen);
/* bench_timer_pop - pop the earliest timer due at now; false if none. */
bool bench_timer_pop(struct bench_timers *t, uint64_t now,
		     struct bench_timer *out);
uint64_t bench_timer_next(const struct bench_timers *t);	/* or UINT64_MAX */
void bench_timers_free(struct bench_timers *t);

/* ---- smtp_wire.c: io_uring plumbing, SMTP lines, one connection ---- */

/*
 * user_data: operation (8 bits) | generation (24 bits) | slot (32 bits).
 * A completion whose generation differs from its slot's is stale.
 */
enum bench_op {
	BENCH_OP_NONE,
	BENCH_OP_ACCEPT,
	BENCH_OP_CONNECT,
	BENCH_OP_RECV,
	BENCH_OP_SEND,
	BENCH_OP_WAKE,
};

static inline uint64_t bench_ud(enum bench_op op, uint32_t idx, uint32_t gen)
{
	return (uint64_t)op << 56 | (uint64_t)(gen & 0xffffff) << 32 | idx;
}

static inline enum bench_op bench_ud_op(uint64_t ud)
{
	return (enum bench_op)(ud >> 56);
}

static inline uint32_t bench_ud_idx(uint64_t ud)
{
	return (uint32_t)ud;
}

static inline uint32_t bench_ud_gen(uint64_t ud)
{
	return (uint32_t)(ud >> 32) & 0xffffff;
}

/* bench_ring_init - a ring sized for entries; probes ext-arg waits. */
int bench_ring_init(struct io_uring *ring, unsigned entries);
/* bench_sqe - a free submission entry, submitting to make room. */
struct io_uring_sqe *bench_sqe(struct io_uring *ring);
/* bench_wait - submit and wait for a completion at most timeout_ns. */
int bench_wait(struct io_uring *ring, uint64_t timeout_ns);

/* bench_line_len - bytes of the first LF-terminated line, 0 if none yet. */
size_t bench_line_len(const char *buf, size_t len);
/* bench_reply_parse - "250-x"/"250 x": code and whether it is the last. */
int bench_reply_parse(const char *line, size_t len, int *code, bool *last);

/*
 * The end of a DATA body ("\r\n.\r\n", also after bare LF) across buffer
 * boundaries: bench_dot_scan returns how many bytes of p belong to the
 * message including the terminator, and sets *done when it was found.
 */
struct bench_dot {
	int state;
};

void bench_dot_reset(struct bench_dot *d);
size_t bench_dot_scan(struct bench_dot *d, const char *p, size_t len, bool *done);

struct bench_tls;

/*
 * One SMTP connection: plaintext input in `in` (bytes [in_off, in_len)
 * not yet consumed), output queued in `pend` and sent from `out`.  The
 * two output buffers swap so the one the kernel reads is never
 * reallocated under it.  With TLS, recv lands in `rx` and only
 * plaintext reaches `in`; writes are encrypted into `pend`.
 */
struct bench_conn {
	int fd;
	uint32_t idx;
	uint32_t gen;
	char *in;
	size_t in_off;
	size_t in_len;
	size_t in_cap;
	char *rx;
	size_t rx_cap;
	char *rx_dst;		/* where the busy recv lands */
	struct strbuf out;
	size_t out_sent;
	struct strbuf pend;
	struct bench_tls *tls;
	bool tls_ready;
	bool recv_busy;
	bool send_busy;
	bool eof;		/* peer closed or error: no more input */
	bool closing;		/* close once the output is sent */
	bool shut;		/* shutdown(2) done, waiting for ops */
	int err;		/* first I/O error (negative errno) */
	uint64_t last_io;	/* monotonic ns of the last completion */
	uint64_t bytes_in;
	uint64_t bytes_out;
};

void bench_conn_init(struct bench_conn *c, int fd, uint32_t idx, size_t in_cap);
/* bench_conn_write - queue bytes (encrypted when TLS is on). */
int bench_conn_write(struct bench_conn *c, const char *p, size_t n);
void bench_conn_writes(struct bench_conn *c, const char *s);
/* bench_conn_flush - submit a send of the queued output if none is busy. */
void bench_conn_flush(struct io_uring *ring, struct bench_conn *c);
/* bench_conn_arm_recv - submit a recv if none is busy and there is room. */
void bench_conn_arm_recv(struct io_uring *ring, struct bench_conn *c);
/*
 * bench_conn_on_recv / _on_send - account a completion.  on_recv returns
 * 1 when new plaintext is in `in`, 0 when not (TLS handshake progress),
 * or a negative errno (the connection is dead).
 */
int bench_conn_on_recv(struct io_uring *ring, struct bench_conn *c, int res);
int bench_conn_on_send(struct io_uring *ring, struct bench_conn *c, int res);
/* bench_conn_consume - drop n bytes of plaintext input. */
void bench_conn_consume(struct bench_conn *c, size_t n);
/*
 * bench_conn_refill - with TLS, move more decrypted input into `in` after
 * the owner consumed some: 1 if new input arrived, 0 if none, -errno if
 * the connection is dead.  Without TLS, always 0.
 */
int bench_conn_refill(struct bench_conn *c);
/*
 * bench_conn_start_tls - switch to TLS now: later writes are encrypted,
 * buffered plaintext is dropped (RFC 3207: nothing may be pipelined
 * past STARTTLS).  The client side queues its ClientHello.
 */
int bench_conn_start_tls(struct io_uring *ring, struct bench_conn *c, bool server);
/*
 * bench_conn_abort - shutdown(2) so busy operations complete; the
 * connection is released when bench_conn_idle() says so.
 */
void bench_conn_abort(struct bench_conn *c);
bool bench_conn_idle(const struct bench_conn *c);
/* bench_conn_release - close the fd and free buffers; bumps gen. */
void bench_conn_release(struct bench_conn *c);

/* ---- tls.c: wolfSSL over memory buffers ---- */

/* bench_tls_setup - global context; cert/key only for the server side. */
int bench_tls_setup(bool server, const char *cert, const char *key,
		    char *err, size_t errlen);
void bench_tls_teardown(void);
struct bench_tls *bench_tls_new(bool server, struct strbuf *cipher_out);
void bench_tls_free(struct bench_tls *t);
/* bench_tls_feed - ciphertext from the socket. */
void bench_tls_feed(struct bench_tls *t, const char *p, size_t n);
/* bench_tls_handshake - 1 done, 0 needs more input, -EPROTO failed. */
int bench_tls_handshake(struct bench_tls *t);
/* bench_tls_read - plaintext bytes (>0), 0 needs input, -EPROTO/-EPIPE. */
int bench_tls_read(struct bench_tls *t, char *buf, size_t cap);
/* bench_tls_write - encrypt all n bytes into the ciphertext output. */
int bench_tls_write(struct bench_tls *t, const char *p, size_t n);

#endif
