/*
 * config/model.h - PRIVATE to config/: what lint.c needs to see of the
 * loaded model beyond the public lookups (where a value came from, which
 * blocks were written).  Same threading rules as config.h.
 */
#ifndef COREMTA_CONFIG_MODEL_H
#define COREMTA_CONFIG_MODEL_H

#include "config/config.h"

/* Origin of an effective setting; file is NULL when it is the default. */
struct cfg_origin cfg_queue_origin(const struct cfg_queue *q,
				   const char *directive);
struct cfg_origin cfg_source_origin(const struct cfg_source *s,
				    const char *directive);
struct cfg_origin cfg_global_origin(const struct cfg *cfg,
				    const char *directive);

/* Each <domain> pattern written in the file, per scope, for lint walks. */
struct cfg_domain_pattern_info {
	const char *pattern;		/* "*", "gmail.com", "[*.]x.org" */
	const char *vmta;		/* NULL global, else vmta or pool name */
	bool in_pool;
	struct cfg_origin origin;
};

size_t cfg_domain_pattern_count(const struct cfg *cfg);
/*
 * cfg_domain_pattern_uint - the value a written <domain> block gives a
 * numeric directive itself (not inherited).  false if it does not set it.
 */
bool cfg_domain_pattern_uint(const struct cfg *cfg, size_t i,
			     const char *directive, uint64_t *value,
			     struct cfg_origin *where);
const struct cfg_domain_pattern_info *cfg_domain_pattern_at(const struct cfg *cfg,
							    size_t i);

/* <source> blocks as written: name ("0/0", "{auth}") and location. */
size_t cfg_source_block_count(const struct cfg *cfg);
const struct cfg_source *cfg_source_block_effective(const struct cfg *cfg,
						    size_t i,
						    struct cfg_origin *where);

#endif
