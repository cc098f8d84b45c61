#!/usr/bin/env python3
"""test_hook.py: on-new-mail, the command run after a poll that delivered
something.

A hook that records its standard input (the new files' paths, Maildir
delivery) and environment (MAILD_ACCOUNT, MAILD_COUNT, MAILD_MAILDIR):
run once per poll with the poll's count, never once per message (300
messages, two batches: one run), not run when nothing was delivered;
with deliver = lmtp: run, no paths, no MAILD_MAILDIR; the global
default and an account's own; a hook that fails (logged, delivery and
exit status unchanged), one that hangs (killed with its children after
timeout * 10 s; --once waits for it), one that leaves a child in the
background (its exit counts); in the daemon, at most one running per
account: polls that deliver while it runs are counted into the next run.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import delivery    # noqa: E402
import fakelmtp    # noqa: E402
import fakepop3    # noqa: E402
import maildd      # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402


def msgs(prefix, n, seed=16, **kw):
    kw.setdefault("max_large", 0)
    return corpus.generate(seed=seed, count=n, prefix=prefix, **kw)


def pop3(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


# Records each run as runs/<n>.in, runs/<n>.env; fails if two run at once.
RECORDER = r'''
d=@DIR@
mkdir "$d/running" 2>/dev/null || { echo "two at once" >> "$d/overlap"; }
n=$(ls "$d/runs" | grep -c '\.env$')
env > "$d/runs/$n.env.tmp"
cat > "$d/runs/$n.in"
@BODY@
mv "$d/runs/$n.env.tmp" "$d/runs/$n.env"
rmdir "$d/running"
'''


def recorder(t, body="", name="hook.sh"):
    d = t.tmp / "hook"
    (d / "runs").mkdir(parents=True, exist_ok=True)
    path = delivery.script(t.tmp / name, RECORDER.replace(
        "@DIR@", str(d)).replace("@BODY@", body))
    return path, d


def runs(d):
    """[(environment dict, stdin bytes)] of the finished runs."""
    out = []
    n = 0
    while (d / "runs" / f"{n}.env").exists():
        env = dict(ln.split("=", 1) for ln in
                   (d / "runs" / f"{n}.env").read_text().splitlines()
                   if "=" in ln)
        out.append((env, (d / "runs" / f"{n}.in").read_bytes()))
        n += 1
    return out


def config(t, src, hook=None, name="hk", maildir=None, glob=None, **extra):
    md = maildir or t.tmp / "Maildir"
    a = mt.account(name, "127.0.0.1", src.port, src.user, src.password, md,
                   ca_file=certs.get().ca, on_new_mail=hook and str(hook),
                   **extra)
    g = {"on_new_mail": str(glob)} if glob else {}
    return mt.write_config(t.tmp / "maild.conf", [a],
                           state_dir=t.tmp / "state", timeout=5, **g), md


def once(cfg, rc=0, timeout=120):
    r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=timeout)
    assert r.rc == rc, f"exit {r.rc}, want {rc}: {mt.tail(r.stderr)}"
    return r


@tap.test(name="once per poll with the poll's count and the new files' "
          "paths; 300 messages in two batches: one run; a poll with "
          "nothing new: no run")
def hook_records(t):
    m = msgs("hook", 300, seed=2)
    hook, d = recorder(t)
    with pop3(m) as src:
        cfg, md = config(t, src, hook)
        once(cfg)
        got = runs(d)
        assert len(got) == 1, f"{len(got)} runs for one poll"
        env, stdin = got[0]
        assert env.get("MAILD_ACCOUNT") == "hk", env
        assert env.get("MAILD_COUNT") == "300", env
        assert env.get("MAILD_MAILDIR") == str(md), env
        paths = stdin.decode(errors="replace").splitlines()
        files = sorted(str(p) for _, _, p in mt.maildir_files(md, ("new",)))
        assert sorted(paths) == files, (f"{len(paths)} lines on stdin for "
                                        f"{len(files)} files: {stdin[:200]!r}")
        assert not (d / "overlap").exists()
        once(cfg)
        assert len(runs(d)) == 1, "run after a poll that delivered nothing"
        src.add(corpus.simple("hook/late"))
        once(cfg)
        got = runs(d)
        assert len(got) == 2 and got[1][0]["MAILD_COUNT"] == "1", got[1:]
        assert len(got[1][1].splitlines()) == 1


@tap.test(name="deliver = lmtp: run with MAILD_COUNT, no paths, no "
          "MAILD_MAILDIR")
def hook_lmtp(t):
    m = msgs("hooklmtp", 7)
    hook, d = recorder(t)
    with pop3(m) as src, fakelmtp.FakeLMTP() as lm:
        a = delivery.Account(t, src, f"127.0.0.1:{lm.port}",
                             on_new_mail=str(hook))
        a.once(expect_rc=0, check_outside=False)   # the hook's records
        got = runs(d)
        assert len(got) == 1, got
        env, stdin = got[0]
        assert env.get("MAILD_COUNT") == "7" and "MAILD_MAILDIR" not in env, \
            env
        assert stdin == b"", stdin


@tap.test(name="the global on-new-mail applies to every account; an "
          "account's own replaces it")
def hook_global(t):
    g, dg = recorder(t, name="global.sh")
    own = delivery.script(t.tmp / "own.sh", f"echo own >> {t.tmp}/own.log\n")
    m1, m2 = msgs("g1", 3), msgs("g2", 4)
    with pop3(m1) as s1, pop3(m2) as s2:
        accts = [mt.account("a1", "127.0.0.1", s1.port, s1.user, s1.password,
                            t.tmp / "M1", ca_file=certs.get().ca),
                 mt.account("a2", "127.0.0.1", s2.port, s2.user, s2.password,
                            t.tmp / "M2", ca_file=certs.get().ca,
                            on_new_mail=str(own))]
        cfg = mt.write_config(t.tmp / "maild.conf", accts,
                              state_dir=t.tmp / "state",
                              on_new_mail=str(g))
        once(cfg)
    got = runs(dg)
    assert [e["MAILD_ACCOUNT"] for e, _ in got] == ["a1"], got
    assert got[0][0]["MAILD_COUNT"] == "3"
    assert (t.tmp / "own.log").read_text() == "own\n"


@tap.test(name="a hook that fails: logged with its words, delivery and "
          "exit status unchanged")
def hook_fails(t):
    m = msgs("hookfail", 5)
    hook = delivery.script(t.tmp / "hook.sh",
                           "echo 'notmuch: database locked' >&2\nexit 3\n")
    with pop3(m) as src:
        cfg, md = config(t, src, hook)
        r = once(cfg, rc=0)
        mt.assert_maildir(md, m)
        assert "on-new-mail exited with status 3: notmuch: database locked" \
            in r.stderr, r.stderr
        assert r.account("hk")["error"] is None
        assert src.mailbox == []


@tap.test(timeout=120, name="a hook that hangs: killed with its children "
          "after timeout * 10 s; --once waits for it, exit 0")
def hook_hangs(t):
    m = msgs("hookhang", 2)
    marker = f"maild-hook-hang-{os.getpid()}-{time.monotonic_ns()}"
    hook = delivery.script(t.tmp / "hook.sh",
                           f'sh -c "sleep 1000; : {marker}" &\nsleep 1000\n')
    with pop3(m) as src:
        a = mt.account("hk", "127.0.0.1", src.port, src.user, src.password,
                       t.tmp / "Maildir", ca_file=certs.get().ca,
                       on_new_mail=str(hook))
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state", timeout=1)
        started = time.monotonic()
        r = once(cfg, rc=0, timeout=60)
        took = time.monotonic() - started
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert "on-new-mail took too long and was killed" in r.stderr, \
            r.stderr
        assert took >= 9, f"killed after {took:.1f} s, before timeout * 10"
        assert not delivery.leftover(marker), "the hook's child is still running"


@tap.test(name="a hook that leaves a child in the background holding its "
          "output: its exit counts, --once does not wait for the child")
def hook_background(t):
    m = msgs("hookbg", 2)
    marker = f"maild-hook-bg-{os.getpid()}-{time.monotonic_ns()}"
    hook = delivery.script(t.tmp / "hook.sh",
                           f'sh -c "sleep 60; : {marker}" &\necho started\n')
    with pop3(m) as src:
        a = mt.account("hk", "127.0.0.1", src.port, src.user, src.password,
                       t.tmp / "Maildir", ca_file=certs.get().ca,
                       on_new_mail=str(hook))
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state", timeout=3)
        try:
            r = once(cfg, rc=0, timeout=60)
            assert "took too long" not in r.stderr, r.stderr
            assert "on-new-mail done: started" in r.stderr, r.stderr
        finally:
            for pid in delivery.leftover(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@tap.test(timeout=120, name="daemon: at most one hook running per "
          "account; what polls deliver meanwhile goes to the next run")
def hook_one_at_a_time(t):
    # each run waits (at most a minute) for the test to let it end
    hook, d = recorder(t, body='i=0; while [ ! -e "$d/release" ] && '
                       '[ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done')
    with pop3(msgs("d1", 2)) as src:
        a = mt.account("hk", "127.0.0.1", src.port, src.user, src.password,
                       t.tmp / "Maildir", ca_file=certs.get().ca,
                       on_new_mail=str(hook), poll_interval=mt.Raw("1h"))
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state", timeout=10)
        dm = maildd.Daemon(t, cfg, "-v")
        dm.wait_summaries("hk", n=1)
        maildd.wait_until(lambda: (d / "running").exists(), 10,
                          "the first run")
        for i, n in enumerate((3, 4)):
            for x in msgs(f"d{i + 2}", n, seed=30 + i):
                src.add(x)
            mark = dm.mark()
            dm.signal(signal.SIGUSR1)
            dm.wait_summaries("hk", n=1, since=mark)
        assert (d / "running").exists() and not runs(d), \
            "the first run ended too soon"
        (d / "release").touch()
        maildd.wait_until(lambda: len(runs(d)) >= 2, 30, "the second run")
        got = runs(d)
        assert [e["MAILD_COUNT"] for e, _ in got] == ["2", "7"], \
            [e["MAILD_COUNT"] for e, _ in got]
        assert len(got[1][1].splitlines()) == 7, \
            f"the second run's stdin: {got[1][1][:150]!r}"
        assert not (d / "overlap").exists(), "two runs at once"
        assert dm.stop() == 0


@tap.test(name="daemon: SIGTERM while the hook runs: it is killed, maild "
          "exits 0")
def hook_sigterm(t):
    marker = f"maild-hook-term-{os.getpid()}-{time.monotonic_ns()}"
    hook = delivery.script(t.tmp / "hook.sh",
                           f'touch {t.tmp}/started\nsh -c "sleep 1000; : '
                           f'{marker}"\n')
    with pop3(msgs("term", 2)) as src:
        a = mt.account("hk", "127.0.0.1", src.port, src.user, src.password,
                       t.tmp / "Maildir", ca_file=certs.get().ca,
                       on_new_mail=str(hook), poll_interval=mt.Raw("1h"))
        cfg = mt.write_config(t.tmp / "maild.conf", [a],
                              state_dir=t.tmp / "state", timeout=10)
        dm = maildd.Daemon(t, cfg)
        maildd.wait_until(lambda: (t.tmp / "started").exists(), 20,
                          "the hook")
        assert dm.stop() == 0
        maildd.wait_until(lambda: not delivery.leftover(marker), 10,
                          "the hook to be gone")



if __name__ == "__main__":
    tap.main()
