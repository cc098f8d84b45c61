#!/usr/bin/env python3
"""test_hostile.py: a hostile or broken network.

maild against the fake POP3 server playing dirty at the connection level:
connections dropped, reset or truncated in the middle of a message
(FIN, RST, TLS close_notify, TCP FIN without close_notify), -ERR on RETR,
status lines that are neither +OK nor -ERR, 10 MB lines without CRLF,
servers that drip one byte per second, that accept and never greet, that
never end a listing or a message, oversized greetings, huge CAPA
listings, data before the greeting, after QUIT or out of turn, and
STARTTLS servers that do not offer STLS, refuse it, inject clear text
after it or show a bad certificate.

Every run must end within a bounded time with a clear error on the
account's summary line (or succeed), never crash (no signal, no
sanitizer report), keep its peak RSS small, and never lose, duplicate,
half-deliver or delete a message it does not hold: after the fault is
gone a rerun delivers everything exactly once.  maild runs with
timeout = 3 (hostile.TIMEOUT).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import hostile as h  # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from fakepop3 import ABORT, DROP, HANG, Drip, Sleep  # noqa: E402

T = h.TIMEOUT
# A run that fails by timeout: maild's timeout plus slack for start-up,
# TLS and the slow machine.
BOUND = T + 5
TEN_MB = 10 * 1024 * 1024


def rerun_all(acct, m, keep=True):
    """The fault is gone: one more run delivers everything exactly once."""
    acct.srv.handlers.clear()
    r = acct.once(expect_rc=0, within=30)
    acct.assert_delivered(m)
    if not keep:
        assert acct.srv.mailbox == [], \
            f"{len(acct.srv.mailbox)} messages left on the server"
    r = acct.once(expect_rc=0, within=30)
    s = acct.summary(r)
    assert s["fetched"] == 0, s["line"]
    return r


# ---------------------------------------------------------------------------
# connections cut in the middle of a message

def _cut_mid_retr(t, keep, action, what):
    m = h.msgs(f"cut-{what}-{keep}", 6)
    # the 3rd RETR is cut after 700 bytes of its answer
    with h.server(m, handlers={"RETR": fakepop3.drop_after(
            700, nth=3, action=action)}) as srv:
        acct = h.Account(t, srv, keep=keep)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        got = {corpus.test_id(mt.strip_trace(d)) for d in acct.delivered()}
        assert m[2].id not in got, "the cut message was delivered"
        recorded = {u for _, u, _ in acct.records()}
        assert srv.mailbox[2].uidl not in recorded, \
            "the cut message is recorded as delivered"
        # nothing was deleted: the session never reached a good QUIT
        assert len(srv.mailbox) == len(m), "messages deleted by a cut " \
            "session"
        rerun_all(acct, m, keep)


@tap.test
def test_fin_mid_retr_keep(t):
    _cut_mid_retr(t, True, DROP, "fin")


@tap.test
def test_fin_mid_retr_delete(t):
    _cut_mid_retr(t, False, DROP, "fin")


@tap.test
def test_rst_mid_retr_delete(t):
    _cut_mid_retr(t, False, ABORT, "rst")


@tap.test
def test_hang_mid_retr_delete(t):
    """The server stops sending in the middle of a message but keeps the
    connection open: the timeout ends it."""
    _cut_mid_retr(t, False, HANG, "hang")


def _retr_then(after):
    """RETR 2: 600 bytes of the answer, then after(conn) (a generator)."""
    def handler(conn, cmd):
        if cmd.nth != 2:
            return None
        data = conn.default(cmd)

        def g():
            yield data[:600]
            yield Sleep(0.2)
            yield from after(conn)
        return g()
    return handler


def _close_notify(conn):
    # asyncio's SSL transport sends close_notify on close()
    conn.writer.close()
    yield DROP


def _truncate(conn):
    # TCP FIN without close_notify: a truncation attack
    h.shutdown_raw(conn)
    yield HANG


@tap.test
def test_tls_close_notify_mid_message(t):
    """A clean TLS shutdown in the middle of a message is still a cut."""
    m = h.msgs("notify", 4)
    with h.server(m, handlers={"RETR": _retr_then(_close_notify)}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        assert len(srv.mailbox) == 4
        assert srv.mailbox[1].uidl not in {u for _, u, _ in acct.records()}
        rerun_all(acct, m, keep=False)


@tap.test
def test_tls_truncated_mid_message(t):
    """TCP FIN under TLS without close_notify in the middle of a message."""
    m = h.msgs("trunc", 4)
    with h.server(m, handlers={"RETR": _retr_then(_truncate)}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        assert len(srv.mailbox) == 4
        rerun_all(acct, m, keep=False)


@tap.test
def test_drop_after_dele_before_quit(t):
    """Every DELE answered, then the connection drops before QUIT: the
    server deletes nothing; the next run deletes without fetching again."""
    m = h.msgs("nodele", 5)
    with h.server(m, handlers={"QUIT": lambda c, cmd: [DROP]}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        assert r.rc in (0, mt.EX_TEMPFAIL, mt.EX_PROTOCOL), r.rc
        acct.assert_delivered(m)
        assert len(srv.mailbox) == 5
        rerun_all(acct, m, keep=False)


# ---------------------------------------------------------------------------
# -ERR on RETR

@tap.test
def test_retr_err_keeps_that_message(t):
    m = h.msgs("retrerr", 5)

    def retr(conn, cmd):
        return b"-ERR [SYS/TEMP] cannot read that one\r\n" \
            if cmd.arg == "3" else None
    with h.server(m, handlers={"RETR": retr}) as srv:
        third = srv.mailbox[2].uidl
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        assert r.rc != 0, "exit 0 although a message could not be fetched"
        others = [x for i, x in enumerate(m) if i != 2]
        acct.assert_delivered(others)
        assert third not in {u for _, u, _ in acct.records()}
        deles = [c.arg for c in srv.commands() if c.verb == "DELE"]
        assert "3" not in deles, "DELE of the message that failed"
        assert srv.uidls() == [third], f"server has {srv.uidls()}"
        assert "3" in r.stderr and "stays on the server" in r.stderr, \
            "no log line about message 3"
        rerun_all(acct, m, keep=False)


# ---------------------------------------------------------------------------
# status lines that are neither +OK nor -ERR

BAD_STATUS = [b"OK\r\n", b"+OKAY\r\n", b"* OK ready\r\n", b"\r\n",
              b"+ OK\r\n", b"\x00+OK\r\n", b"-ERROR\r\n",
              b"HTTP/1.1 400 Bad Request\r\n", b"+\r\n", b"+O\r\n"]


def _bad_status(t, verb, lines, keep=True):
    m = h.msgs(f"bad-{verb}", 3)
    for i, line in enumerate(lines):
        sub = t.tmp / f"{verb}-{i}"
        sub.mkdir()
        if verb == "GREETING":
            kw = {"greeting": line}
        else:
            kw = {"handlers": {verb: (lambda ln: lambda c, cmd: ln)(line)}}
        with h.server(m, **kw) as srv:
            acct = h.Account(t, srv, keep=keep, base=sub)
            r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
            t.note(f"{verb} {line!r}: {acct.error(r)}")
            assert srv.connections, "maild never connected"
            acct.assert_nothing_delivered()
            acct.assert_server_untouched(m)
            assert "bad status line" in acct.error(r) or \
                "protocol" in acct.error(r) or \
                "an IMAP server, not POP3" in acct.error(r), acct.error(r)
            if line.startswith(b"* OK"):
                assert "an IMAP server, not POP3: check host and port" in \
                    acct.error(r), acct.error(r)
            if verb in ("GREETING", "CAPA"):
                acct.assert_no_password_sent()


@tap.test
def test_bad_status_greeting(t):
    _bad_status(t, "GREETING", BAD_STATUS)


@tap.test
def test_bad_status_capa_user_pass(t):
    for verb in ("CAPA", "USER", "PASS"):
        _bad_status(t, verb, [b"OK\r\n", b"+OKAY\r\n", b"\r\n"])


@tap.test
def test_bad_status_uidl_list_retr(t):
    for verb in ("UIDL", "LIST", "RETR"):
        _bad_status(t, verb, [b"OK\r\n", b"* 1 2\r\n", b"\x00\r\n"],
                    keep=False)


# ---------------------------------------------------------------------------
# 10 MB without CRLF

def _endless_bytes(first=b"", byte=b"A", total=TEN_MB, then=HANG):
    def g():
        if first:
            yield first
        chunk = byte * 65536
        for _ in range(total // len(chunk)):
            yield chunk
            yield Sleep(0)
        if then is not None:
            yield then
    return g


@tap.test
def test_10mb_greeting_without_crlf(t):
    with h.server(h.msgs("longgreet", 1),
                  greeting=_endless_bytes(b"+OK ")()) as srv:
        acct = h.Account(t, srv)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_no_password_sent()
        assert "longer than" in acct.error(r), acct.error(r)


@tap.test
def test_10mb_status_line_for_retr(t):
    m = h.msgs("longstat", 3)
    with h.server(m, handlers={"RETR": lambda c, cmd: _endless_bytes(
            b"+OK ")()}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


@tap.test
def test_10mb_line_in_uidl_listing(t):
    m = h.msgs("longuidl", 3)
    with h.server(m, handlers={"UIDL": lambda c, cmd: _endless_bytes(
            b"+OK\r\n1 ")()}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


@tap.test
def test_10mb_line_in_list_listing(t):
    m = h.msgs("longlist", 3)
    with h.server(m, handlers={"LIST": lambda c, cmd: _endless_bytes(
            b"+OK\r\n1 1", b"0")()}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


@tap.test
def test_10mb_line_in_capa_listing(t):
    m = h.msgs("longcapa", 2)
    with h.server(m, handlers={"CAPA": lambda c, cmd: _endless_bytes(
            b"+OK\r\nX-")()}) as srv:
        acct = h.Account(t, srv)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_no_password_sent()


@tap.test
def test_10mb_body_line_delivered(t):
    """Body lines have no length cap: a 10 MB line (no CRLF inside) that
    ends properly is delivered byte-exact, in constant memory."""
    big = corpus.simple("longbody/0", body="start\n" + "x" * TEN_MB +
                        "\nend\n")
    m = [corpus.simple("longbody/before"), big,
         corpus.simple("longbody/after")]
    with h.server(m) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=0, within=60)
        acct.assert_delivered(m)
        assert srv.mailbox == []


@tap.test
def test_10mb_body_line_never_ending(t):
    """LIST says 2 KB, the body is a line that never ends: maild gives up
    after a bounded amount (far larger than announced), keeps nothing of
    it, keeps the messages before it."""
    m = h.msgs("endlessbody", 3)

    def retr(conn, cmd):
        if cmd.arg != "2":
            return None
        return _endless_bytes(b"+OK 2000 octets\r\nSubject: x\r\n\r\n",
                              total=64 * TEN_MB)()
    with h.server(m, handlers={"RETR": retr}) as srv:
        srv.mailbox[1].list_size = 2000
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=30)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        assert "larger than" in acct.error(r), acct.error(r)
        assert len(srv.mailbox) == 3, "deleted without a QUIT?"
        assert srv.mailbox[1].uidl not in {u for _, u, _ in acct.records()}


# ---------------------------------------------------------------------------
# one byte per second

@tap.test
def test_drip_greeting(t):
    with h.server(h.msgs("dripg", 1),
                  greeting=[Drip(b"+OK dripping server ready\r\n", 1.0)]) \
            as srv:
        acct = h.Account(t, srv)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "timed out" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()
        acct.assert_no_password_sent()


@tap.test
def test_drip_listing(t):
    m = h.msgs("dripl", 3)
    with h.server(m, handlers={"UIDL": fakepop3.drip_response(1.0)}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "timed out" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


@tap.test
def test_drip_body(t):
    """The 3rd message drips: the two before it are kept, it is not."""
    m = h.msgs("dripb", 4)

    def retr(conn, cmd):
        if cmd.arg != "3":
            return None
        return [Drip(conn.default(cmd), 1.0)]
    with h.server(m, handlers={"RETR": retr}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "timed out" in acct.error(r), acct.error(r)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        assert srv.mailbox[2].uidl not in {u for _, u, _ in acct.records()}
        assert len(srv.mailbox) == 4
        rerun_all(acct, m, keep=False)


@tap.test
def test_slow_listing_bounded_by_session_timeout(t):
    """A UIDL listing that never ends, one well-formed line every 0.5 s
    (each within timeout): session-timeout (5 s here) ends it."""
    m = h.msgs("slowlist", 2)

    def uidl(conn, cmd):
        def g():
            yield b"+OK\r\n"
            n = 0
            while True:
                n += 1
                yield f"{n} slow-{n}\r\n".encode()
                yield Sleep(0.5)
        return g()
    with h.server(m, handlers={"UIDL": uidl}) as srv:
        acct = h.Account(t, srv, globals_={"session_timeout": 5})
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=5 + BOUND)
        assert "session-timeout" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()


# ---------------------------------------------------------------------------
# silence

@tap.test
def test_accepts_never_greets_tls(t):
    """Implicit TLS: the server accepts the connection and says nothing,
    not even a TLS handshake."""
    with h.SilentServer() as srv:
        acct = h.Account(t, srv)
        r = acct.once(expect_rc=(mt.EX_TEMPFAIL, mt.EX_UNAVAILABLE),
                      within=BOUND)
        assert srv.accepted >= 1, "maild never connected"
        assert "timed out" in acct.error(r), acct.error(r)
        assert b"fakepass" not in srv.received
        acct.assert_nothing_delivered()


@tap.test
def test_accepts_never_greets_starttls(t):
    """A plain port that says nothing: most likely an implicit-TLS port
    (995) configured with tls = starttls; the message says so."""
    with h.SilentServer() as srv:
        acct = h.Account(t, srv, tls="starttls")
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert srv.accepted >= 1, "maild never connected"
        assert "no greeting from 127.0.0.1:" in acct.error(r) and \
            "does this port expect TLS at once? try tls = implicit" in \
            acct.error(r), acct.error(r)
        assert srv.received == b"", f"maild spoke first: {srv.received!r}"


@tap.test
def test_accepts_and_closes(t):
    """The server accepts and closes at once (FIN, then RST), or sends
    garbage instead of a TLS handshake: a clear error, quickly."""
    for i, kw in enumerate([{"close": "fin"}, {"close": "rst"},
                            {"send": b"\x00garbage\r\n" * 100}]):
        with h.SilentServer(**kw) as srv:
            acct = h.Account(t, srv, base=t.tmp / f"v{i}")
            r = acct.once(within=BOUND)
            t.note(f"{kw}: exit {r.rc}: {acct.error(r)}")
            assert r.rc in (mt.EX_UNAVAILABLE, mt.EX_TEMPFAIL,
                            mt.EX_PROTOCOL), f"{kw}: exit {r.rc}"
            acct.assert_nothing_delivered()
            assert b"fakepass" not in srv.received


@tap.test
def test_greeting_err(t):
    with h.server(h.msgs("greeterr", 1),
                  greeting=b"-ERR [SYS/PERM] go away\r\n") as srv:
        acct = h.Account(t, srv)
        r = acct.once(within=BOUND)
        assert r.rc != 0
        assert "go away" in acct.error(r), acct.error(r)
        acct.assert_no_password_sent()


@tap.test
def test_tls_up_never_greets(t):
    with h.server(h.msgs("nogreet", 1), greeting=None) as srv:
        acct = h.Account(t, srv)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "no greeting from 127.0.0.1:" in acct.error(r) or \
            "timed out" in acct.error(r), acct.error(r)
        acct.assert_no_password_sent()


@tap.test
def test_no_answer_to_retr(t):
    m = h.msgs("noretr", 3)
    with h.server(m, handlers={"RETR": lambda c, cmd: [HANG]}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


# ---------------------------------------------------------------------------
# multi-line answers that never end

@tap.test
def test_endless_uidl_listing_same_line(t):
    m = h.msgs("endless1", 2)
    with h.server(m, handlers={"UIDL": h.endless(
            b"+OK\r\n", b"1 same\r\n")}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


@tap.test(timeout=300)
def test_endless_uidl_listing_counting(t):
    """A well-formed UIDL listing that never ends (1, 2, 3..., as fast as
    the server can), with 60-byte UIDLs (the message count limit comes
    first) and with 450-byte ones (the UIDL memory limit comes first):
    maild stops at its limit, in bounded time and memory (a hostile
    listing may cost it up to about 100 MB: 160 MB is the bound here)."""
    m = h.msgs("endless2", 2)
    for size in (50, 440):
        def uidl(conn, cmd, pad=b"u" * size):
            def g():
                yield b"+OK\r\n"
                n = 1
                while True:
                    yield b"".join(b"%d %s%010d\r\n" % (i, pad, i)
                                   for i in range(n, n + 4096))
                    yield Sleep(0)
                    n += 4096
            return g()
        with h.server(m, handlers={"UIDL": uidl}) as srv:
            acct = h.Account(t, srv, keep=False, base=t.tmp / f"u{size}")
            r = acct.once(expect_rc=mt.EX_PROTOCOL, within=120, rss_mb=160,
                          timeout=200)
            tap.diag(f"endless UIDL listing, {size + 10}-byte UIDLs: gave up "
                     f"after {r.seconds:.1f} s, peak RSS "
                     f"{r.maxrss_mb or 0:.0f} MB: {acct.error(r)[:60]}")
            acct.assert_nothing_delivered()
            acct.assert_server_untouched(m)


@tap.test
def test_endless_capa_bounded(t):
    """A CAPA listing that never ends: session-timeout (5 s) ends it at
    the latest, memory stays small, no password is sent."""
    m = h.msgs("endlesscapa", 1)
    with h.server(m, handlers={"CAPA": h.endless(
            b"+OK\r\n", b"X-CAPABILITY-THAT-NEVER-ENDS\r\n")}) as srv:
        acct = h.Account(t, srv, globals_={"session_timeout": 5})
        r = acct.once(within=5 + BOUND)
        assert r.rc in (mt.EX_TEMPFAIL, mt.EX_PROTOCOL), r.rc
        acct.assert_nothing_delivered()
        acct.assert_no_password_sent()


@tap.test
def test_retr_far_larger_than_list(t):
    """LIST says 500 bytes; RETR sends well-formed lines forever."""
    m = h.msgs("biglie", 3)

    def retr(conn, cmd):
        if cmd.arg != "2":
            return None
        return h.endless(
            b"+OK 500 octets\r\nSubject: lie\r\n\r\n",
            b"line line line line line line line line line\r\n")(conn, cmd)
    with h.server(m, handlers={"RETR": retr}) as srv:
        srv.mailbox[1].list_size = 500
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=30)
        assert "larger than" in acct.error(r), acct.error(r)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        assert len(srv.mailbox) == 3
        assert srv.mailbox[1].uidl not in {u for _, u, _ in acct.records()}


# ---------------------------------------------------------------------------
# greetings, CAPA, data out of turn

@tap.test
def test_greeting_600_bytes(t):
    """RFC 2449: a response line is at most 512 octets with its CRLF.  A
    greeting of 512 is fine, one of 600 is refused before any login."""
    m = h.msgs("g600", 1)
    with h.server(m, greeting=b"+OK " + b"g" * 506 + b"\r\n") as srv:
        acct = h.Account(t, srv, base=t.tmp / "512")
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
    with h.server(m, greeting=b"+OK " + b"g" * 594 + b"\r\n") as srv:
        acct = h.Account(t, srv, base=t.tmp / "600")
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_no_password_sent()


@tap.test
def test_greeting_odd_apop_timestamps(t):
    """Greeting timestamps that are too long, unterminated, binary or
    many: no crash, and whatever happens the mail arrives or nothing
    does."""
    m = h.msgs("apopts", 2)
    greetings = [b"+OK <" + b"a" * 250 + b"@x>\r\n",
                 b"+OK <" + b"a" * 400 + b"@x>\r\n",
                 b"+OK <unterminated@x\r\n",
                 b"+OK <a\x00b@x>\r\n",
                 b"+OK <<<<<>>>>>\r\n",
                 b"+OK " + b"<1.2@x>" * 60 + b"\r\n"]
    for i, g in enumerate(greetings):
        sub = t.tmp / f"g{i}"
        sub.mkdir()
        with h.server(m, greeting=g) as srv:
            acct = h.Account(t, srv, base=sub)
            r = acct.once(within=BOUND)
            t.note(f"greeting {g[:30]!r}...: exit {r.rc}")
            if r.rc == 0:
                acct.assert_delivered(m)
            else:
                acct.assert_nothing_delivered()


@tap.test
def test_capa_100000_lines(t):
    """Thousands of unknown capabilities are fine; an endless CAPA list
    (100000 lines) is refused (exit 76) before anything is fetched."""
    m = h.msgs("capa100k", 3)
    lines = [f"X-NONSENSE-{i} " + "y" * 60 for i in range(5000)]
    with h.server(m, capa=["UIDL", "USER", "PIPELINING"] + lines) as srv:
        acct = h.Account(t, srv, base=t.tmp / "5000")
        acct.once(expect_rc=0, within=30)
        acct.assert_delivered(m)
    lines = [f"X-NONSENSE-{i} " + "y" * 60 for i in range(100000)]
    with h.server(m, capa=["UIDL", "USER", "PIPELINING"] + lines) as srv:
        acct = h.Account(t, srv, base=t.tmp / "100000")
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=30)
        assert "CAPA" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()
        assert len(srv.mailbox) == len(m)


@tap.test
def test_data_before_greeting(t):
    with h.server(h.msgs("pregreet", 1),
                  greeting=b"garbage before the greeting\r\n+OK hi\r\n") \
            as srv:
        acct = h.Account(t, srv)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_no_password_sent()


def _desync_problems(acct, m):
    """After a server sent something out of turn, and one more run against
    a server that behaves: what went wrong, if anything.  The careful
    outcome: every message exactly once and byte-exact in the Maildir, and
    nothing deleted from the server before that."""
    srv = acct.srv
    problems = [f"after the bad session: {p}"
                for p in mt.compare_messages(acct.delivered(), m)
                if " lost" not in p]
    exact = set(mt.strip_trace(d) for d in acct.delivered())
    gone = [x.id for x in m if x.data not in srv.datas()
            and x.data not in exact]
    if gone:
        problems.append(f"deleted from the server without a byte-exact "
                        f"copy in the Maildir: {gone}")
    srv.handlers.clear()
    srv.greeting = b"+OK fakepop3 ready\r\n"
    r = acct.once(within=30)
    problems += [f"after a clean rerun (exit {r.rc}): {p}"
                 for p in mt.compare_messages(acct.delivered(), m)]
    return problems


def _desync(t, variants, m, keep=False):
    problems = []
    for i, kw in enumerate(variants):
        sub = t.tmp / f"v{i}"
        sub.mkdir()
        with h.server(m, **kw) as srv:
            acct = h.Account(t, srv, keep=keep, base=sub)
            r = acct.once(within=BOUND)
            t.note(f"variant {i}: exit {r.rc}: {acct.error(r)}")
            problems += [f"variant {i} ({kw}): {p}"
                         for p in _desync_problems(acct, m)]
    assert not problems, "\n".join(problems)


@tap.test
def test_unsolicited_line_after_greeting(t):
    m = h.msgs("unsol1", 3)
    _desync(t, [{"greeting": b"+OK hi\r\n+OK surprise\r\n"},
                {"greeting": b"+OK hi\r\n-ERR surprise\r\n"}], m)


@tap.test
def test_unsolicited_line_after_login(t):
    m = h.msgs("unsol3", 3)
    _desync(t, [{"handlers": {"PASS": h.append(b"+OK surprise\r\n")}},
                {"handlers": {"PASS": h.append(b"+OK\r\n.\r\n")}}], m)


@tap.test
def test_unsolicited_line_after_retr(t):
    """One stray "+OK" line after the answer to RETR 2: with pipelining,
    every later reply is paired with the wrong command."""
    m = h.msgs("unsol2", 5)
    _desync(t, [{"handlers": {"RETR": h.append(b"+OK surprise\r\n",
                                               nth=2)}}], m)


@tap.test
def test_unsolicited_message_after_retr(t):
    """A stray extra message (or -ERR) after the answer to RETR 2."""
    m = h.msgs("unsol4", 5)
    _desync(t, [{"handlers": {"RETR": h.append(
        b"+OK 30 octets\r\nSubject: stray\r\n\r\nstray\r\n.\r\n",
        nth=2)}},
                {"handlers": {"RETR": h.append(b"-ERR surprise\r\n",
                                               nth=2)}}], m)


@tap.test
def test_data_after_quit(t):
    m = h.msgs("postquit", 3)

    def quit_(conn, cmd):
        return [conn.default(cmd), b"+OK and more\r\n" * 100,
                b"Z" * 100000]
    for keep in (True, False):
        sub = t.tmp / f"keep{keep}"
        sub.mkdir()
        with h.server(m, handlers={"QUIT": quit_}) as srv:
            acct = h.Account(t, srv, keep=keep, base=sub)
            acct.once(expect_rc=0, within=BOUND)
            acct.assert_delivered(m)
            assert len(srv.mailbox) == (3 if keep else 0)


@tap.test
def test_quit_err_delete_mode(t):
    """QUIT answered -ERR: the server may not have deleted anything; the
    next run deletes again, delivers nothing twice."""
    m = h.msgs("quiterr", 4)

    def quit_(conn, cmd):
        conn.closing = True
        return b"-ERR [SYS/TEMP] could not expunge\r\n"
    with h.server(m, handlers={"QUIT": quit_}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        assert r.rc != 0, "QUIT -ERR not reported"
        acct.assert_delivered(m)
        assert len(srv.mailbox) == 4
        rerun_all(acct, m, keep=False)


@tap.test
def test_dele_err(t):
    m = h.msgs("deleerr", 4)

    def dele(conn, cmd):
        return b"-ERR no\r\n" if cmd.arg == "2" else None
    with h.server(m, handlers={"DELE": dele}) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(within=BOUND)
        acct.assert_delivered(m)
        assert len(srv.mailbox) == 1
        rerun_all(acct, m, keep=False)


# ---------------------------------------------------------------------------
# STARTTLS

@tap.test
def test_starttls_not_offered(t):
    """A plain port that does not advertise STLS: refuse, no password."""
    m = h.msgs("nostls", 2)
    with h.server(m, tls=None) as srv:
        acct = h.Account(t, srv, tls="starttls")
        r = acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        assert "STLS" in acct.error(r), acct.error(r)
        acct.assert_no_password_sent()
        acct.assert_nothing_delivered()
        verbs = srv.verbs()
        assert "STLS" not in verbs, verbs


@tap.test
def test_starttls_capa_err(t):
    m = h.msgs("nocapa", 2)
    with h.server(m, tls=None, capa_err=True) as srv:
        acct = h.Account(t, srv, tls="starttls")
        acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        acct.assert_no_password_sent()


@tap.test
def test_starttls_refused(t):
    m = h.msgs("stlserr", 2)
    with h.server(m, implicit_tls=False, handlers={
            "STLS": fakepop3.raw(b"-ERR not now\r\n")}) as srv:
        acct = h.Account(t, srv, tls="starttls")
        acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        acct.assert_no_password_sent()
        acct.assert_nothing_delivered()


@tap.test
def test_starttls_injection(t):
    """Clear text after "+OK" to STLS (CVE-2011-0411 style): refused."""
    m = h.msgs("stlsinj", 2)

    def stls(conn, cmd):
        conn.default(cmd)
        return b"+OK go ahead\r\n+OK injected\r\n"
    with h.server(m, implicit_tls=False, handlers={"STLS": stls}) as srv:
        acct = h.Account(t, srv, tls="starttls")
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_no_password_sent()
        acct.assert_nothing_delivered()


@tap.test
def test_starttls_injection_before_stls(t):
    """Clear-text lines injected before STLS (an extra line after the
    greeting, a forged CAPA answer): whatever maild makes of them, no
    login command travels in the clear, and if it logs in, every command
    after STLS is encrypted and the mail arrives once."""
    m = h.msgs("preinj", 2)
    variants = [
        {"greeting": b"+OK hi\r\n+OK injected\r\n"},
        {"greeting": b"+OK hi\r\n+OK\r\nUSER\r\n.\r\n"},
        {"handlers": {"CAPA": lambda c, cmd: None if c.tls else
                      b"+OK\r\nUSER\r\nSTLS\r\n.\r\n+OK extra\r\n"}},
    ]
    for i, kw in enumerate(variants):
        with h.server(m, implicit_tls=False, **kw) as srv:
            acct = h.Account(t, srv, tls="starttls", base=t.tmp / f"v{i}")
            r = acct.once(within=BOUND)
            t.note(f"variant {i}: exit {r.rc}: {acct.error(r)}")
            clear = [c.line for c in srv.commands() if not c.tls and
                     c.verb not in ("CAPA", "STLS")]
            assert not clear, f"variant {i}: sent in the clear: {clear}"
            if r.rc == 0:
                acct.assert_delivered(m)
            else:
                acct.assert_nothing_delivered()


@tap.test
def test_starttls_ok_but_no_tls(t):
    """+OK to STLS, then the server never starts TLS."""
    m = h.msgs("stlshang", 2)
    with h.server(m, implicit_tls=False, handlers={
            "STLS": lambda c, cmd: [b"+OK\r\n", HANG]}) as srv:
        acct = h.Account(t, srv, tls="starttls")
        acct.once(expect_rc=(mt.EX_TEMPFAIL, mt.EX_UNAVAILABLE),
                  within=BOUND)
        acct.assert_no_password_sent()


def _starttls_bad_cert(t, which, host="127.0.0.1"):
    m = h.msgs(f"stls-{which}", 2)
    with h.server(m, tls=which, implicit_tls=False) as srv:
        acct = h.Account(t, srv, tls="starttls")
        if host != "127.0.0.1":
            acct.write()
        r = acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        assert "certificate verification failed" in acct.error(r), \
            acct.error(r)
        acct.assert_no_password_sent()
        acct.assert_nothing_delivered()
        tls_cmds = [c.line for c in srv.commands() if c.tls]
        assert not tls_cmds, f"commands sent over the bad TLS: {tls_cmds}"


@tap.test
def test_starttls_expired_cert(t):
    _starttls_bad_cert(t, "expired")


@tap.test
def test_starttls_self_signed_cert(t):
    _starttls_bad_cert(t, "self_signed")


@tap.test
def test_starttls_wrong_host_cert(t):
    _starttls_bad_cert(t, "wrong_host")


@tap.test
def test_implicit_tls_bad_certs(t):
    """The same three over implicit TLS (test_tls.py has more)."""
    for which in ("expired", "self_signed", "wrong_host"):
        sub = t.tmp / which
        sub.mkdir()
        with h.server(h.msgs("itls", 1), tls=which) as srv:
            acct = h.Account(t, srv, base=sub)
            acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
            assert not srv.commands(), [c.line for c in srv.commands()]
            acct.assert_nothing_delivered()


# ---------------------------------------------------------------------------
# many accounts at once

@tap.test(timeout=180)
def test_hostile_servers_do_not_hold_up_good_ones(t):
    """One maild run, ten accounts polled at once: eight hostile servers
    (silent, dripping greeting, endless CAPA, 10 MB status line, cut in
    the middle of a message, self-signed certificate, bad status line,
    endless message body) and two good ones with 40 messages each.  The
    good ones get everything, each hostile one fails with its own error,
    all within the timeout, in little memory."""
    good = {f"good{i}": h.msgs(f"good{i}", 40) for i in range(2)}
    servers = {}
    cm = []

    def start(name, srv):
        cm.append(srv)
        servers[name] = srv.__enter__()

    try:
        start("silent", h.SilentServer())
        start("drip", h.server(h.msgs("x1", 2), greeting=[
            Drip(b"+OK dripping\r\n", 1.0)]))
        start("capa", h.server(h.msgs("x2", 2), handlers={
            "CAPA": h.endless(b"+OK\r\n", b"X-MORE\r\n")}))
        start("bigline", h.server(h.msgs("x3", 2), handlers={
            "UIDL": lambda c, cmd: _endless_bytes(b"+OK ")()}))
        start("cut", h.server(h.msgs("x4", 3), handlers={
            "RETR": fakepop3.drop_after(500, nth=2)}))
        start("selfsigned", h.server(h.msgs("x5", 2), tls="self_signed"))
        start("badstatus", h.server(h.msgs("x6", 2), handlers={
            "LIST": fakepop3.raw(b"* what\r\n")}))
        start("endlessbody", h.server(h.msgs("x7", 2), handlers={
            "RETR": h.endless(b"+OK 100 octets\r\n", b"body\r\n")}))
        for name, m in good.items():
            start(name, h.server(m))
        ca = str(certs.get().ca)
        accts = [mt.account(n, "127.0.0.1", srv.port, srv.user,
                            srv.password, t.tmp / f"Maildir-{n}", keep=False,
                            ca_file=ca) for n, srv in servers.items()]
        cfg = mt.write_config(t.tmp / "many.conf", accts,
                              state_dir=t.tmp / "state", timeout=T,
                              session_timeout=6)
        r = h.run_maild(["--once", "-v", "-f", cfg], timeout=120)
        h.check_sane(r, within=T + 10, rss_mb=40)
        assert r.rc != 0, "exit 0 with eight hostile servers"
        recs = {}
        for x in mt.summary_lines(r.stderr):
            recs[x["account"]] = x
        for name, m in good.items():
            assert recs[name]["error"] is None, recs[name]["line"]
            mt.assert_maildir(t.tmp / f"Maildir-{name}", m)
            assert servers[name].mailbox == [], name
        for name in servers:
            if name in good:
                continue
            assert name in recs, f"no summary line for {name}"
            err = recs[name]["error"] or recs[name].get("busy")
            assert err, f"{name}: no error: {recs[name]['line']}"
            t.note(f"{name}: {err}")
    finally:
        for srv in reversed(cm):
            srv.__exit__(None, None, None)


@tap.test
def test_pipelining_no_is_one_session(t):
    """pipelining = no: one session per poll, and no warning that the
    server mishandled pipelining (it was never tried)."""
    m = h.msgs("pipeno", 3)
    with h.server(m) as srv:
        acct = h.Account(t, srv, pipelining="no")
        r = acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert "mishandled" not in r.stderr, \
            [ln for ln in r.stderr.splitlines() if "mishandled" in ln]
        assert len(srv.connections) == 1, \
            f"{len(srv.connections)} sessions for one --once poll"


if __name__ == "__main__":
    tap.main()
