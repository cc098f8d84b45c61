#!/usr/bin/env python3
"""test_logs.py: what maild -d logs (issue 5).

Every line "<time> maild: ..." naming its account, summary lines nothing
but key=value pairs; under the journal ($JOURNAL_STREAM) "<priority>"
prefixes and no time stamps; -vv traces the POP3 dialogue but never a
password, in any form.

Every daemon is stopped by its PID; every wait has a time limit.
"""

import base64
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, Daemon, dc_acct, fixture, GRACE, parse_kv, server, simple_msgs,
    wait_until, write_conf)


LINE_PREFIX_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} maild: ")
# lines about the daemon as a whole; all others name their account
DAEMON_EVENT_RE = re.compile(
    r"^(started: |reloading |reloaded |reload failed|SIGUSR1: |stopping: |"
    r"stopped$|second signal|sessions still running)")


@tap.test(timeout=60)
def test_log_lines_key_value(t):
    """maild -d -v: every line is "<time> maild: ..."; every line about an
    account carries account=<name>; summary lines are nothing but
    key=value pairs (error quoted)."""
    a = server(simple_msgs("log", 2))
    b = server(simple_msgs("logbad", 1))
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("good-1", a, t.tmp / "Maildir-a"),
                      acct("bad.2", b, t.tmp / "Maildir-b",
                           password="no-no-no")], state,
                     poll_interval=mt.Raw("1h"))
    # a first run, then what a crash leaves: a pending delivery (P record,
    # file in tmp/) and a partial download in tmp/, so that the daemon
    # logs its recovery too
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="--once")
    assert r.rc == mt.EX_NOPERM, f"exit {r.rc}"
    md = t.tmp / "Maildir-a"
    name = mt.maildir_files(md, ("new",))[0][1]
    sec, usec, pid, seq, tag, host, _ = mt.NAME_RE.match(name).groups()
    pending = corpus.simple("log/pending")
    a.add(pending, uidl="pending-uidl")
    base = f"{sec}.M{usec}P{pid}Q{int(seq) + 100}A{tag}.{host}"
    (md / "tmp" / base).write_bytes(pending.data)
    partial = f"{sec}.M{usec}P{pid}Q{int(seq) + 101}A{tag}.{host}"
    (md / "tmp" / partial).write_bytes(b"Subject: cut\n\nhalf a mess")
    mt.append_state_block(state, "good-1", [
        f"P {int(time.time())} 1 0 0 0 pending-uidl - "
        f"{base},S={len(pending.data)}"])
    dm = Daemon(t, cfg, "-v")
    dm.wait_summaries("good-1", 1, timeout=10)
    dm.wait_summaries("bad.2", 1, timeout=10)
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log("reloaded", mark)
    dm.signal(signal.SIGUSR1)
    dm.wait_summaries("good-1", 1, mark, timeout=10)
    rc, _ = dm.stop()
    assert rc == 0
    log = dm.log()
    assert "interrupted" in log and "partial" in log, \
        "the recovery of the pending delivery / partial file is not logged"
    mt.assert_maildir(md, a.datas())
    problems = []
    for line in log.splitlines():
        if not LINE_PREFIX_RE.match(line):
            problems.append(f"no time stamp / 'maild:' prefix: {line!r}")
            continue
        body = LINE_PREFIX_RE.sub("", line)
        if DAEMON_EVENT_RE.match(body):
            continue
        # everything else is about an account, and says which
        m = re.match(r"account=(\S+) ", body)
        if m is None or m.group(1) not in ("good-1", "bad.2"):
            problems.append(f"a line without account=<name> first: "
                            f"{line!r}")
    for rec in mt.summary_lines(log):
        body = LINE_PREFIX_RE.sub("", rec["line"])
        kv = parse_kv(body)
        if kv is None:
            problems.append(f"summary line not all key=value: {body!r}")
            continue
        # a poll cut short by the final SIGTERM has no next poll
        for k in ("account", "fetched", "bytes", "deleted", "seconds") + \
                (() if "stopped" in kv else ("next",)):
            if k not in kv:
                problems.append(f"no {k}= in {body!r}")
    bad_recs = [r for r in mt.summary_lines(log) if r["account"] == "bad.2"]
    assert bad_recs and bad_recs[0]["error"], "no error= for bad.2"
    assert not problems, "\n".join(problems[:10])


@tap.test(timeout=40)
def test_journal_stream_priorities(t):
    """When stderr is the journal ($JOURNAL_STREAM names it), every line
    is "<priority>text": info 6, warnings 4, -v detail 7, no time stamp.
    When $JOURNAL_STREAM names another file, lines keep their time
    stamps."""
    a = server(simple_msgs("jr", 1))
    b = server(simple_msgs("jrbad", 1))
    c = server(simple_msgs("jrbusy", 1), handlers={
        "PASS": fakepop3.raw(b"-ERR [IN-USE] mailbox locked\r\n")})
    state = t.tmp / "state"
    cfg = write_conf(t.tmp / "maild.conf",
                     [acct("good", a, t.tmp / "Maildir-a"),
                      acct("bad", b, t.tmp / "Maildir-b", password="nope"),
                      acct("busy", c, t.tmp / "Maildir-c")],
                     state, poll_interval=mt.Raw("1h"))
    # the log file exists before maild starts: its dev:ino is the stream
    log = t.tmp / "journal.log"
    log.write_bytes(b"")
    st = os.stat(log)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    mt.require_maild()
    with open(log, "ab") as f:
        p = subprocess.Popen([mt.maild_bin(), "-d", "-v", "-f", cfg],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             env=mt._env(env), start_new_session=True)
    t.defer(mt.kill_tree, p)

    def text():
        s = log.read_text(errors="replace")
        t.attach("journal.log", s)
        return s
    wait_until(lambda: len(re.findall(r"^<\d>account=\S+ fetched=",
                                      text(), re.M)) >= 3, 10,
               "three summary lines")
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=GRACE + 5) == 0
    lines = text().splitlines()
    bad = [ln for ln in lines if not re.match(r"^<[0-7]>\S", ln)]
    assert not bad, f"lines without a <priority> prefix: {bad[:5]}"
    stamped = [ln for ln in lines if re.match(r"^<\d>\d{4}-\d\d-", ln)]
    assert not stamped, f"time stamps under the journal: {stamped[:3]}"
    good = [ln for ln in lines if ln[3:].startswith("account=good fetched=")]
    badl = [ln for ln in lines if ln[3:].startswith("account=bad fetched=")]
    assert good and good[0][1] == "6", f"a good poll: {good}"
    assert badl and badl[0][1] == "4", f"a failed poll: {badl}"
    busy = [ln for ln in lines if ln[3:].startswith("account=busy fetched=")]
    assert busy and 'busy="' in busy[0] and busy[0][1] == "6", \
        f"[IN-USE] is logged as a warning, or without busy=: {busy}"
    assert any(ln.startswith("<6>started:") for ln in lines), lines[:3]
    assert any(ln[1] == "7" for ln in lines), "no -v line at priority 7"
    # JOURNAL_STREAM for some other file: ordinary lines
    other = t.tmp / "other"
    other.write_bytes(b"")
    st = os.stat(other)
    dm = Daemon(t, cfg, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    dm.wait_summaries("good", 1, timeout=10)
    rc, _ = dm.stop()
    assert rc == 0
    assert all(LINE_PREFIX_RE.match(ln) for ln in dm.log().splitlines()), \
        "JOURNAL_STREAM of another file changed the log format"


def secret_forms(user, password):
    """The password as it may travel: as is, base64 alone (AUTH LOGIN),
    and base64 of the SASL PLAIN message."""
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    return [password, b64(password), b64(f"\0{user}\0{password}"),
            b64(f"{user}\0{user}\0{password}")]


@tap.test(timeout=90)
def test_vv_traces_mask_passwords(t):
    """-vv logs the POP3 dialogue (>>> / <<<) but never the password, in
    any form: USER/PASS (fake server), AUTH PLAIN and AUTH LOGIN
    (Dovecot), a refused password; -v does not log the dialogue."""
    pw = "Sekr1t-Pa55-qwz"
    a = server(simple_msgs("vv", 1), password=pw)
    cfg = write_conf(t.tmp / "fake.conf",
                     [acct("fake", a, t.tmp / "Maildir-fake")],
                     t.tmp / "state")
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=30, label="-vv")
    assert r.rc == 0, f"exit {r.rc}"
    assert ">>> PASS" in r.stderr, "no masked PASS in the -vv trace"
    assert "<<< +OK" in r.stderr, "no server lines in the -vv trace"
    for s in secret_forms(a.user, pw):
        assert s not in r.stderr, f"-vv shows the password ({s!r})"
    r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=30, label="-v")
    assert r.rc == 0
    assert ">>>" not in r.stderr and "<<<" not in r.stderr, \
        "-v (once) logs the POP3 dialogue"

    sh = t.fx
    dpw = "D0vecot-Secr3t-xyz"
    user = sh.user(simple_msgs("vvd", 2), password=dpw)
    dc = sh.dovecot()
    for auth in ("auto", "plain", "login", "user"):
        md = t.tmp / f"Maildir-{auth}"
        cfg = write_conf(t.tmp / f"{auth}.conf",
                         [dc_acct(f"dc-{auth}", dc, user, md, password=dpw,
                                  auth=mt.Raw(auth))],
                         t.tmp / f"state-{auth}")
        r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=60,
                         label=f"-vv auth={auth}")
        assert r.rc == 0, f"auth={auth}: exit {r.rc}"
        assert ">>>" in r.stderr, f"auth={auth}: no trace"
        if auth in ("auto", "plain"):
            assert ">>> AUTH PLAIN" in r.stderr, \
                f"auth={auth}: no AUTH PLAIN in the trace"
        for s in secret_forms(user, dpw):
            assert s not in r.stderr, \
                f"auth={auth}: -vv shows the password ({s!r})"
    # a refused password
    cfg = write_conf(t.tmp / "wrong.conf",
                     [dc_acct("dc-wrong", dc, user, t.tmp / "Maildir-w",
                              password="Wr0ng-" + dpw)], t.tmp / "state-w")
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=60,
                     label="-vv wrong password")
    assert r.rc == mt.EX_NOPERM, f"exit {r.rc}"
    for s in secret_forms(user, "Wr0ng-" + dpw) + secret_forms(user, dpw):
        assert s not in r.stderr, f"-vv shows a password ({s!r})"


if __name__ == "__main__":
    tap.main(fixture=fixture)
