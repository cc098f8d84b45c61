#!/usr/bin/env python3
"""test_policy.py: what maild does with what the server says, and what it
keeps, deletes, skips and adds.

Response codes: [IN-USE], [SYS/TEMP] and [LOGIN-DELAY] are exit 75 and
logged without alarm (the summary line says busy="...", at info
priority); [AUTH] and [SYS/PERM] are exit 77 with an actionable message
(a real Dovecot gives [IN-USE] to a second session when
mail_max_userip_connections = 1, and [AUTH] for a wrong password).  The
daemon backs off after a refused login (next=Ns grows, and so does the
time between connections) and never polls sooner than the server's
LOGIN-DELAY capability allows.

Retention: keep = yes/no, delete-after counted from the first delivery
(kept in the state file), delete-after without keep is a config error.
max-size: larger messages stay on the server, are logged once and fetched
once the limit is raised.  Servers without UIDL: keep refused (76), delete
mode works, and a session dropped after the DELEs but before the reply
to QUIT does not deliver anything twice.  Odd but legal servers: unknown
capabilities, a greeting without timestamp, -ERR with response codes,
a zero-byte message, a server that mishandles pipelining (maild falls
back to one command at a time in the same --once run).  add-headers.
"""

import functools
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

DOVECOT_USERS = {"busy": "busy-pw", "wrongpw": "right-pw"}


def msgs(prefix, n=3):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


# ---------------------------------------------------------------------------
# helpers

def fake(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


def fake_account(t, srv, name="pol", keep=False, **extra):
    a = mt.account(name, "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=keep, ca_file=certs.get().ca)
    a.update(extra)
    return a


def write_cfg(t, accounts, **globals_):
    return mt.write_config(t.tmp / "maild.conf", accounts,
                           state_dir=t.tmp / "state",
                           **({"timeout": 10} | globals_))


def once(t, cfg, *flags, limit=30):
    mt.require_maild()
    return mt.run_maild(["--once", *flags, "-f", cfg], timeout=limit)


def journal_summary(lines, name):
    """(priority, summary dict) of account name's one summary line."""
    found = [(p, mt.summary_lines("maild: " + s)[0]) for p, s in lines
             if mt.summary_lines("maild: " + s) and
             mt.summary_lines("maild: " + s)[0]["account"] == name]
    assert len(found) == 1, f"{len(found)} summary lines for {name}"
    return found[0]


def daemon(t, cfg, n_summaries, limit=20, name="pol"):
    """maild -d until account name has n summary lines (or limit s,
    scaled);
    stopped with SIGTERM by PID.  Returns the summary dicts."""
    mt.require_maild()
    errpath = t.tmp / "daemon.stderr"
    p = mt.start_maild(["-d", "-f", cfg], errpath)
    try:
        deadline = time.monotonic() + limit * mt.timeout_scale()
        while time.monotonic() < deadline and p.poll() is None:
            recs = [s for s in mt.summary_lines(errpath.read_text(
                errors="replace")) if s["account"] == name]
            if len(recs) >= n_summaries:
                break
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mt.kill_tree(p)
        err = errpath.read_text(errors="replace")
        t.attach("maild -d stderr", err)
    recs = [s for s in mt.summary_lines(err) if s["account"] == name]
    assert len(recs) >= n_summaries, \
        f"{len(recs)} summary lines in {limit} s, wanted {n_summaries}"
    return recs


def next_of(rec):
    v = rec.get("next")
    assert v is not None and v.endswith("s"), \
        f"no next=Ns in the summary line: {rec['line']}"
    return int(v[:-1])


# ---------------------------------------------------------------------------
# response codes

def _busy_test(code):
    def test(t):
        with fake(msgs("busy"), handlers={"PASS": fakepop3.raw(
                f"-ERR [{code}] try again later\r\n".encode())}) as srv:
            cfg = write_cfg(t, [fake_account(t, srv)])
            rc, lines = mt.run_journal(t, ["--once", "-f", cfg])
            assert rc == mt.EX_TEMPFAIL, f"exit {rc}, expected 75"
            pri, rec = journal_summary(lines, "pol")
            assert rec.get("busy"), f"no busy=\"...\": {rec['line']}"
            assert rec["error"] is None, f"error= for a busy server: " \
                f"{rec['line']}"
            assert code in rec["busy"], rec["line"]
            assert pri == 6, f"the summary line has priority {pri}, not " \
                "info (6)"
            warnings = [s for p, s in lines if p <= 4]
            assert not warnings, f"warnings for a busy server: {warnings}"
            assert mt.read_maildir(t.tmp / "Maildir") == []
    return test


for _code in ("IN-USE", "SYS/TEMP", "LOGIN-DELAY"):
    tap.test(name=f"-ERR [{_code}] at login: exit 75, busy=\"...\", info "
             "priority, no warning")(_busy_test(_code))


def _perm_test(code, hint):
    def test(t):
        with fake(msgs("perm"), handlers={"PASS": fakepop3.raw(
                f"-ERR [{code}] go away\r\n".encode())}) as srv:
            cfg = write_cfg(t, [fake_account(t, srv)])
            rc, lines = mt.run_journal(t, ["--once", "-f", cfg])
            assert rc == mt.EX_NOPERM, f"exit {rc}, expected 77"
            pri, rec = journal_summary(lines, "pol")
            err = rec["error"] or ""
            assert err, f"no error=: {rec['line']}"
            assert "go away" in err and code in err, \
                f"the server's words are not in the error: {err!r}"
            assert hint in err, f"no hint ({hint!r}) in {err!r}"
            assert pri == 4, f"priority {pri}, not a warning (4)"
    return test


tap.test(name="-ERR [AUTH] at login: exit 77, warning, says check user and "
         "password")(_perm_test("AUTH", "check user and password"))
tap.test(name="-ERR [SYS/PERM] at login: exit 77, warning, the server's "
         "reason")(_perm_test("SYS/PERM", "refused"))


@tap.test(name="dovecot, mailbox in use by another session: [IN-USE], "
          "exit 75, busy; fetched once free")
def test_dovecot_in_use(t):
    srv = t.fx.get(t)
    m = msgs("dvbusy")
    srv.set_mailbox("busy", m)
    import poplib
    import ssl
    p = poplib.POP3_SSL(srv.host, srv.pop3s_port, timeout=20,
                        context=ssl.create_default_context(cafile=srv.ca))
    t.defer(p.close)
    p.user("busy")
    p.pass_("busy-pw")
    a = mt.account("dv", "127.0.0.1", srv.pop3s_port, "busy", "busy-pw",
                   t.tmp / "Maildir", keep=False, ca_file=srv.ca)
    cfg = write_cfg(t, [a])
    rc, lines = mt.run_journal(t, ["--once", "-f", cfg])
    assert rc == mt.EX_TEMPFAIL, f"exit {rc}, expected 75"
    pri, rec = journal_summary(lines, "dv")
    assert "IN-USE" in (rec.get("busy") or ""), rec["line"]
    assert pri == 6, f"priority {pri}"
    p.quit()
    srv.wait_idle()
    r = once(t, cfg)
    assert r.rc == 0, f"exit {r.rc}: {r.account('dv')['error']}"
    mt.assert_maildir(t.tmp / "Maildir", m)


# ---------------------------------------------------------------------------
# the daemon's schedule

@tap.test(name="daemon: refused login ([AUTH]) backs off: next=Ns grows, "
          "the next attempt comes later", timeout=60)
def test_auth_backoff(t):
    with fake(msgs("backoff"), password="right") as srv:
        cfg = write_cfg(t, [fake_account(t, srv, password="wrong",
                                         poll_interval=mt.Raw("1s"))])
        recs = daemon(t, cfg, 2, limit=15)
        n1, n2 = next_of(recs[0]), next_of(recs[1])
        t.note(f"next: {n1}, {n2}")
        assert all(r["error"] for r in recs[:2])
        # a refused login starts at four intervals (maild(8)), +-10 %
        assert 3 <= n1 <= 5, (f"after a refused login the next poll is in "
                              f"{n1} s (poll-interval 1s; expected four "
                              "intervals, +-10 %)")
        assert n2 > n1, f"next={n1}s then next={n2}s: not backing off"
        srv.wait_idle(5)
        conns = [c for c in srv.connections if c.commands]
        assert len(conns) >= 2
        gap = conns[1].greeting_end - conns[0].greeting_end
        assert gap >= n1 - 0.5, (f"the second attempt came {gap:.1f} s "
                                 f"after the first, announced {n1} s")
        assert srv.verbs().count("PASS") == len(conns)


@tap.test(name="daemon: LOGIN-DELAY 3 capability: polled every 3 s, not "
          "every poll-interval (1 s)", timeout=60)
def test_login_delay_capability(t):
    with fake(msgs("ldelay"), extra_capa=["LOGIN-DELAY 3"]) as srv:
        cfg = write_cfg(t, [fake_account(t, srv, keep=True,
                                         poll_interval=mt.Raw("1s"))])
        recs = daemon(t, cfg, 2, limit=15)
        assert recs[0]["error"] is None, recs[0]["line"]
        assert next_of(recs[0]) >= 3, recs[0]["line"]
        srv.wait_idle(5)
        conns = srv.connections
        assert len(conns) >= 2
        gap = conns[1].greeting_end - conns[0].greeting_end
        assert gap >= 2.9, f"polled again after {gap:.1f} s despite " \
            "LOGIN-DELAY 3"


@tap.test(name="daemon: no LOGIN-DELAY: polled every poll-interval (1 s)",
          timeout=60)
def test_no_login_delay(t):
    with fake(msgs("noldelay")) as srv:
        cfg = write_cfg(t, [fake_account(t, srv, keep=True,
                                         poll_interval=mt.Raw("1s"))])
        recs = daemon(t, cfg, 2, limit=10)
        assert next_of(recs[0]) == 1, recs[0]["line"]


# ---------------------------------------------------------------------------
# retention

@tap.test(name="keep = yes: no DELE, second run fetches nothing; keep = no: "
          "deleted")
def test_keep(t):
    m = msgs("keep", 4)
    with fake(m) as srv:
        cfg = write_cfg(t, [fake_account(t, srv, keep=True)])
        for n in (4, 0):
            r = once(t, cfg)
            assert r.rc == 0 and r.account("pol")["fetched"] == n, \
                r.account("pol")["line"]
        assert "DELE" not in srv.verbs() and len(srv.mailbox) == 4
        cfg = write_cfg(t, [fake_account(t, srv, keep=False)])
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}"
        rec = r.account("pol")
        assert rec["fetched"] == 0 and rec["deleted"] == 4, rec["line"]
        assert srv.mailbox == []
        mt.assert_maildir(t.tmp / "Maildir", m)


def state_times(t, name="pol"):
    return {key: extra["first"] for kind, key, _, extra in
            mt.state_entries(t.tmp / "state", name) if kind == "D"}


@tap.test(name="delete-after = 3s: kept at first, deleted 3 s after the "
          "first delivery (state file time)", timeout=60)
def test_delete_after(t):
    m = msgs("dafter", 3)
    with fake(m) as srv:
        cfg = write_cfg(t, [fake_account(t, srv, keep=True,
                                         delete_after=mt.Raw("3s"))])
        t0 = time.time()
        r = once(t, cfg)
        assert r.rc == 0 and r.account("pol")["fetched"] == 3
        first = state_times(t)
        assert len(first) == 3, first
        assert all(int(t0) <= v <= time.time() for v in first.values()), \
            f"first-delivery times {first} not when delivered ({t0:.0f})"
        # (the times are whole seconds: due at first + 3 s)
        due = min(first.values()) + 3
        r = once(t, cfg)
        rec = r.account("pol")
        early = rec["deleted"]
        assert r.rc == 0 and rec["fetched"] == 0, rec["line"]
        if time.time() < due:
            assert early == 0, rec["line"]
            assert "DELE" not in srv.verbs(), "deleted too early"
            assert state_times(t) == first, \
                "the first-delivery time changed"
        else:
            t.note("the second run ended after the messages were due (a "
                   "slow machine): not too early is not checked")
        time.sleep(max(0, max(first.values()) + 3.3 - time.time()))
        r = once(t, cfg)
        rec = r.account("pol")
        assert r.rc == 0 and early + rec["deleted"] == 3 and \
            rec["fetched"] == 0, rec["line"]
        assert srv.mailbox == [], f"{len(srv.mailbox)} left on the server"
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="delete-after without keep = yes: config error (78) at the "
          "delete-after line")
def test_delete_after_needs_keep(t):
    with fake() as srv:
        cfg = write_cfg(t, [fake_account(t, srv, keep=False,
                                         delete_after=mt.Raw("1d"))])
        line = cfg.read_text().splitlines().index("    delete-after = 1d") + 1
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"
        assert f"{cfg}:{line}:" in r.stderr and "keep" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# max-size

@tap.test(name="max-size: larger messages stay, a warning once over two "
          "runs (a summary line each), fetched when the limit is raised")
def test_max_size(t):
    small = msgs("small", 3)
    big = corpus.simple("big/0", body=("y" * 70 + "\n") * 60)
    retrieved = []

    def retr(conn, cmd):
        x = conn.msg(cmd.arg)
        retrieved.append(x.uidl if x else None)
        return None
    with fake(handlers={"RETR": retr}) as srv:
        for i, x in enumerate(small):
            srv.add(x, uidl=f"s{i}")
        big_msg = srv.add(big, uidl="the-big-one")
        assert big_msg.size > 2048
        cfg = write_cfg(t, [fake_account(t, srv, max_size=mt.Raw("2k"))])
        warned = 0
        for run in (1, 2):
            r = once(t, cfg)
            assert r.rc == 0, f"run {run}: exit {r.rc}"
            rec = r.account("pol")
            assert rec["fetched"] == (3 if run == 1 else 0), rec["line"]
            lines = [ln for ln in r.stderr.splitlines() if "max-size" in ln]
            assert len(lines) == 1, f"run {run}: {lines}"
            assert "1 message over max-size" in lines[0], lines[0]
            warned += "raise max-size" in lines[0]
        assert warned == 1, f"warned {warned} times in two runs"
        assert b"the-big-one" not in retrieved, "RETR of the big message"
        assert [x.uidl for x in srv.mailbox] == [b"the-big-one"], \
            "the big message did not stay on the server (or others did)"
        mt.assert_maildir(t.tmp / "Maildir", small)
        cfg = write_cfg(t, [fake_account(t, srv, max_size=mt.Raw("1M"))])
        r = once(t, cfg)
        assert r.rc == 0 and r.account("pol")["fetched"] == 1, \
            r.account("pol")["line"]
        assert srv.mailbox == []
        assert retrieved.count(b"the-big-one") == 1
        mt.assert_maildir(t.tmp / "Maildir", small + [big])


# ---------------------------------------------------------------------------
# servers without UIDL

NO_UIDL_CAPA = ["TOP", "USER", "RESP-CODES", "PIPELINING",
                "IMPLEMENTATION no-uidl"]


def no_uidl(messages, **kw):
    handlers = {"UIDL": fakepop3.raw(b"-ERR unknown command\r\n")}
    handlers.update(kw.pop("handlers", {}))
    return fake(messages, capa=NO_UIDL_CAPA, handlers=handlers, **kw)


@tap.test(name="no UIDL, keep = yes: refused (76) with a clear error, "
          "nothing fetched")
def test_no_uidl_keep(t):
    with no_uidl(msgs("nouidlkeep")) as srv:
        r = once(t, write_cfg(t, [fake_account(t, srv, keep=True)]))
        assert r.rc == mt.EX_PROTOCOL, f"exit {r.rc}, expected 76"
        err = r.account("pol")["error"] or ""
        assert "UIDL" in err and "keep" in err, err
        assert "RETR" not in srv.verbs()
        assert mt.read_maildir(t.tmp / "Maildir") == []


@tap.test(name="no UIDL, delete mode: everything fetched once and deleted")
def test_no_uidl_delete(t):
    m = msgs("nouidl", 5)
    with no_uidl(m) as srv:
        cfg = write_cfg(t, [fake_account(t, srv)])
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        assert srv.mailbox == []
        mt.assert_maildir(t.tmp / "Maildir", m)
        srv.add(corpus.simple("nouidl/late"))
        r = once(t, cfg)
        assert r.rc == 0 and r.account("pol")["fetched"] == 1
        mt.assert_maildir(t.tmp / "Maildir", m + [corpus.simple(
            "nouidl/late")])


@tap.test(name="no UIDL: connection dropped after QUIT was sent, the server "
          "did not delete: the digests are not trusted, nothing is lost "
          "(delivered again)")
def test_no_uidl_drop_before_quit(t):
    m = msgs("nouidldrop", 5)

    def quit_handler(conn, cmd):
        if cmd.nth == 1:
            return [fakepop3.DROP]      # no +OK: nothing is deleted
        return None
    with no_uidl(m, handlers={"QUIT": quit_handler}) as srv:
        cfg = write_cfg(t, [fake_account(t, srv)])
        r = once(t, cfg)
        assert r.rc != 0, "exit 0 without an answer to QUIT"
        assert srv.verbs().count("DELE") == 5, srv.verbs()
        assert len(srv.mailbox) == 5, "the server deleted without QUIT"
        mt.assert_maildir(t.tmp / "Maildir", m)
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        rec = r.account("pol")
        # Whether the server deleted cannot be known: delivering twice is
        # the price of never deleting a message maild did not deliver.
        assert rec["fetched"] == 5 and rec["deleted"] == 5, rec["line"]
        got = mt.read_maildir(t.tmp / "Maildir")
        assert len(got) == 10, f"{len(got)} files"
        assert srv.mailbox == []
        assert mt.state_records(t.tmp / "state", "pol") == []


@tap.test(name="no UIDL: the server deleted at QUIT but its +OK was lost; a "
          "byte-identical message arrives later: it is delivered, not "
          "deleted unseen")
def test_no_uidl_quit_reply_lost(t):
    m = msgs("nouidllost", 3)

    def quit_handler(conn, cmd):
        if cmd.nth == 1:
            conn.default(cmd)           # the deletions happen...
            return [fakepop3.DROP]      # ...but no +OK arrives
        return None
    with no_uidl(m, handlers={"QUIT": quit_handler}) as srv:
        cfg = write_cfg(t, [fake_account(t, srv)])
        r = once(t, cfg)
        assert r.rc != 0, "exit 0 without an answer to QUIT"
        assert srv.mailbox == [], "the handler did not delete"
        mt.assert_maildir(t.tmp / "Maildir", m)
        srv.add(m[0])                   # the same bytes again
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        rec = r.account("pol")
        assert rec["fetched"] == 1, rec["line"]
        got = mt.read_maildir(t.tmp / "Maildir")
        assert len(got) == 4, f"{len(got)} files: the new copy was lost"


@tap.test(name="no UIDL: a poll with nothing to delete leaves no digests that "
          "could delete a later identical message unseen")
def test_no_uidl_stale_digests(t):
    m = msgs("nouidlstale", 2)

    def dele_handler(conn, cmd):
        return [fakepop3.DROP]          # the session dies at its first DELE
    with no_uidl(m, handlers={"DELE": dele_handler}) as srv:
        cfg = write_cfg(t, [fake_account(t, srv)])
        r = once(t, cfg)
        assert r.rc != 0
        mt.assert_maildir(t.tmp / "Maildir", m)
        # Another client empties the mailbox; maild polls (nothing there).
        srv.mailbox.clear()
        srv.handlers.pop("DELE")
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        assert r.account("pol")["fetched"] == 0
        # Now the same bytes as a delivered message arrive anew.
        srv.add(m[1])
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        assert r.account("pol")["fetched"] == 1, r.account("pol")["line"]
        assert len(mt.read_maildir(t.tmp / "Maildir")) == 3


@tap.test(name="no UIDL, max-size: the larger message is neither fetched "
          "nor deleted")
def test_no_uidl_max_size(t):
    small = msgs("nouidlsmall", 2)
    big = corpus.simple("nouidlbig/0", body=("z" * 70 + "\n") * 60)
    retrieved = []

    def retr(conn, cmd):
        x = conn.msg(cmd.arg)
        retrieved.append(corpus.test_id(x.data) if x else None)
        return None
    with no_uidl(small + [big], handlers={"RETR": retr}) as srv:
        cfg = write_cfg(t, [fake_account(t, srv, max_size=mt.Raw("2k"))])
        r = once(t, cfg)
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        assert big.id not in retrieved, "RETR of the message over max-size"
        assert [corpus.test_id(x.data) for x in srv.mailbox] == [big.id], \
            "the message over max-size did not stay on the server"
        mt.assert_maildir(t.tmp / "Maildir", small)


# ---------------------------------------------------------------------------
# surprising but legal servers

@tap.test(name="multi-line CAPA with unknown capabilities, odd lines")
def test_odd_capa(t):
    m = msgs("oddcapa")
    capa = ["TOP", "UIDL", "X-UNKNOWN-CAPABILITY with some arguments",
            "EXPIRE NEVER", "LOGIN-DELAY", "SASL", "USER", ".DOT-CAP",
            "IMPLEMENTATION Weird Server 9.9 (c) 1999", "X-" + "L" * 400,
            "  leading-space", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
    with fake(m, capa=capa) as srv:
        r = once(t, write_cfg(t, [fake_account(t, srv)]))
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert srv.mailbox == []


@tap.test(name="greeting without timestamp or text; CAPA -ERR with an "
          "unknown response code")
def test_odd_greeting_capa(t):
    m = msgs("oddgreet")
    for greeting in (b"+OK\r\n", b"+OK POP3 server ready\r\n"):
        with fake(m, greeting=greeting, handlers={"CAPA": fakepop3.raw(
                b"-ERR [X-NO-CAPA] capabilities are a secret\r\n")}) as srv:
            r = once(t, write_cfg(t, [fake_account(
                t, srv, maildir=str(t.tmp / "md"), keep=True)]))
            assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
            mt.assert_maildir(t.tmp / "md", m)
            mt.remove_state(t.tmp / "state", "pol")
            for sub in ("new", "cur"):
                for p in (t.tmp / "md" / sub).iterdir():
                    p.unlink()


@tap.test(name="DELE answered -ERR [SYS/TEMP]: delivered once, deleted at "
          "the next run")
def test_dele_err(t):
    m = msgs("deleerr", 3)

    def dele(conn, cmd):
        if cmd.nth == 1:
            return b"-ERR [SYS/TEMP] cannot delete right now\r\n"
        return None
    with fake(m, handlers={"DELE": dele}) as srv:
        cfg = write_cfg(t, [fake_account(t, srv)])
        r = once(t, cfg)
        rec = r.account("pol")
        assert rec["fetched"] == 3 and rec["deleted"] == 2, rec["line"]
        assert "cannot delete right now" in r.stderr, "not logged"
        assert len(srv.mailbox) == 1
        r = once(t, cfg)
        rec = r.account("pol")
        assert r.rc == 0 and rec["fetched"] == 0 and rec["deleted"] == 1, \
            rec["line"]
        assert srv.mailbox == []
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="UIDL answered -ERR [SYS/TEMP] once, delivered messages "
          "still on the server: nothing delivered twice")
def test_uidl_temporarily_failing(t):
    m = msgs("uidltemp", 3)

    def quit_handler(conn, cmd):
        # the first session's QUIT is lost: its DELEs do not happen
        return [fakepop3.DROP] if cmd.nth == 1 else None

    def uidl(conn, cmd):
        if cmd.nth == 2:
            return b"-ERR [SYS/TEMP] UIDL temporarily unavailable\r\n"
        return None
    with fake(m, handlers={"QUIT": quit_handler, "UIDL": uidl}) as srv:
        cfg = write_cfg(t, [fake_account(t, srv)])
        r = once(t, cfg)
        assert r.account("pol")["fetched"] == 3, r.account("pol")["line"]
        assert len(srv.mailbox) == 3, "QUIT was lost, nothing is deleted"
        for run in (2, 3):
            r = once(t, cfg)
            mt.assert_maildir(t.tmp / "Maildir", m,
                              what=f"Maildir after run {run}")
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        assert srv.mailbox == []


@tap.test(name="a zero-byte message (LIST size 0): delivered as an empty "
          "file")
def test_zero_byte_message(t):
    m = msgs("zero", 2)
    with fake() as srv:
        srv.add(m[0], uidl="a")
        empty = srv.add(b"", uidl="empty")
        srv.add(m[1], uidl="b")
        assert empty.size == 0
        r = once(t, write_cfg(t, [fake_account(
            t, srv, add_headers=mt.Raw('{"no"}'))]))
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        got = mt.read_maildir(t.tmp / "Maildir")
        assert sorted(map(len, got))[0] == 0 and len(got) == 3, \
            f"sizes {sorted(map(len, got))}"
        assert sorted(got) == sorted([b"", m[0].data, m[1].data])
        mt.assert_names_ok(t.tmp / "Maildir")
        assert srv.mailbox == []


@tap.test(name="a server that mishandles pipelined commands: lock-step "
          "retry in the same --once run, all delivered once")
def test_bad_pipelining(t):
    m = msgs("badpipe", 6)

    def retr(conn, cmd):
        prev = conn.commands[cmd.index - 1]
        if prev.reply_end is not None and cmd.t < prev.reply_end \
                and prev.verb == "RETR":
            # answers a pipelined RETR without its status line
            data = conn.default(cmd)
            return data[data.index(b"\r\n") + 2:]
        return None
    with fake(m, handlers={"RETR": retr}) as srv:
        r = once(t, write_cfg(t, [fake_account(t, srv)]))
        assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert srv.mailbox == []
        assert len(srv.connections) == 2, \
            f"{len(srv.connections)} connections"
        assert srv.connections[0].pipelined(), "the first session did not " \
            "pipeline (test is meaningless)"
        assert not srv.connections[1].pipelined(), \
            "the retry pipelined again"
        assert re.search(r"pipelin\w+ .*(turned off|one command at a time)",
                         r.stderr), "the log does not say pipelining is off"


# ---------------------------------------------------------------------------
# add-headers

def _headers_test(value, user, want):
    def test(t):
        m = msgs("hdr", 2)
        with fake(m, user=user) as srv:
            extra = {} if value is None else {"add_headers": mt.Raw(value)}
            r = once(t, write_cfg(t, [fake_account(t, srv, **extra)]))
            assert r.rc == 0, f"exit {r.rc}: {r.account('pol')['error']}"
            mt.assert_maildir(t.tmp / "Maildir", m)
            bymsg = {corpus.test_id(d): d for d in
                     mt.read_maildir(t.tmp / "Maildir")}
            for x in m:
                data = bymsg[x.id]
                assert data.endswith(x.data), "the message is not intact"
                top = data[:len(data) - len(x.data)].decode()
                fields = re.findall(r"^([A-Za-z-]+):", top, re.M)
                assert fields == [f for f, _ in want], \
                    f"added fields {fields}, expected {[f for f, _ in want]}"
                for field, text in want:
                    if text is not None:
                        assert f"{field}: {text}\n" in top, \
                            f"{field}: {text} not in {top!r}"
                addr = user if "@" in user else user + "@127.0.0.1"
                if "Received" in fields:
                    assert f"for <{addr}>" in top, top
    return test


for _value, _user, _want in (
        (None, "fakeuser", [("Received", None)]),
        ('{"no"}', "fakeuser", []),
        ('{"delivered-to", "x-original-to"}', "fakeuser",
         [("Delivered-To", "fakeuser@127.0.0.1"),
          ("X-Original-To", "fakeuser@127.0.0.1")]),
        ('{"x-original-to"}', "alice@example.org",
         [("X-Original-To", "alice@example.org")]),
        ("yes", "alice@example.org",
         [("Delivered-To", "alice@example.org"),
          ("X-Original-To", "alice@example.org"), ("Received", None)])):
    tap.test(name=f"add-headers = {_value or '(default)'}, user {_user}: "
             f"{', '.join(f for f, _ in _want) or 'nothing'} added, the "
             "rest byte-exact")(_headers_test(_value, _user, _want))


@tap.test(name="add-headers = {\"bogus\"}: config error with file:line")
def test_headers_bad(t):
    with fake() as srv:
        cfg = write_cfg(t, [fake_account(t, srv,
                                         add_headers=mt.Raw('{"bogus"}'))])
        line = cfg.read_text().splitlines().index(
            '    add-headers = {"bogus"}') + 1
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == mt.EX_CONFIG and f"{cfg}:{line}:" in r.stderr, \
            (r.rc, r.stderr)


# last: a failed login makes Dovecot slow down the next ones
@tap.test(name="dovecot: wrong password -> [AUTH], exit 77, warning, "
          "actionable")
def test_dovecot_wrong_password(t):
    srv = t.fx.get(t)
    srv.set_mailbox("wrongpw", msgs("dvwrong"))
    a = mt.account("dv", "127.0.0.1", srv.pop3s_port, "wrongpw", "not-it",
                   t.tmp / "Maildir", keep=True, ca_file=srv.ca)
    cfg = write_cfg(t, [a])
    rc, lines = mt.run_journal(t, ["--once", "-f", cfg])
    assert rc == mt.EX_NOPERM, f"exit {rc}, expected 77"
    pri, rec = journal_summary(lines, "dv")
    err = rec["error"] or ""
    assert "[AUTH]" in err and "check user and password" in err, err
    assert pri == 4, f"priority {pri}"
    assert not any("not-it" in s for _, s in lines), "password in the log"


if __name__ == "__main__":
    tap.main(fixture=functools.partial(
        dovecot.Lazy, DOVECOT_USERS, extra_conf="\n".join([
            "mail_max_userip_connections = 1",
            "auth_failure_delay = 0"])))
