#!/usr/bin/env python3
"""test_mda.py: deliver = mda, a command run once per message with the
message on its standard input.

dovecot-lda (private Dovecot, its Sieve filing by List-Id and the
duplicate snippet) and procmail as the mda, byte-exact; scripts that
record what they get (the message below X-Maild-Id, MAILD_ACCOUNT and
MAILD_USER, only descriptors 0-2, one at a time), that exit 75 (the
message stays, exit 75, delivered at the next poll), 1 (stays, exit 69,
its words logged), 127, die of a signal, print megabytes, do not read
their input, hang (killed with their children after timeout * 10 seconds;
the message stays).
"""

import functools
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import delivery    # noqa: E402
import dovecot     # noqa: E402
import fakepop3    # noqa: E402
import hostile     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402


def msgs(prefix, n, seed=15, **kw):
    kw.setdefault("max_large", 0)
    return corpus.generate(seed=seed, count=n, prefix=prefix, **kw)


def pop3(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


# A script that stores its input as out/<n> (n: the count so far), its
# environment as out/<n>.env, its open descriptors as out/<n>.fds, and
# fails if another copy of it runs at the same time.
RECORDER = r'''
d=@DIR@
mkdir "$d/running" 2>/dev/null || { echo "two at once" >&2; exit 1; }
n=$(ls "$d/out" | grep -c -v '\.')
cat > "$d/out/$n"
env > "$d/out/$n.env"
ls /proc/self/fd > "$d/out/$n.fds"
rmdir "$d/running"
@TAIL@
'''


def recorder(t, tail="exit 0", name="mda.sh"):
    d = t.tmp / "rec"
    (d / "out").mkdir(parents=True, exist_ok=True)
    return delivery.script(t.tmp / name, RECORDER.replace(
        "@DIR@", str(d)).replace("@TAIL@", tail)), d


def recorded(d):
    out = d / "out"
    n = len([x for x in os.listdir(out) if "." not in x])
    return [(out / str(i)).read_bytes() for i in range(n)], \
        [(out / f"{i}.env").read_text() for i in range(n)], \
        [(out / f"{i}.fds").read_text().split() for i in range(n)]


def account(t, src, cmd, **kw):
    return delivery.Account(t, src, str(cmd), deliver="mda", **kw)



@tap.test(name="a recording mda: every message once, byte-exact below "
          "X-Maild-Id, MAILD_ACCOUNT and MAILD_USER set, fds 0-2 only, one "
          "at a time")
def recording_mda(t):
    m = msgs("rec", 40, specials=True)
    cmd, d = recorder(t)
    with pop3(m) as src:
        a = account(t, src, cmd, name="rec-acct", timeout=30)
        r = a.once(expect_rc=0, within=60)
        assert a.summary(r)["fetched"] == 40, a.summary(r)["line"]
        got, envs, fds = recorded(d)
        delivery.assert_delivered(got, m, "what the mda read")
        for data in got:
            assert data.startswith(b"X-Maild-Id: "), data[:60]
        for e in envs:
            assert "MAILD_ACCOUNT=rec-acct\n" in e, e
            assert f"MAILD_USER={src.user}\n" in e, e
        for f in fds:
            # ls has one more: the directory it reads
            assert sorted(f) == ["0", "1", "2", "3"], f
        assert src.mailbox == [], "messages left on the server"
        assert not (d / "running").exists()
        r = a.once(expect_rc=0)
        assert a.summary(r)["fetched"] == 0


@tap.test(name="three accounts with one mda command: one message at a "
          "time, in turn")
def mda_shared(t):
    cmd, d = recorder(t)
    boxes = [msgs(f"sh{i}", 15, seed=50 + i) for i in range(3)]
    with pop3(boxes[0]) as s0, pop3(boxes[1]) as s1, pop3(boxes[2]) as s2:
        accts = [delivery.Account(t, s, str(cmd), deliver="mda",
                                  name=f"a{i}").conf()
                 for i, s in enumerate((s0, s1, s2))]
        cfg = mt.write_config(t.tmp / "maild.conf", accts,
                              state_dir=t.tmp / "state", timeout=30)
        r = mt.run_maild(["--once", "-f", cfg], timeout=120)
        assert r.rc == 0, mt.tail(r.stderr)
        got, envs, _ = recorded(d)
        delivery.assert_delivered(got, [m for b in boxes for m in b])
        assert {e.split("MAILD_ACCOUNT=")[1].split("\n")[0] for e in envs} \
            == {"a0", "a1", "a2"}


@tap.test(name="exit 75: the message stays, exit 75; the next poll "
          "delivers it")
def mda_exit_75(t):
    m = msgs("ex75", 4)
    flag = t.tmp / "fail"
    flag.write_text("")
    cmd, d = recorder(t, tail=f'[ -e {flag} ] && [ "$n" = 1 ] && '
                      '{ echo "temporary trouble"; exit 75; }\nexit 0')
    with pop3(m) as src:
        a = account(t, src, cmd)
        r = a.once(expect_rc=mt.EX_TEMPFAIL, within=60)
        err = a.error(r)
        assert "mda refused 1 message for now" in err, err
        assert "exited with status 75" in err and "temporary trouble" in \
            err, err
        assert [x.data for x in src.mailbox] == [m[1].data]
        flag.unlink()
        r = a.once(expect_rc=0)
        assert a.summary(r)["fetched"] == 1
        got, _, _ = recorded(d)
        # the first run's second message was read, then refused
        delivery.assert_delivered(got[:1] + got[2:], m, "delivered")
        assert delivery.after_id(got[1]) == m[1].data
        assert delivery.maild_id(got[1]) == delivery.maild_id(got[4])
        assert src.mailbox == []


@tap.test(name="exit 1, 127, a signal: the message stays, exit 69, the "
          "mda's words logged")
def mda_failures(t):
    cases = [("echo 'no such folder: Lists' >&2; exit 1",
              "exited with status 1: no such folder: Lists"),
             ("exec /nonexistent/mda", "exited with status 127 (command "
              "not found)"),
             ("kill -9 $$", "was killed by signal 9")]
    for i, (tail, words) in enumerate(cases):
        sub = t.tmp / f"c{i}"
        sub.mkdir()
        m = msgs(f"fail{i}", 2)
        cmd = delivery.script(sub / "mda.sh", f"cat >/dev/null\n{tail}\n")
        with pop3(m) as src:
            # exec: maild's child is the script, not a shell around it
            a = account(t, src, f"exec {cmd}", base=sub)
            r = a.once(expect_rc=mt.EX_UNAVAILABLE, within=60)
            err = a.error(r)
            assert "mda refused 2 messages" in err, err
            assert words in err, f"{words!r} not in {err!r}"
            assert words in r.stderr
            assert len(src.mailbox) == 2
            assert a.records() == [], a.records()


@tap.test(name="an mda that prints 20 MB: its output bounded in the log, "
          "small RSS")
def mda_chatty(t):
    m = msgs("chatty", 2)
    cmd = delivery.script(t.tmp / "mda.sh", "cat >/dev/null\n"
                          "head -c 20000000 /dev/zero | tr '\\0' x\n"
                          "exit 1\n")
    with pop3(m) as src:
        a = account(t, src, cmd)
        r = a.once(expect_rc=mt.EX_UNAVAILABLE, within=60)
        longest = max(len(ln) for ln in r.stderr.splitlines())
        assert longest < 10000, f"a log line of {longest} bytes"


@tap.test(name="an mda that does not read its input: no hang, its status "
          "counts")
def mda_no_read(t):
    m = msgs("noread", 3, max_large=3, seed=99)
    m.append(corpus.Message("noread/big", b"X-Test-Id: noread/big\n\n" +
                            b"y" * 70 + b"\n" * 1 + (b"z" * 99 + b"\n")
                            * 30000))
    for rc, want in ((0, 0), (1, mt.EX_UNAVAILABLE)):
        sub = t.tmp / f"rc{rc}"
        sub.mkdir()
        cmd = delivery.script(sub / "mda.sh", f"exit {rc}\n")
        with pop3(m) as src:
            a = account(t, src, cmd, base=sub)
            a.once(expect_rc=want, within=60)
            assert len(src.mailbox) == (0 if rc == 0 else len(m))


@tap.test(timeout=180, name="an mda that hangs: killed with its children "
          "after timeout * 10 s; the message stays; the next one goes on")
def mda_hangs(t):
    m = msgs("hang", 3)
    marker = f"maild-mda-hang-{os.getpid()}-{time.monotonic_ns()}"
    flag = t.tmp / "hang"
    flag.write_text("")
    cmd, d = recorder(t, tail=f'if [ -e {flag} ] && [ "$n" = 1 ]; then\n'
                      f'  sh -c "sleep 1000; : {marker}" &\n'
                      f'  sleep 1000\nfi\nexit 0')
    with pop3(m) as src:
        # timeout = 1: the mda gets 10 s
        a = account(t, src, cmd, timeout=1)
        started = time.monotonic()
        r = a.once(expect_rc=mt.EX_TEMPFAIL, within=60)
        took = time.monotonic() - started
        err = a.error(r)
        assert "took too long and was killed" in err, err
        assert took >= 9, f"killed after {took:.1f} s, before timeout * 10"
        assert not delivery.leftover(marker), "the mda's child is still running"
        assert [x.data for x in src.mailbox] == [m[1].data]
        flag.unlink()
        (d / "running").rmdir() if (d / "running").exists() else None
        a.once(expect_rc=0, within=60)
        assert src.mailbox == []


@tap.test(timeout=180, name="a slow mda (0.4 s a message, 24 messages, "
          "timeout = 2): everything delivered once, in one run")
def mda_slow(t):
    m = msgs("slow", 24)
    cmd, d = recorder(t, tail="sleep 0.4\nexit 0")
    with pop3(m) as src:
        a = account(t, src, cmd, timeout=2)
        r = a.once(within=120)
        got, _, _ = recorded(d)
        t.note(f"first run: exit {r.rc} ({a.error(r)}); the mda ran "
               f"{len(got)} times")
        if r.rc != 0:
            # what a second poll makes of it
            a.timeout = 60
            a.write()
            a.once(within=120)
        got, _, _ = recorded(d)
        delivery.assert_delivered(got, m, "what the mda got, both runs")
        assert r.rc == 0, f"exit {r.rc}: {a.error(r)}"
        assert src.mailbox == []


@tap.test(name="an mda that delivers, then leaves a child holding its "
          "output open: its exit 0 counts at once")
def mda_background_child(t):
    m = msgs("bg", 2)
    marker = f"maild-mda-bg-{os.getpid()}-{time.monotonic_ns()}"
    cmd = delivery.script(t.tmp / "mda.sh", "cat >/dev/null\n"
                          f'sh -c "sleep 30; : {marker}" &\nexit 0\n')
    with pop3(m) as src:
        a = account(t, src, cmd, timeout=2)
        try:
            # else: "took too long and was killed", refused for now
            r = a.once(expect_rc=0, within=60)
            assert a.summary(r)["fetched"] == 2
        finally:
            for pid in delivery.leftover(marker):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass


@tap.test(name="--check looks for the mda's program: found by path or in "
          "PATH, or FAILED with exit 74; shell syntax is not judged; "
          "nothing runs")
def mda_check(t):
    rec, d = recorder(t)
    cases = [
        (f"{rec} -x", 0, rf"mda\s+ok\s+{re.escape(str(rec))} -x"),
        ("cat > /dev/null", 0, r"mda\s+ok\s+cat > /dev/null"),
        ("exec /no/such/lda -d x", 0, r"mda\s+ok\s+exec /no/such/lda"),
        ('"$HOME/no/such/lda"', 0, r"mda\s+ok"),
        ("/no/such/dovecot-lda -d alice", mt.EX_IOERR,
         r"mda\s+FAILED\s+/no/such/dovecot-lda: No such file or directory"),
        (str(t.tmp), mt.EX_IOERR,
         rf"mda\s+FAILED\s+{re.escape(str(t.tmp))}: not an executable "
         r"file"),
        ("no-such-mda-program --deliver", mt.EX_IOERR,
         r"mda\s+FAILED\s+no-such-mda-program: not found in PATH"),
    ]
    for i, (cmd, rc, want) in enumerate(cases):
        with pop3(msgs(f"mchk{i}", 2)) as src:
            sub = t.tmp / f"case{i}"
            sub.mkdir()
            a = account(t, src, cmd, base=sub)
            r = hostile.run_maild(["--check", "-f", str(a.cfg)], timeout=60)
            hostile.check_sane(r)
            t.attach(f"--check, mda {cmd}", r.stdout + r.stderr)
            assert r.rc == rc, f"{cmd}: exit {r.rc}:\n{r.stdout}{r.stderr}"
            assert re.search(want, r.stdout), \
                f"{cmd}: no /{want}/ in:\n{r.stdout}"
            assert len(src.mailbox) == 2
    assert not (d / "out").exists() or not os.listdir(d / "out"), \
        "the mda ran"


@tap.test(name="procmail as the mda: into a Maildir, byte-exact")
def procmail_mda(t):
    exe = shutil.which("procmail")
    if exe is None:
        t.skip("procmail is not installed")
    md = t.tmp / "Mail"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    rc = t.tmp / "procmailrc"
    rc.write_text(f"MAILDIR={md}\nDEFAULT=$MAILDIR/\n")
    m = msgs("procmail", 30)
    with pop3(m) as src:
        a = account(t, src, f"{exe} -m {rc}")
        a.once(expect_rc=0, within=60)
    delivery.assert_delivered(mt.read_maildir(md), m, "procmail's Maildir")


# ---------------------------------------------------------------------------
# dovecot-lda

LISTS = ["one.lists.maild-test.example", None]
SIEVE = ('require ["fileinto", "duplicate"];\n'
         'if duplicate :header "X-Maild-Id" { discard; stop; }\n'
         f'if header :contains "List-Id" "<{LISTS[0]}>" '
         '{ fileinto "Lists/one"; stop; }\n')


@tap.test(name="dovecot-lda as the mda: Sieve files by List-Id, byte-exact; "
          "with the duplicate snippet a second copy (state lost) is dropped")
def dovecot_lda(t):
    srv = t.fx.get(t)
    lda = dovecot.find_tool("dovecot-lda")
    if lda is None:
        t.skip("dovecot-lda is not installed")
    base = msgs("lda", 40)
    tagged = delivery.with_list_id(base, LISTS)
    srv.set_mailbox("ldadst", [])
    srv.set_sieve("ldadst", SIEVE)
    with pop3([x for x, _ in tagged]) as src:
        a = account(t, src, f"{lda} -c {srv.conf} -d ldadst", keep=True,
                    timeout=10)
        for run in range(2):
            r = a.once(expect_rc=0, within=120)
            assert a.summary(r)["fetched"] == 40, a.summary(r)["line"]
            # as if maild had crashed after dovecot-lda's exit 0
            mt.remove_state(a.state, a.name)
    inbox = srv.mailbox("ldadst")
    lists = srv.mailbox("ldadst", "Lists/one")
    delivery.assert_delivered(inbox, [x for x, y in tagged if y is None],
                              "INBOX")
    delivery.assert_delivered(lists, [x for x, y in tagged if y], "Lists/one")


@tap.test(name="dovecot-lda, two accounts, one user: its duplicate database "
          "keeps every X-Maild-Id (one dovecot-lda at a time)")
def dovecot_lda_two_accounts(t):
    srv = t.fx.get(t)
    lda = dovecot.find_tool("dovecot-lda")
    if lda is None:
        t.skip("dovecot-lda is not installed")
    m1, m2 = msgs("lda2a", 40, seed=61), msgs("lda2b", 40, seed=62)
    srv.set_mailbox("ldadst", [])
    srv.set_sieve("ldadst", SIEVE)
    with pop3(m1) as s1, pop3(m2) as s2:
        cmd = f"{lda} -c {srv.conf} -d ldadst"
        accts = [delivery.Account(t, s, cmd, deliver="mda", name=f"a{i}",
                                  keep=True).conf()
                 for i, s in enumerate((s1, s2))]
        cfg = mt.write_config(t.tmp / "maild.conf", accts,
                              state_dir=t.tmp / "state", timeout=30)
        for run in range(2):
            r = mt.run_maild(["--once", "-f", cfg], timeout=300)
            assert r.rc == 0, mt.tail(r.stderr)
            for a in ("a0", "a1"):
                mt.remove_state(t.tmp / "state", a)
    delivery.assert_delivered(srv.mailbox("ldadst"), m1 + m2)


if __name__ == "__main__":
    tap.main(fixture=functools.partial(dovecot.Lazy, {"ldadst": None},
                                       lmtp=True))
