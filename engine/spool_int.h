/*
 * engine/spool_int.h - the spool's on-disk format, shared by engine/spool.c
 * and the tests that build spool files byte by byte (tests/fuzz/
 * fuzz_spool.c): file and record constants, little-endian field helpers,
 * and the few format functions those tests need.  Not an API: nothing
 * else includes it.  Everything here is pure; any thread.
 */
#ifndef COREMTA_ENGINE_SPOOL_INT_H
#define COREMTA_ENGINE_SPOOL_INT_H

#include <stddef.h>
#include <stdint.h>

#include "util/spoolrec.h"

#define SPOOL_FORMAT_VERSION		1
#define FILE_HDR_LEN	40
#define REC_HDR_LEN	SPOOLREC_HDR_LEN
#define JREC_LEN	32
#define MAGIC_SEG	0x53544d43u	/* "CMTS" */
#define MAGIC_JNL	0x4a544d43u	/* "CMTJ" */
#define MAGIC_REC	0x52544d43u	/* "CMTR" */
#define REC_MESSAGE	1
#define JK_OUTCOME	1
#define JK_MOVED	2

/* put16/32/64, get16/32/64 - little-endian fields, whatever the host */
static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* spool_file_header - a segment or journal file header, CRC included */
void spool_file_header(uint8_t *h, uint32_t magic, uint64_t seq, uint64_t salt,
		       int64_t created);
/* spool_jrec_crc - a journal record's CRC, seeded with its file's salt */
uint32_t spool_jrec_crc(uint64_t jsalt, const uint8_t *r);
/* spool_envelope_check - decode an envelope as recovery does: 0 or -EBADMSG */
int spool_envelope_check(const uint8_t *p, size_t n);
/* spool_journal_path - "<dir>/journal/<seq as 16 hex>.jnl"; caller frees */
char *spool_journal_path(const char *dir, uint64_t seq);

#endif
