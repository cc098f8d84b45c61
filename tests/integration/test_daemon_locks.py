#!/usr/bin/env python3
"""test_daemon_locks.py: one session per account, one daemon per state
directory, and a daemon that nothing in a configuration reload brings
down (issue 9, items 6, 7 and 11), against the fake POP3 server.

  SIGHUP that removes an account while its session runs (the server holds
  a message half sent), then one that adds it back: the account's
  connections never overlap, its old session finishes its message (its
  partial file in tmp/ is not removed), and nothing is delivered twice.
  A second maild -d on the same state directory (same or another
  configuration file) refuses at once with exit 75: "maild (pid N) is
  already running with state directory D", N the first one's pid; the
  first one is not disturbed; once it has stopped, a new one starts.
  maild --once beside the daemon works for the accounts the daemon is not
  polling, and exits 75 naming the daemon's pid for one it is.
  A reload with a user name too long for POP3 is refused with file:line;
  the daemon and its accounts keep running.

maild -d runs in the foreground (tests/lib/maildd.py), is stopped by its
PID, and every wait is bounded.
"""

import os
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import maildd      # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SCALE = maildd.SCALE


# ---------------------------------------------------------------------------
# helpers

def server(msgs=(), **kw):
    return fakepop3.FakePOP3(msgs, tls=certs.get().server, **kw).start()


def acct(t, name, srv, keep=False, **extra):
    return mt.account(name, "127.0.0.1", srv.port, srv.user, srv.password,
                      t.tmp / f"Maildir-{name}", keep=keep,
                      ca_file=certs.get().ca, **extra)


def write_conf(path, accounts, state_dir, **globals_):
    """Written atomically: a daemon may be reading it."""
    globals_.setdefault("timeout", 10)
    globals_.setdefault("poll_interval", mt.Raw("1h"))
    tmp = path.with_name(path.name + ".new")
    mt.write_config(tmp, accounts, state_dir=state_dir, **globals_)
    os.replace(tmp, path)
    return path


def msgs(prefix, n, body="Hello.\n"):
    return [corpus.simple(f"{prefix}/{i}", body=body) for i in range(n)]


def ids(path):
    return sorted(corpus.test_id(mt.strip_trace(d))
                  for d in mt.read_maildir(path))


def assert_no_overlap(srv, what):
    """Each connection to srv was accepted after the last command of the
    one before had arrived: never two sessions at once."""
    conns = sorted(srv.connections, key=lambda c: c.opened)
    for a, b in zip(conns, conns[1:]):
        last = a.commands[-1].t if a.commands else a.opened
        assert b.opened >= last, \
            (f"{what}: connection {b.id} opened {b.opened - a.opened:.2f} s "
             f"after connection {a.id}, before its last command "
             f"({a.verbs()[-3:]}) arrived")


# ---------------------------------------------------------------------------
# item 6: removed and added back while its session runs

@tap.test(name="SIGHUP removes an account in mid-message, another adds it "
          "back: never two sessions at once, the old one finishes its "
          "message, nothing twice", timeout=180)
def test_readded_while_running(t):
    m = msgs("readd", 3, body="Hello.\n" * 400)
    held = threading.Event()
    release = threading.Event()

    def retr(conn, cmd):
        if cmd.nth != 2:
            return None
        data = conn.default(cmd)

        def g():
            yield data[:len(data) // 2]
            held.set()
            for _ in range(int(120 * SCALE / 0.05)):
                if release.is_set():
                    break
                yield fakepop3.Sleep(0.05)
            yield data[len(data) // 2:]
        return g()
    slow = server(m, handlers={"RETR": retr}, pipelining=False)
    other = server(msgs("readd-other", 2))
    cfg = t.tmp / "maild.conf"
    both = [acct(t, "slow", slow), acct(t, "other", other)]
    write_conf(cfg, both, t.tmp / "state")
    dm = maildd.Daemon(t, cfg)
    dm.wait_summaries("other", 1, timeout=20)
    maildd.wait_until(held.is_set, 20, "the slow account's second RETR")
    tmp = t.tmp / "Maildir-slow" / "tmp"
    partial = sorted(os.listdir(tmp))
    t.note(f"in tmp/ mid-message: {partial}")
    assert partial, "no partial file in tmp/ while the message is held"

    write_conf(cfg, [both[1]], t.tmp / "state")
    line = dm.reload()
    assert "reloaded" in line, line
    write_conf(cfg, both, t.tmp / "state")
    line = dm.reload()
    assert "reloaded" in line, line
    # A second session would connect now: give it the chance.
    deadline = time.monotonic() + 2 * SCALE
    while time.monotonic() < deadline and len(slow.connections) < 2:
        time.sleep(0.05)
    still = [n for n in partial if (tmp / n).exists()]
    release.set()
    assert_no_overlap(slow, "account slow")
    assert len(slow.connections) == 1, "a second session connected"
    assert still == partial, \
        f"the old session's partial file was removed: {partial} -> {still}"
    recs = dm.wait_summaries("slow", 2, timeout=30)
    first = recs[0]
    # Removed, it stops after the message it is receiving; added back, it
    # starts again once that session has ended, and fetches the rest.
    assert first["error"] is None, f"the old session failed: {first['line']}"
    assert first["fetched"] >= 2, first["line"]
    assert recs[1]["error"] is None, recs[1]["line"]
    assert first["fetched"] + recs[1]["fetched"] == 3, \
        [r["line"] for r in recs]
    assert len(slow.connections) == 2, \
        f"{len(slow.connections)} connections, expected 2"
    assert_no_overlap(slow, "account slow")
    assert ids(t.tmp / "Maildir-slow") == sorted(x.id for x in m)
    mt.assert_tmp_empty(t.tmp / "Maildir-slow")
    assert slow.mailbox == []
    assert dm.stop() == 0


# ---------------------------------------------------------------------------
# item 7: one daemon per state directory

def daemon_with_one_account(t):
    srv = server(msgs("lock", 2))
    cfg = write_conf(t.tmp / "maild.conf", [acct(t, "lk", srv)],
                     t.tmp / "state")
    dm = maildd.Daemon(t, cfg)
    dm.wait_summaries("lk", 1, timeout=20)
    return srv, cfg, dm


@tap.test(name="a second maild -d on the same state directory refuses at "
          "once: exit 75, \"maild (pid N) is already running with state "
          "directory D\"")
def test_second_daemon_refused(t):
    srv, cfg, dm = daemon_with_one_account(t)
    conns = len(srv.connections)
    # the same file, and another file naming the same state directory
    other = write_conf(t.tmp / "other.conf", [acct(t, "lk2", srv)],
                       t.tmp / "state")
    for c in (cfg, other):
        r = mt.run_maild(["-d", "-f", c], timeout=20, label="second maild")
        want = (f"maild (pid {dm.pid}) is already running with state "
                f"directory {t.tmp / 'state'}")
        assert r.rc == mt.EX_TEMPFAIL, f"exit {r.rc}: {mt.tail(r.stderr)}"
        assert want in r.stderr, f"expected {want!r} in:\n{r.stderr}"
    assert len(srv.connections) == conns, "the second daemon connected"
    # The first one is not disturbed.
    dm.alive()
    mark = dm.mark()
    srv.add(corpus.simple("lock/late"))
    dm.signal(signal.SIGUSR1)
    rec = dm.wait_summaries("lk", 1, since=mark)[0]
    assert rec["fetched"] == 1 and rec["error"] is None, rec["line"]
    assert (t.tmp / "state" / "maild.pid").read_text().strip() == \
        str(dm.pid)
    # Once it has stopped, the next one starts (the pid file left behind
    # is no obstacle).
    assert dm.stop() == 0
    dm2 = maildd.Daemon(t, cfg, label="maild-d-2")
    rec = dm2.wait_summaries("lk", 1, timeout=20)[0]
    assert rec["error"] is None, rec["line"]
    assert dm2.stop() == 0


@tap.test(name="maild --once beside a daemon: works for the accounts the "
          "daemon is not polling, exit 75 naming its pid for the one it is")
def test_once_beside_daemon(t):
    hold = threading.Event()
    held = threading.Event()

    def retr(conn, cmd):
        if not hold.is_set():
            return None

        def g():
            held.set()
            for _ in range(int(60 * SCALE / 0.05)):
                if not hold.is_set():
                    break
                yield fakepop3.Sleep(0.05)
            yield conn.default(cmd)
        return g()
    busy = server(msgs("busy", 1), handlers={"RETR": retr})
    idle = server(msgs("idle", 1))
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct(t, "busy", busy), acct(t, "idle", idle)],
                     t.tmp / "state")
    dm = maildd.Daemon(t, cfg)
    dm.wait_summaries("busy", 1, timeout=20)
    dm.wait_summaries("idle", 1, timeout=20)
    # The daemon is idle: --once polls both.
    busy.add(corpus.simple("busy/late"))
    idle.add(corpus.simple("idle/late"))
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="--once")
    assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
    assert r.account("busy")["fetched"] == 1
    assert r.account("idle")["fetched"] == 1
    # The daemon polls "busy" (held mid-RETR): --once leaves it alone.
    hold.set()
    busy.add(corpus.simple("busy/later"))
    mark = dm.mark()
    dm.signal(signal.SIGUSR1)
    maildd.wait_until(held.is_set, 20, "the daemon's RETR on busy")
    dm.wait_summaries("idle", 1, since=mark)
    idle.add(corpus.simple("idle/later"))
    try:
        r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="--once")
    finally:
        hold.clear()
    assert r.rc == mt.EX_TEMPFAIL, f"exit {r.rc}: {mt.tail(r.stderr)}"
    err = r.account("busy")["error"] or ""
    assert str(dm.pid) in err, f"the daemon's pid is not named: {err}"
    assert r.account("idle")["fetched"] == 1, r.account("idle")["line"]
    assert dm.wait_summaries("busy", 1, since=mark)[0]["fetched"] == 1
    assert ids(t.tmp / "Maildir-busy") == ["busy/0", "busy/late",
                                           "busy/later"]
    assert ids(t.tmp / "Maildir-idle") == ["idle/0", "idle/late",
                                           "idle/later"]
    assert dm.stop() == 0


# ---------------------------------------------------------------------------
# item 11: nothing in a reload brings the daemon down

@tap.test(name="SIGHUP with a user name too long for POP3: refused with "
          "file:line, the daemon and both accounts keep running")
def test_reload_long_user_refused(t):
    a_srv, b_srv = server(msgs("lu-a", 1)), server(msgs("lu-b", 1))
    cfg = t.tmp / "maild.conf"
    good = [acct(t, "a", a_srv, auth="user"), acct(t, "b", b_srv)]
    write_conf(cfg, good, t.tmp / "state")
    dm = maildd.Daemon(t, cfg)
    dm.wait_summaries("a", 1, timeout=20)
    dm.wait_summaries("b", 1, timeout=20)
    bad = [dict(good[0], user="u" * 600), good[1]]
    write_conf(cfg, bad, t.tmp / "state")
    line = dm.reload()
    a_srv.add(corpus.simple("lu-a/late"))
    b_srv.add(corpus.simple("lu-b/late"))
    mark = dm.mark()
    dm.signal(signal.SIGUSR1)
    for name in ("a", "b"):
        rec = dm.wait_summaries(name, 1, since=mark, timeout=20)[0]
        assert rec["fetched"] == 1 and rec["error"] is None, rec["line"]
    assert not [c for c in a_srv.commands() if len(c.line) > 200], \
        "the long user name went on the wire"
    assert "reload failed" in line, line
    text = cfg.read_text().splitlines()
    n = next(i + 1 for i, ln in enumerate(text) if "uuuuuuuu" in ln)
    assert f"{cfg}:{n}:" in line, f"no file:line ({cfg}:{n}) in: {line}"
    dm.alive()
    assert dm.stop() == 0


if __name__ == "__main__":
    tap.main()
