#!/usr/bin/env python3
"""tests/engine/fbl_e2e.py - the real parts of the feedback-loop test.

    fbl_e2e.py send PORT FROM RCPT=CODE[,RCPT=CODE...]
        one transaction with smtplib: each RCPT must get CODE (250, 550);
        DATA when any was accepted, which must get 250.
    fbl_e2e.py wait-refused PORT FROM RCPT SECS
        RCPT until it gets a 550 (the store is fed asynchronously), RSET.
    fbl_e2e.py dsn PORT TO RCPT STATUS DIAG
        an RFC 3464 report (built with the email package, Postfix's shape)
        for RCPT from the null sender to TO; 250 expected.  A 4.x.x STATUS
        makes it a delay notice (Action: delayed).
    fbl_e2e.py arf PORT TO RCPT
        an ARF abuse report (Yahoo's shape) for RCPT to TO; 250 expected.
    fbl_e2e.py send-id PORT FROM RCPT MESSAGE-ID JOB
        one message to RCPT with that Message-ID and X-Job; 250 expected.
    fbl_e2e.py text-bounce PORT TO MESSAGE-ID
        a plain-text bounce from MAILER-DAEMON that names no recipient and
        quotes only the original's From, Subject and Message-ID.
    fbl_e2e.py acct FILE TYPE RCPT FIELD=VALUE...
        the accounting CSV has a TYPE record for RCPT with those values.
"""
import csv
import email.policy
import smtplib
import sys
import time
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def fail(why):
    print("fbl_e2e: " + why, file=sys.stderr)
    sys.exit(1)


def original(to):
    o = Message()
    o["Return-Path"] = "<bounces-%s@bounces.sender.example>" % to.replace("@", "=")
    o["From"] = "News <news@sender.example>"
    o["To"] = to
    o["Subject"] = "offers"
    o["Message-ID"] = "<orig-%s>" % to
    o["X-Job"] = "job-e2e"
    o.set_payload("hello\n")
    return o


def send_raw(port, sender, to, msg):
    with smtplib.SMTP("127.0.0.1", int(port), timeout=20) as s:
        s.ehlo("reporter.test")
        # raw payloads keep their LFs: every line end CRLF on the wire
        raw = msg.as_bytes(policy=email.policy.SMTP).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        refused = s.sendmail(sender, [to], raw)
        if refused:
            fail("refused: %r" % refused)


def cmd_send(port, sender, spec):
    with smtplib.SMTP("127.0.0.1", int(port), timeout=20) as s:
        s.ehlo("client.test")
        code, msg = s.mail(sender)
        if code != 250:
            fail("MAIL FROM: %d %s" % (code, msg))
        accepted = []
        for item in spec.split(","):
            rcpt, want = item.split("=")
            code, msg = s.rcpt(rcpt)
            if code != int(want):
                fail("RCPT %s: %d %s, expected %s" % (rcpt, code, msg.decode(), want))
            if code == 250:
                accepted.append(rcpt)
        if not accepted:
            s.rset()
            return
        body = ("From: <%s>\r\nTo: <%s>\r\nSubject: offers\r\n"
                "Message-ID: <e2e-%f@client.test>\r\n\r\nhello\r\n" % (sender, accepted[0], time.time()))
        code, msg = s.data(body.encode())
        if code != 250:
            fail("DATA: %d %s" % (code, msg))


def cmd_wait_refused(port, sender, rcpt, secs):
    end = time.time() + float(secs)
    last = None
    while time.time() < end:
        with smtplib.SMTP("127.0.0.1", int(port), timeout=20) as s:
            s.ehlo("client.test")
            s.mail(sender)
            code, msg = s.rcpt(rcpt)
            s.rset()
            if code == 550:
                print(msg.decode())
                return
            last = (code, msg)
        time.sleep(0.2)
    fail("RCPT %s still gets %r" % (rcpt, last))


def cmd_dsn(port, to, rcpt, status, diag):
    m = MIMEMultipart("report", report_type="delivery-status")
    m["From"] = "MAILER-DAEMON@mx.example.org (Mail Delivery System)"
    m["To"] = to
    m["Subject"] = ("Delayed Mail (still being retried)" if status.startswith("4")
                    else "Undelivered Mail Returned to Sender")
    m.attach(MIMEText("This is the mail system at host mx.example.org.\n"))
    ds = MIMEBase("message", "delivery-status")
    per_msg = Message()
    per_msg["Reporting-MTA"] = "dns; mx.example.org"
    per_rcpt = Message()
    per_rcpt["Final-Recipient"] = "rfc822; " + rcpt
    # a 4.x.x status is a delay notice (Postfix's "delayed mail" report)
    per_rcpt["Action"] = "delayed" if status.startswith("4") else "failed"
    per_rcpt["Status"] = status
    per_rcpt["Diagnostic-Code"] = "smtp; " + diag
    ds.set_payload([per_msg, per_rcpt])
    m.attach(ds)
    m.attach(MIMEMessage(original(rcpt)))
    send_raw(port, "", to, m)


def cmd_arf(port, to, rcpt):
    m = MIMEMultipart("report", report_type="feedback-report")
    m["From"] = "feedback@arf.mail.yahoo.com"
    m["To"] = to
    m["Subject"] = "FW: offers"
    m.attach(MIMEText("This is an email abuse report.\n"))
    fr = MIMEBase("message", "feedback-report")
    fr.set_payload("Feedback-Type: abuse\nUser-Agent: Yahoo!-Mail-Feedback/2.0\nVersion: 1\n"
                   "Original-Mail-From: <bounces-%s@bounces.sender.example>\n"
                   "Original-Rcpt-To: <%s>\nSource-IP: 192.0.2.10\n"
                   "Reported-Domain: sender.example\n" % (rcpt.replace("@", "="), rcpt))
    m.attach(fr)
    m.attach(MIMEMessage(original(rcpt)))
    send_raw(port, "feedback@arf.mail.yahoo.com", to, m)


def cmd_send_id(port, sender, rcpt, msgid, job):
    body = ("From: <%s>\r\nTo: <%s>\r\nSubject: statement\r\nMessage-ID: %s\r\n"
            "X-Job: %s\r\n\r\nhello\r\n" % (sender, rcpt, msgid, job))
    with smtplib.SMTP("127.0.0.1", int(port), timeout=20) as s:
        s.ehlo("client.test")
        refused = s.sendmail(sender, [rcpt], body.encode())
        if refused:
            fail("refused: %r" % refused)


def cmd_text_bounce(port, to, msgid):
    m = MIMEText("Sorry, we were unable to deliver your message.\n"
                 "The mailbox is no longer in service.\n\n"
                 "----- Original message -----\n"
                 "From: news@sender.example\nSubject: statement\nMessage-ID: %s\n" % msgid)
    m["From"] = "MAILER-DAEMON@mx.example.org"
    m["To"] = to
    m["Subject"] = "Returned mail: delivery failed"
    send_raw(port, "", to, m)


def cmd_acct(path, typ, rcpt, pairs):
    rows = list(csv.DictReader(open(path, newline="")))
    mine = [r for r in rows if r.get("type") == typ and r.get("rcpt") == rcpt]
    if not mine:
        fail("no %s record for %s in %s:\n%s" % (typ, rcpt, path, open(path).read()))
    for p in pairs:
        k, v = p.split("=", 1)
        if mine[0].get(k) != v:
            fail("%s %s: %s=%r, expected %r" % (typ, rcpt, k, mine[0].get(k), v))


def main():
    a = sys.argv[1:]
    if a[0] == "send":
        cmd_send(a[1], a[2], a[3])
    elif a[0] == "wait-refused":
        cmd_wait_refused(a[1], a[2], a[3], a[4])
    elif a[0] == "dsn":
        cmd_dsn(a[1], a[2], a[3], a[4], a[5])
    elif a[0] == "arf":
        cmd_arf(a[1], a[2], a[3])
    elif a[0] == "send-id":
        cmd_send_id(a[1], a[2], a[3], a[4], a[5])
    elif a[0] == "text-bounce":
        cmd_text_bounce(a[1], a[2], a[3])
    elif a[0] == "acct":
        cmd_acct(a[1], a[2], a[3], a[4:])
    else:
        fail("unknown command " + a[0])


main()
