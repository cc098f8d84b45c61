#!/usr/bin/env python3
"""test_secrets.py: where the password (or OAuth token) comes from, and
that it never shows.

password (in the 0600 config), password-file (first line only; a file
readable by group or others is refused), password-credential
($CREDENTIALS_DIRECTORY/<name>), password-command: run at every login
(counted), never holding up other accounts (a slow command on one
account, the other finishes first), bounded in time (a command that
never ends is killed after `timeout`, its children too), bounded in output,
its exit status checked (non-zero: clear error, no connection, nothing
fetched), first line only.  With -vv, no secret appears in the log, nor
its base64 forms, nor in the state or status files.
"""

import os
import resource
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

SECRET = "Sx7-unLikely-p4ssw0rd-Q"


def msgs(prefix, n=2):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


def fake(messages=(), password=SECRET, **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server,
                             password=password, **kw)


def account(t, srv, name="sec", maildir=None, **extra):
    """An account on srv whose password comes from extra (password=...,
    password_file=..., ...)."""
    a = mt.account(name, "127.0.0.1", srv.port, srv.user, None,
                   maildir or t.tmp / f"Maildir-{name}", keep=True,
                   ca_file=certs.get().ca)
    a.update(extra)
    return a


def run_once(t, accounts, *flags, limit=30, env=None, **globals_):
    """maild --once on a config of accounts (global options in globals_;
    timeout = 10 unless given); limit bounds the run."""
    cfg = mt.write_config(t.tmp / "maild.conf", accounts,
                          state_dir=t.tmp / "state",
                          **({"timeout": 10} | globals_))
    mt.require_maild()
    return mt.run_maild(["--once", *flags, "-f", cfg], timeout=limit,
                        env=env)


def check(t, r, name="sec"):
    assert r.rc == 0, f"exit {r.rc}: {r.account(name)['error']}"


def assert_not_leaked(t, r, secret, user="fakeuser"):
    """Neither the secret nor what maild derives from it for the wire
    (base64 of PLAIN, LOGIN, XOAUTH2) is in the log or the state dir."""
    forms = {
        "the secret": secret,
        "base64 of the secret": fakepop3.b64(secret),
        "base64 PLAIN response": fakepop3.b64(f"\0{user}\0{secret}"),
        "base64 XOAUTH2 response":
            fakepop3.b64(f"user={user}\1auth=Bearer {secret}\1\1"),
    }
    for what, s in forms.items():
        assert s not in r.stderr, f"{what} is in maild's log"
    state = t.tmp / "state"
    if state.is_dir():
        for p in state.iterdir():
            if p.is_file():
                data = p.read_bytes()
                assert secret.encode() not in data, f"the secret is in {p}"


def first_login(srv):
    got = [a for c in srv.connections for a in c.auths]
    assert got, "no login attempt"
    return got[0]


# ---------------------------------------------------------------------------
# the four sources

@tap.test(name="password in the config: logs in; -vv shows no secret")
def test_inline(t):
    m = msgs("inline")
    with fake(m, sasl=["PLAIN"]) as srv:
        r = run_once(t, [account(t, srv, password=SECRET)], "-vv")
        check(t, r)
        assert first_login(srv).ok
        assert_not_leaked(t, r, SECRET)
        assert ">>> AUTH PLAIN" in r.stderr, "no protocol trace with -vv"
        mt.assert_maildir(t.tmp / "Maildir-sec", m)


@tap.test(name="password-file: first line only; -vv shows no secret")
def test_password_file(t):
    m = msgs("pwfile")
    pf = mt.write_file(t.tmp / "pass", f"{SECRET}\nsecond-line\n", 0o600)
    with fake(m) as srv:
        r = run_once(t, [account(t, srv, password_file=str(pf))], "-vv")
        check(t, r)
        a = first_login(srv)
        assert a.responses == [SECRET.encode()], a.responses
        assert_not_leaked(t, r, SECRET)
        mt.assert_maildir(t.tmp / "Maildir-sec", m)


@tap.test(name="password-file without a final newline, with CRLF")
def test_password_file_crlf(t):
    for i, text in enumerate((SECRET, f"{SECRET}\r\nx\r\n")):
        pf = mt.write_file(t.tmp / f"pass{i}", text, 0o600)
        with fake(msgs(f"pwcrlf{i}")) as srv:
            r = run_once(t, [account(t, srv, password_file=str(pf),
                                     maildir=t.tmp / f"md{i}")])
            check(t, r)
            assert first_login(srv).responses == [SECRET.encode()]


def _mode_test(mode):
    def test(t):
        pf = mt.write_file(t.tmp / "pass", SECRET + "\n", mode)
        with fake(msgs("pwmode")) as srv:
            acc = [account(t, srv, password_file=str(pf))]
            r = run_once(t, acc)
            assert r.rc == mt.EX_CONFIG, f"exit {r.rc}, expected 78"
            err = r.account("sec")["error"] or ""
            assert str(pf) in err and "chmod 600" in err, err
            assert not srv.connections, "maild connected anyway"
            assert mt.read_maildir(t.tmp / "Maildir-sec") == []
            # maild -n says so too
            n = mt.run_maild(["-n", "-f", t.tmp / "maild.conf"], timeout=20)
            assert n.rc == mt.EX_CONFIG, f"maild -n: exit {n.rc}"
            assert str(pf) in n.stderr and "chmod 600" in n.stderr, \
                n.stderr
    return test


for _mode in (0o640, 0o604, 0o660):
    tap.test(name=f"password-file mode {_mode:04o}: refused (78, chmod "
             "hint), no connection; -n too")(_mode_test(_mode))


@tap.test(name="password-credential: $CREDENTIALS_DIRECTORY/<name>")
def test_credential(t):
    m = msgs("cred")
    creds = t.tmp / "creds"
    creds.mkdir()
    mt.write_file(creds / "pop-pass", SECRET + "\n", 0o400)
    with fake(m) as srv:
        r = run_once(t, [account(t, srv, password_credential="pop-pass")],
                     "-vv", env={"CREDENTIALS_DIRECTORY": str(creds)})
        check(t, r)
        assert first_login(srv).responses == [SECRET.encode()]
        assert_not_leaked(t, r, SECRET)
        mt.assert_maildir(t.tmp / "Maildir-sec", m)


@tap.test(name="password-credential without $CREDENTIALS_DIRECTORY: clear "
          "error, no connection")
def test_credential_no_env(t):
    with fake(msgs("nocred")) as srv:
        r = run_once(t, [account(t, srv, password_credential="pop-pass")],
                     env={"CREDENTIALS_DIRECTORY": None})
        assert r.rc != 0, "exit 0 without a credential"
        err = r.account("sec")["error"] or ""
        assert "CREDENTIALS_DIRECTORY" in err, err
        assert not srv.connections


@tap.test(name="password-credential: a missing credential file is a clear "
          "error")
def test_credential_missing(t):
    creds = t.tmp / "creds"
    creds.mkdir()
    with fake(msgs("credmissing")) as srv:
        r = run_once(t, [account(t, srv, password_credential="absent")],
                     env={"CREDENTIALS_DIRECTORY": str(creds)})
        assert r.rc != 0
        err = r.account("sec")["error"] or ""
        assert str(creds / "absent") in err, err
        assert not srv.connections


@tap.test(name="password-credential that is a path: config error with "
          "file:line")
def test_credential_path(t):
    with fake() as srv:
        cfg = mt.write_config(t.tmp / "maild.conf", [account(
            t, srv, password_credential="../etc/shadow")],
            state_dir=t.tmp / "state")
        r = mt.run_maild(["-n", "-f", cfg], timeout=20)
        assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"
        line = cfg.read_text().splitlines().index(
            '    password-credential = "../etc/shadow"') + 1
        assert f"{cfg}:{line}:" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# password-command

@tap.test(name="password-command: first line only; -vv shows no secret")
def test_command_first_line(t):
    m = msgs("cmd")
    with fake(m, sasl=["XOAUTH2"], tokens=[SECRET]) as srv:
        r = run_once(t, [account(
            t, srv, auth="xoauth2",
            password_command=f"printf '%s\\n%s\\n' {SECRET} second")],
            "-vv")
        check(t, r)
        a = first_login(srv)
        assert a.token == SECRET, a.token
        assert_not_leaked(t, r, SECRET)
        mt.assert_maildir(t.tmp / "Maildir-sec", m)


def daemon_until(t, cfg, n_summaries, timeout=20, name="sec"):
    """Run maild -d until it has logged n summary lines for account name
    (or timeout); stop it (SIGTERM, by PID); returns its stderr."""
    mt.require_maild()
    errpath = t.tmp / "daemon.stderr"
    p = mt.start_maild(["-d", "-f", cfg], errpath)
    try:
        deadline = time.monotonic() + timeout * mt.timeout_scale()
        while time.monotonic() < deadline and p.poll() is None:
            recs = [s for s in mt.summary_lines(
                errpath.read_text(errors="replace")) if s["account"] == name]
            if len(recs) >= n_summaries:
                break
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
    return err


@tap.test(name="password-command runs at every login (daemon, 3 polls: "
          "3 runs, 3 fresh tokens)")
def test_command_every_login(t):
    counter = t.tmp / "count"
    cmd = (f"echo run >> {counter}; "
           f"echo tok-$(wc -l < {counter} | tr -d ' ')")
    tokens = [f"tok-{i}" for i in range(1, 10)]
    with fake(msgs("every"), sasl=["XOAUTH2"], tokens=tokens) as srv:
        cfg = mt.write_config(t.tmp / "maild.conf", [account(
            t, srv, auth="xoauth2", password_command=cmd,
            poll_interval=mt.Raw("1s"))], state_dir=t.tmp / "state",
            timeout=10)
        err = daemon_until(t, cfg, 3)
        recs = [s for s in mt.summary_lines(err) if s["account"] == "sec"]
        assert len(recs) >= 3, f"{len(recs)} polls"
        srv.wait_idle(5)
        runs = counter.read_text().count("run")
        logins = [a.token for c in srv.connections for a in c.auths]
        t.note(f"command runs: {runs}, tokens seen: {logins}")
        assert len(logins) >= 3, logins
        assert runs == len(logins), (f"the command ran {runs} times for "
                                     f"{len(logins)} logins")
        assert logins == tokens[:len(logins)], \
            f"tokens not fresh at each login: {logins}"
        assert all(a.ok for c in srv.connections for a in c.auths)


@tap.test(name="a slow password-command does not hold up another account")
def test_command_does_not_block(t):
    """The slow account's password-command returns only once the fast
    account's message is in its Maildir: if maild waited for the command
    before polling the other account, the command would wait for ever
    (killed after timeout, the slow account failing).  No wall clock: the
    order is the test."""
    ma, mb = msgs("slowA"), msgs("fastB")
    fast_new = t.tmp / "Maildir-fast" / "new"
    wait = (f'while [ -z "$(ls -A {fast_new} 2>/dev/null)" ]; do '
            "sleep 0.05; done")
    with fake(ma) as sa, fake(mb) as sb:
        accs = [account(t, sa, name="slow",
                        password_command=f"{wait}; echo {SECRET}"),
                account(t, sb, name="fast",
                        password_command=f"echo {SECRET}")]
        # maild's timeout bounds the command; generous, so that only a
        # fast account held up by the slow one's command can exhaust it
        r = run_once(t, accs, max_connections=4, limit=90,
                     timeout=int(30 * mt.timeout_scale()))
        t.note("the slow account fails with 'password-command timed out' "
               "if the fast one was held up by it")
        check(t, r, "fast")
        check(t, r, "slow")
        fast, slow = r.account("fast"), r.account("slow")
        lines = r.stderr.splitlines()
        assert lines.index(fast["line"]) < lines.index(slow["line"]), \
            "the fast account finished after the slow one"
        # the slow account connects once it has its password
        assert sb.connections[0].greeting_end < \
            sa.connections[0].greeting_end, \
            "the slow account connected before the fast one had its mail"
        mt.assert_maildir(t.tmp / "Maildir-slow", ma)
        mt.assert_maildir(t.tmp / "Maildir-fast", mb)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_dead(pids, timeout=3):
    deadline = time.monotonic() + timeout * mt.timeout_scale()
    while time.monotonic() < deadline and any(map(pid_alive, pids)):
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def kill_later(t, pidfile):
    """Cleanup: a process the test made maild start, by its PID."""
    def kill():
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    t.defer(kill)


def run_bounded(t, accounts, limit, **globals_):
    """maild --once with its output in files (not pipes: a process maild
    leaves behind must not hold the test up), killed (its process group,
    by PID) after limit seconds (scaled).  Returns (exit status or None if it had
    to be killed, stderr, seconds)."""
    cfg = mt.write_config(t.tmp / "maild.conf", accounts,
                          state_dir=t.tmp / "state", **globals_)
    mt.require_maild()
    errpath = t.tmp / "maild.stderr"
    started = time.monotonic()
    p = mt.start_maild(["--once", "-f", cfg], errpath)
    try:
        rc = p.wait(timeout=limit * mt.timeout_scale())
    except subprocess.TimeoutExpired:
        rc = None
        mt.kill_tree(p)
    took = time.monotonic() - started
    err = errpath.read_text(errors="replace")
    t.attach("maild stderr", err + f"[exit status {rc}]")
    return rc, err, took


def _hang_test(compound):
    def test(t):
        shpid, childpid = t.tmp / "sh.pid", t.tmp / "child.pid"
        kill_later(t, shpid)
        kill_later(t, childpid)
        if compound:
            # a shell that waits for a child: both must go
            cmd = (f"echo $$ > {shpid}; sleep 1000 & echo $! > {childpid}; "
                   "wait; echo never")
        else:
            cmd = f"echo $$ > {shpid}; exec sleep 1000"
        with fake(msgs("hang")) as srv:
            rc, err, took = run_bounded(t, [account(
                t, srv, password_command=cmd)], 10, timeout=2)
            assert rc is not None, ("maild did not finish within 10 s "
                                    "(timeout = 2); killed it")
            assert rc != 0, "exit 0 with a hanging password-command"
            assert "password-command timed out" in err, "no clear error"
            assert took < 2 + 4 * mt.timeout_scale(), \
                f"took {took:.1f} s with timeout = 2"
            assert not srv.connections, "connected without a password"
            pids = [int(shpid.read_text())]
            if compound:
                pids.append(int(childpid.read_text()))
            left = wait_dead(pids)
            assert not left, (f"processes of the timed-out password-command "
                              f"still running: {left}")
    return test


tap.test(name="password-command that never ends: killed after timeout "
         "(2 s), clear error")(_hang_test(False))
tap.test(name="password-command that never ends, with a child process: "
         "the whole command is killed")(_hang_test(True))


@tap.test(name="password-command printing endlessly: bounded (time and "
          "memory)")
def test_command_endless_output(t):
    with fake(msgs("yes")) as srv:
        rc, err, took = run_bounded(t, [account(
            t, srv, password_command="yes")], 8, timeout=2)
        assert rc is not None, ("maild did not finish within 8 s with "
                                "timeout = 2 (the command never stops "
                                "printing); killed it")
        assert rc != 0
        assert took < 2 + 4 * mt.timeout_scale(), \
            f"took {took:.1f} s with timeout = 2"
        assert not srv.connections
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        assert rss < 200 * 1024, f"a child used {rss} KiB"


@tap.test(name="password-command printing more than 16 KiB: refused")
def test_command_too_much(t):
    with fake(msgs("much")) as srv:
        r = run_once(t, [account(
            t, srv, password_command="head -c 20000 /dev/zero | tr '\\0' a")])
        assert r.rc != 0
        err = r.account("sec")["error"] or ""
        assert ("too much" in err or "too long" in err or
            "more than 16 KiB" in err), err
        assert not srv.connections


def _status_test(cmd, want):
    def test(t):
        with fake(msgs("status")) as srv:
            r = run_once(t, [account(t, srv, password_command=cmd)])
            assert r.rc != 0, "exit 0"
            assert r.rc != mt.EX_SOFTWARE, "internal error"
            err = r.account("sec")["error"] or ""
            assert want in err, f"{want!r} not in {err!r}"
            assert "password" in err, err
            assert not srv.connections, "connected anyway"
            assert mt.read_maildir(t.tmp / "Maildir-sec") == []
            assert SECRET not in r.stderr
    return test


tap.test(name="password-command exit status 3: clear error, no connection")(
    _status_test(f"echo {SECRET}; exit 3", "status 3"))
tap.test(name="password-command killed by a signal: clear error")(
    _status_test(f"echo {SECRET}; kill -9 $$", "signal 9"))
tap.test(name="password-command printing nothing: clear error")(
    _status_test("true", "empty"))
tap.test(name="password-command not found: clear error")(
    _status_test("/nonexistent/maild-test-helper", "status 127"))


if __name__ == "__main__":
    tap.main()
