"""maildd.py: maild -d (the daemon, in the foreground) in the background
of a test, for the tests that signal it.

    dm = maildd.Daemon(t, cfg)                # killed by PID when t ends
    dm.wait_log(r"started: ")
    recs = dm.wait_summaries("work", n=1)    # summary lines, as dicts
    mark = dm.mark(); dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded ", since=mark)
    rc = dm.stop()                            # SIGTERM, its exit status

maild's stderr (and stdout) go to a file in t.tmp, attached to the test.
Every wait is bounded, scaled by MAILD_TIMEOUT_SCALE; a wait fails at
once if maild has exited.  maild runs in its own process group: stopping
it also stops a password-command it started.
"""

import os
import re
import shlex
import signal
import subprocess
import time

import maildtest as mt

SCALE = float(os.environ.get("MAILD_TIMEOUT_SCALE", "1"))


def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns something true; fail after timeout
    (scaled) seconds."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what}")
        time.sleep(interval)


class Daemon:
    """maild -d with flags and -f cfg; env: extra environment (None
    values unset a variable); preexec: run in the child before exec (to
    change user or limits)."""

    def __init__(self, t, cfg, *flags, env=None, label="maild-d",
                 preexec=None):
        mt.require_maild()
        self.t = t
        self.label = label
        self.errpath = t.tmp / f"{label}.log"
        self.cmd = (shlex.split(os.environ.get("MAILD_WRAPPER", "")) +
                    [mt.maild_bin(), "-d", *map(str, flags), "-f", str(cfg)])
        self._errf = open(self.errpath, "wb")
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                  stdout=self._errf, stderr=self._errf,
                                  env=mt._env(env), start_new_session=True,
                                  preexec_fn=preexec)
        self.pid = self.p.pid
        t.defer(self.kill)

    # -- the log ---------------------------------------------------------
    def log(self, since=0):
        data = self.errpath.read_bytes()
        self.t.attach(self.label, f"$ {shlex.join(self.cmd)}\n"
                      + data.decode("utf-8", "replace"))
        return data[since:].decode("utf-8", "replace")

    def mark(self):
        """A position in the log: wait for what comes after it."""
        return self.errpath.stat().st_size

    def summaries(self, account=None, since=0):
        return [r for r in mt.summary_lines(self.log(since))
                if account is None or r["account"] == account]

    def alive(self, what="it"):
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
                self.alive(f"/{regex}/ in the log")
            return m
        return wait_until(find, timeout, f"/{regex}/ in maild's log")

    def wait_summaries(self, account, n=1, since=0, timeout=10):
        """The summary lines of account after since, once there are n."""
        def get():
            recs = self.summaries(account, since)
            if len(recs) >= n:
                return recs
            self.alive(f"{n} summary line(s) of {account}")
            return None
        return wait_until(get, timeout, f"{n} summary line(s) of account "
                          f"{account}")

    # -- signals ---------------------------------------------------------
    def signal(self, sig):
        self.alive(f"sending signal {sig}")
        os.kill(self.pid, sig)

    def reload(self, timeout=10):
        """SIGHUP; waits for "reloaded" (or "reload failed"), returns
        that line."""
        mark = self.mark()
        self.signal(signal.SIGHUP)
        return self.wait_log(r"^.*(reloaded |reload failed).*$", since=mark,
                             timeout=timeout).group(0)

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=timeout * SCALE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"maild did not exit within {timeout} s "
                                 "of SIGTERM; killed it")
        self.log()
        return rc

    def kill(self):
        if self.p.poll() is None:
            mt.kill_tree(self.p)
        if not self._errf.closed:
            self._errf.close()
        try:
            self.log()
        except OSError:
            pass
