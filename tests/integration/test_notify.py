#!/usr/bin/env python3
"""test_notify.py: maild -d and systemd's notify socket (issue 5).

READY=1, STATUS=, RELOADING=1 with MONOTONIC_USEC= then READY=1 around
SIGHUP, STOPPING=1 at SIGTERM, all from maild's own pid, on a path and
an abstract socket; a NOTIFY_SOCKET nobody listens on, that is no socket
address, or none at all changes nothing.

Every daemon is stopped by its PID; every wait has a time limit.
"""

import os
import re
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, Daemon, fixture, server, simple_msgs, wait_until, write_conf)


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket, with the
    sender's credentials."""

    def __init__(self, t, abstract=False):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"maild-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.s.bind("\0" + name)
            self.env = "@" + name
        else:
            path = str(t.tmp / "notify.sock")
            self.s.bind(path)
            self.env = path
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.s.settimeout(0.1)
        self.msgs = []          # (monotonic, pid, text)
        self._stop = False
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        t.defer(self.close)

    def _run(self):
        csize = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop:
            try:
                data, anc, _, _ = self.s.recvmsg(4096, csize)
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for lvl, typ, cd in anc:
                if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cd[:12])[0]
            self.msgs.append((time.monotonic(), pid,
                              data.decode("utf-8", "replace")))

    def texts(self):
        return [m[2] for m in self.msgs]

    def wait(self, pred, timeout, what):
        return wait_until(lambda: [m for m in self.msgs if pred(m[2])],
                          timeout, f"notification {what}; got "
                          f"{self.texts()}")

    def close(self):
        self._stop = True
        self._th.join(2)
        self.s.close()


def sd_notify_scenario(t, abstract):
    ns = NotifySocket(t, abstract)
    a = server(simple_msgs("sd", 1))
    state = t.tmp / "state"
    A = acct("sd", a, t.tmp / "Maildir", poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A], state)
    dm = Daemon(t, cfg, env={"NOTIFY_SOCKET": ns.env})
    ns.wait(lambda s: "READY=1" in s, 10, "READY=1")
    dm.wait_summaries("sd", 1, timeout=10)
    ns.wait(lambda s: s.startswith("STATUS=") and "last poll 20" in s, 5,
            "STATUS= after the first poll")
    st = [x for x in ns.texts() if x.startswith("STATUS=")]
    t.note(f"STATUS lines: {st}")
    assert re.match(r"STATUS=1 account, last poll \S+, 0 failing", st[-1]), \
        st[-1]
    # reload: RELOADING=1 with MONOTONIC_USEC, then READY=1
    for what, conf_text in (("good", None), ("broken", "oops {\n")):
        if conf_text is not None:
            mt.write_file(cfg, conf_text)
        n0 = len(ns.msgs)
        t1 = time.monotonic()
        dm.signal(signal.SIGHUP)
        wait_until(lambda: any("READY=1" in m[2] for m in ns.msgs[n0:]), 5,
                   f"READY=1 after a {what} reload; got {ns.texts()[n0:]}")
        t2 = time.monotonic()
        after = ns.msgs[n0:]
        texts = [m[2] for m in after]
        k = next((i for i, x in enumerate(texts) if "RELOADING=1" in x),
                 None)
        assert k is not None, f"{what} reload: no RELOADING=1 in {texts}"
        r = next(i for i, x in enumerate(texts) if "READY=1" in x)
        assert k < r, f"{what} reload: READY=1 before RELOADING=1: {texts}"
        fields = dict(ln.split("=", 1) for ln in texts[k].splitlines()
                      if "=" in ln)
        assert "MONOTONIC_USEC" in fields, \
            f"RELOADING=1 without MONOTONIC_USEC=: {texts[k]!r}"
        usec = int(fields["MONOTONIC_USEC"])
        assert t1 * 1e6 - 1000 <= usec <= t2 * 1e6 + 1000, \
            f"MONOTONIC_USEC={usec} not between {t1 * 1e6:.0f} and " \
            f"{t2 * 1e6:.0f} (CLOCK_MONOTONIC)"
    # stop
    n0 = len(ns.msgs)
    rc, _ = dm.stop()
    assert rc == 0, f"exit {rc}"
    time.sleep(0.2)
    assert any("STOPPING=1" in x for x in ns.texts()[n0:]), \
        f"no STOPPING=1 at SIGTERM: {ns.texts()[n0:]}"
    # every notification came from maild's main process (NotifyAccess=main)
    others = [m for m in ns.msgs if m[1] != dm.pid]
    assert not others, f"notifications not from maild's pid {dm.pid}: " \
        f"{others}"


@tap.test(timeout=40)
def test_sd_notify_path_socket(t):
    """NOTIFY_SOCKET=/path: READY=1, STATUS=, RELOADING=1 with
    MONOTONIC_USEC= then READY=1 around SIGHUP (also a refused one),
    STOPPING=1 at SIGTERM, all from maild's own pid."""
    sd_notify_scenario(t, abstract=False)


@tap.test(timeout=40)
def test_sd_notify_abstract_socket(t):
    """The same with an abstract socket (NOTIFY_SOCKET=@name)."""
    sd_notify_scenario(t, abstract=True)


@tap.test(timeout=40)
def test_notify_socket_broken_or_absent(t):
    """A NOTIFY_SOCKET nobody listens on, or that is not a socket address,
    or none at all: maild works as usual."""
    for value in (str(t.tmp / "nobody-listens.sock"), "not-a-path",
                  "@maild-test-nobody-here", None):
        a = server(simple_msgs("nosd", 1))
        md = t.tmp / f"Maildir-{abs(hash(value))}"
        cfg = write_conf(t.tmp / "maild.conf",
                         [acct("x", a, md, poll_interval=mt.Raw("1h"))],
                         t.tmp / f"state-{abs(hash(value))}")
        dm = Daemon(t, cfg, env={"NOTIFY_SOCKET": value},
                    label=f"maild-d-{abs(hash(value))}")
        r = dm.wait_summaries("x", 1, timeout=10)[0]
        assert r["error"] is None and r["fetched"] == 1, \
            f"NOTIFY_SOCKET={value!r}: {r['line']}"
        mark = dm.mark()
        dm.signal(signal.SIGHUP)
        dm.wait_log("reloaded", mark, timeout=5)
        rc, _ = dm.stop()
        assert rc == 0, f"NOTIFY_SOCKET={value!r}: exit {rc}"


if __name__ == "__main__":
    tap.main(fixture=fixture)
