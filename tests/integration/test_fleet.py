#!/usr/bin/env python3
"""test_fleet.py: many accounts in one maild, and its metrics (issue 15).

include-dir: errors name the included file and its line, a global option
in an included file and one account name in two files are refused
(naming both files), editors' leftovers are not read, a main file
without accounts is fine; SIGHUP picks up added, changed and removed
files, and a broken file keeps the old configuration running.

Scale: 500 accounts on a private Dovecot (passwd-file users generated
here) fetched by one maild --once, with accounts of a black-holed
server (it accepts connections and never says a word) among them: the
500 are all delivered while the black-holed accounts still wait for
their timeout.  RLIMIT_NOFILE: raised to what the configuration needs,
and a warning naming the hard limit when that is too low.

Metrics: /metrics over HTTP, checked with promtool (Debian: prometheus;
those checks are skipped without it), up/errors_total changing after a
failed login, metrics-file replaced atomically, metrics-listen on
loopback unless an address is written out, names refused.

Every daemon and server is stopped by its PID; every wait has a limit.
"""

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import dovecot     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402
from service import (  # noqa: E402
    acct, conn_times, Daemon, dc_acct, fixture, server, simple_msgs,
    wait_until, write_conf)


def write_include(path, accounts):
    """An include-dir file: accounts only, replaced atomically."""
    tmp = Path(str(path) + ".tmp")
    mt.write_file(tmp, mt.config_text(accounts))
    os.replace(tmp, path)
    return Path(path)


def main_conf(t, state, inc, **globals_):
    """maild.conf naming include-dir inc, without accounts of its own."""
    inc.mkdir(mode=0o700, exist_ok=True)
    return write_conf(t.tmp / "maild.conf", [], state, include_dir=str(inc),
                      **globals_)


def check(cfg):
    return mt.run_maild(["-n", "-f", cfg], timeout=20, label="maild -n")


# ---------------------------------------------------------------------------
# include-dir

@tap.test(timeout=60)
def test_include_dir_check(t):
    """maild -n with include-dir: the accounts of every *.conf file, and
    nothing else; an error names the included file and its line; a
    global option in an included file and one account in two files are
    errors naming the files."""
    srv = server(simple_msgs("x", 1))
    state, inc = t.tmp / "state", t.tmp / "maild.d"
    cfg = main_conf(t, state, inc)
    r = check(cfg)
    assert r.rc == 0 and "0 accounts" in r.stdout, \
        f"a main file without accounts, empty include-dir: {r.rc} {r.stdout}"
    write_include(inc / "a.conf", [acct("alpha", srv, t.tmp / "Ma")])
    write_include(inc / "b.conf", [dict(acct("beta", srv, t.tmp / "Mb"),
                                             user="other")])
    # leftovers that are not *.conf files, or hidden
    for junk in ("c.conf~", ".d.conf", "README", "e.conf.dpkg-old"):
        mt.write_file(inc / junk, "this is not a configuration {\n")
    r = check(cfg)
    assert r.rc == 0, f"maild -n: {r.rc} {r.stderr}"
    assert "2 accounts, 2 files in" in r.stdout, r.stdout
    # a syntax error on line 3 of an included file
    bad = mt.write_file(inc / "c.conf", 'account "gamma" {\n'
                        '    host = "127.0.0.1"\n    port = "many"\n}\n')
    r = check(cfg)
    assert r.rc == 78, f"exit {r.rc}, expected 78: {r.stderr}"
    assert f"{bad}:3:" in r.stderr, \
        f"the error does not name {bad}:3: {r.stderr}"
    # a global option in an included file
    mt.write_file(bad, 'timeout = 5\naccount "gamma" {\n}\n')
    r = check(cfg)
    assert r.rc == 78 and f"{bad}:1:" in r.stderr and \
        "global option" in r.stderr, f"{r.rc}: {r.stderr}"
    # one account name in two files: both named
    write_include(bad, [dict(acct("alpha", srv, t.tmp / "Mc"),
                                user="third")])
    r = check(cfg)
    assert r.rc == 78, f"exit {r.rc}: {r.stderr}"
    assert f"{bad}:1:" in r.stderr and str(inc / "a.conf") in r.stderr \
        and "alpha" in r.stderr, \
        f"the duplicate is not reported with both files: {r.stderr}"
    bad.unlink()
    # include-dir missing, or writable by others
    shutil.rmtree(inc)
    r = check(cfg)
    assert r.rc == 78 and str(inc) in r.stderr, f"{r.rc}: {r.stderr}"
    inc.mkdir(mode=0o700)
    os.chmod(inc, 0o777)
    r = check(cfg)
    assert r.rc == 78 and "writable by others" in r.stderr, \
        f"{r.rc}: {r.stderr}"


@tap.test(timeout=90)
def test_include_dir_reload(t):
    """SIGHUP with include-dir: an added file's accounts are polled, a
    removed file's are not any more, a changed file's account restarts
    with its new settings; a broken file keeps the whole old
    configuration (the others' changes too) until it is fixed."""
    a, b, c = (server(simple_msgs(n, 1)) for n in ("one", "two", "three"))
    state, inc = t.tmp / "state", t.tmp / "maild.d"
    cfg = main_conf(t, state, inc)
    write_include(inc / "one.conf", [acct("one", a, t.tmp / "M1",
                                          poll_interval=1)])
    write_include(inc / "two.conf", [acct("two", b, t.tmp / "M2",
                                          poll_interval=1)])
    dm = Daemon(t, cfg)
    dm.wait_summaries("one", 1, timeout=10)
    dm.wait_summaries("two", 1, timeout=10)
    # added and removed
    write_include(inc / "three.conf", [acct("three", c, t.tmp / "M3",
                                            poll_interval=1)])
    (inc / "two.conf").unlink()
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 2 accounts added, removed or changed", mark)
    log = dm.log(mark)
    assert "account=two removed" in log and "account=three added" in log, \
        log
    dm.wait_summaries("three", 1, mark, timeout=10)
    m2 = dm.mark()
    dm.wait_summaries("one", 2, m2, timeout=10)
    assert not dm.summaries("two", m2), "the removed file's account was " \
        "polled after the reload"
    # broken: one file fixed up, another broken; nothing changes
    write_include(inc / "one.conf", [acct("one", a, t.tmp / "M1",
                                          poll_interval=mt.Raw("1h"))])
    mt.write_file(inc / "zz.conf", 'account "four" {\n    port = 1\n'
                  '    oops\n}\n')
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reload failed, still running the previous configuration",
                mark)
    assert re.search(re.escape(str(inc / "zz.conf")) + r":\d+",
                     dm.log(mark)), f"file:line missing: {dm.log(mark)}"
    m2 = dm.mark()
    dm.wait_summaries("one", 2, m2, timeout=10)   # still every second
    dm.wait_summaries("three", 2, m2, timeout=10)
    # fixed: the change to one.conf comes now
    (inc / "zz.conf").unlink()
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_log(r"reloaded .*: 1 account added, removed or changed", mark)
    assert "account=one changed" in dm.log(mark), dm.log(mark)
    rc, _ = dm.stop()
    assert rc == 0, f"exit {rc} after SIGTERM"


# ---------------------------------------------------------------------------
# scale

class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never sends
    a byte (a server that swallows packets, as far as maild can tell)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append((time.monotonic(), c))

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()
        for _, c in self.conns:
            c.close()


def fleet_size():
    """500 accounts; fewer under valgrind or sanitizers (each session
    there costs ten times as much, and the behaviour is the same)."""
    return 500 if mt.timeout_scale() <= 1 else 100


@tap.test(timeout=300)
def test_many_accounts_and_a_black_hole(t):
    """maild --once with 500 Dovecot accounts (2 messages each) and 12
    accounts of a server that accepts and never answers: every Dovecot
    account is delivered, exactly, while the black-holed accounts are
    still waiting for their timeout (they take at most
    max-connections-per-host connections meanwhile)."""
    n = fleet_size()
    timeout = int(120 * mt.timeout_scale())
    dc = dovecot.Dovecot(certs.get())
    t.defer(dc.cleanup)
    msgs = {}
    for i in range(n):
        user = f"fleet{i:04d}"
        dc.users[user] = dc.password
        msgs[user] = simple_msgs(user, 2, body=f"Hello {user}.\n")
    dc._write_passwd()
    for user, m in msgs.items():
        home = dc.home(user)
        dovecot.make_maildir(home / "Maildir")
        dc._write_msgs(user, m, new=False)
        if dc.as_root:
            dovecot.chown_tree(home, dc.mail_uid, dc.mail_gid)
    dc.start()
    bh = BlackHole()
    t.defer(bh.close)
    state, inc = t.tmp / "state", t.tmp / "maild.d"
    cfg = main_conf(t, state, inc, timeout=timeout, max_connections=32)
    # one file per 100 accounts, as a hosting panel would write them
    users = sorted(msgs)
    for k in range(0, n, 100):
        write_include(inc / f"fleet{k // 100}.conf", [
            mt.account(u, "127.0.0.1", dc.pop3s_port, u, dc.password,
                       t.tmp / "mail" / u, keep=True, ca_file=dc.ca)
            for u in users[k:k + 100]])
    write_include(inc / "blackhole.conf", [
        mt.account(f"hole{i}", "127.0.0.1", bh.port, f"hole{i}", "x",
                   t.tmp / "mail" / f"hole{i}", ca_file=certs.get().ca)
        for i in range(12)])
    errpath = t.tmp / "maild.log"
    with open(errpath, "wb") as errf:
        p = subprocess.Popen([mt.maild_bin(), "--once", "-f", str(cfg)],
                             stdin=subprocess.DEVNULL, stdout=errf,
                             stderr=errf, env=mt._env(),
                             start_new_session=True)
    t.defer(mt.kill_tree, p)
    t0 = time.monotonic()

    def delivered():
        return sum(1 for u in users
                   if len(mt.maildir_files(t.tmp / "mail" / u)) >= 2)

    def all_done():
        if p.poll() is not None:
            return True
        return delivered() == n

    wait_until(all_done, 240, f"the {n} Dovecot accounts' mail",
               interval=0.5)
    took = time.monotonic() - t0
    log = errpath.read_text(errors="replace")
    t.attach("maild.log", log)
    t.note(f"{n} accounts delivered {took:.1f} s after the start; "
           f"black-holed connections: {len(bh.conns)}")
    assert p.poll() is None, \
        f"maild ended (status {p.returncode}) before delivering all: " \
        f"{delivered()} of {n}"
    done = [r["account"] for r in mt.summary_lines(log)]
    assert not [a for a in done if a.startswith("hole")], \
        "a black-holed account ended before the others were delivered"
    assert 1 <= len(bh.conns) <= 10, \
        f"{len(bh.conns)} connections at once to one server, above " \
        "max-connections-per-host (10)"
    # the black-holed ones would wait for their timeout: stop them now
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30 * mt.timeout_scale())
    except subprocess.TimeoutExpired:
        raise AssertionError("maild --once did not end after SIGTERM")
    log = errpath.read_text(errors="replace")
    t.attach("maild.log", log)
    t.note(f"exit status {rc} after SIGTERM")
    # 75: the black-holed ones stopped short (not 86/99: sanitizers)
    assert rc == 75, f"exit {rc} after SIGTERM, expected 75"
    recs = {r["account"]: r for r in mt.summary_lines(log)}
    for u in users:
        assert recs[u]["error"] is None and recs[u]["fetched"] == 2, \
            recs[u]["line"]
        mt.assert_maildir(t.tmp / "mail" / u, [m.data for m in msgs[u]],
                          f"Maildir of {u}")


@tap.test(timeout=90)
def test_first_polls_spread(t):
    """More accounts than max-connections: their first polls are spread
    over the poll-interval instead of all starting at once, and the next
    polls keep that spread (each counts from the start of the previous
    one)."""
    n, interval = 6, 12
    srvs = [server(simple_msgs(f"s{i}", 1)) for i in range(n)]
    state = t.tmp / "state"
    accts = [acct(f"s{i}", s, t.tmp / f"M{i}", poll_interval=interval)
             for i, s in enumerate(srvs)]
    cfg = write_conf(t.tmp / "maild.conf", accts, state, max_connections=2)
    dm = Daemon(t, cfg)
    for i in range(n):
        dm.wait_summaries(f"s{i}", 2, timeout=3 * interval)
    firsts = [conn_times(s)[0] for s in srvs]
    seconds = [conn_times(s)[1] for s in srvs]
    t.note(f"first polls at {[round(x - firsts[0], 2) for x in firsts]}, "
           f"second at {[round(x - firsts[0], 2) for x in seconds]}")
    # spread evenly: account i at about i * interval / n (2 s apart)
    assert firsts == sorted(firsts), "the first polls are not in order"
    span = firsts[-1] - firsts[0]
    assert span >= interval / 2, \
        f"the first polls came within {span:.1f} s, not spread over " \
        f"the {interval} s poll-interval"
    # and they stay spread: each next poll one interval after the first
    for i in range(n):
        gap = seconds[i] - firsts[i]
        assert interval - 1 <= gap <= interval + 2 * mt.timeout_scale(), \
            f"s{i}: next poll {gap:.1f} s after the first"
    rc, _ = dm.stop()
    assert rc == 0


@tap.test(timeout=60)
def test_shared_tls_keeps_each_accounts_checks(t):
    """Accounts of one server share a TLS context (and its resumption
    session) only with the same TLS settings: an account with another
    ca-file, or a pin the server's certificate does not match, is
    refused every time, also after the others' sessions could have been
    resumed; the others fetch every time."""
    c = certs.get()
    dc = t.fx.dovecot()
    state = t.tmp / "state"

    def user_acct(name, **extra):
        u = t.fx.user(simple_msgs(name, 1))
        return dc_acct(name, dc, u, t.tmp / name, poll_interval=1, **extra)
    good = [user_acct(f"good{i}") for i in range(3)]
    other = user_acct("otherca")
    other["ca_file"] = str(c.other_ca)
    pinned = user_acct("pinned",
                       tls_fingerprint="sha256:" + ":".join(["AB"] * 32))
    cfg = write_conf(t.tmp / "maild.conf", good + [other, pinned], state)
    dm = Daemon(t, cfg)
    for i in range(3):
        recs = dm.wait_summaries(f"good{i}", 3, timeout=20)
        assert all(r["error"] is None for r in recs), recs[-1]["line"]
    for name in ("otherca", "pinned"):
        recs = dm.wait_summaries(name, 2, timeout=30)
        assert all(r["error"] is not None and r["fetched"] == 0
                   for r in recs), f"{name}: {recs[-1]['line']}"
    assert not mt.maildir_files(t.tmp / "otherca") and \
        not mt.maildir_files(t.tmp / "pinned"), "mail delivered over TLS " \
        "the account's own settings refuse"
    rc, _ = dm.stop()
    assert rc == 0


def _limits(pid):
    """The soft and hard open-file limits of a running process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            f = line.split()
            return int(f[3]), int(f[4])
    raise AssertionError("no Max open files in /proc/pid/limits")


def _nofile(soft, hard):
    def set_it():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return set_it


@tap.test(timeout=60)
def test_rlimit_nofile(t):
    """maild raises its soft limit of open files to what max-connections
    needs, and says so, naming the hard limit and what to do, when the
    hard limit is too low (and keeps working)."""
    srv = server(simple_msgs("r", 1))
    state = t.tmp / "state"
    A = acct("rl", srv, t.tmp / "Maildir", poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A], state, max_connections=64)
    # raised: the hard limit allows it
    errpath = t.tmp / "raise.log"
    with open(errpath, "wb") as errf:
        p = subprocess.Popen([mt.maild_bin(), "-d", "-f", str(cfg)],
                             stdin=subprocess.DEVNULL, stdout=errf,
                             stderr=errf, env=mt._env(),
                             start_new_session=True,
                             preexec_fn=_nofile(64, 4096))
    t.defer(mt.kill_tree, p)
    wait_until(lambda: mt.summary_lines(errpath.read_text()), 10,
               "the first poll")
    soft, hard = _limits(p.pid)
    t.note(f"limits of the daemon: {soft} {hard}")
    assert 64 < soft <= 4096 and hard == 4096, \
        f"the soft limit was not raised: {soft} (hard {hard})"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30 * mt.timeout_scale()) == 0, \
        f"exit {p.returncode} after SIGTERM"
    # too low a hard limit: said once, with the figures, and mail fetched
    r = subprocess.run([mt.maild_bin(), "--once", "-f", str(cfg)],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       env=mt._env(), timeout=30 * mt.timeout_scale(),
                       preexec_fn=_nofile(64, 64))
    err = r.stderr.decode(errors="replace")
    t.attach("maild --once", err)
    assert r.returncode == 0, f"exit {r.returncode}"
    assert re.search(r"may need \d+ open files, but the hard limit is 64: "
                     r"raise it", err), err
    assert "LimitNOFILE" in err and "max-connections" in err, err


# ---------------------------------------------------------------------------
# metrics

def promtool():
    return shutil.which("promtool")


def no_promtool():
    return None if promtool() else \
        "promtool is not installed (Debian: prometheus)"


def promtool_check(t, text):
    """promtool check metrics on text: no problem at all (lint too)."""
    r = subprocess.run([promtool(), "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=30)
    t.attach("promtool", r.stdout + r.stderr)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), \
        f"promtool check metrics: {r.returncode}: {r.stdout}{r.stderr}"


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} of the sample lines."""
    out = {}
    rx = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    lrx = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = rx.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(lrx.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(ms, name, **labels):
    return ms.get((name, frozenset(labels.items())))


def errors(ms, account, cls):
    return ms.get(("maild_account_errors_total",
                   frozenset({("account", account), ("class", cls)})))


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), \
            r.read().decode("utf-8")


@tap.test(timeout=90)
def test_metrics_http(t):
    """metrics-listen: /metrics in the Prometheus text format (promtool
    finds nothing to say), per account and for the process; another path
    is 404.  A failed login shows: up goes to 0, errors_total of class
    auth counts it, the last success stays."""
    if no_promtool():
        t.skip(no_promtool())
    srv = server(simple_msgs("m", 3))
    other = server(simple_msgs("o", 1))
    state = t.tmp / "state"
    port = dovecot.free_port()
    A = acct("home", srv, t.tmp / "M1", poll_interval=1)
    B = acct("work", other, t.tmp / "M2", poll_interval=mt.Raw("1h"))
    cfg = write_conf(t.tmp / "maild.conf", [A, B], state,
                     metrics_listen=f"127.0.0.1:{port}")
    dm = Daemon(t, cfg)
    dm.wait_summaries("home", 1)
    dm.wait_summaries("work", 1)
    st, ctype, text = scrape(port)
    t.attach("metrics", text)
    assert st == 200 and ctype.startswith("text/plain; version=0.0.4"), \
        f"{st} {ctype}"
    promtool_check(t, text)
    ms = parse_metrics(text)
    assert metric(ms, "maild_account_up", account="home") == 1, text
    assert metric(ms, "maild_account_fetched_messages_total",
                  account="home") == 3
    assert metric(ms, "maild_account_fetched_bytes_total",
                  account="home") > 0
    assert errors(ms, "home", "auth") == 0, text
    last_ok = metric(ms, "maild_account_last_success_timestamp_seconds",
                     account="home")
    assert abs(last_ok - time.time()) < 60, last_ok
    assert metric(ms, "maild_accounts_configured") == 2
    assert metric(ms, "maild_process_resident_memory_bytes") > 0
    assert metric(ms, "maild_process_open_fds") > 0
    assert metric(ms, "maild_account_info", account="home",
                  host="127.0.0.1", port=str(srv.port),
                  protocol="pop3") == 1, text
    assert srv.user not in text and srv.password not in text, \
        "the metrics name a user or a password"
    try:
        scrape(port, "/other")
        raise AssertionError("/other did not fail")
    except urllib.error.HTTPError as e:
        assert e.code == 404, e.code
    # a failed login: the password changed under it
    write_conf(cfg, [dict(A, password="wrong-one"), B], state,
               metrics_listen=f"127.0.0.1:{port}")
    mark = dm.mark()
    dm.signal(signal.SIGHUP)
    dm.wait_summaries("home", 1, mark, timeout=10)

    def auth_errors(n):
        ms = parse_metrics(scrape(port)[2])
        return ms if errors(ms, "home", "auth") >= n else None
    ms = wait_until(lambda: auth_errors(1), 10,
                    "errors_total{class=auth} to count")
    assert metric(ms, "maild_account_up", account="home") == 0
    assert metric(ms, "maild_account_last_success_timestamp_seconds",
                  account="home") == last_ok
    assert metric(ms, "maild_account_up", account="work") == 1
    assert errors(ms, "home", "network") == 0, \
        "a refused login counted as a network error"
    # and the next one counts again (backoff: 2 s)
    n1 = errors(ms, "home", "auth")
    ms = wait_until(lambda: auth_errors(n1 + 1), 15,
                    "a second failed login to count")
    assert metric(ms, "maild_account_backoff_level", account="home") >= 1
    promtool_check(t, scrape(port)[2])
    rc, _ = dm.stop()
    assert rc == 0


@tap.test(timeout=90)
def test_metrics_file(t):
    """metrics-file: written after polls by renaming a complete file over
    it (a reader never sees a partial one, no temporary file stays
    behind), readable by node_exporter; --once writes it too."""
    srv = server(simple_msgs("f", 2))
    state = t.tmp / "state"
    outdir = t.tmp / "textfile"
    outdir.mkdir()
    prom = outdir / "maild.prom"
    A = acct("filed", srv, t.tmp / "M1", poll_interval=1)
    cfg = write_conf(t.tmp / "maild.conf", [A], state,
                     metrics_file=str(prom))
    dm = Daemon(t, cfg)
    wait_until(prom.exists, 10, "metrics-file")
    inodes, reads = set(), 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        try:
            st = prom.stat()
            text = prom.read_text()
        except FileNotFoundError:
            raise AssertionError("metrics-file vanished for a moment")
        inodes.add(st.st_ino)
        reads += 1
        assert text.endswith("\n") and "maild_account_up{account=" \
            "\"filed\"}" in text and "maild_process_start_time_seconds" \
            in text, f"a partial metrics-file: {text[-200:]!r}"
        time.sleep(0.01)
    t.note(f"{reads} reads, {len(inodes)} versions")
    assert len(inodes) >= 2, "metrics-file was not rewritten (by rename) " \
        "after later polls"
    assert prom.stat().st_mode & 0o777 == 0o644, oct(prom.stat().st_mode)
    rc, _ = dm.stop()
    assert rc == 0
    assert sorted(os.listdir(outdir)) == ["maild.prom"], os.listdir(outdir)
    ms = parse_metrics(prom.read_text())
    assert metric(ms, "maild_account_fetched_messages_total",
                  account="filed") == 2
    if promtool():
        promtool_check(t, prom.read_text())
    # --once
    prom.unlink()
    r = mt.run_maild(["--once", "-f", cfg], timeout=30, label="--once")
    assert r.rc == 0, r.stderr
    ms = parse_metrics(prom.read_text())
    assert metric(ms, "maild_account_up", account="filed") == 1


def _listening(port):
    """The local addresses listening on TCP port (from /proc/net/tcp*)."""
    out = []
    for fn, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(fn).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].split(":")
            if int(p, 16) == port and f[3] == "0A":
                out.append(addr)
    return out


@tap.test(timeout=60)
def test_metrics_listen_loopback(t):
    """metrics-listen = "PORT" listens on 127.0.0.1 only; an address
    must be written out to listen anywhere else (0.0.0.0:PORT is taken
    as written, maild -n says so); a name, a missing address and a bad
    port are refused with the line."""
    srv = server(simple_msgs("l", 1))
    state = t.tmp / "state"
    A = acct("lo", srv, t.tmp / "M1", poll_interval=mt.Raw("1h"))
    for bad in ("localhost:9849", ":9849", "127.0.0.1:0", "127.0.0.1:70000",
                "[::1]9849", "9849x"):
        cfg = write_conf(t.tmp / "maild.conf", [A], state,
                         metrics_listen=bad)
        r = check(cfg)
        assert r.rc == 78 and f"{cfg}:" in r.stderr and \
            "metrics-listen" in r.stderr, f"{bad!r}: {r.rc} {r.stderr}"
    cfg = write_conf(t.tmp / "maild.conf", [A], state,
                     metrics_listen="0.0.0.0:9849")
    r = check(cfg)
    assert r.rc == 0, f"an explicit 0.0.0.0 is refused: {r.stderr}"
    port = dovecot.free_port()
    cfg = write_conf(t.tmp / "maild.conf", [A], state,
                     metrics_listen=str(port))
    dm = Daemon(t, cfg)
    dm.wait_log(r"metrics at http://127\.0\.0\.1:%d/metrics" % port)
    addrs = _listening(port)
    assert addrs == ["0100007F"], \
        f"port {port} alone: listening on {addrs}, not only 127.0.0.1"
    assert scrape(port)[0] == 200
    rc, _ = dm.stop()
    assert rc == 0


if __name__ == "__main__":
    tap.main(fixture=fixture)
