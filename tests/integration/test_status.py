#!/usr/bin/env python3
"""test_status.py: maild --check and --status (issue 5).

--check against Dovecot: connect, tls, capabilities, login and mailbox
lines, exit 0, 77, 69 or 64 as the case may be, nothing written;
--status and the maild.status file before any poll, after --once, while
a daemon runs and after it stopped.

Every daemon is stopped by its PID; every wait has a time limit.
"""

import datetime
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, Daemon, dc_acct, fixture, server, simple_msgs, status_file,
    wait_until, write_conf)


ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def parse_iso(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


@tap.test(timeout=90)
def test_check_against_dovecot(t):
    """--check: per account connect, tls, capabilities, login and mailbox
    lines, exit 0; a wrong password: exit 77 and a FAILED line; --check
    name checks only that one; an unknown name is a usage error; nothing
    is fetched, no state or Maildir is made, the server is unchanged."""
    sh = t.fx
    m1 = simple_msgs("chk1", 3)
    m2 = simple_msgs("chk2", 2)
    u1 = sh.user(m1)
    u2 = sh.user(m2)
    u3 = sh.user(simple_msgs("chk3", 1))
    dc = sh.dovecot()
    state = t.tmp / "state"
    good = [dc_acct("one", dc, u1, t.tmp / "Maildir-one"),
            dc_acct("two", dc, u2, t.tmp / "Maildir-two", keep=False)]
    bad = dc_acct("bad", dc, u3, t.tmp / "Maildir-bad",
                  password="Wr0ng-Passw0rd")
    cfg_good = write_conf(t.tmp / "good.conf", good, state)
    cfg_all = write_conf(t.tmp / "all.conf", good + [bad], state)
    before = mt.fs_snapshot(t.tmp) | {"down.conf"}

    def check(*args, rc):
        r = mt.run_maild(["--check", *args], timeout=60,
                         label="maild --check " + " ".join(map(str, args)))
        t.attach("--check stdout", r.stdout)
        assert r.rc == rc, f"--check {args}: exit {r.rc}, expected {rc}\n" \
            f"{r.stdout}{r.stderr}"
        assert dc.password not in r.stdout + r.stderr, "password printed"
        assert "Wr0ng-Passw0rd" not in r.stdout + r.stderr, \
            "password printed"
        return r

    def block(out, name):
        m = re.search(rf'^account "{name}":.*?(?=^account |\Z)', out,
                      re.M | re.S)
        assert m, f"no section for account {name}:\n{out}"
        return m.group(0)

    def assert_ok(out, name, n, size):
        b = block(out, name)
        for rx in (r"^\s+connect\s+ok\s+127\.0\.0\.1",
                   r"^\s+tls\s+ok\s+TLS",
                   r"^\s+capabilities\s+.*UIDL",
                   r"^\s+login\s+ok",
                   rf"^\s+mailbox\s+ok\s+{n} messages?, {size} bytes"):
            assert re.search(rx, b, re.M), f"{name}: no /{rx}/ in\n{b}"
        assert "FAILED" not in b, b

    sizes = {"one": sum(fakepop3.crlf_size(x.data) for x in m1),
             "two": sum(fakepop3.crlf_size(x.data) for x in m2)}
    r = check("-f", cfg_good, rc=0)
    assert_ok(r.stdout, "one", 3, sizes["one"])
    assert_ok(r.stdout, "two", 2, sizes["two"])
    r = check("-f", cfg_all, "two", rc=0)
    assert_ok(r.stdout, "two", 2, sizes["two"])
    assert 'account "one"' not in r.stdout and 'account "bad"' not in \
        r.stdout, f"--check two checked other accounts:\n{r.stdout}"
    r = check("-f", cfg_all, "bad", rc=mt.EX_NOPERM)
    b = block(r.stdout, "bad")
    assert re.search(r"^\s+\S+\s+FAILED\s+\S", b, re.M), b
    assert "connect" in b and "tls" in b, b
    assert not re.search(r"^\s+login\s+ok", b, re.M), b
    r = check("-f", cfg_all, rc=mt.EX_NOPERM)
    assert_ok(r.stdout, "one", 3, sizes["one"])
    assert_ok(r.stdout, "two", 2, sizes["two"])
    assert "FAILED" in block(r.stdout, "bad")
    r = check("-f", cfg_all, "nosuch", rc=mt.EX_USAGE)
    assert "nosuch" in r.stderr, r.stderr
    # a server that cannot be reached: exit 69, connect FAILED
    closed = dovecot.free_port()
    cfg_down = write_conf(t.tmp / "down.conf", [
        dc_acct("down", dc, u1, t.tmp / "Maildir-down", port=closed)], state)
    r = check("-f", cfg_down, rc=mt.EX_UNAVAILABLE)
    assert re.search(r"^\s+connect\s+FAILED\s+\S", block(r.stdout, "down"),
                     re.M), r.stdout
    # nothing fetched, nothing written
    after = mt.fs_snapshot(t.tmp)
    assert after == before, f"--check created {sorted(after - before)}"
    mt.assert_messages(dc.mailbox(u1), m1, "server mailbox one")
    mt.assert_messages(dc.mailbox(u2), m2, "server mailbox two")


@tap.test(timeout=60)
def test_status(t):
    """--status before any poll, after --once (a good and a failing
    account) and while a daemon runs; the maild.status format of
    maild(8)."""
    good = server(simple_msgs("st", 2))
    bad = server(simple_msgs("stbad", 1))
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("good", good, t.tmp / "Maildir-good"),
                      acct("bad", bad, t.tmp / "Maildir-bad",
                           password="not-it")], state, poll_interval=2)
    r = mt.run_maild(["--status", "-f", cfg], timeout=10, label="--status")
    assert r.rc == 0, f"--status without a status file: exit {r.rc}"
    assert "no status" in r.stdout, r.stdout

    t0 = time.time()
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="--once")
    t1 = time.time()
    assert r.rc == mt.EX_NOPERM, f"--once: exit {r.rc}"
    head, accts, text = status_file(state)
    assert head.get("mode") == "once", head
    assert ISO_RE.match(head["written"]), head
    # (the file has whole seconds)
    assert t0 - 1 <= parse_iso(head["written"]) <= t1 + 1, \
        f"written= is not the time of the run: {head}"
    by = {a["account"]: a for a in accts}
    assert list(by) == ["good", "bad"], f"accounts in the status: {list(by)}"
    for a in accts:
        for k in ("state", "last-poll", "last-success", "next-poll",
                  "fetched", "fetched-total", "failures"):
            assert k in a, f"no {k}= in {a}"
        assert ISO_RE.match(a["last-poll"]), a
        assert t0 - 1 <= parse_iso(a["last-poll"]) <= t1 + 1, a
        assert a["next-poll"] == "-", f"--once has no next poll: {a}"
    g, b = by["good"], by["bad"]
    assert g["state"] == "ok" and g["fetched"] == "2" and \
        g["fetched-total"] == "2" and g["failures"] == "0", g
    assert ISO_RE.match(g["last-success"]) and "error" not in g, g
    assert b["state"] == "failing" and b["failures"] == "1", b
    assert b["last-success"] == "-" and b.get("error"), b
    r = mt.run_maild(["--status", "-f", cfg], timeout=10, label="--status")
    assert r.rc == 0, f"--status: exit {r.rc}"
    out = r.stdout
    t.attach("--status", out)
    assert re.search(r"maild pid \d+ \(once\), which is not running", out), \
        out
    sec = re.split(r"(?=^account bad)", out, flags=re.M)
    assert len(sec) == 2 and "account good" in sec[0], out
    for rx in (r"account good: ok", r"last poll\s+\d{4}-", r"last success\s+"
               r"\d{4}-", r"next poll\s+-", r"fetched\s+2 at the last poll",
               r"failures\s+0 in a row", r"last error\s+-"):
        assert re.search(rx, sec[0]), f"no /{rx}/ for good:\n{sec[0]}"
    for rx in (r"account bad: failing", r"last success\s+-",
               r"failures\s+1 in a row", r"last error\s+\S+"):
        assert re.search(rx, sec[1]), f"no /{rx}/ for bad:\n{sec[1]}"

    # a daemon: pid, running, next poll ~ poll-interval ahead, totals
    dm = Daemon(t, cfg)
    dm.wait_summaries("good", 1, timeout=10)
    good.add(corpus.simple("st/new"))
    dm.wait_summaries("good", 3, timeout=10)

    def between_polls():
        head, accts, _ = status_file(state)
        g = {a["account"]: a for a in accts}["good"]
        return (head, g) if g["state"] == "ok" else None
    head, g = wait_until(between_polls, 10, "the status between two polls")
    t_read = time.time()
    assert head["mode"] == "daemon" and int(head["pid"]) == dm.pid, head
    assert g["fetched-total"] == "1", \
        f"fetched-total since the daemon started should be 1: {g}"
    nxt, last = parse_iso(g["next-poll"]), parse_iso(g["last-poll"])
    # the next poll: poll-interval (2 s) after the end of the last one,
    # which ended before the file was read
    assert last + 1 <= nxt <= t_read + 3, f"next poll {nxt - last} s " \
        f"after the last, {nxt - t_read:.1f} s from now, poll-interval " \
        f"2 s: {g}"
    r = mt.run_maild(["--status", "-f", cfg], timeout=10, label="--status")
    assert f"maild pid {dm.pid} (daemon), which is running" in r.stdout, \
        r.stdout
    rc, _ = dm.stop()
    assert rc == 0
    r = mt.run_maild(["--status", "-f", cfg], timeout=10, label="--status")
    assert f"maild pid {dm.pid} (daemon), which is not running" in r.stdout, \
        r.stdout


if __name__ == "__main__":
    tap.main(fixture=fixture)
