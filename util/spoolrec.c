/*
 * util/spoolrec.c - reading the spool's message records (spoolrec.h):
 * framing, CRC32C, verification.  Pure functions, any thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "util/spoolrec.h"
#include "util/util.h"

#define VERSION		1
#define MAGIC_REC	0x52544d43u	/* "CMTR" */
#define REC_MESSAGE	1
#define ENV_MAX		(16u << 20)
#define BODY_MAX	(1u << 30)	/* SPOOL_MAX_BODY */

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- CRC32C (Castagnoli) ---------------------------------------------- */

static const uint32_t crc32c_table[256] = {
	0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
	0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
	0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
	0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
	0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
	0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
	0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
	0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
	0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
	0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
	0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
	0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
	0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
	0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
	0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
	0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
	0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
	0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
	0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
	0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
	0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
	0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
	0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
	0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
	0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
	0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
	0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
	0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
	0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
	0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
	0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
	0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
	0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
	0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
	0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
	0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
	0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
	0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
	0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
	0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
	0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
	0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
	0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

/* crc32c_sw - CRC32C a byte at a time (reflected poly 0x82f63b78) */
static uint32_t crc32c_sw(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n--)
		crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

/* gf2_apply, gf2_square - 32x32 matrices over GF(2), mat[i]: bit i's image */
static uint32_t gf2_apply(const uint32_t *mat, uint32_t vec)
{
	uint32_t sum = 0;

	for (; vec; vec >>= 1, mat++)
		if (vec & 1)
			sum ^= *mat;
	return sum;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat)
{
	for (int i = 0; i < 32; i++)
		sq[i] = gf2_apply(mat, mat[i]);
}

/* crc_zero_bit - the operator of one zero bit: the reflected register
 * shifts right, bit 0 feeds back the polynomial */
static void crc_zero_bit(uint32_t *op)
{
	op[0] = 0x82f63b78u;
	for (int i = 1; i < 32; i++)
		op[i] = 1u << (i - 1);
}

#if defined(__x86_64__)
/*
 * Three chains at once: the crc32 instruction takes three cycles to give
 * its result and can start one every cycle, so a single chain uses a
 * third of it.  Input is cut into runs of three CRC_BLOCK blocks, each
 * summed from zero but the first; the register of A then B is A's shifted
 * over |B| zero bytes, xor B's (the CRC is linear).  The shift over
 * CRC_BLOCK zero bytes is a fixed 32x32 bit matrix, applied as four
 * table lookups.  The tables are computed once (pthread_once) and only
 * read after, from any thread.
 */
#define CRC_BLOCK	256u
#define CRC_BLOCK_BITS_LOG2	11	/* 8 * CRC_BLOCK = 2^11 */

static uint32_t crc_shift_tab[4][256];
static pthread_once_t crc_shift_once = PTHREAD_ONCE_INIT;

static void crc_shift_init(void)
{
	uint32_t op[32], sq[32];

	crc_zero_bit(op);
	for (int k = 0; k < CRC_BLOCK_BITS_LOG2; k++) {
		gf2_square(sq, op);
		memcpy(op, sq, sizeof(op));
	}
	for (int b = 0; b < 4; b++)
		for (uint32_t v = 0; v < 256; v++)
			crc_shift_tab[b][v] = gf2_apply(op, v << (8 * b));
}

/* crc_shift - register c as if CRC_BLOCK zero bytes followed */
static uint32_t crc_shift(uint32_t c)
{
	return crc_shift_tab[0][c & 0xff] ^ crc_shift_tab[1][(c >> 8) & 0xff] ^
	       crc_shift_tab[2][(c >> 16) & 0xff] ^ crc_shift_tab[3][c >> 24];
}

/* The SSE4.2 crc32 instruction computes exactly CRC32C: ~10x the table. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
	uint64_t c = crc;

	if (n >= 3 * CRC_BLOCK)
		pthread_once(&crc_shift_once, crc_shift_init);
	while (n >= 3 * CRC_BLOCK) {
		uint64_t c1 = 0, c2 = 0;

		for (size_t i = 0; i < CRC_BLOCK; i += 8) {
			uint64_t a, b, d;

			memcpy(&a, p + i, 8);
			memcpy(&b, p + CRC_BLOCK + i, 8);
			memcpy(&d, p + 2 * CRC_BLOCK + i, 8);
			c = __builtin_ia32_crc32di(c, a);
			c1 = __builtin_ia32_crc32di(c1, b);
			c2 = __builtin_ia32_crc32di(c2, d);
		}
		c = crc_shift((uint32_t)c) ^ (uint32_t)c1;
		c = crc_shift((uint32_t)c) ^ (uint32_t)c2;
		p += 3 * CRC_BLOCK;
		n -= 3 * CRC_BLOCK;
	}
	while (n >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
		p += 8;
		n -= 8;
	}
	while (n--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
	return (uint32_t)c;
}
#endif

uint32_t crc32c(uint32_t crc, const void *buf, size_t n)
{
	crc = ~crc;
#if defined(__x86_64__)
	if (__builtin_cpu_supports("sse4.2"))
		return ~crc32c_hw(crc, buf, n);
#endif
	return ~crc32c_sw(crc, buf, n);
}

/*
 * crc32c_combine - the CRC of A||B from crc(A), crc(B) and B's length,
 * without B's bytes: a spilled body is summed while it streams in, and
 * the record's CRC (header, envelope, body, in that order) is made from
 * the pieces.  Appending len2 zero bits to A's register is a linear map
 * over GF(2); it is applied by squaring the one-bit operator, so the cost
 * is O(log len2) 32x32 products.
 */
uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)
{
	uint32_t op[32], sq[32];

	if (len2 == 0)
		return crc1;
	crc_zero_bit(op);
	gf2_square(sq, op);	/* two bits */
	gf2_square(op, sq);	/* four bits */
	/* op now advances by 4 bits; square again per bit of len2 (bytes) */
	for (;;) {
		gf2_square(sq, op);		/* 8 bits, 16, ... */
		if (len2 & 1)
			crc1 = gf2_apply(sq, crc1);
		len2 >>= 1;
		if (!len2)
			break;
		gf2_square(op, sq);
		if (len2 & 1)
			crc1 = gf2_apply(op, crc1);
		len2 >>= 1;
		if (!len2)
			break;
	}
	return crc1 ^ crc2;
}

uint32_t spoolrec_crc_head(const uint8_t *h)
{
	return crc32c(crc32c(0, h, 12), h + 16, SPOOLREC_HDR_LEN - 16);
}

int spoolrec_parse(const uint8_t *h, struct spoolrec_hdr *ri)
{
	if (get32(h) != MAGIC_REC || h[4] != VERSION || h[5] != REC_MESSAGE ||
	    get16(h + 6) != 0)
		return -EBADMSG;
	ri->total = get32(h + 8);
	ri->crc = get32(h + 12);
	ri->salt = get64(h + 16);
	ri->id = get64(h + 24);
	ri->queued = (int64_t)get64(h + 32);
	ri->env_len = get32(h + 40);
	ri->body_len = get32(h + 44);
	if (ri->env_len > ENV_MAX || ri->body_len > BODY_MAX ||
	    (uint64_t)SPOOLREC_HDR_LEN + ri->env_len + ri->body_len != ri->total ||
	    ri->id == 0)
		return -EBADMSG;
	return 0;
}

int spool_verify(const struct spool_ref *ref, const void *rec, size_t len)
{
	const uint8_t *p = rec;
	struct spoolrec_hdr ri;

	if (len != ref->len || len < SPOOLREC_HDR_LEN || spoolrec_parse(p, &ri) < 0 ||
	    ri.id != ref->id || ri.total != ref->len || ri.body_len != ref->body_len ||
	    SPOOLREC_HDR_LEN + ri.env_len != ref->body_off)
		return -EBADMSG;
	if (crc32c(spoolrec_crc_head(p), p + SPOOLREC_HDR_LEN, len - SPOOLREC_HDR_LEN) !=
	    ri.crc)
		return -EBADMSG;
	return 0;
}

char *spool_segment_path(const char *dir, uint64_t seg)
{
	return xasprintf("%s/seg/%016llx.seg", dir, (unsigned long long)seg);
}
