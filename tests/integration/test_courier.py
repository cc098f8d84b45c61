#!/usr/bin/env python3
"""test_courier.py: maild against a real Courier POP3 server (a private
one, see tests/lib/courier.py), over implicit TLS and over STLS, with
every login Courier offers: USER/PASS and SASL PLAIN, LOGIN, CRAM-MD5.

Courier hands the connection from its login process to its mail process
when the login succeeds and drops whatever the client pipelined behind
the login: a client that sends UIDL with PASS or AUTH PLAIN waits for an
answer that never comes.  Each login method fetches in keep mode (all
delivered byte-exact and exactly once, the server untouched, a second
run fetches nothing, then only a message added since) and in delete mode
(all delivered, the server empty, a second run fetches nothing).
Courier as Debian ships it offers no SASL at all: auth = auto then logs
in with USER/PASS.  maild's timeout is short here, so a client that
waits for a lost answer fails quickly.  Whether Courier loses what was
pipelined depends on how the bytes fall into its login process's reads,
so such a client fails most of these runs, not always all of them;
test_auth.py checks the same against the fake server's handoff = True,
deterministically.

The corpus has every special case but utf8-8bit: to a client that has
not sent "UTF8" (RFC 6856), Courier serves a message with 8-bit header
fields as a "Cannot display Unicode content" notice of another size.
"""

import contextlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import courier     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

# maild's own timeout: a lost answer fails the run in seconds
TIMEOUT = max(5, int(5 * mt.timeout_scale()))
TLS_MODES = ("implicit", "starttls")
AUTHS = ("user", "plain", "login", "cram-md5")
COUNT = 16
# see above: Courier rewrites 8-bit headers for clients without UTF8
SPECIALS = [k for k in corpus.SPECIALS if k != "utf8-8bit"]


def fixture():
    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        with courier.Courier(certs.get()) as srv:
            for tls in TLS_MODES:
                for auth in AUTHS:
                    srv.add_user(user_of(tls, auth))
            yield srv
    return cm()


def user_of(tls, auth):
    return f"{tls}-{auth}"


def port_of(srv, tls):
    return srv.pop3s_port if tls == "implicit" else srv.pop3_port


def messages(user, extra=""):
    return corpus.generate(seed=7, count=COUNT, prefix=f"{user}{extra}",
                           specials=SPECIALS)


def once(t, srv, user, tls, auth, keep, label, d=None):
    """One maild --once run for user; its Maildir, state and config are
    in d (default t.tmp)."""
    d = d or t.tmp
    a = mt.account("courier", srv.host, port_of(srv, tls), user,
                   srv.users[user], d / "Maildir", keep=keep,
                   ca_file=srv.ca, tls=mt.Raw(tls), auth=auth)
    cfg = mt.write_config(d / "maild.conf", [a], state_dir=d / "state",
                          timeout=TIMEOUT)
    r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=30 + 4 * TIMEOUT,
                     label=label)
    t.attach(f"{label}: courier logs", srv.log_tail())
    return r


def check(r, fetched, deleted, label):
    s = r.account("courier")
    assert r.rc == 0 and s["error"] is None, \
        f"{label}: exit {r.rc}: {s['line']}"
    assert s["fetched"] == fetched, \
        f"{label}: fetched={s['fetched']}, expected {fetched}"
    assert s["deleted"] == deleted, \
        f"{label}: deleted={s['deleted']}, expected {deleted}"


def keep_mode(t, srv, tls, auth):
    user = user_of(tls, auth)
    msgs = messages(user)
    srv.set_mailbox(user, msgs)
    before = sorted(srv.mailbox(user))
    r = once(t, srv, user, tls, auth, True, "keep, first run")
    check(r, len(msgs), 0, "keep, first run")
    mt.assert_maildir(t.tmp / "Maildir", msgs)
    assert sorted(srv.mailbox(user)) == before, \
        "keep mode changed the server's mailbox"
    r = once(t, srv, user, tls, auth, True, "keep, second run")
    check(r, 0, 0, "keep, second run")
    added = corpus.simple(f"{user}/added", body="one more\n.\n..\n")
    srv.add_messages(user, [added])
    r = once(t, srv, user, tls, auth, True, "keep, one added")
    check(r, 1, 0, "keep, one added")
    mt.assert_maildir(t.tmp / "Maildir", msgs + [added])


def delete_mode(t, srv, tls, auth):
    user = user_of(tls, auth)
    msgs = messages(user, "-del")
    srv.set_mailbox(user, msgs)
    r = once(t, srv, user, tls, auth, False, "delete, first run")
    check(r, len(msgs), len(msgs), "delete, first run")
    mt.assert_maildir(t.tmp / "Maildir", msgs)
    left = srv.mailbox(user)
    assert not left, f"{len(left)} messages left on the server"
    assert not srv.uidls(user), "the server still lists messages"
    r = once(t, srv, user, tls, auth, False, "delete, second run")
    check(r, 0, 0, "delete, second run")
    mt.assert_maildir(t.tmp / "Maildir", msgs)


def register(tls, auth):
    name = f"{tls}, auth = {auth}"

    @tap.test(name=f"{name}, keep mode: all once, byte-exact, server "
              "untouched; then nothing; then the one added")
    def keep(t):
        keep_mode(t, t.fx, tls, auth)

    @tap.test(name=f"{name}, delete mode: all once, byte-exact, server "
              "empty; then nothing")
    def delete(t):
        delete_mode(t, t.fx, tls, auth)


for _tls in TLS_MODES:
    for _auth in AUTHS:
        register(_tls, _auth)


@tap.test(name="Courier as Debian ships it (no SASL): auth = auto logs "
          "in with USER/PASS, over implicit TLS and STLS, delete mode")
def test_debian_default(t):
    with courier.Courier(certs.get(), sasl="") as srv:
        for tls in TLS_MODES:
            user = srv.add_user(f"plain-{tls}")
            msgs = messages(user)
            srv.set_mailbox(user, msgs)
            d = t.tmp / tls
            d.mkdir()
            r = once(t, srv, user, tls, "auto", False, f"{tls}, first run",
                     d)
            check(r, len(msgs), len(msgs), f"{tls}, first run")
            assert "account=courier login=user" in r.stderr, \
                "auth = auto did not choose USER/PASS (see the -v log)"
            mt.assert_maildir(d / "Maildir", msgs)
            assert not srv.mailbox(user), "messages left on the server"
            r = once(t, srv, user, tls, "auto", False, f"{tls}, second run",
                     d)
            check(r, 0, 0, f"{tls}, second run")


if __name__ == "__main__":
    tap.main(fixture=fixture)
