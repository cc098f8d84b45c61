#!/usr/bin/env python3
"""test_fake_basics.py: maild against the scriptable fake POP3 server.

Odd but legal servers (bare "+OK" greeting, CAPA refused, no PIPELINING),
pipelining when offered, duplicate and malicious UIDLs, refused logins,
and the order of the commit protocol as the server sees it: a DELE must
only arrive for a message that is already in new/ and in the state file.
"""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402


def msgs(prefix, n, seed=7, **kw):
    return corpus.generate(seed=seed, count=n, prefix=prefix, **kw)


class Run:
    """Config + state + Maildir of one account in t.tmp."""

    def __init__(self, t, srv, keep=True, name="fake", password=None,
                 **extra):
        self.t = t
        self.srv = srv
        self.name = name
        self.maildir = t.tmp / "Maildir"
        self.state = t.tmp / "state"
        self.cfg = mt.write_config(
            t.tmp / "maild.conf",
            [mt.account(name, "127.0.0.1", srv.port, srv.user,
                        password or srv.password, self.maildir, keep=keep,
                        ca_file=certs.get().ca, **extra)],
            state_dir=self.state, timeout=10)

    def once(self, *flags, timeout=60):
        mt.require_maild()
        return mt.run_maild(["--once", *flags, "-f", self.cfg],
                            timeout=timeout)


def server(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


@tap.test
def test_bare_greeting_and_capa_err(t):
    m = msgs("bare", 20)
    with server(m, greeting=b"+OK\r\n", capa_err=True) as srv:
        run = Run(t, srv)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        verbs = srv.connections[0].verbs()
        assert verbs[0] == "CAPA", verbs
        assert "RETR" in verbs, verbs


@tap.test
def test_last_message_64k_over_tls(t):
    """A few small messages and a last one of about 64 KB, over implicit
    TLS, pipelined and lock-step: everything delivered promptly.  (A build
    with OpenSSL read-ahead left the end of the last message unprocessed
    in a TLS buffer and waited for the timeout.)"""
    small = [corpus.simple(f"tail64k/{i}", body="small\n") for i in range(4)]
    big = corpus.simple("tail64k/big",
                        body="".join(f"line {i:06d} of the big one\n"
                                     for i in range(2500)))
    for pipelining in (True, False):
        with server(small + [big], pipelining=pipelining) as srv:
            t.tmp.joinpath(str(pipelining)).mkdir()
            run = Run(t, srv)
            run.maildir = t.tmp / str(pipelining) / "Maildir"
            run.cfg = mt.write_config(
                t.tmp / str(pipelining) / "maild.conf",
                [mt.account("fake", "127.0.0.1", srv.port, srv.user,
                            srv.password, run.maildir, keep=True,
                            ca_file=certs.get().ca)],
                state_dir=t.tmp / str(pipelining) / "state", timeout=10)
            r = run.once(timeout=30)
            assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
            # maild's timeout (10 s) is what a stall would wait for
            assert r.seconds < 8 * mt.timeout_scale(), \
                f"took {r.seconds:.1f} s: a stall?"
            mt.assert_maildir(run.maildir, small + [big])


@tap.test
def test_capa_err_means_lock_step(t):
    """Without CAPA there is no PIPELINING: one command at a time."""
    m = msgs("capaerr", 30)
    with server(m, capa_err=True) as srv:
        run = Run(t, srv)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        piped = [c.line for conn in srv.connections
                 for c in conn.pipelined()]
        assert not piped, f"maild pipelined without PIPELINING: {piped[:5]}"


@tap.test
def test_no_pipelining_lock_step(t):
    m = msgs("lockstep", 40)
    with server(m, pipelining=False) as srv:
        run = Run(t, srv, keep=False)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        assert srv.mailbox == [], f"{len(srv.mailbox)} left on the server"
        for conn in srv.connections:
            piped = conn.pipelined()
            assert not piped, ("commands sent before the previous answer "
                               f"arrived: {[c.line for c in piped][:5]}")
        verbs = srv.verbs()
        assert verbs.count("RETR") == 40 and verbs.count("DELE") == 40, \
            f"RETR x{verbs.count('RETR')}, DELE x{verbs.count('DELE')}"


@tap.test
def test_pipelining_used_when_offered(t):
    m = msgs("piped", 40)
    with server(m) as srv:
        run = Run(t, srv)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        conn = srv.connections[0]
        piped = conn.pipelined()
        retr = [c for c in piped if c.verb == "RETR"]
        assert retr, ("the server offered PIPELINING but no RETR was "
                      "pipelined: " + " ".join(conn.verbs()))
        # never across the login: USER, PASS and UIDL each wait for the
        # answer before them; LIST goes with UIDL
        assert conn.verbs()[:5] == ["CAPA", "USER", "PASS", "UIDL", "LIST"], \
            conn.verbs()
        early = [c.verb for c in piped if c.index < 4]
        assert not early, f"pipelined across the login: {early}"
        assert 4 in {c.index for c in piped}, "LIST not pipelined with UIDL"


@tap.test
def test_keep_sends_no_dele(t):
    m = msgs("keep", 15)
    with server(m) as srv:
        run = Run(t, srv, keep=True)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        assert r.account("fake")["fetched"] == 15, r.account("fake")
        assert "DELE" not in srv.verbs(), "DELE sent in keep mode"
        assert len(srv.mailbox) == 15
        r = run.once()
        assert r.rc == 0 and r.account("fake")["fetched"] == 0, \
            r.account("fake")
        assert "DELE" not in srv.verbs(), "DELE sent in keep mode"
        mt.assert_maildir(run.maildir, m)


@tap.test
def test_dele_only_after_commit(t):
    """When DELE n arrives, message n must be in new/ and in the state."""
    m = msgs("commit", 60, max_large=2)
    violations = []

    with server(m) as srv:
        run = Run(t, srv, keep=False)

        def on_dele(conn, cmd):
            msg = conn.msg(cmd.arg)
            if msg is not None:
                mid = corpus.test_id(msg.data)
                in_new = [d for sub, n, p in mt.maildir_files(run.maildir,
                                                              ("new",))
                          for d in [mt.strip_trace(p.read_bytes())]
                          if corpus.test_id(d) == mid]
                recorded = [u for k, u, _ in mt.state_records(run.state,
                                                              run.name)
                            if u == msg.uidl]
                if not in_new or in_new[0] != msg.data:
                    violations.append(f"DELE {cmd.arg} ({mid}): not (fully) "
                                      "in new/ yet")
                if not recorded:
                    violations.append(f"DELE {cmd.arg} ({mid}): UIDL "
                                      "not in the state file yet")
            return None
        srv.handlers["DELE"] = on_dele
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        assert not violations, "\n".join(violations[:10])
        assert srv.mailbox == [], f"{len(srv.mailbox)} left on the server"
        mt.assert_maildir(run.maildir, m)
        assert r.account("fake")["deleted"] == 60, r.account("fake")


@tap.test
def test_duplicate_uidls(t):
    """Two messages with one UIDL: both delivered once, then never again."""
    m = msgs("dup", 6)
    with server() as srv:
        srv.add(m[0], uidl="same")
        srv.add(m[1], uidl="other")
        srv.add(m[2], uidl="same")
        srv.add(m[3], uidl="same")
        srv.add(m[4], uidl="x")
        srv.add(m[5], uidl="x")
        run = Run(t, srv, keep=True)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        assert "same" in r.stderr, "no warning about the duplicate UIDL"
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        assert r.account("fake")["fetched"] == 0, r.account("fake")
        mt.assert_maildir(run.maildir, m)


@tap.test
def test_duplicate_uidls_delete_mode(t):
    m = msgs("dupdel", 4)
    with server() as srv:
        for x in m:
            srv.add(x, uidl="dup")
        run = Run(t, srv, keep=False)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        assert srv.mailbox == [], f"{len(srv.mailbox)} left on the server"
        r = run.once()
        assert r.rc == 0 and r.account("fake")["fetched"] == 0
        mt.assert_maildir(run.maildir, m)


MALICIOUS = [
    b"../../x",
    b"../../../../../../tmp/maild-pwned",
    b"/etc/passwd",
    b"%",
    b"%2F..%2F..%2Fx",
    b"%%%00",
    b"A" * 200,
    b"ctl\x01\x02\x1b[31mred\x1b[0m\x07bell",
    b"tab\there",
    b"has space inside",
    b"cr\rinside",
    b"del\x7fchar",
    b"nul\x00byte",
    b"\xff\xfe8bit\xc3\xa9",
    b"new/../../cur",
    b"' OR 1=1 --",
    b"$(touch /tmp/maild-pwned2)",
    b"D 1 1 forged-record",
]


@tap.test
def test_malicious_uidls(t):
    m = msgs("evil", len(MALICIOUS))
    before = mt.fs_snapshot(t.tmp)
    with server() as srv:
        for x, u in zip(m, MALICIOUS):
            srv.add(x, uidl=u)
        run = Run(t, srv, keep=True)
        before = mt.fs_snapshot(t.tmp)
        r = run.once("-vv")
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        # nothing appeared outside the Maildir and the state dir
        after = mt.fs_snapshot(t.tmp)
        outside = sorted(p for p in after - before
                         if not p.startswith(("Maildir", "state")))
        assert not outside, f"files outside Maildir/state: {outside}"
        for p in ("/tmp/maild-pwned", "/tmp/maild-pwned2"):
            assert not os.path.exists(p), f"{p} exists"
        # the log holds no raw control bytes (only escaped ones)
        bad = [ln for ln in r.stderr.splitlines()
               if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7f
                      for ch in ln)]
        assert not bad, f"raw control bytes in the log: {bad[:3]!r}"
        assert "\x1b" not in r.stderr, "ESC in the log"
        # the state survives a reload: nothing is fetched again
        r = run.once()
        assert r.rc == 0, f"second run: exit {r.rc}"
        assert r.account("fake")["fetched"] == 0, r.account("fake")
        mt.assert_maildir(run.maildir, m)
        recs = {u for _, u, _ in mt.state_records(run.state, run.name)}
        assert len(mt.state_records(run.state, run.name)) == len(MALICIOUS), \
            "the state file has the wrong number of records"
        # trailing blanks are not part of a UIDL; everything else is
        missing = [u for u in MALICIOUS if u not in recs]
        assert not missing, f"UIDLs not in the state file: {missing}"


@tap.test
def test_malicious_uidls_delete_mode(t):
    m = msgs("evildel", len(MALICIOUS))
    with server() as srv:
        for x, u in zip(m, MALICIOUS):
            srv.add(x, uidl=u)
        run = Run(t, srv, keep=False)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        assert srv.mailbox == [], f"left on the server: {srv.uidls()}"


@tap.test
def test_overlong_uidl_line(t):
    """A UIDL listing line over 512 bytes is a protocol error (exit 76):
    nothing is delivered or deleted."""
    m = msgs("long", 3)
    with server() as srv:
        srv.add(m[0], uidl="fine")
        srv.add(m[1], uidl=b"B" * 1000)
        srv.add(m[2], uidl="fine2")
        run = Run(t, srv, keep=False)
        r = run.once()
        assert r.rc == mt.EX_PROTOCOL, f"exit {r.rc}, expected 76"
        assert "DELE" not in srv.verbs(), srv.verbs()
        assert len(srv.mailbox) == 3
        assert mt.read_maildir(run.maildir) == []
        assert mt.state_records(run.state, run.name) == []


@tap.test
def test_login_refused(t):
    m = msgs("refused", 3)
    with server(m) as srv:
        run = Run(t, srv, password="wrong-password")
        r = run.once()
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
        assert mt.read_maildir(run.maildir) == [], "delivered anyway"
        err = r.account("fake")["error"]
        assert err, "no error= in the summary line"
        assert "wrong-password" not in r.stderr, "password in the log"
        assert srv.verbs().count("PASS") == 1, srv.verbs()
        assert "RETR" not in srv.verbs(), srv.verbs()
        assert len(srv.mailbox) == 3


@tap.test
def test_password_not_logged(t):
    m = msgs("pw", 2)
    with server(m, password="s3cr3t-PW-xyzzy") as srv:
        run = Run(t, srv)
        r = run.once("-vv")
        assert r.rc == 0, f"exit {r.rc}"
        assert "s3cr3t-PW-xyzzy" not in r.stderr, "password in -vv trace"
        assert "PASS" in r.stderr, "no protocol trace with -vv"


@tap.test
def test_trace_header_default(t):
    """By default maild puts one Received: field on top (add-headers), and
    the message follows byte-exact."""
    m = msgs("trace", 5)
    with server(m) as srv:
        run = Run(t, srv)
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m)
        for data in mt.read_maildir(run.maildir):
            head = mt.trace_headers(data).decode("utf-8", "replace")
            if not head:
                t.skip("this maild adds no trace header")
            assert head.count("Received:") == 1, head
            assert f"for <{srv.user}@127.0.0.1>" in head, head
            assert "POP3S" in head, head


@tap.test
def test_no_trace_header(t):
    """add-headers = {"no"}: the message exactly as the server sent it."""
    m = msgs("notrace", 5)
    with server(m) as srv:
        run = Run(t, srv, add_headers=mt.Raw('{"no"}'))
        r = run.once()
        assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(run.maildir, m, strip=False)


def first_summary_as_daemon(t, run, timeout=20):
    """Run maild in the foreground as a daemon (-d) until its first
    summary line, then stop it with SIGTERM; returns that line (dict)."""
    mt.require_maild()
    errpath = t.tmp / "daemon.stderr"
    p = mt.start_maild(["-d", "-f", run.cfg], errpath)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = mt.summary_lines(errpath.read_text(errors="replace"))
            if recs:
                return recs[0]
            if p.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("no summary line from maild -d within "
                             f"{timeout} s (exit status {p.poll()})")
    finally:
        t.attach("maild -d stderr", errpath.read_text(errors="replace"))
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mt.kill_tree(p)


def delay_of(rec):
    """Seconds until the next poll, from the summary line (next=123s or
    retry=123), or None if the line does not say."""
    v = rec.get("next", rec.get("retry"))
    if v is None:
        return None
    return int(v.rstrip("s"))


@tap.test
def test_retry_delay_is_sane(t):
    """After a failure the daemon's summary line says when it polls next
    (next=<n>s): a backoff from poll-interval (5m), capped at
    max(16 polls, 1h), +-10% jitter.  Several runs, since the jitter is
    random."""
    m = msgs("retry", 1)
    cap = max(16 * 300, 3600) * 1.1 + 1
    seen = []
    with server(m) as srv:
        run = Run(t, srv, password="wrong-password")
        for _ in range(8):
            rec = first_summary_as_daemon(t, run)
            assert rec["error"], rec["line"]
            d = delay_of(rec)
            if d is None:
                t.skip("the summary line does not say when the next poll is")
            seen.append(d)
    bad = [x for x in seen if not 270 <= x <= cap]
    assert not bad, (f"next poll out of [270, {cap:.0f}] s after a "
                     f"failure: {bad} (all: {seen})")


@tap.test
def test_next_poll_after_success(t):
    """After a good poll the daemon polls again after poll-interval."""
    m = msgs("nextok", 2)
    with server(m) as srv:
        run = Run(t, srv)
        rec = first_summary_as_daemon(t, run)
        assert rec["error"] is None, rec["line"]
        assert rec["fetched"] == 2, rec["line"]
        d = delay_of(rec)
        if d is None:
            t.skip("the summary line does not say when the next poll is")
        assert d == 300, f"next poll in {d} s, expected 300 (5m)"
    mt.assert_maildir(run.maildir, m)


if __name__ == "__main__":
    tap.main()
