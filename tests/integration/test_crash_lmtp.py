#!/usr/bin/env python3
"""test_crash_lmtp.py: exactly-once beyond the Maildir when maild is
killed at random (SIGKILL), as test_crash.py does for Maildir delivery.

LMTP: a private Dovecot serves two POP3 accounts (about 250 messages, one
of 3 MB) that maild delivers over LMTP to one user whose Sieve script is
the duplicate snippet of maild.conf(5).  maild --once is killed after
seeded random delays, the moment the user's Maildir grows (an LMTP 250
that maild has not recorded yet) or the moment a state file changes,
again and again until a run completes by itself.  After every kill: the
user's mailbox holds only complete messages, none twice, byte-exact
below X-Maild-Id; in delete mode every message gone from the source
server is in it.  At the end: every message exactly once, the source
untouched (keep) or empty (delete), one more run fetches nothing.  How
many second copies Sieve dropped is printed.

dedupe: two accounts whose servers hold the same messages (same
Message-ID, same bytes) deliver into one Maildir with dedupe =
message-id, one session at a time (max-connections = 1), killed the same
way (the moment new/ grows, or the state or the dedupe index changes):
after every kill, nothing twice in the Maildir, nothing lost; at the
end every message once.

Environment: MAILD_CRASH_SEED (default 20261203), MAILD_CRASH_KILLS
(kills per mode, default 40), MAILD_CRASH_SCALE (message count factor).
"""

import collections
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import delivery    # noqa: E402
import dovecot     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SEED = int(os.environ.get("MAILD_CRASH_SEED", "20261203"))
KILLS = int(os.environ.get("MAILD_CRASH_KILLS", "40"))
SCALE = float(os.environ.get("MAILD_CRASH_SCALE", "1"))
SOURCES = {"lsrc1": int(150 * SCALE), "lsrc2": int(100 * SCALE)}
DEDUPE_SOURCES = ("dsrc1", "dsrc2")
DEDUPE_COUNT = int(120 * SCALE)
RUN_TIMEOUT = 120
MAX_ATTEMPTS = 200
USERS = {u: None for u in list(SOURCES) + list(DEDUPE_SOURCES) + ["ldst"]}


class Fixture:
    def __init__(self, srv):
        self.srv = srv
        self.msgs = {u: corpus.generate(seed=SEED, count=n, prefix=u,
                                        max_large=4,
                                        huge_bytes=3_000_000 if i == 0
                                        else 0)
                     for i, (u, n) in enumerate(SOURCES.items())}
        self.all = [m for ms in self.msgs.values() for m in ms]
        self.by_id = {m.id: m.data for m in self.all}
        # the dedupe accounts: the same messages on both servers, and a
        # few of each server's own
        common = corpus.generate(seed=SEED + 1, count=DEDUPE_COUNT,
                                 prefix="common", max_large=2)
        self.dedupe_msgs = {
            u: common + corpus.generate(seed=SEED + 2 + i, count=10,
                                        prefix=u, max_large=0)
            for i, u in enumerate(DEDUPE_SOURCES)}
        self.dedupe_all = common + [m for u in DEDUPE_SOURCES
                                    for m in self.dedupe_msgs[u][-10:]]
        self.dedupe_by_id = {m.id: m.data for m in self.dedupe_all}
        self.full = {}


def fixture():
    import contextlib
    import certs

    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        with dovecot.Dovecot(certs.get(), lmtp=True) as srv:
            for u in USERS:
                srv.add_user(u)
            srv.start()
            yield Fixture(srv)
    return cm()


# ---------------------------------------------------------------------------
# killing maild

def maildir_count(path):
    n = 0
    for sub in ("new", "cur"):
        try:
            n += sum(1 for x in os.listdir(path / sub)
                     if not x.startswith("."))
        except FileNotFoundError:
            pass
    return n


def stamps(d):
    out = {}
    try:
        with os.scandir(d) as it:
            for e in it:
                if e.name.endswith((".state", ".journal")):
                    st = e.stat()
                    out[e.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        pass
    return out


def settle(paths, quiet=0.3, limit=20):
    """Wait until nothing changes under paths for quiet seconds (at most
    limit): what a killed maild handed to Dovecot is finished.  A
    delivery still running when the next maild delivers the same message
    can race it past Sieve's duplicate test (Dovecot marks a message
    only when its delivery ends); under systemd maild restarts 30 s
    after a crash."""
    def look():
        out = []
        for p in paths:
            for root, dirs, files in os.walk(p):
                for n in files:
                    try:
                        st = os.stat(os.path.join(root, n))
                    except FileNotFoundError:
                        continue
                    out.append((root, n, st.st_size, st.st_mtime_ns))
        return sorted(out)
    deadline = time.monotonic() + limit
    last, since = look(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = look()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def run_until_complete(t, fx, d, cfg, rng, kills_left, hist, watch, check,
                       label, settle_paths=()):
    """Start maild --once and kill it (SIGKILL) at random until a run ends
    by itself; check() after every kill.  watch: the Maildir whose growth
    marks the commit window.  Returns the kills made."""
    kills = 0
    full = fx.full.get(label, 1.0)
    for attempt in range(MAX_ATTEMPTS):
        errpath = d / f"stderr.{attempt}"
        r = rng.random()
        if kills >= kills_left:
            strategy, delay = "none", None
        elif r < 0.15:
            strategy, delay = "early", rng.uniform(0, 0.05)
        elif r < 0.45:
            strategy, delay = "timed", rng.uniform(0, full * 1.1)
        elif r < 0.80:
            strategy, delay = "delivered", None
        else:
            strategy, delay = "state", None
        grow = rng.choice([1, 1, 1, 2, 3, 7, 30])
        before = maildir_count(watch)
        before_state = stamps(d / "state")
        p = mt.start_maild(["--once", "-vv", "-f", cfg], errpath)
        killed = False
        try:
            started = time.monotonic()
            if delay is not None:
                try:
                    p.wait(timeout=delay)
                except Exception:
                    mt.kill_tree(p, signal.SIGKILL)
                    killed = True
            elif strategy != "none":
                deadline = started + RUN_TIMEOUT
                while p.poll() is None and time.monotonic() < deadline:
                    if (maildir_count(watch) >= before + grow
                            if strategy == "delivered"
                            else stamps(d / "state") != before_state):
                        mt.kill_tree(p, signal.SIGKILL)
                        killed = True
                        break
                    time.sleep(0.0005)
            if not killed:
                try:
                    p.wait(timeout=RUN_TIMEOUT)
                except Exception:
                    mt.kill_tree(p)
                    raise AssertionError(f"maild did not finish within "
                                         f"{RUN_TIMEOUT} s")
        finally:
            if p.poll() is None:
                mt.kill_tree(p)
        err = errpath.read_text(errors="replace")
        t.attach(f"maild stderr ({label}, attempt {attempt})", err)
        if killed and p.returncode == -signal.SIGKILL:
            kills += 1
            hist[strategy] += 1
            t.note(f"{label} kill {kills}: {strategy} "
                   f"{'' if delay is None else f'{delay * 1000:.1f} ms'}")
            settle(settle_paths)
            problems = check()
            assert not problems, (f"after kill {kills} ({strategy}):\n  "
                                  + "\n  ".join(problems[:10]))
            continue
        assert p.returncode == 0, (f"maild exited {p.returncode} without "
                                   f"being killed:\n{mt.tail(err)}")
        return kills
    raise AssertionError(f"no complete run after {MAX_ATTEMPTS} attempts")


def copies_problems(datas, by_id, strip):
    """Problems of a mailbox: unknown, partial or corrupt messages, and
    messages there twice."""
    problems = []
    seen = collections.Counter()
    for data in datas:
        body = strip(data)
        mid = corpus.test_id(body)
        if mid not in by_id:
            problems.append(f"unknown message ({len(body)} bytes)")
        elif body != by_id[mid]:
            problems.append(f"partial or corrupt copy of {mid}: "
                            f"{mt.describe_diff(body, by_id[mid])}")
        seen[mid] += 1
    problems += [f"{mid} is there {n} times" for mid, n in seen.items()
                 if n > 1]
    return problems, seen


# ---------------------------------------------------------------------------
# LMTP into Dovecot with the Sieve duplicate snippet

def lmtp_config(fx, d, keep):
    srv = fx.srv
    accts = [delivery.lmtp_account(u, ("127.0.0.1", srv.pop3s_port, u,
                                       srv.password, srv.ca),
                                   f"unix:{srv.lmtp_socket}",
                                   lmtp_recipient="ldst", keep=keep)
             for u in SOURCES]
    return mt.write_config(d / "maild.conf", accts, state_dir=d / "state",
                           timeout=30)


def lmtp_reset(fx):
    srv = fx.srv
    for u, msgs in fx.msgs.items():
        srv.set_mailbox(u, msgs)
    srv.set_mailbox("ldst", [])
    srv.set_sieve("ldst", delivery.SIEVE_DUPLICATE)


def lmtp_check(fx, keep):
    srv = fx.srv
    got = srv.mailbox("ldst")
    problems, seen = copies_problems(got, fx.by_id, delivery.after_id)
    for u, msgs in fx.msgs.items():
        left = srv.mailbox(u)
        if keep:
            if len(left) != len(msgs):
                problems.append(f"{u}: {len(left)} of {len(msgs)} messages "
                                "left on the server in keep mode")
            continue
        there = {corpus.test_id(x) for x in left}
        lost = [m.id for m in msgs if m.id not in there and
                m.id not in seen]
        if lost:
            problems.append(f"{u}: {len(lost)} messages deleted from the "
                            f"server and not delivered: {lost[:5]}")
    return problems


def sieve_discards(srv):
    try:
        text = srv.log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for ln in text.splitlines()
               if "ldst" in ln and "discard" in ln)


def lmtp_calibrate(t, fx):
    if "lmtp" in fx.full:
        return
    d = t.tmp / "calibrate"
    d.mkdir()
    lmtp_reset(fx)
    r = mt.run_maild(["--once", "-f", lmtp_config(fx, d, True)],
                     timeout=RUN_TIMEOUT, label="calibration run")
    assert r.rc == 0, f"calibration run: exit {r.rc}: {mt.tail(r.stderr)}"
    fx.full["lmtp"] = max(r.seconds, 0.05)
    tap.diag(f"an uninterrupted LMTP run takes {r.seconds:.2f} s "
             f"({len(fx.all)} messages, {corpus.total_bytes(fx.all)} bytes)")


def lmtp_mode(t, keep):
    fx = t.fx
    mode = "keep" if keep else "delete"
    lmtp_calibrate(t, fx)
    rng = random.Random(f"{SEED}:lmtp:{mode}")
    tap.diag(f"LMTP {mode}: seed {SEED}, {KILLS} kills wanted")
    hist = collections.Counter()
    kills = rounds = 0
    discards0 = sieve_discards(fx.srv)
    while kills < KILLS:
        rounds += 1
        d = t.tmp / f"{mode}-{rounds}"
        d.mkdir()
        lmtp_reset(fx)
        cfg = lmtp_config(fx, d, keep)
        kills += run_until_complete(
            t, fx, d, cfg, rng, KILLS - kills, hist,
            fx.srv.maildir("ldst"), lambda: lmtp_check(fx, keep), "lmtp",
            settle_paths=[fx.srv.home("ldst")])
        problems = lmtp_check(fx, keep)
        got = fx.srv.mailbox("ldst")
        delivery.assert_delivered(got, fx.all, f"round {rounds}: the "
                                  "user's mailbox")
        assert not problems, problems
        if not keep:
            for u in SOURCES:
                assert fx.srv.mailbox(u) == [], f"{u}: messages left"
        r = mt.run_maild(["--once", "-f", cfg], timeout=RUN_TIMEOUT,
                         label="check run")
        assert r.rc == 0 and all(r.account(u)["fetched"] == 0
                                 for u in SOURCES), mt.tail(r.stderr)
        for u in SOURCES:
            left = os.listdir(d / "state" / f"{u}.spool" / "tmp")
            assert not left, f"{u}: {len(left)} files left in the spool"
        assert rounds <= 50, "too many rounds"
        if not tap.keep_tmp():
            tap.rmtree(d)
    dropped = sieve_discards(fx.srv) - discards0
    tap.diag(f"LMTP {mode}: {kills} kills in {rounds} rounds ("
             + ", ".join(f"{k}={v}" for k, v in sorted(hist.items()))
             + f"); Sieve dropped {dropped} second copies")
    assert hist["delivered"] > 0, "no kill landed after an LMTP 250"


@tap.test(timeout=900, name="LMTP + Sieve duplicate, keep mode: SIGKILL "
          "at random, 0 lost, 0 duplicated")
def lmtp_keep(t):
    lmtp_mode(t, keep=True)


@tap.test(timeout=900, name="LMTP + Sieve duplicate, delete mode: SIGKILL "
          "at random, 0 lost, 0 duplicated, the server emptied")
def lmtp_delete(t):
    lmtp_mode(t, keep=False)


# ---------------------------------------------------------------------------
# dedupe: two accounts, one Maildir

def dedupe_config(fx, d):
    srv = fx.srv
    accts = [mt.account(u, "127.0.0.1", srv.pop3s_port, u, srv.password,
                        d / "Maildir", ca_file=srv.ca, dedupe="message-id")
             for u in DEDUPE_SOURCES]
    return mt.write_config(d / "maild.conf", accts, state_dir=d / "state",
                           timeout=30, max_connections=1)


def dedupe_check(fx, d):
    problems, seen = copies_problems(mt.read_maildir(d / "Maildir"),
                                     fx.dedupe_by_id, mt.strip_trace)
    for u in DEDUPE_SOURCES:
        there = {corpus.test_id(x) for x in fx.srv.mailbox(u)}
        lost = [m.id for m in fx.dedupe_msgs[u] if m.id not in there and
                m.id not in seen]
        if lost:
            problems.append(f"{u}: {len(lost)} messages deleted from the "
                            f"server and not delivered: {lost[:5]}")
    return problems


@tap.test(timeout=900, name="dedupe, two accounts, one Maildir: SIGKILL at "
          "random, 0 lost, 0 duplicated")
def dedupe_crash(t):
    fx = t.fx
    rng = random.Random(f"{SEED}:dedupe")
    hist = collections.Counter()
    kills = rounds = 0
    if "dedupe" not in fx.full:
        d = t.tmp / "calibrate"
        d.mkdir()
        for u in DEDUPE_SOURCES:
            fx.srv.set_mailbox(u, fx.dedupe_msgs[u])
        r = mt.run_maild(["--once", "-f", dedupe_config(fx, d)],
                         timeout=RUN_TIMEOUT, label="calibration run")
        assert r.rc == 0, mt.tail(r.stderr)
        mt.assert_maildir(d / "Maildir", fx.dedupe_all)
        fx.full["dedupe"] = max(r.seconds, 0.05)
    while kills < KILLS:
        rounds += 1
        d = t.tmp / f"dedupe-{rounds}"
        d.mkdir()
        for u in DEDUPE_SOURCES:
            fx.srv.set_mailbox(u, fx.dedupe_msgs[u])
        cfg = dedupe_config(fx, d)
        kills += run_until_complete(
            t, fx, d, cfg, rng, KILLS - kills, hist, d / "Maildir",
            lambda: dedupe_check(fx, d), "dedupe")
        mt.assert_maildir(d / "Maildir", fx.dedupe_all,
                          f"round {rounds}: the Maildir")
        for u in DEDUPE_SOURCES:
            assert fx.srv.mailbox(u) == [], f"{u}: messages left"
        assert rounds <= 50, "too many rounds"
        if not tap.keep_tmp():
            tap.rmtree(d)
    tap.diag(f"dedupe: {kills} kills in {rounds} rounds ("
             + ", ".join(f"{k}={v}" for k, v in sorted(hist.items())) + ")")


if __name__ == "__main__":
    tap.main(fixture=fixture)
