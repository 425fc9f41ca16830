#!/usr/bin/env python3
"""tests/lib/postfix_receiver.py - a private Postfix (Debian's) as a real
receiving MTA for interop tests: listens on 127.0.0.1:PORT with STARTTLS,
accepts mail for interop.test and discards it after logging.

  postfix_receiver.py start DIR PORT CERT KEY   # prints "ready" when it greets
  postfix_receiver.py stop DIR

Runs as root (Postfix drops to its own user).  A watchdog stops the
instance after 180 s even if the test never calls stop, so no process
outlives the test run.  Loopback only.
"""
import os, shutil, socket, subprocess, sys, time

MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def greets(port, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.settimeout(2)
                if s.recv(100).startswith(b"220"):
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def start(d, port, cert, key):
    for sub in ("etc", "queue", "data", "log"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    os.chmod(d, 0o755)
    shutil.chown(f"{d}/data", user="postfix")
    conf = {
        "compatibility_level": "3.6",
        "queue_directory": f"{d}/queue",
        "data_directory": f"{d}/data",
        "meta_directory": "/etc/postfix",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "receiver.interop.test",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "mydestination": "",
        "relay_domains": "interop.test",
        "transport_maps": "inline:{interop.test=discard}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtpd_peername_lookup": "no",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": cert,
        "smtpd_tls_key_file": key,
        "smtpd_tls_loglevel": "1",
        "maillog_file": f"{d}/log/maillog",
        "maillog_file_prefixes": f"{d}/log",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "smtputf8_enable": "no",
    }
    with open(f"{d}/etc/main.cf", "w") as f:
        for k, v in conf.items():
            f.write(f"{k} = {v}\n")
    with open(f"{d}/etc/master.cf", "w") as f:
        f.write(MASTER.format(port=port))
    p = subprocess.run(["postfix", "-c", f"{d}/etc", "start"], capture_output=True,
                       text=True, timeout=120)
    if p.returncode != 0 or not greets(port, 30):
        print("postfix did not start:", p.stderr.strip(), file=sys.stderr)
        stop(d)
        return 1
    # watchdog: the instance never outlives the test
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for fd in (0, 1, 2):
                os.close(fd)
            time.sleep(180)
            stop(d)
        os._exit(0)
    print("ready", flush=True)
    return 0


def stop(d):
    if not os.path.isdir(f"{d}/etc"):
        return 0
    subprocess.run(["postfix", "-c", f"{d}/etc", "stop"], capture_output=True, timeout=60)
    try:
        with open(f"{d}/queue/pid/master.pid") as f:
            pid = int(f.read().strip())
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        subprocess.run(["postfix", "-c", f"{d}/etc", "abort"], capture_output=True, timeout=30)
    except (OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "start":
        sys.exit(start(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    if len(sys.argv) == 3 and sys.argv[1] == "stop":
        sys.exit(stop(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    sys.exit(64)
