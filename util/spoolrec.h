/*
 * util/spoolrec.h - what a reader of the spool's message records needs
 * besides the spool itself: where a record is (struct spool_ref), its
 * header's framing, its CRC32C check and its segment file's name.  The
 * spool (engine/spool.c) writes and owns the records; the shards read
 * bodies back through these without including engine/ (the layers point
 * down: tests/check_layers.sh).
 *
 * Threads: everything here is pure and may be called from any thread.
 * Memory: spool_segment_path() returns a string the caller frees.
 */
#ifndef COREMTA_UTIL_SPOOLREC_H
#define COREMTA_UTIL_SPOOLREC_H

#include <stddef.h>
#include <stdint.h>

/*
 * A body longer than this is not read into memory to be sent: whoever
 * delivers it maps it from its record in place (spool_segment_path), and
 * spool_maintain() never moves such a record, so that place stays valid
 * while the message lives.  (Its segment is reclaimed when it finishes.)
 */
#define SPOOL_RESIDENT_MAX	(1u << 20)

/* A message record's fixed header (engine/spool.c describes the format). */
#define SPOOLREC_HDR_LEN	48

/*
 * Where one copy of a message lives.  The record is bytes [off, off+len) of
 * segment file spool_segment_path(dir, seg); its body is the body_len bytes
 * at off + body_off.  The id is unique in the spool and increasing; it stays
 * the same when spool_maintain() moves the message to a new segment.
 */
struct spool_ref {
	uint64_t id;
	uint64_t seg;
	uint64_t off;
	uint32_t len;
	uint32_t body_off;
	uint32_t body_len;
};

/* A record header's fields, as spoolrec_parse() reads them. */
struct spoolrec_hdr {
	uint32_t total;
	uint32_t crc;
	uint64_t salt;
	uint64_t id;
	int64_t queued;
	uint32_t env_len;
	uint32_t body_len;
};

/* crc32c - continue <crc> (0 to start) over n bytes, zlib-style. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t n);

/* crc32c_combine - crc32c of A||B from crc32c(A), crc32c(B) and B's length */
uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

/*
 * spoolrec_parse - check the framing of the SPOOLREC_HDR_LEN bytes at <h>
 * (not the CRC) and fill <out>: 0, or -EBADMSG.
 */
int spoolrec_parse(const uint8_t *h, struct spoolrec_hdr *out);

/* spoolrec_crc_head - the CRC over a record header, its own field skipped. */
uint32_t spoolrec_crc_head(const uint8_t *h);

/*
 * spool_verify - check a record image <rec> of <len> bytes, read from
 * [ref->off, ref->off + ref->len) of its segment: 0 if it is intact and is
 * ref's message, else -EBADMSG.
 */
int spool_verify(const struct spool_ref *ref, const void *rec, size_t len);

/* spool_segment_path - "<dir>/seg/<seg as 16 hex>.seg"; caller frees. */
char *spool_segment_path(const char *dir, uint64_t seg);

#endif
