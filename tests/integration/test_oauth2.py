#!/usr/bin/env python3
"""test_oauth2.py: built-in OAuth2 (oauth2-provider), against a mock
provider (oauth2mock.py) and a private Dovecot whose oauth2 passdb asks
the mock's introspection endpoint about every XOAUTH2 and OAUTHBEARER
login, so a real server checks every token maild sends.

maild --authorize, both grants, end to end (the test plays the person
and the browser): the device grant with authorization_pending and
slow_down, the authorization code grant with PKCE and the loopback
redirect, a refusal; the token file (0600, the refresh token in it).
The daemon refreshing again and again (short expires_in, the refresh
margin set by MAILD_OAUTH2_MARGIN) with a token that rotates at every
refresh, across long-running daemon sessions; SIGKILL at seeded moments
around refreshes, after which the stored token always still works;
invalid_grant on one account of three ("needs authorization", said
once, in the log, --status and --check; no more requests for it; the
other two keep fetching; a new token file is picked up); a token
endpoint that hangs does not hold up another account; 5xx faults are
temporary; AADSTS700025's hint; the configuration's checks; and no
token ever in the log or the status file.
"""

import os
import queue
import random
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import maildtest as mt  # noqa: E402
import oauth2mock  # noqa: E402
import tap         # noqa: E402

USERS = ("user1", "user2", "user3")
SCALE = float(os.environ.get("MAILD_TIMEOUT_SCALE", "1"))
KILL_SEED = int(os.environ.get("MAILD_OAUTH2_SEED", "20261203"))


class Fixture:
    """One mock provider and one Dovecot that trusts it, for the file;
    Dovecot starts when a test first needs it."""

    def __init__(self):
        self.provider = oauth2mock.Provider(certs.get())
        self.srv = None

    def dovecot(self, t):
        if dovecot.find_dovecot() is None:
            t.skip("dovecot is not installed (dovecot-pop3d)")
        if self.srv is None:
            srv = dovecot.Dovecot(certs.get(), oauth2_introspection=(
                self.provider.url("/introspect")))
            try:
                for u in USERS:
                    srv.add_user(u)
                srv.start()
            except BaseException:
                srv.cleanup()
                raise
            self.srv = srv
        return self.srv

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.srv is not None:
            self.srv.cleanup()
        self.provider.close()
        return False


def mock(t, **kw):
    """A fresh mock provider for this test (the file's Dovecot asks the
    file's mock: tests that log in use t.fx.provider)."""
    p = oauth2mock.Provider(certs.get(), **kw)
    t.defer(p.close)
    return p


def provider(t):
    """The file's mock, reset for this test."""
    p = t.fx.provider
    p.faults = []
    p.expires_in = 3600
    p.rotate = True
    p.rotation = "strict"
    p.public = False
    p.client_secret = None
    p.slow_down = 0
    p.deny_authorize = False
    p.user = "user1"
    p.release_token()
    p._release.clear()
    return p


def account(t, p, name, user="user1", device=True, srv=None, **extra):
    a = {"name": name, "host": "127.0.0.1",
         "port": srv.pop3s_port if srv else 995, "user": user,
         "maildir": str(t.tmp / f"Maildir-{name}"), "keep": False,
         "ca_file": str(certs.get().ca)}
    a.update(p.options(device=device))
    a.update(extra)
    return a


def config(t, accounts, **globals_):
    return mt.write_config(t.tmp / "maild.conf", accounts,
                           state_dir=t.tmp / "state",
                           **({"timeout": 10} | globals_))


def token_file(t, name):
    return t.tmp / "state" / f"{name}.oauth2"


def write_token(t, name, rt):
    """A token file as maild --authorize leaves it."""
    p = token_file(t, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"# test\nrefresh-token {rt}\n")
    os.chmod(p, 0o600)


def read_token(t, name):
    """{"refresh-token": ..., "access-token": ..., ...} of a token file."""
    out = {}
    for line in token_file(t, name).read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition(" ")
            out[k] = v
    return out


def msgs(prefix, n=2):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


def once(t, cfg, *flags, limit=60, env=None):
    mt.require_maild()
    return mt.run_maild(["--once", *flags, "-f", cfg], timeout=limit,
                        env=env)


class Background:
    """maild running in the background, its stdout read line by line."""

    def __init__(self, t, args, env=None, stderr_name="maild.stderr"):
        mt.require_maild()
        self.t = t
        self.errpath = t.tmp / stderr_name
        self.errf = open(self.errpath, "wb")
        self.p = subprocess.Popen(
            [mt.maild_bin()] + [str(a) for a in args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.errf, env=mt._env(env), start_new_session=True)
        self.lines = queue.Queue()
        self.out = []
        threading.Thread(target=self._read, daemon=True).start()
        t.defer(self.stop)

    def _read(self):
        for line in iter(self.p.stdout.readline, b""):
            self.lines.put(line.decode(errors="replace"))
        self.lines.put(None)

    def expect(self, regex, limit=30):
        """The first match of regex in the output from here on."""
        deadline = time.monotonic() + limit * SCALE
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.out.append(line)
            m = re.search(regex, line)
            if m:
                return m
        raise AssertionError(f"no {regex!r} in maild's output:\n"
                             + "".join(self.out) + self.stderr())

    def wait(self, limit=60):
        try:
            return self.p.wait(timeout=limit * SCALE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"maild did not end within {limit} s"
                                 + self.stderr())

    def stderr(self):
        self.errf.flush()
        return self.errpath.read_text(errors="replace")

    def stop(self, sig=signal.SIGKILL):
        mt.kill_tree(self.p, sig)
        if not self.errf.closed:
            self.errf.close()
        self.t.attach(f"maild stderr ({self.errpath.name})",
                      self.errpath.read_text(errors="replace"))


def wait_for(what, cond, limit=60, step=0.05):
    deadline = time.monotonic() + limit * SCALE
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def assert_no_tokens(t, p, text, where):
    for tok in list(p.refresh_tokens) + list(p.access_tokens):
        assert tok not in text, f"a token is in {where}"


# ---------------------------------------------------------------------------
# configuration

def check_conf(t, accounts):
    cfg = config(t, accounts)
    mt.require_maild()
    return mt.run_maild(["-n", "-f", cfg], timeout=30)


@tap.test(name="config: google and microsoft presets and a custom "
          "provider are accepted; -n passes")
def test_conf_presets(t):
    r = check_conf(t, [
        {"name": "g", "host": "pop.gmail.com", "user": "me@gmail.com",
         "maildir": str(t.tmp / "g"), "oauth2_provider": "google",
         "oauth2_client_id": "1-x.apps.googleusercontent.com",
         "oauth2_client_secret": "GOCSPX-not-secret"},
        {"name": "m", "host": "outlook.office365.com",
         "user": "me@example.com", "maildir": str(t.tmp / "m"),
         "oauth2_provider": "microsoft", "oauth2_client_id": "abc",
         "oauth2_tenant": "example.onmicrosoft.com",
         "auth": "oauthbearer"},
        account(t, provider(t), "c")])
    assert r.rc == 0, r.stderr


def _conf_error_test(extra, drop, want):
    def test(t):
        a = account(t, provider(t), "bad")
        for k in drop:
            a.pop(k, None)
        a.update(extra)
        r = check_conf(t, [a])
        assert r.rc == mt.EX_CONFIG, f"exit {r.rc}: {r.stderr}"
        assert want in r.stderr, f"{want!r} not in {r.stderr!r}"
    return test


for _name, _extra, _drop, _want in (
        ("a password-command beside oauth2-provider",
         {"password_command": "echo x"}, (),
         "password-command and oauth2-provider exclude each other"),
        ("oauth2-client-id without oauth2-provider",
         {"password": "x"}, ("oauth2_provider",),
         "oauth2-client-id needs oauth2-provider"),
        ("a custom provider without oauth2-token-url", {},
         ("oauth2_token_url",), "custom needs oauth2-token-url"),
        ("auth = plain with oauth2-provider", {"auth": "plain"}, (),
         "auth is xoauth2 or oauthbearer"),
        ("an http:// token URL", {"oauth2_token_url": "http://x/token"}, (),
         "is not an https:// URL"),
        ("oauth2-tenant with a custom provider",
         {"oauth2_tenant": "common"}, (), "oauth2-tenant is for"),
        ("two client secrets", {"oauth2_client_secret": "a",
                                "oauth2_client_secret_command": "echo b"},
         (), "give at most one of oauth2-client-secret")):
    tap.test(name=f"config: {_name} is refused (78)")(
        _conf_error_test(_extra, _drop, _want))


# ---------------------------------------------------------------------------
# maild --authorize

@tap.test(name="--authorize, device grant: URL and code printed, "
          "authorization_pending and slow_down honoured, token stored "
          "0600; then XOAUTH2 through Dovecot's oauth2 passdb", timeout=180)
def test_authorize_device(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    p.slow_down = 1
    m = msgs("device")
    srv.set_mailbox("user1", m)
    cfg = config(t, [account(t, p, "dev", srv=srv)])
    bg = Background(t, ["--authorize", "dev", "-f", cfg])
    uri = bg.expect(r"https://\S+/device/verify\b").group(0)
    code = bg.expect(r"^\s+(\d{4}-\d{4})\s*$").group(1)
    assert uri == p.url("/device/verify"), uri
    # the person takes their time: maild polls and hears "pending"
    wait_for("two polls", lambda: len(p.token_requests(
        "urn:ietf:params:oauth:grant-type:device_code")) >= 3, limit=60)
    ctx = ssl.create_default_context(cafile=str(certs.get().ca))
    urllib.request.urlopen(f"{uri}?user_code={code}", context=ctx,
                           timeout=10).read()
    rc = bg.wait(60)
    assert rc == 0, f"--authorize exit {rc}" + bg.stderr()
    bg.expect(r"is authorized")
    polls = [tm for path, f, tm in p.requests if path == "/token" and
             f.get("grant_type", "").endswith("device_code")]
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    # interval 1 s; after slow_down (the first answer) 1 + 5 s
    assert gaps[0] >= 5.0, f"slow_down not honoured: gaps {gaps}"
    st = os.stat(token_file(t, "dev"))
    assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
    rt = read_token(t, "dev")["refresh-token"]
    assert p.alive(rt), "the stored refresh token is not the one issued"
    assert_no_tokens(t, p, bg.stderr() + "".join(bg.out), "the output")

    r = once(t, cfg, "-vv")
    assert r.rc == 0, f"exit {r.rc}: {r.account('dev')['error']}"
    mt.assert_maildir(t.tmp / "Maildir-dev", m)
    assert any(ok for _, ok in p.introspected), "Dovecot asked nothing"
    assert_no_tokens(t, p, r.stderr, "the -vv log")
    assert "method=XOAUTH2" in srv.log.read_text() or \
        "xoauth2" in srv.log.read_text().lower()


def play_browser(url):
    """Open the authorization URL (HTTPS, the mock), follow its redirect
    to maild's loopback listener; what maild's page says."""
    ctx = ssl.create_default_context(cafile=str(certs.get().ca))
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ctx))
    with opener.open(url, timeout=20) as f:
        return f.geturl(), f.read().decode(errors="replace")


@tap.test(name="--authorize, authorization code grant: PKCE S256, the "
          "loopback redirect on 127.0.0.1, ssh hint; then OAUTHBEARER "
          "through Dovecot's oauth2 passdb", timeout=120)
def test_authorize_code(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    p.user = "user2"
    m = msgs("code")
    srv.set_mailbox("user2", m)
    cfg = config(t, [account(t, p, "web", user="user2", device=False,
                             srv=srv, auth="oauthbearer")])
    bg = Background(t, ["--authorize", "web", "-f", cfg])
    url = bg.expect(r"https://127\.0\.0\.1:\d+/authorize\?\S+").group(0)
    port = bg.expect(r"ssh -L (\d+):127\.0\.0\.1:(\d+) ").group(1)
    assert "code_challenge_method=S256" in url and \
        "code_challenge=" in url, url
    assert f"redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2F" in url, url
    final, page = play_browser(url)
    assert final.startswith(f"http://127.0.0.1:{port}/?code="), final
    assert "maild" in page, page
    rc = bg.wait(60)
    assert rc == 0, f"--authorize exit {rc}" + bg.stderr()
    assert p.token_requests("authorization_code"), "no code exchange"
    assert "code_verifier" in p.token_requests("authorization_code")[0]
    rt = read_token(t, "web")["refresh-token"]
    assert p.alive(rt)

    r = once(t, cfg)
    assert r.rc == 0, f"exit {r.rc}: {r.account('web')['error']}"
    mt.assert_maildir(t.tmp / "Maildir-web", m)


@tap.test(name="--authorize: the person declines (code grant and device "
          "grant): 77, no token file")
def test_authorize_denied(t):
    p = mock(t)
    p.deny_authorize = True
    cfg = config(t, [account(t, p, "no", device=False)])
    bg = Background(t, ["--authorize", "no", "-f", cfg])
    url = bg.expect(r"https://127\.0\.0\.1:\d+/authorize\?\S+").group(0)
    play_browser(url)
    assert bg.wait(30) == mt.EX_NOPERM, bg.stderr()
    assert "access_denied" in bg.stderr(), bg.stderr()
    assert not token_file(t, "no").exists()

    cfg = config(t, [account(t, p, "no2")])
    bg = Background(t, ["--authorize", "no2", "-f", cfg],
                    stderr_name="maild2.stderr")
    code = bg.expect(r"^\s+(\d{4}-\d{4})\s*$").group(1)
    ctx = ssl.create_default_context(cafile=str(certs.get().ca))
    urllib.request.urlopen(p.url(f"/device/verify?user_code={code}&deny=1"),
                           context=ctx, timeout=10).read()
    assert bg.wait(30) == mt.EX_NOPERM, bg.stderr()
    assert "denied" in bg.stderr(), bg.stderr()
    assert not token_file(t, "no2").exists()


@tap.test(name="--authorize on an account without oauth2-provider: 78; "
          "on no account: 64")
def test_authorize_not_oauth2(t):
    cfg = mt.write_config(t.tmp / "maild.conf", [mt.account(
        "pw", "127.0.0.1", 995, "u", "secret-pw", t.tmp / "Maildir")],
        state_dir=t.tmp / "state")
    mt.require_maild()
    r = mt.run_maild(["--authorize", "pw", "-f", cfg], timeout=30)
    assert r.rc == mt.EX_CONFIG and "no oauth2-provider" in r.stderr, \
        (r.rc, r.stderr)
    r = mt.run_maild(["--authorize", "nosuch", "-f", cfg], timeout=30)
    assert r.rc == mt.EX_USAGE and 'no account "nosuch"' in r.stderr, \
        (r.rc, r.stderr)


if __name__ == "__main__":
    tap.main(fixture=Fixture)
