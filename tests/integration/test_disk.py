#!/usr/bin/env python3
"""test_disk.py: full disks, read-only Maildirs, unwritable state.

The Maildir (or the state directory) is put on a small tmpfs that fills up
in the middle of a fetch (ENOSPC on write, or no inodes left), or is
remounted read-only before or during a fetch; the state directory's file
system is full from the start or fills up between two commits.

Expected, every time: maild stops that account with a clear error naming
it (exit 74), never leaves a partial file in new/, never records a message
that is not in new/, never DELEtes a message that is not both in new/ and
recorded (and, since it gives up without QUIT, the server deletes nothing
in that session); once the space is back (remount bigger / read-write,
filler removed) one rerun delivers everything exactly once and empties
the server.  Another account on a healthy disk is not disturbed.

Needs root (mount -t tmpfs); otherwise the whole file is skipped
("1..0 # SKIP ...").  Every mount
is unmounted at the end of its test, pass or fail.
"""

import errno
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import hostile as h  # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from fakepop3 import Sleep  # noqa: E402

BOUND = h.TIMEOUT + 10


# ---------------------------------------------------------------------------
# mounts

_PROBLEM = None


def skip_reason():
    global _PROBLEM
    if _PROBLEM is None:
        _PROBLEM = mt.tmpfs_problem() or ""
    return _PROBLEM or None


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def tmpfs(t, path, size="2m", inodes=None):
    """Mount a tmpfs of size on path (created); unmounted when t ends."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0700"
    if inodes:
        opts += f",nr_inodes={inodes}"
    _run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)])
    t.defer(mt.umount, path)
    t.note(f"mounted tmpfs {opts} on {path}")
    return path


def remount(path, opts):
    _run(["mount", "-o", f"remount,{opts}", str(path)])


def fill(path, name=".filler"):
    """Fill the file system of path completely; returns the filler."""
    p = path / name
    with open(p, "ab", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    return p


def mkmaildir(path):
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


# ---------------------------------------------------------------------------
# what must hold after a failed run

class DeleWatch:
    """A DELE handler that notes every DELE of a message that is not
    complete in new/ or not recorded in the state."""

    def __init__(self, acct):
        self.acct = acct
        self.violations = []

    def __call__(self, conn, cmd):
        x = conn.msg(cmd.arg)
        if x is not None:
            mid = corpus.test_id(x.data)
            have = [mt.strip_trace(p.read_bytes()) for _, _, p in
                    mt.maildir_files(self.acct.maildir, ("new",))]
            if x.data not in have:
                self.violations.append(f"DELE {cmd.arg} ({mid}): not in new/")
            if x.uidl not in {u for _, u, _ in self.acct.records()}:
                self.violations.append(f"DELE {cmd.arg} ({mid}): not "
                                       "recorded")
        return None


def assert_consistent(acct, m):
    """new/ has only complete messages of m, none twice; every D record's
    message is in new/ (P records may name files still in tmp/)."""
    acct.assert_no_partial_in_new(m)
    have = {mt.strip_trace(d) for d in acct.delivered()}
    by_uidl = {x.uidl: x for x in acct.srv.mailbox}
    for kind, u, _ in acct.records():
        x = by_uidl.get(u)
        if kind == "D" and x is not None:
            assert x.data in have, (f"UIDL {u!r} ({corpus.test_id(x.data)}) "
                                    "recorded as delivered, not in new/")


def big_messages(prefix, n, size):
    line = "0123456789abcdefghijklmnopqrstuvwxyz" * 2 + "\n"
    return [corpus.simple(f"{prefix}/{i:03d}",
                          body=f"message {i}\n" + line * (size // len(line)))
            for i in range(n)]


def rerun_everything(acct, m, keep=False):
    srv = acct.srv
    watch = DeleWatch(acct)
    srv.handlers.clear()
    srv.handlers["DELE"] = watch
    acct.once(expect_rc=0, within=60)
    acct.assert_delivered(m)
    assert not watch.violations, "\n".join(watch.violations)
    if keep:
        assert len(srv.mailbox) == len(m)
    else:
        assert srv.mailbox == [], f"{len(srv.mailbox)} left on the server"
    r = acct.once(expect_rc=0, within=60)
    assert acct.summary(r)["fetched"] == 0


# ---------------------------------------------------------------------------
# the Maildir fills up

@tap.test
def test_maildir_enospc_mid_fetch_delete(t):
    """12 messages of 300 KB into a 2 MB Maildir, delete mode."""
    m = big_messages("full", 12, 300_000)
    md = tmpfs(t, t.tmp / "mnt", "2m") / "Maildir"
    with h.server(m) as srv:
        acct = h.Account(t, srv, keep=False, maildir=md)
        watch = DeleWatch(acct)
        srv.handlers["DELE"] = watch
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "No space left on device")
        assert_consistent(acct, m)
        assert not watch.violations, "\n".join(watch.violations)
        n = mt.count_new(md)
        t.note(f"{n} messages fit before the disk was full")
        assert 0 < n < 12, f"{n} in new/: the disk never filled up?"
        assert len(srv.mailbox) == 12, "deleted although the session failed"
        remount(md.parent, "size=50m")
        rerun_everything(acct, m)
        mt.assert_tmp_empty(md)


@tap.test
def test_maildir_enospc_keep_lockstep(t):
    """The same in keep mode, one command at a time."""
    m = big_messages("fullk", 10, 300_000)
    md = tmpfs(t, t.tmp / "mnt", "2m") / "Maildir"
    with h.server(m, pipelining=False) as srv:
        acct = h.Account(t, srv, keep=True, maildir=md)
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "No space left")
        assert_consistent(acct, m)
        acct.assert_server_untouched(m)
        remount(md.parent, "size=50m")
        rerun_everything(acct, m, keep=True)


@tap.test
def test_maildir_out_of_inodes(t):
    """No inode left for the next file in tmp/ (ENOSPC from open)."""
    m = h.tiny("inodes", 12)
    md = tmpfs(t, t.tmp / "mnt", "10m", inodes=12) / "Maildir"
    with h.server(m) as srv:
        acct = h.Account(t, srv, keep=False, maildir=md)
        watch = DeleWatch(acct)
        srv.handlers["DELE"] = watch
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "No space left")
        assert_consistent(acct, m)
        assert not watch.violations, "\n".join(watch.violations)
        assert len(srv.mailbox) == 12
        remount(md.parent, "nr_inodes=1000")
        rerun_everything(acct, m)


@tap.test
def test_full_maildir_does_not_stop_other_accounts(t):
    """Two accounts polled together: one Maildir is full, the other
    account delivers everything; exit 74 for the run."""
    m1 = big_messages("acct1", 10, 300_000)
    m2 = h.msgs("acct2", 10)
    md1 = tmpfs(t, t.tmp / "mnt", "1m") / "Maildir"
    md2 = t.tmp / "Maildir2"
    with h.server(m1) as s1, h.server(m2) as s2:
        a1 = h.Account(t, s1, keep=False, name="full", maildir=md1)
        a2 = h.Account(t, s2, keep=False, name="fine", maildir=md2)
        ca = str(a1.extra["ca_file"])
        accts = [mt.account(a.name, "127.0.0.1", a.srv.port, a.srv.user,
                            a.srv.password, a.maildir, keep=False,
                            ca_file=ca) for a in (a1, a2)]
        cfg = mt.write_config(t.tmp / "both.conf", accts,
                              state_dir=t.tmp / "state", timeout=h.TIMEOUT)
        r = h.run_maild(["--once", "-v", "-f", cfg], timeout=60)
        h.check_sane(r, within=BOUND)
        assert r.rc == mt.EX_IOERR, f"exit {r.rc}, expected 74"
        h.assert_error_mentions(r, "full", "No space left")
        assert a2.summary(r)["error"] is None, a2.summary(r)["line"]
        a2.assert_delivered(m2)
        assert s2.mailbox == []
        assert_consistent(a1, m1)
        assert len(s1.mailbox) == 10


# ---------------------------------------------------------------------------
# read-only Maildir

@tap.test
def test_maildir_read_only_from_start(t):
    m = h.msgs("ro", 5)
    mnt = tmpfs(t, t.tmp / "mnt", "10m")
    md = mnt / "Maildir"
    mkmaildir(md)
    remount(mnt, "ro")
    with h.server(m) as srv:
        acct = h.Account(t, srv, keep=False, maildir=md)
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "Read-only file system")
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(m)
        remount(mnt, "rw")
        rerun_everything(acct, m)


@tap.test
def test_maildir_goes_read_only_mid_fetch(t):
    """One command at a time; when RETR 4 arrives the server remounts the
    Maildir read-only (no file is open then): the messages before it were
    complete in tmp/ but cannot be moved to new/."""
    m = h.msgs("rolate", 8)
    mnt = tmpfs(t, t.tmp / "mnt", "10m")
    md = mnt / "Maildir"

    def retr(conn, cmd):
        if cmd.nth == 4:
            remount(mnt, "ro")
        return None
    with h.server(m, handlers={"RETR": retr}) as srv:
        acct = h.Account(t, srv, keep=False, maildir=md, pipelining="no")
        watch = DeleWatch(acct)
        srv.handlers["DELE"] = watch
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "Read-only file system")
        assert_consistent(acct, m)
        assert not watch.violations, "\n".join(watch.violations)
        assert len(srv.mailbox) == 8
        t.note(f"records after the failure: {acct.records()}")
        # still read-only: maild must not fetch or delete anything
        srv.handlers["DELE"] = watch
        del srv.handlers["RETR"]
        before = len(srv.commands())
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        assert_consistent(acct, m)
        sent = [c.verb for c in srv.commands()[before:]]
        assert "RETR" not in sent and "DELE" not in sent, sent
        remount(mnt, "rw")
        rerun_everything(acct, m)


# ---------------------------------------------------------------------------
# the state directory

@tap.test
def test_state_dir_read_only(t):
    m = h.msgs("stro", 4)
    st = tmpfs(t, t.tmp / "statemnt", "1m")
    remount(st, "ro")
    with h.server(m) as srv:
        acct = h.Account(t, srv, keep=False, state=st)
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "Read-only file system")
        assert not acct.delivered(), "delivered without a state file"
        acct.assert_server_untouched(m)
        remount(st, "rw")
        rerun_everything(acct, m)


@tap.test
def test_state_dir_full_from_start(t):
    m = h.msgs("stfull", 4)
    st = tmpfs(t, t.tmp / "statemnt", "256k")
    filler = fill(st)
    with h.server(m) as srv:
        acct = h.Account(t, srv, keep=False, state=st)
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "No space left")
        assert not acct.delivered(), "delivered without a state file"
        acct.assert_server_untouched(m)
        filler.unlink()
        rerun_everything(acct, m)


@tap.test
def test_state_dir_fills_between_commits(t):
    """Delete mode.  Messages 1-4 are committed (RETR 4's answer waits
    2.2 s, so their batch is committed when 4 is complete) and DELEted;
    when RETR 6 arrives the state file system is filled up, so the commit
    of 5-64 cannot write its records (60 of them: more than the journal's
    last page has room for).  Nothing of 5-64 may reach new/, and nothing
    may be deleted (no QUIT)."""
    m = h.msgs("stlate", 64)
    st = tmpfs(t, t.tmp / "statemnt", "1m")
    fillers = []

    def retr(conn, cmd):
        if cmd.nth == 4:
            return [Sleep(2.2), conn.default(cmd)]
        if cmd.nth == 6:
            # once maild has committed 1-4 (4 records, 4 files in new/)
            def g():
                for _ in range(400):
                    if len(acct.records()) >= 4 and \
                            mt.count_new(acct.maildir) >= 4:
                        break
                    yield Sleep(0.05)
                fillers.append(fill(st))
                yield conn.default(cmd)
            return g()
        return None
    with h.server(m, handlers={"RETR": retr}) as srv:
        acct = h.Account(t, srv, keep=False, state=st)
        watch = DeleWatch(acct)
        srv.handlers["DELE"] = watch
        r = acct.once(expect_rc=mt.EX_IOERR, within=BOUND)
        h.assert_error_mentions(r, acct.name, "No space left")
        assert_consistent(acct, m)
        assert not watch.violations, "\n".join(watch.violations)
        have = {corpus.test_id(mt.strip_trace(d)) for d in acct.delivered()}
        t.note(f"in new/ after the failure: {sorted(have)}")
        assert have == {x.id for x in m[:4]}, \
            f"expected 1-4 in new/, found {sorted(have)}"
        deles = sorted(c.arg for c in srv.commands() if c.verb == "DELE")
        assert deles == ["1", "2", "3", "4"], f"DELEs sent: {deles}"
        assert not have & {x.id for x in m[4:]}, \
            f"5-64 reached new/ without a state record: {sorted(have)}"
        assert len(srv.mailbox) == 64, "deleted although the session failed"
        assert fillers, "the state file system was never filled"
        fillers[0].unlink()
        rerun_everything(acct, m)
        mt.assert_tmp_empty(acct.maildir)


def fixture():
    """Skip the whole file ("1..0 # SKIP ...") without root or mounts."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        reason = skip_reason()
        if reason:
            raise tap.Skip(reason)
        yield None
    return cm()


if __name__ == "__main__":
    tap.main(fixture=fixture)
