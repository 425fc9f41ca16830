/*
 * tests/config/test_hostname.c - the one host-name rule: virtual-mta's
 * host-name, then the global one, then the system's name.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "tests/lib/testlib.h"

Test(hostname, vmta_then_global_then_system)
{
	struct cfg *cfg = testlib_load_ok("host-name mta.example.com\n"
				  "<virtual-mta v1>\nhost-name v1.example.com\n</virtual-mta>\n"
				  "<virtual-mta v2>\n</virtual-mta>\n");

	cr_expect_str_eq(cfg_host_name(cfg, cfg_vmta_find(cfg, "v1"), "sys"), "v1.example.com");
	cr_expect_str_eq(cfg_host_name(cfg, cfg_vmta_find(cfg, "v2"), "sys"), "mta.example.com");
	cr_expect_str_eq(cfg_host_name(cfg, NULL, "sys"), "mta.example.com");
	cfg_free(cfg);

	cfg = testlib_load_ok("<virtual-mta v2>\n</virtual-mta>\n");
	cr_expect_str_eq(cfg_host_name(cfg, cfg_vmta_find(cfg, "v2"), "sys"), "sys");
	cr_expect_str_eq(cfg_host_name(cfg, NULL, "sys"), "sys");
	cfg_free(cfg);
}

Test(hostname, system_name_is_the_kernels_or_localhost)
{
	char want[256] = "", got[256], tiny[1] = "x";

	cfg_system_host_name(got, sizeof(got));
	if (gethostname(want, sizeof(want) - 1) < 0 || !want[0])
		snprintf(want, sizeof(want), "localhost");
	cr_expect_str_eq(got, want);
	cfg_system_host_name(tiny, sizeof(tiny));
	cr_expect_eq(tiny[0], '\0', "a one-byte buffer holds only the terminator");
}
