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
        if not self.errf.closed:
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
          "provider are accepted; -n passes, and warns while there is no "
          "token")
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
    for name in ("g", "m", "c"):
        assert f'account "{name}" has no OAuth2 token yet' in r.stderr and \
            f"run maild --authorize {name}" in r.stderr, r.stderr
    write_token(t, "c", "rt-1")
    r = check_conf(t, [account(t, provider(t), "c")])
    assert r.rc == 0 and "no OAuth2 token" not in r.stderr, r.stderr


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



# ---------------------------------------------------------------------------
# the daemon's token life

def daemon(t, cfg, *flags, env=None, name="maild.stderr"):
    return Background(t, ["-d", *flags, "-f", cfg],
                      env={"MAILD_OAUTH2_MARGIN": "1"} | (env or {}),
                      stderr_name=name)


def summaries(bg, name):
    return [r for r in mt.summary_lines(bg.stderr()) if r["account"] == name]


def status(t, cfg):
    r = mt.run_maild(["--status", "-f", cfg], timeout=30)
    return r.stdout


@tap.test(name="daemon: a rotating token refreshed again and again "
          "(expires_in 2 s) across long-running sessions of two accounts: "
          "every poll logs in through Dovecot, every new refresh token is "
          "stored before use, none in the log or the status file",
          timeout=300)
def test_many_refreshes(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    p.expires_in = 2
    want = int(os.environ.get("MAILD_OAUTH2_REFRESHES", "60"))
    accts, sent = [], {}
    for name, user in (("r1", "user1"), ("r2", "user2")):
        srv.set_mailbox(user, [])
        write_token(t, name, p.grant(user))
        accts.append(account(t, p, name, user=user, srv=srv,
                             poll_interval=mt.Raw("1s")))
        sent[name] = []
    cfg = config(t, accts)
    bg = daemon(t, cfg, "-vv")
    batch = 0
    deadline = time.monotonic() + 240 * SCALE
    while p.refreshes < want and time.monotonic() < deadline:
        for name, user in (("r1", "user1"), ("r2", "user2")):
            m = corpus.simple(f"refresh/{name}/{batch}")
            srv.add_messages(user, [m])
            sent[name].append(m)
        batch += 1
        time.sleep(0.5)
        assert bg.p.poll() is None, "maild died" + bg.stderr()
    assert p.refreshes >= want, f"only {p.refreshes} refreshes"
    for name in ("r1", "r2"):
        wait_for(f"{name}'s mail", lambda n=name: len(mt.read_maildir(
            t.tmp / f"Maildir-{n}")) >= len(sent[n]), limit=30)
    st = status(t, cfg)
    assert "token expires" in st, st
    bg.stop(signal.SIGTERM)
    for name in ("r1", "r2"):
        mt.assert_maildir(t.tmp / f"Maildir-{name}", sent[name])
        failed = [r for r in summaries(bg, name) if r["error"]]
        assert not failed, f"failed polls: {failed[0]['line']}"
        assert p.alive(read_token(t, name)["refresh-token"]), \
            f"{name}: the stored refresh token is dead"
    refused = [tok for tok, ok in p.introspected if not ok]
    assert not refused, f"{len(refused)} tokens refused by Dovecot"
    text = bg.stderr() + st + \
        (t.tmp / "state" / "maild.status").read_text()
    assert_no_tokens(t, p, text, "the log or the status")


@tap.test(name="daemon: SIGKILL at seeded moments around refreshes (held "
          "at the provider, just after its answer, anywhere): the stored "
          "refresh token always still works", timeout=400)
def test_kill_during_refresh(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    p.expires_in = 2
    p.rotation = "until-used"
    rng = random.Random(KILL_SEED)
    kills = int(os.environ.get("MAILD_OAUTH2_KILLS", "12"))
    srv.set_mailbox("user3", [])
    write_token(t, "k", p.grant("user3"))
    cfg = config(t, [account(t, p, "k", user="user3", srv=srv,
                             poll_interval=mt.Raw("1s"))])
    sent = []
    for i in range(kills):
        how = ("held", "answered", "anywhere")[i % 3]
        m = corpus.simple(f"kill/{i}")
        srv.add_messages("user3", [m])
        sent.append(m)
        before = p.refreshes
        if how == "held":
            p.hold_token()
        bg = daemon(t, cfg, name=f"maild-{i}.stderr")
        if how == "held":
            wait_for("a held refresh", p.holding.is_set, limit=30)
        elif how == "answered":
            wait_for("a refresh", lambda: p.refreshes > before, limit=30,
                     step=0.002)
            time.sleep(rng.uniform(0, 0.03))
        else:
            time.sleep(rng.uniform(0.05, 2.5))
        bg.stop(signal.SIGKILL)
        p.release_token()
        t.note(f"kill {i} ({how}): {p.refreshes - before} refreshes")
        rt = read_token(t, "k")["refresh-token"]
        assert p.alive(rt), f"kill {i} ({how}): the stored refresh token " \
            "is dead"
    r = once(t, cfg)
    assert r.rc == 0, f"exit {r.rc}: {r.account('k')['error']}"
    mt.assert_maildir(t.tmp / "Maildir-k", sent)


@tap.test(name="daemon: invalid_grant on one account of three: 'needs "
          "authorization' once in the log, in --status and --check, no "
          "more requests for it; the other two keep fetching; a new token "
          "file is picked up", timeout=240)
def test_invalid_grant_one_of_three(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    rts, accts = {}, []
    for name, user in (("a", "user1"), ("b", "user2"), ("c", "user3")):
        srv.set_mailbox(user, msgs(f"ig1/{name}", 1))
        rts[name] = p.grant(user)
        write_token(t, name, rts[name])
        accts.append(account(t, p, name, user=user, srv=srv,
                             poll_interval=mt.Raw("1s")))
    p.invalid_grant(rts["b"])
    cfg = config(t, accts)
    bg = daemon(t, cfg)
    for name in ("a", "c"):
        wait_for(f"{name}'s first mail", lambda n=name: len(mt.read_maildir(
            t.tmp / f"Maildir-{n}")) == 1, limit=30)
    wait_for("b's failure", lambda: summaries(bg, "b"), limit=30)
    # a few more polls of the others, with new mail
    later = {n: msgs(f"ig2/{n}", 2) for n in ("a", "c")}
    srv.add_messages("user1", later["a"])
    srv.add_messages("user3", later["c"])
    polls_a = len(summaries(bg, "a"))
    wait_for("more polls", lambda: len(summaries(bg, "a")) >= polls_a + 4,
             limit=60)
    for name, user in (("a", "user1"), ("c", "user3")):
        wait_for(f"{name}'s later mail", lambda n=name: len(
            mt.read_maildir(t.tmp / f"Maildir-{n}")) == 3, limit=30)
    log = bg.stderr()
    said = log.count("needs authorization: run maild --authorize b")
    assert said == 1, f"said {said} times:\n{log}"
    assert "--authorize a" not in log and "--authorize c" not in log
    b_requests = [f for f in p.token_requests("refresh_token")
                  if f.get("refresh_token") == rts["b"]]
    assert len(b_requests) == 1, f"{len(b_requests)} requests for b"
    st = status(t, cfg)
    assert re.search(r"account b: needs-authorization", st), st
    assert "run maild --authorize b" in st, st
    assert not re.search(r"account a: needs-authorization", st), st

    r = mt.run_maild(["--check", "b", "-f", cfg], timeout=60)
    assert r.rc == mt.EX_NOPERM, f"--check b: exit {r.rc}"
    assert "needs authorization: run maild --authorize b" in r.stdout, \
        r.stdout

    # the person runs maild --authorize b: a new token file
    srv.add_messages("user2", msgs("ig3/b", 1))
    write_token(t, "b", p.grant("user2"))
    wait_for("b's mail after the new token", lambda: len(mt.read_maildir(
        t.tmp / "Maildir-b")) == 2, limit=30)
    assert "token file changed" in bg.stderr()
    bg.stop(signal.SIGTERM)


@tap.test(name="daemon: a token endpoint that hangs holds up only the "
          "account that asked; it times out (temporary) and the account "
          "fetches later", timeout=180)
def test_hanging_endpoint(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    accts = []
    for name, user in (("h1", "user1"), ("h2", "user2")):
        srv.set_mailbox(user, msgs(f"hang/{name}", 2))
        write_token(t, name, p.grant(user))
        accts.append(account(t, p, name, user=user, srv=srv,
                             poll_interval=mt.Raw("1s")))
    p.faults = ["hang"]
    cfg = config(t, accts, timeout=4)
    bg = daemon(t, cfg)
    wait_for("a hanging request", lambda: p.hanging > 0, limit=30)
    first = {}

    def one_fetched():
        for n in ("h1", "h2"):
            if len(mt.read_maildir(t.tmp / f"Maildir-{n}")) == 2:
                first[n] = p.hanging
                return True
        return False
    wait_for("one account's mail", one_fetched, limit=30)
    assert list(first.values())[0] > 0, \
        "the other account fetched only after the hang ended"
    for n in ("h1", "h2"):
        wait_for(f"{n}'s mail", lambda n=n: len(mt.read_maildir(
            t.tmp / f"Maildir-{n}")) == 2, limit=60)
    hung = [n for n in ("h1", "h2") if n not in first][0]
    errs = [r["error"] for r in summaries(bg, hung) if r["error"]]
    assert errs and "no complete reply" in errs[0], errs
    assert "needs authorization" not in bg.stderr()
    p.release()
    bg.stop(signal.SIGTERM)


@tap.test(name="--once: 503 and a dropped connection at the token "
          "endpoint are temporary (75, not 'needs authorization'); the "
          "next run fetches")
def test_5xx_temporary(t):
    srv = t.fx.dovecot(t)
    p = provider(t)
    m = msgs("5xx")
    srv.set_mailbox("user1", m)
    write_token(t, "x", p.grant("user1"))
    cfg = config(t, [account(t, p, "x", srv=srv)])
    for fault, want in ((503, "HTTP 503"), ("drop", "token endpoint")):
        p.faults = [fault]
        r = once(t, cfg)
        assert r.rc == mt.EX_TEMPFAIL, f"{fault}: exit {r.rc}"
        err = r.account("x")["error"]
        assert want in err and "needs authorization" not in err, err
    r = once(t, cfg)
    assert r.rc == 0, f"exit {r.rc}: {r.account('x')['error']}"
    mt.assert_maildir(t.tmp / "Maildir-x", m)


@tap.test(name="--once: a public client sent a secret (AADSTS700025): 78 "
          "and the hint to remove oauth2-client-secret; a confidential "
          "one gets its secret from oauth2-client-secret-command")
def test_client_secret(t):
    p = mock(t, public=True)
    write_token(t, "pub", p.grant())
    cfg = config(t, [account(t, p, "pub", oauth2_client_secret="s3cr3t")])
    r = once(t, cfg)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"
    err = r.account("pub")["error"]
    assert "AADSTS700025" in err and "remove oauth2-client-secret" in err, \
        err

    srv = t.fx.dovecot(t)
    p = provider(t)
    p.client_secret = "conf-S3cret"
    m = msgs("secret")
    srv.set_mailbox("user1", m)
    write_token(t, "conf", p.grant("user1"))
    a = account(t, p, "conf", srv=srv)
    del a["oauth2_client_secret"]
    a["oauth2_client_secret_command"] = "echo conf-S3cret"
    cfg = config(t, [a])
    r = once(t, cfg)
    assert r.rc == 0, f"exit {r.rc}: {r.account('conf')['error']}"
    mt.assert_maildir(t.tmp / "Maildir-conf", m)
    assert p.token_requests()[-1].get("client_secret") == "conf-S3cret"
    p.client_secret = None



@tap.test(name="--once: the token endpoint's certificate is verified "
          "like a mail server's (ca-file of another CA: 77, why, the "
          "token never sent)")
def test_token_endpoint_tls(t):
    p = mock(t)
    rt = p.grant()
    write_token(t, "tls", rt)
    cfg = config(t, [account(t, p, "tls",
                             ca_file=str(certs.get().other_ca))])
    r = once(t, cfg)
    assert r.rc == mt.EX_NOPERM, f"exit {r.rc}"
    err = r.account("tls")["error"]
    assert "certificate verification failed for 127.0.0.1" in err, err
    assert not p.token_requests(), "the refresh token went out"


if __name__ == "__main__":
    tap.main(fixture=Fixture)
