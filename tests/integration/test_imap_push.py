#!/usr/bin/env python3
"""test_imap_push.py: IMAP IDLE (RFC 2177) with maild running as a daemon
(maild -d) against a private Dovecot and the fake IMAP server.

poll-interval is an hour in these tests, so a message can only arrive in
time through IDLE.  The bounds are generous (scaled by
MAILD_TIMEOUT_SCALE): the benchmark measures latency, these tests check
behaviour; the latencies are printed as diagnostics.

Dovecot: a message saved (doveadm save) while maild idles is in new/
soon, exactly once; several messages in a row, in delete mode (each
deleted on the server); SIGUSR1 while idling ends the IDLE (DONE), lists
the folder and idles again; idle-refresh re-issues IDLE; a restart of
Dovecot while maild idles: maild reconnects after its backoff, idles
again, and what arrived meanwhile is delivered once; SIGTERM while
idling: DONE, LOGOUT (Dovecot logs a clean logout), exit 0; idle = no
polls instead; an account of two folders holds IDLE on both (issue 12:
one connection per folder within max-connections).

The fake server, for the moments Dovecot does not produce: news (EXISTS)
announced before the server's "+ idling", SIGUSR1 and SIGTERM arriving
between IDLE and "+ idling": none may be lost; a server that offers IDLE
and refuses it (NO or BAD): the folder is polled instead.
"""

import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakeimap    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SCALE = float(os.environ.get("MAILD_TIMEOUT_SCALE", "1"))
ARRIVE = 10         # seconds within which a pushed message must arrive
GRACE = 20          # maild's stop grace time (maild(8), SIGNALS)
USERS = {u: None for u in ("push", "pushdel", "usr1", "refresh", "restart",
                           "term", "noidle", "twofolders")}
IDLING_RE = r"account=im <<< \+ "


class Daemon:
    """maild -d -vv in the background (own process group), its log in a
    file; killed by PID when the test ends at the latest."""

    def __init__(self, t, cfg):
        mt.require_maild()
        self.t = t
        self.path = t.tmp / "maild-d.log"
        self.cmd = (shlex.split(os.environ.get("MAILD_WRAPPER", "")) +
                    [mt.maild_bin(), "-d", "-vv", "-f", str(cfg)])
        self._f = open(self.path, "wb")
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                  stdout=self._f, stderr=self._f,
                                  env=mt._env(), start_new_session=True)
        t.defer(self.kill)

    def log(self, since=0):
        text = self.path.read_bytes().decode("utf-8", "replace")
        self.t.attach("maild -d", f"$ {shlex.join(self.cmd)}\n{text}")
        return text[since:]

    def mark(self):
        return len(self.log())

    def wait(self, pred, what, limit=ARRIVE):
        deadline = time.monotonic() + limit * SCALE
        while True:
            v = pred()
            if v:
                return v
            rc = self.p.poll()
            if rc is not None:
                raise AssertionError(f"maild exited ({rc}) while waiting "
                                     f"for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {limit} s")
            time.sleep(0.01)

    def wait_log(self, regex, since=0, limit=ARRIVE, count=1):
        rx = re.compile(regex, re.M)
        return self.wait(lambda: len(rx.findall(self.log(since))) >= count,
                         f"{count} x /{regex}/ in maild's log", limit)

    def idling(self, since=0, count=1, limit=ARRIVE):
        """Wait until the server said "+" to maild's IDLE (count times
        since the mark)."""
        return self.wait_log(IDLING_RE, since, limit, count)

    def idle_now(self):
        """Is maild idling now: the last line of its dialogue the
        server's "+" to IDLE?"""
        lines = [ln for ln in self.log().splitlines()
                 if "account=im >>> " in ln or "account=im <<< " in ln]
        return bool(lines) and re.search(IDLING_RE, lines[-1]) is not None

    def sent_since(self, since):
        out = []
        for ln in self.log(since).splitlines():
            m = re.search(r"account=im >>> (?:A\d+ )?(.*)$", ln)
            if m:
                out.append(m.group(1))
        return out

    def signal(self, sig):
        assert self.p.poll() is None, "maild is not running"
        os.kill(self.p.pid, sig)

    def stop(self, limit=GRACE + 10):
        self.signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            rc = self.p.wait(timeout=limit * SCALE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"maild did not exit within {limit} s of "
                                 "SIGTERM")
        self.log()
        return rc, time.monotonic() - t0

    def kill(self):
        if self.p.poll() is None:
            mt.kill_tree(self.p)
        if not self._f.closed:
            self._f.close()


def account(t, srv, user, **extra):
    a = mt.account("im", "127.0.0.1", srv.imaps_port, user, srv.users[user],
                   t.tmp / "Maildir", keep=True, ca_file=srv.ca,
                   protocol="imap")
    a.update(extra)
    return a


def config(t, accounts, **globals_):
    globals_.setdefault("timeout", 10)
    globals_.setdefault("poll_interval", mt.Raw("1h"))
    return mt.write_config(t.tmp / "maild.conf", accounts,
                           state_dir=t.tmp / "state", **globals_)


def wait_new(d, maildir, n, what=None, limit=ARRIVE):
    """Wait until maildir's new/ holds n messages; the seconds it took."""
    t0 = time.monotonic()
    d.wait(lambda: mt.count_new(maildir) >= n,
           what or f"{n} messages in {maildir}/new", limit)
    return time.monotonic() - t0


def settle(srv, limit=10):
    deadline = time.monotonic() + limit
    while srv.sessions("imap") and time.monotonic() < deadline:
        time.sleep(0.02)


def dovecot_log(srv):
    try:
        return srv.log.read_text(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# Dovecot

@tap.test(name="push: a message saved while maild idles is in new/ at "
          "once, exactly once; again for a second one", timeout=120)
def test_push(t):
    srv = t.fx.get(t)
    u = "push"
    old = [corpus.simple(f"{u}/old")]
    srv.set_mailbox(u, old)
    md = t.tmp / "Maildir"
    d = Daemon(t, config(t, [account(t, srv, u)]))
    d.idling()
    assert mt.count_new(md) == 1
    lat = []
    new = []
    for i in range(2):
        m = corpus.simple(f"{u}/pushed-{i}")
        new.append(m)
        mark = d.mark()
        t0 = time.monotonic()
        srv.deliver(u, [m])
        wait_new(d, md, 2 + i, f"pushed message {i} in new/")
        lat.append(time.monotonic() - t0)
        d.idling(mark)          # and idling again
        assert not any(c.startswith("LOGOUT") for c in d.sent_since(mark))
    tap.diag(f"push latency (doveadm save -> new/): "
             f"{', '.join(f'{x:.2f} s' for x in lat)}")
    mt.assert_maildir(md, old + new)
    rc, secs = d.stop()
    assert rc == 0, f"exit {rc}"
    mt.assert_maildir(md, old + new)


@tap.test(name="push, delete mode: eight messages in a row, each "
          "delivered once and deleted on the server", timeout=180)
def test_push_many_delete(t):
    srv = t.fx.get(t)
    u = "pushdel"
    srv.set_mailbox(u, [])
    md = t.tmp / "Maildir"
    d = Daemon(t, config(t, [account(t, srv, u, keep=False)]))
    d.idling()
    ms = [corpus.simple(f"{u}/{i}", body=f"message {i}\n" * (i * 50 + 1))
          for i in range(8)]
    for m in ms:
        srv.deliver(u, [m])
    wait_new(d, md, len(ms), limit=ARRIVE * 2)
    d.wait(lambda: not srv.messages(u), "an empty INBOX on the server",
           ARRIVE)
    mt.assert_maildir(md, ms)
    t.note("a second burst, after maild idles again")
    d.wait(d.idle_now, "maild idling again")
    more = [corpus.simple(f"{u}/more-{i}") for i in range(3)]
    for m in more:
        srv.deliver(u, [m])
    wait_new(d, md, len(ms) + len(more))
    d.wait(lambda: not srv.messages(u), "an empty INBOX on the server")
    rc, _ = d.stop()
    assert rc == 0, f"exit {rc}"
    mt.assert_maildir(md, ms + more)
    sent = d.sent_since(0)
    assert "EXPUNGE" not in sent, "a bare EXPUNGE"


@tap.test(name="SIGUSR1 while idling: DONE, the folder listed, IDLE again; "
          "nothing delivered twice", timeout=120)
def test_sigusr1(t):
    srv = t.fx.get(t)
    u = "usr1"
    m = [corpus.simple(f"{u}/{i}") for i in range(3)]
    srv.set_mailbox(u, m)
    md = t.tmp / "Maildir"
    d = Daemon(t, config(t, [account(t, srv, u)]))
    d.idling()
    wait_new(d, md, 3)
    for k in range(2):
        mark = d.mark()
        d.signal(signal.SIGUSR1)
        d.idling(mark)
        sent = d.sent_since(mark)
        assert "DONE" in sent, sent
        i = sent.index("DONE")
        assert any(re.match(r"UID FETCH 1:\* \(UID RFC822\.SIZE", c)
                   for c in sent[i:]), f"no full listing after DONE: {sent}"
        assert sent[-1] == "IDLE", sent
    mt.assert_maildir(md, m)
    rc, _ = d.stop()
    assert rc == 0


@tap.test(name="idle-refresh = 10s: IDLE re-issued (DONE, a look, IDLE) "
          "and pushes still arrive", timeout=120)
def test_idle_refresh(t):
    srv = t.fx.get(t)
    u = "refresh"
    srv.set_mailbox(u, [])
    md = t.tmp / "Maildir"
    d = Daemon(t, config(t, [account(t, srv, u, idle_refresh=mt.Raw("10s"))]))
    d.idling()
    mark = d.mark()
    d.idling(mark, limit=25)        # a second "+" after the refresh
    sent = d.sent_since(mark)
    assert sent[:1] == ["DONE"] and sent[-1] == "IDLE", sent
    m = corpus.simple(f"{u}/after-refresh")
    srv.deliver(u, [m])
    wait_new(d, md, 1)
    mt.assert_maildir(md, [m])
    rc, _ = d.stop()
    assert rc == 0


@tap.test(name="a restart of Dovecot while maild idles: maild reconnects "
          "after its backoff and idles again; what arrived meanwhile is "
          "delivered once", timeout=180)
def test_dovecot_restart(t):
    srv = t.fx.get(t)
    u = "restart"
    first = [corpus.simple(f"{u}/first")]
    srv.set_mailbox(u, first)
    md = t.tmp / "Maildir"
    # the backoff after a failure starts at poll-interval
    d = Daemon(t, config(t, [account(t, srv, u)], poll_interval=mt.Raw("3s")))
    d.idling()
    wait_new(d, md, 1)
    mark = d.mark()
    srv.restart()
    during = corpus.simple(f"{u}/during")
    srv.deliver(u, [during])
    d.wait_log(r"account=im .*error=", mark, limit=ARRIVE)
    d.idling(mark, limit=ARRIVE * 3)
    wait_new(d, md, 2)
    after = corpus.simple(f"{u}/after")
    mark2 = d.mark()
    srv.deliver(u, [after])
    wait_new(d, md, 3)
    d.idling(mark2)
    rc, _ = d.stop()
    assert rc == 0, f"exit {rc}"
    mt.assert_maildir(md, first + [during, after])
    assert [x["uid"] for x in srv.messages(u)] == [1, 2, 3]


@tap.test(name="SIGTERM while idling: DONE, LOGOUT (Dovecot logs a clean "
          "logout), exit 0, well within the grace time", timeout=120)
def test_sigterm_idle(t):
    srv = t.fx.get(t)
    u = "term"
    srv.set_mailbox(u, [corpus.simple(f"{u}/1")])
    d = Daemon(t, config(t, [account(t, srv, u)]))
    d.idling()
    mark = d.mark()
    rc, secs = d.stop()
    assert rc == 0, f"exit {rc}"
    assert secs < GRACE * SCALE, f"{secs:.1f} s: the grace time ran out"
    sent = d.sent_since(mark)
    assert sent == ["DONE", "LOGOUT"], sent
    settle(srv)
    d.wait(lambda: re.search(r"imap\(term\).*Disconnected: Logged out",
                             dovecot_log(srv)),
           "a clean logout in Dovecot's log", 5)


@tap.test(name="idle = no: no IDLE, the daemon polls (SIGUSR1 fetches)",
          timeout=120)
def test_idle_no(t):
    srv = t.fx.get(t)
    u = "noidle"
    srv.set_mailbox(u, [])
    md = t.tmp / "Maildir"
    d = Daemon(t, config(t, [account(t, srv, u, idle="no")]))
    d.wait_log(r"account=im >>> A\d+ LOGOUT")
    m = corpus.simple(f"{u}/1")
    srv.deliver(u, [m])
    mark = d.mark()
    d.signal(signal.SIGUSR1)
    d.wait_log(r"account=im fetched=1 ", mark)
    assert "IDLE" not in d.sent_since(0), d.sent_since(0)
    mt.assert_maildir(md, [m])
    rc, _ = d.stop()
    assert rc == 0


@tap.test(name="two folders: maild holds IDLE on both (one connection per "
          "folder), a message in either is pushed", timeout=120)
def test_two_folders(t):
    srv = t.fx.get(t)
    u = "twofolders"
    srv.set_mailbox(u, [])
    srv.create_folder(u, "Work")
    md = t.tmp / "Maildir"
    a = account(t, srv, u, folders=mt.Raw('{"INBOX", "Work"}'))
    d = Daemon(t, config(t, [a], max_connections=4))
    d.idling(count=2)
    m1, m2 = corpus.simple(f"{u}/inbox"), corpus.simple(f"{u}/work")
    srv.deliver(u, [m1])
    srv.deliver(u, [m2], folder="Work")
    wait_new(d, md, 2)
    mt.assert_maildir(md, [m1, m2])
    rc, _ = d.stop()
    assert rc == 0


# ---------------------------------------------------------------------------
# the fake server: the moments around "+ idling"

def fake(messages=(), **kw):
    return fakeimap.FakeIMAP(messages, tls=certs.get().server, **kw)


def fake_config(t, srv, globals_=None, **extra):
    a = mt.account("im", "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=True, ca_file=certs.get().ca,
                   protocol="imap")
    a.update(extra)
    return config(t, [a], **(globals_ or {}))


# a failed session comes back after poll-interval (the first backoff)
RETRY = {"poll_interval": mt.Raw("2s"), "timeout": 3}


def verbs(srv):
    return [c.verb for conn in srv.connections for c in conn.commands]


@tap.test(name="fake: EXISTS announced before \"+ idling\": the new message "
          "is fetched at once, not after idle-refresh", timeout=60)
def test_fake_exists_before_continuation(t):
    first = corpus.simple("eb/first")
    late = corpus.simple("eb/late")
    with fake([first]) as srv:
        def idle(conn, cmd):
            if cmd.conn_nth != 1 or len(srv.uids()) > 1:
                return None
            srv.add(late)
            ps = conn.default_parts(cmd)    # ["+ idling", ...]
            # the change is announced first, then the continuation
            return [fakeimap.Sleep(0.2),
                    fakeimap.Call(lambda: srv._sync(conn))] + ps
        srv.handlers["IDLE"] = idle
        md = t.tmp / "Maildir"
        d = Daemon(t, fake_config(t, srv))
        wait_new(d, md, 2, "the message announced before \"+ idling\"")
        mt.assert_maildir(md, [first, late])
        rc, _ = d.stop()
        assert rc == 0


def _signal_before_continuation(t, sig, then):
    """maild sends IDLE; the server waits a second before "+ idling"; the
    signal arrives in between (sent from on_command); then(srv, d)."""
    first = corpus.simple("sb/first")
    box = {}
    with fake([first]) as srv:
        def on_command(conn, cmd):
            if cmd.verb == "IDLE" and cmd.conn_nth == 1:
                os.kill(box["d"].p.pid, sig)

        def idle(conn, cmd):
            if cmd.conn_nth != 1:
                return None
            return [fakeimap.Sleep(1.0)] + conn.default_parts(cmd)
        srv.on_command = on_command
        srv.handlers["IDLE"] = idle
        md = t.tmp / "Maildir"
        d = box["d"] = Daemon(t, fake_config(t, srv))
        wait_new(d, md, 1)
        then(srv, d)


@tap.test(name="fake: SIGUSR1 between IDLE and \"+ idling\": DONE as soon "
          "as the \"+\" comes, the folder listed", timeout=60)
def test_fake_usr1_before_continuation(t):
    def then(srv, d):
        d.wait(lambda: "DONE" in verbs(srv), "DONE after SIGUSR1", ARRIVE)
        d.wait(lambda: verbs(srv).count("IDLE") >= 2, "a second IDLE",
               ARRIVE)
        v = verbs(srv)
        assert "UID FETCH" in v[v.index("DONE"):], v
        rc, _ = d.stop()
        assert rc == 0
    _signal_before_continuation(t, signal.SIGUSR1, then)


@tap.test(name="fake: SIGTERM between IDLE and \"+ idling\": DONE, LOGOUT, "
          "exit 0 without waiting for the grace time", timeout=60)
def test_fake_term_before_continuation(t):
    def then(srv, d):
        t0 = time.monotonic()
        try:
            rc = d.p.wait(timeout=(GRACE + 10) * SCALE)
        except subprocess.TimeoutExpired:
            raise AssertionError("maild did not exit after SIGTERM")
        secs = time.monotonic() - t0
        d.log()
        assert rc == 0, f"exit {rc}"
        v = verbs(srv)
        assert v[-2:] == ["DONE", "LOGOUT"], v
        assert secs < GRACE * SCALE / 2, \
            f"maild took {secs:.1f} s: it waited for the grace time"
    _signal_before_continuation(t, signal.SIGTERM, then)


@tap.test(name="fake: a server that never answers IDLE: maild gives up "
          "after its timeout, reconnects, and idles on the next server "
          "that does", timeout=90)
def test_fake_idle_never_answered(t):
    m = [corpus.simple("ina/1")]
    with fake(m, handlers={"IDLE": fakeimap.idle_silent()}) as srv:
        md = t.tmp / "Maildir"
        d = Daemon(t, fake_config(t, srv, RETRY))
        d.wait_log(r"account=im .*error=.*(timed out|timeout)", limit=30)
        d.wait(lambda: len(srv.connections) >= 2, "a new connection", 30)
        del srv.handlers["IDLE"]
        d.wait(lambda: any(c.verb == "IDLE" and c.reply_end is not None
                           for c in srv.commands()[-3:]) or
               d.idle_now(), "an answered IDLE", 30)
        late = corpus.simple("ina/late")
        srv.add(late)
        wait_new(d, md, 2)
        mt.assert_maildir(md, m + [late])
        rc, _ = d.stop()
        assert rc == 0


@tap.test(name="fake: DONE never answered (after idle-refresh): maild "
          "notices the dead connection within its timeout and reconnects",
          timeout=90)
def test_fake_done_never_answered(t):
    m = [corpus.simple("dna/1")]
    with fake(m) as srv:
        srv.handlers["DONE"] = lambda conn, cmd: (
            [fakeimap.HANG] if cmd.conn_nth == 1 and conn.id == 1 else None)
        md = t.tmp / "Maildir"
        d = Daemon(t, fake_config(t, srv, RETRY,
                                  idle_refresh=mt.Raw("10s")))
        d.idling()
        d.wait_log(r"account=im .*error=", limit=40)
        d.wait(lambda: len(srv.connections) >= 2, "a reconnection", 30)
        d.wait(d.idle_now, "idling again", 30)
        late = corpus.simple("dna/late")
        srv.add(late)
        wait_new(d, md, 2)
        rc, _ = d.stop()
        assert rc == 0
        mt.assert_maildir(md, m + [late])


@tap.test(name="fake: \"* OK Still here\" in IDLE, then a silence longer "
          "than timeout: the IDLE lives on and a later message comes at "
          "once", timeout=90)
def test_fake_keepalive_then_silence(t):
    # Dovecot says "Still here" every 2 minutes; timeout is 60 s.  Scaled
    # down: a keep-alive every 4 s, timeout 3 s.  (maild took the
    # keep-alive as progress, re-armed its clock, and failed the IDLE 3 s
    # later: mail waited for the backoff.)
    m = [corpus.simple("ka/1")]
    with fake(m, idle_keepalive=4) as srv:
        md = t.tmp / "Maildir"
        d = Daemon(t, fake_config(t, srv, {"timeout": 3}))
        d.idling()
        mark = d.mark()
        time.sleep(10)
        assert "error=" not in d.log(since=mark), d.log(since=mark)
        assert len(srv.connections) == 1, \
            f"{len(srv.connections)} connections: the IDLE was dropped"
        late = corpus.simple("ka/late")
        srv.add(late)
        wait_new(d, md, 2)
        rc, _ = d.stop()
        assert rc == 0
        mt.assert_maildir(md, m + [late])


@tap.test(name="fake: more accounts in IDLE than max-connections: each "
          "idles (an idling session gives its slot back), and each gets a "
          "new message at once", timeout=90)
def test_fake_idle_beyond_max_connections(t):
    # An IDLE session may last for days: had it kept its slot, the
    # accounts in line behind it were never polled at all.
    first = [corpus.simple(f"many/first{i}") for i in range(3)]
    late = [corpus.simple(f"many/late{i}") for i in range(3)]
    with fake([first[0]]) as s0, fake([first[1]]) as s1, \
            fake([first[2]]) as s2:
        srvs = [s0, s1, s2]
        accts = [mt.account(f"im{i}", "127.0.0.1", srv.port, srv.user,
                            srv.password, t.tmp / f"Maildir{i}", keep=True,
                            ca_file=certs.get().ca, protocol="imap")
                 for i, srv in enumerate(srvs)]
        d = Daemon(t, config(t, accts, max_connections=1))
        for i, srv in enumerate(srvs):
            wait_new(d, t.tmp / f"Maildir{i}", 1, f"account im{i} polled")
            d.wait(lambda: any(c.verb == "IDLE" for c in srv.commands()),
                   f"account im{i} in IDLE", ARRIVE)
        for i, srv in enumerate(srvs):
            srv.add(late[i])
        for i in range(3):
            wait_new(d, t.tmp / f"Maildir{i}", 2, f"account im{i} pushed")
        rc, _ = d.stop()
        assert rc == 0
        for i in range(3):
            mt.assert_maildir(t.tmp / f"Maildir{i}", [first[i], late[i]])


@tap.test(name="fake: the highest UID is 2^32-1 and EXISTS comes: no "
          "\"UID FETCH 0:*\" (the next UID overflowed), no error",
          timeout=60)
def test_fake_uid_max_news(t):
    m = corpus.simple("umax/1")
    with fake() as srv:
        srv.add(m, uid=fakeimap.UID_MAX)
        md = t.tmp / "Maildir"
        d = Daemon(t, fake_config(t, srv))
        d.idling()
        wait_new(d, md, 1)
        mark = d.mark()
        srv.push(b"* 2 EXISTS\r\n")
        d.wait(lambda: "DONE" in d.sent_since(mark), "DONE after EXISTS")
        d.wait(d.idle_now, "idling again")
        bad = [c.line for c in srv.commands() if c.verb == "UID FETCH" and
               c.arg.startswith("0")]
        assert not bad, bad
        assert "error=" not in d.log(mark), d.log(mark)[-500:]
        rc, _ = d.stop()
        assert rc == 0
        mt.assert_maildir(md, [m])


def _idle_refused_test(status):
    def test(t):
        first = corpus.simple(f"ir{status}/first")
        late = corpus.simple(f"ir{status}/late")
        refusal = fakeimap.reply(f"{status} IDLE is switched off here")
        with fake([first], handlers={"IDLE": refusal}) as srv:
            md = t.tmp / "Maildir"
            d = Daemon(t, fake_config(t, srv, RETRY))
            wait_new(d, md, 1)
            d.wait(lambda: "IDLE" in verbs(srv), "an IDLE")
            srv.add(late)
            # poll-interval is 2 s: the next poll fetches it
            wait_new(d, md, 2, "the message of the next poll")
            log = d.log()
            assert "error=" not in log, log[-800:]
            assert re.search(r"account=im .*refused IDLE.*polled", log), \
                "the refusal is not logged"
            v = verbs(srv)
            assert "IDLE" in v and "LOGOUT" in v[v.index("IDLE"):], v
            assert len(srv.connections) >= 2, "no second poll"
            rc, _ = d.stop()
            assert rc == 0
            mt.assert_maildir(md, [first, late])
    test.__name__ = f"test_fake_idle_refused_{status.lower()}"
    return test


for _status in ("NO", "BAD"):
    tap.test(name=f"fake: the server offers IDLE and answers it {_status}: "
             "no error and no reconnection with backoff; the folder is "
             "polled every poll-interval instead",
             timeout=60)(_idle_refused_test(_status))


if __name__ == "__main__":
    tap.main(fixture=functools.partial(dovecot.Lazy, USERS, imap=True))
