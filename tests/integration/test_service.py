#!/usr/bin/env python3
"""test_service.py: maild as a service (issue 5).

maild -d in the foreground (logs on stderr) against fake POP3 servers and a
private Dovecot, driven with signals:

  SIGHUP    reload: new accounts polled at once, removed ones stop, an
            unchanged one keeps its schedule and its running session, a
            changed one finishes and restarts; a broken file is refused
            with file:line and the old configuration keeps running
  SIGUSR1   polls every idle account now, even one in backoff
  SIGTERM   during a large fetch: exit 0 within the grace time, nothing
            lost or duplicated after a restart, what was deleted was
            delivered; the grace time and a second signal cut short
  backoff   exponential, +-10 % jitter, capped, reset by a success;
            refused logins start at four intervals; LOGIN-DELAY
  lock      a second maild --once fails for a busy account with exit 75
            naming the first one's pid; --check still works meanwhile
  --check   against Dovecot; --status and the maild.status file
  sd_notify READY=1, STATUS=, RELOADING=1 + MONOTONIC_USEC=, STOPPING=1
            on a path and an abstract socket; a broken NOTIFY_SOCKET
  logs      key=value lines; -vv traces never show a password

Every daemon is stopped by its PID; every wait has a time limit.
"""

import base64
import contextlib
import datetime
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SCALE = float(os.environ.get("MAILD_TIMEOUT_SCALE", "1"))
GRACE = 20          # maild's stop grace time (maild(8), SIGNALS)
LINE_PREFIX_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} maild: ")
# lines about the daemon as a whole; all others name their account
DAEMON_EVENT_RE = re.compile(
    r"^(started: |reloading |reloaded |reload failed|SIGUSR1: |stopping: |"
    r"stopped$|second signal|sessions still running)")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# ---------------------------------------------------------------------------
# helpers

def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns something true; fail after timeout."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what}")
        time.sleep(interval)


class Daemon:
    """maild -d in the background, in its own process group, stderr (and
    stdout) to a file in t.tmp.  Killed by PID when the test ends at the
    latest."""

    def __init__(self, t, cfg, *flags, env=None, label="maild-d"):
        mt.require_maild()
        self.t = t
        self.label = label
        self.errpath = t.tmp / f"{label}.log"
        self.cmd = (shlex.split(os.environ.get("MAILD_WRAPPER", "")) +
                    [mt.maild_bin(), "-d", *map(str, flags), "-f", str(cfg)])
        self._errf = open(self.errpath, "wb")
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                  stdout=self._errf, stderr=self._errf,
                                  env=mt._env(env), start_new_session=True)
        self.pid = self.p.pid
        self.started = time.monotonic()
        t.defer(self.kill)

    # -- the log --------------------------------------------------------
    def raw(self):
        data = self.errpath.read_bytes()
        self.t.attach(self.label, f"$ {shlex.join(self.cmd)}\n"
                      + data.decode("utf-8", "replace"))
        return data

    def log(self, since=0):
        return self.raw()[since:].decode("utf-8", "replace")

    def mark(self):
        """A position in the log: wait for things after it."""
        return len(self.raw())

    def summaries(self, account=None, since=0):
        return [r for r in mt.summary_lines(self.log(since))
                if account is None or r["account"] == account]

    def _alive(self, what):
        rc = self.p.poll()
        if rc is not None:
            raise AssertionError(f"maild exited with status {rc} while "
                                 f"waiting for {what}")

    def wait_log(self, regex, since=0, timeout=10):
        """The first match of regex in the log after since."""
        rx = re.compile(regex, re.M)

        def find():
            m = rx.search(self.log(since))
            if m is None:
                self._alive(f"/{regex}/ in the log")
            return m
        return wait_until(find, timeout, f"/{regex}/ in maild's log")

    def wait_summaries(self, account, n=1, since=0, timeout=10):
        """The summary lines of account after since, once there are n."""
        def get():
            recs = self.summaries(account, since)
            if len(recs) >= n:
                return recs
            self._alive(f"{n} summary line(s) of {account}")
            return None
        return wait_until(get, timeout, f"{n} summary line(s) of account "
                          f"{account}")

    # -- signals ----------------------------------------------------------
    def signal(self, sig):
        self._alive(f"sending signal {sig}")
        os.kill(self.pid, sig)

    def stop(self, timeout=GRACE + 10):
        """SIGTERM; returns (exit status, seconds it took)."""
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=timeout * SCALE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"maild did not exit within {timeout} s "
                                 "of SIGTERM; killed it")
        self.raw()
        return rc, time.monotonic() - t0

    def kill(self):
        if self.p.poll() is None:
            mt.kill_tree(self.p)
        if not self._errf.closed:
            self._errf.close()
        try:
            self.raw()
        except OSError:
            pass


def server(msgs=(), **kw):
    """A fake POP3S server (implicit TLS, the test CA), started; stopped
    at the end of the test."""
    return fakepop3.FakePOP3(msgs, tls=certs.get().server, **kw).start()


def acct(name, srv, maildir, keep=True, password=None, **extra):
    return mt.account(name, "127.0.0.1", srv.port, srv.user,
                      password or srv.password, maildir, keep=keep,
                      ca_file=certs.get().ca, **extra)


def write_conf(path, accounts, state_dir, **globals_):
    """write_config, but replaced atomically (a daemon may read it)."""
    globals_.setdefault("timeout", 10)
    tmp = Path(str(path) + ".new")
    mt.write_config(tmp, accounts, state_dir=state_dir, **globals_)
    os.replace(tmp, path)
    return Path(path)


def conn_times(srv):
    """When each connection to srv started (monotonic): its first command,
    else the end of its greeting."""
    out = []
    for c in list(srv.connections):
        if c.commands:
            out.append(c.commands[0].t)
        elif c.greeting_end is not None:
            out.append(c.greeting_end)
    return out


def simple_msgs(prefix, n, body="Hello.\n" * 40):
    return [corpus.simple(f"{prefix}/{i}", body=body) for i in range(n)]


def ids(datas):
    return sorted(corpus.test_id(mt.strip_trace(d)) for d in datas)


def delay_of(rec):
    v = rec.get("next")
    assert v is not None, f"no next= in the summary line: {rec['line']}"
    return int(v.rstrip("s"))


def parse_iso(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def status_file(state_dir):
    """maild.status parsed: (header dict, [account dicts], raw text)."""
    text = (Path(state_dir) / "maild.status").read_text()
    tap.current().attach("maild.status", text)
    head, accts = None, []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kv = parse_kv(line)
        assert kv is not None, f"not a key=value line: {line!r}"
        if "pid" in kv:
            assert head is None, "two pid= lines"
            head = kv
        else:
            accts.append(kv)
    assert head is not None, "no pid= line in maild.status"
    return head, accts, text


_KV_RE = re.compile(r'([a-z][a-z0-9-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse_kv(text):
    """A line that is nothing but key=value (value quoted if needed) pairs
    separated by single spaces, as a dict; None if it is not."""
    out = {}
    pos = 0
    while pos < len(text):
        m = _KV_RE.match(text, pos)
        if m is None:
            return None
        v = m.group(2)
        if v.startswith('"'):
            v = v[1:-1]
        out[m.group(1)] = v
        pos = m.end()
        if pos < len(text):
            if text[pos] != " ":
                return None
            pos += 1
    return out


class Shared:
    """What the tests of this file share: a private Dovecot, started on
    first use (skipping only the tests that need it if there is none)."""

    def __init__(self):
        self._dc = None
        self._users = 0

    def dovecot(self):
        if self._dc is None:
            dc = dovecot.Dovecot(certs.get())
            try:
                dc.start()
            except BaseException:
                dc.cleanup()
                raise
            self._dc = dc
        return self._dc

    def user(self, msgs, password=None):
        """A fresh Dovecot user holding msgs; returns its name."""
        dc = self.dovecot()
        self._users += 1
        name = f"svc{self._users}"
        dc.add_user(name, password)
        dc.set_mailbox(name, msgs)
        return name

    def close(self):
        if self._dc is not None:
            self._dc.cleanup()


def fixture():
    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        certs.get()
        sh = Shared()
        try:
            yield sh
        finally:
            sh.close()
    return cm()


def dc_acct(name, dc, user, maildir, keep=True, password=None, port=None,
            **extra):
    return mt.account(name, "127.0.0.1", port or dc.pop3s_port, user,
                      password or dc.password, maildir, keep=keep,
                      ca_file=dc.ca, **extra)


class Throttle:
    """A TCP proxy on 127.0.0.1 that passes the server's bytes on at a
    limited rate (bytes per second): a slow link for a big fetch."""

    def __init__(self, port, rate):
        self.upstream = ("127.0.0.1", port)
        self.rate = rate
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.socks = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()
        tap.current().defer(self.stop)

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, None),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, self.rate),
                             daemon=True).start()

    def _pump(self, src, dst, rate):
        try:
            while True:
                data = src.recv(8192)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        for s in [self.ls] + self.socks:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------
# SIGHUP

@tap.test(timeout=90)
def test_reload_adds_removes_keeps_schedule(t):
    """A valid new file: a new account is polled at once, a removed one is
    never polled again, a changed one restarts with its new settings at
    once, and an unchanged one keeps its schedule (its next poll comes
    when it would have come without the reload)."""
    a = server(simple_msgs("keep", 2))
    b = server(simple_msgs("gone", 2))
    c = server(simple_msgs("new", 2))
    d = server(simple_msgs("chg", 2))
    md = {n: t.tmp / f"Maildir-{n}" for n in ("keep", "gone", "new", "chg")}
    state = t.tmp / "state"
    A = acct("keep", a, md["keep"], poll_interval=3)
    B = acct("gone", b, md["gone"], poll_interval=1)
    C = acct("new", c, md["new"], poll_interval=1)
    D = acct("chg", d, md["chg"], poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A, B, D], state)
    dm = Daemon(t, cfg)
    dm.wait_summaries("keep", 2, timeout=15)
    dm.wait_summaries("gone", 2, timeout=5)
    assert len(dm.summaries("chg")) == 1, "chg (1h) polled more than once"
    assert not c.connections, "the new account was polled before it existed"
    # right after a fresh poll of keep
    dm.wait_summaries("keep", 1, dm.mark(), timeout=5)
    ta = conn_times(a)
    gap = ta[-1] - ta[-2]
    t.note(f"keep: polls {gap:.2f} s apart before the reload")
    assert 2.8 <= gap <= 4.0, f"keep (3 s) polled {gap:.2f} s apart"
    # reload 1.5 s after keep's last poll: new order, gone removed, new
    # added, chg's poll-interval changed
    wait_until(lambda: time.monotonic() >= ta[-1] + 1.5, 5, "the moment")
    write_conf(cfg, [dict(D, poll_interval=1), A, C], state)
    mark = dm.mark()
    t_hup = time.monotonic()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 3 accounts added, removed or changed",
                mark, timeout=5)
    log = dm.log(mark)
    assert "account=gone removed" in log, log
    assert "account=new added" in log, log
    assert "account=chg changed" in log, log
    assert "account=keep" not in log.split("reloaded")[0], \
        "the unchanged account was reported as changed"
    # new: polled at once
    dm.wait_summaries("new", 1, mark, timeout=5)
    first_new = conn_times(c)[0] - t_hup
    assert first_new < 1.0, f"the new account was polled {first_new:.2f} s "\
        "after the reload, not at once"
    # changed: polled at once, then every second
    recs = dm.wait_summaries("chg", 2, mark, timeout=6)
    td = [x for x in conn_times(d) if x > t_hup]
    assert td and td[0] - t_hup < 1.0, \
        f"the changed account was not polled at once: {td}"
    assert delay_of(recs[0]) == 1, f"chg: {recs[0]['line']}"
    # unchanged: the next poll comes on the old schedule
    wait_until(lambda: [x for x in conn_times(a) if x > t_hup], 6,
               "keep's next poll")
    nxt = [x for x in conn_times(a) if x > t_hup][0]
    expect = ta[-1] + gap
    t.note(f"keep: next poll {nxt - t_hup:.2f} s after the reload, "
           f"expected {expect - t_hup:.2f}")
    assert abs(nxt - expect) < 0.6, (
        f"keep was polled {nxt - t_hup:.2f} s after the reload; on its "
        f"schedule it would have been {expect - t_hup:.2f} s: the reload "
        "reset the schedule of an unchanged account")
    # removed: no connection started after the reload
    time.sleep(max(0.0, t_hup + 3.0 - time.monotonic()))
    late = [x - t_hup for x in conn_times(b) if x > t_hup + 0.1]
    assert not late, f"the removed account was polled again: +{late} s"
    # (a poll of gone in flight at the reload may finish: at most one)
    assert len(dm.summaries("gone", mark)) <= 1, \
        "gone kept being polled after the reload"
    # the status file follows the configuration
    head, accts, _ = status_file(state)
    assert int(head["pid"]) == dm.pid
    names = [x["account"] for x in accts]
    assert sorted(names) == ["chg", "keep", "new"], names
    rc, secs = dm.stop()
    assert rc == 0, f"exit {rc} after SIGTERM"
    for n, srv in (("keep", a), ("gone", b), ("new", c), ("chg", d)):
        mt.assert_maildir(md[n], srv.datas(), f"Maildir of {n}")


@tap.test(timeout=60)
def test_reload_keeps_running_session(t):
    """A reload while an unchanged account is in the middle of a slow
    session does not interrupt it: one connection, every message,
    deletions and QUIT.  An account removed by the same reload in the
    middle of its session finishes the message in flight, deletes what it
    delivered, says QUIT and is never polled again."""
    m = simple_msgs("busy", 12)
    a = server(m, handlers={"RETR": fakepop3.drip_response(0.05, 128)})
    rm = simple_msgs("removed", 12)
    r = server(rm, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.05, 128)})
    e = server(simple_msgs("extra", 1))
    state = t.tmp / "state"
    A = acct("busy", a, t.tmp / "Maildir-busy", keep=False,
             poll_interval=mt.Raw("1h"))
    R = acct("removed", r, t.tmp / "Maildir-removed", keep=False,
             poll_interval=1)
    E = acct("extra", e, t.tmp / "Maildir-extra", poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A, R], state)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 2 and
               r.counts.get("RETR", 0) >= 2, 10,
               "both slow sessions to be fetching")
    assert not dm.summaries(), "a slow session ended too soon"
    write_conf(cfg, [E, A], state)
    mark = dm.mark()
    t_hup = time.monotonic()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 2 accounts added, removed or changed", mark,
                timeout=5)
    dm.wait_summaries("extra", 1, mark, timeout=5)
    # the removed account: ends soon, cleanly
    rr = dm.wait_summaries("removed", 1, mark, timeout=5)[0]
    assert 0 < rr["fetched"] < 12, \
        f"the removed account did not stop early: {rr['line']}"
    assert rr["deleted"] == rr["fetched"], rr["line"]
    assert not dm.summaries("busy"), \
        "the busy account's session ended right at the reload"
    rec = dm.wait_summaries("busy", 1, timeout=20)[0]
    assert rec["error"] is None and "stopped" not in rec, \
        f"the running session was interrupted: {rec['line']}"
    assert rec["fetched"] == 12 and rec["deleted"] == 12, rec["line"]
    assert len(a.connections) == 1, \
        f"{len(a.connections)} connections: the session was restarted"
    assert a.connections[0].verbs()[-1] == "QUIT", a.connections[0].verbs()
    assert a.mailbox == [], f"{len(a.mailbox)} left on the server"
    time.sleep(max(0.0, t_hup + 2.5 - time.monotonic()))
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(t.tmp / "Maildir-busy", m)
    # removed: one connection, QUIT, delivered + left = all, no overlap
    assert len(r.connections) == 1, \
        f"the removed account was polled again ({len(r.connections)})"
    assert r.connections[0].verbs()[-1] == "QUIT", r.connections[0].verbs()
    got = set(ids(mt.read_maildir(t.tmp / "Maildir-removed")))
    left = set(ids(r.datas()))
    assert not got & left, f"delivered but not deleted: {got & left}"
    assert got | left == {x.id for x in rm}, "messages lost"
    mt.assert_tmp_empty(t.tmp / "Maildir-removed")
    assert len(got) == rr["fetched"]


@tap.test(timeout=60)
def test_reload_changed_account_restarts(t):
    """A reload that changes an account in the middle of its session: the
    session finishes what is in flight, deletes and quits, then a new one
    starts at once with the new settings; everything arrives once."""
    m = simple_msgs("chg", 15)
    a = server(m, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.05, 128)})
    state = t.tmp / "state"
    A = acct("chg", a, t.tmp / "Maildir", keep=False,
             poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A], state)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 3, 10,
               "the session to be fetching")
    write_conf(cfg, [dict(A, poll_interval=mt.Raw("2h"),
                          add_headers=mt.Raw('{"no"}'))], state)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"account=chg changed", mark, timeout=5)
    recs = dm.wait_summaries("chg", 2, timeout=20)
    first, second = recs[0], recs[1]
    assert 0 < first["fetched"] < 15, \
        f"the first session was not stopped early: {first['line']}"
    assert first["error"] is None or first.get("stopped"), first["line"]
    assert first["deleted"] == first["fetched"], first["line"]
    assert second["error"] is None, second["line"]
    assert first["fetched"] + second["fetched"] == 15, \
        f"{first['line']} / {second['line']}"
    assert delay_of(second) == 7200, \
        f"the new session does not use the new settings: {second['line']}"
    assert len(a.connections) == 2, a.connections
    c1, c2 = a.connections
    assert c1.verbs()[-1] == "QUIT", f"first session: {c1.verbs()}"
    gap = c2.commands[0].t - c1.commands[-1].t
    assert gap < 1.0, f"the second session started {gap:.2f} s after the " \
        "first ended, not at once"
    assert a.mailbox == [], f"{len(a.mailbox)} left on the server"
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(t.tmp / "Maildir", m)
    # the messages of the second session have no trace header any more
    plain = [d for d in mt.read_maildir(t.tmp / "Maildir")
             if not mt.trace_headers(d)]
    assert len(plain) == second["fetched"], \
        f"{len(plain)} messages without Received:, expected " \
        f"{second['fetched']} (add-headers changed by the reload)"


@tap.test(timeout=60)
def test_reload_changed_account_waiting_for_a_slot(t):
    """max-connections = 1: while one account polls, the other waits for
    the slot.  A reload that changes the waiting account (its Maildir)
    takes effect for its next poll: it must not be polled once more with
    the settings the reload replaced."""
    srvs, msgs = {}, {}
    for n in ("x", "y"):
        msgs[n] = simple_msgs(f"slot-{n}", 6)
        srvs[n] = server(msgs[n], pipelining=False,
                         handlers={"RETR": fakepop3.drip_response(0.1, 128)})
    state = t.tmp / "state"

    def conf(changed=None):
        out = []
        for n in ("x", "y"):
            md = t.tmp / (f"Maildir-{n}-new" if n == changed
                          else f"Maildir-{n}")
            out.append(acct(n, srvs[n], md, poll_interval=mt.Raw("1h")))
        return out
    cfg = write_conf(t.tmp / "maild.conf", conf(), state, max_connections=1)
    dm = Daemon(t, cfg)
    wait_until(lambda: any(s.counts.get("RETR", 0) >= 1
                           for s in srvs.values()), 10, "a poll")
    busy = [n for n in srvs if srvs[n].connections]
    assert len(busy) == 1, f"max-connections 1, but {busy} are polling"
    waiting = "y" if busy == ["x"] else "x"
    t.note(f"{busy[0]} polls, {waiting} waits; the reload changes "
           f"{waiting}'s maildir")
    write_conf(cfg, conf(changed=waiting), state, max_connections=1)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(rf"account={waiting} changed", mark, timeout=5)
    recs = dm.wait_summaries(waiting, 1, timeout=20)
    time.sleep(1.0)
    recs = dm.summaries(waiting)
    rc, _ = dm.stop()
    assert rc == 0
    old_md = t.tmp / f"Maildir-{waiting}"
    new_md = t.tmp / f"Maildir-{waiting}-new"
    in_old = mt.read_maildir(old_md)
    assert not in_old, (
        f"{len(in_old)} messages delivered into the Maildir the reload "
        f"replaced ({old_md.name}), by {len(recs)} poll(s) after the "
        "reload: the waiting account was polled with its old settings")
    mt.assert_maildir(new_md, msgs[waiting])


@tap.test(timeout=60)
def test_reload_invalid_keeps_old_config(t):
    """A broken file is refused: file:line in the log, the old accounts
    keep running with their old settings; a good file later still
    loads."""
    a = server(simple_msgs("old", 1))
    b = server(simple_msgs("other", 1))
    state = t.tmp / "state"
    A = acct("old", a, t.tmp / "Maildir-old", poll_interval=1)
    B = acct("other", b, t.tmp / "Maildir-other", poll_interval=1)
    cfg = write_conf(t.tmp / "maild.conf", [A], state)
    dm = Daemon(t, cfg)
    dm.wait_summaries("old", 2, timeout=10)

    variants = []
    # 1. an unknown option in the new account, line known
    bad1 = mt.config_text([B, A], state_dir=state, timeout=10)
    lines = bad1.splitlines()
    k = lines.index('account "other" {')
    lines.insert(k + 1, "    frobnicate = 1")
    variants.append(("unknown option", "\n".join(lines) + "\n", k + 2,
                     0o600))
    # 2. an account without host: the error names the account's line
    bad2 = mt.config_text([dict(B, host=None), A], state_dir=state,
                          timeout=10)
    k2 = bad2.splitlines().index('account "other" {') + 1
    variants.append(("missing host", bad2, k2, 0o600))
    # 3. an inline password in a file others can read
    bad3 = mt.config_text([A, B], state_dir=state, timeout=10)
    k3 = bad3.splitlines().index('account "old" {') + 1
    variants.append(("mode 0644 with a password", bad3, k3, 0o644))

    for what, text, line, mode in variants:
        t.note(f"variant: {what}, error expected at line {line}")
        mt.write_file(cfg, text, mode)
        t.attach(f"config ({what})", text)
        mark = dm.mark()
        dm.signal(signal.SIGHUP)
        m = dm.wait_log(r"reload failed.*$", mark, timeout=5)
        assert f"{cfg}:{line}:" in m.group(0), \
            f"{what}: the error does not say {cfg}:{line}: {m.group(0)}"
        log = dm.log(mark)
        assert "account=other" not in log, \
            f"{what}: the broken file was applied: {log}"
        # the old configuration goes on: old is polled again, other never
        n0 = len(conn_times(a))
        wait_until(lambda: len(conn_times(a)) >= n0 + 2, 6,
                   f"old to be polled after the failed reload ({what})")
        assert not b.connections, f"{what}: other was polled"
        assert dm.p.poll() is None

    # the accounts' settings are the old ones (poll-interval 1 s: next=1s)
    assert delay_of(dm.summaries("old")[-1]) == 1
    # a good file now loads
    write_conf(cfg, [B, A], state)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 1 account added", mark, timeout=5)
    dm.wait_summaries("other", 1, mark, timeout=5)
    rc, _ = dm.stop()
    assert rc == 0


# ---------------------------------------------------------------------------
# SIGUSR1

@tap.test(timeout=60)
def test_sigusr1_polls_now(t):
    """poll-interval 1h: SIGUSR1 makes every idle account poll at once, also
    one waiting out a backoff, but never a second session for a busy
    one."""
    a = server(simple_msgs("usr1a", 1))
    refused = []

    def pass_once_refused(conn, cmd):
        if not refused:
            refused.append(cmd.t)
            return b"-ERR [AUTH] not today\r\n"
        return None
    b = server(simple_msgs("usr1b", 1), handlers={"PASS": pass_once_refused})
    slow = simple_msgs("usr1c", 10)
    c = server(slow, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.1, 128)})
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [
        acct("a", a, t.tmp / "Maildir-a"),
        acct("b", b, t.tmp / "Maildir-b"),
        acct("c", c, t.tmp / "Maildir-c")], state,
        poll_interval=mt.Raw("1h"))
    dm = Daemon(t, cfg)
    ra = dm.wait_summaries("a", 1, timeout=10)[0]
    rb = dm.wait_summaries("b", 1, timeout=10)[0]
    assert ra["fetched"] == 1 and delay_of(ra) == 3600, ra["line"]
    assert rb["error"] and delay_of(rb) >= 4 * 3600 * 0.9, \
        f"b should be in backoff: {rb['line']}"
    assert not dm.summaries("c"), "c's slow session ended too soon"
    a.add(corpus.simple("usr1a/new"))
    time.sleep(0.5)
    assert len(a.connections) == 1, "a polled again without a reason"
    mark = dm.mark()
    t_sig = time.monotonic()
    dm.signal(signal.SIGUSR1)
    ra = dm.wait_summaries("a", 1, mark, timeout=5)[0]
    rb = dm.wait_summaries("b", 1, mark, timeout=5)[0]
    lag = conn_times(a)[1] - t_sig
    assert lag < 1.0, f"a polled {lag:.2f} s after SIGUSR1"
    assert ra["fetched"] == 1 and ra["error"] is None, ra["line"]
    assert rb["error"] is None and rb["fetched"] == 1, \
        f"b (in backoff) was not polled, or failed: {rb['line']}"
    assert delay_of(rb) == 3600, f"the success did not reset b's " \
        f"backoff: {rb['line']}"
    rc_ = dm.wait_summaries("c", 1, timeout=20)[0]
    assert rc_["error"] is None and rc_["fetched"] == 10, rc_["line"]
    assert len(c.connections) == 1, \
        f"SIGUSR1 started a second session for the busy account c " \
        f"({len(c.connections)} connections)"
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(t.tmp / "Maildir-a", a.datas())
    mt.assert_maildir(t.tmp / "Maildir-c", slow)


# ---------------------------------------------------------------------------
# SIGTERM

@tap.test(timeout=150)
def test_sigterm_during_big_fetch_dovecot(t):
    """Delete mode, a few hundred messages from Dovecot over a slow link:
    SIGTERM in the middle; maild finishes what is in flight, deletes what
    it delivered, exits 0 well within the grace time.  What the server
    lost is exactly what the Maildir got; a restart (--once) fetches the
    rest: every message exactly once, the server empty."""
    msgs = corpus.generate(seed=55, count=420, prefix="term", max_large=4,
                           huge_bytes=3_000_000)
    total = corpus.total_bytes(msgs)
    sh = t.fx
    user = sh.user(msgs)
    dc = sh.dovecot()
    # a bit over two pipelining windows (200 RETRs) at ~2.5 MB/s
    proxy = Throttle(dc.pop3s_port, rate=2_500_000)
    md = t.tmp / "Maildir"
    state = t.tmp / "state"
    A = dc_acct("big", dc, user, md, keep=False, port=proxy.port)
    cfg = write_conf(t.tmp / "maild.conf", [A], state, timeout=30)
    t.note(f"{len(msgs)} messages, {total} bytes")
    dm = Daemon(t, cfg)
    wait_until(lambda: (mt.count_new(md) + len(os.listdir(md / "tmp"))
                        if (md / "tmp").is_dir() else 0) >= 30, 30,
               "maild to be fetching")
    rc, secs = dm.stop()
    log = dm.log()
    t.note(f"stopped in {secs:.1f} s")
    assert rc == 0, f"exit {rc} after SIGTERM"
    assert secs < GRACE + 3, f"SIGTERM took {secs:.1f} s"
    assert "stopping:" in log and "stopped" in log
    assert "still running after" not in log, \
        "the grace time ran out: the in-flight messages did not finish"
    rec = dm.summaries("big")[-1]
    t.note(f"fetched {rec['fetched']} before stopping")
    assert 0 < rec["fetched"] < len(msgs), (
        "SIGTERM did not land in the middle of the fetch (fetched="
        f"{rec['fetched']} of {len(msgs)}): {rec['line']}")
    got = mt.read_maildir(md)
    assert not mt.compare_messages(got, [m for m in msgs if m.id in
                                         set(ids(got))]), \
        mt.compare_messages(got, [m for m in msgs if m.id in set(ids(got))])
    mt.assert_tmp_empty(md)
    assert len(got) == rec["fetched"], \
        f"{len(got)} in the Maildir, fetched={rec['fetched']}"
    left = dc.mailbox(user)
    left_ids = set(ids(left))
    got_ids = set(ids(got))
    deleted = {m.id for m in msgs} - left_ids
    assert deleted <= got_ids, (f"{len(deleted - got_ids)} deleted from "
                                "the server but not delivered: "
                                f"{sorted(deleted - got_ids)[:5]}")
    assert got_ids <= deleted, (
        f"{len(got_ids - deleted)} delivered but not deleted on a clean "
        "stop")
    assert rec["deleted"] == len(deleted), rec["line"]
    recs = mt.state_records(state, "big")
    assert all(k == "D" for k, _, _ in recs), "pending records after a stop"
    # restart
    r = mt.run_maild(["--once", "-f", cfg], timeout=120, label="restart")
    assert r.rc == 0, f"restart: exit {r.rc}"
    assert r.account("big")["fetched"] == len(msgs) - len(got), \
        r.account("big")["line"]
    mt.assert_maildir(md, msgs)
    assert dc.mailbox(user) == [], "messages left on the server"


@tap.test(timeout=60)
def test_sigterm_finishes_message_in_flight(t):
    """Lock-step (no PIPELINING), keep mode, a server that drips: after
    SIGTERM the message on its way is completed and kept (not dropped),
    no new RETR is sent, the session says QUIT; the restart fetches only
    the others."""
    m = simple_msgs("drip", 20, body="x" * 70 + "\n" * 1 + "y" * 3000 + "\n")
    a = server(m, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.02, 256)})
    md = t.tmp / "Maildir"
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [acct("drip", a, md)], state)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 4, 10, "the 4th RETR")
    time.sleep(0.05)        # in the middle of that message
    retr_before = a.counts.get("RETR", 0)
    rc, secs = dm.stop()
    assert rc == 0, f"exit {rc}"
    assert secs < 5, f"stopping took {secs:.1f} s"
    conn = a.connections[0]
    verbs = conn.verbs()
    nretr = verbs.count("RETR")
    assert nretr in (retr_before, retr_before + 1), \
        f"{nretr} RETRs, {retr_before} before SIGTERM"
    asked = [conn.msg(c.arg) for c in conn.commands if c.verb == "RETR"]
    got = mt.read_maildir(md)
    assert ids(got) == sorted(x.data and corpus.test_id(x.data)
                              for x in asked), (
        "the Maildir does not hold exactly the messages asked for: "
        f"{ids(got)} vs {nretr} RETRs")
    mt.assert_tmp_empty(md)
    r = mt.run_maild(["--once", "-f", cfg], timeout=60, label="restart")
    assert r.rc == 0
    assert r.account("drip")["fetched"] == 20 - nretr, \
        r.account("drip")["line"]
    mt.assert_maildir(md, m)
    assert a.verbs().count("RETR") == 20, \
        f"{a.verbs().count('RETR')} RETRs for 20 messages"
    # "... say QUIT and exit 0" (maild(8), SIGNALS)
    assert verbs[-1] == "QUIT", \
        f"the stopped session ended without QUIT: {verbs}"


def hanging_server(t, n=6):
    m = simple_msgs("hang", n)
    a = server(m, pipelining=False,
               handlers={"RETR": fakepop3.hang_after(100, nth=3)})
    md = t.tmp / "Maildir"
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [acct("hang", a, md, keep=False)],
                     state, timeout=60)
    return m, a, md, cfg


@tap.test(timeout=90)
def test_sigterm_grace_time_runs_out(t):
    """The server hangs in the middle of a message: after SIGTERM maild
    waits the grace time (20 s), then cuts the session, keeps the
    complete messages and exits 0.  The restart fetches the rest, once."""
    m, a, md, cfg = hanging_server(t)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 3, 10, "the 3rd RETR")
    time.sleep(0.3)
    rc, secs = dm.stop(timeout=GRACE + 15)
    t.note(f"stopped after {secs:.1f} s")
    assert rc == 0, f"exit {rc}"
    assert GRACE - 1 <= secs <= GRACE + 5, \
        f"exited {secs:.1f} s after SIGTERM, grace is {GRACE} s"
    dm.wait_log(r"still running after \d+ seconds", timeout=1)
    got = mt.read_maildir(md)
    mt.assert_messages(got, m[:2], "Maildir after the cut")
    mt.assert_tmp_empty(md)
    a.handlers.pop("RETR")
    r = mt.run_maild(["--once", "-f", cfg], timeout=60, label="restart")
    assert r.rc == 0, f"restart: exit {r.rc}"
    rec = r.account("hang")
    assert rec["fetched"] == len(m) - 2, rec["line"]
    mt.assert_maildir(md, m)
    assert a.mailbox == [], f"{len(a.mailbox)} left on the server"


@tap.test(timeout=60)
def test_second_sigterm_stops_now(t):
    """A second SIGTERM ends the sessions at once: exit 0 within a few
    seconds, complete messages kept, nothing lost."""
    m, a, md, cfg = hanging_server(t)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 3, 10, "the 3rd RETR")
    time.sleep(0.3)
    dm.signal(signal.SIGTERM)
    time.sleep(1.0)
    assert dm.p.poll() is None, "maild did not wait for the hung session"
    rc, secs = dm.stop(timeout=10)
    assert rc == 0, f"exit {rc}"
    assert secs < 3, f"the second signal took {secs:.1f} s"
    dm.wait_log("second signal", timeout=1)
    mt.assert_messages(mt.read_maildir(md), m[:2], "Maildir after the cut")
    mt.assert_tmp_empty(md)
    a.handlers.pop("RETR")
    r = mt.run_maild(["--once", "-f", cfg], timeout=60, label="restart")
    assert r.rc == 0
    mt.assert_maildir(md, m)
    assert a.mailbox == []


def procs_with(marker):
    """PIDs whose command line contains marker (bytes)."""
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != os.getpid():
            try:
                if marker in Path(f"/proc/{e}/cmdline").read_bytes():
                    out.append(int(e))
            except OSError:
                pass
    return out


@tap.test(timeout=60)
def test_sigterm_before_the_transfer(t):
    """SIGTERM while a session waits for its password-command, or for a
    server that accepted the connection but never answers the TLS
    handshake: maild stops at once (nothing is in flight), exits 0, and
    leaves no process behind."""
    marker = f"29.{os.getpid()}{int(time.monotonic() * 1000) % 100000}"

    def cleanup():
        for pid in procs_with(marker.encode()):
            os.kill(pid, signal.SIGKILL)
    t.defer(cleanup)
    a = server(simple_msgs("pwcmd", 1))
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)            # never accepts: the handshake never ends
    t.defer(silent.close)
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [
        dict(acct("cmd", a, t.tmp / "Maildir-cmd"), password=None,
             password_command=f"sleep {marker}; echo {a.password}"),
        mt.account("mute", "127.0.0.1", silent.getsockname()[1], "u", "p",
                   t.tmp / "Maildir-mute", ca_file=certs.get().ca)],
        state, timeout=60, poll_interval=mt.Raw("1h"))
    dm = Daemon(t, cfg)
    wait_until(lambda: len(procs_with(marker.encode())) >= 2, 10,
               "the password-command (sh and its sleep) to run")
    time.sleep(0.5)
    t.note(f"before SIGTERM: {procs_with(marker.encode())}")
    rc, secs = dm.stop()
    assert rc == 0, f"exit {rc}"
    assert secs < 3, f"SIGTERM took {secs:.1f} s with nothing in flight"
    time.sleep(0.3)
    left = procs_with(marker.encode())
    assert not left, (
        f"the password-command's child (sleep, pids {left}) outlived maild: "
        "only the shell was killed")


# ---------------------------------------------------------------------------
# scheduling: backoff

@tap.test(timeout=90)
def test_backoff_grows_caps_and_resets(t):
    """poll-interval 1s and a server that drops every connection: polls
    1, 2, 4, 8 s apart (next= says the same); forced on with SIGUSR1 the
    delay keeps doubling up to the cap max(16 polls, 1 h) with +-10 %
    jitter; one success brings it back to poll-interval, and the next
    failure starts again from one interval."""
    failing = [True]

    def maybe_drop(conn, cmd):
        return [fakepop3.DROP] if failing[0] else None
    a = server(simple_msgs("bo", 1), handlers={"*": maybe_drop})
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("bo", a, t.tmp / "Maildir", poll_interval=1)],
                     state)
    dm = Daemon(t, cfg)
    recs = dm.wait_summaries("bo", 4, timeout=20)
    nexts = [delay_of(r) for r in recs[:4]]
    assert all(r["error"] for r in recs), [r["line"] for r in recs]
    assert all(round(w * 0.9) <= d <= round(w * 1.1) for d, w in
               zip(nexts, (1, 2, 4, 8))), \
        f"next= after 1-4 failures: {nexts}, want 1 2 4 8 +-10 %"
    ct = conn_times(a)
    gaps = [ct[i + 1] - ct[i] for i in range(3)]
    t.note(f"gaps between polls: {[round(g, 2) for g in gaps]}")
    for g, want in zip(gaps, [1, 2, 4]):
        assert want * 0.9 - 0.1 <= g <= want * 1.1 + 0.7, \
            f"polls {[round(x, 2) for x in gaps]} s apart, expected 1, 2, 4 " \
            "+-10 %"
    # force failures 5..16 with SIGUSR1
    seen = []
    for k in range(5, 17):
        mark = dm.mark()
        dm.signal(signal.SIGUSR1)
        r = dm.wait_summaries("bo", 1, mark, timeout=5)[0]
        assert r["error"], r["line"]
        seen.append((k, delay_of(r)))
    t.note(f"failure -> next: {seen}")
    for k, d in seen:
        want = min(2 ** (k - 1), 3600)
        assert int(want * 0.9) - 1 <= d <= int(want * 1.1) + 1, \
            f"after {k} failures next={d}s, expected {want} s +-10 %"
    capped = [d for k, d in seen if 2 ** (k - 1) >= 3600]
    assert max(capped) <= 3960, f"cap exceeded: {capped}"
    big = [d for k, d in seen if 2 ** (k - 1) >= 64]
    exact = [d for k, d in seen if 2 ** (k - 1) >= 64 and
             d == min(2 ** (k - 1), 3600)]
    assert len(exact) < len(big), f"no jitter at all: {seen}"
    head, accts, _ = status_file(state)
    assert accts[0]["failures"] == "16", accts[0]
    assert accts[0]["state"] == "failing", accts[0]
    # one success: back to poll-interval
    failing[0] = False
    mark = dm.mark()
    dm.signal(signal.SIGUSR1)
    r = dm.wait_summaries("bo", 2, mark, timeout=6)
    assert r[0]["error"] is None and r[0]["fetched"] == 1, r[0]["line"]
    assert delay_of(r[0]) == 1 and delay_of(r[1]) == 1, \
        f"after a success: {r[0]['line']} / {r[1]['line']}"
    ct = conn_times(a)
    assert 0.9 <= ct[-1] - ct[-2] <= 1.7, \
        f"polls {ct[-1] - ct[-2]:.2f} s apart after a success"
    # and the next failure starts from the beginning
    failing[0] = True
    mark = dm.mark()
    r = dm.wait_summaries("bo", 2, mark, timeout=8)
    assert r[0]["error"] and delay_of(r[0]) == 1 and \
        delay_of(r[1]) == 2, \
        f"after a success then failures: {[x['line'] for x in r[:2]]}"
    rc, _ = dm.stop()
    assert rc == 0


@tap.test(timeout=60)
def test_backoff_refused_login(t):
    """A refused login backs off from four intervals (8 s for 2 s), then
    doubles; no second PASS is sent before that."""
    a = server(simple_msgs("pw", 1))
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("pw", a, t.tmp / "Maildir", password="wrong-pw",
                           poll_interval=2)], state)
    dm = Daemon(t, cfg)
    r = dm.wait_summaries("pw", 1, timeout=10)[0]
    assert r["error"], r["line"]
    assert 7 <= delay_of(r) <= 9, \
        f"refused login: {r['line']} (want next=8s +-10 %)"
    time.sleep(2.5)
    assert a.verbs().count("PASS") == 1, "polled again within 2.5 s"
    for want in (16, 32):
        mark = dm.mark()
        dm.signal(signal.SIGUSR1)
        r = dm.wait_summaries("pw", 1, mark, timeout=5)[0]
        d = delay_of(r)
        assert want * 0.9 - 1 <= d <= want * 1.1 + 1, \
            f"next={d}s, expected {want} +-10 %"
    rc, _ = dm.stop()
    assert rc == 0


@tap.test(timeout=40)
def test_login_delay_respected(t):
    """A server announcing LOGIN-DELAY 5 is not polled every second."""
    a = server(simple_msgs("ld", 1), extra_capa=["LOGIN-DELAY 5"])
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("ld", a, t.tmp / "Maildir", poll_interval=1)],
                     t.tmp / "state")
    dm = Daemon(t, cfg)
    r = dm.wait_summaries("ld", 1, timeout=10)[0]
    assert r["error"] is None, r["line"]
    assert delay_of(r) >= 5, f"LOGIN-DELAY 5 ignored: {r['line']}"
    time.sleep(2)
    assert len(a.connections) == 1, "polled again within 2 s"
    rc, _ = dm.stop()
    assert rc == 0


# ---------------------------------------------------------------------------
# the account lock

@tap.test(timeout=60)
def test_lock_second_process(t):
    """While maild -d is in a slow session of an account, maild --once on
    the same file fails for that account with exit 75 and the first one's
    pid, polls the other account normally, and never delivers a message
    the first one delivers; maild --check works meanwhile."""
    slow_msgs = simple_msgs("lock", 12)
    slow = server(slow_msgs, handlers={"RETR":
                                       fakepop3.drip_response(0.05, 64)})
    fast = server(simple_msgs("free", 1))
    state = t.tmp / "state"
    md_slow, md_fast = t.tmp / "Maildir-slow", t.tmp / "Maildir-fast"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("slow", slow, md_slow, keep=False),
                      acct("fast", fast, md_fast)], state,
                     poll_interval=mt.Raw("1h"))
    dm = Daemon(t, cfg)
    dm.wait_summaries("fast", 1, timeout=10)
    wait_until(lambda: slow.counts.get("RETR", 0) >= 2, 10,
               "the slow session to be fetching")
    _, accts, _ = status_file(state)
    st = {x["account"]: x["state"] for x in accts}
    assert st == {"slow": "polling", "fast": "ok"}, \
        f"maild.status during the slow session: {st}"
    fast.add(corpus.simple("free/new"))
    nconn = len(slow.connections)
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="second maild")
    assert r.rc == mt.EX_TEMPFAIL, f"second maild: exit {r.rc}, expected 75"
    rs = r.account("slow")
    assert rs["error"], rs["line"]
    assert f"locked by process {dm.pid}" in rs["error"], \
        f"the error does not name pid {dm.pid}: {rs['line']}"
    assert rs["fetched"] == 0, rs["line"]
    rf = r.account("fast")
    assert rf["error"] is None and rf["fetched"] == 1, rf["line"]
    assert len(slow.connections) == nconn, \
        "the second maild connected to the locked account's server"
    # --check does not take the lock
    rc_ = mt.run_maild(["--check", "-f", cfg], timeout=30, label="--check")
    assert rc_.rc == 0, f"--check during a session: exit {rc_.rc}"
    assert not dm.summaries("slow"), "the slow session ended too soon for " \
        "this test"
    rec = dm.wait_summaries("slow", 1, timeout=20)[0]
    assert rec["error"] is None and rec["fetched"] == 12, rec["line"]
    retrs = [c for conn in slow.connections for c in conn.commands
             if c.verb == "RETR"]
    assert len(retrs) == 12, f"{len(retrs)} RETRs for 12 messages"
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(md_slow, slow_msgs)
    mt.assert_maildir(md_fast, fast.datas())
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="third maild")
    assert r.rc == 0 and r.account("slow")["fetched"] == 0
    assert r.account("fast")["fetched"] == 0


# ---------------------------------------------------------------------------
# --check

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


# ---------------------------------------------------------------------------
# --status and maild.status

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
    assert r.rc == mt.EX_NOPERM, f"--once: exit {r.rc}"
    head, accts, text = status_file(state)
    assert head.get("mode") == "once", head
    assert ISO_RE.match(head["written"]), head
    assert abs(parse_iso(head["written"]) - t0) < 10, head
    by = {a["account"]: a for a in accts}
    assert list(by) == ["good", "bad"], f"accounts in the status: {list(by)}"
    for a in accts:
        for k in ("state", "last-poll", "last-success", "next-poll",
                  "fetched", "fetched-total", "failures"):
            assert k in a, f"no {k}= in {a}"
        assert ISO_RE.match(a["last-poll"]), a
        assert abs(parse_iso(a["last-poll"]) - t0) < 10, a
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
    head, accts, _ = status_file(state)
    assert head["mode"] == "daemon" and int(head["pid"]) == dm.pid, head
    g = {a["account"]: a for a in accts}["good"]
    assert g["state"] in ("ok", "polling"), g
    assert g["fetched-total"] == "1", \
        f"fetched-total since the daemon started should be 1: {g}"
    nxt, last = parse_iso(g["next-poll"]), parse_iso(g["last-poll"])
    assert 1 <= nxt - last <= 4, f"next poll {nxt - last} s after the " \
        f"last, poll-interval 2 s: {g}"
    assert abs(nxt - time.time()) <= 4, g
    r = mt.run_maild(["--status", "-f", cfg], timeout=10, label="--status")
    assert f"maild pid {dm.pid} (daemon), which is running" in r.stdout, \
        r.stdout
    rc, _ = dm.stop()
    assert rc == 0
    r = mt.run_maild(["--status", "-f", cfg], timeout=10, label="--status")
    assert f"maild pid {dm.pid} (daemon), which is not running" in r.stdout, \
        r.stdout


# ---------------------------------------------------------------------------
# sd_notify

class NotifySocket:
    """A datagram socket standing in for systemd's notify socket, with the
    sender's credentials."""

    def __init__(self, t, abstract=False):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"maild-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.s.bind("\0" + name)
            self.env = "@" + name
        else:
            path = str(t.tmp / "notify.sock")
            self.s.bind(path)
            self.env = path
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.s.settimeout(0.1)
        self.msgs = []          # (monotonic, pid, text)
        self._stop = False
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        t.defer(self.close)

    def _run(self):
        csize = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop:
            try:
                data, anc, _, _ = self.s.recvmsg(4096, csize)
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for lvl, typ, cd in anc:
                if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cd[:12])[0]
            self.msgs.append((time.monotonic(), pid,
                              data.decode("utf-8", "replace")))

    def texts(self):
        return [m[2] for m in self.msgs]

    def wait(self, pred, timeout, what):
        return wait_until(lambda: [m for m in self.msgs if pred(m[2])],
                          timeout, f"notification {what}; got "
                          f"{self.texts()}")

    def close(self):
        self._stop = True
        self._th.join(2)
        self.s.close()


def sd_notify_scenario(t, abstract):
    ns = NotifySocket(t, abstract)
    a = server(simple_msgs("sd", 1))
    state = t.tmp / "state"
    A = acct("sd", a, t.tmp / "Maildir", poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A], state)
    dm = Daemon(t, cfg, env={"NOTIFY_SOCKET": ns.env})
    ns.wait(lambda s: "READY=1" in s, 10, "READY=1")
    dm.wait_summaries("sd", 1, timeout=10)
    ns.wait(lambda s: s.startswith("STATUS=") and "last poll 20" in s, 5,
            "STATUS= after the first poll")
    st = [x for x in ns.texts() if x.startswith("STATUS=")]
    t.note(f"STATUS lines: {st}")
    assert re.match(r"STATUS=1 account, last poll \S+, 0 failing", st[-1]), \
        st[-1]
    # reload: RELOADING=1 with MONOTONIC_USEC, then READY=1
    for what, conf_text in (("good", None), ("broken", "oops {\n")):
        if conf_text is not None:
            mt.write_file(cfg, conf_text)
        n0 = len(ns.msgs)
        t1 = time.monotonic()
        dm.signal(signal.SIGHUP)
        wait_until(lambda: any("READY=1" in m[2] for m in ns.msgs[n0:]), 5,
                   f"READY=1 after a {what} reload; got {ns.texts()[n0:]}")
        t2 = time.monotonic()
        after = ns.msgs[n0:]
        texts = [m[2] for m in after]
        k = next((i for i, x in enumerate(texts) if "RELOADING=1" in x),
                 None)
        assert k is not None, f"{what} reload: no RELOADING=1 in {texts}"
        r = next(i for i, x in enumerate(texts) if "READY=1" in x)
        assert k < r, f"{what} reload: READY=1 before RELOADING=1: {texts}"
        fields = dict(ln.split("=", 1) for ln in texts[k].splitlines()
                      if "=" in ln)
        assert "MONOTONIC_USEC" in fields, \
            f"RELOADING=1 without MONOTONIC_USEC=: {texts[k]!r}"
        usec = int(fields["MONOTONIC_USEC"])
        assert t1 * 1e6 - 1000 <= usec <= t2 * 1e6 + 1000, \
            f"MONOTONIC_USEC={usec} not between {t1 * 1e6:.0f} and " \
            f"{t2 * 1e6:.0f} (CLOCK_MONOTONIC)"
    # stop
    n0 = len(ns.msgs)
    rc, _ = dm.stop()
    assert rc == 0, f"exit {rc}"
    time.sleep(0.2)
    assert any("STOPPING=1" in x for x in ns.texts()[n0:]), \
        f"no STOPPING=1 at SIGTERM: {ns.texts()[n0:]}"
    # every notification came from maild's main process (NotifyAccess=main)
    others = [m for m in ns.msgs if m[1] != dm.pid]
    assert not others, f"notifications not from maild's pid {dm.pid}: " \
        f"{others}"


@tap.test(timeout=40)
def test_sd_notify_path_socket(t):
    """NOTIFY_SOCKET=/path: READY=1, STATUS=, RELOADING=1 with
    MONOTONIC_USEC= then READY=1 around SIGHUP (also a refused one),
    STOPPING=1 at SIGTERM, all from maild's own pid."""
    sd_notify_scenario(t, abstract=False)


@tap.test(timeout=40)
def test_sd_notify_abstract_socket(t):
    """The same with an abstract socket (NOTIFY_SOCKET=@name)."""
    sd_notify_scenario(t, abstract=True)


@tap.test(timeout=40)
def test_notify_socket_broken_or_absent(t):
    """A NOTIFY_SOCKET nobody listens on, or that is not a socket address,
    or none at all: maild works as usual."""
    for value in (str(t.tmp / "nobody-listens.sock"), "not-a-path",
                  "@maild-test-nobody-here", None):
        a = server(simple_msgs("nosd", 1))
        md = t.tmp / f"Maildir-{abs(hash(value))}"
        cfg = write_conf(t.tmp / "maild.conf",
                         [acct("x", a, md, poll_interval=mt.Raw("1h"))],
                         t.tmp / f"state-{abs(hash(value))}")
        dm = Daemon(t, cfg, env={"NOTIFY_SOCKET": value},
                    label=f"maild-d-{abs(hash(value))}")
        r = dm.wait_summaries("x", 1, timeout=10)[0]
        assert r["error"] is None and r["fetched"] == 1, \
            f"NOTIFY_SOCKET={value!r}: {r['line']}"
        mark = dm.mark()
        dm.signal(signal.SIGHUP)
        dm.wait_log("reloaded", mark, timeout=5)
        rc, _ = dm.stop()
        assert rc == 0, f"NOTIFY_SOCKET={value!r}: exit {rc}"


# ---------------------------------------------------------------------------
# logs

@tap.test(timeout=60)
def test_log_lines_key_value(t):
    """maild -d -v: every line is "<time> maild: ..."; every line about an
    account carries account=<name>; summary lines are nothing but
    key=value pairs (error quoted)."""
    a = server(simple_msgs("log", 2))
    b = server(simple_msgs("logbad", 1))
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("good-1", a, t.tmp / "Maildir-a"),
                      acct("bad.2", b, t.tmp / "Maildir-b",
                           password="no-no-no")], state,
                     poll_interval=mt.Raw("1h"))
    # a first run, then what a crash leaves: a pending delivery (P record,
    # file in tmp/) and a partial download in tmp/, so that the daemon
    # logs its recovery too
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="--once")
    assert r.rc == mt.EX_NOPERM, f"exit {r.rc}"
    md = t.tmp / "Maildir-a"
    name = mt.maildir_files(md, ("new",))[0][1]
    sec, usec, pid, seq, tag, host, _ = mt.NAME_RE.match(name).groups()
    pending = corpus.simple("log/pending")
    a.add(pending, uidl="pending-uidl")
    base = f"{sec}.M{usec}P{pid}Q{int(seq) + 100}A{tag}.{host}"
    (md / "tmp" / base).write_bytes(pending.data)
    partial = f"{sec}.M{usec}P{pid}Q{int(seq) + 101}A{tag}.{host}"
    (md / "tmp" / partial).write_bytes(b"Subject: cut\n\nhalf a mess")
    mt.append_state_block(state, "good-1", [
        f"P {int(time.time())} 1 0 0 0 pending-uidl - "
        f"{base},S={len(pending.data)}"])
    dm = Daemon(t, cfg, "-v")
    dm.wait_summaries("good-1", 1, timeout=10)
    dm.wait_summaries("bad.2", 1, timeout=10)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log("reloaded", mark)
    dm.signal(signal.SIGUSR1)
    dm.wait_summaries("good-1", 1, mark, timeout=10)
    rc, _ = dm.stop()
    assert rc == 0
    log = dm.log()
    assert "interrupted" in log and "partial" in log, \
        "the recovery of the pending delivery / partial file is not logged"
    mt.assert_maildir(md, a.datas())
    problems = []
    for line in log.splitlines():
        if not LINE_PREFIX_RE.match(line):
            problems.append(f"no time stamp / 'maild:' prefix: {line!r}")
            continue
        body = LINE_PREFIX_RE.sub("", line)
        if DAEMON_EVENT_RE.match(body):
            continue
        # everything else is about an account, and says which
        m = re.match(r"account=(\S+) ", body)
        if m is None or m.group(1) not in ("good-1", "bad.2"):
            problems.append(f"a line without account=<name> first: "
                            f"{line!r}")
    for rec in mt.summary_lines(log):
        body = LINE_PREFIX_RE.sub("", rec["line"])
        kv = parse_kv(body)
        if kv is None:
            problems.append(f"summary line not all key=value: {body!r}")
            continue
        # a poll cut short by the final SIGTERM has no next poll
        for k in ("account", "fetched", "bytes", "deleted", "seconds") + \
                (() if "stopped" in kv else ("next",)):
            if k not in kv:
                problems.append(f"no {k}= in {body!r}")
    bad_recs = [r for r in mt.summary_lines(log) if r["account"] == "bad.2"]
    assert bad_recs and bad_recs[0]["error"], "no error= for bad.2"
    assert not problems, "\n".join(problems[:10])


@tap.test(timeout=40)
def test_journal_stream_priorities(t):
    """When stderr is the journal ($JOURNAL_STREAM names it), every line
    is "<priority>text": info 6, warnings 4, -v detail 7, no time stamp.
    When $JOURNAL_STREAM names another file, lines keep their time
    stamps."""
    a = server(simple_msgs("jr", 1))
    b = server(simple_msgs("jrbad", 1))
    c = server(simple_msgs("jrbusy", 1), handlers={
        "PASS": fakepop3.raw(b"-ERR [IN-USE] mailbox locked\r\n")})
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("good", a, t.tmp / "Maildir-a"),
                      acct("bad", b, t.tmp / "Maildir-b", password="nope"),
                      acct("busy", c, t.tmp / "Maildir-c")],
                     state, poll_interval=mt.Raw("1h"))
    # the log file exists before maild starts: its dev:ino is the stream
    log = t.tmp / "journal.log"
    log.write_bytes(b"")
    st = os.stat(log)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    mt.require_maild()
    with open(log, "ab") as f:
        p = subprocess.Popen([mt.maild_bin(), "-d", "-v", "-f", cfg],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             env=mt._env(env), start_new_session=True)
    t.defer(mt.kill_tree, p)

    def text():
        s = log.read_text(errors="replace")
        t.attach("journal.log", s)
        return s
    wait_until(lambda: len(re.findall(r"^<\d>account=\S+ fetched=",
                                      text(), re.M)) >= 3, 10,
               "three summary lines")
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=GRACE + 5) == 0
    lines = text().splitlines()
    bad = [ln for ln in lines if not re.match(r"^<[0-7]>\S", ln)]
    assert not bad, f"lines without a <priority> prefix: {bad[:5]}"
    stamped = [ln for ln in lines if re.match(r"^<\d>\d{4}-\d\d-", ln)]
    assert not stamped, f"time stamps under the journal: {stamped[:3]}"
    good = [ln for ln in lines if ln[3:].startswith("account=good fetched=")]
    badl = [ln for ln in lines if ln[3:].startswith("account=bad fetched=")]
    assert good and good[0][1] == "6", f"a good poll: {good}"
    assert badl and badl[0][1] == "4", f"a failed poll: {badl}"
    busy = [ln for ln in lines if ln[3:].startswith("account=busy fetched=")]
    assert busy and 'busy="' in busy[0] and busy[0][1] == "6", \
        f"[IN-USE] is logged as a warning, or without busy=: {busy}"
    assert any(ln.startswith("<6>started:") for ln in lines), lines[:3]
    assert any(ln[1] == "7" for ln in lines), "no -v line at priority 7"
    # JOURNAL_STREAM for some other file: ordinary lines
    other = t.tmp / "other"
    other.write_bytes(b"")
    st = os.stat(other)
    dm = Daemon(t, cfg, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    dm.wait_summaries("good", 1, timeout=10)
    rc, _ = dm.stop()
    assert rc == 0
    assert all(LINE_PREFIX_RE.match(ln) for ln in dm.log().splitlines()), \
        "JOURNAL_STREAM of another file changed the log format"


@tap.test(timeout=40)
def test_daemon_detaches(t):
    """maild without -d: the command returns 0 at once, a detached maild
    (its own session, stdio on /dev/null, cwd /) polls, writes its pid in
    maild.status and stops on SIGTERM."""
    a = server(simple_msgs("bg", 2))
    state = t.tmp / "state"
    md = t.tmp / "Maildir"
    cfg = write_conf(t.tmp / "maild.conf", [acct("bg", a, md)], state,
                     poll_interval=mt.Raw("1h"))
    mt.require_maild()

    def ours():
        """PIDs of maild processes running with this config."""
        out = []
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    cl = Path(f"/proc/{e}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(cfg).encode() in cl and b"maild" in cl:
                    out.append(int(e))
        return out

    def cleanup():
        for pid in ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    t.defer(cleanup)
    r = mt.run_maild(["-f", cfg], timeout=10, label="maild (detaching)")
    assert r.rc == 0, f"exit {r.rc}"
    assert r.seconds < 5, f"took {r.seconds:.1f} s to detach"
    wait_until(lambda: mt.count_new(md) == 2, 10, "the detached maild's poll")
    pids = ours()
    assert len(pids) == 1, f"maild processes with this config: {pids}"
    pid = pids[0]
    head, accts, _ = wait_until(
        lambda: (lambda h: h if h[1] and h[1][0].get("state") == "ok"
                 else None)(status_file(state)), 5, "the status after a poll")
    assert int(head["pid"]) == pid and head["mode"] == "daemon", head
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    assert int(fields[3]) == pid, "the daemon is not a session leader " \
        f"(sid {fields[3]})"
    assert os.readlink(f"/proc/{pid}/cwd") == "/", "cwd is not /"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null", \
            f"fd {fd} is {os.readlink(f'/proc/{pid}/fd/{fd}')}"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not dovecot.pid_alive(pid), 10, "the daemon to exit")
    mt.assert_maildir(md, a.datas())


@tap.test(timeout=30)
def test_state_directory_from_systemd(t):
    """Without state-dir in the file, $STATE_DIRECTORY (systemd's
    StateDirectory=, the first of a ':' list) is the state directory:
    state, lock and maild.status go there, and --status reads it."""
    a = server(simple_msgs("sdir", 1))
    cfg = write_conf(t.tmp / "maild.conf", [acct("sd", a, t.tmp / "Maildir")],
                     None)
    sd = t.tmp / "var-lib-maild"
    env = {"STATE_DIRECTORY": f"{sd}:{t.tmp / 'second'}"}
    r = mt.run_maild(["--once", "-f", cfg], env=env, timeout=30)
    assert r.rc == 0, f"exit {r.rc}"
    for n in ("sd.state", "sd.lock", "maild.status"):
        assert (sd / n).exists(), f"no {n} in $STATE_DIRECTORY"
    assert not (t.tmp / "second").exists()
    r = mt.run_maild(["--status", "-f", cfg], env=env, timeout=10)
    assert r.rc == 0 and "account sd: ok" in r.stdout, r.stdout


@tap.test(timeout=20)
def test_daemon_bad_config_exit_78(t):
    """maild -d with a broken file exits 78 at once, naming file:line."""
    cfg = t.tmp / "maild.conf"
    mt.write_file(cfg, f'state-dir = "{t.tmp}/state"\nbogus = 1\n')
    r = mt.run_maild(["-d", "-f", cfg], timeout=10, label="maild -d")
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"
    assert f"{cfg}:2:" in r.stderr, r.stderr


def secret_forms(user, password):
    """The password as it may travel: as is, base64 alone (AUTH LOGIN),
    and base64 of the SASL PLAIN message."""
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    return [password, b64(password), b64(f"\0{user}\0{password}"),
            b64(f"{user}\0{user}\0{password}")]


@tap.test(timeout=90)
def test_vv_traces_mask_passwords(t):
    """-vv logs the POP3 dialogue (>>> / <<<) but never the password, in
    any form: USER/PASS (fake server), AUTH PLAIN and AUTH LOGIN
    (Dovecot), a refused password; -v does not log the dialogue."""
    pw = "Sekr1t-Pa55-qwz"
    a = server(simple_msgs("vv", 1), password=pw)
    cfg = write_conf(t.tmp / "fake.conf",
                     [acct("fake", a, t.tmp / "Maildir-fake")],
                     t.tmp / "state")
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=30, label="-vv")
    assert r.rc == 0, f"exit {r.rc}"
    assert ">>> PASS" in r.stderr, "no masked PASS in the -vv trace"
    assert "<<< +OK" in r.stderr, "no server lines in the -vv trace"
    for s in secret_forms(a.user, pw):
        assert s not in r.stderr, f"-vv shows the password ({s!r})"
    r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=30, label="-v")
    assert r.rc == 0
    assert ">>>" not in r.stderr and "<<<" not in r.stderr, \
        "-v (once) logs the POP3 dialogue"

    sh = t.fx
    dpw = "D0vecot-Secr3t-xyz"
    user = sh.user(simple_msgs("vvd", 2), password=dpw)
    dc = sh.dovecot()
    for auth in ("auto", "plain", "login", "user"):
        md = t.tmp / f"Maildir-{auth}"
        cfg = write_conf(t.tmp / f"{auth}.conf",
                         [dc_acct(f"dc-{auth}", dc, user, md, password=dpw,
                                  auth=mt.Raw(auth))],
                         t.tmp / f"state-{auth}")
        r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=60,
                         label=f"-vv auth={auth}")
        assert r.rc == 0, f"auth={auth}: exit {r.rc}"
        assert ">>>" in r.stderr, f"auth={auth}: no trace"
        if auth in ("auto", "plain"):
            assert ">>> AUTH PLAIN" in r.stderr, \
                f"auth={auth}: no AUTH PLAIN in the trace"
        for s in secret_forms(user, dpw):
            assert s not in r.stderr, \
                f"auth={auth}: -vv shows the password ({s!r})"
    # a refused password
    cfg = write_conf(t.tmp / "wrong.conf",
                     [dc_acct("dc-wrong", dc, user, t.tmp / "Maildir-w",
                              password="Wr0ng-" + dpw)], t.tmp / "state-w")
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=60,
                     label="-vv wrong password")
    assert r.rc == mt.EX_NOPERM, f"exit {r.rc}"
    for s in secret_forms(user, "Wr0ng-" + dpw) + secret_forms(user, dpw):
        assert s not in r.stderr, f"-vv shows a password ({s!r})"


if __name__ == "__main__":
    tap.main(fixture=fixture)
