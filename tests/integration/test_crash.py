#!/usr/bin/env python3
"""test_crash.py: exactly-once delivery when maild is killed at random.

A private Dovecot serves a large fetch (about 480 messages over three
accounts, some of them large, and one multi-MB message).  `maild --once`
is started and killed with SIGKILL after a seeded random delay, again and
again, until a run completes on its own; then every message must be in
the Maildirs exactly once, byte-exact, tmp/ empty, and the server
untouched (keep mode) or empty (delete mode).  This repeats in rounds until
enough kills were made.  Between kills: every file in new/ must be a
complete message and no message may be there twice.

After every kill the state files are checked too: a message recorded as
delivered (D) must be complete in new/, and a pending one (P) must have
its file in tmp/ or new/, so nothing recorded can be lost.  The
calibration run (-vv) must show RETRs pipelined for every account.

Kill delays are drawn so that kills land in every phase: connect, TLS,
login, listing, transfer, and the commit window: new/ is polled and maild
killed the moment files appear there (or a few more), or the state file is
polled and maild killed the moment it was replaced (records durable, files
not yet moved to new/).  maild runs with -vv, so the last
"state A -> B" line tells where each kill landed; a histogram is printed.

Environment: MAILD_CRASH_SEED (default 20261126), MAILD_CRASH_KILLS (kills
per mode, default 60), MAILD_CRASH_SCALE (message count factor, default 1).
"""

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import crashkill   # noqa: E402
import dovecot     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SEED = int(os.environ.get("MAILD_CRASH_SEED", "20261126"))
KILLS = int(os.environ.get("MAILD_CRASH_KILLS", "60"))
SCALE = float(os.environ.get("MAILD_CRASH_SCALE", "1"))
USERS = {"crash1": int(280 * SCALE), "crash2": int(120 * SCALE),
         "crash3": int(80 * SCALE)}
HUGE = 4_000_000
RUN_TIMEOUT = crashkill.RUN_TIMEOUT


class Fixture:
    def __init__(self, srv):
        self.srv = srv
        self.msgs = {}
        for i, (u, n) in enumerate(USERS.items()):
            self.msgs[u] = corpus.generate(seed=SEED, count=n, prefix=u,
                                           huge_bytes=HUGE if i == 0 else 0)
        self.by_id = {m.id: m.data for ms in self.msgs.values() for m in ms}
        self.full_run = None     # seconds for an uninterrupted run
        self.names = {}          # user -> {server file name: data}
        self.records_checked = 0  # state records verified after kills


def fixture():
    import contextlib

    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        with dovecot.Dovecot(certs.get()) as srv:
            for u in USERS:
                srv.add_user(u)
            yield Fixture(srv)
    return cm()


def reset_server(fx):
    for u, msgs in fx.msgs.items():
        fx.srv.set_mailbox(u, msgs)


def make_config(t, fx, d, keep):
    accts = [mt.account(u, "127.0.0.1", fx.srv.pop3s_port, u,
                        fx.srv.password, d / f"Maildir-{u}", keep=keep,
                        ca_file=fx.srv.ca) for u in USERS]
    return mt.write_config(d / "maild.conf", accts, state_dir=d / "state",
                           timeout=30)


def maildirs(d):
    return {u: d / f"Maildir-{u}" for u in USERS}


def server_names(fx):
    """user -> {name: message data} for the files of the server's Maildir
    (before maild touches it): keys are the file name, the name without
    the ":2," flags and without ",S=...", so that a UIDL (Dovecot's %g)
    finds its message."""
    out = {}
    for u in USERS:
        names = {}
        root = fx.srv.maildir(u)
        for sub in ("cur", "new"):
            for n in os.listdir(root / sub):
                if n.startswith("."):
                    continue
                data = (root / sub / n).read_bytes()
                for key in (n, n.split(":")[0], n.split(",")[0]):
                    names[key] = data
        out[u] = names
    return out


def check_records(fx, d, names):
    """Between kills: every D record's message is complete in new/; every
    P record's file is in tmp/ or in new/."""
    problems = []
    resolved = 0
    for u, md in maildirs(d).items():
        have = {mt.strip_trace(p.read_bytes()) for _, _, p in
                mt.maildir_files(md, ("new", "cur"))}
        for kind, key, _, extra in mt.state_entries(d / "state", u):
            uidl = key.decode("utf-8", "replace")
            data = names.get(u, {}).get(uidl)
            if data is None:
                problems.append(f"{u}: record for unknown UIDL {uidl!r}")
                continue
            resolved += 1
            why = crashkill.record_problem(u, f"UIDL {uidl}", kind, data,
                                           extra, md, have)
            if why:
                problems.append(why)
    return problems, resolved


def verify_final(t, fx, d, keep, cfg):
    for u, md in maildirs(d).items():
        mt.assert_maildir(md, fx.msgs[u], f"Maildir of {u}")
        if keep:
            mt.assert_messages(fx.srv.mailbox(u), fx.msgs[u],
                               f"server mailbox of {u}")
        else:
            left = fx.srv.mailbox(u)
            assert not left, f"{u}: {len(left)} messages left on the server"
    crashkill.check_run(cfg, USERS)


def calibrate(t, fx):
    if fx.full_run is not None:
        return
    d = t.tmp / "calibrate"
    d.mkdir()
    reset_server(fx)
    cfg = make_config(t, fx, d, keep=True)
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=RUN_TIMEOUT,
                     label="calibration run")
    assert r.rc == 0, f"calibration run: exit {r.rc}"
    # pipelined fetching: a RETR sent before the answer to the previous
    # one, for every account
    for u in USERS:
        trace = [ln.split(f"account={u} ", 1)[1] for ln in
                 r.stderr.splitlines() if f"account={u} >>> " in ln or
                 f"account={u} <<< " in ln]
        piped = any(a.startswith(">>> RETR") and b.startswith(">>> RETR")
                    for a, b in zip(trace, trace[1:]))
        assert piped, f"{u}: no pipelined RETR in the -vv trace"
    fx.full_run = max(r.seconds, 0.05)
    tap.diag(f"an uninterrupted run takes {r.seconds:.2f} s "
             f"({sum(len(m) for m in fx.msgs.values())} messages, "
             f"{sum(corpus.total_bytes(m) for m in fx.msgs.values())} "
             "bytes)")


def crash_mode(t, keep):
    fx = t.fx
    mode = "keep" if keep else "delete"
    calibrate(t, fx)
    rng = random.Random(f"{SEED}:{mode}")
    tap.diag(f"{mode}: seed {SEED}")
    killer = crashkill.Killer(t, rng, fx.full_run, maildirs, fx.by_id,
                              lambda d: check_records(fx, d, fx.names))

    def setup(d):
        reset_server(fx)
        fx.names = server_names(fx)
        return make_config(t, fx, d, keep)
    hist = killer.rounds(KILLS, mode, setup,
                         lambda d, cfg: verify_final(t, fx, d, keep, cfg))
    fx.records_checked += killer.records_checked
    tap.diag(f"{mode}: {fx.records_checked} state records checked after "
             "kills so far")
    crashkill.assert_spread(hist, fx.records_checked)


@tap.test(timeout=600)
def test_crash_keep_mode(t):
    crash_mode(t, keep=True)


@tap.test(timeout=600)
def test_crash_delete_mode(t):
    crash_mode(t, keep=False)


if __name__ == "__main__":
    tap.main(fixture=fixture)
