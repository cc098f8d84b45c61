#!/usr/bin/env python3
"""test_reload.py: SIGHUP, maild -d reloading maild.conf (issue 5).

A valid new file: new accounts are polled at once, removed ones are never
polled again (a session in flight finishes what it has, deletes and says
QUIT), an unchanged account keeps its schedule and its running session,
a changed one finishes and restarts with its new settings (also while it
waits for a max-connections slot).  A broken file is refused with
file:line in the log and the old configuration keeps running.

Every daemon is stopped by its PID; every wait has a time limit.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, at_once, conn_times, Daemon, delay_of, fixture, ids, server,
    simple_msgs, status_file, wait_until, write_conf)


@tap.test(timeout=90)
def test_reload_adds_removes_keeps_schedule(t):
    """A valid new file: a new account is polled at once, a removed one is
    never polled again, a changed one restarts with its new settings at
    once, and an unchanged one keeps its schedule (its next poll comes
    when it would have come without the reload)."""
    a = server(simple_msgs("keep", 2))
    b = server(simple_msgs("gone", 2))
    c = server(simple_msgs("new", 2))
    d = server(simple_msgs("chg", 2))
    md = {n: t.tmp / f"Maildir-{n}" for n in ("keep", "gone", "new", "chg")}
    state = t.tmp / "state"
    A = acct("keep", a, md["keep"], poll_interval=3)
    B = acct("gone", b, md["gone"], poll_interval=1)
    C = acct("new", c, md["new"], poll_interval=mt.Raw("1h"))
    D = acct("chg", d, md["chg"], poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A, B, D], state)
    dm = Daemon(t, cfg)
    dm.wait_summaries("keep", 2, timeout=15)
    dm.wait_summaries("gone", 2, timeout=5)
    assert len(dm.summaries("chg")) == 1, "chg (1h) polled more than once"
    assert not c.connections, "the new account was polled before it existed"
    # right after a fresh poll of keep
    dm.wait_summaries("keep", 1, dm.mark(), timeout=5)
    ta = conn_times(a)
    gap = ta[-1] - ta[-2]
    t.note(f"keep: polls {gap:.2f} s apart before the reload")
    assert 2.8 <= gap <= 3 + mt.timeout_scale(), \
        f"keep (3 s) polled {gap:.2f} s apart"
    # reload 1.5 s after keep's last poll: new order, gone removed, new
    # added, chg's poll-interval changed
    wait_until(lambda: time.monotonic() >= ta[-1] + 1.5, 5, "the moment")
    write_conf(cfg, [dict(D, poll_interval=30), A, C], state)
    mark = dm.mark()
    t_hup = time.monotonic()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 3 accounts added, removed or changed",
                mark, timeout=5)
    log = dm.log(mark)
    assert "account=gone removed" in log, log
    assert "account=new added" in log, log
    assert "account=chg changed" in log, log
    assert "account=keep" not in log.split("reloaded")[0], \
        "the unchanged account was reported as changed"
    # new (poll-interval 1h): polled at once
    dm.wait_summaries("new", 1, mark, timeout=5)
    first_new = conn_times(c)[0] - t_hup
    assert first_new < at_once(), f"the new account was polled " \
        f"{first_new:.2f} s after the reload, not at once"
    # changed (1h, now 30 s): polled at once, with its new poll-interval
    recs = dm.wait_summaries("chg", 1, mark, timeout=6)
    td = [x for x in conn_times(d) if x > t_hup]
    assert td and td[0] - t_hup < at_once(), \
        f"the changed account was not polled at once: {td}"
    assert delay_of(recs[0]) == 30, f"chg: {recs[0]['line']}"
    # unchanged: the next poll comes on the old schedule, not at once and
    # before a schedule started afresh at the reload would bring it
    wait_until(lambda: [x for x in conn_times(a) if x > t_hup], 6,
               "keep's next poll")
    nxt = [x for x in conn_times(a) if x > t_hup][0]
    expect = ta[-1] + gap
    t.note(f"keep: next poll {nxt - t_hup:.2f} s after the reload, "
           f"expected {expect - t_hup:.2f}")
    assert expect - 0.6 <= nxt < t_hup + 3, (
        f"keep was polled {nxt - t_hup:.2f} s after the reload; on its "
        f"schedule it would have been {expect - t_hup:.2f} s: the reload "
        "reset the schedule of an unchanged account")
    # removed: no connection started after the reload
    time.sleep(max(0.0, t_hup + 3.0 - time.monotonic()))
    late = [x - t_hup for x in conn_times(b) if x > t_hup + 0.1]
    assert not late, f"the removed account was polled again: +{late} s"
    # (a poll of gone in flight at the reload may finish: at most one)
    assert len(dm.summaries("gone", mark)) <= 1, \
        "gone kept being polled after the reload"
    # the status file follows the configuration
    head, accts, _ = status_file(state)
    assert int(head["pid"]) == dm.pid
    names = [x["account"] for x in accts]
    assert sorted(names) == ["chg", "keep", "new"], names
    rc, secs = dm.stop()
    assert rc == 0, f"exit {rc} after SIGTERM"
    for n, srv in (("keep", a), ("gone", b), ("new", c), ("chg", d)):
        mt.assert_maildir(md[n], srv.datas(), f"Maildir of {n}")


@tap.test(timeout=60)
def test_reload_keeps_running_session(t):
    """A reload while an unchanged account is in the middle of a slow
    session does not interrupt it: one connection, every message,
    deletions and QUIT.  An account removed by the same reload in the
    middle of its session finishes the message in flight, deletes what it
    delivered, says QUIT and is never polled again."""
    m = simple_msgs("busy", 12)
    a = server(m, handlers={"RETR": fakepop3.drip_response(0.05, 128)})
    rm = simple_msgs("removed", 12)
    r = server(rm, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.05, 128)})
    e = server(simple_msgs("extra", 1))
    state = t.tmp / "state"
    A = acct("busy", a, t.tmp / "Maildir-busy", keep=False,
             poll_interval=mt.Raw("1h"))
    R = acct("removed", r, t.tmp / "Maildir-removed", keep=False,
             poll_interval=1)
    E = acct("extra", e, t.tmp / "Maildir-extra", poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A, R], state)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 2 and
               r.counts.get("RETR", 0) >= 2, 10,
               "both slow sessions to be fetching")
    assert not dm.summaries(), "a slow session ended too soon"
    write_conf(cfg, [E, A], state)
    mark = dm.mark()
    t_hup = time.monotonic()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 2 accounts added, removed or changed", mark,
                timeout=5)
    dm.wait_summaries("extra", 1, mark, timeout=5)
    # the removed account: ends soon, cleanly
    rr = dm.wait_summaries("removed", 1, mark, timeout=5)[0]
    assert 0 < rr["fetched"] < 12, \
        f"the removed account did not stop early: {rr['line']}"
    assert rr["deleted"] == rr["fetched"], rr["line"]
    assert not dm.summaries("busy"), \
        "the busy account's session ended right at the reload"
    rec = dm.wait_summaries("busy", 1, timeout=20)[0]
    assert rec["error"] is None and "stopped" not in rec, \
        f"the running session was interrupted: {rec['line']}"
    assert rec["fetched"] == 12 and rec["deleted"] == 12, rec["line"]
    assert len(a.connections) == 1, \
        f"{len(a.connections)} connections: the session was restarted"
    assert a.connections[0].verbs()[-1] == "QUIT", a.connections[0].verbs()
    assert a.mailbox == [], f"{len(a.mailbox)} left on the server"
    time.sleep(max(0.0, t_hup + 2.5 - time.monotonic()))
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(t.tmp / "Maildir-busy", m)
    # removed: one connection, QUIT, delivered + left = all, no overlap
    assert len(r.connections) == 1, \
        f"the removed account was polled again ({len(r.connections)})"
    assert r.connections[0].verbs()[-1] == "QUIT", r.connections[0].verbs()
    got = set(ids(mt.read_maildir(t.tmp / "Maildir-removed")))
    left = set(ids(r.datas()))
    assert not got & left, f"delivered but not deleted: {got & left}"
    assert got | left == {x.id for x in rm}, "messages lost"
    mt.assert_tmp_empty(t.tmp / "Maildir-removed")
    assert len(got) == rr["fetched"]


@tap.test(timeout=60)
def test_reload_changed_account_restarts(t):
    """A reload that changes an account in the middle of its session: the
    session finishes what is in flight, deletes and quits, then a new one
    starts at once with the new settings; everything arrives once."""
    m = simple_msgs("chg", 15)
    a = server(m, pipelining=False,
               handlers={"RETR": fakepop3.drip_response(0.05, 128)})
    state = t.tmp / "state"
    A = acct("chg", a, t.tmp / "Maildir", keep=False,
             poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A], state)
    dm = Daemon(t, cfg)
    wait_until(lambda: a.counts.get("RETR", 0) >= 3, 10,
               "the session to be fetching")
    write_conf(cfg, [dict(A, poll_interval=mt.Raw("2h"),
                          add_headers=mt.Raw('{"no"}'))], state)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"account=chg changed", mark, timeout=5)
    recs = dm.wait_summaries("chg", 2, timeout=20)
    first, second = recs[0], recs[1]
    assert 0 < first["fetched"] < 15, \
        f"the first session was not stopped early: {first['line']}"
    assert first["error"] is None or first.get("stopped"), first["line"]
    assert first["deleted"] == first["fetched"], first["line"]
    assert second["error"] is None, second["line"]
    assert first["fetched"] + second["fetched"] == 15, \
        f"{first['line']} / {second['line']}"
    assert delay_of(second) == 7200, \
        f"the new session does not use the new settings: {second['line']}"
    assert len(a.connections) == 2, a.connections
    c1, c2 = a.connections
    assert c1.verbs()[-1] == "QUIT", f"first session: {c1.verbs()}"
    gap = c2.commands[0].t - c1.commands[-1].t
    assert gap < at_once(), f"the second session started {gap:.2f} s " \
        "after the first ended, not at once"
    assert a.mailbox == [], f"{len(a.mailbox)} left on the server"
    rc, _ = dm.stop()
    assert rc == 0
    mt.assert_maildir(t.tmp / "Maildir", m)
    # the messages of the second session have no trace header any more
    plain = [d for d in mt.read_maildir(t.tmp / "Maildir")
             if not mt.trace_headers(d)]
    assert len(plain) == second["fetched"], \
        f"{len(plain)} messages without Received:, expected " \
        f"{second['fetched']} (add-headers changed by the reload)"


@tap.test(timeout=60)
def test_reload_changed_account_waiting_for_a_slot(t):
    """max-connections = 1: while one account polls, the other waits for
    the slot.  A reload that changes the waiting account (its Maildir)
    takes effect for its next poll: it must not be polled once more with
    the settings the reload replaced."""
    srvs, msgs = {}, {}
    for n in ("x", "y"):
        msgs[n] = simple_msgs(f"slot-{n}", 6)
        srvs[n] = server(msgs[n], pipelining=False,
                         handlers={"RETR": fakepop3.drip_response(0.1, 128)})
    state = t.tmp / "state"

    def conf(changed=None):
        out = []
        for n in ("x", "y"):
            md = t.tmp / (f"Maildir-{n}-new" if n == changed
                          else f"Maildir-{n}")
            out.append(acct(n, srvs[n], md, poll_interval=mt.Raw("1h")))
        return out
    cfg = write_conf(t.tmp / "maild.conf", conf(), state, max_connections=1)
    dm = Daemon(t, cfg)
    wait_until(lambda: any(s.counts.get("RETR", 0) >= 1
                           for s in srvs.values()), 10, "a poll")
    busy = [n for n in srvs if srvs[n].connections]
    assert len(busy) == 1, f"max-connections 1, but {busy} are polling"
    waiting = "y" if busy == ["x"] else "x"
    t.note(f"{busy[0]} polls, {waiting} waits; the reload changes "
           f"{waiting}'s maildir")
    write_conf(cfg, conf(changed=waiting), state, max_connections=1)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(rf"account={waiting} changed", mark, timeout=5)
    recs = dm.wait_summaries(waiting, 1, timeout=20)
    time.sleep(1.0)
    recs = dm.summaries(waiting)
    rc, _ = dm.stop()
    assert rc == 0
    old_md = t.tmp / f"Maildir-{waiting}"
    new_md = t.tmp / f"Maildir-{waiting}-new"
    in_old = mt.read_maildir(old_md)
    assert not in_old, (
        f"{len(in_old)} messages delivered into the Maildir the reload "
        f"replaced ({old_md.name}), by {len(recs)} poll(s) after the "
        "reload: the waiting account was polled with its old settings")
    mt.assert_maildir(new_md, msgs[waiting])


@tap.test(timeout=60)
def test_reload_invalid_keeps_old_config(t):
    """A broken file is refused: file:line in the log, the old accounts
    keep running with their old settings; a good file later still
    loads."""
    a = server(simple_msgs("old", 1))
    b = server(simple_msgs("other", 1))
    state = t.tmp / "state"
    A = acct("old", a, t.tmp / "Maildir-old", poll_interval=1)
    B = acct("other", b, t.tmp / "Maildir-other", poll_interval=1)
    cfg = write_conf(t.tmp / "maild.conf", [A], state)
    dm = Daemon(t, cfg)
    dm.wait_summaries("old", 2, timeout=10)

    variants = []
    # 1. an unknown option in the new account, line known
    bad1 = mt.config_text([B, A], state_dir=state, timeout=10)
    lines = bad1.splitlines()
    k = lines.index('account "other" {')
    lines.insert(k + 1, "    frobnicate = 1")
    variants.append(("unknown option", "\n".join(lines) + "\n", k + 2,
                     0o600))
    # 2. an account without host: the error names the account's line
    bad2 = mt.config_text([dict(B, host=None), A], state_dir=state,
                          timeout=10)
    k2 = bad2.splitlines().index('account "other" {') + 1
    variants.append(("missing host", bad2, k2, 0o600))
    # 3. an inline password in a file others can read
    bad3 = mt.config_text([A, B], state_dir=state, timeout=10)
    k3 = bad3.splitlines().index('account "old" {') + 1
    variants.append(("mode 0644 with a password", bad3, k3, 0o644))

    for what, text, line, mode in variants:
        t.note(f"variant: {what}, error expected at line {line}")
        mt.write_file(cfg, text, mode)
        t.attach(f"config ({what})", text)
        mark = dm.mark()
        dm.signal(signal.SIGHUP)
        m = dm.wait_log(r"reload failed.*$", mark, timeout=5)
        assert f"{cfg}:{line}:" in m.group(0), \
            f"{what}: the error does not say {cfg}:{line}: {m.group(0)}"
        log = dm.log(mark)
        assert "account=other" not in log, \
            f"{what}: the broken file was applied: {log}"
        # the old configuration goes on: old is polled again, other never
        n0 = len(conn_times(a))
        wait_until(lambda: len(conn_times(a)) >= n0 + 2, 6,
                   f"old to be polled after the failed reload ({what})")
        assert not b.connections, f"{what}: other was polled"
        assert dm.p.poll() is None

    # the accounts' settings are the old ones (poll-interval 1 s: next=1s)
    assert delay_of(dm.summaries("old")[-1]) == 1
    # a good file now loads
    write_conf(cfg, [B, A], state)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 1 account added", mark, timeout=5)
    dm.wait_summaries("other", 1, mark, timeout=5)
    rc, _ = dm.stop()
    assert rc == 0


if __name__ == "__main__":
    tap.main(fixture=fixture)
