#!/usr/bin/env python3
"""test_schedule.py: when maild -d polls a failing account (issue 5).

Backoff: exponential, +-10 % jitter, capped, reset by a success; refused
logins start at four intervals; a server's LOGIN-DELAY is respected.

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
    acct, conn_times, Daemon, delay_of, fixture, server, simple_msgs,
    status_file, write_conf)


@tap.test(timeout=90)
def test_backoff_grows_caps_and_resets(t):
    """poll-interval 1s and a server that drops every connection: polls
    1, 2, 4, 8 s apart (next= says the same); forced on with SIGUSR1 the
    delay keeps doubling up to the cap max(16 polls, 1 h) with +-10 %
    jitter; one success brings it back to poll-interval, and the next
    failure starts again from one interval."""
    failing = [True]

    def maybe_drop(conn, cmd):
        return [fakepop3.DROP] if failing[0] else None
    a = server(simple_msgs("bo", 1), handlers={"*": maybe_drop})
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("bo", a, t.tmp / "Maildir", poll_interval=1)],
                     state)
    dm = Daemon(t, cfg)
    recs = dm.wait_summaries("bo", 4, timeout=20)
    nexts = [delay_of(r) for r in recs[:4]]
    assert all(r["error"] for r in recs), [r["line"] for r in recs]
    assert all(round(w * 0.9) <= d <= round(w * 1.1) for d, w in
               zip(nexts, (1, 2, 4, 8))), \
        f"next= after 1-4 failures: {nexts}, want 1 2 4 8 +-10 %"
    ct = conn_times(a)
    gaps = [ct[i + 1] - ct[i] for i in range(3)]
    t.note(f"gaps between polls: {[round(g, 2) for g in gaps]}")
    # never sooner than the backoff says; later only by the time a
    # connection takes (more under valgrind or sanitizers)
    for g, want in zip(gaps, [1, 2, 4]):
        assert want * 0.9 - 0.1 <= g <= want * 1.1 + 0.7 * \
                mt.timeout_scale(), \
            f"polls {[round(x, 2) for x in gaps]} s apart, expected 1, 2, 4 " \
            "+-10 %"
    # force failures 5..16 with SIGUSR1
    seen = []
    for k in range(5, 17):
        mark = dm.mark()
        dm.signal(signal.SIGUSR1)
        r = dm.wait_summaries("bo", 1, mark, timeout=5)[0]
        assert r["error"], r["line"]
        seen.append((k, delay_of(r)))
    t.note(f"failure -> next: {seen}")
    for k, d in seen:
        want = min(2 ** (k - 1), 3600)
        assert int(want * 0.9) - 1 <= d <= int(want * 1.1) + 1, \
            f"after {k} failures next={d}s, expected {want} s +-10 %"
    capped = [d for k, d in seen if 2 ** (k - 1) >= 3600]
    assert max(capped) <= 3960, f"cap exceeded: {capped}"
    big = [d for k, d in seen if 2 ** (k - 1) >= 64]
    exact = [d for k, d in seen if 2 ** (k - 1) >= 64 and
             d == min(2 ** (k - 1), 3600)]
    assert len(exact) < len(big), f"no jitter at all: {seen}"
    head, accts, _ = status_file(state)
    assert accts[0]["failures"] == "16", accts[0]
    assert accts[0]["state"] == "failing", accts[0]
    # one success: back to poll-interval
    failing[0] = False
    mark = dm.mark()
    dm.signal(signal.SIGUSR1)
    r = dm.wait_summaries("bo", 2, mark, timeout=6)
    assert r[0]["error"] is None and r[0]["fetched"] == 1, r[0]["line"]
    assert delay_of(r[0]) == 1 and delay_of(r[1]) == 1, \
        f"after a success: {r[0]['line']} / {r[1]['line']}"
    ct = conn_times(a)
    assert 0.9 <= ct[-1] - ct[-2] <= 1.1 + 0.6 * mt.timeout_scale(), \
        f"polls {ct[-1] - ct[-2]:.2f} s apart after a success"
    # and the next failure starts from the beginning
    failing[0] = True
    mark = dm.mark()
    r = dm.wait_summaries("bo", 2, mark, timeout=8)
    assert r[0]["error"] and delay_of(r[0]) == 1 and \
        delay_of(r[1]) == 2, \
        f"after a success then failures: {[x['line'] for x in r[:2]]}"
    rc, _ = dm.stop()
    assert rc == 0


@tap.test(timeout=60)
def test_backoff_refused_login(t):
    """A refused login backs off from four intervals (8 s for 2 s), then
    doubles; no second PASS is sent before that."""
    a = server(simple_msgs("pw", 1))
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("pw", a, t.tmp / "Maildir", password="wrong-pw",
                           poll_interval=2)], state)
    dm = Daemon(t, cfg)
    r = dm.wait_summaries("pw", 1, timeout=10)[0]
    assert r["error"], r["line"]
    assert 7 <= delay_of(r) <= 9, \
        f"refused login: {r['line']} (want next=8s +-10 %)"
    time.sleep(2.5)
    assert a.verbs().count("PASS") == 1, "polled again within 2.5 s"
    for want in (16, 32):
        mark = dm.mark()
        dm.signal(signal.SIGUSR1)
        r = dm.wait_summaries("pw", 1, mark, timeout=5)[0]
        d = delay_of(r)
        assert want * 0.9 - 1 <= d <= want * 1.1 + 1, \
            f"next={d}s, expected {want} +-10 %"
    rc, _ = dm.stop()
    assert rc == 0


@tap.test(timeout=40)
def test_login_delay_respected(t):
    """A server announcing LOGIN-DELAY 5 is not polled every second."""
    a = server(simple_msgs("ld", 1), extra_capa=["LOGIN-DELAY 5"])
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("ld", a, t.tmp / "Maildir", poll_interval=1)],
                     t.tmp / "state")
    dm = Daemon(t, cfg)
    r = dm.wait_summaries("ld", 1, timeout=10)[0]
    assert r["error"] is None, r["line"]
    assert delay_of(r) >= 5, f"LOGIN-DELAY 5 ignored: {r['line']}"
    time.sleep(2)
    assert len(a.connections) == 1, "polled again within 2 s"
    rc, _ = dm.stop()
    assert rc == 0


if __name__ == "__main__":
    tap.main(fixture=fixture)
