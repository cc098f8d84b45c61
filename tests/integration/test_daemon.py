#!/usr/bin/env python3
"""test_daemon.py: maild as a daemon (issue 5).

Without -d it detaches (its own session, stdio on /dev/null, cwd /);
$STATE_DIRECTORY is the state directory when maild.conf names none; a
broken maild.conf ends it at once with exit 78 and file:line; the
account lock keeps a second maild --once off an account the daemon is
polling (exit 75 naming the daemon's pid, the other accounts polled,
--check still works).

Every daemon is stopped by its PID; every wait has a time limit.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, Daemon, fixture, server, simple_msgs, status_file, wait_until,
    write_conf)


@tap.test(timeout=60)
def test_lock_second_process(t):
    """While maild -d is in a slow session of an account, maild --once on
    the same file fails for that account with exit 75 and the first one's
    pid, polls the other account normally, and never delivers a message
    the first one delivers; maild --check works meanwhile."""
    slow_msgs = simple_msgs("lock", 12)
    slow = server(slow_msgs, handlers={"RETR":
                                       fakepop3.drip_response(0.05, 64)})
    fast = server(simple_msgs("free", 1))
    state = t.tmp / "state"
    md_slow, md_fast = t.tmp / "Maildir-slow", t.tmp / "Maildir-fast"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("slow", slow, md_slow, keep=False),
                      acct("fast", fast, md_fast)], state,
                     poll_interval=mt.Raw("1h"))
    dm = Daemon(t, cfg)
    dm.wait_summaries("fast", 1, timeout=10)
    wait_until(lambda: slow.counts.get("RETR", 0) >= 2, 10,
               "the slow session to be fetching")
    _, accts, _ = status_file(state)
    st = {x["account"]: x["state"] for x in accts}
    assert st == {"slow": "polling", "fast": "ok"}, \
        f"maild.status during the slow session: {st}"
    fast.add(corpus.simple("free/new"))
    nconn = len(slow.connections)
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="second maild")
    assert r.rc == mt.EX_TEMPFAIL, f"second maild: exit {r.rc}, expected 75"
    rs = r.account("slow")
    assert rs["error"], rs["line"]
    assert f"locked by process {dm.pid}" in rs["error"], \
        f"the error does not name pid {dm.pid}: {rs['line']}"
    assert rs["fetched"] == 0, rs["line"]
    rf = r.account("fast")
    assert rf["error"] is None and rf["fetched"] == 1, rf["line"]
    assert len(slow.connections) == nconn, \
        "the second maild connected to the locked account's server"
    # --check does not take the lock
    rc_ = mt.run_maild(["--check", "-f", cfg], timeout=30, label="--check")
    assert rc_.rc == 0, f"--check during a session: exit {rc_.rc}"
    assert not dm.summaries("slow"), "the slow session ended too soon for " \
        "this test"
    rec = dm.wait_summaries("slow", 1, timeout=20)[0]
    assert rec["error"] is None and rec["fetched"] == 12, rec["line"]
    retrs = [c for conn in slow.connections for c in conn.commands
             if c.verb == "RETR"]
    assert len(retrs) == 12, f"{len(retrs)} RETRs for 12 messages"
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(md_slow, slow_msgs)
    mt.assert_maildir(md_fast, fast.datas())
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="third maild")
    assert r.rc == 0 and r.account("slow")["fetched"] == 0
    assert r.account("fast")["fetched"] == 0


@tap.test(timeout=40)
def test_daemon_detaches(t):
    """maild without -d: the command returns 0 at once, a detached maild
    (its own session, stdio on /dev/null, cwd /) polls, writes its pid in
    maild.status and stops on SIGTERM."""
    a = server(simple_msgs("bg", 2))
    state = t.tmp / "state"
    md = t.tmp / "Maildir"
    cfg = write_conf(t.tmp / "maild.conf", [acct("bg", a, md)], state,
                     poll_interval=mt.Raw("1h"))
    mt.require_maild()

    def ours():
        """PIDs of maild processes running with this config."""
        out = []
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    cl = Path(f"/proc/{e}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(cfg).encode() in cl and b"maild" in cl:
                    out.append(int(e))
        return out

    def cleanup():
        for pid in ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    t.defer(cleanup)
    r = mt.run_maild(["-f", cfg], timeout=10, label="maild (detaching)")
    assert r.rc == 0, f"exit {r.rc}"
    assert r.seconds < 5 * mt.timeout_scale(), \
        f"took {r.seconds:.1f} s to detach"
    wait_until(lambda: mt.count_new(md) == 2, 10, "the detached maild's poll")
    pids = ours()
    assert len(pids) == 1, f"maild processes with this config: {pids}"
    pid = pids[0]
    head, accts, _ = wait_until(
        lambda: (lambda h: h if h[1] and h[1][0].get("state") == "ok"
                 else None)(status_file(state)), 5, "the status after a poll")
    assert int(head["pid"]) == pid and head["mode"] == "daemon", head
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    assert int(fields[3]) == pid, "the daemon is not a session leader " \
        f"(sid {fields[3]})"
    assert os.readlink(f"/proc/{pid}/cwd") == "/", "cwd is not /"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null", \
            f"fd {fd} is {os.readlink(f'/proc/{pid}/fd/{fd}')}"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not dovecot.pid_alive(pid), 10, "the daemon to exit")
    mt.assert_maildir(md, a.datas())


@tap.test(timeout=30)
def test_state_directory_from_systemd(t):
    """Without state-dir in the file, $STATE_DIRECTORY (systemd's
    StateDirectory=, the first of a ':' list) is the state directory:
    state, lock and maild.status go there, and --status reads it."""
    a = server(simple_msgs("sdir", 1))
    cfg = write_conf(t.tmp / "maild.conf", [acct("sd", a, t.tmp / "Maildir")],
                     None)
    sd = t.tmp / "var-lib-maild"
    env = {"STATE_DIRECTORY": f"{sd}:{t.tmp / 'second'}"}
    r = mt.run_maild(["--once", "-f", cfg], env=env, timeout=30)
    assert r.rc == 0, f"exit {r.rc}"
    for n in ("sd.state", "sd.lock", "maild.status"):
        assert (sd / n).exists(), f"no {n} in $STATE_DIRECTORY"
    assert not (t.tmp / "second").exists()
    r = mt.run_maild(["--status", "-f", cfg], env=env, timeout=10)
    assert r.rc == 0 and "account sd: ok" in r.stdout, r.stdout


@tap.test(timeout=20)
def test_daemon_bad_config_exit_78(t):
    """maild -d with a broken file exits 78 at once, naming file:line."""
    cfg = t.tmp / "maild.conf"
    mt.write_file(cfg, f'state-dir = "{t.tmp}/state"\nbogus = 1\n')
    r = mt.run_maild(["-d", "-f", cfg], timeout=10, label="maild -d")
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"
    assert f"{cfg}:2:" in r.stderr, r.stderr


if __name__ == "__main__":
    tap.main(fixture=fixture)
