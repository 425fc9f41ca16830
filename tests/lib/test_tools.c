/*
 * tests/lib/test_tools.c - every outside program the suites and the bench
 * self-test run is installed, with the capabilities they use.  A missing
 * one fails here naming the Debian package that provides it (all of them
 * are in the Makefile's DEB_PKGS, so `make deps` installs them), instead
 * of a puzzling failure deep in another suite.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/lib/dnsmasq.h"
#include "tests/lib/testlib.h"

struct tool {
	const char *path;
	const char *package;
	const char *user;	/* who runs it */
};

static const struct tool tools[] = {
	{ "/usr/bin/swaks", "swaks", "engine/test_intake.c (injection over SMTP)" },
	{ "/usr/sbin/smtp-source", "postfix", "engine/test_intake.c (concurrent injection)" },
	{ "/usr/sbin/postfix", "postfix", "lib/postfix_receiver.py (a real receiving MTA)" },
	{ "/usr/bin/openssl", "openssl", "util/test_tls.c (interop with the openssl CLI)" },
	{ "/usr/bin/python3", "python3", "engine/dsn_e2e.py, lib/*.py, bench/selftest.py" },
	{ "/usr/bin/chromium", "chromium", "engine/test_mgmt.c (the web monitor, headless)" },
};

Test(tools, every_program_the_tests_run_is_installed)
{
	for (size_t i = 0; i < ARRAY_SIZE(tools); i++)
		cr_expect(access(tools[i].path, X_OK) == 0,
			  "%s is missing (used by %s): apt-get install %s, or `make deps`",
			  tools[i].path, tools[i].user, tools[i].package);
	cr_expect(dnsmasq_path() != NULL,
		  "dnsmasq is missing (used by shards/test_dns.c and test_delivery.c): "
		  "apt-get install dnsmasq-base, or `make deps`");
}

/*
 * swaks does STARTTLS and implicit TLS only with Net::SSLeay and
 * IO::Socket::SSL, which apt-get --no-install-recommends leaves out.
 */
Test(tools, swaks_speaks_tls_and_auth)
{
	const char *argv[] = { "/usr/bin/swaks", "--support", NULL };
	char *out, *err;

	if (access(argv[0], X_OK) != 0)
		cr_assert_fail("/usr/bin/swaks is missing: apt-get install swaks, or `make deps`");
	cr_assert_eq(testlib_run(argv, 30, &out, &err), 0, "%s%s", out, err);
	/* swaks reports its capabilities on stdout or stderr by version */
	char *all = xasprintf("%s%s", out, err);
	cr_expect(!strstr(all, "TLS not available"),
		  "swaks cannot do STARTTLS (the intake's TLS tests need it): "
		  "apt-get install libnet-ssleay-perl libio-socket-ssl-perl, or `make deps`\n%s", all);
	cr_expect(strstr(all, "Basic AUTH supported"),
		  "swaks cannot do AUTH PLAIN/LOGIN (the intake's AUTH tests need it)\n%s", all);
	free(all), free(out), free(err);
}

/* The Python the tests run uses the standard library only; check it is whole. */
Test(tools, python_has_the_modules_the_tests_import)
{
	const char *argv[] = { "/usr/bin/python3", "-c",
		"import argparse, email, email.parser, email.policy, email.utils, json, "
		"importlib.util, smtplib, socket, subprocess, tempfile", NULL };
	char *out, *err;

	if (access(argv[0], X_OK) != 0)
		cr_assert_fail("/usr/bin/python3 is missing: apt-get install python3, or `make deps`");
	cr_expect_eq(testlib_run(argv, 30, &out, &err), 0,
		     "python3 lacks a module the tests import (apt-get install python3): %s", err);
	free(out), free(err);
}
