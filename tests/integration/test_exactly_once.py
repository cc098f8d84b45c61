#!/usr/bin/env python3
"""test_exactly_once.py: what a state record may claim (issue 9, items 1-4
and 10), against the fake POP3 server.

A record says "delivered" only for the message it describes:
  reused UIDL   delete mode: a message whose DELE QUIT confirmed is
                forgotten, so a new message under its UIDL is fetched,
                never deleted unseen; keep mode with exact-sizes: a UIDL
                listed with another size than recorded is a new message
  recovery      a PENDING record whose file is in tmp/ (moved), new/ or
                cur/ under any flags (delivered), or nowhere (fetched
                again: never assumed delivered, never deleted unseen);
                planted as maild 0.1 would have left it (a version 1
                state file) and as a journal block of format 2
  digests       without UIDL, a QUIT whose +OK never came, a session that
                deletes nothing and a final save that fails (state
                directory full, root only) all leave digests that are not
                trusted: a later byte-identical message is delivered
  forget rule   one empty or partial listing does not make every message
                new; records go after 3 complete listings without them
                AND 7 days (planted "absent since" times), at once when
                QUIT confirmed their deletion
  RETR -ERR     on the last wanted message: the batch commits and the
                session ends at once (DELEs, QUIT), not at the timeout
"""

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

NAME = "once"
DAY = 86400


# ---------------------------------------------------------------------------
# helpers

def fake(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


def msgs(prefix, n=3):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


def config(t, srv, keep, state=None, **extra):
    a = mt.account(NAME, "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=keep, ca_file=certs.get().ca)
    g = {"timeout": 10}
    g.update(extra.pop("globals_", {}))
    a.update(extra)
    return mt.write_config(t.tmp / "maild.conf", [a],
                           state_dir=state or t.tmp / "state", **g)


def once(cfg, limit=30, rc=0):
    """maild --once; rc: the exit status wanted (None: any)."""
    mt.require_maild()
    r = mt.run_maild(["--once", "-f", cfg], timeout=limit)
    if rc is not None:
        assert r.rc == rc, (f"exit {r.rc}, expected {rc}: "
                            f"{mt.tail(r.stderr, 5)}")
    return r


def summary(r):
    recs = [x for x in mt.summary_lines(r.stderr) if x["account"] == NAME]
    assert recs, "no summary line"
    return recs[-1]


def ids(path):
    """The X-Test-Ids in a Maildir, sorted (repeats kept)."""
    return sorted(corpus.test_id(mt.strip_trace(d))
                  for d in mt.read_maildir(path))


def conn_verbs(conn):
    return [(c.verb, c.arg) for c in conn.commands]


def retrieved(srv, conn=None):
    """X-Test-Ids of the messages RETRed (in conn, or anywhere)."""
    out = []
    for c in (conn.commands if conn else srv.commands()):
        m = getattr(c, "conn_msg", None)
        if c.verb == "RETR" and m is not None:
            out.append(corpus.test_id(m.data))
    return out


def track_messages(srv):
    """Remember which message each RETR and DELE named (cmd.conn_msg),
    whatever the server's numbering."""
    def note(conn, cmd):
        cmd.conn_msg = conn.msg(cmd.arg)
        return None
    for verb in ("RETR", "DELE"):
        prev = srv.handlers.get(verb)

        def h(conn, cmd, prev=prev):
            note(conn, cmd)
            return prev(conn, cmd) if prev else None
        srv.handlers[verb] = h


def deleted_unseen(srv, maildir):
    """X-Test-Ids of the messages a DELE removed that are not in the
    Maildir: deleted without being delivered."""
    have = set(ids(maildir))
    return [corpus.test_id(c.conn_msg.data) for c in srv.commands()
            if c.verb == "DELE" and getattr(c, "conn_msg", None) is not None
            and corpus.test_id(c.conn_msg.data) not in have]


def records(t):
    return mt.state_entries(t.tmp / "state", NAME)


def record_keys(t):
    return sorted(k.decode() for _, k, _, _ in records(t))


# ---------------------------------------------------------------------------
# 1. a reused UIDL

@tap.test(name="reused UIDL, delete mode: A is delivered and deleted under "
          "UIDL X; B arrives under X: B is fetched and delivered, never "
          "deleted unseen")
def test_reused_uidl_delete(t):
    a, b = corpus.simple("reuse/A"), corpus.simple("reuse/B",
                                                   body="Other text.\n")
    with fake([fakepop3.Msg(a, uidl="X")]) as srv:
        track_messages(srv)
        cfg = config(t, srv, keep=False)
        r = once(cfg)
        assert summary(r)["deleted"] == 1 and srv.mailbox == []
        keys = record_keys(t)
        srv.add(fakepop3.Msg(b, uidl="X"))
        r = once(cfg)
        rec = summary(r)
        bad = deleted_unseen(srv, t.tmp / "Maildir")
        assert not bad, f"DELE without delivery: {bad}"
        assert rec["fetched"] == 1, rec["line"]
        assert ids(t.tmp / "Maildir") == ["reuse/A", "reuse/B"]
        assert srv.mailbox == [], "B was not deleted after its delivery"
        assert keys == [], f"records of messages the server removed: {keys}"


@tap.test(name="reused UIDL, delete mode, same size: B under A's UIDL is "
          "still fetched (the record went with QUIT's +OK)")
def test_reused_uidl_delete_same_size(t):
    a, b = corpus.simple("reusz/A"), corpus.simple("reusz/B")
    assert len(a.data) == len(b.data)
    with fake([fakepop3.Msg(a, uidl="X")]) as srv:
        track_messages(srv)
        cfg = config(t, srv, keep=False)
        once(cfg)
        srv.add(fakepop3.Msg(b, uidl="X"))
        once(cfg)
        bad = deleted_unseen(srv, t.tmp / "Maildir")
        assert not bad, f"DELE without delivery: {bad}"
        assert ids(t.tmp / "Maildir") == ["reusz/A", "reusz/B"]


@tap.test(name="reused UIDL, keep mode, exact-sizes: X listed with another "
          "size is a new message and fetched; with the recorded size it "
          "stays known")
def test_reused_uidl_keep_sizes(t):
    a = corpus.simple("keepsz/A")
    b = corpus.simple("keepsz/B", body="A longer text than A had.\n")
    c = corpus.simple("keepsz/C")     # same size as A
    assert len(c.data) == len(a.data) != len(b.data)
    with fake([fakepop3.Msg(a, uidl="X"),
               fakepop3.Msg(corpus.simple("keepsz/other"), uidl="Y")]) as srv:
        cfg = config(t, srv, keep=True, exact_sizes=True)
        assert summary(once(cfg))["fetched"] == 2
        # Same UIDL, the recorded size: the same message as far as POP3
        # can tell, so it stays known.
        srv.mailbox[0] = fakepop3.Msg(c, uidl="X")
        assert summary(once(cfg))["fetched"] == 0
        # The server replaces it by B, of another size, under that UIDL.
        srv.mailbox[0] = fakepop3.Msg(b, uidl="X")
        r = once(cfg)
        assert summary(r)["fetched"] == 1, summary(r)["line"]
        assert ids(t.tmp / "Maildir") == ["keepsz/A", "keepsz/B",
                                          "keepsz/other"]
        # Known now: not fetched again.
        assert summary(once(cfg))["fetched"] == 0
        assert len(mt.read_maildir(t.tmp / "Maildir")) == 3


# ---------------------------------------------------------------------------
# 2. crash recovery: a PENDING record

def plant_v1(state_dir, mailbox, maildir, lines):
    """Replace the account's state by a version 1 file (what maild 0.1
    wrote, and what a crash of maild 0.1 left: both versions read it)."""
    mt.remove_state(state_dir, NAME)
    text = (f"maild-state 1\nmailbox {mailbox}\nmaildir {maildir}\n" +
            "".join(ln + "\n" for ln in lines))
    mt.write_file(Path(state_dir) / f"{NAME}.state", text)


def crash_case(t, where, plant="v1"):
    """Keep mode delivers A (UIDL "a") and B; the state is then replaced
    by one where A's delivery was interrupted: a PENDING record naming
    A's file, which is moved to where ("tmp", "new", "cur" with flags,
    or None: nowhere).  The next run is in delete mode."""
    a, b = corpus.simple("crash/A"), corpus.simple("crash/B")
    md = t.tmp / "Maildir"
    with fake([fakepop3.Msg(a, uidl="a"), fakepop3.Msg(b, uidl="b")]) as srv:
        track_messages(srv)
        cfg = config(t, srv, keep=True)
        once(cfg)
        files = {corpus.test_id(p.read_bytes()): (sub, n, p)
                 for sub, n, p in mt.maildir_files(md)}
        _, fname, path = files["crash/A"]
        now = int(time.time())
        if where == "tmp":
            # maild's name in tmp/ is the one in new/ less ",S=<size>"
            path.rename(md / "tmp" / re.sub(r",S=\d+$", "", fname))
        elif where == "cur":
            path.rename(md / "cur" / (fname + ":2,S"))
        elif where is None:
            path.unlink()
        if plant == "v1":
            plant_v1(t.tmp / "state", f"{srv.user}@127.0.0.1", md,
                     [f"P {now} 1 a {fname}", f"D {now} 1 b"])
        else:
            size = fakepop3.crlf_size(a.data)
            mt.append_state_block(t.tmp / "state", NAME, [
                f"F 1 a", f"P {now} 1 {size} 0 0 a {fname}"])
        t.note(f"planted P for {fname} ({where}), {plant}")
        cfg = config(t, srv, keep=False)
        r = once(cfg)
        conn = srv.connections[-1]
        bad = deleted_unseen(srv, md)
        assert not bad, f"DELE of a message not delivered: {bad}"
        assert srv.mailbox == [], f"left on the server: {srv.mailbox}"
        return r, conn, a, b


@tap.test(name="recovery: PENDING file still in tmp/: moved into new/, not "
          "fetched again, then deleted")
def test_recover_pending_in_tmp(t):
    r, conn, a, b = crash_case(t, "tmp")
    assert retrieved(srv=None, conn=conn) == [], conn_verbs(conn)
    assert ids(t.tmp / "Maildir") == ["crash/A", "crash/B"]
    assert [n for _, n, _ in mt.maildir_files(t.tmp / "Maildir", ("tmp",))
            ] == [], "the file stayed in tmp/"
    mt.assert_names_ok(t.tmp / "Maildir")


@tap.test(name="recovery: PENDING file already in new/: delivered, not "
          "fetched again")
def test_recover_pending_in_new(t):
    r, conn, a, b = crash_case(t, "new")
    assert retrieved(None, conn) == [], conn_verbs(conn)
    assert ids(t.tmp / "Maildir") == ["crash/A", "crash/B"]


@tap.test(name="recovery: PENDING file moved to cur/ with flags (:2,S) by a "
          "mail reader: delivered, not fetched again")
def test_recover_pending_in_cur(t):
    r, conn, a, b = crash_case(t, "cur")
    assert retrieved(None, conn) == [], conn_verbs(conn)
    assert ids(t.tmp / "Maildir") == ["crash/A", "crash/B"]


@tap.test(name="recovery: PENDING file nowhere: the message is fetched "
          "again (never assumed delivered, never deleted unseen)")
def test_recover_pending_nowhere(t):
    r, conn, a, b = crash_case(t, None)
    assert retrieved(None, conn) == ["crash/A"], conn_verbs(conn)
    assert ids(t.tmp / "Maildir") == ["crash/A", "crash/B"]
    assert "fetched again" in r.stderr, "no warning about the lost file"


@tap.test(name="recovery, state format 2: a PENDING journal record whose "
          "file is nowhere: fetched again")
def test_recover_pending_journal(t):
    r, conn, a, b = crash_case(t, None, plant="journal")
    assert retrieved(None, conn) == ["crash/A"], conn_verbs(conn)
    assert ids(t.tmp / "Maildir") == ["crash/A", "crash/B"]


@tap.test(name="recovery, state format 2: a PENDING journal record whose "
          "file is in cur/ with flags: not fetched again")
def test_recover_pending_journal_cur(t):
    r, conn, a, b = crash_case(t, "cur", plant="journal")
    assert retrieved(None, conn) == [], conn_verbs(conn)
    assert ids(t.tmp / "Maildir") == ["crash/A", "crash/B"]


# ---------------------------------------------------------------------------
# 3. no UIDL: digests after a failed final save (the other cases are in
# test_policy.py: QUIT's +OK lost, no +OK at all, a session that deletes
# nothing)

NO_UIDL_CAPA = ["USER", "PIPELINING", "RESP-CODES"]


def _tmpfs_problem():
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    return None


def tmpfs(t, path, size):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                        "tmpfs", str(path)], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        t.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    t.defer(mt.umount, path)
    return path


def fill(path):
    """Fill path's file system up completely; returns the filler."""
    p = path / ".filler"
    chunk = b"\0" * 65536
    with open(p, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return p
                chunk = chunk[:len(chunk) // 2]


@tap.test(name="no UIDL: the save after QUIT's +OK fails (state directory "
          "full): a later byte-identical message is delivered, not "
          "deleted unseen", skip=_tmpfs_problem())
def test_no_uidl_final_save_fails(t):
    m = msgs("nouidlsave", 3)
    st = tmpfs(t, t.tmp / "state", "1m")
    fillers = []

    def quit_handler(conn, cmd):
        if cmd.nth == 1:
            fillers.append(fill(st))     # before the +OK goes out
        return None
    with fake(m, capa=NO_UIDL_CAPA, handlers={
            "UIDL": fakepop3.raw(b"-ERR unknown command\r\n"),
            "QUIT": quit_handler}) as srv:
        track_messages(srv)
        cfg = config(t, srv, keep=False, state=st)
        r = once(cfg, rc=None)
        assert fillers, "QUIT never came"
        assert srv.mailbox == [], "the server did not delete at QUIT"
        assert sorted(ids(t.tmp / "Maildir")) == sorted(x.id for x in m)
        t.note(f"first run: exit {r.rc}: {summary(r)['line']}")
        fillers[0].unlink()
        srv.add(m[0].data)                  # the same bytes again
        r = once(cfg)
        bad = deleted_unseen(srv, t.tmp / "Maildir")
        assert not bad, f"deleted without delivery: {bad}"
        assert summary(r)["fetched"] == 1, summary(r)["line"]
        assert ids(t.tmp / "Maildir").count(m[0].id) == 2
        assert srv.mailbox == []


# ---------------------------------------------------------------------------
# 4. empty or partial listings, and the forget rule

@tap.test(name="keep mode: one empty listing does not erase the state: "
          "A is not delivered again when it reappears")
def test_empty_listing_keeps_records(t):
    a = corpus.simple("glitch/A")
    with fake([fakepop3.Msg(a, uidl="A")]) as srv:
        cfg = config(t, srv, keep=True)
        assert summary(once(cfg))["fetched"] == 1
        saved = list(srv.mailbox)
        srv.mailbox[:] = []                 # a glitch: an empty mailbox
        assert summary(once(cfg))["fetched"] == 0
        srv.mailbox[:] = saved
        r = once(cfg)
        assert summary(r)["fetched"] == 0, "A delivered again"
        assert ids(t.tmp / "Maildir") == ["glitch/A"]


@tap.test(name="keep mode: partial listings (one message missing twice, the "
          "other once) do not make either new")
def test_partial_listing_keeps_records(t):
    ms = [fakepop3.Msg(corpus.simple(f"partial/{i}"), uidl=f"p{i}")
          for i in range(3)]
    with fake(ms) as srv:
        cfg = config(t, srv, keep=True)
        assert summary(once(cfg))["fetched"] == 3
        srv.mailbox[:] = [ms[1], ms[2]]
        once(cfg)
        srv.mailbox[:] = [ms[2]]
        once(cfg)
        srv.mailbox[:] = list(ms)
        r = once(cfg)
        assert summary(r)["fetched"] == 0, summary(r)["line"]
        assert ids(t.tmp / "Maildir") == [f"partial/{i}" for i in range(3)]


def plant_absent(t, srv, entries):
    """One keep-mode run to make the state, then D records planted with
    (key, missed, absent-since) via a journal block."""
    now = int(time.time())
    lines = [f"D {now - 40 * DAY} 1 100 {missed} {now - age} {key}"
             for key, missed, age in entries]
    mt.append_state_block(t.tmp / "state", NAME, lines)
    t.note("planted: " + "; ".join(lines))


@tap.test(name="forget rule: a record goes after 3 complete listings "
          "without it AND 7 days; 3 listings alone or 7 days alone keep it")
def test_forget_rule(t):
    keep = corpus.simple("forget/stays")
    with fake([fakepop3.Msg(keep, uidl="stays")]) as srv:
        cfg = config(t, srv, keep=True)
        once(cfg)
        # old: missed twice, absent 8 days -> forgotten at the next listing
        # recent: missed twice, absent 1 day -> kept (7 days not over)
        # fresh: never missed, but absent 30 days -> needs 3 listings
        plant_absent(t, srv, [("old", 2, 8 * DAY), ("recent", 2, DAY),
                              ("fresh", 0, 30 * DAY)])
        assert {"old", "recent", "fresh"} <= set(record_keys(t))
        once(cfg)
        keys = record_keys(t)
        assert "old" not in keys, f"3 listings and 8 days: still {keys}"
        assert "recent" in keys and "fresh" in keys, keys
        once(cfg)
        assert "fresh" in record_keys(t), "forgotten after 2 listings"
        once(cfg)
        keys = record_keys(t)
        assert "fresh" not in keys, f"3 listings and 30 days: still {keys}"
        assert "recent" in keys, "forgotten before 7 days"
        assert "stays" in keys
        # What that means: a message under a forgotten UIDL is new, one
        # under a kept record is not.
        srv.add(fakepop3.Msg(corpus.simple("forget/old"), uidl="old"))
        srv.add(fakepop3.Msg(corpus.simple("forget/recent"),
                             uidl="recent", list_size=100))
        r = once(cfg)
        assert summary(r)["fetched"] == 1, summary(r)["line"]
        assert ids(t.tmp / "Maildir") == ["forget/old", "forget/stays"]


@tap.test(name="forget rule: a listing that failed (UIDL -ERR, a UIDL "
          "listing cut short) counts as no listing at all")
def test_failed_listing_counts_nothing(t):
    def cut(conn, cmd):
        return [b"+OK\r\n1 x\r\n", fakepop3.DROP]
    with fake([fakepop3.Msg(corpus.simple("failed/x"), uidl="x")]) as srv:
        cfg = config(t, srv, keep=True)
        once(cfg)
        plant_absent(t, srv, [("gone", 2, 30 * DAY)])
        for handler in (fakepop3.raw(b"-ERR [SYS/TEMP] try later\r\n"),
                        cut):
            srv.handlers["UIDL"] = handler
            r = once(cfg, rc=None)
            assert r.rc != 0, "a failed listing, and exit 0"
            assert "gone" in record_keys(t), \
                "forgotten after a failed listing"
        srv.handlers.pop("UIDL")
        once(cfg)
        assert "gone" not in record_keys(t)
        assert ids(t.tmp / "Maildir") == ["failed/x"]


@tap.test(name="delete mode: records of messages whose deletion QUIT "
          "confirmed are forgotten at once; without QUIT's +OK they stay")
def test_forget_at_quit(t):
    ms = [fakepop3.Msg(corpus.simple(f"fq/{i}"), uidl=f"fq{i}")
          for i in range(3)]

    def quit_handler(conn, cmd):
        if cmd.nth == 1:
            return [fakepop3.DROP]          # no +OK, nothing deleted
        return None
    with fake(ms, handlers={"QUIT": quit_handler}) as srv:
        cfg = config(t, srv, keep=False)
        r = once(cfg, rc=None)
        assert r.rc != 0
        assert record_keys(t) == ["fq0", "fq1", "fq2"], record_keys(t)
        r = once(cfg)
        assert summary(r)["fetched"] == 0 and summary(r)["deleted"] == 3
        assert record_keys(t) == [], record_keys(t)
        assert ids(t.tmp / "Maildir") == [f"fq/{i}" for i in range(3)]


# ---------------------------------------------------------------------------
# 10. RETR -ERR on the last wanted message

@tap.test(name="RETR -ERR on the last wanted message: the batch commits, "
          "the DELEs and QUIT go out at once, not at the timeout",
          timeout=120)
def test_retr_err_last_message(t):
    m = msgs("retrlast", 4)

    def retr(conn, cmd):
        if cmd.arg == "4":
            return b"-ERR [SYS/TEMP] cannot open that message now\r\n"
        return None
    for lockstep in (False, True):
        sub = t.tmp / ("lockstep" if lockstep else "pipelined")
        with fake(m, handlers={"RETR": retr},
                  pipelining=not lockstep) as srv:
            track_messages(srv)
            a = mt.account(NAME, "127.0.0.1", srv.port, srv.user,
                           srv.password, sub / "Maildir", keep=False,
                           ca_file=certs.get().ca)
            # A long timeout: a session that waits for it is obvious.
            cfg = mt.write_config(sub / "maild.conf", [a],
                                  state_dir=sub / "state", timeout=300,
                                  session_timeout=600)
            r = mt.run_maild(["--once", "-f", cfg], timeout=40)
            rec = summary(r)
            assert rec["fetched"] == 3, rec["line"]
            assert rec["deleted"] == 3, rec["line"]
            assert r.rc == mt.EX_PROTOCOL, f"exit {r.rc}: {rec['line']}"
            assert "timed out" not in (rec["error"] or ""), rec["line"]
            conn = srv.connections[-1]
            verbs = conn.verbs()
            assert verbs.count("DELE") == 3 and verbs[-1] == "QUIT", verbs
            dele = sorted(c.arg for c in conn.commands if c.verb == "DELE")
            assert dele == ["1", "2", "3"], dele
            assert [corpus.test_id(x.data) for x in srv.mailbox] == \
                [m[3].id]
            assert ids(sub / "Maildir") == sorted(x.id for x in m[:3])


if __name__ == "__main__":
    tap.main()
