#!/usr/bin/env python3
"""test_imap_hostile.py: maild against a hostile or broken IMAP server
(the fake IMAP server, tests/lib/fakeimap.py), in the foreground.

Literals that lie about their size (more or fewer bytes than announced,
with and without an RFC822.SIZE that matches the lie), connections
dropped, reset or left hanging in the middle of a literal, BYE in the
middle of a FETCH, unsolicited FETCH responses (flags of other messages,
a body for a UID not asked for), FETCH responses out of order, without
UID, with UID 0, 2^32 or one not in the requested set, UIDs listed twice,
EXISTS and EXPUNGE at odd moments and inside a FETCH response, a message
expunged by another client during the fetch, silent and dripping
servers, STARTTLS stripped or refused, LOGINDISABLED, the RFC 5530 codes
([AUTHENTICATIONFAILED] 77, [UNAVAILABLE] 75, [ALERT] logged), PREAUTH on
a plain connection with tls = starttls, no UIDVALIDITY, a greeting whose
text ends in braces, answers to commands never sent.

What maild sends: never a bare EXPUNGE when UIDPLUS is offered; UID STORE
\\Deleted, UID MOVE and UID EXPUNGE only for UIDs whose messages are in
new/ and recorded when the command arrives (the server looks at the
Maildir and the state at that moment); nothing in the clear after
STARTTLS; users and passwords with quotes, backslashes, 8-bit and 1500
bytes sent as quoted strings or literals (synchronizing, or LITERAL+)
that the server reads back exactly, never in the -vv log.

Limits: a 50 MB message keeps maild's peak RSS small; a 10 MB line, a
non-body literal over 64 KB, a response over 1 MB, a literal over
IMAP_LITERAL_LEN_MAX and an endless body literal fail cleanly.

Every run must end within a bounded time with a clear error (or
succeed), never crash, never deliver a partial or corrupted message or
one twice, never change the server after a failed fetch; after the
fault is gone a rerun delivers everything exactly once.  maild runs
with timeout = 3 (hostile.TIMEOUT).
"""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import fakeimap    # noqa: E402
import hostile as h  # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from fakeimap import (ABORT, DROP, HANG, Drip, Sleep, after_literal,  # noqa
                      bye_in_fetch, drop_in_literal, inject, literal_lie,
                      map_uid, parts, reorder, reply, refuse, without_uid)

T = h.TIMEOUT
BOUND = T + 5
TEN_MB = 10 * 1024 * 1024
UID_MAX = fakeimap.UID_MAX


def tiny(prefix, n, body="x\n"):
    return h.tiny(prefix, n, body)


def bodies_fetch(handler, which=1):
    """Apply handler only to the which-th UID FETCH of bodies (a FETCH
    with BODY.PEEK[] in it) the server receives; the listing and the
    others get the default answer."""
    seen = []

    def fn(conn, cmd):
        if "BODY" not in cmd.arg.upper():
            return None
        seen.append(cmd)
        if len(seen) != which:
            return None
        return handler(conn, cmd)
    return fn


def listing(handler):
    """Apply handler to the first listing (UID FETCH without a body)."""
    seen = []

    def fn(conn, cmd):
        if "BODY" in cmd.arg.upper() or seen:
            return None
        seen.append(cmd)
        return handler(conn, cmd)
    return fn


def delivered_ids(acct):
    return [corpus.test_id(mt.strip_trace(d)) for d in acct.delivered()]


def rerun_all(acct, m, keep=True):
    """The fault is gone: one more run delivers everything exactly once
    (and in delete mode empties the folder); the next fetches nothing."""
    acct.srv.handlers.clear()
    acct.srv.on_command = None
    r = acct.once(expect_rc=0, within=30)
    acct.assert_delivered(m)
    if not keep:
        assert acct.srv.uids() == [], \
            f"{len(acct.srv.uids())} messages left on the server"
    r = acct.once(expect_rc=0, within=30)
    s = acct.summary(r)
    assert s["fetched"] == 0, s["line"]
    return r


def failed_fetch(t, m, handler, expect_rc, keep=True, lost=(), **kw):
    """One run against handler for UID FETCH: exits expect_rc, nothing
    partial, the messages of lost not delivered, the server untouched;
    then the rerun."""
    with h.imap_server(m, handlers={"UID FETCH": handler}, **kw) as srv:
        acct = h.ImapAccount(t, srv, keep=keep)
        r = acct.once(expect_rc=expect_rc, within=BOUND)
        acct.assert_no_partial_in_new(m)
        mt.assert_tmp_empty(acct.maildir)
        got = delivered_ids(acct)
        for i in lost:
            assert m[i].id not in got, f"message {i + 1} was delivered"
        acct.assert_server_untouched(m)
        rerun_all(acct, m, keep)
        return r


# ---------------------------------------------------------------------------
# literals that lie, connections cut in a literal, BYE

@tap.test(name="literal announced 5 bytes longer than sent: 76, that "
          "message not delivered, the server untouched")
def test_literal_more(t):
    m = h.msgs("lmore", 4)
    failed_fetch(t, m, bodies_fetch(literal_lie(+5, msg=1, nth=None)),
                 mt.EX_PROTOCOL, keep=False, lost=[1])


@tap.test(name="literal announced 5 bytes shorter than sent: 76, that "
          "message not delivered")
def test_literal_fewer(t):
    m = h.msgs("lfewer", 4)
    failed_fetch(t, m, bodies_fetch(literal_lie(-5, msg=1, nth=None)),
                 mt.EX_PROTOCOL, keep=False, lost=[1])


@tap.test(name="the last message's literal and RFC822.SIZE both 5 bytes "
          "too long (the literal eats the tagged OK): no corrupted "
          "message delivered")
def test_literal_lie_consistent(t):
    m = h.msgs("lcons", 3)
    with h.imap_server(m[:2]) as srv:
        w = fakeimap.to_wire(m[2].data)
        srv.add(m[2], announce=len(w) + 5, size=len(w) + 5)
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=(mt.EX_PROTOCOL, mt.EX_TEMPFAIL), within=BOUND)
        acct.assert_no_partial_in_new(m)
        assert m[2].id not in delivered_ids(acct)
        acct.assert_server_untouched(m)
        mt.assert_tmp_empty(acct.maildir)


@tap.test(name="the last message's literal and RFC822.SIZE both 5 bytes "
          "too short: no truncated message delivered")
def test_literal_lie_consistent_short(t):
    m = h.msgs("lconss", 3)
    with h.imap_server(m[:2]) as srv:
        w = fakeimap.to_wire(m[2].data)
        srv.add(m[2], announce=len(w) - 5, size=len(w) - 5)
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=(mt.EX_PROTOCOL, mt.EX_TEMPFAIL), within=BOUND)
        acct.assert_no_partial_in_new(m)
        assert m[2].id not in delivered_ids(acct)
        acct.assert_server_untouched(m)


def _cut_in_literal(t, action, rc, what):
    m = h.msgs(f"cut-{what}", 5)
    r = failed_fetch(t, m, bodies_fetch(drop_in_literal(
        msg=2, after=300, action=action, nth=None)), rc, keep=False,
        lost=[2])
    return r


@tap.test(name="connection closed (FIN) 300 bytes into a literal: 75, "
          "nothing partial, nothing deleted")
def test_drop_in_literal(t):
    _cut_in_literal(t, DROP, mt.EX_TEMPFAIL, "fin")


@tap.test(name="connection reset (RST) in a literal: 75")
def test_abort_in_literal(t):
    _cut_in_literal(t, ABORT, mt.EX_TEMPFAIL, "rst")


@tap.test(name="server silent in the middle of a literal: timeout, 75")
def test_hang_in_literal(t):
    _cut_in_literal(t, HANG, mt.EX_TEMPFAIL, "hang")


@tap.test(name="BYE after two of five FETCH responses: 75, the two kept, "
          "nothing deleted")
def test_bye_mid_fetch(t):
    m = h.msgs("bye", 5)
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(
            bye_in_fetch(after=2, nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "goodbye" in acct.error(r) or "BYE" in acct.error(r) or \
            "shutting down" in acct.error(r), acct.error(r)
        got = delivered_ids(acct)
        assert sorted(got) == sorted(x.id for x in m[:2]), got
        acct.assert_no_partial_in_new(m)
        acct.assert_server_untouched(m)
        rerun_all(acct, m, keep=False)


# ---------------------------------------------------------------------------
# FETCH responses maild did not ask for, out of order, without UID

@tap.test(name="unsolicited FETCH FLAGS of other messages (with and "
          "without UID) among the bodies: ignored, all delivered once")
def test_unsolicited_flags(t):
    m = h.msgs("flags", 4)

    def handler(conn, cmd):
        ps = conn.default_parts(cmd)
        ps.insert(0, conn.fetch_line(4, "UID FLAGS"))
        ps.insert(2, b"* 3 FETCH (FLAGS (\\Seen \\Flagged))\r\n")
        return ps
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(handler)}) \
            as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert srv.uids() == []


@tap.test(name="a body for a UID not asked for (a message delivered "
          "before), sent first: dropped, not delivered twice")
def test_unsolicited_body(t):
    m = h.msgs("unsol", 3)
    new = h.msgs("unsol-new", 1, seed=12)
    with h.imap_server(m) as srv:
        acct = h.ImapAccount(t, srv, keep=True)
        acct.once(expect_rc=0, within=BOUND)
        srv.add(new[0])

        def handler(conn, cmd):
            ps = conn.default_parts(cmd)
            return [conn.fetch_line(1, "UID RFC822.SIZE BODY[]")] + ps
        srv.handlers["UID FETCH"] = bodies_fetch(handler)
        r = acct.once(expect_rc=(0, mt.EX_PROTOCOL), within=BOUND)
        got = delivered_ids(acct)
        assert got.count(m[0].id) == 1, f"{m[0].id} delivered twice"
        acct.assert_no_partial_in_new(m + new)
        assert "not asked for" in r.stderr or r.rc != 0, \
            "the unsolicited body went unmentioned"
        acct.assert_server_untouched(m + new)
        rerun_all(acct, m + new)


@tap.test(name="a body answered under the UID of a message delivered "
          "before: dropped, the real one fetched next time")
def test_body_under_known_uid(t):
    m = h.msgs("known", 3)
    new = h.msgs("known-new", 1, seed=12)
    with h.imap_server(m) as srv:
        acct = h.ImapAccount(t, srv, keep=True)
        acct.once(expect_rc=0, within=BOUND)
        srv.add(new[0])
        srv.handlers["UID FETCH"] = bodies_fetch(map_uid(
            lambda u: 2 if u == 4 else u, nth=None))
        acct.once(expect_rc=(0, mt.EX_PROTOCOL), within=BOUND)
        got = delivered_ids(acct)
        assert sorted(got) == sorted(x.id for x in m), got
        rerun_all(acct, m + new)


@tap.test(name="FETCH responses in reverse order: all delivered once")
def test_reordered(t):
    m = h.msgs("reorder", 6)
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(
            reorder(nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert srv.uids() == []


def _bad_uid_test(name, fn):
    def test(t):
        m = h.msgs(f"baduid-{name}", 4)
        with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(fn)}) \
                as srv:
            acct = h.ImapAccount(t, srv, keep=False)
            r = acct.once(expect_rc=(0, mt.EX_PROTOCOL), within=BOUND)
            got = delivered_ids(acct)
            assert m[1].id not in got, "the message without its UID " \
                "was delivered"
            acct.assert_no_partial_in_new(m)
            mt.assert_tmp_empty(acct.maildir)
            # only what was delivered went from the server
            assert 2 in srv.uids(), "message 2 removed undelivered"
            if r.rc == 0:
                kept = [corpus.test_id(x.data) for x in srv.messages()]
                assert not set(kept) & set(got), \
                    f"delivered and not removed: {set(kept) & set(got)}"
            rerun_all(acct, m, keep=False)
    test.__name__ = f"test_bad_uid_{name}"
    return test


for _name, _fn in (
        ("missing", without_uid(which={1}, nth=None)),
        ("zero", map_uid(lambda u: 0 if u == 2 else u, nth=None)),
        ("2^32", map_uid(lambda u: 2 ** 32 if u == 2 else u, nth=None)),
        ("2^64", map_uid(lambda u: 2 ** 64 if u == 2 else u, nth=None)),
        ("not-in-set", map_uid(lambda u: 77 if u == 2 else u, nth=None)),
        ("not-a-number", map_uid(lambda u: "2x" if u == 2 else u,
                                 nth=None))):
    tap.test(name=f"FETCH of message 2 with UID {_name}: that body "
             "dropped, the others delivered and removed, message 2 "
             "fetched next time")(_bad_uid_test(_name, _fn))


@tap.test(name="listing: UID 0, 2^32 and a non-number ignored, the others "
          "fetched; UID 2^32-1 works")
def test_listing_bad_uids(t):
    m = h.msgs("lbad", 5)
    with h.imap_server(m[:4]) as srv:
        srv.add(m[4], uid=UID_MAX)
        srv.handlers["UID FETCH"] = listing(map_uid(
            lambda u: {2: 0, 3: 2 ** 32, 4: "x"}.get(u, u), nth=None))
        acct = h.ImapAccount(t, srv, keep=True)
        acct.once(expect_rc=(0, mt.EX_PROTOCOL), within=BOUND)
        got = set(delivered_ids(acct))
        assert got <= {m[0].id, m[4].id}, got
        acct.assert_no_partial_in_new(m)
        rerun_all(acct, m)


@tap.test(name="listing: a UID listed twice: 76, nothing fetched")
def test_listing_twice(t):
    m = h.msgs("ltwice", 3)
    with h.imap_server(m, handlers={"UID FETCH": listing(map_uid(
            lambda u: 1 if u == 2 else u, nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        assert "twice" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)
        rerun_all(acct, m, keep=False)


# ---------------------------------------------------------------------------
# EXISTS, EXPUNGE, other clients

@tap.test(name="EXISTS and EXPUNGE between the FETCH responses and in the "
          "listing: all delivered once")
def test_exists_expunge_between(t):
    m = h.msgs("exex", 4)

    def body(conn, cmd):
        ps = conn.default_parts(cmd)
        ps.insert(1, b"* 9 EXISTS\r\n* 1 EXPUNGE\r\n* 3 RECENT\r\n")
        ps.insert(3, b"* OK [ALERT] odd but legal\r\n* 2 EXPUNGE\r\n")
        return ps

    def lst(conn, cmd):
        ps = conn.default_parts(cmd)
        ps.insert(1, b"* 12 EXISTS\r\n* 1 EXPUNGE\r\n")
        return ps
    seen = []

    def handler(conn, cmd):
        if "BODY" in cmd.arg.upper():
            return body(conn, cmd)
        if not seen:
            seen.append(1)
            return lst(conn, cmd)
        return None
    with h.imap_server(m, handlers={"UID FETCH": handler}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert srv.uids() == []


@tap.test(name="\"* 2 EXPUNGE\" inside a FETCH response (after a literal): "
          "76, that message not delivered")
def test_expunge_inside_fetch(t):
    m = h.msgs("exin", 3)
    failed_fetch(t, m, bodies_fetch(after_literal(b" * 2 EXPUNGE\r\n",
                                                  msg=1, nth=None)),
                 mt.EX_PROTOCOL, keep=False, lost=[1])


@tap.test(name="a message expunged by another client between the listing "
          "and its FETCH: not delivered, no error; the others delivered "
          "and removed")
def test_expunged_by_other(t):
    m = h.msgs("other", 4)
    with h.imap_server(m) as srv:
        def on_command(conn, cmd):
            if cmd.verb == "UID FETCH" and "BODY" in cmd.arg.upper() and \
                    2 in srv.uids():
                srv.delete("INBOX", [2])
        srv.on_command = on_command
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=0, within=BOUND)
        got = sorted(delivered_ids(acct))
        assert got == sorted(x.id for x in (m[0], m[2], m[3])), got
        assert srv.uids() == []
        assert acct.summary(r)["error"] is None
        r = acct.once(expect_rc=0, within=BOUND)
        assert acct.summary(r)["fetched"] == 0


# ---------------------------------------------------------------------------
# silent and slow servers

@tap.test(name="a server that accepts and never speaks: timeout, 75")
def test_silent(t):
    with h.SilentServer() as srv:
        acct = h.ImapAccount(t, srv)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "timed out" in acct.error(r), acct.error(r)


@tap.test(name="silent after SELECT: timeout, 75, nothing delivered")
def test_silent_after_select(t):
    m = tiny("silsel", 3)
    with h.imap_server(m, handlers={"UID FETCH": lambda c, cmd: [HANG]}) \
            as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "timed out" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()
        rerun_all(acct, m, keep=False)


@tap.test(name="a server that drips every byte (2 ms apart): works")
def test_dripping(t):
    m = tiny("drip", 3)
    with h.imap_server(m, drip=0.002) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=0, within=120)
        acct.assert_delivered(m)
        assert srv.uids() == []


@tap.test(name="a body dripped one byte per second: timeout does not "
          "fire while bytes come; session-timeout ends it (75)")
def test_drip_body_slow(t):
    m = tiny("dripslow", 2)

    def handler(conn, cmd):
        data = conn.default(cmd)
        return [Drip(data, 1.0)]
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(handler)}) \
            as srv:
        acct = h.ImapAccount(t, srv, keep=False,
                             globals_={"session_timeout": mt.Raw("8s")})
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=20)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)
        t.note(acct.error(r))


# ---------------------------------------------------------------------------
# TLS and login

@tap.test(name="STARTTLS refused by the server (BAD): 77, no login, "
          "nothing else sent")
def test_starttls_refused(t):
    with h.imap_server(tiny("stref", 1), implicit_tls=False,
                       handlers={"STARTTLS": reply("BAD not now")}) as srv:
        acct = h.ImapAccount(t, srv, tls=mt.Raw("starttls"))
        r = acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        assert "STARTTLS" in acct.error(r), acct.error(r)
        acct.assert_no_password_sent()
        acct.assert_nothing_delivered()


@tap.test(name="STARTTLS: nothing in the clear after it, the capabilities "
          "asked again under TLS, LOGINDISABLED gone after TLS")
def test_starttls_clean(t):
    m = tiny("stok", 2)
    with h.imap_server(m, implicit_tls=False, login_requires_tls=True) \
            as srv:
        acct = h.ImapAccount(t, srv, tls=mt.Raw("starttls"), auth="user")
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        conn = srv.connections[0]
        v = conn.verbs()
        assert "PLAINTEXT-AFTER-STARTTLS" not in v, v
        k = v.index("STARTTLS")
        assert not any(c.tls for c in conn.commands[:k + 1])
        assert all(c.tls for c in conn.commands[k + 1:]), v
        assert v[k + 1] == "CAPABILITY", v
        assert "LOGIN" in v[k + 1:], v
        assert conn.auths[0].ok and conn.auths[0].tls


@tap.test(name="clear text injected right behind STARTTLS's OK (a fake "
          "CAPABILITY and a tagged OK): 76, no login, no fetch")
def test_starttls_injection(t):
    def starttls(conn, cmd):
        ok = b"".join(conn.default_parts(cmd))
        # one write: the injection comes in the same segment as the OK
        return ok + b"* CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED\r\n" \
            b"A3 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] done\r\n"
    with h.imap_server(tiny("inj", 1), implicit_tls=False,
                       handlers={"STARTTLS": starttls}) as srv:
        acct = h.ImapAccount(t, srv, tls=mt.Raw("starttls"))
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        # refused as injected data, or (if it came late) as a failed
        # handshake: either way nothing more is said
        assert re.search(r"inject|after its reply|TLS handshake",
                         acct.error(r)), acct.error(r)
        acct.assert_no_password_sent()
        acct.assert_nothing_delivered()


@tap.test(name="LOGINDISABLED on a plain connection (tls = none, auth = "
          "user): 77, no LOGIN sent")
def test_logindisabled(t):
    with h.imap_server(tiny("ld", 1), tls=None, login_requires_tls=True) \
            as srv:
        acct = h.ImapAccount(t, srv, tls=mt.Raw("none"),
                             allow_plaintext=True, auth="user",
                             ca_file=None)
        r = acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        assert "LOGINDISABLED" in acct.error(r), acct.error(r)
        acct.assert_no_password_sent()


@tap.test(name="[AUTHENTICATIONFAILED]: 77, one attempt")
def test_authenticationfailed(t):
    with h.imap_server(tiny("af", 1),
                       login_reply="NO [AUTHENTICATIONFAILED] Nope.") as srv:
        acct = h.ImapAccount(t, srv)
        r = acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        assert "AUTHENTICATIONFAILED" in acct.error(r), acct.error(r)
        assert len([a for c in srv.connections for a in c.auths]) == 1
        acct.assert_nothing_delivered()


@tap.test(name="[UNAVAILABLE] with an [ALERT] first: 75 (busy, not an "
          "alarm), the alert text in the log")
def test_unavailable_alert(t):
    with h.imap_server(tiny("un", 1), handlers={"AUTHENTICATE": refuse(
            "UNAVAILABLE", "Try later.", alert="Maintenance until 6 am")}) \
            as srv:
        acct = h.ImapAccount(t, srv)
        r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
        assert "UNAVAILABLE" in acct.error(r), acct.error(r)
        assert "Maintenance until 6 am" in r.stderr, "the ALERT is not logged"
        assert acct.summary(r).get("busy") is not None or \
            acct.summary(r)["error"], acct.summary(r)["line"]


@tap.test(name="[ALERT] in the greeting and after SELECT: logged, the "
          "fetch goes on")
def test_alert_logged(t):
    m = tiny("alert", 2)

    def select(conn, cmd):
        ps = conn.default_parts(cmd)
        return [b"* OK [ALERT] Your mailbox is almost full\r\n"] + ps
    with h.imap_server(m, greeting=b"* OK [ALERT] Read the news\r\n",
                       handlers={"EXAMINE": select}) as srv:
        acct = h.ImapAccount(t, srv)
        r = acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert "almost full" in r.stderr, "ALERT after SELECT not logged"
        assert "Read the news" in r.stderr, "greeting ALERT not logged"


@tap.test(name="PREAUTH on a plain connection with tls = starttls: 77, "
          "nothing selected or fetched")
def test_preauth_plain(t):
    with h.imap_server(tiny("pre", 1), implicit_tls=False,
                       greeting=b"* PREAUTH Logged in as fakeuser\r\n") as srv:
        acct = h.ImapAccount(t, srv, tls=mt.Raw("starttls"))
        r = acct.once(expect_rc=mt.EX_NOPERM, within=BOUND)
        assert "PREAUTH" in acct.error(r), acct.error(r)
        v = srv.verbs()
        assert not any(x in v for x in ("SELECT", "EXAMINE", "UID FETCH")), v
        acct.assert_nothing_delivered()


@tap.test(name="PREAUTH over implicit TLS: logged in, fetched")
def test_preauth_tls(t):
    m = tiny("pretls", 2)
    with h.imap_server(m, greeting=b"* PREAUTH Logged in\r\n") as srv:
        acct = h.ImapAccount(t, srv)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        acct.assert_no_password_sent()


@tap.test(name="no UIDVALIDITY in the SELECT answer: 76, nothing fetched")
def test_no_uidvalidity(t):
    m = tiny("nouv", 2)
    drop = parts(lambda c, cmd, ps: [p for p in ps if not (
        isinstance(p, bytes) and b"UIDVALIDITY" in p)])
    with h.imap_server(m, handlers={"EXAMINE": drop, "SELECT": drop}) \
            as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        assert "UIDVALIDITY" in acct.error(r), acct.error(r)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)
        rerun_all(acct, m, keep=False)


@tap.test(name="UIDVALIDITY 0, 2^32 or not a number: 76")
def test_bad_uidvalidity(t):
    for bad in (b"0", b"4294967296", b"12ab"):
        m = tiny(f"baduv{bad.decode()}", 1)
        sub = parts(lambda c, cmd, ps, bad=bad: [re.sub(
            rb"\[UIDVALIDITY \d+\]", b"[UIDVALIDITY " + bad + b"]", p)
            if isinstance(p, bytes) else p for p in ps])
        with h.imap_server(m, handlers={"EXAMINE": sub}) as srv:
            acct = h.ImapAccount(t, srv, base=t.tmp / bad.decode())
            r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
            assert "UIDVALIDITY" in acct.error(r), acct.error(r)
            acct.assert_nothing_delivered()


@tap.test(name="a greeting whose text ends in braces (\"{v2.3}\") is a "
          "greeting, not a literal")
def test_greeting_braces(t):
    m = tiny("brace", 1)
    with h.imap_server(m, greeting=b"* OK IMAP server {v2.3}\r\n") as srv:
        acct = h.ImapAccount(t, srv)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)


@tap.test(name="a tagged answer to a command never sent: 76")
def test_unknown_tag(t):
    m = tiny("tag", 2)
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(inject(
            b"A999 OK what?\r\n", at=0, nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        assert "not sent" in acct.error(r), acct.error(r)
        acct.assert_no_partial_in_new(m)
        acct.assert_server_untouched(m)


@tap.test(name="a continuation (\"+\") in the middle of a FETCH: 76")
def test_stray_continuation(t):
    m = tiny("plus", 2)
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(inject(
            b"+ go on\r\n", at=1, nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_no_partial_in_new(m)
        acct.assert_server_untouched(m)


@tap.test(name="a delivered UID whose size and content change on the "
          "server: not delivered again (UIDVALIDITY + UID name one "
          "immutable message)")
def test_delivered_uid_changes(t):
    m = tiny("chg", 3)
    with h.imap_server(m) as srv:
        acct = h.ImapAccount(t, srv, keep=True)
        acct.once(expect_rc=0, within=BOUND)
        x = srv.messages()[0]
        x.body = x.wire + b"X-Scanned: yes\r\n"
        x.size = len(x.body)
        r = acct.once(expect_rc=0, within=BOUND)
        assert acct.summary(r)["fetched"] == 0, acct.summary(r)["line"]
        got = delivered_ids(acct)
        assert got.count(m[0].id) == 1, f"{m[0].id} delivered " \
            f"{got.count(m[0].id)} times"
        t.note("only RFC822.SIZE changes")
        srv.messages()[1].size = len(srv.messages()[1].wire) + 10
        r = acct.once(expect_rc=0, within=BOUND)
        assert acct.summary(r)["fetched"] == 0


def _renumber_reverse(srv, conn, validity):
    """Another client (or the server) renumbers the folder: the highest
    UID becomes 1, and so on, under a new UIDVALIDITY; the session keeps
    its folder selected (no BYE)."""
    with srv.lock:
        f = srv.folder()
        msgs = list(reversed(f.messages))
        for i, x in enumerate(msgs):
            x.uid = i + 1
        f.messages = msgs
        f.uidnext = len(msgs) + 1
        f.uidvalidity = validity
        conn.view = [x.uid for x in msgs]
        conn.vflags = {x.uid: set(x.flags) for x in msgs}
    return b"* OK [UIDVALIDITY %d] UIDs renumbered\r\n" % validity


@tap.test(name="a new UIDVALIDITY announced in the middle of a session: "
          "maild stores and expunges nothing by the old UIDs (a message "
          "not fetched keeps its place)")
def test_uidvalidity_mid_session(t):
    small = tiny("uvmid", 3)
    big = [corpus.simple("uvmid/big", body="b" * 70 + "\n" * 4000)]
    m = small + big
    with h.imap_server(m) as srv:
        def handler(conn, cmd):
            ps = conn.default_parts(cmd)
            v = srv.folder().uidvalidity + 7
            return ps[:-1] + [fakeimap.Call(
                lambda: _renumber_reverse(srv, conn, v))] + ps[-1:]
        srv.handlers["UID FETCH"] = bodies_fetch(handler)
        acct = h.ImapAccount(t, srv, keep=False, max_size=mt.Raw("2k"))
        acct.once(expect_rc=(0, mt.EX_PROTOCOL, mt.EX_TEMPFAIL),
                  within=BOUND)
        acct.assert_no_partial_in_new(m)
        datas = srv.datas()
        assert big[0].data in datas, "the big message was expunged " \
            "undelivered"
        got = set(delivered_ids(acct))
        lost = [x.id for x in small if x.id not in got and
                x.data not in datas]
        assert not lost, f"lost: {lost}"


@tap.test(name="a folder named like the server's delimiter (\"/\", \".\") "
          "with folder-subdirs: nothing written outside the Maildir")
def test_folder_named_delimiter(t):
    for name, delim in (("/", "/"), (".", ".")):
        base = t.tmp / f"d{ord(delim)}"
        m = [corpus.simple(f"delim/{ord(delim)}")]
        with h.imap_server([], delimiter=delim) as srv:
            srv.create(name)
            srv.add(m[0], name)
            acct = h.ImapAccount(t, srv, base=base, maildir=base / "Maildir",
                                 folders=mt.Raw('{"%s"}' % name),
                                 folder_subdirs=True)
            acct.once(expect_rc=(0, mt.EX_CONFIG, mt.EX_PROTOCOL),
                      within=BOUND)
            assert not (base / "new").exists(), \
                f"folder {name!r}: a message in {base}/new, outside " \
                "the Maildir"


def _fast_store_expunge(srv):
    """UID STORE and UID EXPUNGE handlers in O(messages): for folders of
    tens of thousands of messages."""
    def uids(conn, cmd):
        out = set()
        for item in str(cmd.args[0]).split(","):
            a, _, b = item.partition(":")
            lo, hi = int(a), int(b or a)
            if hi - lo > 1000000:
                raise ValueError("range too large for this handler")
            out.update(range(min(lo, hi), max(lo, hi) + 1))
        return out

    def store(conn, cmd):
        want = uids(conn, cmd)
        with srv.lock:
            for x in srv.folder().messages:
                if x.uid in want:
                    x.flags.add("\\Deleted")
        srv.events.append(fakeimap.Event("STORE", conn, "INBOX", want))
        return f"{cmd.tag} OK Store completed.\r\n".encode()

    def expunge(conn, cmd):
        want = uids(conn, cmd)
        with srv.lock:
            f = srv.folder()
            gone = {x.uid for x in f.messages if x.uid in want and
                    "\\Deleted" in x.flags}
            f.messages = [x for x in f.messages if x.uid not in gone]
            conn.view = [u for u in conn.view if u not in gone]
        srv.events.append(fakeimap.Event("UID EXPUNGE", conn, "INBOX", gone))
        return f"{cmd.tag} OK Expunge completed.\r\n".encode()
    return {"UID STORE": store, "UID EXPUNGE": expunge}


def _sparse_test(extra, what):
    def test(t):
        m = tiny(f"sparse-{what}", 300)
        with h.imap_server([]) as srv:
            if "move_to" in extra:
                srv.create("Archive")
            for i, x in enumerate(m):
                srv.add(x, uid=1001 + 2 * i)
            acct = h.ImapAccount(t, srv, **extra)
            r = acct.once(expect_rc=0, within=60)
            acct.assert_delivered(m)
            if not acct.keep:
                assert srv.uids() == [], f"{len(srv.uids())} left"
            else:
                assert all("\\Seen" in x.flags for x in srv.messages())
            assert acct.summary(r)["fetched"] == len(m)
    test.__name__ = f"test_sparse_{what}"
    return test


for _extra, _what in (({"keep": False}, "delete"),
                      ({"keep": False, "move_to": "Archive"}, "move"),
                      ({"keep": True, "mark_seen": True}, "mark-seen")):
    tap.test(name=f"{_what}: 300 messages with UIDs 1001, 1003, ... (a set "
             "over 1 KB): all done in one run")(_sparse_test(_extra, _what))


@tap.test(name="delete mode, 50000 known messages with UIDs far apart: "
          "their UID sets need over 64 commands: all removed, no crash",
          timeout=300)
def test_many_removals(t):
    n = 50000
    first = 4000000001
    data = corpus.simple("many/one").data
    with h.imap_server([], uidvalidity=777) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=0, within=BOUND)       # the state exists
        for i in range(n):
            srv.folder().append(fakeimap.Msg(data), first + 2 * i)
        size = len(fakeimap.to_wire(data))
        lines = [f"D 1700000000 1 {size} 0 0 INBOX%00777%00{first + 2 * i}"
                 for i in range(n)]
        mt.append_state_block(acct.state, acct.name, lines)
        srv.handlers.update(_fast_store_expunge(srv))
        r = acct.once(expect_rc=0, within=240, timeout=280)
        s = acct.summary(r)
        assert s["deleted"] == n, s["line"]
        assert s["fetched"] == 0, s["line"]
        assert srv.uids() == [], f"{len(srv.uids())} left"


# ---------------------------------------------------------------------------
# what maild sends

@tap.test(name="delete mode, 150 messages in several FETCH batches: "
          "UID STORE \\Deleted and UID EXPUNGE only of messages in new/ "
          "and recorded when they arrive; never a bare EXPUNGE", timeout=120)
def test_store_only_durable(t):
    m = h.msgs("durable", 150, specials=False)
    with h.imap_server(m) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        bad = []
        srv.on_command = h.imap_durable_watch(acct, bad)
        acct.once(expect_rc=0, within=60)
        assert not bad, "\n".join(bad[:10])
        assert not srv.errors, srv.errors
        acct.assert_delivered(m)
        assert srv.uids() == []
        v = srv.verbs()
        assert "EXPUNGE" not in v, v
        assert v.count("UID FETCH") >= 3, "one FETCH for 150 messages?"


@tap.test(name="move-to (UID MOVE, and COPY without MOVE): only messages "
          "in new/ and recorded are moved")
def test_move_only_durable(t):
    for drop in ([], ["MOVE"]):
        m = h.msgs(f"mvdur{len(drop)}", 40, specials=False)
        with h.imap_server(m, drop_caps=drop) as srv:
            srv.create("Archive")
            acct = h.ImapAccount(t, srv, keep=False, move_to="Archive",
                                 base=t.tmp / f"run{len(drop)}")
            bad = []
            srv.on_command = h.imap_durable_watch(acct, bad)
            acct.once(expect_rc=0, within=60)
            assert not bad, "\n".join(bad[:10])
            acct.assert_delivered(m)
            assert srv.uids() == []
            assert srv.datas("Archive") == [x.data for x in m]


def _secret_test(user, password, drop=(), auth=None):
    def test(t):
        m = tiny("secret", 1)
        with h.imap_server(m, user=user, password=password,
                           drop_caps=list(drop)) as srv:
            extra = {"auth": auth} if auth else {}
            acct = h.ImapAccount(t, srv, **extra)
            r = acct.once("-vv", expect_rc=0, within=BOUND)
            acct.assert_delivered(m)
            a = [x for c in srv.connections for x in c.auths]
            assert len(a) == 1 and a[0].ok, a
            assert a[0].user == user, (a[0].user, user)
            assert a[0].password == password, "the password arrived changed"
            assert password not in r.stderr, "the password is in the log"
            q = password.replace("\\", "\\\\").replace('"', '\\"')
            assert q not in r.stderr, "the quoted password is in the log"
            assert not srv.errors, srv.errors
    return test


for _label, _args in (
        ("quotes and backslashes, quoted (LOGIN)",
         ('us"er\\name', 'p"a\\ss w{3}rd', (), "user")),
        ("a 1500-byte password, LITERAL+ (LOGIN)",
         ("fakeuser", 'x"\\' * 500, (), "user")),
        ("a 1500-byte password, synchronizing literal (LOGIN)",
         ("fakeuser", 'y"\\' * 500, ("LITERAL+",), "user")),
        ("an 8-bit password and user, literals (LOGIN)",
         ("us\u00e9r", "p\u00e4ssw\u00f6rd \u20ac", ("LITERAL+",), "user")),
        ("quotes, backslashes, 8-bit (AUTHENTICATE PLAIN)",
         ('us"er\\n\u00e9', 'p"a\\ss\u00e4' * 300, (), "plain"))):
    tap.test(name=f"secrets: {_label}: read back exactly, not in the -vv "
             "log")(_secret_test(*_args))


# ---------------------------------------------------------------------------
# memory and limits

@tap.test(name="a 50 MB message: delivered byte-exact, maild's peak RSS "
          "stays small", timeout=180)
def test_50mb_message(t):
    big = corpus.generate(seed=5, count=0, prefix="big",
                          huge_bytes=50 * 1024 * 1024)
    m = big + tiny("big-small", 2)
    with h.imap_server(m) as srv:
        # timeout: the fake server (Python, TLS) and a maild under valgrind
        # share two cores; a 3 s silence there is CPU, not a hang.
        acct = h.ImapAccount(t, srv, keep=False,
                             timeout=int(3 * mt.timeout_scale()))
        r = acct.once(expect_rc=0, within=120, rss_mb=16)
        acct.assert_delivered(m)
        t.note(f"peak RSS {r.maxrss_mb} MB")
        if r.maxrss_mb is not None:
            tap.diag(f"50 MB message: maild's peak RSS {r.maxrss_mb:.1f} MB")


def _endless(first, chunk=b"A" * 65536, total=TEN_MB):
    def g():
        yield first
        for _ in range(total // len(chunk)):
            yield chunk
            yield Sleep(0)
        yield HANG
    return g()


@tap.test(name="a 10 MB greeting without CRLF: 76 \"longer than\", no "
          "password sent")
def test_10mb_greeting(t):
    with h.imap_server(tiny("lg", 1), greeting=_endless(b"* OK ")) as srv:
        acct = h.ImapAccount(t, srv)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        assert "longer than" in acct.error(r), acct.error(r)
        acct.assert_no_password_sent()


@tap.test(name="a 10 MB line in the listing: 76, nothing fetched")
def test_10mb_listing_line(t):
    m = tiny("ll", 2)
    with h.imap_server(m, handlers={"UID FETCH": listing(
            lambda c, cmd: _endless(b"* 1 FETCH (UID 1 X "))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)


@tap.test(name="a non-body literal over 64 KB in a FETCH: 76")
def test_big_small_literal(t):
    m = tiny("bsl", 2)
    lit = b"* 1 FETCH (UID 1 BODY[HEADER] {70000}\r\n" + b"h" * 70000 + \
        b")\r\n"
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(inject(
            lit, at=0, nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_no_partial_in_new(m)
        acct.assert_server_untouched(m)


@tap.test(name="a response over 1 MB (twenty 60 KB literals): 76")
def test_response_over_limit(t):
    m = tiny("rol", 2)
    items = b" ".join(b"X%d {60000}\r\n" % i + b"y" * 60000
                      for i in range(20))
    resp = b"* 1 FETCH (UID 1 " + items + b")\r\n"
    with h.imap_server(m, handlers={"UID FETCH": listing(inject(
            resp, at=0, nth=None))}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        assert "longer than" in acct.error(r) or "limit" in acct.error(r), \
            acct.error(r)
        acct.assert_nothing_delivered()


@tap.test(name="a body literal over IMAP_LITERAL_LEN_MAX (2^40): 76, "
          "nothing written")
def test_literal_too_big(t):
    m = tiny("ltb", 2)
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(
            lambda c, cmd: [b"* 1 FETCH (UID 1 BODY[] {1099511627777}\r\n",
                            HANG])}) as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        mt.assert_tmp_empty(acct.maildir)


@tap.test(name="RFC822.SIZE 2000, the body literal announced 1 TB and "
          "endless: maild gives up after a bounded amount, keeps nothing",
          timeout=120)
def test_endless_body_literal(t):
    m = tiny("endless", 3)

    def handler(conn, cmd):
        return _endless(b"* 1 FETCH (UID 1 RFC822.SIZE 2000 BODY[] "
                        b"{999999999999}\r\n", total=6 * TEN_MB)
    with h.imap_server(m, handlers={"UID FETCH": bodies_fetch(handler)}) \
            as srv:
        srv.messages()[0].size = 2000
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=30)
        assert "larger than" in acct.error(r) or "size" in acct.error(r), \
            acct.error(r)
        acct.assert_nothing_delivered()
        mt.assert_tmp_empty(acct.maildir)
        acct.assert_server_untouched(m)


# ---------------------------------------------------------------------------
# the listing behind SELECT

@tap.test(name="the listing goes out behind SELECT, before its answer; "
          "UIDVALIDITY is still read first")
def test_listing_behind_select(t):
    m = tiny("behind", 3)

    def slow_select(conn, cmd):
        return [Sleep(0.5)] + conn.default_parts(cmd)
    with h.imap_server(m, handlers={"SELECT": slow_select,
                                    "EXAMINE": slow_select}) as srv:
        acct = h.ImapAccount(t, srv, keep=True)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        cmds = srv.connections[0].commands
        sel = [c for c in cmds if c.verb in ("SELECT", "EXAMINE")][0]
        lst = [c for c in cmds if c.verb == "UID FETCH"][0]
        assert "BODY" not in lst.arg.upper(), lst.arg
        assert lst.t < sel.reply_end, \
            "the listing waited for SELECT's answer"
        # a second run: the records (under that UIDVALIDITY) are used
        r = acct.once(expect_rc=0, within=BOUND)
        assert acct.summary(r)["fetched"] == 0, acct.summary(r)["line"]


@tap.test(name="LOGOUT never answered: maild does not wait for it (exit 0 "
          "at once, everything delivered, the server emptied)")
def test_logout_unanswered(t):
    m = tiny("logout", 3)
    with h.imap_server(m, handlers={"LOGOUT": lambda conn, cmd: [HANG]}) \
            as srv:
        acct = h.ImapAccount(t, srv, keep=False)
        r = acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert srv.uids() == [], srv.uids()
        assert r.seconds < T, f"maild waited {r.seconds:.1f} s for LOGOUT"
        assert srv.commands()[-1].verb == "LOGOUT", srv.commands()[-1].verb


@tap.test(name="an empty folder whose server refuses \"UID FETCH 1:*\" "
          "(BAD, as some do): nothing to fetch, no error")
def test_empty_folder_listing_refused(t):
    with h.imap_server([], handlers={"UID FETCH": reply(
            "BAD Error in IMAP command UID FETCH: Invalid uidset")}) as srv:
        acct = h.ImapAccount(t, srv, keep=True)
        r = acct.once(expect_rc=0, within=BOUND)
        assert acct.summary(r)["fetched"] == 0, acct.summary(r)["line"]


def fixture():
    import contextlib

    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        yield None
    return cm()


if __name__ == "__main__":
    tap.main(fixture=fixture)
