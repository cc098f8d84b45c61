#!/usr/bin/env python3
"""test_state_file.py: the state file's integrity and size (issue 9, items
5 and 12), against the fake POP3 server.

Integrity: the state as maild left it after a keep-mode poll of 1300
messages (their records in the snapshot <name>.state), then emptied to 0
bytes, cut in the middle of a line, cut after a whole line, or with one
byte of a UIDL changed: maild refuses it (exit 65) with an error that
names the file and says what to do, connects to no server and fetches and
deletes nothing, in keep mode and in delete mode; restored from a copy,
everything works again and nothing is delivered twice.  A journal whose
last block is torn (maild killed while writing it) is tolerated: the
block is cut off, its message fetched again, delivered once; a damaged
block followed by a good one is refused.

Size: 1,000,000 listed messages all over max-size cost bounded memory
(peak RSS under 150 MB; not checked under valgrind or ASan, and only
100,000 messages under valgrind), one summary
line for them per poll, a warning only at the first poll, and no state
records: the state stays a few hundred bytes, poll after poll.
"""

import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import fakepop3    # noqa: E402
import hostile as h  # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

NAME = "st"
FIX_HINT = "restore it from a backup, or move it and its .journal away"


# ---------------------------------------------------------------------------
# helpers

def fake(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


def config(t, srv, keep, **extra):
    a = mt.account(NAME, "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=keep, ca_file=certs.get().ca)
    a.update(extra)
    return mt.write_config(t.tmp / f"maild-{int(keep)}.conf", [a],
                           state_dir=t.tmp / "state", timeout=10)


def once(cfg, limit=60):
    mt.require_maild()
    return mt.run_maild(["--once", "-f", cfg], timeout=limit)


def summary(r):
    recs = [x for x in mt.summary_lines(r.stderr) if x["account"] == NAME]
    assert recs, "no summary line"
    return recs[-1]


def many(n, prefix):
    """n tiny messages with long UIDLs: their records fill a snapshot."""
    return [fakepop3.Msg(b"Subject: %s %d\nX-Test-Id: %s/%d\n\nx\n" %
                         (prefix.encode(), i, prefix.encode(), i),
                         uidl=f"{prefix}-{i:058d}") for i in range(n)]


def delivered_ids(t):
    return [re.search(rb"X-Test-Id: (\S+)", d).group(1)
            for d in mt.read_maildir(t.tmp / "Maildir")]


def big_state(t, srv):
    """Keep mode: deliver everything; the records end up in the snapshot
    (maild compacts a journal that outgrows it)."""
    cfg = config(t, srv, keep=True)
    r = once(cfg)
    assert r.rc == 0 and summary(r)["fetched"] == len(srv.mailbox), \
        summary(r)["line"]
    snap = mt.state_path(t.tmp / "state", NAME)
    t.note(f"state files: {sorted(os.listdir(t.tmp / 'state'))}, "
           f"{snap.stat().st_size} bytes in {snap.name}")
    return cfg, snap


def assert_refused(t, srv, cfg, snap, what):
    """The damaged state is refused: exit 65, an error naming the file and
    what to do, no connection, nothing fetched or deleted."""
    before = len(srv.connections)
    have = len(mt.read_maildir(t.tmp / "Maildir"))
    r = once(cfg)
    rec = summary(r)
    err = rec["error"] or ""
    assert r.rc == mt.EX_DATAERR, f"{what}: exit {r.rc}: {rec['line']}"
    assert str(snap) in err and FIX_HINT in err, f"{what}: {err}"
    assert rec["fetched"] == 0 and rec["deleted"] == 0, rec["line"]
    verbs = [v for conn in srv.connections[before:] for v in conn.verbs()]
    assert "RETR" not in verbs and "DELE" not in verbs, verbs
    assert len(mt.read_maildir(t.tmp / "Maildir")) == have, \
        f"{what}: something was delivered"
    return err


def damage_case(t, damage):
    """Deliver 1300 messages (keep mode), damage the snapshot with
    damage(bytes) -> bytes, check it is refused in keep and delete mode,
    then restore the copy and check that nothing comes twice."""
    ms = many(1300, "dmg")
    with fake(ms) as srv:
        cfg, snap = big_state(t, srv)
        good = snap.read_bytes()
        assert good.count(b"\nD ") == len(ms), \
            "the records are not in the snapshot: test assumption broken"
        shutil.copy2(snap, t.tmp / "backup.state")
        snap.write_bytes(damage(good))
        err = assert_refused(t, srv, cfg, snap, "keep mode")
        t.note(f"refused: {err}")
        assert_refused(t, srv, config(t, srv, keep=False), snap,
                       "delete mode")
        assert len(srv.mailbox) == len(ms)
        # What the error says: restore it from the backup.
        shutil.copy2(t.tmp / "backup.state", snap)
        r = once(cfg)
        assert r.rc == 0 and summary(r)["fetched"] == 0, summary(r)["line"]
        got = delivered_ids(t)
        assert len(got) == len(set(got)) == len(ms), \
            f"{len(got)} delivered, {len(set(got))} different"
        return err


# ---------------------------------------------------------------------------
# item 5: integrity

@tap.test(name="a 0-byte state file is refused (65, what to do), nothing "
          "fetched or deleted; restored, nothing comes twice")
def test_zero_bytes(t):
    damage_case(t, lambda data: b"")


@tap.test(name="a state file cut in the middle of a line is refused")
def test_truncated_mid_line(t):
    err = damage_case(t, lambda data: data[:len(data) // 2 + 7])
    assert "truncated" in err, err


@tap.test(name="a state file cut after a whole line (fewer records, each "
          "intact) is refused")
def test_truncated_at_line(t):
    def cut(data):
        return data[:data.rindex(b"\n", 0, len(data) // 2) + 1]
    err = damage_case(t, cut)
    assert "truncated" in err, err


@tap.test(name="a state file with one byte of a UIDL changed is refused "
          "(checksum)")
def test_byte_damaged(t):
    def flip(data):
        i = data.index(b"\nD ", len(data) // 2)
        j = data.index(b" dmg-", i) + 10        # inside the UIDL's digits
        return data[:j] + (b"7" if data[j:j + 1] != b"7" else b"3") + \
            data[j + 1:]
    err = damage_case(t, flip)
    assert "damaged" in err, err


def torn_setup(t, srv):
    """Keep mode, one message delivered, then a crash is staged in the
    middle of the next commit: message 2's file complete in tmp/ and the
    journal block that was to record it cut short."""
    cfg = config(t, srv, keep=True)
    srv.mailbox[1:] = []
    once(cfg)
    md = t.tmp / "Maildir"
    [(_, first, _)] = mt.maildir_files(md)
    m = mt.NAME_RE.match(first)
    tmpname = (f"{m.group(1)}.M{m.group(2)}P{m.group(3)}Q"
               f"{int(m.group(4)) + 1}A{m.group(5)}.{m.group(6)}")
    return cfg, md, tmpname


@tap.test(name="a journal whose last block is torn (cut mid-line) is "
          "tolerated: the block is cut off, its message fetched again "
          "and delivered once")
def test_torn_journal_block(t):
    ms = many(2, "torn")
    with fake(list(ms)) as srv:
        cfg, md, tmpname = torn_setup(t, srv)
        (md / "tmp" / tmpname).write_bytes(ms[1].data)
        size = fakepop3.crlf_size(ms[1].data)
        line = (f"P {int(time.time())} 1 {size} 0 0 "
                f"{ms[1].uidl.decode()} {tmpname},S={len(ms[1].data)}\n")
        j = mt.state_path(t.tmp / "state", NAME).with_suffix(".journal")
        if not j.exists():
            snap = mt.state_path(t.tmp / "state", NAME).read_text()
            gen = re.search(r"^generation (\d+)$", snap, re.M).group(1)
            j.write_text(f"maild-journal 2 {gen}\n")
        with open(j, "a") as f:
            f.write(line[:len(line) // 2])  # killed in mid-write
        srv.mailbox.append(ms[1])
        r = once(cfg)
        assert r.rc == 0, f"exit {r.rc}: {summary(r)['line']}"
        assert summary(r)["fetched"] == 1, summary(r)["line"]
        got = delivered_ids(t)
        assert sorted(got) == [b"torn/0", b"torn/1"], got
        mt.assert_tmp_empty(md)
        text = j.read_text() if j.exists() else ""
        assert not text or text.endswith("\n"), "the torn block is still there"
        r = once(cfg)
        assert r.rc == 0 and summary(r)["fetched"] == 0, summary(r)["line"]


@tap.test(name="a journal with a damaged block before a good one is refused "
          "(65, what to do)")
def test_journal_damaged_in_the_middle(t):
    ms = many(3, "jmid")
    with fake(list(ms)) as srv:
        cfg = config(t, srv, keep=True)
        once(cfg)
        j = mt.state_path(t.tmp / "state", NAME).with_suffix(".journal")
        assert j.exists(), "no journal after a small poll"
        data = j.read_bytes()
        assert data.count(b"\nC ") >= 2, data
        i = data.index(b" jmid-") + 10
        j.write_bytes(data[:i] + b"9" + data[i + 1:])
        err = assert_refused(t, srv, cfg, j, "keep mode")
        assert FIX_HINT in err


# ---------------------------------------------------------------------------
# item 12: a million messages over max-size

# Under valgrind (MAILD_WRAPPER) a tenth: the same code, a bearable time.
N_BIG = h.MAX_MESSAGES if not h.wrapper() else h.MAX_MESSAGES // 10


def huge_listing(srv, small):
    """UIDL and LIST handlers: message 1 is small and real, the other
    N_BIG - 1 are listed with 10 MB each (and never asked for)."""
    uidl = [b"+OK\r\n", b"1 %s\r\n" % small.uidl]
    lst = [b"+OK\r\n", b"1 %d\r\n" % small.size]
    chunk = 100000
    for lo in range(2, N_BIG + 1, chunk):
        hi = min(lo + chunk, N_BIG + 1)
        uidl.append(b"".join(b"%d big-%d\r\n" % (i, i) for i in range(lo, hi)))
        lst.append(b"".join(b"%d 10000000\r\n" % i for i in range(lo, hi)))
    uidl.append(b".\r\n")
    lst.append(b".\r\n")
    uidl_b, lst_b = b"".join(uidl), b"".join(lst)

    def retr(conn, cmd):
        return None if cmd.arg == "1" else b"-ERR do not ask for that\r\n"
    return {"UIDL": lambda c, cmd: uidl_b, "LIST": lambda c, cmd: lst_b,
            "RETR": retr}


def state_bytes(t):
    d = t.tmp / "state"
    return sum(p.stat().st_size for p in d.iterdir()
               if p.suffix in (".state", ".journal"))


@tap.test(name="1,000,000 messages over max-size: bounded memory, one line "
          "per poll, no state records, no big state file rewritten",
          timeout=300)
def test_million_over_max_size(t):
    small = fakepop3.Msg(b"Subject: small\nX-Test-Id: mil/small\n\nhi\n",
                         uidl="small")
    with h.server([small]) as srv:
        srv.handlers.update(huge_listing(srv, small))
        acct = h.Account(t, srv, keep=True, name=NAME, timeout=60,
                         max_size=mt.Raw("1k"))
        sizes = []
        for poll in (1, 2):
            r = acct.once(expect_rc=0, rss_mb=150, timeout=120)
            t.note(f"poll {poll}: {r.seconds:.1f} s, peak RSS "
                   f"{r.maxrss_mb} MB, {len(r.stderr.splitlines())} lines")
            s = acct.summary(r)
            assert s["fetched"] == (1 if poll == 1 else 0), s["line"]
            over = [ln for ln in r.stderr.splitlines()
                    if "max-size" in ln]
            assert len(over) == 1, \
                f"{len(over)} lines about max-size: {over[:3]}"
            assert f"{N_BIG - 1} messages over max-size" in over[0], over[0]
            assert len(r.stderr.splitlines()) < 20, \
                f"{len(r.stderr.splitlines())} log lines"
            if poll == 1:
                assert "raise max-size" in over[0], over[0]
            else:
                assert "raise max-size" not in over[0], \
                    f"warned again for the same messages: {over[0]}"
            sizes.append(state_bytes(t))
            recs = acct.records()
            assert len(recs) == 1, f"{len(recs)} state records"
        t.note(f"state sizes after each poll: {sizes}")
        assert max(sizes) < 4096, f"state files of {sizes} bytes"
        deles = [c for c in srv.commands() if c.verb in ("DELE", "RETR")
                 and c.arg != "1"]
        assert not deles, deles[:3]


if __name__ == "__main__":
    tap.main()
