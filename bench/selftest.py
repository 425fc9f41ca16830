#!/usr/bin/env python3
"""bench/selftest.py - coremta-bench send against coremta-bench sink.

Runs the two tools for a few seconds in several shapes (pipelining,
lockstep, BDAT, STARTTLS, pushback by the sink) and checks that what the
sender counted and what the sink counted agree, plus raw-socket checks of
the sink's parser (pipelined input, DATA and BDAT split across reads).
Prints "N passed, M failed" last; exits non-zero on any failure.

Usage: BENCH_BIN=build/coremta-bench bench/selftest.py
Python 3 standard library only; everything on 127.0.0.1.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("BENCH_BIN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "build", "coremta-bench")
TMP = tempfile.mkdtemp(prefix="coremta-bench-selftest.")
passed = 0
failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Sink:
    """A sink process on a fresh port; stop() returns its JSON report."""

    def __init__(self, *args):
        self.port = free_port()
        self.json = os.path.join(TMP, f"sink-{self.port}.json")
        # wait_port() opens a probe connection: it counts as a connection.
        self.proc = subprocess.Popen(
            [BIN, "sink", "--listen", f"127.0.0.1:{self.port}", "--duration", "20",
             "--json", self.json, "--quiet", "--seed", "7"] + list(args))
        if not wait_port(self.port):
            raise RuntimeError("sink did not start")

    def stop(self, timeout=10):
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(2)
            self.proc.wait(timeout=timeout)
        with open(self.json) as f:
            return json.load(f)


def send(port, *args, timeout=20):
    out = os.path.join(TMP, f"send-{port}-{time.monotonic_ns()}.json")
    p = subprocess.run([BIN, "send", "--target", f"127.0.0.1:{port}", "--json", out,
                        "--quiet", "--seed", "11", "--stall", "10"] + list(args),
                       timeout=timeout)
    with open(out) as f:
        return p.returncode, json.load(f)


def agree(name, s, k, n=None):
    """The counts both sides keep must match."""
    m = k["messages"]
    check(f"{name}: accepted agree ({s['accepted']} vs {m['accepted']})",
          s["accepted"] == m["accepted"])
    check(f"{name}: bytes agree", s["bytes"] == m["bytes"], f"{s['bytes']} vs {m['bytes']}")
    if s["tempfail"] == 0 and s["permfail"] == 0:
        # The sink counts recipients of accepted messages only.
        check(f"{name}: recipients agree", s["rcpts_accepted"] == m["rcpts"],
              f"{s['rcpts_accepted']} vs {m['rcpts']}")
    dom_msgs = sum(d["rcpts"] for d in k["domains"].values())
    check(f"{name}: per-domain recipients add up", dom_msgs == m["rcpts"],
          f"{dom_msgs} vs {m['rcpts']}")
    check(f"{name}: sender series adds up", sum(s["series"]) == s["accepted"])
    check(f"{name}: sink series adds up", sum(k["series"]) == m["accepted"])
    if n is not None:
        check(f"{name}: all {n} attempted", s["attempted"] == n, str(s["attempted"]))
        total = s["accepted"] + s["tempfail"] + s["permfail"] + s["errors"]
        check(f"{name}: outcomes add up", total == n, str(total))


def scenario(name, sink_args, send_args, n, expect_all=True):
    sk = Sink(*sink_args)
    rc, s = send(sk.port, *send_args)
    k = sk.stop()
    check(f"{name}: send exit 0", rc == 0, f"rc={rc}")
    agree(name, s, k, n)
    if expect_all:
        check(f"{name}: none lost", s["accepted"] == n, str(s["accepted"]))
    return s, k


def raw_session(port, chunks, read_for=0.4):
    """Send chunks with small pauses and return everything the sink said."""
    c = socket.create_connection(("127.0.0.1", port), timeout=2)
    c.settimeout(0.2)
    out = b""
    for ch in chunks:
        c.sendall(ch)
        time.sleep(0.02)
        try:
            out += c.recv(65536)
        except socket.timeout:
            pass
    end = time.time() + read_for
    while time.time() < end:
        try:
            d = c.recv(65536)
            if not d:
                break
            out += d
        except socket.timeout:
            pass
    c.close()
    return out


def parser_tests():
    sk = Sink()
    body = b"Subject: x\r\n\r\n" + b"line\r\n" * 50 + b"..stuffed\r\n"
    # Everything pipelined in one write, then DATA split at every awkward place.
    out = raw_session(sk.port, [
        b"EHLO t\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@split.test>\r\nDATA\r\n",
        body[:7], body[7:-2], b"\r", b"\n.", b"\r", b"\n",
        b"MAIL FROM:<a@b>\r\nRCPT TO:<u@split.test>\r\nBDAT 10\r\n0123", b"456789",
        b"BDAT 5 LAST\r\nabcde",
        b"MAIL FROM:<a@b>\r\nRCPT TO:<u@split.test>\r\nBDAT 0 LAST\r\nQUIT\r\n",
    ])
    k = sk.stop()
    codes = [line[:3] for line in out.split(b"\r\n") if line[:1].isdigit() and line[3:4] != b"-"]
    want = [b"220", b"250", b"250", b"250", b"354", b"250",
            b"250", b"250", b"250", b"250", b"250", b"250", b"250", b"221"]
    check("parser: replies to pipelined, split DATA and BDAT", codes == want,
          f"{codes}")
    check("parser: three messages counted", k["messages"]["accepted"] == 3,
          str(k["messages"]))
    dom = k["domains"].get("split.test", {})
    check("parser: body bytes exclude the terminator",
          dom.get("bytes") == len(body) + 15, str(dom))
    check("parser: EHLO offers PIPELINING and CHUNKING",
          b"250-PIPELINING" in out and b"CHUNKING" in out)


def policy_tests():
    """The deterministic per-domain answers of the mixed scenario: every
    Nth RCPT 550 5.1.1 (unknown=N), the first K RCPTs of each address 451
    (greylist=K, also across connections), and MAIL FROM:<> counted."""
    import smtplib
    sk = Sink("--domain-policy", "unk.test:unknown=3", "--domain-policy", "grey.test:greylist=2")
    got = []
    for conn in range(2):  # the greylist remembers the address, not the session
        c = smtplib.SMTP("127.0.0.1", sk.port, timeout=5)
        c.ehlo("t")
        for rcpt in (["a@grey.test", "b@grey.test"] if conn == 0 else ["a@grey.test"] * 2):
            c.mail("s@x.test")
            got.append((rcpt, c.rcpt(rcpt)[0]))
            c.rset()
        c.quit()
    c = smtplib.SMTP("127.0.0.1", sk.port, timeout=5)
    c.ehlo("t")
    unk = []
    for i in range(7):
        c.mail("s@x.test")
        unk.append(c.rcpt(f"u{i}@unk.test")[0])
        c.rset()
    c.sendmail("", ["p@dsn.test"], b"Subject: dsn\r\n\r\nx\r\n")
    c.sendmail("s@x.test", ["q@dsn.test"], b"Subject: not\r\n\r\nx\r\n")
    c.quit()
    k = sk.stop()
    m = k["messages"]
    check("policy: greylist=2 answers 451, 451, then 250 per address",
          [code for _, code in got] == [451, 451, 451, 250], str(got))
    check("policy: unknown=3 answers 550 to every 3rd RCPT",
          unk == [250, 250, 550, 250, 250, 550, 250], str(unk))
    check("policy: refusals counted per domain",
          k["domains"].get("unk.test", {}).get("unknown") == 2 and
          k["domains"].get("grey.test", {}).get("greylisted") == 3 and
          m["rcpts_unknown"] == 2 and m["rcpts_greylisted"] == 3, str(m))
    check("policy: MAIL FROM:<> counted", m["null_sender_msgs"] == 1 and
          m["null_sender_rcpts"] == 1 and m["accepted"] == 2, str(m))


def load_run():
    """bench/run as a module (it has no .py suffix; main() is not run)."""
    import importlib.machinery
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run")
    loader = importlib.machinery.SourceFileLoader("bench_run", path)
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def burn(seconds, then=""):
    """Python code that uses seconds of CPU in the calling thread, then runs then."""
    return ("import time\n"
            f"t = time.thread_time()\nwhile time.thread_time() - t < {seconds}: pass\n" + then)


def cpu_tests():
    """bench/run's CPU accounting: /proc/PID/stat parsing, a process's
    threads, children reaped by a parent, live descendants."""
    run = load_run()
    line = ("4242 (a) (b c) S 17 4242 4242 0 -1 4194560 100 0 0 0 "
            "150 25 7 3 20 0 3 0 987654 0 0")
    st = run.parse_proc_stat(line)
    check("cpu: /proc/PID/stat with ') (' and spaces in the command",
          (st["pid"], st["comm"], st["state"], st["ppid"], st["utime"], st["stime"],
           st["cutime"], st["cstime"], st["starttime"]) == (4242, "a) (b c", "S", 17, 150, 25, 7, 3,
                                                            987654), str(st))
    me = run.proc_stat(os.getpid())
    check("cpu: own /proc/self/stat", me and me["pid"] == os.getpid()
          and me["ppid"] == os.getppid(), str(me))

    # A thread's CPU counts after it ended; the exit status is kept.
    code = ("import threading\n"
            f"def b():\n    exec({burn(0.25)!r})\n"
            "th = threading.Thread(target=b)\nth.start()\nb()\nth.join()\n"
            "raise SystemExit(3)\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    cpu = run.wait_exit_cpu(p, 20)
    check("cpu: wait_exit_cpu counts both threads, keeps the exit status",
          cpu is not None and cpu >= 0.45 and p.returncode == 3, f"{cpu} s, exit {p.returncode}")

    # A reaped child is in its parent's cutime; a live one in the tree.
    code = ("import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {burn(0.3)!r}])\n"
            f"c = subprocess.Popen([sys.executable, '-c', "
            f"{burn(0.3, 'print(1, flush=True)' + chr(10) + 'time.sleep(30)')!r}],"
            " stdout=subprocess.PIPE)\n"
            "c.stdout.readline()\nprint('ready', flush=True)\n"
            "sys.stdin.read()\nc.kill()\nc.wait()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        ready = p.stdout.readline().strip() == "ready"
        total, procs = run.tree_cpu(p.pid)
        check("cpu: tree_cpu = the root + reaped child + live child",
              ready and procs == 2 and total is not None and 0.6 <= total < 2.0,
              f"{total} s, {procs} processes")
        win = run.CpuWindow(p.pid)
        time.sleep(0.3)  # both wait now: the window must be (almost) empty
        out = win.end(0.1, 0.1, 100)
        check("cpu: a window over idle processes costs ~0",
              out["mta_cpu_s"] is not None and out["mta_cpu_s"] <= 0.03
              and out["loadgen_per_core_s"] == 500, str(out))
    finally:
        p.stdin.close()
        p.wait(timeout=10)

    # The thread split: live threads by role, new ones from zero, the rest
    # of the process total to the threads that exited.
    check("cpu: thread roles by name",
          [run.thread_role(n) for n in ("coremta", "shard1", "iou-wrk-7", "coremta-log")]
          == ["intake", "shards", "io workers", "other"])
    split = run.thread_split({1: ("intake", 1.0), 2: ("io workers", 0.5)},
                             {1: ("intake", 1.5), 3: ("shards", 0.2)}, 1.0)
    check("cpu: thread_split = live deltas + exited remainder",
          split == {"intake": 0.5, "shards": 0.2, "io workers": 0.0, "other": 0.0,
                    "exited": 0.3}, str(split))
    threads = run.thread_cpu(os.getpid())
    check("cpu: thread_cpu reads this process's threads",
          threads and os.getpid() in threads, str(threads))

    # Microseconds per message: medians of the complete runs only.
    def fake(mta, send, sink, n, complete=True):
        return {"complete": complete, "cpu": {
            "mta_cpu_s": mta, "send_cpu_s": send, "sink_cpu_s": sink, "units": n,
            "mta_threads_cpu_s": {"intake": mta / 2, "shards": mta / 2, "io workers": 0.0,
                                  "other": 0.0, "exited": 0.0}}}
    line = run.us_per_unit([fake(3.0, 1.0, 0.6, 100000), fake(3.2, 1.0, 0.6, 100000),
                            fake(3.4, 1.0, 0.6, 100000), fake(90.0, 1.0, 0.6, 100, False)])
    check("cpu: us_per_unit = medians of the complete runs, by role, sender and sink",
          line == "intake 16.0, shards 16.0, io workers 0.0, other 0.0, exited 0.0 = 32.0; "
                  "sender 10.0, sink 6.0 = 16.0", str(line))
    check("cpu: us_per_unit without units is None",
          run.us_per_unit([{"complete": True, "cpu": {"mta_cpu_s": 1.0}}]) is None)


def chart_tests():
    """The relay chart plots the rate the table reports."""
    run = load_run()
    # the quick run: 2,000 messages arrive within 0.18 s of one bucket
    pts = run.rate_steps([2000], -0.4, (0.0, 0.18))
    check("chart: a run shorter than a bucket plots the table's rate",
          len(pts) == 2 and abs(pts[0][1] - 2000 / 0.18) < 1, str(pts))
    # a longer run: interior buckets are counts per second, edges partial
    pts = run.rate_steps([0, 600, 1000, 250], -0.5, (0.0, 2.75))
    area = sum((b[0] - a[0]) * a[1] for a, b in zip(pts[::2], pts[1::2]))
    check("chart: the plotted rate integrates to the messages counted",
          abs(area - 1850) < 1e-6 and pts[-1] == (2.75, 1000.0), str(pts))


def postal_tests():
    """The postal scenario reads postal's and bhm's per-minute CSV lines
    (file order, so a run across midnight keeps its order) and skips the
    rest of their output."""
    run = load_run()
    path = os.path.join(TMP, "postal.out")
    with open(path, "w") as f:
        f.write("Can't connect to 127.0.0.1 port 25871.\n"
                "time,messages,data(K),errors,connections,SSL connections\n"
                "23:59,100,267,0,102,0\n00:00,582,1709,1,580,0\n00:01,7,1")
    got = run.postal_lines(path)
    check("postal: minute lines parsed in file order, partial and other lines skipped",
          list(got) == ["23:59", "00:00"] and got["00:00"] == {
              "messages": 582, "kbytes": 1709, "errors": 1, "connections": 580, "ssl": 0},
          str(got))
    check("postal: scenario registered", "postal" in run.SCENARIOS
          and "postal" in run.NEW_SCENARIOS)


def connections_tests():
    """The connections scenario counts established TCP connections to a
    port from /proc/net/tcp: listening sockets and other ports do not
    count, and a closed connection stops counting."""
    import socket
    run = load_run()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    before = run.established_to(port)
    cli = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    acc = [srv.accept()[0] for _ in range(3)]
    three = run.established_to(port)
    for c in cli[:2]:
        c.close()
    time.sleep(0.1)
    one = run.established_to(port)
    for c in cli[2:] + acc:
        c.close()
    srv.close()
    check("connections: established_to counts the client ends of a port's connections",
          (before, three, one) == (0, 3, 1), str((before, three, one)))
    check("connections: scenario registered", "connections" in run.SCENARIOS
          and "connections" in run.NEW_SCENARIOS)


def main():
    if not os.access(BIN, os.X_OK):
        print(f"selftest: {BIN} is not built")
        print("0 passed, 1 failed")
        return 1
    t0 = time.time()
    try:
        cpu_tests()
        chart_tests()
        postal_tests()
        connections_tests()
        # Non-loopback targets are refused before any packet is sent.
        p = subprocess.run([BIN, "send", "--target", "192.0.2.1:25", "--messages", "1"],
                           capture_output=True, text=True, timeout=5)
        check("send refuses non-loopback targets",
              p.returncode == 2 and "127.0.0.0/8" in p.stderr, p.stderr)

        scenario("pipelining", ["--expect", "400"],
                 ["--sessions", "8", "--messages", "400", "--pipelining"], 400)
        scenario("lockstep, 3 rcpts, size mix", [],
                 ["--sessions", "4", "--messages", "200", "--rcpts", "3",
                  "--size", "1k:50,5k:40,50k:10", "--domains", "gmail.com:40,yahoo.com:20",
                  "--synthetic-domains", "10"], 200)
        scenario("bdat pipelined", [],
                 ["--sessions", "4", "--messages", "200", "--bdat", "--pipelining",
                  "--size", "3000"], 200)

        # Pushback: the sink refuses some, both sides must count the same.
        s, k = scenario("tempfail/permfail", ["--tempfail-rate", "0.2", "--permfail-rate", "0.1"],
                        ["--sessions", "6", "--messages", "400", "--pipelining"], 400,
                        expect_all=False)
        check("tempfail/permfail: 4xx agree", s["tempfail"] == k["messages"]["tempfail"] > 0,
              f"{s['tempfail']} vs {k['messages']['tempfail']}")
        check("tempfail/permfail: 5xx agree", s["permfail"] == k["messages"]["permfail"] > 0,
              f"{s['permfail']} vs {k['messages']['permfail']}")

        s, k = scenario("max-conn-per-ip", ["--max-conn-per-ip", "2"],
                        ["--sessions", "6", "--messages", "300", "--per-conn", "10",
                         "--reconnect-delay", "10"], 300)
        client = k["clients"].get("127.0.0.1", {})
        check("max-conn-per-ip: concurrency capped at 2", client.get("hwm") == 2, str(client))
        check("max-conn-per-ip: 421 refusals agree",
              s["connections"]["refused"] == client.get("refused", -1) > 0,
              f"{s['connections']} vs {client}")

        s, k = scenario("max-rate-per-ip 451", ["--max-rate-per-ip", "100", "--rate-code", "451"],
                        ["--sessions", "4", "--messages", "300", "--pipelining"], 300,
                        expect_all=False)
        check("max-rate-per-ip: refusals agree",
              s["codes"].get("451", 0) == k["messages"]["rate_limited"] > 0,
              f"{s['codes']} vs {k['messages']}")

        s, k = scenario("domain policy", ["--domain-policy", "slow.test:rate=5,delay=50"],
                        ["--sessions", "4", "--messages", "300", "--pipelining",
                         "--domains", "slow.test:20", "--synthetic-domains", "5"], 300,
                        expect_all=False)
        slow = k["domains"].get("slow.test", {})
        check("domain policy: throttled recipients agree",
              s["rcpts_refused"] == slow.get("throttled", -1) > 0, f"{s['rcpts_refused']} vs {slow}")

        if shutil.which("openssl"):
            key, crt = os.path.join(TMP, "k.pem"), os.path.join(TMP, "c.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                            "-subj", "/CN=sink.bench", "-keyout", key, "-out", crt],
                           check=True, capture_output=True)
            s, k = scenario("starttls", ["--tls-cert", crt, "--tls-key", key],
                            ["--sessions", "4", "--messages", "200", "--starttls",
                             "--pipelining", "--size", "2k:50,40k:50"], 200)
            check("starttls: every session switched", k["connections"]["starttls"] == 4,
                  str(k["connections"]))
        else:
            print("skip starttls: no openssl to make a certificate")

        # --duration stops the sender by itself; the sink's --expect stops it.
        sk = Sink("--expect", "50")
        t = time.time()
        rc, s = send(sk.port, "--sessions", "2", "--duration", "1", "--rate", "100")
        k = sk.stop()
        check("duration + rate: stops on time", time.time() - t < 3 and rc == 0)
        check("duration + rate: rate cap holds", s["attempted"] <= 110, str(s["attempted"]))
        check("sink --expect exits by itself", k["stop_reason"] == "expected count reached",
              k["stop_reason"])

        parser_tests()
        policy_tests()
    except Exception as e:  # a crash of the harness is a failure, not a skip
        check("selftest ran to the end", False, repr(e))
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"selftest took {time.time() - t0:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
