/*
 * tests/util/tsan_ring.c - ring_stress() as a plain program, built with
 * ThreadSanitizer by `make tsan`: Criterion, which hosts the same run in
 * tests/util/test_ring.c, cannot start under TSan (Snaipe/Criterion#274).
 * Exit status 0 when every run passed; TSan's own reports fail it too
 * (halt_on_error).  Runs on its main thread plus one producer.
 */
#include <stdio.h>

#include "tests/util/ring_stress.h"

int main(void)
{
	/* (capacity, batch): a tiny ring keeps both sides at the edges */
	static const size_t runs[][2] = { { 2, 1 }, { 8, 3 }, { 1024, 32 }, { 64, 64 } };
	char why[256];
	int failed = 0;

	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		if (ring_stress(200000, runs[i][0], runs[i][1], why, sizeof(why)) < 0) {
			fprintf(stderr, "tsan_ring: capacity %zu, batch %zu: %s\n", runs[i][0],
				runs[i][1], why);
			failed = 1;
		}
	}
	if (!failed)
		printf("tsan_ring: 4 runs of 200000 items, every one once, in order\n");
	return failed;
}
