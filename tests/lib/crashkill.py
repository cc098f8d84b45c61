"""crashkill.py: kill `maild --once` at random moments, again and again,
until a run completes by itself (for test_crash.py and
test_imap_crash.py).

    k = crashkill.Killer(t, rng, full_run, maildirs, by_id, check)
    hist = k.rounds(kills_wanted, mode, setup, verify)

rounds() repeats: a fresh directory, setup(d) -> config path (the server
reset), kills until a run completes, verify(d, cfg) (the final state;
check_run() is the usual last step), until kills_wanted kills were made;
it prints where the kills landed and returns the histogram.

Kill delays are drawn so that kills land in every phase: connect, TLS,
login, listing, transfer, and the commit window: new/ is polled and maild
killed the moment files appear there (or a few more), or the state file
is polled and maild killed the moment it was replaced or its journal grew
(records durable, files not yet moved to new/).  maild runs with -vv, so
the last "state A -> B" line tells where each kill landed (hist).

After every kill: every file in new/ (and cur/) must be a complete
message of by_id (id -> data, by X-Test-Id), none twice; then check(d)
returns (problems, records resolved) for the protocol's own look at the
state records.
"""

import collections
import os
import re
import signal
import time

import corpus
import maildtest as mt
import tap

RUN_TIMEOUT = 120          # one maild run
MAX_ATTEMPTS_PER_ROUND = 200
STATE_RE = re.compile(r"account=(\S+) state (\S+) -> (\S+)")


def count_new(maildirs):
    return sum(mt.count_new(md) for md in maildirs)


def check_new_consistent(maildirs, by_id):
    """new/ (and cur/) of each Maildir (name -> path) holds only complete
    messages of by_id, none twice."""
    problems = []
    for u, md in maildirs.items():
        seen = collections.Counter()
        for sub, name, p in mt.maildir_files(md, ("new", "cur")):
            data = mt.strip_trace(p.read_bytes())
            mid = corpus.test_id(data)
            if mid not in by_id:
                problems.append(f"{u}: {sub}/{name}: unknown message "
                                f"({len(data)} bytes)")
            elif data != by_id[mid]:
                problems.append(f"{u}: {sub}/{name}: partial or corrupt "
                                f"copy of {mid}: "
                                f"{mt.describe_diff(data, by_id[mid])}")
            seen[mid] += 1
        problems += [f"{u}: {mid} is there {n} times"
                     for mid, n in seen.items() if n > 1]
    return problems


def record_problem(u, what, kind, data, extra, md, have):
    """A record of account u (what: how to name it) for the message data:
    a D record's message must be complete in new/ or cur/ (have: their
    contents), a P record's file in tmp/ or new/ of md.  The problem, or
    None."""
    if kind == "D" and data not in have:
        return (f"{u}: {what} ({corpus.test_id(data)}) is recorded as "
                "delivered but not in new/")
    if kind != "P":
        return None
    if not extra["file"]:
        return f"{u}: P record without a file: {what}"
    final = mt.unescape_state(extra["file"]).decode("utf-8", "replace")
    base = final.split(",")[0]
    if not ((md / "tmp" / base).exists() or (md / "new" / final).exists()):
        return (f"{u}: pending {what} ({final}): file neither in tmp/ nor "
                "in new/")
    return None


def state_stamps(d):
    """Identity of each state file and journal (changes when the state is
    replaced or a block is appended to its journal)."""
    out = {}
    try:
        with os.scandir(d / "state") as it:
            for e in it:
                if e.name.endswith((".state", ".journal")):
                    st = e.stat()
                    out[e.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        pass
    return out


def last_states(err_text):
    """account -> the state it was in when the log ends."""
    states = {}
    for m in STATE_RE.finditer(err_text):
        states[m.group(1)] = m.group(3)
    return states


class Killer:
    """rng: a random.Random; full_run: seconds of an uninterrupted run;
    maildirs(d) -> {name: Maildir path}; by_id: X-Test-Id -> data;
    check(d) -> (problems, records resolved), called after each kill."""

    def __init__(self, t, rng, full_run, maildirs, by_id, check):
        self.t = t
        self.rng = rng
        self.full_run = full_run
        self.maildirs = maildirs
        self.by_id = by_id
        self.check = check
        self.records_checked = 0

    def _strategy(self, kills, kills_left):
        r = self.rng.random()
        if kills >= kills_left:
            return "none", None
        if r < 0.15:
            return "early", self.rng.uniform(0, 0.012)
        if r < 0.30:
            return "login", self.rng.uniform(0.004, 0.05)
        if r < 0.70:
            return "timed", self.rng.uniform(0, self.full_run * 1.1)
        if r < 0.85:
            return "commit", None
        return "state", None

    def run_to_completion(self, d, cfg, kills_left, hist, mode):
        """Kill maild at random until a run finishes by itself; returns
        (kills made, stderr of the complete run)."""
        t = self.t
        kills = 0
        mds = list(self.maildirs(d).values())
        for attempt in range(MAX_ATTEMPTS_PER_ROUND):
            errpath = d / f"stderr.{attempt}"
            strategy, delay = self._strategy(kills, kills_left)
            # commit: kill once new/ has grown by `grow` files (1: right
            # at the first rename of a batch); state: once a state file
            # was replaced or its journal grew
            grow = self.rng.choice([1, 1, 1, 2, 3, 10, 50])
            before_new = count_new(mds)
            before_state = state_stamps(d)
            p = mt.start_maild(["--once", "-vv", "-f", cfg], errpath)
            killed = False
            try:
                started = time.monotonic()
                if strategy in ("early", "login", "timed"):
                    try:
                        p.wait(timeout=delay)
                    except Exception:
                        mt.kill_tree(p, signal.SIGKILL)
                        killed = True
                elif strategy in ("commit", "state"):
                    deadline = started + RUN_TIMEOUT
                    while p.poll() is None and time.monotonic() < deadline:
                        if (count_new(mds) >= before_new + grow
                                if strategy == "commit"
                                else state_stamps(d) != before_state):
                            mt.kill_tree(p, signal.SIGKILL)
                            killed = True
                            break
                        time.sleep(0.0003)
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
            t.attach(f"maild stderr ({mode}, attempt {attempt})", err)
            if killed and p.returncode == -signal.SIGKILL:
                kills += 1
                states = last_states(err)
                if strategy == "commit":
                    hist["commit-window"] += 1
                elif strategy == "state":
                    hist["state-saved"] += 1
                elif not states:
                    hist["startup"] += 1
                else:
                    for s in set(states.values()):
                        hist[s] += 1
                t.note(f"{mode} kill {kills}: {strategy} "
                       f"{'' if delay is None else f'{delay * 1000:.1f} ms '}"
                       f"states={states} new/={count_new(mds)}")
                problems = check_new_consistent(self.maildirs(d),
                                                self.by_id)
                rec_problems, resolved = self.check(d)
                self.records_checked += resolved
                problems += rec_problems
                assert not problems, (f"after kill {kills} ({strategy}):\n  "
                                      + "\n  ".join(problems[:10]))
                continue
            # maild ended on its own
            assert p.returncode == 0, (f"maild exited {p.returncode} "
                                       f"without being killed:\n"
                                       f"{mt.tail(err)}")
            return kills, err
        raise AssertionError(f"no complete run after {MAX_ATTEMPTS_PER_ROUND}"
                             " attempts")

    def rounds(self, kills_wanted, mode, setup, verify):
        """Rounds of kills (see the top) until kills_wanted were made."""
        t = self.t
        tap.diag(f"{mode}: {kills_wanted} kills wanted (MAILD_CRASH_SEED, "
                 "MAILD_CRASH_KILLS)")
        hist = collections.Counter()
        kills = rounds = 0
        while kills < kills_wanted:
            rounds += 1
            if rounds > 50:
                raise AssertionError("too many rounds")
            d = t.tmp / f"{mode}-round{rounds}"
            d.mkdir()
            cfg = setup(d)
            k, _ = self.run_to_completion(d, cfg, kills_wanted - kills, hist,
                                          mode)
            kills += k
            verify(d, cfg)
            if not tap.keep_tmp():
                tap.rmtree(d)
        tap.diag(f"{mode}: {kills} kills in {rounds} rounds; where they "
                 "landed: " + ", ".join(f"{k}={v}" for k, v in
                                        sorted(hist.items())))
        assert kills >= kills_wanted
        return hist


def assert_spread(hist, records_checked):
    """The kills landed in the commit window, in at least three phases,
    and state records were checked after them."""
    assert hist["commit-window"] > 0, "no kill landed in the commit window"
    assert records_checked > 0, "no state record was ever checked"
    assert len(hist) >= 3, f"kills landed in too few phases: {dict(hist)}"


def check_run(cfg, accounts):
    """One more run of a finished round: exit 0, nothing fetched."""
    r = mt.run_maild(["--once", "-f", cfg], timeout=RUN_TIMEOUT,
                     label="check run")
    assert r.rc == 0, f"check run: exit {r.rc}"
    for u in accounts:
        s = r.account(u)
        assert s["fetched"] == 0, f"{u}: check run fetched {s['fetched']}"
