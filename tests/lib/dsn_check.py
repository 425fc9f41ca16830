#!/usr/bin/python3
"""dsn_check.py - check a delivery status notification with Python's own
MIME parser (email.parser.BytesParser, policy=default), not coremta's.

Usage: dsn_check.py DSN_FILE SPEC_JSON

SPEC_JSON says what the DSN must contain (tests/engine/test_dsn.c writes
it): kind failure|delay, format mime|plain, reporting_mta, from, to, now,
arrival, envid, received_from, global, ret full|headers|none, original
(path of the original message), eightbit, headers_cut, headers_folded,
long_lines_ok, human (strings part 1 must hold) and rcpts, a list of
{final, orcpt, action, status, remote_mta, diag, last_attempt,
retry_until, human}.  A value of null means "field absent".

Exit status 0 when everything matches; 1 with the reasons on stderr.
"""
import email.policy
import email.utils
import json
import re
import sys
from email.parser import BytesParser, Parser

errors = []


def fail(msg):
    errors.append(msg)


def expect(what, got, want):
    if got != want:
        fail(f"{what}: got {got!r}, want {want!r}")


def date_of(v):
    return int(email.utils.parsedate_to_datetime(str(v)).timestamp())


def field(block, name):
    """The one value of name in block, None if absent; two is an error."""
    vals = block.get_all(name) or []
    if len(vals) > 1:
        fail(f"{name} appears {len(vals)} times")
    return str(vals[0]) if vals else None


def expect_field(block, name, want, where):
    expect(f"{where} {name}", field(block, name), want)


def expect_date(block, name, want, where):
    v = field(block, name)
    if not want:
        expect(f"{where} {name}", v, None)
    elif v is None:
        fail(f"{where} {name} missing")
    else:
        expect(f"{where} {name}", date_of(v), want)


def normalize(raw):
    """Line ends as coremta must send them: CRLF; a CR ending no line a space."""
    t = raw.replace(b"\r\n", b"\n").replace(b"\r", b" ")
    return t.replace(b"\n", b"\r\n")


def header_section(raw):
    t = normalize(raw)
    if t.startswith(b"\r\n"):
        return b""
    i = t.find(b"\r\n\r\n")
    return t if i < 0 else t[: i + 2]


def check_wire(raw, spec):
    for n, line in enumerate(raw.split(b"\r\n")[:-1], 1):
        if b"\r" in line or b"\n" in line:
            fail(f"line {n}: bare CR or LF")
            break
        if len(line) > 998 and not spec.get("long_lines_ok"):
            fail(f"line {n}: {len(line)} octets")
            break
    if not raw.endswith(b"\r\n"):
        fail("the message does not end with CRLF")


def check_blocks(blocks, spec):
    """Per-message block, then one block per recipient (RFC 3464 2.2, 2.3)."""
    rcpts = spec["rcpts"]
    if len(blocks) != 1 + len(rcpts):
        fail(f"{len(blocks)} delivery-status blocks, want {1 + len(rcpts)}")
        return
    m = blocks[0]
    expect_field(m, "Reporting-MTA", "dns; " + spec["reporting_mta"], "per-message")
    expect_field(m, "Original-Envelope-Id", spec.get("envid"), "per-message")
    expect_field(m, "Received-From-MTA", spec.get("received_from"), "per-message")
    expect_date(m, "Arrival-Date", spec.get("arrival"), "per-message")
    for i, (b, r) in enumerate(zip(blocks[1:], rcpts)):
        w = f"recipient {i}"
        expect_field(b, "Final-Recipient", r["final"], w)
        expect_field(b, "Original-Recipient", r.get("orcpt"), w)
        expect_field(b, "Action", r["action"], w)
        expect_field(b, "Status", r["status"], w)
        expect_field(b, "Remote-MTA", r.get("remote_mta"), w)
        expect_field(b, "Diagnostic-Code", r.get("diag"), w)
        expect_date(b, "Last-Attempt-Date", r.get("last_attempt"), w)
        expect_date(b, "Will-Retry-Until", r.get("retry_until"), w)
        for k in b.keys():
            if k not in ("Final-Recipient", "Original-Recipient", "Action", "Status",
                         "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date",
                         "Will-Retry-Until"):
                fail(f"{w}: unexpected field {k}")


def check_human(text, spec):
    for s in spec.get("human", []) + [s for r in spec["rcpts"] for s in r.get("human", [])]:
        if s not in re.sub(r"\s+", " ", text):
            fail(f"notification lacks {s!r}")


def check_top(msg, spec, orig):
    for h in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
              "Auto-Submitted", "Content-Type"):
        if len(msg.get_all(h) or []) != 1:
            fail(f"header {h} appears {len(msg.get_all(h) or [])} times")
    if errors:
        return
    frm = msg["From"].addresses
    expect("From address", frm[0].addr_spec if frm else None, spec["from"])
    expect("From display name", frm[0].display_name if frm else None, "Mail Delivery System")
    to = msg["To"].addresses
    expect("To", to[0].addr_spec if to else None, spec["to"])
    expect("Subject", str(msg["Subject"]), "Delayed Mail (still being retried)"
           if spec["kind"] == "delay" else "Undelivered Mail Returned to Sender")
    expect("Date", date_of(msg["Date"]), spec["now"])
    mid = str(msg["Message-ID"])
    if not (mid.startswith("<") and mid.endswith("@" + spec["reporting_mta"] + ">")):
        fail(f"Message-ID {mid!r}")
    expect("Auto-Submitted", str(msg["Auto-Submitted"]), "auto-replied")
    expect("MIME-Version", str(msg["MIME-Version"]), "1.0")
    omid = orig["Message-ID"] if orig is not None else None
    want = str(omid).strip() if omid else None
    expect("In-Reply-To", field(msg, "In-Reply-To"), want)
    expect("References", field(msg, "References"), want)


def check_returned(part, raw, spec, orig_raw, orig):
    ctype = part.get_content_type()
    cte = field(part, "Content-Transfer-Encoding")
    expect("returned part Content-Transfer-Encoding", cte, "8bit" if spec.get("eightbit") else None)
    if spec["ret"] == "full":
        expect("returned part type", ctype, "message/rfc822")
        inner = part.get_payload(0)
        for h in ("Subject", "Message-ID"):
            expect(f"returned {h}", str(inner[h]) if inner[h] else None,
                   str(orig[h]) if orig[h] else None)
        if normalize(orig_raw) not in raw:
            fail("the original (CRLF) is not returned byte for byte")
        return
    expect("returned part type", ctype, "text/rfc822-headers")
    got = part.get_payload(decode=True)
    want = header_section(orig_raw)
    if spec.get("headers_cut"):
        if not (len(got) < len(want) and want.startswith(got) and got.endswith(b"\r\n")
                and len(got) <= 64 * 1024 + 2048):
            fail(f"cut header section: {len(got)} of {len(want)} octets, not a line prefix")
        elif want[len(got):len(got) + 1] in (b" ", b"\t"):
            fail("header section cut inside a folded field")
    elif spec.get("headers_folded"):
        if re.sub(rb"\s+", b"", got) != re.sub(rb"\s+", b"", want):
            fail("folded header section differs from the original's")
    elif got.rstrip(b"\r\n") != want.rstrip(b"\r\n"):
        fail(f"header section differs: {got[:200]!r} vs {want[:200]!r}")


def blocks_of_text(text):
    """A delivery-status body as Python's header parser reads each block."""
    out = []
    for chunk in re.split(r"\r?\n\r?\n", text.strip("\r\n")):
        out.append(Parser(policy=email.policy.default).parsestr(chunk + "\n", headersonly=True))
    return out


def main():
    raw = open(sys.argv[1], "rb").read()
    spec = json.loads(sys.argv[2])
    orig_raw = open(spec["original"], "rb").read() if spec.get("original") else b""
    orig = BytesParser(policy=email.policy.default).parsebytes(orig_raw) if orig_raw else None
    check_wire(raw, spec)
    report = "global-delivery-status" if spec.get("global") else "delivery-status"
    if spec.get("global"):
        # Python splits only message/delivery-status into field blocks; the
        # global type has the same syntax with UTF-8 allowed (RFC 6533).
        if b"Content-Type: message/global-delivery-status\r\n" not in raw:
            fail("no message/global-delivery-status part")
        raw_for_parse = raw.replace(b"Content-Type: message/global-delivery-status\r\n",
                                    b"Content-Type: message/delivery-status\r\n")
    else:
        raw_for_parse = raw
    msg = BytesParser(policy=email.policy.default).parsebytes(raw_for_parse)
    for p in msg.walk():
        if p.defects:
            fail(f"{p.get_content_type()}: parser defects {p.defects}")
    check_top(msg, spec, orig)

    if spec["format"] == "plain":
        expect("Content-Type", msg.get_content_type(), "text/plain")
        expect("charset", msg.get_content_charset(), spec.get("charset", "us-ascii"))
        body = msg.get_payload(decode=True).decode("utf-8", "surrogateescape")
        i = body.find("Reporting-MTA:")
        j = body.find("\n-----", i) if i >= 0 else -1
        if i < 0:
            fail("no Reporting-MTA in the plain-text body")
        else:
            check_blocks(blocks_of_text(body[i:j if j >= 0 else len(body)]), spec)
        check_human(body[:i], spec)
        if spec["ret"] != "none":
            hs = header_section(orig_raw).decode("utf-8", "surrogateescape")
            if hs.rstrip("\r\n") not in body:
                fail("plain-text body lacks the original's header section")
    else:
        expect("Content-Type", msg.get_content_type(), "multipart/report")
        expect("report-type", msg.get_param("report-type"), report)
        expect("Content-Transfer-Encoding", field(msg, "Content-Transfer-Encoding"),
               "8bit" if spec.get("eightbit") or spec.get("global") else "7bit")
        parts = msg.get_payload() if msg.is_multipart() else []
        want_parts = 2 if spec["ret"] == "none" else 3
        if len(parts) != want_parts:
            fail(f"{len(parts)} parts, want {want_parts}")
        else:
            text = parts[0]
            expect("part 1 type", text.get_content_type(), "text/plain")
            expect("part 1 charset", text.get_content_charset(), "us-ascii")
            body = text.get_payload(decode=True)
            if any(c >= 0x80 for c in body):
                fail("part 1 has 8-bit octets")
            check_human(body.decode("ascii", "replace"), spec)
            expect("part 2 type", parts[1].get_content_type(), "message/delivery-status")
            blocks = parts[1].get_payload()
            if isinstance(blocks, list):
                check_blocks(blocks, spec)
            else:
                fail("part 2 did not parse as delivery-status blocks")
            if want_parts == 3:
                check_returned(parts[2], raw, spec, orig_raw, orig)
    if errors:
        for e in errors:
            print("dsn_check: " + e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
