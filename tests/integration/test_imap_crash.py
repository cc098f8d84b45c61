#!/usr/bin/env python3
"""test_imap_crash.py: exactly-once delivery over IMAP when maild is
killed at random, and when the Maildir fills up.

The SIGKILL test of test_crash.py (tests/lib/crashkill.py), for IMAP
against a private Dovecot, in keep, delete and move (move-to = Archive)
modes: three accounts, one of two folders, about 300 messages with the
corpus edge cases and a multi-MB message.  `maild --once` is killed
after seeded random delays, at the first renames into new/, or the moment
the state was written, until a run completes on its own; then every
message is in the Maildirs exactly once, byte-exact, tmp/ empty, and the
server untouched (keep), its folders empty (delete), or every message in
Archive exactly once and none left in its folder (move).  After every
kill: new/ holds only complete messages, none twice; a message recorded
as delivered (D) is complete in new/, a pending one (P) has its file in
tmp/ or new/; every record names a message the server holds under that
folder, UIDVALIDITY and UID.

The full disk, for IMAP (root only: a tmpfs): the Maildir fills up in the
middle of a fetch in delete mode: exit 74, nothing partial in new/, no
UID STORE \\Deleted or UID EXPUNGE of a message not complete in new/ and
recorded; once there is room again one rerun delivers everything exactly
once and empties the folder.

Environment: MAILD_CRASH_SEED (default 20261126), MAILD_CRASH_KILLS
(kills per mode, default 40), MAILD_CRASH_SCALE (message count factor).
"""

import functools
import os
import random
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import crashkill   # noqa: E402
import dovecot     # noqa: E402
import hostile as h  # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SEED = int(os.environ.get("MAILD_CRASH_SEED", "20261126"))
KILLS = int(os.environ.get("MAILD_CRASH_KILLS", "40"))
SCALE = float(os.environ.get("MAILD_CRASH_SCALE", "1"))
# user -> {folder: message count}
LAYOUT = {"ick1": {"INBOX": int(140 * SCALE)},
          "ick2": {"INBOX": int(60 * SCALE), "Work": int(40 * SCALE)},
          "ick3": {"INBOX": int(70 * SCALE)}}
HUGE = 3_000_000
RUN_TIMEOUT = crashkill.RUN_TIMEOUT


class Fixture:
    def __init__(self):
        self.msgs = {}          # user -> folder -> [Message]
        for i, (u, folders) in enumerate(LAYOUT.items()):
            self.msgs[u] = {}
            for k, (f, n) in enumerate(folders.items()):
                self.msgs[u][f] = corpus.generate(
                    seed=SEED, count=n, prefix=f"{u}-{k}",
                    huge_bytes=HUGE if i == 0 and k == 0 else 0,
                    max_large=4)
        self.by_id = {m.id: m.data for fs in self.msgs.values()
                      for ms in fs.values() for m in ms}
        self.by_mid = {}
        for data in self.by_id.values():
            mid = re.search(rb"^Message-ID: (<[^>]*>)", data, re.M | re.I)
            self.by_mid[mid.group(1).decode()] = data
        self.full_run = None
        self.uids = {}          # user -> folder -> (validity, {uid: data})
        self.records_checked = 0


_FX = Fixture()


def all_msgs(u):
    return [m for ms in _FX.msgs[u].values() for m in ms]


def settle(srv, limit=10):
    """Dovecot's IMAP sessions of killed clients gone."""
    deadline = time.monotonic() + limit
    while srv.sessions("imap") and time.monotonic() < deadline:
        time.sleep(0.02)


def reset_server(srv):
    settle(srv)
    for u, folders in _FX.msgs.items():
        srv.set_mailbox(u, folders["INBOX"])
        for f, ms in folders.items():
            if f != "INBOX":
                srv.create_folder(u, f)
                srv.add_messages(u, ms, new=False, folder=f)
        srv.create_folder(u, "Archive")
    # the UIDs Dovecot gave them, before maild touches anything
    _FX.uids = {}
    for u, folders in _FX.msgs.items():
        _FX.uids[u] = {}
        for f in folders:
            v = srv.status(u, f)["uidvalidity"]
            m = {r["uid"]: _FX.by_mid[r["message_id"]]
                 for r in srv.messages(u, f)}
            _FX.uids[u][f] = (v, m)


def make_config(srv, d, mode):
    accts = []
    for u, folders in LAYOUT.items():
        extra = {"keep": mode == "keep"}
        if len(folders) > 1:
            extra["folders"] = mt.Raw("{" + ", ".join(
                mt.quote(f) for f in folders) + "}")
        if mode == "move":
            extra["move_to"] = "Archive"
        accts.append(mt.account(u, "127.0.0.1", srv.imaps_port, u,
                                srv.users[u], d / f"Maildir-{u}",
                                ca_file=srv.ca, protocol="imap", **extra))
    return mt.write_config(d / "maild.conf", accts, state_dir=d / "state",
                           timeout=30)


def maildirs(d):
    return {u: d / f"Maildir-{u}" for u in LAYOUT}


def check_records(d):
    """Between kills: every record names a message of the server (its
    folder, UIDVALIDITY and UID as Dovecot numbered them); a D record's
    message is complete in new/ (or cur/), a P record's file is in tmp/
    or new/."""
    problems = []
    resolved = 0
    for u, md in maildirs(d).items():
        have = {mt.strip_trace(p.read_bytes()) for _, _, p in
                mt.maildir_files(md, ("new", "cur"))}
        for kind, key, _, extra in mt.state_entries(d / "state", u):
            parts = key.split(b"\0")
            if len(parts) != 3:
                problems.append(f"{u}: a record with key {key!r}")
                continue
            folder = parts[0].decode("utf-8", "replace")
            v, uids = _FX.uids[u].get(folder, (None, {}))
            if str(v).encode() != parts[1]:
                problems.append(f"{u}: record {key!r}: UIDVALIDITY is "
                                f"{v}")
                continue
            data = uids.get(int(parts[2]))
            if data is None:
                problems.append(f"{u}: record for unknown UID {key!r}")
                continue
            resolved += 1
            why = crashkill.record_problem(u, repr(key), kind, data, extra,
                                           md, have)
            if why:
                problems.append(why)
    return problems, resolved


def verify_final(srv, d, mode, cfg):
    settle(srv)
    for u, md in maildirs(d).items():
        mt.assert_maildir(md, all_msgs(u), f"Maildir of {u}")
        for f, ms in _FX.msgs[u].items():
            left = srv.mailbox(u, f)
            if mode == "keep":
                mt.assert_messages(left, ms, f"server folder {u}/{f}")
            else:
                assert not left, f"{u}/{f}: {len(left)} messages left"
        arch = srv.mailbox(u, "Archive")
        if mode == "move":
            mt.assert_messages(arch, all_msgs(u), f"Archive of {u}")
        else:
            assert not arch, f"{u}: {len(arch)} messages in Archive"
    crashkill.check_run(cfg, LAYOUT)


def calibrate(t, srv):
    if _FX.full_run is not None:
        return
    d = t.tmp / "calibrate"
    d.mkdir()
    reset_server(srv)
    cfg = make_config(srv, d, "keep")
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=RUN_TIMEOUT,
                     label="calibration run")
    assert r.rc == 0, f"calibration run: exit {r.rc}"
    _FX.full_run = max(r.seconds, 0.05)
    n = sum(len(all_msgs(u)) for u in LAYOUT)
    tap.diag(f"an uninterrupted run takes {r.seconds:.2f} s ({n} "
             "messages)")


def crash_mode(t, mode):
    srv = t.fx.get(t)
    calibrate(t, srv)
    rng = random.Random(f"{SEED}:imap:{mode}")
    tap.diag(f"{mode}: seed {SEED}")
    killer = crashkill.Killer(t, rng, _FX.full_run, maildirs, _FX.by_id,
                              check_records)

    def setup(d):
        reset_server(srv)
        return make_config(srv, d, mode)
    hist = killer.rounds(KILLS, mode, setup,
                         lambda d, cfg: verify_final(srv, d, mode, cfg))
    tap.diag(f"{mode}: {killer.records_checked} state records checked "
             "after kills")
    crashkill.assert_spread(hist, killer.records_checked)


@tap.test(name="SIGKILL at random, keep mode: 0 lost, 0 duplicated, "
          "nothing partial, the server untouched", timeout=900)
def test_crash_keep(t):
    crash_mode(t, "keep")


@tap.test(name="SIGKILL at random, delete mode: 0 lost, 0 duplicated, "
          "nothing partial, the folders empty", timeout=900)
def test_crash_delete(t):
    crash_mode(t, "delete")


@tap.test(name="SIGKILL at random, move-to = Archive: 0 lost, 0 "
          "duplicated, every message in Archive once", timeout=900)
def test_crash_move(t):
    crash_mode(t, "move")


# ---------------------------------------------------------------------------
# the full disk (root: a tmpfs)

def tmpfs(t, path, opts):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"{opts},mode=0700",
                    "tmpfs", str(path)], check=True, capture_output=True,
                   timeout=30)
    t.defer(mt.umount, path)
    return path


def remount(path, opts):
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)],
                   check=True, capture_output=True, timeout=30)


def big_messages(prefix, n, size):
    line = "0123456789abcdefghijklmnopqrstuvwxyz" * 2 + "\n"
    return [corpus.simple(f"{prefix}/{i:03d}",
                          body=f"message {i}\n" + line * (size // len(line)))
            for i in range(n)]


def _disk_full_test(opts, m, what):
    def test(t):
        why = mt.tmpfs_problem()
        if why:
            t.skip(why)
        md = tmpfs(t, t.tmp / "mnt", opts) / "Maildir"
        with h.imap_server(m) as srv:
            acct = h.ImapAccount(t, srv, keep=False, maildir=md)
            bad = []
            srv.on_command = h.imap_durable_watch(acct, bad)
            r = acct.once(expect_rc=mt.EX_IOERR, within=h.TIMEOUT + 10)
            h.assert_error_mentions(r, acct.name, "No space left")
            acct.assert_no_partial_in_new(m)
            assert not bad, "\n".join(bad[:10])
            n = mt.count_new(md)
            t.note(f"{n} messages fit before the disk was full ({what})")
            assert n < len(m), f"{n} in new/: the disk never filled up?"
            left = {x.data for x in srv.messages()}
            have = {mt.strip_trace(x) for x in acct.delivered()}
            lost = [x.id for x in m if x.data not in left | have]
            assert not lost, f"lost: {lost}"
            remount(md.parent, "size=50m,nr_inodes=10000")
            r = acct.once(expect_rc=0, within=60)
            assert not bad, "\n".join(bad[:10])
            acct.assert_delivered(m)
            assert srv.uids() == [], f"{len(srv.uids())} left"
            mt.assert_tmp_empty(md)
            r = acct.once(expect_rc=0, within=60)
            assert acct.summary(r)["fetched"] == 0
    return test


tap.test(name="full disk: 12 messages of 300 KB into a 2 MB Maildir, delete "
         "mode: 74, nothing partial, no STORE/EXPUNGE of a message not in "
         "new/; the rerun delivers everything once", timeout=120)(
    _disk_full_test("size=2m", big_messages("ifull", 12, 300_000),
                    "ENOSPC on write"))
tap.test(name="full disk: no inode left for the next file in tmp/, delete "
         "mode: 74, then the rerun", timeout=120)(
    _disk_full_test("size=10m,nr_inodes=12", h.tiny("iinodes", 12),
                    "ENOSPC on open"))


if __name__ == "__main__":
    tap.main(fixture=functools.partial(
        dovecot.Lazy, {u: None for u in LAYOUT}, imap=True))
