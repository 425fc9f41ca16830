#!/usr/bin/env python3
"""make_reports.py DIR - write the inbound reports test_report.c parses.

Each report is built with Python's email package in the shape a real
provider sends (DSNs from Postfix, Gmail, Exchange Online; qmail, Exchange,
Gmail and Postfix text notices; ARF from Yahoo- and AOL-style loops;
Microsoft JMRP), with diagnostics quoted from tests/data/bounce-corpus.tsv.
Odd-numbered files are written with CRLF line ends, the rest with LF.
"""
import email.policy
import os
import sys
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def original(msgid, job, frm="News <news@sender.example>", to="someone@example.org",
             return_path=None, extra=None):
    o = Message()
    if return_path:
        o["Return-Path"] = return_path
    o["Received"] = "from app1 (10.0.0.5) by mta.sender.example; Mon, 7 Dec 2026 00:00:00 +0000"
    o["From"] = frm
    o["To"] = to
    o["Subject"] = "Our December offers"
    o["Message-ID"] = msgid
    o["X-Job"] = job
    for k, v in (extra or {}).items():
        o[k] = v
    o.set_payload("Hello,\nthe offers.\n")
    return o


def fields(pairs):
    m = Message()
    for k, v in pairs:
        m[k] = v
    return m


def dsn(frm, subject, text, per_msg, per_rcpts, orig, headers_only=False):
    m = MIMEMultipart("report", report_type="delivery-status")
    m["From"] = frm
    m["To"] = "bounces@sender.example"
    m["Subject"] = subject
    m.attach(MIMEText(text))
    ds = MIMEBase("message", "delivery-status")
    ds.set_payload([fields(per_msg)] + [fields(r) for r in per_rcpts])
    m.attach(ds)
    if headers_only:
        h = MIMEText(orig.as_string().split("\n\n")[0] + "\n", "rfc822-headers")
        m.attach(h)
    else:
        m.attach(MIMEMessage(orig))
    return m


def text_notice(frm, subject, body, cte=None):
    m = MIMEText(body)
    if cte == "base64":
        m = MIMEText(body, "plain", "utf-8")  # utf-8 text gets base64
    m["From"] = frm
    m["To"] = "bounces@sender.example"
    m["Subject"] = subject
    return m


def arf(frm, ua, fb_fields, orig):
    m = MIMEMultipart("report", report_type="feedback-report")
    m["From"] = frm
    m["To"] = "fbl@fbl.sender.example"
    m["Subject"] = "FW: Our December offers"
    m.attach(MIMEText("This is an email abuse report for an email message received from IP 192.0.2.10.\n"))
    fr = MIMEBase("message", "feedback-report")
    fr.set_payload("".join(f"{k}: {v}\n" for k, v in [("Feedback-Type", "abuse"),
                                                       ("User-Agent", ua),
                                                       ("Version", "1")] + fb_fields))
    m.attach(fr)
    m.attach(MIMEMessage(orig))
    return m


def reports():
    yield "dsn_postfix", dsn(
        "MAILER-DAEMON@mail.example.org (Mail Delivery System)",
        "Undelivered Mail Returned to Sender",
        "This is the mail system at host mail.example.org.\n\nI'm sorry to have to inform you ...\n",
        [("Reporting-MTA", "dns; mail.example.org"), ("X-Postfix-Queue-ID", "4F1A2B"),
         ("Arrival-Date", "Mon,  7 Dec 2026 00:00:01 +0000")],
        [[("Final-Recipient", "rfc822; gone@example.org"),
          ("Original-Recipient", "rfc822;gone@example.org"),
          ("Action", "failed"), ("Status", "5.1.1"),
          ("Remote-MTA", "dns; mx.example.org"),
          ("Diagnostic-Code", "smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown in virtual mailbox table")]],
        original("<m1@sender.example>", "job-1", to="gone@example.org"), headers_only=True)

    yield "dsn_gmail", dsn(
        "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        "Delivery Status Notification (Failure)",
        "Address not found\n\nYour message wasn't delivered to nobody@gmail.com because the address couldn't be found.\n",
        [("Reporting-MTA", "dns; googlemail.com"), ("Arrival-Date", "Mon, 07 Dec 2026 00:00:02 -0800")],
        [[("Final-Recipient", "rfc822; nobody@gmail.com"), ("Action", "failed"),
          ("Status", "5.1.1"), ("Remote-MTA", "dns; gmail-smtp-in.l.google.com. (2607:f8b0::1b)"),
          ("Diagnostic-Code", "smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. - gsmtp")]],
        original("<m2@sender.example>", "job-2", to="nobody@gmail.com"))

    yield "dsn_o365_two_rcpts", dsn(
        "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@corp.example>",
        "Undeliverable: Our December offers",
        "Your message to a.user@corp.example couldn't be delivered.\n",
        [("Reporting-MTA", "dns;AM0PR01MB1234.eurprd01.prod.outlook.com"),
         ("Received-From-MTA", "dns;mta.sender.example")],
        [[("Final-Recipient", "rfc822;a.user@corp.example"), ("Action", "failed"),
          ("Status", "5.1.10"),
          ("Diagnostic-Code", "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup")],
         [("Final-Recipient", "rfc822;b.full@corp.example"), ("Action", "failed"),
          ("Status", "5.2.2"),
          ("Diagnostic-Code", "smtp;554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException")]],
        original("<m3@sender.example>", "job-3"))

    yield "text_qmail", text_notice(
        "MAILER-DAEMON@mx.example.net", "failure notice",
        "Hi. This is the qmail-send program at mx.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<nouser@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        "--- Below this line is a copy of the message.\n\n"
        + original("<m4@sender.example>", "job-4").as_string())

    yield "text_exchange", text_notice(
        "postmaster@corp.example", "Undeliverable: Our December offers",
        "Delivery has failed to these recipients or groups:\n\n"
        "old.user@corp.example\n"
        "The e-mail address you entered couldn't be found. Please check the recipient's e-mail address and try to resend the message.\n\n"
        "Diagnostic information for administrators:\n\n"
        "Generating server: EXCH01.corp.example\n\n"
        "old.user@corp.example\n"
        "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##\n\n"
        "Original message headers:\n\n"
        + original("<m5@sender.example>", "job-5").as_string().split("\n\n")[0] + "\n")

    yield "text_gmail", text_notice(
        "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        "Delivery Status Notification (Failure)",
        "Delivery to the following recipient failed permanently:\n\n"
        "     nobody2@gmail.com\n\n"
        "Technical details of permanent failure:\n"
        "Google tried to deliver your message, but it was rejected by the server for the recipient domain gmail.com by gmail-smtp-in.l.google.com. [74.125.1.27].\n\n"
        "The error that the other server returned was:\n"
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
        "550 5.1.1 double-checking the recipient's email address for typos - gsmtp\n\n"
        "----- Original message -----\n\n"
        + original("<m6@sender.example>", "job-6").as_string())

    yield "text_postfix_base64", text_notice(
        "MAILER-DAEMON@mx.example.com (Mail Delivery System)",
        "Undelivered Mail Returned to Sender",
        "This is the mail system at host mx.example.com.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "<full@example.com>: host mx.example.com[192.0.2.1] said: 552 5.2.2\n"
        "    <full@example.com>: Mailbox is full – try later (in reply to RCPT TO command)\n",
        cte="base64")

    yield "text_verp_only", text_notice(
        "postmaster@small.example", "Undeliverable: hello",
        "Your message could not be delivered.\nReason: 550 Mailbox unavailable\n")

    yield "arf_yahoo", arf(
        "feedback@arf.mail.yahoo.com", "Yahoo!-Mail-Feedback/2.0",
        [("Original-Mail-From", "<bounces-complainer=yahoo.com@sender.example>"),
         ("Original-Rcpt-To", "<complainer@yahoo.com>"),
         ("Received-Date", "Mon, 7 Dec 2026 00:00:03 +0000"),
         ("Reported-Domain", "sender.example"),
         ("Source-IP", "192.0.2.10"),
         ("Authentication-Results", "mta1.mail.yahoo.com; dkim=pass header.d=sender.example")],
        original("<m7@sender.example>", "job-7", to="complainer@yahoo.com"))

    yield "arf_aol_verp", arf(
        "scomp@aol.net", "AOL SComp",
        [("Reported-Domain", "sender.example"), ("Source-IP", "192.0.2.11")],
        original("<m8@sender.example>", "job-8", to="redacted@aol.com",
                 return_path="<bounces-fan=aol.com@sender.example>"))

    jm = MIMEMultipart()
    jm["From"] = "staff@hotmail.com"
    jm["To"] = "fbl@fbl.sender.example"
    jm["Subject"] = "complaint about message from 192.0.2.12"
    jm.attach(MIMEText("This is an email abuse report for an email message received from IP 192.0.2.12 on Mon, 07 Dec 2026 00:00:04 -0800.\n"))
    jm.attach(MIMEMessage(original("<m9@sender.example>", "job-9", to="reporter@hotmail.com",
                                   extra={"X-HmXmrOriginalRecipient": "<reporter@hotmail.com>"})))
    yield "jmrp", jm

    yield "not_ooo", text_notice("Someone <someone@example.org>", "Out of office: Our December offers",
                                 "I am away until January. For urgent matters write to boss@example.org.\n")
    yield "not_plain", text_notice("Friend <friend@example.org>", "hello",
                                   "see you at 5.30, bring user@example.com along\n")


def main():
    out = sys.argv[1]
    for i, (name, msg) in enumerate(reports()):
        pol = email.policy.SMTP if i % 2 else email.policy.compat32.clone(linesep="\n")
        with open(os.path.join(out, name + ".eml"), "wb") as f:
            f.write(msg.as_bytes(policy=pol))


main()
