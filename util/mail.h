/*
 * util/mail.h - the mail-wide constants every layer shares: RFC 3461 DSN
 * parameters (NOTIFY=, RET=) and RFC 6152/3030 BODY= types.  One
 * definition, so the session that parses them, the spool that stores them
 * and the client that sends them on cannot drift apart.  Header only; any
 * thread.
 */
#ifndef COREMTA_UTIL_MAIL_H
#define COREMTA_UTIL_MAIL_H

/* RFC 3461 NOTIFY= bits; 0 means the parameter was absent.  The spool
 * stores these values, so they never change. */
enum mail_notify {
	MAIL_NOTIFY_NEVER = 1u << 0,
	MAIL_NOTIFY_SUCCESS = 1u << 1,
	MAIL_NOTIFY_FAILURE = 1u << 2,
	MAIL_NOTIFY_DELAY = 1u << 3,
};

/* RFC 3461 RET=; stored in the spool. */
enum mail_ret {
	MAIL_RET_NONE,			/* RET= absent */
	MAIL_RET_FULL,
	MAIL_RET_HDRS,
};

/* BODY= (RFC 6152 8BITMIME, RFC 3030 BINARYMIME); stored in the spool. */
enum mail_body {
	MAIL_BODY_NONE,			/* BODY= absent */
	MAIL_BODY_7BIT,
	MAIL_BODY_8BITMIME,
	MAIL_BODY_BINARYMIME,
};

#endif
