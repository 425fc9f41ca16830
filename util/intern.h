/*
 * util/intern.h - shared, refcounted copies of the strings that repeat
 * from message to message: the sender of a campaign, its virtual-mta and
 * job id, the injecting client's address (issue 16: per-recipient state
 * is compact).  A message holds one reference per string it shares, so a
 * million queued messages from one sender hold one copy of it.
 *
 * Only what repeats is kept: a string is shared from its second sighting
 * on (a small filter of recent hashes remembers the first), so a VERP
 * sender, unique per message, never enters the table.  The table holds
 * at most max strings; when full, strings no message holds any more are
 * dropped, and if none is, intern_get answers NULL and the caller keeps
 * its own copy.  Memory is bounded either way.
 *
 * Threads: a table belongs to one thread (an intake thread), which calls
 * intern_tab_new, intern_get, intern_count and intern_tab_free;
 * intern_unref from any thread.  A string outlives its table while a
 * message still holds it.
 */
#ifndef COREMTA_UTIL_INTERN_H
#define COREMTA_UTIL_INTERN_H

#include <stddef.h>

struct intern_tab;

/* intern_tab_new - a table of at most max strings (max >= 1). */
struct intern_tab *intern_tab_new(size_t max);
/* intern_tab_free - drops the table's references; NULL ok. */
void intern_tab_free(struct intern_tab *t);

/*
 * intern_get - the shared copy of s, with one reference for the caller
 * (intern_unref drops it), or NULL: s was not seen lately, or the table
 * is full of strings in use.
 */
const char *intern_get(struct intern_tab *t, const char *s);
/* intern_unref - drop one reference intern_get gave.  Any thread. */
void intern_unref(const char *s);
/* intern_count - strings in the table now. */
size_t intern_count(const struct intern_tab *t);

#endif
