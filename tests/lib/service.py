"""service.py: maild as a service, for the integration tests that run
maild -d (test_reload, test_signals, test_schedule, test_daemon,
test_status, test_notify, test_logs).

    dm = Daemon(t, cfg)                 # maild -d -f cfg, killed at the end
    dm.wait_summaries("acct", 2)        # its summary lines, once there are 2
    mark = dm.mark(); dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded", mark)      # a line after the mark
    rc, secs = dm.stop()                # SIGTERM; exit status and seconds

server() starts a fake POP3S server with the test CA, acct() and
dc_acct() make account dicts for it or for a Dovecot user, write_conf()
replaces maild.conf atomically, conn_times() says when each connection
to a fake server began, status_file() parses maild.status, and
fixture() gives a file a private Dovecot, started on first use (t.fx).
wait_until() polls with a time limit; every limit is multiplied by
maildtest.timeout_scale() (valgrind, sanitizers); at_once() is the
bound on "at once".
"""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import certs
import corpus
import dovecot
import fakepop3
import maildtest as mt
import tap

GRACE = 20          # maild's stop grace time (maild(8), SIGNALS)


def at_once():
    """The bound on "at once" (seconds): generous, and scaled, but short
    of every poll-interval that the tests tell it from (30 s or more)."""
    return min(5 * mt.timeout_scale(), 20)


def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns something true; fail after timeout."""
    deadline = time.monotonic() + timeout * mt.timeout_scale()
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what}")
        time.sleep(interval)


class Daemon:
    """maild -d in the background, in its own process group, stderr (and
    stdout) to a file in t.tmp.  Killed by PID when the test ends at the
    latest."""

    def __init__(self, t, cfg, *flags, env=None, label="maild-d"):
        mt.require_maild()
        self.t = t
        self.label = label
        self.errpath = t.tmp / f"{label}.log"
        self.cmd = (shlex.split(os.environ.get("MAILD_WRAPPER", "")) +
                    [mt.maild_bin(), "-d", *map(str, flags), "-f", str(cfg)])
        self._errf = open(self.errpath, "wb")
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                  stdout=self._errf, stderr=self._errf,
                                  env=mt._env(env), start_new_session=True)
        self.pid = self.p.pid
        self.started = time.monotonic()
        t.defer(self.kill)

    # -- the log --------------------------------------------------------
    def raw(self):
        data = self.errpath.read_bytes()
        self.t.attach(self.label, f"$ {shlex.join(self.cmd)}\n"
                      + data.decode("utf-8", "replace"))
        return data

    def log(self, since=0):
        return self.raw()[since:].decode("utf-8", "replace")

    def mark(self):
        """A position in the log: wait for things after it."""
        return len(self.raw())

    def summaries(self, account=None, since=0):
        return [r for r in mt.summary_lines(self.log(since))
                if account is None or r["account"] == account]

    def _alive(self, what):
        rc = self.p.poll()
        if rc is not None:
            raise AssertionError(f"maild exited with status {rc} while "
                                 f"waiting for {what}")

    def wait_log(self, regex, since=0, timeout=10):
        """The first match of regex in the log after since."""
        rx = re.compile(regex, re.M)

        def find():
            m = rx.search(self.log(since))
            if m is None:
                self._alive(f"/{regex}/ in the log")
            return m
        return wait_until(find, timeout, f"/{regex}/ in maild's log")

    def wait_summaries(self, account, n=1, since=0, timeout=10):
        """The summary lines of account after since, once there are n."""
        def get():
            recs = self.summaries(account, since)
            if len(recs) >= n:
                return recs
            self._alive(f"{n} summary line(s) of {account}")
            return None
        return wait_until(get, timeout, f"{n} summary line(s) of account "
                          f"{account}")

    # -- signals ----------------------------------------------------------
    def signal(self, sig):
        self._alive(f"sending signal {sig}")
        os.kill(self.pid, sig)

    def stop(self, timeout=GRACE + 10):
        """SIGTERM; returns (exit status, seconds it took)."""
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=timeout * mt.timeout_scale())
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"maild did not exit within {timeout} s "
                                 "of SIGTERM; killed it")
        self.raw()
        return rc, time.monotonic() - t0

    def kill(self):
        if self.p.poll() is None:
            mt.kill_tree(self.p)
        if not self._errf.closed:
            self._errf.close()
        try:
            self.raw()
        except OSError:
            pass


def server(msgs=(), **kw):
    """A fake POP3S server (implicit TLS, the test CA), started; stopped
    at the end of the test."""
    return fakepop3.FakePOP3(msgs, tls=certs.get().server, **kw).start()


def acct(name, srv, maildir, keep=True, password=None, **extra):
    return mt.account(name, "127.0.0.1", srv.port, srv.user,
                      password or srv.password, maildir, keep=keep,
                      ca_file=certs.get().ca, **extra)


def write_conf(path, accounts, state_dir, **globals_):
    """write_config, but replaced atomically (a daemon may read it)."""
    globals_.setdefault("timeout", 10)
    tmp = Path(str(path) + ".new")
    mt.write_config(tmp, accounts, state_dir=state_dir, **globals_)
    os.replace(tmp, path)
    return Path(path)


def conn_times(srv):
    """When each connection to srv started (monotonic): its first command,
    else the end of its greeting."""
    out = []
    for c in list(srv.connections):
        if c.commands:
            out.append(c.commands[0].t)
        elif c.greeting_end is not None:
            out.append(c.greeting_end)
    return out


def simple_msgs(prefix, n, body="Hello.\n" * 40):
    return [corpus.simple(f"{prefix}/{i}", body=body) for i in range(n)]


def ids(datas):
    return sorted(corpus.test_id(mt.strip_trace(d)) for d in datas)


def delay_of(rec):
    v = rec.get("next")
    assert v is not None, f"no next= in the summary line: {rec['line']}"
    return int(v.rstrip("s"))


def status_file(state_dir):
    """maild.status parsed: (header dict, [account dicts], raw text)."""
    text = (Path(state_dir) / "maild.status").read_text()
    tap.current().attach("maild.status", text)
    head, accts = None, []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kv = parse_kv(line)
        assert kv is not None, f"not a key=value line: {line!r}"
        if "pid" in kv:
            assert head is None, "two pid= lines"
            head = kv
        else:
            accts.append(kv)
    assert head is not None, "no pid= line in maild.status"
    return head, accts, text
_KV_RE = re.compile(r'([a-z][a-z0-9-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse_kv(text):
    """A line that is nothing but key=value (value quoted if needed) pairs
    separated by single spaces, as a dict; None if it is not."""
    out = {}
    pos = 0
    while pos < len(text):
        m = _KV_RE.match(text, pos)
        if m is None:
            return None
        v = m.group(2)
        if v.startswith('"'):
            v = v[1:-1]
        out[m.group(1)] = v
        pos = m.end()
        if pos < len(text):
            if text[pos] != " ":
                return None
            pos += 1
    return out


class Shared:
    """What the tests of this file share: a private Dovecot, started on
    first use (skipping only the tests that need it if there is none)."""

    def __init__(self):
        self._dc = None
        self._users = 0

    def dovecot(self):
        if self._dc is None:
            dc = dovecot.Dovecot(certs.get())
            try:
                dc.start()
            except BaseException:
                dc.cleanup()
                raise
            self._dc = dc
        return self._dc

    def user(self, msgs, password=None):
        """A fresh Dovecot user holding msgs; returns its name."""
        dc = self.dovecot()
        self._users += 1
        name = f"svc{self._users}"
        dc.add_user(name, password)
        dc.set_mailbox(name, msgs)
        return name

    def close(self):
        if self._dc is not None:
            self._dc.cleanup()


def fixture():
    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        certs.get()
        sh = Shared()
        try:
            yield sh
        finally:
            sh.close()
    return cm()


def dc_acct(name, dc, user, maildir, keep=True, password=None, port=None,
            **extra):
    return mt.account(name, "127.0.0.1", port or dc.pop3s_port, user,
                      password or dc.password, maildir, keep=keep,
                      ca_file=dc.ca, **extra)
