#!/usr/bin/env python3
"""test_hostile_lies.py: servers that lie about numbers, sizes and order.

LIST sizes too small, too large, zero, 2^40, 2^64 and garbage; UIDL and
LIST listings that disagree, are out of order, repeat a message number,
number messages 0 or beyond 2 million, or leave gaps up to 2000000; STAT
lies (maild --check); answers to RETR that carry another message's body,
come in the wrong order or cannot tell where a message ends (an unstuffed
"." line, a second terminator, a last line without CRLF before the "."),
a server that silently drops pipelined commands, and one that says +OK to
DELE and deletes nothing.

Expected, every time: a bounded run that does not crash and stays small;
either the right messages delivered exactly once and byte-exact, or a
clear error (exit 76 for a broken protocol) with nothing half-delivered,
nothing recorded that is not in new/, and nothing deleted from the server
that is not safe in new/.  A rerun against a well-behaved server then
delivers everything exactly once.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import fakepop3    # noqa: E402
import hostile as h  # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

T = h.TIMEOUT
BOUND = T + 5


def uidls_recorded(acct):
    return {u for _, u, _ in acct.records()}


def careful(acct, m):
    """Problems (list of str) with what a run left: everything in new/ is
    one of m, complete, at most once; nothing recorded whose message is
    not byte-exact in new/; nothing gone from the server without a
    byte-exact copy in new/."""
    srv = acct.srv
    problems = [p for p in mt.compare_messages(acct.delivered(), m)
                if " lost" not in p]
    exact = set(mt.strip_trace(d) for d in acct.delivered())
    by_uidl = {}
    for conn in srv.connections:
        for x in conn.session or ():
            by_uidl[x.uidl] = x
    for u in uidls_recorded(acct):
        x = by_uidl.get(u)
        if x is not None and x.data not in exact:
            problems.append(f"UIDL {u!r} ({corpus.test_id(x.data)}) is "
                            "recorded as delivered, but it is not in new/")
    on_server = srv.datas()
    gone = [x.id for x in m if x.data not in on_server and
            x.data not in exact]
    if gone:
        problems.append("deleted from the server without a byte-exact copy "
                        f"in new/: {gone}")
    return problems


def rerun_clean(acct, m, keep):
    """A clean server now: everything exactly once (returns problems)."""
    srv = acct.srv
    srv.handlers.clear()
    for x in srv.mailbox:
        x.list_size = None
    r = acct.once(within=30)
    problems = [f"clean rerun (exit {r.rc}): {p}"
                for p in mt.compare_messages(acct.delivered(), m)]
    if not keep and srv.mailbox:
        problems.append(f"clean rerun: {len(srv.mailbox)} messages left on "
                        "the server")
    return problems


def expect_refused(t, m, keep=False, **kw):
    """The server breaks the protocol before any message: exit 76, nothing
    delivered, recorded or deleted; then a clean rerun works."""
    base = kw.pop("base", None)
    with h.server(m, **kw) as srv:
        acct = h.Account(t, srv, keep=keep, base=base)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)
        t.note(f"  error: {acct.error(r)}")
        problems = rerun_clean(acct, m, keep)
        assert not problems, "\n".join(problems)
        return r


def sub(t, name):
    d = t.tmp / name
    d.mkdir()
    return d


# ---------------------------------------------------------------------------
# LIST sizes

def _with_list_size(t, m, k, size, keep=False, **extra):
    with h.server(m) as srv:
        srv.mailbox[k].list_size = size
        acct = h.Account(t, srv, keep=keep,
                         base=sub(t, f"size{size}-{len(extra)}"), **extra)
        r = acct.once(within=30)
        return acct, r


@tap.test
def test_list_size_lies_refused(t):
    """RFC 1939 sizes are exact: a message that arrives smaller or larger
    than LIST said (LIST 0, 1, 100, 1 TiB) is not kept and nothing is
    deleted (exit 76, "out of step"); the messages before it are kept."""
    m = h.msgs("sizes", 4)
    for size in (0, 1, 100, 1 << 40):
        acct, r = _with_list_size(t, m, 1, size)
        assert r.rc == mt.EX_PROTOCOL, \
            f"LIST size {size}: exit {r.rc}: {acct.error(r)}"
        assert "out of step" in acct.error(r), acct.error(r)
        acct.assert_no_partial_in_new(m)
        ids = {corpus.test_id(mt.strip_trace(d)) for d in acct.delivered()}
        assert m[1].id not in ids, f"LIST size {size}: the message was kept"
        assert len(acct.srv.mailbox) == len(m), "something was deleted"


@tap.test
def test_list_size_estimates_with_exact_sizes_no(t):
    """With exact-sizes = no (servers whose sizes are estimates), a
    message smaller or somewhat larger than LIST says, or LIST 0, or LIST
    1 TiB, is delivered as sent."""
    m = h.msgs("sizes", 4)
    for size in (0, 1, 100, 1 << 40):
        acct, r = _with_list_size(t, m, 1, size, exact_sizes=False)
        assert r.rc == 0, f"LIST size {size}: exit {r.rc}: {acct.error(r)}"
        acct.assert_delivered(m)
        assert acct.srv.mailbox == []


@tap.test
def test_list_size_unparsable(t):
    """2^40 + 1, 2^64 - 1, 2^64, 10^30, -1, 12abc, empty: exit 76."""
    m = h.msgs("badsize", 3)
    for i, bad in enumerate([b"1099511627777", b"18446744073709551615",
                             b"18446744073709551616", b"1" + b"0" * 30,
                             b"-1", b"12abc", b"", b"0x10"]):
        lines = [b"1 100", b"2 " + bad, b"3 100"]
        expect_refused(t, m, handlers={"LIST": h.listing(lines)},
                       base=sub(t, f"v{i}"))


@tap.test
def test_body_far_larger_than_list(t):
    """LIST says 100 bytes, the message has 3 MB: exit 76 after a bounded
    amount; the message stays on the server and unrecorded."""
    big = corpus.simple("far/big", body="y" * 3_000_000 + "\n")
    m = [corpus.simple("far/0"), big, corpus.simple("far/2")]
    with h.server(m) as srv:
        srv.mailbox[1].list_size = 100
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=mt.EX_PROTOCOL, within=BOUND)
        assert "larger than" in acct.error(r), acct.error(r)
        problems = careful(acct, m)
        assert srv.mailbox[1].uidl not in uidls_recorded(acct)
        assert len(srv.mailbox) == 3
        mt.assert_tmp_empty(acct.maildir)
        problems += rerun_clean(acct, m, keep=False)
        assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# listings that disagree

LISTING_LIES = {
    "LIST has an extra message": {
        "LIST": [b"1 100", b"2 100", b"3 100", b"4 100"]},
    "LIST lacks a message": {"LIST": [b"1 100", b"3 100"]},
    "LIST numbers other messages": {"LIST": [b"1 100", b"2 100", b"4 100"]},
    "UIDL out of order": {"UIDL": [b"2 b", b"1 a", b"3 c"]},
    "UIDL repeats a number": {"UIDL": [b"1 a", b"1 b", b"2 c", b"3 d"]},
    "LIST repeats a number": {"LIST": [b"1 100", b"1 100", b"2 100",
                                       b"3 100"]},
    "LIST out of order": {"LIST": [b"1 100", b"3 100", b"2 100"]},
    "message number 0": {"UIDL": [b"0 z", b"1 a", b"2 b", b"3 c"]},
    "message number beyond the limit": {
        "UIDL": [b"1 a", b"2 b", b"%d c" % (h.MAX_MESSAGES + 1)]},
    "message number 2000001": {"UIDL": [b"1 a", b"2 b", b"2000001 c"]},
    "message number 2^32 + 1": {"UIDL": [b"1 a", b"2 b", b"4294967297 c"]},
    "message number 10^25": {"UIDL": [b"1 a", b"2 b",
                                      b"10000000000000000000000000 c"]},
    "negative message number": {"UIDL": [b"-1 a", b"1 a"]},
    "UIDL without an id": {"UIDL": [b"1 a", b"2", b"3 c"]},
    "UIDL with only blanks as id": {"UIDL": [b"1 a", b"2  \t ", b"3 c"]},
    "UIDL line without number": {"UIDL": [b"a", b"1 a"]},
}


@tap.test
def test_listings_that_lie(t):
    m = h.msgs("listlie", 3)
    for i, (what, lie) in enumerate(LISTING_LIES.items()):
        handlers = {verb: h.listing(lines) for verb, lines in lie.items()}
        t.note(f"case: {what}")
        expect_refused(t, m, handlers=handlers, base=sub(t, f"v{i}"))


@tap.test
def test_sparse_numbers_up_to_the_limit(t):
    """Message numbers with gaps (legal after deletions), the last one
    LISTING_MAX (maild.h), the limit: all fetched, and DELE uses the
    right numbers."""
    m = h.msgs("sparse", 4)
    nums = [1, 7, h.MAX_MESSAGES - 1, h.MAX_MESSAGES]
    with h.server(m, handlers=h.renumber(nums)) as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        deles = sorted(int(c.arg) for c in srv.commands() if c.verb == "DELE")
        assert deles == nums, deles
        assert srv.mailbox == []


@tap.test
def test_stat_lies_check(t):
    """maild --check against STAT answers that lie or are garbage:
    bounded, no crash; garbage is a protocol error."""
    m = h.msgs("stat", 1)
    good = [b"+OK 1 18446744073709551615", b"+OK %d 5" % h.MAX_MESSAGES,
            b"+OK 0 0", b"+OK 1 100 extra words"]
    bad = [b"+OK", b"+OK 1", b"+OK -1 5", b"+OK 1 -5",
           b"+OK %d 5" % (h.MAX_MESSAGES + 1), b"+OK 2000001 5",
           b"+OK 1 18446744073709551616", b"+OK x y", b"+OK 1 2x"]
    for i, line in enumerate(good + bad):
        with h.server(m, handlers={"STAT": fakepop3.raw(line + b"\r\n")}) \
                as srv:
            acct = h.Account(t, srv, base=sub(t, f"v{i}"))
            mt.require_maild()
            r = h.run_maild(["--check", "-f", acct.cfg], timeout=30)
            h.check_sane(r, within=BOUND)
            want = 0 if line in good else mt.EX_PROTOCOL
            assert r.rc == want, f"{line!r}: exit {r.rc}, expected {want}"
            assert "RETR" not in srv.verbs() and "DELE" not in srv.verbs()
            assert not acct.delivered()


# ---------------------------------------------------------------------------
# answers with the wrong body, in the wrong order

@tap.test
def test_retr_answered_with_far_larger_other_body(t):
    """RETR 1 (a small message) is answered with message 2's body, 3 MB:
    far larger than LIST said, so it is refused and nothing is lost.
    The session either fails (EX_PROTOCOL) or, having
    turned pipelining off for the account, recovers in lock-step when
    the server answers correctly the second time: both are careful."""
    big = corpus.simple("other/big", body="z" * 3_000_000 + "\n")
    m = [corpus.simple("other/small"), big, corpus.simple("other/2")]
    with h.server(m, handlers={"RETR": h.body_of(None, 2, nth=1)}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=(0, mt.EX_PROTOCOL), within=BOUND)
        t.note(f"exit {r.rc}: {acct.error(r)}")
        problems = careful(acct, m)
        problems += rerun_clean(acct, m, keep=False)
        assert not problems, "\n".join(problems)


@tap.test
def test_retr_answered_with_other_body(t):
    """RETR 1 is answered with the body of message 2 (similar sizes; its
    "+OK <n> octets" line even gives message 2's size).  The careful
    outcome: message 1 is not recorded or deleted on the strength of
    message 2's body, and nothing is delivered twice."""
    m = h.msgs("otherbody", 3)
    with h.server(m, handlers={"RETR": h.body_of(None, 2, nth=1)}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        t.note(f"exit {r.rc}: {acct.error(r)}")
        problems = careful(acct, m)
        problems += rerun_clean(acct, m, keep=False)
        assert not problems, "\n".join(problems)


@tap.test
def test_pipelined_answers_swapped(t):
    """The answers to RETR 1 and RETR 2 come in the wrong order (2, then
    1).  Each body is still delivered once; nothing is lost."""
    m = h.msgs("swap", 4)

    def retr(conn, cmd):
        if cmd.arg == "1":
            return b""                   # answered with RETR 2's
        if cmd.arg == "2":
            return [conn.default(cmd), conn.default(
                fakepop3.Cmd(b"RETR 1", 0, conn.tls, 0))]
        return None
    with h.server(m, handlers={"RETR": retr}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        t.note(f"exit {r.rc}: {acct.error(r)}")
        if not srv.connections[0].pipelined():
            t.skip("maild did not pipeline")
        problems = careful(acct, m)
        problems += rerun_clean(acct, m, keep=False)
        assert not problems, "\n".join(problems)


@tap.test
def test_pipelined_commands_ignored(t):
    """A server that advertises PIPELINING but silently ignores a command
    that arrives before its previous answer went out: bounded failure,
    nothing lost; with pipelining = no the same server works."""
    m = h.msgs("ignorepipe", 5)

    def any_(conn, cmd):
        prev = conn.commands[cmd.index - 1] if cmd.index > 0 else None
        if prev is not None and prev.reply_end is not None and \
                cmd.t < prev.reply_end and cmd.verb in ("RETR", "PASS",
                                                        "LIST", "DELE"):
            return b""
        return None
    with h.server(m, handlers={"*": any_}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=2 * BOUND)
        t.note(f"exit {r.rc}: {acct.error(r)}")
        problems = careful(acct, m)
        assert not problems, "\n".join(problems)
        acct.write(pipelining="no")
        r = acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert srv.mailbox == []


# ---------------------------------------------------------------------------
# where does a message end?

@tap.test
def test_unstuffed_dot_line_mid_message(t):
    """A server that does not dot-stuff: message 2 has a line "." in the
    middle, which ends it early; the rest of its body then arrives where
    the next reply should be.  maild reports the broken protocol; the
    careful outcome is that the cut-short message is neither recorded as
    delivered nor deleted (now or at the next run) on the strength of its
    first half."""
    m = [corpus.simple("unstuffed/0"),
         corpus.simple("unstuffed/1", body="first half\n.\nsecond half\n"
                       + "more text\n" * 50),
         corpus.simple("unstuffed/2")]

    def retr(conn, cmd):
        if cmd.arg != "2":
            return None
        x = conn.msg("2")
        body = x.data.replace(b"\n", b"\r\n")          # no dot-stuffing
        return b"+OK %d octets\r\n" % x.size + body + b".\r\n"
    with h.server(m, handlers={"RETR": retr}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        t.note(f"first run: exit {r.rc}: {acct.error(r)}")
        assert r.rc != 0, "exit 0 although the server broke the protocol"
        problems = careful(acct, m)
        # the same broken server once more: still nothing lost
        r = acct.once(within=BOUND)
        t.note(f"second run: exit {r.rc}: {acct.error(r)}")
        problems += [f"second run: {p}" for p in careful(acct, m)]
        assert not problems, "\n".join(problems)


@tap.test
def test_double_terminator(t):
    """A second ".\\r\\n" after a message: a bad status line; the message
    itself was complete (maild may retry at once without pipelining)."""
    m = h.msgs("dbl", 4)
    with h.server(m, handlers={"RETR": h.append(b".\r\n", nth=2)}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(expect_rc=(0, mt.EX_PROTOCOL), within=BOUND)
        assert "'.'" in r.stderr, "the stray '.' is not in the log"
        problems = careful(acct, m)
        problems += rerun_clean(acct, m, keep=False)
        assert not problems, "\n".join(problems)


def _no_crlf_before_dot(conn, cmd, which):
    if cmd.arg != which:
        return None
    x = conn.msg(which)
    w = x.wire()
    assert w.endswith(b"\r\n.\r\n")
    return b"+OK %d octets\r\n" % x.size + w[:-5] + b".\r\n"


@tap.test
def test_last_message_without_crlf_before_dot(t):
    """The last message ends "...text.\\r\\n" (no CRLF before the dot):
    that is not an end; no end comes, so the timeout ends the session;
    the message is not delivered, nothing is deleted."""
    m = h.msgs("nocrlf", 3)
    for keep, piped in ((False, "auto"), (False, "no")):
        with h.server(m, handlers={"RETR": lambda c, cmd:
                                   _no_crlf_before_dot(c, cmd, "3")}) as srv:
            acct = h.Account(t, srv, keep=keep, pipelining=piped,
                             base=sub(t, f"p{piped}"))
            r = acct.once(expect_rc=mt.EX_TEMPFAIL, within=BOUND)
            assert "timed out" in acct.error(r), acct.error(r)
            problems = careful(acct, m)
            assert srv.mailbox[2].uidl not in uidls_recorded(acct)
            assert len(srv.mailbox) == 3
            problems += rerun_clean(acct, m, keep)
            assert not problems, "\n".join(problems)


@tap.test
def test_middle_message_without_crlf_before_dot(t):
    """Message 2 of 4 ends without CRLF before the dot.  With pipelining
    its "end" is found inside the next answer; whatever maild makes of
    it, nothing may be lost or delivered twice."""
    m = h.msgs("nocrlf2", 4)
    with h.server(m, handlers={"RETR": lambda c, cmd:
                               _no_crlf_before_dot(c, cmd, "2")}) as srv:
        acct = h.Account(t, srv, keep=False)
        r = acct.once(within=BOUND)
        t.note(f"exit {r.rc}: {acct.error(r)}")
        problems = careful(acct, m)
        problems += rerun_clean(acct, m, keep=False)
        assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# DELE that lies

@tap.test
def test_dele_ok_but_not_deleted(t):
    """+OK to DELE, +OK to QUIT, and the messages are still there.  maild
    takes the server at its word: whatever it lists after a confirmed
    deletion is a new message (servers do reuse ids), so the next run
    fetches them again.  A lying server costs copies, never a message."""
    m = h.msgs("fakedele", 4)
    with h.server(m, handlers={"DELE": fakepop3.raw(b"+OK sure\r\n")}) \
            as srv:
        acct = h.Account(t, srv, keep=False)
        acct.once(expect_rc=0, within=BOUND)
        acct.assert_delivered(m)
        assert len(srv.mailbox) == 4
        assert acct.records() == [], acct.records()
        r = acct.once(expect_rc=0, within=BOUND)
        assert acct.summary(r)["fetched"] == 4, acct.summary(r)["line"]
        assert len(mt.read_maildir(acct.maildir)) == 8
        srv.handlers.clear()
        acct.once(expect_rc=0, within=BOUND)
        assert srv.mailbox == []


if __name__ == "__main__":
    tap.main()
