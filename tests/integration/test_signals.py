#!/usr/bin/env python3
"""test_signals.py: maild -d and SIGUSR1, SIGTERM (issue 5).

SIGUSR1 polls every idle account now, even one in backoff, never a second
session for a busy one.  SIGTERM during a large fetch (Dovecot over a
slow link): exit 0 within the grace time, nothing lost or duplicated
after a restart, what was deleted was delivered; the message in flight
is finished; a hanging server is cut when the grace time runs out; a
second signal stops at once; before the transfer (password-command,
TLS handshake) maild stops at once and leaves no process behind.

Every daemon is stopped by its PID; every wait has a time limit.
"""

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, at_once, conn_times, Daemon, dc_acct, delay_of, fixture, GRACE,
    ids, server, simple_msgs, wait_until, write_conf)


def quick(seconds):
    """The bound on stopping "at once" (seconds, scaled): short of the
    grace time, which is what maild would wait otherwise."""
    return min(seconds * mt.timeout_scale(), GRACE - 3)


class Throttle:
    """A TCP proxy on 127.0.0.1 that passes the server's bytes on at a
    limited rate (bytes per second): a slow link for a big fetch."""

    def __init__(self, port, rate):
        self.upstream = ("127.0.0.1", port)
        self.rate = rate
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.socks = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()
        tap.current().defer(self.stop)

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, None),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, self.rate),
                             daemon=True).start()

    def _pump(self, src, dst, rate):
        try:
            while True:
                data = src.recv(8192)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        for s in [self.ls] + self.socks:
            try:
                s.close()
            except OSError:
                pass


@tap.test(timeout=60)
def test_sigusr1_polls_now(t):
    """poll-interval 1h: SIGUSR1 makes every idle account poll at once, also
    one waiting out a backoff, but never a second session for a busy
    one."""
    a = server(simple_msgs("usr1a", 1))
    refused = []

    def pass_once_refused(conn, cmd):
        if not refused:
            refused.append(cmd.t)
            return b"-ERR [AUTH] not today\r\n"
        return None
    b = server(simple_msgs("usr1b", 1), handlers={"PASS": pass_once_refused})
    slow = simple_msgs("usr1c", 10)
    c = server(slow, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.1, 128)})
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [
        acct("a", a, t.tmp / "Maildir-a"),
        acct("b", b, t.tmp / "Maildir-b"),
        acct("c", c, t.tmp / "Maildir-c")], state,
        poll_interval=mt.Raw("1h"))
    dm = Daemon(t, cfg)
    ra = dm.wait_summaries("a", 1, timeout=10)[0]
    rb = dm.wait_summaries("b", 1, timeout=10)[0]
    assert ra["fetched"] == 1 and delay_of(ra) == 3600, ra["line"]
    assert rb["error"] and delay_of(rb) >= 4 * 3600 * 0.9, \
        f"b should be in backoff: {rb['line']}"
    assert not dm.summaries("c"), "c's slow session ended too soon"
    a.add(corpus.simple("usr1a/new"))
    time.sleep(0.5)
    assert len(a.connections) == 1, "a polled again without a reason"
    mark = dm.mark()
    t_sig = time.monotonic()
    dm.signal(signal.SIGUSR1)
    ra = dm.wait_summaries("a", 1, mark, timeout=5)[0]
    rb = dm.wait_summaries("b", 1, mark, timeout=5)[0]
    lag = conn_times(a)[1] - t_sig
    assert lag < at_once(), f"a polled {lag:.2f} s after SIGUSR1"
    assert ra["fetched"] == 1 and ra["error"] is None, ra["line"]
    assert rb["error"] is None and rb["fetched"] == 1, \
        f"b (in backoff) was not polled, or failed: {rb['line']}"
    assert delay_of(rb) == 3600, f"the success did not reset b's " \
        f"backoff: {rb['line']}"
    rc_ = dm.wait_summaries("c", 1, timeout=20)[0]
    assert rc_["error"] is None and rc_["fetched"] == 10, rc_["line"]
    assert len(c.connections) == 1, \
        f"SIGUSR1 started a second session for the busy account c " \
        f"({len(c.connections)} connections)"
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(t.tmp / "Maildir-a", a.datas())
    mt.assert_maildir(t.tmp / "Maildir-c", slow)


@tap.test(timeout=150)
def test_sigterm_during_big_fetch_dovecot(t):
    """Delete mode, a few hundred messages from Dovecot over a slow link:
    SIGTERM in the middle; maild finishes what is in flight, deletes what
    it delivered, exits 0 well within the grace time.  What the server
    lost is exactly what the Maildir got; a restart (--once) fetches the
    rest: every message exactly once, the server empty."""
    msgs = corpus.generate(seed=55, count=420, prefix="term", max_large=4,
                           huge_bytes=3_000_000)
    total = corpus.total_bytes(msgs)
    sh = t.fx
    user = sh.user(msgs)
    dc = sh.dovecot()
    # a bit over two pipelining windows (200 RETRs) at ~2.5 MB/s
    proxy = Throttle(dc.pop3s_port, rate=2_500_000)
    md = t.tmp / "Maildir"
    state = t.tmp / "state"
    A = dc_acct("big", dc, user, md, keep=False, port=proxy.port)
    cfg = write_conf(t.tmp / "maild.conf", [A], state, timeout=30)
    t.note(f"{len(msgs)} messages, {total} bytes")
    dm = Daemon(t, cfg)
    wait_until(lambda: (mt.count_new(md) + len(os.listdir(md / "tmp"))
                        if (md / "tmp").is_dir() else 0) >= 30, 30,
               "maild to be fetching")
    rc, secs = dm.stop()
    log = dm.log()
    t.note(f"stopped in {secs:.1f} s")
    assert rc == 0, f"exit {rc} after SIGTERM"
    assert secs < GRACE + 3 * mt.timeout_scale(), \
        f"SIGTERM took {secs:.1f} s"
    assert "stopping:" in log and "stopped" in log
    assert "still running after" not in log, \
        "the grace time ran out: the in-flight messages did not finish"
    rec = dm.summaries("big")[-1]
    t.note(f"fetched {rec['fetched']} before stopping")
    assert 0 < rec["fetched"] < len(msgs), (
        "SIGTERM did not land in the middle of the fetch (fetched="
        f"{rec['fetched']} of {len(msgs)}): {rec['line']}")
    got = mt.read_maildir(md)
    assert not mt.compare_messages(got, [m for m in msgs if m.id in
                                         set(ids(got))]), \
        mt.compare_messages(got, [m for m in msgs if m.id in set(ids(got))])
    mt.assert_tmp_empty(md)
    assert len(got) == rec["fetched"], \
        f"{len(got)} in the Maildir, fetched={rec['fetched']}"
    left = dc.mailbox(user)
    left_ids = set(ids(left))
    got_ids = set(ids(got))
    deleted = {m.id for m in msgs} - left_ids
    assert deleted <= got_ids, (f"{len(deleted - got_ids)} deleted from "
                                "the server but not delivered: "
                                f"{sorted(deleted - got_ids)[:5]}")
    assert got_ids <= deleted, (
        f"{len(got_ids - deleted)} delivered but not deleted on a clean "
        "stop")
    assert rec["deleted"] == len(deleted), rec["line"]
    recs = mt.state_records(state, "big")
    assert all(k == "D" for k, _, _ in recs), "pending records after a stop"
    # restart
    r = mt.run_maild(["--once", "-f", cfg], timeout=120, label="restart")
    assert r.rc == 0, f"restart: exit {r.rc}"
    assert r.account("big")["fetched"] == len(msgs) - len(got), \
        r.account("big")["line"]
    mt.assert_maildir(md, msgs)
    assert dc.mailbox(user) == [], "messages left on the server"


@tap.test(timeout=60)
def test_sigterm_finishes_message_in_flight(t):
    """Lock-step (no PIPELINING), keep mode, a server that drips: after
    SIGTERM the message on its way is completed and kept (not dropped),
    no new RETR is sent, the session says QUIT; the restart fetches only
    the others."""
    m = simple_msgs("drip", 20, body="x" * 70 + "\n" * 1 + "y" * 3000 + "\n")
    a = server(m, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.02, 256)})
    md = t.tmp / "Maildir"
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [acct("drip", a, md)], state)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 4, 10, "the 4th RETR")
    time.sleep(0.05)        # in the middle of that message
    retr_before = a.counts.get("RETR", 0)
    rc, secs = dm.stop()
    assert rc == 0, f"exit {rc}"
    assert "still running after" not in dm.log(), \
        "the grace time ran out: the message in flight did not finish"
    assert secs < quick(5), f"stopping took {secs:.1f} s"
    conn = a.connections[0]
    verbs = conn.verbs()
    nretr = verbs.count("RETR")
    assert nretr in (retr_before, retr_before + 1), \
        f"{nretr} RETRs, {retr_before} before SIGTERM"
    asked = [conn.msg(c.arg) for c in conn.commands if c.verb == "RETR"]
    got = mt.read_maildir(md)
    assert ids(got) == sorted(x.data and corpus.test_id(x.data)
                              for x in asked), (
        "the Maildir does not hold exactly the messages asked for: "
        f"{ids(got)} vs {nretr} RETRs")
    mt.assert_tmp_empty(md)
    r = mt.run_maild(["--once", "-f", cfg], timeout=60, label="restart")
    assert r.rc == 0
    assert r.account("drip")["fetched"] == 20 - nretr, \
        r.account("drip")["line"]
    mt.assert_maildir(md, m)
    assert a.verbs().count("RETR") == 20, \
        f"{a.verbs().count('RETR')} RETRs for 20 messages"
    # "... say QUIT and exit 0" (maild(8), SIGNALS).  maild hangs up as
    # soon as QUIT has left (nothing depends on its answer in keep mode):
    # the server may read it after maild has exited.
    wait_until(lambda: conn.verbs()[-1:] == ["QUIT"], 5,
               f"QUIT at the end of the stopped session: {conn.verbs()}")


def hanging_server(t, n=6):
    m = simple_msgs("hang", n)
    a = server(m, pipelining=False,
               handlers={"RETR": fakepop3.hang_after(100, nth=3)})
    md = t.tmp / "Maildir"
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [acct("hang", a, md, keep=False)],
                     state, timeout=60)
    return m, a, md, cfg


@tap.test(timeout=90)
def test_sigterm_grace_time_runs_out(t):
    """The server hangs in the middle of a message: after SIGTERM maild
    waits the grace time (20 s), then cuts the session, keeps the
    complete messages and exits 0.  The restart fetches the rest, once."""
    m, a, md, cfg = hanging_server(t)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 3, 10, "the 3rd RETR")
    time.sleep(0.3)
    rc, secs = dm.stop(timeout=GRACE + 15)
    t.note(f"stopped after {secs:.1f} s")
    assert rc == 0, f"exit {rc}"
    assert GRACE - 1 <= secs <= GRACE + 5 * mt.timeout_scale(), \
        f"exited {secs:.1f} s after SIGTERM, grace is {GRACE} s"
    dm.wait_log(r"still running after \d+ seconds", timeout=1)
    got = mt.read_maildir(md)
    mt.assert_messages(got, m[:2], "Maildir after the cut")
    mt.assert_tmp_empty(md)
    a.handlers.pop("RETR")
    r = mt.run_maild(["--once", "-f", cfg], timeout=60, label="restart")
    assert r.rc == 0, f"restart: exit {r.rc}"
    rec = r.account("hang")
    assert rec["fetched"] == len(m) - 2, rec["line"]
    mt.assert_maildir(md, m)
    assert a.mailbox == [], f"{len(a.mailbox)} left on the server"


@tap.test(timeout=60)
def test_second_sigterm_stops_now(t):
    """A second SIGTERM ends the sessions at once: exit 0 within a few
    seconds, complete messages kept, nothing lost."""
    m, a, md, cfg = hanging_server(t)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 3, 10, "the 3rd RETR")
    time.sleep(0.3)
    dm.signal(signal.SIGTERM)
    time.sleep(1.0)
    assert dm.p.poll() is None, "maild did not wait for the hung session"
    rc, secs = dm.stop(timeout=10)
    assert rc == 0, f"exit {rc}"
    assert secs < quick(3), f"the second signal took {secs:.1f} s"
    dm.wait_log("second signal", timeout=1)
    mt.assert_messages(mt.read_maildir(md), m[:2], "Maildir after the cut")
    mt.assert_tmp_empty(md)
    a.handlers.pop("RETR")
    r = mt.run_maild(["--once", "-f", cfg], timeout=60, label="restart")
    assert r.rc == 0
    mt.assert_maildir(md, m)
    assert a.mailbox == []


def procs_with(marker):
    """PIDs whose command line contains marker (bytes)."""
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != os.getpid():
            try:
                if marker in Path(f"/proc/{e}/cmdline").read_bytes():
                    out.append(int(e))
            except OSError:
                pass
    return out


@tap.test(timeout=60)
def test_sigterm_before_the_transfer(t):
    """SIGTERM while a session waits for its password-command, or for a
    server that accepted the connection but never answers the TLS
    handshake: maild stops at once (nothing is in flight), exits 0, and
    leaves no process behind."""
    marker = f"29.{os.getpid()}{int(time.monotonic() * 1000) % 100000}"

    def cleanup():
        for pid in procs_with(marker.encode()):
            os.kill(pid, signal.SIGKILL)
    t.defer(cleanup)
    a = server(simple_msgs("pwcmd", 1))
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)            # never accepts: the handshake never ends
    t.defer(silent.close)
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf", [
        dict(acct("cmd", a, t.tmp / "Maildir-cmd"), password=None,
             password_command=f"sleep {marker}; echo {a.password}"),
        mt.account("mute", "127.0.0.1", silent.getsockname()[1], "u", "p",
                   t.tmp / "Maildir-mute", ca_file=certs.get().ca)],
        state, timeout=60, poll_interval=mt.Raw("1h"))
    dm = Daemon(t, cfg)
    wait_until(lambda: len(procs_with(marker.encode())) >= 2, 10,
               "the password-command (sh and its sleep) to run")
    time.sleep(0.5)
    t.note(f"before SIGTERM: {procs_with(marker.encode())}")
    rc, secs = dm.stop()
    assert rc == 0, f"exit {rc}"
    assert secs < quick(3), \
        f"SIGTERM took {secs:.1f} s with nothing in flight"
    time.sleep(0.3)
    left = procs_with(marker.encode())
    assert not left, (
        f"the password-command's child (sleep, pids {left}) outlived maild: "
        "only the shell was killed")


if __name__ == "__main__":
    tap.main(fixture=fixture)
