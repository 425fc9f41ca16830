#!/usr/bin/python3
"""tests/util/dkim_verify.py - check DKIM signatures with two independent
verifiers from Debian: dkimpy (python3-dkim, python3-nacl for Ed25519) and
OpenDKIM's opendkim-testmsg (libopendkim).  Both read the public keys from
DNS: dkimpy asks NS directly, opendkim-testmsg goes through the system
resolver, so it runs in a private mount namespace where /etc/resolv.conf
names NS (port 53).

usage: dkim_verify.py NS FILE...

Every DKIM-Signature of every FILE is checked alone (the others removed),
by each verifier.  One line per signature:
    FILE SIG-INDEX dkimpy=pass|fail opendkim=pass|fail
Exit status 0 when every check passed, 1 when one failed, 2 when a tool
is missing or broken.
"""
import os
import re
import subprocess
import sys
import tempfile

try:
    import dkim
    import dns.resolver
except ImportError as e:
    print("dkim_verify: %s (make deps installs python3-dkim)" % e, file=sys.stderr)
    sys.exit(2)

OPENDKIM = "/usr/sbin/opendkim-testmsg"


def split_signatures(msg):
    """The message's header fields as byte strings, and the body."""
    m = re.search(rb"\r?\n\r?\n", msg)
    head, body = (msg[: m.start()], msg[m.start():]) if m else (msg, b"")
    fields = re.split(rb"\r?\n(?![ \t])", head)
    return fields, body


def only_signature(msg, idx):
    """msg with every DKIM-Signature but the idx-th removed."""
    fields, body = split_signatures(msg)
    out, seen = [], 0
    for f in fields:
        if f.lower().startswith(b"dkim-signature:"):
            if seen != idx:
                seen += 1
                continue
            seen += 1
        out.append(f)
    nl = b"\r\n" if b"\r\n" in msg else b"\n"
    return nl.join(out) + body


def count_signatures(msg):
    fields, _ = split_signatures(msg)
    return sum(1 for f in fields if f.lower().startswith(b"dkim-signature:"))


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    ns, files = sys.argv[1], sys.argv[2:]
    if not os.access(OPENDKIM, os.X_OK):
        print("dkim_verify: no %s (make deps installs opendkim-tools)" % OPENDKIM,
              file=sys.stderr)
        return 2
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [ns]
    res.lifetime = 5

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            ans = res.resolve(name, "TXT")
        except Exception:
            return b""
        return b"".join(b"".join(r.strings) for r in ans)

    tmp = tempfile.mkdtemp(prefix="dkim-verify-")
    resolv = os.path.join(tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver %s\noptions attempts:1 timeout:2\n" % ns)
    ok = True
    for path in files:
        msg = open(path, "rb").read()
        n = count_signatures(msg)
        if n == 0:
            print("%s - dkimpy=fail opendkim=fail (no DKIM-Signature)" % path)
            ok = False
        for i in range(n):
            one = only_signature(msg, i)
            try:
                py = dkim.DKIM(one).verify(dnsfunc=dnsfunc)
            except Exception as e:
                print("%s %d dkimpy error: %s" % (path, i, e), file=sys.stderr)
                py = False
            one_path = os.path.join(tmp, "one.eml")
            with open(one_path, "wb") as f:
                f.write(one)
            with open(one_path, "rb") as f:
                p = subprocess.run(
                    ["unshare", "-m", "sh", "-c",
                     'mount --bind "$1" /etc/resolv.conf && exec "$2"',
                     "sh", resolv, OPENDKIM],
                    stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            od = p.returncode == 0
            if not od and b"mount" in p.stderr:
                print("dkim_verify: cannot give opendkim a resolver: %s"
                      % p.stderr.decode(errors="replace"), file=sys.stderr)
                return 2
            print("%s %d dkimpy=%s opendkim=%s%s" % (
                path, i, "pass" if py else "fail", "pass" if od else "fail",
                "" if od else " (" + p.stderr.decode(errors="replace").strip() + ")"))
            ok = ok and py and od
    os.unlink(resolv)
    if os.path.exists(os.path.join(tmp, "one.eml")):
        os.unlink(os.path.join(tmp, "one.eml"))
    os.rmdir(tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
