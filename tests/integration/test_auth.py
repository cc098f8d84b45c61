#!/usr/bin/env python3
"""test_auth.py: how maild logs in (auth = ...).

Against a private Dovecot (passwd-file with {PLAIN} passwords and
auth_mechanisms = plain login cram-md5 apop xoauth2 oauthbearer, so every
method works for real; with xoauth2/oauthbearer Dovecot checks the token
as the password): each auth method logs in and fetches, Dovecot's log
names the mechanism; auth = auto takes CRAM-MD5; XOAUTH2's response, and
a long OAUTHBEARER one, go after the "+" rather than as the SASL initial
response (Microsoft's POP3 wants it so); a refused XOAUTH2 token's JSON error
is answered and reported.

Against the fake server, which records every line and each login attempt
(mechanism, initial response or not, decoded responses): the order of
auth = auto (CRAM-MD5 > PLAIN > LOGIN > USER), never a cleartext method on
an unencrypted connection, the SASL initial response (RFC 5034) and the
continuations of LOGIN and CRAM-MD5, the 255-byte limit of the AUTH line,
refused OAuth tokens (Gmail's "+ base64(JSON)" step), APOP with and
without a greeting timestamp, a configured method the server does not
offer (the message names it and lists the methods the server offers),
and a refused login that must not be retried with another method.
With PIPELINING offered, every method waits for the answer to each login
command before sending the next command, against a server that drops
whatever follows a successful login (as Courier does); UIDL and LIST
still go together after it.
"""

import functools
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

ALL_MECHS = "plain login cram-md5 apop xoauth2 oauthbearer"
# auth = <method> -> the mechanism Dovecot logs ("method=...")
DOVECOT_METHOD = {"user": "PLAIN", "plain": "PLAIN", "login": "LOGIN",
                  "cram-md5": "CRAM-MD5", "apop": "APOP",
                  "xoauth2": "XOAUTH2", "oauthbearer": "OAUTHBEARER"}
LOGIN_VERBS = ("USER", "PASS", "APOP", "AUTH", "SASL-RESPONSE")
LONG_TOKEN = "ya29." + "A1b2C3d4E5" * 40


def oauth_token(auth):
    return f"ya29.{auth}-Token_0123456789abcdef"


# Dovecot's users, made before it starts: its passwd-file driver rereads
# the file at most once a second, so users added on the fly may not exist
# yet when maild logs in.
DOVECOT_USERS = {f"m-{a}": (oauth_token(a) if "oauth" in a
                            else f"pw-{a}-S3cret")
                 for a in list(DOVECOT_METHOD) + ["auto"]}
DOVECOT_USERS["m-longtoken"] = LONG_TOKEN


def msgs(prefix, n=3):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


# ---------------------------------------------------------------------------
# helpers (one shared Dovecot, dovecot.Lazy, started on first use)

def dovecot_log(srv):
    try:
        return srv.log.read_text(errors="replace")
    except OSError:
        return ""


def dovecot_logins(srv, user):
    """The mechanisms of Dovecot's successful logins of user."""
    return re.findall(rf"Login: user=<{re.escape(user)}>, method=([A-Z0-9-]+)",
                      dovecot_log(srv))


def run_once(t, accounts, *flags, limit=30, env=None, **globals_):
    """maild --once on a config of accounts (global options in globals_;
    timeout = 10 unless given); limit bounds the run."""
    cfg = mt.write_config(t.tmp / "maild.conf", accounts,
                          state_dir=t.tmp / "state",
                          **({"timeout": 10} | globals_))
    mt.require_maild()
    return mt.run_maild(["--once", *flags, "-f", cfg], timeout=limit,
                        env=env)


def token_command(t, token, name="token"):
    """A password-command printing token (kept in a file: tokens can be
    longer than is nice on a command line)."""
    p = mt.write_file(t.tmp / f"{name}.txt", token + "\n")
    return f"cat {p}"


def dovecot_account(t, srv, user, auth, password=None, **extra):
    a = mt.account("dv", "127.0.0.1", srv.pop3s_port, user, password,
                   t.tmp / "Maildir", keep=True, ca_file=srv.ca, auth=auth,
                   **extra)
    if password is None and "password_command" not in extra:
        a["password"] = srv.users[user]
    return a


def check_dovecot_login(t, srv, user, auth, r, expect_mech):
    assert r.rc == 0, f"exit {r.rc}: {r.account('dv')['error']}"
    srv.wait_idle()
    mechs = dovecot_logins(srv, user)
    t.note(f"dovecot logins of {user}: {mechs}")
    assert mechs == [expect_mech], (f"auth = {auth}: Dovecot logged "
                                    f"method={mechs}, expected "
                                    f"[{expect_mech}]")


# ---------------------------------------------------------------------------
# real Dovecot: every method

def _dovecot_method_test(auth):
    def test(t):
        srv = t.fx.get(t)
        user = f"m-{auth}"
        m = msgs(f"dv-{auth}")
        extra = {}
        if auth in ("xoauth2", "oauthbearer"):
            extra["password_command"] = token_command(t, oauth_token(auth))
        srv.set_mailbox(user, m)
        r = run_once(t, [dovecot_account(t, srv, user, auth, **extra)], "-v")
        check_dovecot_login(t, srv, user, auth, r, DOVECOT_METHOD[auth])
        assert re.search(rf"account=dv (?:login={re.escape(auth)}|logged in "
                         rf"\({re.escape(auth)}\))", r.stderr), \
            f"maild -v does not say it logged in with {auth}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert srv.users[user] not in r.stderr, "secret in the log"
    test.__name__ = f"test_dovecot_auth_{auth}"
    return test


for _auth in DOVECOT_METHOD:
    tap.test(name=f"dovecot: auth = {_auth} logs in (Dovecot logs "
             f"method={DOVECOT_METHOD[_auth]}) and fetches")(
        _dovecot_method_test(_auth))


@tap.test(name="dovecot: auth = auto picks CRAM-MD5 among PLAIN LOGIN "
          "CRAM-MD5")
def test_dovecot_auto(t):
    srv = t.fx.get(t)
    user = "m-auto"
    m = msgs("dv-auto")
    srv.set_mailbox(user, m)
    r = run_once(t, [dovecot_account(t, srv, user, "auto")], "-v")
    check_dovecot_login(t, srv, user, "auto", r, "CRAM-MD5")
    mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="dovecot: xoauth2 with a 400-byte token (no initial "
          "response) logs in")
def test_dovecot_long_token(t):
    srv = t.fx.get(t)
    user = "m-longtoken"
    token = LONG_TOKEN
    m = msgs("dv-long")
    srv.set_mailbox(user, m)
    r = run_once(t, [dovecot_account(
        t, srv, user, "xoauth2",
        password_command=token_command(t, token))], "-vv")
    check_dovecot_login(t, srv, user, "xoauth2", r, "XOAUTH2")
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert token not in r.stderr, "token in the -vv log"


@tap.test(name="dovecot: refused xoauth2 token: JSON error answered and "
          "reported, exit 77")
def test_dovecot_xoauth2_refused(t):
    if dovecot.find_dovecot() is None:
        t.skip("dovecot is not installed (dovecot-pop3d)")
    # its own Dovecot: a failed login makes Dovecot delay the next logins
    # from the same address by seconds
    srv = dovecot.Dovecot(certs.get(), auth_mechanisms=ALL_MECHS,
                          extra_conf="auth_failure_delay = 0")
    user = "m-refused"
    srv.add_user(user, "the-right-token")
    with srv:
        srv.set_mailbox(user, msgs("dv-refused"))
        r = run_once(t, [dovecot_account(
            t, srv, user, "xoauth2",
            password_command=token_command(t, "an-expired-token"))], "-vv")
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
        err = r.account("dv")["error"] or ""
        # Dovecot says {"status":"401","schemes":"bearer","scope":"mail"}
        assert "401" in err and "bearer" in err, \
            f"the server's JSON error is not in the error: {err!r}"
        assert "password-command" in err, f"no hint what to fix: {err!r}"
        assert "an-expired-token" not in r.stderr, "token in the log"
        assert mt.read_maildir(t.tmp / "Maildir") == []
        srv.wait_idle()
        log = dovecot_log(srv)
        assert "auth failed" in log and "method=XOAUTH2" in log, \
            "Dovecot did not see a failed XOAUTH2 login" + srv.log_tail()
        assert "Login: user=" not in log


# ---------------------------------------------------------------------------
# fake server: what exactly goes over the wire

def fake(messages=(), tls=True, **kw):
    if tls:
        kw["tls"] = certs.get().server
    return fakepop3.FakePOP3(messages, **kw)


def fake_account(t, srv, tls=True, **extra):
    a = mt.account("fake", "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=True,
                   ca_file=certs.get().ca if tls else None)
    if not tls:
        a.update(tls=mt.Raw("none"), allow_plaintext=True)
    a.update(extra)
    return a


def auths(srv):
    return [a for c in srv.connections for a in c.auths]


def login_lines(srv):
    return [c for c in srv.commands() if c.verb in LOGIN_VERBS]


def check_one_login(srv, mech, ok=True):
    got = auths(srv)
    assert [a.mech for a in got] == [mech], \
        f"login attempts {got}, expected one with {mech}"
    assert got[0].ok is ok, f"{got[0]} (expected ok={ok})"
    return got[0]


def _auto_test(offered, expect):
    def test(t):
        m = msgs(f"auto-{expect}")
        with fake(m, sasl=offered) as srv:
            r = run_once(t, [fake_account(t, srv)])
            assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
            check_one_login(srv, expect)
            mt.assert_maildir(t.tmp / "Maildir", m)
    return test


for _offered, _expect in ((["PLAIN", "LOGIN", "CRAM-MD5"], "CRAM-MD5"),
                          (["LOGIN", "PLAIN", "XOAUTH2"], "PLAIN"),
                          (["LOGIN"], "LOGIN"),
                          ([], "USER")):
    tap.test(name=f"auto over TLS: SASL {' '.join(_offered) or '(none)'} "
             f"-> {_expect}")(_auto_test(_offered, _expect))


@tap.test(name="auto without TLS: only USER/PLAIN/LOGIN offered -> refused "
          "(77), nothing sent")
def test_auto_plaintext_refused(t):
    with fake(msgs("clear"), tls=False, sasl=["PLAIN", "LOGIN"]) as srv:
        r = run_once(t, [fake_account(t, srv, tls=False)])
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
        sent = login_lines(srv)
        assert not sent, ("a cleartext login went out unencrypted: "
                          f"{[c.line for c in sent]}")
        assert srv.password not in "".join(
            c.line.decode("latin-1") for c in srv.commands())
        err = r.account("fake")["error"] or ""
        assert "unencrypted" in err or "TLS" in err, err
        assert mt.read_maildir(t.tmp / "Maildir") == []


@tap.test(name="auto without TLS: CRAM-MD5 offered -> CRAM-MD5")
def test_auto_plaintext_cram(t):
    m = msgs("clearcram")
    with fake(m, tls=False, sasl=["PLAIN", "LOGIN", "CRAM-MD5"]) as srv:
        r = run_once(t, [fake_account(t, srv, tls=False)])
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        check_one_login(srv, "CRAM-MD5")
        assert "USER" not in srv.verbs() and "PASS" not in srv.verbs()
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="auto without TLS: APOP greeting, no SASL -> APOP")
def test_auto_plaintext_apop(t):
    m = msgs("clearapop")
    with fake(m, tls=False, apop=True, sasl=["PLAIN"]) as srv:
        r = run_once(t, [fake_account(t, srv, tls=False)])
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        check_one_login(srv, "APOP")
        assert "PASS" not in srv.verbs()
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="plain: initial response on the AUTH line (RFC 5034)")
def test_plain_initial_response(t):
    m = msgs("plainir")
    with fake(m, sasl=["PLAIN"]) as srv:
        r = run_once(t, [fake_account(t, srv, auth="plain")], "-vv")
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        a = check_one_login(srv, "PLAIN")
        assert a.ir, "AUTH PLAIN without the initial response"
        assert a.responses == [f"\0{srv.user}\0{srv.password}".encode()], \
            a.responses
        assert srv.verbs().count("SASL-RESPONSE") == 0
        b64 = fakepop3.b64(f"\0{srv.user}\0{srv.password}")
        assert b64 not in r.stderr, "the base64 PLAIN response is in the log"
        mt.assert_maildir(t.tmp / "Maildir", m)


def _plain_length_test(pwlen):
    def test(t):
        # "AUTH PLAIN " is 11 octets and base64("\0fakeuser\0" + password)
        # 4 * ceil((10 + pwlen) / 3): with 173 the line would be 255 octets
        # plus CRLF, 2 more than RFC 2449 allows for a command line, so the
        # response must go after a "+ " instead
        password = ("P4ss-" * 80)[:pwlen]
        m = msgs(f"plainlen{pwlen}")
        with fake(m, sasl=["PLAIN"], password=password) as srv:
            r = run_once(t, [fake_account(t, srv, auth="plain")])
            assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
            a = check_one_login(srv, "PLAIN")
            # (a response to a "+ " is no command: no such limit)
            long = [len(c.line) + 2 for c in srv.commands()
                    if not c.sasl and len(c.line) + 2 > 255]
            assert not long, (f"a command line of {long[0]} octets with "
                              "CRLF (RFC 2449 / 5034: at most 255)")
            assert a.responses == [f"\0{srv.user}\0{password}".encode()]
            mt.assert_maildir(t.tmp / "Maildir", m)
    return test


for _n in (173, 300):
    tap.test(name=f"plain with a {_n}-byte password: the AUTH line stays "
             "within 255 octets with CRLF (else no initial response)")(
        _plain_length_test(_n))


@tap.test(name="login: Username:/Password: continuations")
def test_login_continuations(t):
    m = msgs("login")
    with fake(m, sasl=["LOGIN"]) as srv:
        r = run_once(t, [fake_account(t, srv, auth="login")], "-vv")
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        a = check_one_login(srv, "LOGIN")
        assert a.responses == [srv.user.encode(), srv.password.encode()], \
            a.responses
        assert fakepop3.b64(srv.password) not in r.stderr, \
            "the base64 password is in the log"
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="cram-md5: challenge answered with the HMAC")
def test_cram_md5(t):
    m = msgs("cram")
    with fake(m, sasl=["CRAM-MD5"]) as srv:
        r = run_once(t, [fake_account(t, srv, auth="cram-md5")])
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        a = check_one_login(srv, "CRAM-MD5")
        assert not a.ir
        mt.assert_maildir(t.tmp / "Maildir", m)


def _oauth_test(mech, token_len):
    def test(t):
        token = ("ya29." + "x9Y8z7W6v5" * 60)[:token_len]
        m = msgs(f"{mech}-{token_len}")
        with fake(m, sasl=[mech], tokens=[token]) as srv:
            r = run_once(t, [fake_account(
                t, srv, auth=mech.lower(), password=None,
                password_command=token_command(t, token))], "-vv")
            assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
            a = check_one_login(srv, mech)
            assert a.token == token, f"token {a.token!r}"
            assert a.user == srv.user, a.user
            auth_lines = [c.line for c in srv.commands()
                          if c.verb == "AUTH"]
            too_long = [ln for ln in auth_lines if len(ln) + 2 > 255]
            assert not too_long, (f"AUTH line of {len(too_long[0]) + 2} "
                                  "bytes (RFC 5034: at most 255)")
            if mech == "XOAUTH2":
                # Microsoft's POP3 wants it after the "+", whatever size
                assert not a.ir, "XOAUTH2 sent as initial response"
            elif token_len < 100:
                assert a.ir, "short token: no initial response"
            else:
                assert not a.ir, "long token: sent as initial response"
                assert srv.verbs().count("SASL-RESPONSE") == 1
            if mech == "OAUTHBEARER":
                got = a.responses[0]
                assert got.startswith(f"n,a={srv.user},\1".encode()), got
                assert b"\1host=127.0.0.1\1" in got, got
                assert f"\1port={srv.port}\1".encode() in got, got
            assert token not in r.stderr, "token in the -vv log"
            mt.assert_maildir(t.tmp / "Maildir", m)
    return test


for _mech in ("XOAUTH2", "OAUTHBEARER"):
    for _n in (40, 300):
        tap.test(name=f"{_mech.lower()}: {_n}-byte token "
                 f"{'with' if _n < 100 and _mech != 'XOAUTH2' else 'without'}"
                 " initial response")(
            _oauth_test(_mech, _n))


def _oauth_refused_test(mech, ack):
    def test(t):
        with fake(msgs("refused"), sasl=[mech], tokens=["good"]) as srv:
            r = run_once(t, [fake_account(
                t, srv, auth=mech.lower(), password=None,
                password_command=token_command(t, "stale-token-123"))],
                "-vv")
            assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
            a = check_one_login(srv, mech, ok=False)
            assert a.error_sent
            assert a.responses[-1] == ack, \
                (f"answer to the JSON error challenge: "
                 f"{a.responses[-1]!r}, expected {ack!r}")
            err = r.account("fake")["error"] or ""
            want = "401" if mech == "XOAUTH2" else "invalid_token"
            assert want in err, f"the JSON error ({want}) is not reported: " \
                f"{err!r}"
            assert "stale-token-123" not in r.stderr, "token in the log"
            assert mt.read_maildir(t.tmp / "Maildir") == []
            assert len(srv.connections) == 1
    return test


tap.test(name="xoauth2 refused: '+ base64(JSON)' answered with an empty "
         "line, JSON error reported, 77")(_oauth_refused_test("XOAUTH2", b""))
tap.test(name="oauthbearer refused: JSON challenge answered with ^A, "
         "error reported, 77")(_oauth_refused_test("OAUTHBEARER", b"\1"))


@tap.test(name="apop: digest of the greeting timestamp")
def test_apop(t):
    m = msgs("apop")
    with fake(m, apop=True) as srv:
        r = run_once(t, [fake_account(t, srv, auth="apop")], "-vv")
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        check_one_login(srv, "APOP")
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="apop: greeting without timestamp -> clear error, 77, no "
          "login sent")
def test_apop_no_timestamp(t):
    with fake(msgs("apopnots"), apop=True,
              greeting=b"+OK POP3 server ready\r\n") as srv:
        r = run_once(t, [fake_account(t, srv, auth="apop")])
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
        err = r.account("fake")["error"] or ""
        assert "APOP" in err and "timestamp" in err, err
        assert not login_lines(srv), [c.line for c in login_lines(srv)]


@tap.test(name="apop: a timestamp without '@' is no timestamp")
def test_apop_bad_timestamp(t):
    with fake(msgs("apopbad"), apop=True,
              greeting=b"+OK ready <1896.697170952>\r\n") as srv:
        r = run_once(t, [fake_account(t, srv, auth="apop")])
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
        assert not login_lines(srv), [c.line for c in login_lines(srv)]


def not_offered(t, auth, **kw):
    """maild with auth = auth against a fake server (kw) that does not
    offer it: 77, no login line sent; the error."""
    with fake(msgs(f"notoffered-{auth}"), **kw) as srv:
        r = run_once(t, [fake_account(t, srv, auth=auth)])
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
        assert not login_lines(srv), [c.line for c in login_lines(srv)]
        return r.account("fake")["error"] or ""


@tap.test(name="auth = cram-md5 not in the server's SASL list -> 77, "
          "nothing sent, the message names it and lists what is offered")
def test_method_not_offered(t):
    err = not_offered(t, "cram-md5", sasl=["PLAIN", "LOGIN"])
    want = ("cannot log in: the server does not offer CRAM-MD5 (it "
            "offers: USER, PLAIN, LOGIN); set auth to one of them, or "
            "remove auth to let maild choose")
    assert err == want, f"{err!r}, expected {want!r}"


@tap.test(name="auth = xoauth2, the server offers APOP and OAUTHBEARER "
          "only: both listed")
def test_method_not_offered_apop(t):
    err = not_offered(t, "xoauth2", apop=True,
                      capa=["UIDL", "SASL OAUTHBEARER"])
    assert "does not offer XOAUTH2 (it offers: APOP, OAUTHBEARER); " \
        in err, err


@tap.test(name="auth = plain, CAPA lists no login method at all: said so")
def test_method_not_offered_none(t):
    err = not_offered(t, "plain", capa=["UIDL", "SASL"])
    want = ("cannot log in: the server does not offer PLAIN, nor any "
            "other login method in its CAPA reply")
    assert err == want, f"{err!r}, expected {want!r}"


@tap.test(name="auth = user with SASL offered: USER/PASS")
def test_explicit_user(t):
    m = msgs("explicituser")
    with fake(m, sasl=["PLAIN", "CRAM-MD5"]) as srv:
        r = run_once(t, [fake_account(t, srv, auth="user")])
        assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
        check_one_login(srv, "USER")
        mt.assert_maildir(t.tmp / "Maildir", m)


def assert_login_lock_step(conn):
    """Nothing went behind a login command before its answer: every
    command up to the first one after the login (UIDL) waited for the
    answer to the one before; then UIDL and LIST went together."""
    cmds = conn.commands
    login = [c.index for c in cmds if c.verb in LOGIN_VERBS]
    assert login, f"no login: {conn.verbs()}"
    piped = {c.index for c in conn.pipelined()}
    early = [c.line for c in cmds[:login[-1] + 2]
             if c.index in piped or c.dropped]
    assert not early, ("sent before the answer to the login command "
                       f"before it: {early} (all: {conn.verbs()})")
    after = cmds[login[-1] + 1:login[-1] + 3]
    assert [c.verb for c in after] == ["UIDL", "LIST"], conn.verbs()
    assert after[1].index in piped, \
        "UIDL and LIST are no longer pipelined in the transaction state"


def _handoff_test(auth, mech, kw0, extra0):
    def test(t):
        m = msgs(f"handoff-{auth}")
        kw, extra = dict(kw0), dict(extra0)
        if "oauth" in auth:
            kw["tokens"] = [oauth_token(auth)]
            extra.update(password=None, password_command=token_command(
                t, oauth_token(auth)))
        with fake(m, sasl=list(fakepop3.SASL_MECHS), handoff=True,
                  **kw) as srv:
            r = run_once(t, [fake_account(t, srv, auth=auth, **extra)],
                         timeout=3)
            assert r.rc == 0, f"exit {r.rc}: {r.account('fake')['error']}"
            check_one_login(srv, mech)
            assert len(srv.connections) == 1, \
                f"{len(srv.connections)} connections"
            assert_login_lock_step(srv.connections[0])
            mt.assert_maildir(t.tmp / "Maildir", m)
    return test


for _auth, _mech, _kw, _extra in (
        ("user", "USER", {}, {}),
        ("apop", "APOP", {"apop": True}, {}),
        ("plain", "PLAIN", {}, {}),
        ("plain", "PLAIN", {"password": "P4ss-" * 60},
         {"password": "P4ss-" * 60}),
        ("login", "LOGIN", {}, {}),
        ("cram-md5", "CRAM-MD5", {}, {}),
        ("xoauth2", "XOAUTH2", {}, {}),
        ("oauthbearer", "OAUTHBEARER", {}, {})):
    tap.test(name=f"auth = {_auth}"
             f"{' (no initial response)' if _extra else ''}, PIPELINING "
             "offered, a server that drops what follows a login (Courier): "
             "nothing sent behind a login command before its answer; UIDL "
             "and LIST together")(_handoff_test(_auth, _mech, _kw, _extra))


def _wrong_password_test(auth, mech, kw):
    def test(t):
        with fake(msgs("wrong"), sasl=["PLAIN", "LOGIN", "CRAM-MD5"],
                  **kw) as srv:
            r = run_once(t, [fake_account(t, srv, auth=auth,
                                          password="Wr0ng-Passw0rd")],
                         "-vv")
            assert r.rc == mt.EX_NOPERM, f"exit {r.rc}, expected 77"
            # one attempt, no fallback to another (weaker) method
            check_one_login(srv, mech, ok=False)
            assert len(srv.connections) == 1, \
                f"{len(srv.connections)} connections"
            err = r.account("fake")["error"] or ""
            assert "Authentication failed" in err, err
            assert "Wr0ng-Passw0rd" not in r.stderr, "password in the log"
            assert mt.read_maildir(t.tmp / "Maildir") == []
    return test


for _auth, _mech, _kw in (("auto", "CRAM-MD5", {}), ("plain", "PLAIN", {}),
                          ("login", "LOGIN", {}), ("user", "USER", {}),
                          ("apop", "APOP", {"apop": True})):
    tap.test(name=f"auth = {_auth}, wrong password: one {_mech} attempt, "
             "77, no fallback")(_wrong_password_test(_auth, _mech, _kw))


if __name__ == "__main__":
    tap.main(fixture=functools.partial(
        dovecot.Lazy, DOVECOT_USERS, auth_mechanisms=ALL_MECHS))
