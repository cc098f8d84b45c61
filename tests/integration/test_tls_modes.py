#!/usr/bin/env python3
"""test_tls_modes.py: tls = implicit | starttls | none, certificate
pinning, tls-verify, client certificates and tls-min-version.

STARTTLS (RFC 2595) against a private Dovecot's plain port, and against
the fake server for what must never happen: the fake server records
whether TLS was up for every line, so "no USER, PASS, AUTH or APOP in
clear text" is checked for a server that does not offer STLS, refuses
it, injects data after its +OK, fails the upgrade or presents a bad
certificate; maild must stop there (one connection, no retry in clear).
(Dovecot counts loopback connections as secure and would accept a
cleartext login, so those checks need the fake server.)

tls = none only with allow-plaintext = yes (otherwise 78 with file:line),
with a warning at every connection.  tls-fingerprint (SHA-256, both
spellings, lists) accepts a pinned self-signed certificate; a wrong pin is
refused (77) with the actual fingerprint in the message; pin +
tls-verify = yes also needs a valid chain and name.  Client certificates
(tls-cert-file / tls-key-file) for Dovecot with ssl_verify_client_cert +
auth_ssl_require_client_cert and for the fake server with CERT_REQUIRED.
tls-min-version = 1.3 against a TLS 1.2-only server is refused.
A TLS 1.2 server's greeting that arrives with its handshake Finished is
read; after STLS, an unasked line there is refused.
"""

import functools
import hashlib
import os
import re
import signal
import socket
import ssl
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

LOGIN_VERBS = ("USER", "PASS", "APOP", "AUTH", "SASL-RESPONSE")


def msgs(prefix, n=3):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


# ---------------------------------------------------------------------------
# helpers

def fingerprint(cert_path, sep=":"):
    """SHA-256 fingerprint of a PEM certificate, "AB:CD:..." (upper)."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())
    return sep.join(f"{b:02X}" for b in hashlib.sha256(der).digest())


_client_lock = threading.Lock()
_client = None


def client_cert():
    """(cert, key) of a client certificate (clientAuth) signed by the
    test CA, made once per process in the certificate directory."""
    global _client
    with _client_lock:
        if _client is None:
            c = certs.get()
            d = c.dir
            ext = d / "client-ext.cnf"
            ext.write_text("basicConstraints = CA:FALSE\n"
                           "keyUsage = critical,digitalSignature\n"
                           "extendedKeyUsage = clientAuth\n")
            key, csr, crt = d / "client.key", d / "client.csr", \
                d / "client.crt"
            for args in (["req", "-new", "-nodes", "-newkey", "ec",
                          "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-subj", "/CN=maild-test-client", "-keyout",
                          str(key), "-out", str(csr)],
                         ["x509", "-req", "-in", str(csr), "-CA",
                          str(c.ca), "-CAkey", str(d / "ca.key"),
                          "-CAcreateserial", "-days", "30", "-sha256",
                          "-extfile", str(ext), "-out", str(crt)]):
                r = subprocess.run(["openssl"] + args, cwd=d,
                                   stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True,
                                   timeout=60)
                if r.returncode != 0:
                    raise certs.CertError(r.stderr)
            os.chmod(key, 0o600)
            _client = (crt, key)
        return _client


def run_once(t, accounts, *flags, limit=30, env=None, **globals_):
    cfg = mt.write_config(t.tmp / "maild.conf", accounts,
                          state_dir=t.tmp / "state",
                          **({"timeout": 10} | globals_))
    mt.require_maild()
    return mt.run_maild(["--once", *flags, "-f", cfg], timeout=limit,
                        env=env)


def fake(cert=None, messages=None, **kw):
    """A fake server with implicit TLS (cert: (certfile, keyfile) or an
    SSLContext; default: the CA-signed server certificate)."""
    return fakepop3.FakePOP3(msgs("fake") if messages is None else messages,
                             tls=cert or certs.get().server, **kw)


def fake_account(t, srv, name="tls", **extra):
    a = mt.account(name, "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=True, ca_file=certs.get().ca)
    a.update(extra)
    return a


def login_in_clear(srv):
    return [c.line for c in srv.commands()
            if c.verb in LOGIN_VERBS and not c.tls]


def assert_nothing_in_clear(srv):
    clear = login_in_clear(srv)
    assert not clear, f"login commands sent in clear text: {clear}"
    for c in srv.commands():
        if not c.tls:
            assert srv.password.encode() not in c.line, \
                f"password in clear text: {c.line!r}"


def expect_refused(t, r, srv, code=None, name="tls"):
    if code is not None:
        assert r.rc == code, f"exit {r.rc}, expected {code}"
    else:
        assert r.rc not in (0, mt.EX_SOFTWARE), f"exit {r.rc}"
    assert mt.read_maildir(t.tmp / "Maildir") == [], "delivered anyway"
    assert not [c for c in srv.commands() if c.verb in LOGIN_VERBS], \
        f"login commands sent: {[c.line for c in srv.commands()]}"
    return r.account(name)["error"] or ""


# ---------------------------------------------------------------------------
# default ports

@tap.test(name="default port: 995 with tls = implicit, 110 with starttls "
          "and none")
def test_default_ports(t):
    # a password-command that fails: maild says where it would connect,
    # then stops before connecting anywhere
    for tls, extra, port in (("implicit", {}, 995),
                             ("starttls", {}, 110),
                             ("none", {"allow_plaintext": True}, 110)):
        a = {"name": "ports", "host": "127.0.0.1", "user": "u",
             "password_command": "exit 1", "maildir": str(t.tmp / "md"),
             "tls": mt.Raw(tls)} | extra
        r = run_once(t, [a], "-v")
        assert f"account=ports polling 127.0.0.1:{port}" in r.stderr, \
            f"tls = {tls}: not polling port {port}"


# ---------------------------------------------------------------------------
# STARTTLS

# The users of the file's Dovecot (dovecot.Lazy), started on first use.
STLS_USERS = ("stls", "stlspin")


def _dovecot_starttls_test(pinned):
    def test(t):
        srv = t.fx.get(t)
        user = "stlspin" if pinned else "stls"
        m = msgs(f"dv{user}", 5)
        srv.set_mailbox(user, m)
        a = mt.account("dv", "127.0.0.1", srv.pop3_port, user, srv.password,
                       t.tmp / "Maildir", keep=False, ca_file=srv.ca,
                       tls=mt.Raw("starttls"))
        if pinned:
            # maild.conf(5)'s example: a local Dovecot over STARTTLS,
            # its certificate pinned instead of a CA
            a["ca_file"] = None
            a["tls_fingerprint"] = "sha256:" + fingerprint(
                srv.dir / "ssl" / "server.crt")
        r = run_once(t, [a], "-v")
        assert r.rc == 0, f"exit {r.rc}: {r.account('dv')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert srv.mailbox(user) == [], "not deleted on the server"
        assert re.search(r'account=dv tls="TLSv1\.[23] ', r.stderr), \
            "maild -v does not log the TLS version"
        log = srv.log.read_text(errors="replace")
        logins = [ln for ln in log.splitlines()
                  if f"Login: user=<{user}>" in ln]
        assert logins and ", TLS" in logins[0], \
            f"Dovecot did not see a TLS login: {logins}"
    return test


tap.test(name="dovecot: tls = starttls on the plain port: STLS, then "
         "login over TLS, delivered")(_dovecot_starttls_test(False))
tap.test(name="dovecot: tls = starttls with tls-fingerprint and no "
         "ca-file (the manual's example)")(_dovecot_starttls_test(True))


@tap.test(name="starttls: STLS first, CAPA again over TLS, login only over "
          "TLS")
def test_fake_starttls(t):
    m = msgs("stls")
    pre = ["TOP", "UIDL", "USER", "STLS", "SASL CRAM-MD5 PLAIN",
           "PIPELINING"]
    post = ["TOP", "UIDL", "USER", "SASL PLAIN", "PIPELINING"]

    def capa(conn, cmd):
        return fakepop3.FakePOP3._multi("+OK", post if conn.tls else pre)
    with fakepop3.FakePOP3(m, tls=certs.get().server, implicit_tls=False,
                           sasl=["PLAIN"], login_requires_tls=True,
                           handlers={"CAPA": capa}) as srv:
        r = run_once(t, [fake_account(t, srv, tls=mt.Raw("starttls"))])
        assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert len(srv.connections) == 1
        cmds = srv.connections[0].commands
        seen = [(c.verb, c.tls) for c in cmds]
        assert seen[:3] == [("CAPA", False), ("STLS", False),
                            ("CAPA", True)], seen
        assert all(c.tls for c in cmds[2:]), seen
        assert_nothing_in_clear(srv)
        # the capabilities of before TLS were forgotten (RFC 2595)
        got = [a.mech for a in srv.connections[0].auths]
        assert got == ["PLAIN"], f"logins {got} (CRAM-MD5 was only " \
            "offered before TLS)"


def _stls_fail_test(kind):
    def test(t):
        c = certs.get()
        kw = {"tls": c.server, "implicit_tls": False}
        code = mt.EX_NOPERM
        if kind == "not offered":
            kw["stls"] = False
        elif kind == "no CAPA":
            kw["capa_err"] = True
        elif kind == "refused":
            kw["handlers"] = {"STLS": fakepop3.raw(
                b"-ERR TLS not available right now\r\n")}
        elif kind == "data injected after +OK":
            kw["handlers"] = {"STLS": lambda conn, cmd: conn.default(cmd) +
                              b"+OK injected\r\n"}
            code = None
        elif kind == "no TLS after +OK":
            kw["handlers"] = {"STLS": lambda conn, cmd: [
                b"+OK Begin TLS negotiation\r\n", fakepop3.Sleep(0.3),
                b"-ERR changed my mind\r\n", fakepop3.HANG]}
            code = None
        elif kind == "self-signed certificate":
            kw["tls"] = c.self_signed
        with fakepop3.FakePOP3(msgs("stlsfail"), **kw) as srv:
            r = run_once(t, [fake_account(t, srv, tls=mt.Raw("starttls"))])
            srv.wait_idle(5)
            err = expect_refused(t, r, srv, code)
            assert_nothing_in_clear(srv)
            assert len(srv.connections) == 1, \
                f"{len(srv.connections)} connections (a retry in clear?)"
            assert all(cm.verb in ("CAPA", "STLS", "QUIT")
                       for cm in srv.commands() if not cm.tls), \
                [cm.line for cm in srv.commands()]
            if kind in ("not offered", "no CAPA"):
                assert "STLS" in err, err
                assert "STLS" not in srv.verbs(), srv.verbs()
            if kind == "refused":
                assert "STLS" in err and "TLS not available" in err, err
            if kind == "data injected after +OK":
                assert r.rc == mt.EX_PROTOCOL, f"exit {r.rc}, expected 76"
                assert "after its reply to STLS" in err, err
            if kind == "self-signed certificate":
                assert "certificate verification failed" in err, err
    return test


for _kind in ("not offered", "no CAPA", "refused", "data injected after +OK",
              "no TLS after +OK", "self-signed certificate"):
    tap.test(name=f"starttls, STLS {_kind}: refused, nothing sent in clear, "
             "no retry")(_stls_fail_test(_kind))


# ---------------------------------------------------------------------------
# tls = none

@tap.test(name="tls = none without allow-plaintext: exit 78 with file:line "
          "(-n and --once)")
def test_none_needs_allow(t):
    with fakepop3.FakePOP3(msgs("none")) as srv:
        a = fake_account(t, srv, tls=mt.Raw("none"), ca_file=None)
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state")
        line = cfg.read_text().splitlines().index("    tls = none") + 1
        for args in (["-n"], ["--once"]):
            r = mt.run_maild(args + ["-f", cfg], timeout=20)
            assert r.rc == mt.EX_CONFIG, f"{args}: exit {r.rc}"
            assert f"{cfg}:{line}:" in r.stderr, \
                f"{args}: no {cfg}:{line}: in {r.stderr!r}"
            assert "allow-plaintext" in r.stderr, r.stderr
        assert not srv.connections


@tap.test(name="tls = none with TLS options (ca-file): config error")
def test_none_with_tls_options(t):
    with fakepop3.FakePOP3() as srv:
        cfg = mt.write_config(t.tmp / "maild.conf", [fake_account(
            t, srv, tls=mt.Raw("none"), allow_plaintext=True)],
            state_dir=t.tmp / "state")
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"


@tap.test(name="tls = none + allow-plaintext: works, a warning (priority 4) "
          "at every connection")
def test_none_allowed(t):
    m = msgs("noneok")
    with fakepop3.FakePOP3(m) as srv:
        a = fake_account(t, srv, tls=mt.Raw("none"), ca_file=None,
                         allow_plaintext=True, auth=mt.Raw("user"),
                         poll_interval=mt.Raw("1s"))
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state", timeout=10)
        rc, lines = mt.run_journal(t, ["--once", "-f", cfg])
        assert rc == 0, f"exit {rc}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        warn = [(p, s) for p, s in lines if "not encrypted" in s]
        assert len(warn) == 1, f"{len(warn)} warnings for one connection"
        assert warn[0][0] == 4, f"logged at priority {warn[0][0]}, not as " \
            "a warning"
        # the daemon: one warning per connection
        before = len(srv.connections)
        errpath = t.tmp / "daemon.stderr"
        p = mt.start_maild(["-d", "-f", cfg], errpath)
        try:
            deadline = time.monotonic() + 15 * mt.timeout_scale()
            while time.monotonic() < deadline and p.poll() is None and \
                    len(mt.summary_lines(errpath.read_text())) < 3:
                time.sleep(0.05)
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    mt.kill_tree(p)
        err = errpath.read_text(errors="replace")
        t.attach("maild -d stderr", err)
        polls = len(mt.summary_lines(err))
        assert polls >= 3, f"{polls} polls"
        warnings = err.count("is not encrypted (tls = none)")
        # the last connection may have been cut by SIGTERM before maild
        # saw it; every one that got as far as a command had its warning
        conns = srv.connections[before:]
        talked = len([c for c in conns if c.commands])
        assert talked <= warnings <= len(conns), \
            (f"{warnings} warnings for {talked} connections "
             f"({len(conns)} accepted)")
        assert warnings >= polls, f"{warnings} warnings for {polls} polls"


# ---------------------------------------------------------------------------
# pinning and tls-verify

def _pin_ok_test(how):
    def test(t):
        c = certs.get()
        fp = fingerprint(c.self_signed[0])
        pin = {"sha256:AB:CD": mt.quote("sha256:" + fp),
               "64 hex digits": mt.quote(fp.replace(":", "").lower()),
               "list with a stale pin": "{" + mt.quote("sha256:" + "00:" * 31
                                                       + "00") + ", "
               + mt.quote("sha256:" + fp) + "}"}[how]
        m = msgs("pin")
        with fake(c.self_signed, m) as srv:
            r = run_once(t, [fake_account(t, srv, ca_file=None,
                                          tls_fingerprint=mt.Raw(pin))])
            assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
            mt.assert_maildir(t.tmp / "Maildir", m)
    return test


for _how in ("sha256:AB:CD", "64 hex digits", "list with a stale pin"):
    tap.test(name=f"tls-fingerprint ({_how}) accepts a pinned self-signed "
             "certificate")(_pin_ok_test(_how))


@tap.test(name="wrong tls-fingerprint: 77, message shows the actual "
          "fingerprint, nothing sent")
def test_pin_wrong(t):
    c = certs.get()
    other = fingerprint(c.server[0])
    actual = fingerprint(c.self_signed[0])
    with fake(c.self_signed) as srv:
        r = run_once(t, [fake_account(t, srv, ca_file=None,
                                      tls_fingerprint="sha256:" + other)])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert "tls-fingerprint" in err, err
        assert actual in err.upper(), \
            f"the actual fingerprint {actual} is not in {err!r}"
        assert not srv.commands(), [c.line for c in srv.commands()]


@tap.test(name="pinned CA-signed certificate for another name: the pin "
          "alone accepts it")
def test_pin_ignores_name(t):
    c = certs.get()
    m = msgs("pinname")
    with fake(c.wrong_host, m) as srv:
        r = run_once(t, [fake_account(
            t, srv, tls_fingerprint="sha256:" + fingerprint(c.wrong_host[0]))])
        assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="pin + tls-verify = yes, self-signed: refused (the chain "
          "counts too)")
def test_pin_verify_self_signed(t):
    c = certs.get()
    with fake(c.self_signed) as srv:
        r = run_once(t, [fake_account(
            t, srv, ca_file=None, tls_verify=True,
            tls_fingerprint="sha256:" + fingerprint(c.self_signed[0]))])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert "self-signed" in err, err


@tap.test(name="pin + tls-verify = yes, right chain but wrong name: refused")
def test_pin_verify_wrong_name(t):
    c = certs.get()
    with fake(c.wrong_host) as srv:
        r = run_once(t, [fake_account(
            t, srv, tls_verify=True,
            tls_fingerprint="sha256:" + fingerprint(c.wrong_host[0]))])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert "mismatch" in err, err


@tap.test(name="pin + tls-verify = yes, valid chain and name: accepted")
def test_pin_verify_ok(t):
    c = certs.get()
    m = msgs("pinverify")
    with fake(c.server, m) as srv:
        r = run_once(t, [fake_account(
            t, srv, tls_verify=True,
            tls_fingerprint="sha256:" + fingerprint(c.server[0]))])
        assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="pin + tls-verify = yes, valid chain, other certificate: "
          "refused")
def test_pin_verify_other_cert(t):
    c = certs.get()
    with fake(c.server) as srv:
        r = run_once(t, [fake_account(
            t, srv, tls_verify=True,
            tls_fingerprint="sha256:" + fingerprint(c.self_signed[0]))])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert fingerprint(c.server[0]) in err.upper(), err


@tap.test(name="tls-verify = no without a pin, a malformed pin: config "
          "errors (78) with file:line")
def test_verify_no_without_pin(t):
    with fakepop3.FakePOP3() as srv:
        for opt, text in (({"tls_verify": False}, "    tls-verify = false"),
                          ({"tls_fingerprint": "sha256:AB:CD"},
                           '    tls-fingerprint = "sha256:AB:CD"')):
            cfg = mt.write_config(t.tmp / "maild.conf",
                                  [fake_account(t, srv, **opt)],
                                  state_dir=t.tmp / "state")
            line = cfg.read_text().splitlines().index(text) + 1
            r = mt.run_maild(["-n", "-f", cfg], timeout=20)
            assert r.rc == mt.EX_CONFIG, f"{opt}: exit {r.rc}"
            assert f"{cfg}:{line}:" in r.stderr, (opt, r.stderr)


@tap.test(name="certificate for another name: message names the "
          "certificate's names, its fingerprint and what to do")
def test_message_wrong_name(t):
    c = certs.get()
    with fake(c.wrong_host) as srv:
        r = run_once(t, [fake_account(t, srv, host="localhost")])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert "wrong.example" in err, f"names not shown: {err!r}"
        assert fingerprint(c.wrong_host[0]) in err.upper(), \
            f"fingerprint not shown: {err!r}"
        assert "as host" in err, f"no hint: {err!r}"


@tap.test(name="self-signed certificate: message shows the fingerprint to "
          "pin and suggests tls-fingerprint / ca-file")
def test_message_self_signed(t):
    c = certs.get()
    with fake(c.self_signed) as srv:
        r = run_once(t, [fake_account(t, srv)])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert fingerprint(c.self_signed[0]) in err.upper(), err
        assert "tls-fingerprint" in err and "ca-file" in err, err


@tap.test(name="expired certificate: message says so and shows the expiry "
          "date")
def test_message_expired(t):
    c = certs.get()
    with fake(c.expired) as srv:
        r = run_once(t, [fake_account(t, srv)])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv, mt.EX_NOPERM)
        assert "expired" in err and "2020" in err, err


# ---------------------------------------------------------------------------
# client certificates

@tap.test(name="dovecot asks for a client certificate: with tls-cert-file "
          "logs in; without, refused (77)")
def test_dovecot_client_cert(t):
    if dovecot.find_dovecot() is None:
        t.skip("dovecot is not installed (dovecot-pop3d)")
    crt, key = client_cert()
    srv = dovecot.Dovecot(certs.get(), client_ca=certs.get().ca,
                          extra_conf="auth_failure_delay = 0")
    srv.add_user("cc")
    with srv:
        m = msgs("dvcc")
        srv.set_mailbox("cc", m)
        a = mt.account("dv", "127.0.0.1", srv.pop3s_port, "cc", srv.password,
                       t.tmp / "Maildir", keep=True, ca_file=srv.ca,
                       tls_cert_file=str(crt), tls_key_file=str(key))
        r = run_once(t, [a])
        assert r.rc == 0, f"exit {r.rc}: {r.account('dv')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        # the same without the certificate (last: Dovecot slows down
        # logins after a failure)
        del a["tls_cert_file"], a["tls_key_file"]
        a["maildir"] = str(t.tmp / "Maildir2")
        r = run_once(t, [a])
        assert r.rc == mt.EX_NOPERM, f"exit {r.rc} without a client " \
            "certificate, expected 77"
        assert mt.read_maildir(t.tmp / "Maildir2") == []
        srv.wait_idle()
        log = srv.log.read_text(errors="replace")
        assert "Login: user=<cc>" in log
        assert log.count("Login: user=<cc>") == 1, "logged in twice"


@tap.test(name="fake server with CERT_REQUIRED: the client certificate is "
          "presented; without one, nothing is sent")
def test_fake_client_cert(t):
    c = certs.get()
    crt, key = client_cert()
    ctx = fakepop3.server_context(c.server, client_ca=c.ca)
    m = msgs("fakecc")
    with fake(ctx, m) as srv:
        r = run_once(t, [fake_account(t, srv, tls_cert_file=str(crt),
                                      tls_key_file=str(key))])
        assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
        mt.assert_maildir(t.tmp / "Maildir", m)
        subject = dict(x[0] for x in srv.connections[0].client_cert.get(
            "subject", ()))
        assert subject.get("commonName") == "maild-test-client", \
            srv.connections[0].client_cert
    with fake(ctx, m) as srv:
        r = run_once(t, [fake_account(t, srv, maildir=str(t.tmp / "md2"))])
        srv.wait_idle(5)
        assert r.rc not in (0, mt.EX_SOFTWARE), f"exit {r.rc}"
        t.note(f"exit {r.rc}, error: {r.account('tls')['error']}; server: "
               f"{srv.connections[0].tls_error}")
        assert not srv.commands(), [cm.line for cm in srv.commands()]
        assert mt.read_maildir(t.tmp / "md2") == []
        err = r.account("tls")["error"] or ""
        assert "certificate" in err, ("the error does not say the server "
                                      f"wants a client certificate: {err!r}")


@tap.test(name="tls-cert-file with a key that does not match, or without "
          "tls-key-file: config errors naming the files")
def test_client_cert_config_errors(t):
    c = certs.get()
    crt, key = client_cert()
    with fake() as srv:
        r = run_once(t, [fake_account(t, srv, tls_cert_file=str(crt),
                                      tls_key_file=str(c.server[1]))])
        assert r.rc == mt.EX_CONFIG, f"exit {r.rc}, expected 78"
        err = r.account("tls")["error"] or ""
        assert str(crt) in err and str(c.server[1]) in err, err
        assert not srv.connections, "connected anyway"
        cfg = mt.write_config(t.tmp / "maild.conf", [fake_account(
            t, srv, tls_cert_file=str(crt))], state_dir=t.tmp / "state")
        line = cfg.read_text().splitlines().index(
            f'    tls-cert-file = "{crt}"') + 1
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == mt.EX_CONFIG and f"{cfg}:{line}:" in r.stderr, \
            (r.rc, r.stderr)


# ---------------------------------------------------------------------------
# TLS versions

@tap.test(name="tls-min-version = 1.3 against a TLS 1.2-only server: "
          "refused, nothing sent; 1.2 (default) works")
def test_min_version(t):
    ctx = fakepop3.server_context(certs.get().server, max_version="1.2")
    m = msgs("tls12")
    with fake(ctx, m) as srv:
        r = run_once(t, [fake_account(t, srv, tls_min_version="1.3")])
        srv.wait_idle(5)
        err = expect_refused(t, r, srv)
        assert not srv.commands()
        assert "TLS" in err and "version" in err.lower(), \
            f"the error does not say it is about the TLS version: {err!r}"
        assert len(srv.mailbox) == len(m)
    with fake(ctx, m) as srv:
        r = run_once(t, [fake_account(t, srv)], "-v")
        assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
        assert 'tls="TLSv1.2 ' in r.stderr, "TLS 1.2 not logged"
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="tls-min-version = 1.3 against a TLS 1.3 server: works")
def test_min_version_13_ok(t):
    ctx = fakepop3.server_context(certs.get().server, min_version="1.3")
    m = msgs("tls13")
    with fake(ctx, m) as srv:
        r = run_once(t, [fake_account(t, srv, tls_min_version="1.3")], "-v")
        assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
        assert 'tls="TLSv1.3 ' in r.stderr
        mt.assert_maildir(t.tmp / "Maildir", m)


class CoalescingServer:
    """One connection of a TLS 1.2 server whose last handshake flight and
    the POP3 line after it leave in one send(), as they often do over a
    real network (libevent 2.1 passes such a line on before it reports
    the handshake done).  starttls: greet in clear, offer STLS, and send
    an unasked line with the handshake.  Otherwise implicit TLS with the
    greeting in the handshake's send, then just enough POP3 to fetch
    one message."""

    def __init__(self, message, starttls=False):
        self.msg = fakepop3.Msg(message, uidl="coalesced-1")
        self.starttls = starttls
        self.ctx = fakepop3.server_context(certs.get().server,
                                           max_version="1.2")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.verbs = []
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self):
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive(), "server thread still running"

    def _run(self):
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(20)
                self._serve(conn)
        except Exception as e:          # reported by close()
            self.error = repr(e)

    def _serve(self, conn):
        buf = b""
        if self.starttls:
            conn.sendall(b"+OK clear\r\n")
            for expect, reply in ((b"CAPA", b"+OK\r\nSTLS\r\nUSER\r\n."
                                   b"\r\n"), (b"STLS", b"+OK go\r\n")):
                line, buf = self._line_clear(conn, buf)
                self.verbs.append(line.split(b" ")[0].decode())
                assert line == expect, line
                conn.sendall(reply)
        tls = self._handshake(conn, b"+OK unasked\r\n" if self.starttls
                              else b"+OK coalesced\r\n")
        if self.starttls:
            return self._drain(conn, tls)
        body = self.msg.wire()
        replies = {"CAPA": b"-ERR\r\n", "USER": b"+OK\r\n",
                   "PASS": b"+OK\r\n",
                   "UIDL": b"+OK\r\n1 coalesced-1\r\n.\r\n",
                   "LIST": f"+OK\r\n1 {self.msg.size}\r\n.\r\n".encode(),
                   "RETR": b"+OK\r\n" + body, "QUIT": b"+OK\r\n"}
        while self.verbs[-1:] != ["QUIT"]:
            line = self._line_tls(conn, tls)
            verb = line.split(b" ")[0].decode().upper()
            self.verbs.append(verb)
            self._send(conn, tls, replies.get(verb, b"-ERR what?\r\n"))

    def _handshake(self, conn, line):
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(inc, out, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                conn.sendall(out.read())
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("client left in the handshake")
                inc.write(data)
        tls.write(line)
        conn.sendall(out.read())        # Finished and the line together
        tls.inc = inc
        tls.out = out
        tls.buf = b""
        return tls

    @staticmethod
    def _line_clear(conn, buf):
        while b"\n" not in buf:
            data = conn.recv(4096)
            if not data:
                raise ConnectionError("client left")
            buf += data
        line, buf = buf.split(b"\n", 1)
        return line.rstrip(b"\r"), buf

    @staticmethod
    def _line_tls(conn, tls):
        while b"\n" not in tls.buf:
            try:
                tls.buf += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("client left")
            tls.inc.write(data)
        line, tls.buf = tls.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    @staticmethod
    def _send(conn, tls, data):
        tls.write(data)
        conn.sendall(tls.out.read())

    def _drain(self, conn, tls):
        """After the unasked line: record what the client still says."""
        try:
            while True:
                line = self._line_tls(conn, tls)
                self.verbs.append(line.split(b" ")[0].decode().upper())
        except (ConnectionError, OSError, ssl.SSLError):
            pass


@tap.test(name="TLS 1.2 greeting in the same packet as the server's "
          "handshake Finished: delivered")
def test_greeting_with_finished(t):
    m = corpus.simple("coalesced/1")
    srv = CoalescingServer(m)
    try:
        a = mt.account("tls", "127.0.0.1", srv.port, "u", "p",
                       t.tmp / "Maildir", keep=True, ca_file=certs.get().ca)
        r = run_once(t, [a], "-v")
    finally:
        srv.close()
    assert r.rc == 0, f"exit {r.rc}: {r.account('tls')['error']}"
    assert srv.error is None, srv.error
    assert 'tls="TLSv1.2 ' in r.stderr, "TLS 1.2 not logged"
    assert "RETR" in srv.verbs and srv.verbs[-1] == "QUIT", srv.verbs
    mt.assert_maildir(t.tmp / "Maildir", [m])


@tap.test(name="starttls: a line nobody asked for in the same packet as "
          "the handshake Finished is refused, no login sent")
def test_unasked_line_with_stls_finished(t):
    srv = CoalescingServer(corpus.simple("coalesced/2"), starttls=True)
    try:
        a = mt.account("tls", "127.0.0.1", srv.port, "u", "p",
                       t.tmp / "Maildir", keep=True, ca_file=certs.get().ca,
                       tls=mt.Raw("starttls"))
        r = run_once(t, [a])
    finally:
        srv.close()
    assert r.rc == mt.EX_PROTOCOL, f"exit {r.rc}"
    err = r.account("tls")["error"] or ""
    assert "nobody asked for" in err and "+OK unasked" in err, err
    assert srv.verbs[:2] == ["CAPA", "STLS"], srv.verbs
    assert not set(srv.verbs) & set(LOGIN_VERBS), srv.verbs
    assert mt.read_maildir(t.tmp / "Maildir") == []


@tap.test(name="tls-min-version = 1.1: config error")
def test_min_version_bad(t):
    with fake() as srv:
        cfg = mt.write_config(t.tmp / "maild.conf", [fake_account(
            t, srv, tls_min_version="1.1")],
            state_dir=t.tmp / "state")
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"


if __name__ == "__main__":
    tap.main(fixture=functools.partial(
        dovecot.Lazy, {u: None for u in STLS_USERS}))
