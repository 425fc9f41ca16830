#!/usr/bin/env python3
"""tests/engine/dsn_e2e.py - the real parts of the DSN delivery tests.

    dsn_e2e.py send PORT FROM RCPT[,RCPT...] [--ret FULL|HDRS] [--envid X]
                    [--notify N] [--orcpt ADDR] [--subject S]
        inject one message with Python's smtplib (a client that is not
        ours) using RFC 3461 parameters; exit 0 on 250 after DATA.

    dsn_e2e.py check FILE --to ADDR --action failed|delayed
                    --rcpt ADDR=STATUS[=DIAG] ... [--orcpt ADDR=ORCPT]
                    [--envid X] [--returned full|headers] [--subject S]
        parse FILE (a DSN as the receiver got it) with the stdlib email
        package and check it is an RFC 3464 report with exactly those
        recipients; exit 1 with the reason on the first mismatch.
"""
import argparse
import email
import email.policy
import smtplib
import sys


def fail(why):
    print("dsn check: " + why, file=sys.stderr)
    sys.exit(1)


def cmd_send(a):
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n"
           "Message-ID: <dsn-e2e-%s@client.test>\r\n\r\nhello\r\n"
           % (a.sender, a.rcpts.split(",")[0], a.subject, a.envid or "x"))
    mail_opts = []
    if a.ret:
        mail_opts.append("RET=" + a.ret)
    if a.envid:
        mail_opts.append("ENVID=" + a.envid)
    rcpt_opts = []
    if a.notify:
        rcpt_opts.append("NOTIFY=" + a.notify)
    if a.orcpt:
        rcpt_opts.append("ORCPT=rfc822;" + a.orcpt)
    with smtplib.SMTP("127.0.0.1", int(a.port), timeout=20) as s:
        s.ehlo("client.test")
        if not s.has_extn("dsn"):
            fail("the server does not offer DSN")
        refused = s.sendmail(a.sender, a.rcpts.split(","), msg.encode(),
                             mail_options=mail_opts, rcpt_options=rcpt_opts)
        if refused:
            fail("refused: %r" % refused)


def field(block, name):
    v = block.get(name)
    return None if v is None else " ".join(str(v).split())


def cmd_check(a):
    raw = open(a.file, "rb").read()
    if b"\n" in raw.replace(b"\r\n", b""):
        fail("a bare LF in the DSN")
    for line in raw.split(b"\r\n"):
        if len(line) > 998:
            fail("a line longer than 998 octets")
    m = email.message_from_bytes(raw, policy=email.policy.default)
    if m.get_content_type() != "multipart/report":
        fail("content type %s, not multipart/report" % m.get_content_type())
    if m.get_param("report-type") != "delivery-status":
        fail("report-type %r" % m.get_param("report-type"))
    if a.to not in str(m["To"]):
        fail("To: %s, expected %s" % (m["To"], a.to))
    if m["Auto-Submitted"] is None or "auto-replied" not in str(m["Auto-Submitted"]):
        fail("no Auto-Submitted: auto-replied")
    parts = m.get_payload()
    if len(parts) != 3:
        fail("%d parts, expected 3" % len(parts))
    if parts[0].get_content_type() != "text/plain":
        fail("first part is %s" % parts[0].get_content_type())
    if parts[1].get_content_type() != "message/delivery-status":
        fail("second part is %s" % parts[1].get_content_type())
    blocks = parts[1].get_payload()
    per_msg, per_rcpt = blocks[0], blocks[1:]
    if not str(per_msg.get("Reporting-MTA", "")).startswith("dns;"):
        fail("Reporting-MTA %r" % per_msg.get("Reporting-MTA"))
    if a.envid and field(per_msg, "Original-Envelope-Id") != a.envid:
        fail("Original-Envelope-Id %r" % field(per_msg, "Original-Envelope-Id"))
    want = {}
    for r in a.rcpt:
        bits = r.split("=", 2)
        want[bits[0].lower()] = bits[1:]
    got = {}
    for b in per_rcpt:
        fr = field(b, "Final-Recipient") or ""
        if not fr.lower().startswith("rfc822;"):
            fail("Final-Recipient %r" % fr)
        got[fr.split(";", 1)[1].strip().lower()] = b
    if sorted(got) != sorted(want):
        fail("recipients %s, expected %s" % (sorted(got), sorted(want)))
    orcpt = dict(o.split("=", 1) for o in a.orcpt)
    for addr, (status, *diag) in want.items():
        b = got[addr]
        if field(b, "Action") != a.action:
            fail("%s: Action %r" % (addr, field(b, "Action")))
        if field(b, "Status") != status:
            fail("%s: Status %r, expected %s" % (addr, field(b, "Status"), status))
        if diag and diag[0] not in (field(b, "Diagnostic-Code") or ""):
            fail("%s: Diagnostic-Code %r lacks %r"
                 % (addr, field(b, "Diagnostic-Code"), diag[0]))
        if a.action == "delayed" and not field(b, "Will-Retry-Until"):
            fail("%s: a delay notice without Will-Retry-Until" % addr)
        if addr in orcpt and field(b, "Original-Recipient") != "rfc822;" + orcpt[addr]:
            fail("%s: Original-Recipient %r" % (addr, field(b, "Original-Recipient")))
    ret = parts[2]
    if a.returned == "full":
        if ret.get_content_type() != "message/rfc822":
            fail("returned part is %s, expected message/rfc822" % ret.get_content_type())
        inner = ret.get_payload()[0]
        if a.subject and str(inner["Subject"]) != a.subject:
            fail("returned Subject %r" % inner["Subject"])
        if "hello" not in inner.get_content():
            fail("the returned message lost its body")
    else:
        if ret.get_content_type() != "text/rfc822-headers":
            fail("returned part is %s, expected text/rfc822-headers" % ret.get_content_type())
        text = ret.get_content() if hasattr(ret, "get_content") else ret.get_payload()
        if a.subject and ("Subject: " + a.subject) not in text:
            fail("returned headers lack the Subject")
        if "hello" in text:
            fail("headers only, yet the body came back")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("port")
    s.add_argument("sender")
    s.add_argument("rcpts")
    s.add_argument("--ret")
    s.add_argument("--envid")
    s.add_argument("--notify")
    s.add_argument("--orcpt")
    s.add_argument("--subject", default="dsn test")
    c = sub.add_parser("check")
    c.add_argument("file")
    c.add_argument("--to", required=True)
    c.add_argument("--action", required=True)
    c.add_argument("--rcpt", action="append", default=[])
    c.add_argument("--orcpt", action="append", default=[])
    c.add_argument("--envid")
    c.add_argument("--returned", choices=["full", "headers"], default="headers")
    c.add_argument("--subject")
    a = ap.parse_args()
    if a.cmd == "send":
        cmd_send(a)
    else:
        cmd_check(a)


if __name__ == "__main__":
    main()
