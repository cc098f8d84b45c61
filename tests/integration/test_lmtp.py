#!/usr/bin/env python3
"""test_lmtp.py: deliver = lmtp, into Dovecot's LMTP with Sieve and into a
fault-injecting fake LMTP server (fakelmtp.py).

Dovecot (private, with LMTP and Pigeonhole Sieve): a Sieve script files
by List-Id into folders and 1000 messages fetched over POP3 land in the
right folders byte-exact through the unix socket, and messages fetched
over IMAP through the TCP port; the Sieve duplicate snippet of
maild.conf(5) drops a message that comes twice with one X-Maild-Id (as
after a crash between the LMTP 250 and maild's record); an unknown
recipient (550) keeps the messages on the server and logs Dovecot's
words.

The fake LMTP server: 4xx and 5xx to MAIL, RCPT, DATA and after the
final "."; with and without PIPELINING; a server that drops the
connection mid-DATA, one that never answers, bad greetings, replies too
long; the wire byte-exact (CRLF, dot-stuffing, a last line without LF);
X-Maild-Id stable across attempts; one connection for many messages;
the configuration's errors.

Each time: a refused message stays on the server (no DELE, no expunge, no
record), the error names the LMTP server's words, and the next poll
delivers it; nothing is delivered twice.
"""

import functools
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import delivery    # noqa: E402
import dovecot     # noqa: E402
import fakeimap    # noqa: E402
import fakelmtp    # noqa: E402
import fakepop3    # noqa: E402
import hostile     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

from fakelmtp import DROP, HANG, Sleep  # noqa: E402

LISTS = ["alpha.lists.maild-test.example", "beta.lists.maild-test.example",
         None, "gamma.lists.maild-test.example"]
FOLDER = {LISTS[0]: "Lists/alpha", LISTS[1]: "Lists/beta",
          LISTS[3]: "Lists/gamma", None: "INBOX"}
SIEVE_LISTS = delivery.SIEVE_DUPLICATE.replace(
    'require ["duplicate"];', 'require ["duplicate", "fileinto"];') + "".join(
    f'if header :contains "List-Id" "<{lst}>" {{\n'
    f'    fileinto "{FOLDER[lst]}";\n    stop;\n}}\n'
    for lst in LISTS if lst is not None)
BIG = int(os.environ.get("MAILD_LMTP_COUNT", "1000"))


def msgs(prefix, n, seed=14, **kw):
    kw.setdefault("max_large", 0)
    return corpus.generate(seed=seed, count=n, prefix=prefix, **kw)


def pop3(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


def server_left(src):
    return [m.data for m in src.mailbox]


def assert_fake_got(lmtp, expected):
    """The fake LMTP server took exactly expected, once each."""
    delivery.assert_delivered(lmtp.delivered, expected,
                              "messages the LMTP server took")


# ---------------------------------------------------------------------------
# the fake LMTP server: refusals

def refusal_case(t, handlers, code, words, expect_rc, pipelining=True,
                 nth_refused=3, delete=True, base=None):
    """Five messages; the LMTP server refuses the nth_refused-th with
    handlers: maild exits expect_rc, logs the server's words, deletes the
    other four and keeps it; the next poll (server good again) delivers
    it, nothing twice."""
    m = msgs("refuse", 5)
    with pop3(m) as src, fakelmtp.FakeLMTP(handlers=handlers,
                                           pipelining=pipelining) as lm:
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}", keep=not delete,
                             base=base)
        r = a.once(expect_rc=expect_rc, within=20)
        err = a.error(r)
        assert "LMTP server refused 1 message" in err, err
        assert words in err, f"the server's words not in the error: {err}"
        assert words in r.stderr
        warn = [ln for ln in r.stderr.splitlines()
                if "refused a message" in ln]
        assert len(warn) == 1 and code in warn[0], warn
        want = [x for i, x in enumerate(m) if i != nth_refused - 1]
        assert_fake_got(lm, want)
        if delete:
            assert server_left(src) == [m[nth_refused - 1].data], \
                f"{len(src.mailbox)} left on the server"
            deles = [c.line for c in src.commands() if c.verb == "DELE"]
            assert f"DELE {nth_refused}".encode() not in deles, deles
        recs = {k for _, k, _ in a.records()}
        assert src.uidls()[0 if delete else nth_refused - 1] not in recs \
            or not delete, "the refused message has a record"
        # the next poll, with a good server: it comes, once
        lm.handlers.clear()
        r = a.once(expect_rc=0, within=20)
        assert a.summary(r)["fetched"] == (1 if delete else 1), \
            a.summary(r)["line"]
        assert_fake_got(lm, m)
        if delete:
            assert src.mailbox == [], "messages left on the server"
        r = a.once(expect_rc=0, within=20)
        assert a.summary(r)["fetched"] == 0


@tap.test(name="RCPT 452 (pipelined): the message stays, exit 75; the next "
          "poll delivers it")
def rcpt_452_pipelined(t):
    refusal_case(t, {"RCPT": fakelmtp.nth(3, b"452 4.2.2 Mailbox full\r\n")},
                 "452", "452 4.2.2 Mailbox full", mt.EX_TEMPFAIL)


@tap.test(name="RCPT 452 (no PIPELINING, lock-step): the same")
def rcpt_452_lockstep(t):
    refusal_case(t, {"RCPT": fakelmtp.nth(3, b"452 4.2.2 Mailbox full\r\n")},
                 "452", "452 4.2.2 Mailbox full", mt.EX_TEMPFAIL,
                 pipelining=False)


@tap.test(name="RCPT 550: the message stays, the reply is logged, exit 69")
def rcpt_550(t):
    refusal_case(t, {"RCPT": fakelmtp.nth(
        3, b"550 5.1.1 <x> User doesn't exist: x\r\n")},
        "550", "550 5.1.1 <x> User doesn't exist", mt.EX_UNAVAILABLE)


@tap.test(name="RCPT 550 in keep mode: kept unrecorded, delivered later")
def rcpt_550_keep(t):
    refusal_case(t, {"RCPT": fakelmtp.nth(
        2, b"550 5.7.1 Go away\r\n")}, "550", "550 5.7.1 Go away",
        mt.EX_UNAVAILABLE, nth_refused=2, delete=False)


@tap.test(name="MAIL FROM 451: the message stays, exit 75")
def mail_451(t):
    refusal_case(t, {"MAIL": fakelmtp.nth(3, b"451 4.3.0 Try later\r\n")},
                 "451", "451 4.3.0 Try later", mt.EX_TEMPFAIL)


@tap.test(name="DATA 554 (lock-step): the message stays, exit 69")
def data_554(t):
    refusal_case(t, {"DATA": fakelmtp.nth(3, b"554 5.3.4 No\r\n")},
                 "554", "554 5.3.4 No", mt.EX_UNAVAILABLE, pipelining=False)


@tap.test(name="after the final dot 451 / 552 (pipelined and lock-step)")
def dot_4xx_5xx(t):
    cases = [(b"451 4.3.0 Temporary failure\r\n", "451", mt.EX_TEMPFAIL),
             (b"552 5.2.2 Quota exceeded\r\n", "552", mt.EX_UNAVAILABLE)]
    for i, (reply, code, rc) in enumerate(cases):
        for pipelining in (True, False):
            sub = t.tmp / f"{code}-{pipelining}"
            sub.mkdir()
            t.note(f"{code} pipelining={pipelining}")
            refusal_case(t, {"DOT": fakelmtp.nth(3, reply)}, code,
                         reply.decode().strip(), rc, pipelining=pipelining,
                         base=sub)


# ---------------------------------------------------------------------------
# the fake LMTP server: a broken connection or server

def broken_case(t, lm_kw, words, within=30, n=5, taken=0, base=None):
    """The LMTP server breaks (lm_kw); exit 75, the error says words,
    nothing more than the first `taken` messages delivered, the rest
    stays; the next poll with a good server delivers everything once."""
    m = msgs("broken", n)
    with pop3(m) as src, fakelmtp.FakeLMTP(**lm_kw) as lm:
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}", base=base)
        r = a.once(expect_rc=mt.EX_TEMPFAIL, within=within)
        err = a.error(r)
        assert words in err, f"{words!r} not in the error: {err}"
        assert_fake_got(lm, m[:taken])
        assert len(src.mailbox) == n - taken, \
            f"{len(src.mailbox)} left on the server, want {n - taken}"
    with pop3([x.data for x in src.mailbox]) as src2, \
            fakelmtp.FakeLMTP() as lm2:
        # the same UIDLs: the records of the first run count
        for mine, old in zip(src2.mailbox, src.mailbox):
            mine.uidl = old.uidl
        a.src = src2
        a.dest = f"127.0.0.1:{lm2.port}"
        a.write()
        a.once(expect_rc=0, within=30)
        assert_fake_got(lm2, m[taken:])
        assert src2.mailbox == []


@tap.test(name="a server that drops the connection mid-DATA: exit 75, the "
          "message and those after it stay")
def drop_mid_data(t):
    broken_case(t, {"handlers": {"BODY": fakelmtp.drop_in_body(500, 2)}},
                "the LMTP connection was closed by the server", taken=1)


@tap.test(name="a server that stops answering mid-DATA: timed out, exit 75")
def hang_mid_data(t):
    broken_case(t, {"handlers": {"BODY": fakelmtp.hang_in_body(500, 2)}},
                "the LMTP connection timed out", taken=1)


@tap.test(name="a server that never answers after the final dot: timed out")
def hang_after_dot(t):
    broken_case(t, {"handlers": {"DOT": fakelmtp.nth(1, [HANG])}},
                "the LMTP connection timed out", taken=0)


@tap.test(name="a server that never says a word: timed out, exit 75")
def silent_server(t):
    broken_case(t, {"greeting": None}, "the LMTP connection timed out")


@tap.test(name="bad greetings: 554, garbage, a line too long, closed at once")
def bad_greetings(t):
    cases = [
        (b"554 5.3.2 Not now, busy\r\n", "the LMTP server refused the "
         "connection: 554 5.3.2 Not now, busy"),
        (b"hello there\r\n", "the LMTP server sent a bad reply: hello"),
        (b"220", "the LMTP connection was closed by the server"),
        ([b"220 " + b"x" * 5000], "line too long"),
        ([DROP], "the LMTP connection was closed by the server"),
        (b"099 odd\r\n", "bad reply"),
        (b"220-a\r\n" * 300, "reply too long"),
    ]
    for i, (greeting, words) in enumerate(cases):
        sub = t.tmp / f"g{i}"
        sub.mkdir()
        t.note(f"greeting {greeting!r:.60}")
        if isinstance(greeting, bytes) and not greeting.endswith(b"\n") \
                and not greeting.startswith(b"220-"):
            greeting = [greeting, DROP]
        broken_case(t, {"greeting": greeting}, words, n=2, base=sub)


@tap.test(name="LHLO refused: exit 75, nothing delivered")
def lhlo_refused(t):
    broken_case(t, {"handlers": {"LHLO": fakelmtp.reply(
        b"500 5.5.1 Say HELO\r\n")}}, "the LMTP server refused LHLO: 500",
        n=2)


@tap.test(name="the source server drops the connection while the LMTP "
          "server takes the batch: what it took is recorded, nothing comes "
          "twice")
def source_lost_mid_batch(t):
    m = msgs("midbatch", 10)
    n = len(m)

    def retr(conn, cmd):
        if cmd.nth == n:        # the last one: then the connection goes
            return [conn.default(cmd), Sleep(0.6), DROP]
        return None
    with pop3(m, handlers={"RETR": retr}) as src, fakelmtp.FakeLMTP(
            handlers={"DOT": lambda c, x: [Sleep(0.15),
                                           b"250 2.0.0 Saved\r\n"]}) as lm:
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}", timeout=10)
        r = a.once(within=60)
        took = len(lm.delivered)
        t.note(f"first run: exit {r.rc}, the LMTP server took {took}; "
               f"records: {len(a.records())}")
        src.handlers.clear()
        a.once(expect_rc=0, within=60)
        assert_fake_got(lm, m)


@tap.test(name="the fake LMTP server on a unix socket: delivered, byte-exact")
def fake_unix(t):
    m = msgs("unix", 12)
    with pop3(m) as src, fakelmtp.FakeLMTP(unix=t.tmp / "lmtp.sock") as lm:
        delivery.Account(t, src, f"unix:{t.tmp}/lmtp.sock").once(
            expect_rc=0)
        assert_fake_got(lm, m)
        assert src.mailbox == []


@tap.test(name="a unix socket that is not there: exit 75, messages stay")
def socket_missing(t):
    m = msgs("nosock", 3)
    with pop3(m) as src:
        a = delivery.Account(t, src, f"unix:{t.tmp}/no/such/socket")
        r = a.once(expect_rc=mt.EX_TEMPFAIL, within=20)
        err = a.error(r)
        assert "cannot connect to the LMTP server" in err, err
        assert "No such file or directory" in err, err
        assert len(src.mailbox) == 3


@tap.test(name="a TCP port nobody listens on: exit 75, messages stay")
def port_closed(t):
    m = msgs("noport", 3)
    port = dovecot.free_port()
    with pop3(m) as src:
        a = delivery.Account(t, src, f"127.0.0.1:{port}")
        r = a.once(expect_rc=mt.EX_TEMPFAIL, within=20)
        assert "LMTP" in a.error(r), a.error(r)
        assert len(src.mailbox) == 3


# ---------------------------------------------------------------------------
# maild --check: the LMTP server asked about the recipient, nothing sent

def check_run(t, src, dest, **kw):
    """maild --check for one account of src delivering to dest: (r, out)."""
    a = delivery.Account(t, src, dest, **kw)
    r = hostile.run_maild(["--check", "-f", str(a.cfg)], timeout=60)
    hostile.check_sane(r)
    t.attach("--check output", r.stdout + r.stderr)
    return r, r.stdout


@tap.test(name="--check: the LMTP server is asked about the recipient "
          "(LHLO, MAIL, RCPT, QUIT); nothing is fetched or sent")
def check_lmtp_ok(t):
    m = msgs("chk", 3)
    with pop3(m) as src, fakelmtp.FakeLMTP() as lm:
        r, out = check_run(t, src, f"127.0.0.1:{lm.port}",
                           lmtp_recipient="alice@example.org")
        assert r.rc == 0, f"exit {r.rc}:\n{out}{r.stderr}"
        assert re.search(rf"lmtp\s+ok\s+127\.0\.0\.1:{lm.port} takes mail "
                         r"for alice@example\.org", out), out
        assert re.search(r"spool\s+ok\s+\S+acct\.spool", out), out
        assert re.search(r"mailbox\s+ok\s+3 messages", out), out
        lm.wait_idle(5)
        cmds = lm.commands()
        assert [c.verb for c in cmds] == ["LHLO", "MAIL", "RCPT", "QUIT"], \
            [c.line for c in cmds]
        assert cmds[2].arg == b"<alice@example.org>", cmds[2].line
        assert lm.transactions == [] and lm.delivered == []
        assert len(src.mailbox) == 3


@tap.test(name="--check: a recipient the LMTP server refuses, a socket "
          "that is not there, a closed port, a server that is not LMTP or "
          "says nothing: FAILED with the reason, exit 74")
def check_lmtp_failures(t):
    refuse = {"RCPT": fakelmtp.reply(
        b"550 5.1.1 <nobody> User doesn't exist: nobody\r\n")}
    cases = [
        ({"handlers": refuse}, None,
         r"lmtp\s+FAILED\s+the recipient: 550 5\.1\.1 <nobody> User "
         r"doesn't exist"),
        ({"greeting": b"+OK POP3 server ready\r\n"}, None,
         r"lmtp\s+FAILED\s+its greeting: this is not an LMTP server"),
        ({"greeting": b"554 5.3.2 too busy\r\n"}, None,
         r"lmtp\s+FAILED\s+its greeting: 554 5\.3\.2 too busy"),
        ({"greeting": None}, None,
         r"lmtp\s+FAILED\s+its greeting: no answer in time"),
        (None, f"127.0.0.1:{dovecot.free_port()}",
         r"lmtp\s+FAILED\s+cannot connect to 127\.0\.0\.1:\d+: Connection "
         r"refused"),
        (None, f"unix:{t.tmp}/no/such/socket",
         r"lmtp\s+FAILED\s+cannot connect to \S+/no/such/socket: No such "
         r"file or directory; is the LMTP server running"),
    ]
    for i, (lm_kw, dest, want) in enumerate(cases):
        with pop3(msgs(f"chkf{i}", 2)) as src:
            sub = t.tmp / f"case{i}"
            sub.mkdir()
            if lm_kw is None:
                r, out = check_run(t, src, dest, base=sub)
            else:
                with fakelmtp.FakeLMTP(**lm_kw) as lm:
                    r, out = check_run(t, src, f"127.0.0.1:{lm.port}",
                                       base=sub)
                    assert lm.transactions == []
            assert r.rc == mt.EX_IOERR, f"case {i}: exit {r.rc}:\n{out}"
            assert re.search(want, out), f"case {i}: no /{want}/ in:\n{out}"
            assert re.search(r"mailbox\s+ok\s+2 messages", out), out
            assert len(src.mailbox) == 2


# ---------------------------------------------------------------------------
# the fake LMTP server: what goes over the wire

def wire_case(t, src, lm, expected, **extra):
    a = delivery.Account(t, src, f"127.0.0.1:{lm.port}",
                         add_headers=mt.Raw('{"no"}'), **extra)
    a.once(expect_rc=0, within=30)
    assert len(lm.transactions) == len(expected), lm.transactions
    ids = set()
    for txn, want in zip(lm.transactions, expected):
        assert txn.complete and txn.replies[0].startswith(b"250"), txn
        assert not txn.bare_lf, f"{want.id}: a bare LF on the wire"
        mid = delivery.maild_id(txn.data)
        assert txn.data.startswith(f"X-Maild-Id: {mid}\n".encode()), \
            txn.data[:80]
        ids.add(mid)
        exact = fakelmtp.encode_wire(
            f"X-Maild-Id: {mid}\n".encode() + want.data)
        assert bytes(txn.wire) == exact, (
            f"{want.id}: wire not as RFC 2033 wants: "
            f"{mt.describe_diff(bytes(txn.wire), exact)}")
        assert txn.mail == b"MAIL FROM:<>", txn.mail
        assert txn.rcpts == [b"<" + src.user.encode() + b">"], txn.rcpts
    assert len(ids) == len(expected), "X-Maild-Id not unique"
    return a


DOTTY = [
    b"Subject: dots\n\n.\n..\n...\n.foo\n. \n.\t\nend\n",
    b"Subject: dot last\n\ntext\n.",
    b"Subject: no final newline\n\nlast line without LF",
    b"Subject: dot first\n\n.hidden\n",
    b".starts with a dot: header\nSubject: x\n\nbody\n",
    b"Subject: cr inside\n\na\rb\nc \r d\n",
    b"Subject: empty body\n\n",
    b"Subject: headers only, no blank line\n",
]


@tap.test(name="the wire (POP3 source): CRLF, dot-stuffing, byte-exact")
def wire_pop3(t):
    m = [corpus.Message(f"dot/{i}", d.replace(b"\n", f"\nX-Test-Id: dot/{i}"
                                              "\n".encode(), 1)
                        if not d.startswith(b".") else
                        d.replace(b"\nSubject", f"\nX-Test-Id: dot/{i}\n"
                                  "Subject".encode(), 1))
         for i, d in enumerate(DOTTY)]
    # POP3 always ends the last line: what maild fetches has the LF
    fetched = [corpus.Message(x.id, x.data if x.data.endswith(b"\n")
                              else x.data + b"\n") for x in m]
    for x in fetched:
        assert corpus.test_id(x.data) == x.id, x.data
    with pop3(m) as src, fakelmtp.FakeLMTP() as lm:
        wire_case(t, src, lm, fetched)
        assert_fake_got(lm, fetched)


@tap.test(name="the wire (IMAP source): a last line without LF gets CRLF "
          "before the final dot")
def wire_imap(t):
    with fakeimap.FakeIMAP(tls=certs.get().server) as src, \
            fakelmtp.FakeLMTP() as lm:
        m = []
        for i, d in enumerate(DOTTY):
            data = d.replace(b"Subject", f"X-Test-Id: dotimap/{i}\nSubject"
                             .encode(), 1)
            m.append(corpus.Message(f"dotimap/{i}", data))
            src.add(data)
        wire_case(t, src, lm, m, protocol="imap")
        # on LMTP's wire every line ends: so does the one that did not
        assert_fake_got(lm, [corpus.Message(x.id, x.data if
                                            x.data.endswith(b"\n") else
                                            x.data + b"\n") for x in m])


@tap.test(name="PIPELINING offered: MAIL, RCPT, DATA sent together; not "
          "offered: one at a time")
def pipelining(t):
    m = msgs("pipe", 4)
    for offered in (True, False):
        sub = t.tmp / str(offered)
        sub.mkdir()
        with pop3(m) as src, fakelmtp.FakeLMTP(pipelining=offered) as lm:
            delivery.Account(t, src, f"127.0.0.1:{lm.port}",
                             base=sub).once(expect_rc=0)
            assert_fake_got(lm, m)
            assert len(lm.connections) == 1, lm.connections
            c = lm.connections[0]
            verbs = c.verbs()
            assert verbs[:1] == ["LHLO"], verbs
            assert verbs[1:] == ["MAIL", "RCPT", "DATA"] * 4, verbs
            piped = {x.verb for x in c.pipelined()}
            if offered:
                assert {"RCPT", "DATA"} <= piped, piped
            else:
                assert not piped, f"pipelined without PIPELINING: {piped}"


@tap.test(name="one LMTP connection for many batches; a server closing it "
          "between messages gets a new one")
def connection_reuse(t):
    m = msgs("reuse", 600, seed=3)
    with pop3(m) as src, fakelmtp.FakeLMTP() as lm:
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}",
                             add_headers=mt.Raw('{"no"}'))
        a.once(expect_rc=0, within=60)
        assert_fake_got(lm, m)
        assert len(lm.connections) == 1, \
            f"{len(lm.connections)} LMTP connections for 600 messages"
    m = msgs("reclose", 6)
    # closes the connection after each message's 250, as the next MAIL
    # goes out: that MAIL is tried again on a new connection
    with pop3(m) as src, fakelmtp.FakeLMTP(handlers={"DOT": lambda c, x: [
            b"250 2.0.0 Saved\r\n", Sleep(0.05), DROP]}) as lm:
        sub = t.tmp / "closing"
        sub.mkdir()
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}", base=sub)
        a.once(expect_rc=0, within=60)
        assert_fake_got(lm, m)
        assert src.mailbox == []
        assert len(lm.connections) == 6, lm.connections
    # but a connection lost once the message went out is not tried again:
    # the server may have it (a second copy is what X-Maild-Id is for)
    with pop3(m[:2]) as src, fakelmtp.FakeLMTP(handlers={
            "DOT": lambda c, x: [DROP]}) as lm:
        sub = t.tmp / "lost"
        sub.mkdir()
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}", base=sub)
        a.once(expect_rc=mt.EX_TEMPFAIL, within=60)
        assert len(lm.transactions) == 1, lm.transactions
        assert len(src.mailbox) == 2


@tap.test(name="three accounts, one LMTP destination: one connection, one "
          "message at a time; another recipient: its own connection")
def shared_connection(t):
    boxes = [msgs(f"shared{i}", 40, seed=20 + i) for i in range(4)]
    with pop3(boxes[0]) as s0, pop3(boxes[1]) as s1, pop3(boxes[2]) as s2, \
            pop3(boxes[3]) as s3, fakelmtp.FakeLMTP() as lm:
        dest = f"127.0.0.1:{lm.port}"
        accts = [delivery.lmtp_account(f"a{i}", src, dest,
                                       lmtp_recipient="one")
                 for i, src in enumerate((s0, s1, s2))]
        accts.append(delivery.lmtp_account("a3", s3, dest,
                                           lmtp_recipient="other"))
        cfg = mt.write_config(t.tmp / "maild.conf", accts,
                              state_dir=t.tmp / "state", timeout=10)
        r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=120)
        assert r.rc == 0, mt.tail(r.stderr)
        assert_fake_got(lm, [m for b in boxes for m in b])
        by_rcpt = {}
        for c in lm.connections:
            rcpts = {x.rcpts[0] for x in c.txns}
            assert len(rcpts) == 1, f"one connection, recipients {rcpts}"
            by_rcpt.setdefault(rcpts.pop(), []).append(c)
        assert {k: len(v) for k, v in by_rcpt.items()} == \
            {b"<one>": 1, b"<other>": 1}, by_rcpt


@tap.test(name="X-Maild-Id: the same for a message at every attempt, "
          "different for other messages and accounts")
def maild_id_stable(t):
    m = msgs("idstable", 4)

    def box():
        return [fakepop3.Msg(x.data, uidl=f"u{i}") for i, x in enumerate(m)]
    with pop3(box()) as src, fakelmtp.FakeLMTP(handlers={
            "DOT": fakelmtp.nth({1, 2, 3, 4}, b"451 4.3.0 later\r\n")}) as lm:
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}")
        a.once(expect_rc=mt.EX_TEMPFAIL)
        first = [delivery.maild_id(x.data) for x in lm.transactions]
        lm.handlers.clear()
        a.once(expect_rc=0)
        second = [delivery.maild_id(x.data) for x in lm.transactions[4:]]
        assert first == second, (first, second)
        assert len(set(first)) == 4
    # another account, the same UIDLs: other ids
    with pop3(box()) as src2, fakelmtp.FakeLMTP() as lm2:
        sub = t.tmp / "other"
        sub.mkdir()
        b = delivery.Account(t, src2, f"127.0.0.1:{lm2.port}", name="other",
                             base=sub)
        b.once(expect_rc=0)
        third = {delivery.maild_id(x.data) for x in lm2.transactions}
        assert len(third) == 4 and not third & set(first), \
            "two accounts gave the same ids"


# ---------------------------------------------------------------------------
# the configuration

@tap.test(name="configuration errors: file:line and what to do, exit 78")
def config_errors(t):
    mt.require_maild()
    base = {"name": "c", "host": "127.0.0.1", "port": 995, "user": "u",
            "password": "p"}
    cases = [
        ({"deliver": "lmtp"}, "deliver = lmtp needs lmtp"),
        ({"deliver": "mda"}, "deliver = mda needs mda"),
        ({"deliver": "smtp", "maildir": "/tmp/x"}, "deliver"),
        ({"deliver": "lmtp", "lmtp": "unix:/x", "maildir": "/tmp/m"},
         "maildir is for deliver = maildir"),
        ({"maildir": "/tmp/m", "lmtp": "unix:/x"},
         "need deliver = lmtp"),
        ({"deliver": "lmtp", "lmtp": "nocolon"}, "host:port"),
        ({"deliver": "lmtp", "lmtp": "unix:relative/sock"},
         "absolute path"),
        ({"deliver": "lmtp", "lmtp": "127.0.0.1:99999"}, "port"),
        ({"deliver": "lmtp", "lmtp": "127.0.0.1:0"}, "port"),
        ({"deliver": "lmtp", "lmtp": "127.0.0.1:24",
          "lmtp_recipient": "<a@b>"}, "without <>"),
        ({"deliver": "lmtp", "lmtp": "127.0.0.1:24",
          "lmtp_recipient": "a" * 3000}, "lmtp-recipient"),
        ({"deliver": "mda", "mda": "procmail", "lmtp_recipient": "x"},
         "lmtp-recipient is for deliver = lmtp"),
        ({"deliver": "mda", "mda": ""}, "must not be empty"),
        ({"maildir": "/tmp/m", "dedupe": "subject"}, "dedupe"),
        ({"maildir": "/tmp/m", "dedupe": "message-id",
          "dedupe_days": 0}, "dedupe-days"),
        ({"maildir": "/tmp/m", "on_new_mail": ""}, "must not be empty"),
    ]
    for i, (opts, words) in enumerate(cases):
        a = dict(base)
        a.update(opts)
        cfg = mt.write_config(t.tmp / f"c{i}.conf", [a],
                              state_dir=t.tmp / "state")
        for flags in (["-n"], ["--once"]):
            r = mt.run_maild([*flags, "-f", cfg], timeout=20)
            assert r.rc == mt.EX_CONFIG, \
                f"{opts}: exit {r.rc}, want 78: {r.stderr[-300:]}"
            assert words in r.stderr, f"{opts}: {words!r} not in " \
                f"{r.stderr[-400:]!r}"
            assert re.search(r"c%d\.conf:\d+" % i, r.stderr), r.stderr
    # and good ones pass -n
    good = [{"deliver": "lmtp", "lmtp": "unix:/run/dovecot/lmtp"},
            {"deliver": "lmtp", "lmtp": "[::1]:24",
             "lmtp_recipient": "alice@example.org"},
            {"deliver": "mda", "mda": "/usr/lib/dovecot/dovecot-lda -d u"},
            {"maildir": "/tmp/m", "dedupe": "message-id",
             "dedupe_days": 7, "on_new_mail": "notmuch new"}]
    for i, opts in enumerate(good):
        a = dict(base)
        a.update(opts)
        cfg = mt.write_config(t.tmp / f"g{i}.conf", [a],
                              state_dir=t.tmp / "state")
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == 0, f"{opts}: exit {r.rc}: {r.stderr[-400:]}"


# ---------------------------------------------------------------------------
# Dovecot: LMTP with Sieve

DOVECOT_USERS = {"src": None, "srcimap": None, "dst": None, "dst2": None,
                 "dup": None, "nodup": None, "src550": None, "srcb": None,
                 "srcchk": None}


def dv(t):
    srv = t.fx.get(t)
    return srv


def src_pop3(srv, user):
    return ("127.0.0.1", srv.pop3s_port, user, srv.password, srv.ca)


def src_imap(srv, user):
    return ("127.0.0.1", srv.imaps_port, user, srv.password, srv.ca)


def folder_contents(srv, user, folders):
    return {f: srv.mailbox(user, None if f == "INBOX" else f)
            for f in folders}


def sieve_lists_case(t, src_user, src, dest, count, protocol="pop3"):
    srv = dv(t)
    base = corpus.generate(seed=1414, count=count, prefix=src_user,
                           max_large=8)
    tagged = delivery.with_list_id(base, LISTS)
    if protocol == "pop3":
        srv.set_mailbox(src_user, [m for m, _ in tagged])
    else:
        srv.set_mailbox(src_user, [])
        srv.add_messages(src_user, [m for m, _ in tagged], new=False)
    dst = "dst" if dest == "unix" else "dst2"
    srv.set_mailbox(dst, [])
    srv.set_sieve(dst, SIEVE_LISTS)
    lmtp = f"unix:{srv.lmtp_socket}" if dest == "unix" else \
        f"127.0.0.1:{srv.lmtp_port}"
    acct = delivery.lmtp_account("lists", src, lmtp, lmtp_recipient=dst,
                                 protocol=protocol)
    cfg = mt.write_config(t.tmp / "maild.conf", [acct],
                          state_dir=t.tmp / "state", timeout=30)
    r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=600)
    assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
    s = r.account("lists")
    assert s["fetched"] == count, s["line"]
    tap.diag(f"{count} messages ({corpus.total_bytes(base)} bytes) from "
             f"{protocol.upper()} over LMTP ({dest}) in {r.seconds:.1f} s")
    got = folder_contents(srv, dst, set(FOLDER.values()))
    for lst, folder in FOLDER.items():
        want = [m for m, x in tagged if x == lst]
        delivery.assert_delivered(got[folder], want, f"folder {folder}")
    ids = [delivery.maild_id(d) for f in got.values() for d in f]
    assert len(set(ids)) == count, "X-Maild-Id not unique"
    left = srv.mailbox(src_user)
    assert not left, f"{len(left)} messages left on the source server"
    r = mt.run_maild(["--once", "-f", cfg], timeout=120)
    assert r.rc == 0 and r.account("lists")["fetched"] == 0, r.stderr
    assert len(os.listdir(t.tmp / "state" / "lists.spool" / "tmp")) == 0, \
        "spool files left"


@tap.test(timeout=900, name=f"Dovecot: Sieve files {BIG} messages by "
          "List-Id into folders byte-exact (POP3 source, LMTP over the "
          "unix socket)")
def dovecot_sieve_pop3_unix(t):
    srv = dv(t)
    sieve_lists_case(t, "src", src_pop3(srv, "src"), "unix", BIG)


@tap.test(timeout=900, name="Dovecot: the same from an IMAP source, LMTP "
          "over TCP")
def dovecot_sieve_imap_tcp(t):
    srv = dv(t)
    if not srv.imap_enabled:
        t.skip("no dovecot-imapd")
    sieve_lists_case(t, "srcimap", src_imap(srv, "srcimap"), "tcp", 300,
                     protocol="imap")


@tap.test(name="Dovecot: with the Sieve duplicate snippet a message that "
          "comes twice (state lost) is stored once; without it, twice")
def dovecot_sieve_duplicate(t):
    srv = dv(t)
    m = msgs("dupl", 30)
    srv.set_mailbox("src", m)
    srv.set_mailbox("srcb", m)
    srv.set_mailbox("dup", [])
    srv.set_mailbox("nodup", [])
    srv.set_sieve("dup", delivery.SIEVE_DUPLICATE)
    srv.set_sieve("nodup", 'require ["fileinto"];\nkeep;\n')
    accts = [delivery.lmtp_account(u, src_pop3(srv, s),
                                   f"unix:{srv.lmtp_socket}",
                                   lmtp_recipient=u, keep=True)
             for u, s in (("dup", "src"), ("nodup", "srcb"))]
    cfg = mt.write_config(t.tmp / "maild.conf", accts,
                          state_dir=t.tmp / "state", timeout=30)
    for run in range(2):
        r = mt.run_maild(["--once", "-f", cfg], timeout=120)
        assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
        for u in ("dup", "nodup"):
            assert r.account(u)["fetched"] == 30, r.account(u)["line"]
            # as if maild had crashed between the 250s and its records
            mt.remove_state(t.tmp / "state", u)
    delivery.assert_delivered(srv.mailbox("dup"), m, "with the snippet")
    got = srv.mailbox("nodup")
    assert len(got) == 60, f"without the snippet: {len(got)} messages"


@tap.test(name="Dovecot: two accounts, one recipient: Sieve's duplicate "
          "database keeps every X-Maild-Id (deliveries one at a time)")
def dovecot_two_accounts_duplicate(t):
    srv = dv(t)
    m1, m2 = msgs("two1", 80, seed=41), msgs("two2", 80, seed=42)
    srv.set_mailbox("src", m1)
    srv.set_mailbox("srcb", m2)
    srv.set_mailbox("dup", [])
    srv.set_sieve("dup", delivery.SIEVE_DUPLICATE)
    accts = [delivery.lmtp_account(u, src_pop3(srv, u),
                                   f"unix:{srv.lmtp_socket}",
                                   lmtp_recipient="dup", keep=True)
             for u in ("src", "srcb")]
    cfg = mt.write_config(t.tmp / "maild.conf", accts,
                          state_dir=t.tmp / "state", timeout=30)
    for run in range(2):
        r = mt.run_maild(["--once", "-f", cfg], timeout=120)
        assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
        for u in ("src", "srcb"):
            mt.remove_state(t.tmp / "state", u)
    delivery.assert_delivered(srv.mailbox("dup"), m1 + m2,
                              "after two runs that lost their state")


@tap.test(name="Dovecot: an unknown recipient (550) keeps every message on "
          "the server and logs Dovecot's words; fixed, all come once")
def dovecot_unknown_recipient(t):
    srv = dv(t)
    m = msgs("u550", 5)
    srv.set_mailbox("src550", m)
    srv.set_mailbox("dst", [])
    srv.set_sieve("dst", "keep;\n")
    a = delivery.lmtp_account("u", src_pop3(srv, "src550"),
                              f"127.0.0.1:{srv.lmtp_port}",
                              lmtp_recipient="nosuchuser")
    cfg = mt.write_config(t.tmp / "maild.conf", [a],
                          state_dir=t.tmp / "state", timeout=30)
    r = mt.run_maild(["--once", "-f", cfg], timeout=120)
    assert r.rc == mt.EX_UNAVAILABLE, f"exit {r.rc}"
    err = r.account("u")["error"]
    assert "refused 5 messages" in err and "550" in err, err
    assert "doesn't exist" in err, err
    assert len(srv.mailbox("src550")) == 5
    assert srv.mailbox("dst") == []
    a["lmtp_recipient"] = "dst"
    cfg = mt.write_config(t.tmp / "maild.conf", [a],
                          state_dir=t.tmp / "state", timeout=30)
    r = mt.run_maild(["--once", "-f", cfg], timeout=120)
    assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
    delivery.assert_delivered(srv.mailbox("dst"), m)
    assert srv.mailbox("src550") == []



@tap.test(name="Dovecot: --check asks its LMTP about the recipient: a "
          "known one is ok, an unknown one FAILED in Dovecot's words; "
          "nothing delivered")
def dovecot_check(t):
    srv = dv(t)
    srv.set_mailbox("srcchk", msgs("dchk", 2))
    srv.set_mailbox("dst", [])
    for rcpt, rc, want in (
            ("dst", 0, r"lmtp\s+ok\s+unix:\S+ takes mail for dst"),
            ("nosuchuser", mt.EX_IOERR,
             r"lmtp\s+FAILED\s+the recipient: 550 .*doesn't exist")):
        a = delivery.lmtp_account("c", src_pop3(srv, "srcchk"),
                                  f"unix:{srv.lmtp_socket}",
                                  lmtp_recipient=rcpt)
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state", timeout=30)
        r = mt.run_maild(["--check", "-f", cfg], timeout=60)
        t.attach(f"--check, recipient {rcpt}", r.stdout + r.stderr)
        assert r.rc == rc, f"exit {r.rc}:\n{r.stdout}{r.stderr}"
        assert re.search(want, r.stdout), f"no /{want}/ in:\n{r.stdout}"
    assert srv.mailbox("dst") == []
    assert len(srv.mailbox("srcchk")) == 2


if __name__ == "__main__":
    tap.main(fixture=functools.partial(dovecot.Lazy, DOVECOT_USERS, lmtp=True))
