#!/usr/bin/env python3
"""test_net.py: what maild says when it cannot reach a server.

Connecting: a port nobody listens on (a socket bound on it, not
listening, so no other test can take it) gives exactly "cannot connect to
127.0.0.1 port P: Connection refused": the address and the port once; a
host name with one address adds that address in parentheses, one with
several lists each address with its error.

Resolving: maild resolves with evdns, which reads /etc/resolv.conf.  To
stay off the real network and be deterministic, these tests run maild
in a private mount namespace (unshare; root, or an unprivileged user
namespace) where /etc/resolv.conf names lib/fakedns.py on 127.0.0.1 with
a one-second timeout, and ask for names under .invalid (RFC 6761):
NXDOMAIN gives "cannot resolve H: no such host; check the host name";
SERVFAIL, an answer without an address and no answer at all say that
maild tries again at the next poll.  All exit 69 (EX_UNAVAILABLE).
Without namespaces they are skipped.
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import fakedns     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402


def closed_port(t, family=socket.AF_INET, host="127.0.0.1"):
    """A port on host that refuses connections and that nobody else can
    take while the test runs: bound, never listening."""
    s = socket.socket(family, socket.SOCK_STREAM)
    t.defer(s.close)
    s.bind((host, 0))
    return s.getsockname()[1]


def config(t, host, port):
    mt.require_maild()
    return mt.write_config(t.tmp / "maild.conf", [mt.account(
        "net", host, port, "user", "secret", t.tmp / "Maildir", keep=True)],
        state_dir=t.tmp / "state", timeout=10)


def error_of(t, cfg, timeout=30):
    r = mt.run_maild(["--once", "-f", cfg], timeout=timeout)
    assert r.rc == mt.EX_UNAVAILABLE, f"exit {r.rc}, expected 69"
    err = r.account("net")["error"]
    assert err, r.account("net")["line"]
    return err


# ---------------------------------------------------------------------------
# connecting

@tap.test(name="connection refused by an address: said once, exactly")
def test_refused_address(t):
    port = closed_port(t)
    err = error_of(t, config(t, "127.0.0.1", port))
    want = f"cannot connect to 127.0.0.1 port {port}: Connection refused"
    assert err == want, f"{err!r}, expected {want!r}"


@tap.test(name="connection refused by an IPv6 address: said once, exactly",
          skip=mt.no_ipv6)
def test_refused_address_ipv6(t):
    port = closed_port(t, socket.AF_INET6, "::1")
    err = error_of(t, config(t, "::1", port))
    want = f"cannot connect to ::1 port {port}: Connection refused"
    assert err == want, f"{err!r}, expected {want!r}"


@tap.test(name="connection refused by a name: the name, each address and "
          "the port once")
def test_refused_name(t):
    port = closed_port(t)
    if mt.no_ipv6() is None:
        closed6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        t.defer(closed6.close)
        try:            # the same port on ::1, if localhost has both
            closed6.bind(("::1", port))
        except OSError:
            pass
    err = error_of(t, config(t, "localhost", port))
    one = f"cannot connect to localhost (127.0.0.1) port {port}: " \
        "Connection refused"
    several = re.fullmatch(
        rf"cannot connect to localhost port {port}: "
        r"((\[::1\]|127\.0\.0\.1): Connection refused(; |$))+", err)
    assert err == one or several, f"{err!r}"
    assert err.count(str(port)) == 1, f"the port more than once: {err!r}"
    assert f"127.0.0.1:{port}" not in err, err


# ---------------------------------------------------------------------------
# resolving, against lib/fakedns.py in a private mount namespace

def namespace_prefix():
    """The command that runs the rest in a private mount namespace, or a
    reason why there is none."""
    exe = shutil.which("unshare")
    if exe is None:
        return None, "unshare is not installed (util-linux)"
    cmds = [[exe, "--mount", "--"]] if os.geteuid() == 0 else []
    cmds.append([exe, "--user", "--map-root-user", "--mount", "--"])
    for cmd in cmds:
        try:
            r = subprocess.run(cmd + ["sh", "-c", "mount --bind /dev/null "
                                      "/etc/resolv.conf"],
                               stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = str(e)
            continue
        if r.returncode == 0:
            return cmd, None
        reason = r.stdout.decode(errors="replace").strip()
    return None, f"no private mount namespace for /etc/resolv.conf " \
        f"({reason}); CI runs as root"


_ns = None


def ns():
    global _ns
    if _ns is None:
        _ns = namespace_prefix()
    return _ns


def no_namespace():
    return ns()[1]


def resolve_error(t, name):
    """maild --once for an account on host name, with /etc/resolv.conf
    naming a fake DNS server; its error."""
    prefix, _ = ns()
    with fakedns.FakeDNS() as dns:
        conf = dns.resolv_conf(t.tmp / "resolv.conf")
        t.attach("resolv.conf", conf.read_text())
        wrapper = shlex.join(prefix + [
            "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
            str(conf)])
        old = os.environ.get("MAILD_WRAPPER")
        os.environ["MAILD_WRAPPER"] = f"{wrapper} {old or ''}"
        try:
            err = error_of(t, config(t, name, 995))
        finally:
            if old is None:
                del os.environ["MAILD_WRAPPER"]
            else:
                os.environ["MAILD_WRAPPER"] = old
        t.note(f"queries: {dns.queries}")
        assert dns.queries, "maild never asked the fake name server"
    return err


TRY_AGAIN = ("the name servers gave no address (no answer, a failure, or "
             "the name has none); maild tries again at the next poll")


@tap.test(name="no such host (NXDOMAIN): said so, no BSD wording",
          skip=no_namespace)
def test_no_such_host(t):
    name = "nxdomain.pop.exmaple.invalid"
    err = resolve_error(t, name)
    want = f"cannot resolve {name}: no such host; check the host name"
    assert err == want, f"{err!r}, expected {want!r}"


@tap.test(name="SERVFAIL: maild says it tries again", skip=no_namespace)
def test_servfail(t):
    name = "servfail.pop.example.invalid"
    err = resolve_error(t, name)
    assert err == f"cannot resolve {name}: {TRY_AGAIN}", err


@tap.test(name="an answer without an address: maild says it tries again",
          skip=no_namespace)
def test_no_address(t):
    name = "noaddr.pop.example.invalid"
    err = resolve_error(t, name)
    assert err == f"cannot resolve {name}: {TRY_AGAIN}", err


@tap.test(name="no answer from the name server: bounded, maild says it "
          "tries again", skip=no_namespace)
def test_no_answer(t):
    name = "silent.pop.example.invalid"
    err = resolve_error(t, name)
    assert err == f"cannot resolve {name}: {TRY_AGAIN}", err


if __name__ == "__main__":
    tap.main()
