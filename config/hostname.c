/*
 * config/hostname.c - the one rule for the name coremta gives itself: in
 * its SMTP greeting, in EHLO, as the Reporting-MTA of its DSNs.  Any
 * thread; cfg_system_host_name() asks the kernel, so callers read it once
 * at start-up, not per connection.
 */
#include <stdio.h>
#include <unistd.h>

#include "config/config.h"

void cfg_system_host_name(char *buf, size_t len)
{
	/* gethostname() need not terminate a truncated name */
	if (len < 2 || gethostname(buf, len - 1) < 0 || !buf[0])
		snprintf(buf, len, "localhost");
	else
		buf[len - 1] = '\0';
}

const char *cfg_host_name(const struct cfg *cfg, const struct cfg_vmta *vmta,
			  const char *system_name)
{
	const char *global = cfg ? cfg_global(cfg)->host_name : NULL;

	if (vmta && vmta->host_name)
		return vmta->host_name;
	return global ? global : system_name;
}
