#!/usr/bin/env python3
"""test_cli.py: maild's command line and configuration checking.

-V, -h/--help (the usage line and one line per option, exit 0; the
usage line is maild(8)'s SYNOPSIS; mandoc -Tlint clean; maild.conf(5)'s
duration examples render), usage errors (exit 64: the usage
line on stderr), "maild -n" on a valid configuration (exit 0)
and on broken ones (exit 78 with "file:line: message" on stderr, the line
being the one the mistake is on: the offending option's line, or the
"account" line for what is missing from an account), the example
etc/maild.conf (as shipped, and with all its commented-out options
turned on), and path expansion of ~ and $VAR in a real run.

The syntax mistakes libconfuse itself misreports (a missing '}', an
unclosed quote, "5 min", an option outside its account, an account twice,
a typo) are checked for the exact message; so are the warnings of -n
(a port that contradicts tls, two accounts for one mailbox), what is said
when there is no configuration file, values too long for the wire, and
Maildirs and state directories that cannot be written (-n, --check and
the daemon's start).
"""

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402


def maild(t, args, timeout=20):
    mt.require_maild()
    return mt.run_maild(args, timeout=timeout)


@tap.test
def test_version(t):
    r = maild(t, ["-V"])
    assert r.rc == 0, f"exit {r.rc}"
    assert r.stdout == "maild 0.1.0\n", f"stdout {r.stdout!r}"


@tap.test
def test_version_long(t):
    r = maild(t, ["--version"])
    assert r.rc == 0 and r.stdout == "maild 0.1.0\n", (r.rc, r.stdout)


USAGE = ("usage: maild [-dhnvV] [-f file] [--once | --check [account] | "
         "--status | --authorize account]")
MAN8 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                    "man", "maild.8")
# option -> what its line in --help must say (a word or two of it)
HELP_LINES = {
    "-d": "foreground",
    "-f file": "configuration",
    "-n": "check the configuration",
    "-v": "-vv",
    "-V, --version": "version",
    "-h, --help": "help",
    "--once": "once",
    "--check [account]": "fetch nothing",
    "--status": "show",
    "--authorize account": "OAuth2",
}


def check_help(r):
    assert r.rc == 0, f"exit {r.rc}, expected 0"
    assert r.stderr == "", f"stderr: {r.stderr!r}"
    lines = r.stdout.splitlines()
    assert lines[0] == USAGE, f"first line {lines[0]!r}, expected {USAGE!r}"
    for opt, words in HELP_LINES.items():
        found = [ln for ln in lines
                 if re.match(rf"\s+{re.escape(opt)}\s\s", ln)]
        assert len(found) == 1, f"no one line for {opt!r}:\n{r.stdout}"
        assert words in found[0], f"{found[0]!r} does not mention {words!r}"
    assert "maild(8)" in r.stdout, "--help does not point to maild(8)"
    return r.stdout


@tap.test(name="--help: the usage line, one line per option, exit 0")
def test_help_long(t):
    check_help(maild(t, ["--help"]))


@tap.test(name="-h: the same as --help")
def test_help_short(t):
    long_ = check_help(maild(t, ["--help"]))
    assert check_help(maild(t, ["-h"])) == long_, "-h and --help differ"


def render_man(t, path):
    """The page as plain text, by mandoc or groff; skips without both."""
    for cmd in (["mandoc", "-Tascii"],
                ["groff", "-mandoc", "-Tascii", "-P-cbou"]):
        try:
            p = subprocess.run(cmd + [path], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            continue
        if p.returncode == 0 and p.stdout:
            return re.sub(r".\x08", "", p.stdout)
    t.skip("neither mandoc nor groff is installed")


@tap.test(name="maild(8): the SYNOPSIS is the usage line; every option "
          "of --help has its entry")
def test_man_synopsis(t):
    text = render_man(t, MAN8)
    m = re.search(r"^SYNOPSIS\n(.*?)\n\n", text, re.M | re.S)
    assert m, f"no SYNOPSIS in:\n{text[:500]}"
    synopsis = " ".join(m.group(1).split())
    want = USAGE[len("usage: "):]
    assert synopsis == want, f"SYNOPSIS {synopsis!r}, usage {want!r}"
    for opt in HELP_LINES:
        assert re.search(rf"^ +{re.escape(opt)}(\s|$)", text, re.M), \
            f"maild(8) has no entry for {opt!r}"


MAN5 = os.path.join(os.path.dirname(MAN8), "maild.conf.5")


@tap.test(name="man pages: mandoc -Tlint finds no warning or error")
def test_man_lint(t):
    try:
        p = subprocess.run(["mandoc", "-Tlint", "-Wwarning", MAN8, MAN5],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=60)
    except FileNotFoundError:
        t.skip("mandoc is not installed")
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 0 and not out, f"exit {p.returncode}:\n{out}"


@tap.test(name="maild.conf(5): the duration examples render as a list of "
          "quoted values")
def test_man_durations(t):
    text = " ".join(render_man(t, MAN5).split())
    want = '("90", "30s", "5m", "2h", "1d"); at most 30 days'
    assert want in text, "durations render as " + \
        text[text.find("Durations"):][:160]


@tap.test
def test_usage_unknown_flag(t):
    """An unknown option: getopt's complaint and the usage line on
    stderr, nothing on stdout, exit 64."""
    r = maild(t, ["-x"])
    assert r.rc == mt.EX_USAGE, f"exit {r.rc}, expected 64"
    assert r.stderr.splitlines()[-1] == USAGE, r.stderr
    assert r.stdout == "", r.stdout


@tap.test
def test_usage_unknown_long_option(t):
    r = maild(t, ["--no-such-option"])
    assert r.rc == mt.EX_USAGE, f"exit {r.rc}, expected 64"
    assert "usage:" in r.stderr, r.stderr


@tap.test
def test_usage_extra_argument(t):
    r = maild(t, ["--once", "stray-argument"])
    assert r.rc == mt.EX_USAGE, f"exit {r.rc}, expected 64"
    assert "usage:" in r.stderr, r.stderr


@tap.test
def test_usage_f_without_file(t):
    r = maild(t, ["-f"])
    assert r.rc == mt.EX_USAGE, f"exit {r.rc}, expected 64"


# ---------------------------------------------------------------------------
# configuration files.  Each case is written line by line so that the
# expected line number is known; a line ending in "# <--" is the one the
# error must name (the marker is stripped).

GOOD = """\
# a valid configuration
state-dir = "{tmp}/state"
poll-interval = 5m
timeout = 60
session-timeout = 1h
max-connections = 16

account "work" {{
    host = "127.0.0.1"
    port = 995
    user = "user001"
    password = "secret"
    maildir = "{tmp}/Maildir"
    keep = false
    poll-interval = 10m
}}
account "home.box@x+y-z" {{
    host = "localhost"
    user = "user002"
    password-command = "echo secret"
    maildir = "~/Maildir-home"
}}
"""


def write_case(t, text, mode=0o600, name="maild.conf"):
    """Write text (with {tmp} filled in); return (path, line) where line
    is the 1-based number of the line marked '# <--' (or None)."""
    text = text.format(tmp=t.tmp)
    line = None
    out = []
    for i, ln in enumerate(text.splitlines(), 1):
        if ln.rstrip().endswith("# <--"):
            line = i
            ln = ln[:ln.rindex("# <--")].rstrip()
        out.append(ln)
    path = t.tmp / name
    mt.write_file(path, "\n".join(out) + "\n", mode)
    t.attach("config", "\n".join(f"{i:3}: {ln}"
                                 for i, ln in enumerate(out, 1)))
    return path, line


def check_bad(t, text, want_in_message=None, mode=0o600, env=None):
    path, line = write_case(t, text, mode)
    assert line is not None, "test bug: no '# <--' marker"
    r = mt.run_maild(["-n", "-f", path], timeout=20, env=env)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}, expected 78"
    prefix = f"{path}:{line}: "
    assert prefix in r.stderr, (f"stderr does not name {prefix!r}:\n"
                                f"{r.stderr.strip()}")
    if want_in_message:
        msg = r.stderr[r.stderr.index(prefix) + len(prefix):]
        assert want_in_message.lower() in msg.lower(), (
            f"expected {want_in_message!r} in the message: {msg.strip()!r}")
    return r


@tap.test
def test_check_valid_config(t):
    mt.require_maild()
    path, _ = write_case(t, GOOD)
    r = mt.run_maild(["-n", "-f", path], timeout=20,
                     env={"HOME": str(t.tmp)})
    assert r.rc == 0, f"exit {r.rc}: {r.stderr}"
    assert "OK" in r.stdout, r.stdout
    # -n is offline and must not create anything
    assert not (t.tmp / "state").exists(), "-n created the state dir"
    assert not (t.tmp / "Maildir").exists(), "-n created the Maildir"


EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "..", "etc", "maild.conf")


def check_example(t, text):
    """Run maild -n on text as ~/.config/maild/maild.conf, with the
    password file the example names."""
    mt.require_maild()
    cfgdir = t.tmp / ".config" / "maild"
    cfgdir.mkdir(parents=True)
    mt.write_file(cfgdir / "example.pass", "secret\n", 0o600)
    path = cfgdir / "maild.conf"
    mt.write_file(path, text, 0o600)
    t.attach("config", text)
    r = mt.run_maild(["-n", "-f", path], timeout=20,
                     env={"HOME": str(t.tmp)})
    assert r.rc == 0, f"exit {r.rc}: {r.stderr}"
    assert re.search(r"configuration OK \(1 account[,)]", r.stdout), \
        r.stdout


@tap.test
def test_example_config_as_shipped(t):
    """etc/maild.conf, as installed, passes "maild -n" once the password
    file it names exists."""
    with open(EXAMPLE, encoding="utf-8") as f:
        check_example(t, f.read())


@tap.test
def test_example_config_every_option(t):
    """Every option etc/maild.conf shows commented out is valid as shown,
    once uncommented: one password source, keep = yes (delete-after needs
    it) and real files for the TLS paths."""
    c = certs.get()
    crt, key = c.self_signed
    fpr = ":".join(["AB"] * 32)
    swap = {
        "keep": "keep = yes",
        "ca-file": f'ca-file = "{c.ca}"',
        "tls-fingerprint": f'tls-fingerprint = "sha256:{fpr}"',
        "tls-cert-file": f'tls-cert-file = "{crt}"',
        "tls-key-file": f'tls-key-file = "{key}"',
        "include-dir": f'include-dir = "{t.tmp / "maild.d"}"',
        "metrics-file": f'metrics-file = "{t.tmp / "maild.prom"}"',
    }
    (t.tmp / "maild.d").mkdir(mode=0o700)
    skip = ("password", "password-command", "password-credential")
    out, shown = [], 0
    with open(EXAMPLE, encoding="utf-8") as f:
        for ln in f.read().splitlines():
            m = re.match(r"^(\s*)#([a-z-]+) = ", ln)
            if m:
                shown += 1
                if m.group(2) in skip:
                    continue
                ln = m.group(1) + swap.get(m.group(2), ln[m.end(1) + 1:])
            out.append(ln)
    assert shown >= 20, f"only {shown} commented-out options in the example"
    check_example(t, "\n".join(out) + "\n")


@tap.test
def test_example_config_imap(t):
    """The IMAP account etc/maild.conf shows commented out passes
    "maild -n" once uncommented (its options are IMAP's only, so the
    test above leaves them alone), with move-to in place of keep."""
    with open(EXAMPLE, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r'^#account "imap" \{\n(?:#.*\n)*?#\}$', text, re.M)
    assert m, "no commented-out IMAP account in the example"
    block = "\n".join(ln[1:] for ln in m.group(0).splitlines()) + "\n"
    block = block.replace("imap.pass", "example.pass")
    check_example(t, block)
    block = re.sub(r"(?m)^\t(keep|mark-seen) = .*$", "", block)
    block = block.replace("\t#move-to", "\tkeep = no\n\tmove-to")
    shutil.rmtree(t.tmp / ".config")
    check_example(t, block)


@tap.test
def test_check_missing_file(t):
    mt.require_maild()
    r = mt.run_maild(["-n", "-f", t.tmp / "nope.conf"], timeout=20)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}, expected 78"
    assert "nope.conf" in r.stderr, r.stderr


@tap.test
def test_bad_unknown_option(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    colour = "blue"                 # <--
    maildir = "{tmp}/Maildir"
}}
""", "colour")


@tap.test
def test_bad_unknown_global_option(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
verbosity = 3                       # <--
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "verbosity")


@tap.test
def test_bad_missing_host(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"

account "a" {{                      # <--
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "host")


@tap.test
def test_bad_missing_maildir(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{                      # <--
    host = "127.0.0.1"
    user = "u"
    password = "p"
}}
""", "maildir")


@tap.test
def test_bad_missing_user(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{                      # <--
    host = "127.0.0.1"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "user")


@tap.test
def test_bad_no_password(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{                      # <--
    host = "127.0.0.1"
    user = "u"
    maildir = "{tmp}/Maildir"
}}
""", "password")


@tap.test
def test_bad_two_password_options(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{                      # <--
    host = "127.0.0.1"
    user = "u"
    password = "p"
    password-command = "echo p"
    maildir = "{tmp}/Maildir"
}}
""", "password")


@tap.test
def test_bad_port_out_of_range(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    port = 70000                    # <--
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "port")


@tap.test
def test_bad_port_not_a_number(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    port = "pop3s"                  # <--
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "port")


@tap.test
def test_bad_duration_global(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
poll-interval = 5x                  # <--
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "poll-interval")


@tap.test
def test_bad_duration_account(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
    poll-interval = "10 minutes"    # <--
}}
""", "poll-interval")


@tap.test
def test_bad_duplicate_account(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
account "a" {{                      # <--
    host = "127.0.0.2"
    user = "v"
    password = "p"
    maildir = "{tmp}/Maildir2"
}}
""", "a")


@tap.test
def test_bad_option_set_twice(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    user = "v"                      # <--
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "user")


@tap.test
def test_bad_global_option_set_twice(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
timeout = 10
timeout = 20                        # <--
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "timeout")


@tap.test
def test_bad_group_readable_with_password(t):
    mt.require_maild()
    # the error names the account holding the password (its first line)
    r = check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{                      # <--
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "readable", mode=0o640)
    assert "chmod" in r.stderr, "no hint how to fix it"


@tap.test
def test_group_readable_without_password_ok(t):
    mt.require_maild()
    path, _ = write_case(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password-command = "echo p"
    maildir = "{tmp}/Maildir"
}}
""", mode=0o644)
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == 0, f"exit {r.rc}: {r.stderr}"


@tap.test
def test_bad_relative_maildir(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "Maildir"             # <--
}}
""", "absolute")


@tap.test
def test_bad_unset_variable(t):
    mt.require_maild()
    env = {"MAILD_TEST_UNSET_VAR": None}
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "$MAILD_TEST_UNSET_VAR/Maildir"   # <--
}}
""", "MAILD_TEST_UNSET_VAR", env=env)


@tap.test
def test_bad_account_name(t):
    mt.require_maild()
    check_bad(t, """\
state-dir = "{tmp}/state"
account "a/b" {{                    # <--
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "a/b")


@tap.test
def test_bad_no_account(t):
    mt.require_maild()
    path, _ = write_case(t, 'state-dir = "{tmp}/state"\n')
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}, expected 78"
    assert str(path) in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# syntax mistakes that libconfuse misreports: the exact message and line

def check_exact(t, text, message, mode=0o600):
    """maild -n refuses text (with a '# <--' marker) with exactly
    "maild: file:line: message"."""
    mt.require_maild()
    path, line = write_case(t, text, mode)
    assert line is not None, "test bug: no '# <--' marker"
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}, expected 78: {r.stderr}"
    want = f"maild: {path}:{line}: {message}\n"
    assert r.stderr == want, f"stderr\n{r.stderr!r}\nexpected\n{want!r}"
    assert r.stdout == "", r.stdout


@tap.test
def test_syntax_missing_brace(t):
    check_exact(t, """\
state-dir = "{tmp}/state"

account "home" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"

account "work" {{                   # <--
    host = "127.0.0.2"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir2"
}}
""", "missing '}' for account \"home\" opened at line 3")


@tap.test
def test_syntax_missing_final_brace(t):
    """libconfuse takes this as "configuration OK"."""
    check_exact(t, """\
state-dir = "{tmp}/state"
account "home" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"       # <--

""", "missing '}' for account \"home\" opened at line 2")


@tap.test
def test_syntax_unterminated_string(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "home" {{
    host = "127.0.0.1"
    user = "u"
    password-file = "/path/to/pass  # <--
    maildir = "{tmp}/Maildir"
}}
""", 'account "home": unterminated string: the " opened on this line is '
         'not closed before the end of the line')


@tap.test
def test_syntax_duration_in_words(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
poll-interval = 5 min               # <--
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "poll-interval: '5 min' is not a duration (write 5m)")


@tap.test
def test_syntax_duration_in_words_quoted(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
    poll-interval = "10 minutes"    # <--
}}
""", "account \"a\": poll-interval: '10 minutes' is not a duration "
         "(write 10m)")


@tap.test
def test_syntax_unquoted_command(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password-command = pass show mail   # <--
    maildir = "{tmp}/Maildir"
}}
""", 'account "a": password-command: put the value in quotes: '
         'password-command = "pass show mail"')


@tap.test
def test_syntax_option_outside_account(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
host = "127.0.0.1"                  # <--
account "a" {{
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "host belongs inside an account block")


@tap.test
def test_syntax_global_option_inside_account(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
    max-connections = 4             # <--
}}
""", 'account "a": max-connections is a global option: move it out of '
         'the account block')


@tap.test
def test_syntax_account_twice(t):
    check_exact(t, """\
state-dir = "{tmp}/state"

account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
account "a" {{                      # <--
    host = "127.0.0.2"
    user = "v"
    password = "p"
    maildir = "{tmp}/Maildir2"
}}
""", 'account "a" is defined twice (lines 3 and 9)')


@tap.test
def test_syntax_typo(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
    kep = yes                       # <--
}}
""", "account \"a\": no such option 'kep'; did you mean 'keep'?")


@tap.test
def test_syntax_typo_far_from_everything(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
verbosity = 3                       # <--
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "no such option 'verbosity'")


@tap.test
def test_syntax_set_twice(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    user = "v"                      # <--
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "account \"a\": 'user' is set twice (lines 4 and 5)")


# ---------------------------------------------------------------------------
# values that would not fit the wire: refused before anything is sent

@tap.test
def test_user_too_long_for_user_command(t):
    """A user name too long for "USER <name>" (255 octets, RFC 2449) is a
    configuration error, for -n and for --once (which sends nothing)."""
    mt.require_maild()
    user = "u" * 249
    with fakepop3.FakePOP3() as srv:
        text = f"""\
state-dir = "{{tmp}}/state"
account "a" {{{{
    host = "127.0.0.1"
    port = {srv.port}
    auth = user
    user = "{user}"                 # <--
    password = "p"
    maildir = "{{tmp}}/Maildir"
}}}}
"""
        check_exact(t, text, 'account "a": user is 249 bytes long, too long '
                    'for POP3: "USER <user>" must fit in 255 octets (RFC '
                    '2449), which leaves 248 for the name')
        r = mt.run_maild(["--once", "-f", t.tmp / "maild.conf"], timeout=20)
        assert r.rc == mt.EX_CONFIG, f"--once: exit {r.rc}: {r.stderr}"
        assert not srv.connections, "connected anyway"


@tap.test
def test_host_not_a_host_name(t):
    check_exact(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "pop3s://pop.example.com"    # <--
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", "account \"a\": host 'pop3s://pop.example.com' is not a host name or "
         "address: a host name has only letters, digits, '-', '_' and dots")


# ---------------------------------------------------------------------------
# -n warnings: valid, but probably not what was meant (exit 0)

def check_warning(t, text, message):
    """maild -n accepts text (with a '# <--' marker) and warns exactly
    "maild: file:line: warning: message"."""
    mt.require_maild()
    path, line = write_case(t, text)
    r = mt.run_maild(["-n", "-f", path], timeout=30)
    assert r.rc == 0, f"exit {r.rc}: {r.stderr}"
    assert "configuration OK" in r.stdout, r.stdout
    want = f"maild: {path}:{line}: warning: {message}\n"
    assert r.stderr == want, f"stderr\n{r.stderr!r}\nexpected\n{want!r}"


@tap.test
def test_warn_starttls_on_995(t):
    check_warning(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    port = 995                      # <--
    tls = starttls
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""", 'account "a": port 995 is POP3S, where TLS starts at once, but tls = '
         'starttls speaks plain POP3 first: set tls = implicit (or use port '
         '110 for STARTTLS)')


@tap.test
def test_warn_implicit_on_110(t):
    check_warning(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
    port = 110                      # <--
}}
""", 'account "a": port 110 is plain POP3, but tls = implicit (the default) '
         'starts TLS at once: set tls = starttls (or use port 995 for POP3S)')


@tap.test
def test_no_warning_for_matching_ports(t):
    mt.require_maild()
    path, _ = write_case(t, """\
state-dir = "{tmp}/state"
account "a" {{
    host = "127.0.0.1"
    port = 995
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir-a"
}}
account "b" {{
    host = "127.0.0.1"
    port = 110
    tls = starttls
    user = "v"
    password = "p"
    maildir = "{tmp}/Maildir-b"
}}
account "c" {{
    host = "localhost"
    port = 1995
    tls = starttls
    user = "w"
    password = "p"
    maildir = "{tmp}/Maildir-c"
}}
""")
    r = mt.run_maild(["-n", "-f", path], timeout=30)
    assert r.rc == 0 and r.stderr == "", (r.rc, r.stderr)


@tap.test
def test_warn_same_mailbox_two_ports(t):
    check_warning(t, """\
state-dir = "{tmp}/state"
account "secure" {{
    host = "127.0.0.1"
    user = "alice"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
account "plain" {{                  # <--
    host = "127.0.0.1"
    port = 110
    tls = starttls
    user = "alice"
    password = "p"
    maildir = "{tmp}/Maildir2"
}}
""", 'accounts "plain" and "secure" (line 2) both log in as "alice" to '
         '127.0.0.1 (ports 110 and 995): they fetch the same mailbox and race '
         'each other; keep one of them')


@tap.test
def test_warn_same_mailbox_name_and_address(t):
    """localhost and 127.0.0.1 are one server: found by resolving."""
    check_warning(t, """\
state-dir = "{tmp}/state"
account "by-name" {{
    host = "localhost"
    user = "alice"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
account "by-address" {{             # <--
    host = "127.0.0.1"
    user = "Alice"
    password = "p"
    maildir = "{tmp}/Maildir2"
}}
""", 'accounts "by-address" and "by-name" (line 2) both log in as "Alice" '
         'to the same server (127.0.0.1 and localhost are both 127.0.0.1): '
         'they fetch the same mailbox and race each other; keep one of them')


@tap.test
def test_same_user_other_server_no_warning(t):
    mt.require_maild()
    path, _ = write_case(t, """\
state-dir = "{tmp}/state"
account "one" {{
    host = "localhost"
    user = "alice"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
account "two" {{
    host = "127.0.0.2"
    user = "alice"
    password = "p"
    maildir = "{tmp}/Maildir2"
}}
""")
    r = mt.run_maild(["-n", "-f", path], timeout=30)
    assert r.rc == 0 and r.stderr == "", (r.rc, r.stderr)


# ---------------------------------------------------------------------------
# no configuration file yet

@tap.test
def test_no_config_file(t):
    """Without -f and without a file: where maild looked, and how to
    begin (the example's installed path and maild.conf(5)); exit 78."""
    mt.require_maild()
    home = t.tmp / "home"
    home.mkdir()
    r = mt.run_maild(["-n"], timeout=20,
                     env={"HOME": home, "XDG_CONFIG_HOME": None})
    if r.rc == 0 or "no configuration file" not in r.stderr:
        t.skip("a system maild.conf exists here")
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}"
    m = re.fullmatch(
        r"maild: no configuration file: (?:neither (\S+) nor (\S+) exists|"
        r"(\S+) does not exist)\.\n"
        r"To begin, copy the example (\S+) to (\S+), fill in your account "
        r"and see maild\.conf\(5\)\n", r.stderr)
    assert m, f"unexpected message:\n{r.stderr}"
    example = m.group(4)
    assert example.endswith("/doc/maild/examples/maild.conf"), example
    if os.geteuid() == 0:
        assert m.group(3) and m.group(3).endswith("/maild.conf"), r.stderr
        assert m.group(5) == "it", r.stderr
    else:
        user_conf = str(home / ".config" / "maild" / "maild.conf")
        assert m.group(1) == user_conf and m.group(5) == user_conf, \
            r.stderr


# ---------------------------------------------------------------------------
# Maildirs and state directories that cannot be written

def unwritable_dir(t, path, subdirs=()):
    """A directory (with subdirs) nobody can write to: a read-only tmpfs
    as root (root may write anywhere else), else mode 0500.  Returns what
    maild's message then says: (strerror, hint)."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700",
                            "tmpfs", str(path)], capture_output=True,
                           text=True, timeout=20)
        if r.returncode != 0:
            t.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        t.defer(mt.umount, path)
        for sub in subdirs:
            (path / sub).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True,
                       timeout=20)
        return ("Read-only file system", "; for the system service, list it "
                "in ReadWritePaths= (systemctl edit maild)")
    for sub in subdirs:
        (path / sub).mkdir()
        os.chmod(path / sub, 0o500)
        t.defer(os.chmod, path / sub, 0o700)
    os.chmod(path, 0o500)
    t.defer(os.chmod, path, 0o700)
    name = pwd.getpwuid(os.geteuid()).pw_name
    return ("Permission denied", f"; maild runs as {name} (uid "
            f"{os.geteuid()}), which may not write there")


def two_accounts(t, md_a, md_b, port=1):
    path, line = write_case(t, f"""\
state-dir = "{{tmp}}/state"
account "a" {{{{
    host = "127.0.0.1"
    port = {port}
    user = "u"
    password = "p"
    maildir = "{md_a}"              # <--
}}}}
""" + (f"""\
account "b" {{{{
    host = "127.0.0.1"
    port = {port}
    user = "v"
    password = "p"
    maildir = "{md_b}"
}}}}
""" if md_b else ""))
    return path, line


@tap.test
def test_check_unwritable_maildir(t):
    """-n creates and removes a file in the Maildir's tmp/ (and moves it
    through new/): a Maildir that cannot be written is an error."""
    mt.require_maild()
    md = t.tmp / "Maildir"
    err, hint = unwritable_dir(t, md, ("cur", "new", "tmp"))
    path, line = two_accounts(t, md, None)
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}: {r.stderr}"
    want = (f'maild: {path}:{line}: account "a": maildir {md}: cannot '
            f'create a file in {md}/tmp: {err}{hint}\n')
    assert r.stderr == want, f"stderr\n{r.stderr!r}\nexpected\n{want!r}"


@tap.test
def test_check_unwritable_new(t):
    """new/ is where deliveries go: tmp/ alone being writable is not
    enough."""
    mt.require_maild()
    if os.geteuid() == 0:
        t.skip("root may write anywhere; the read-only mount case covers it")
    md = t.tmp / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    os.chmod(md / "new", 0o500)
    t.defer(os.chmod, md / "new", 0o700)
    path, line = two_accounts(t, md, None)
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}: {r.stderr}"
    assert f"cannot move a file from {md}/tmp to {md}/new: Permission " \
        f"denied" in r.stderr, r.stderr
    assert os.listdir(md / "tmp") == [], "the probe file was left in tmp/"


@tap.test
def test_check_writable_maildir_leaves_nothing(t):
    mt.require_maild()
    md = t.tmp / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    path, _ = two_accounts(t, md, t.tmp / "not" / "yet" / "Maildir")
    before = mt.fs_snapshot(t.tmp)
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == 0, f"exit {r.rc}: {r.stderr}"
    assert mt.fs_snapshot(t.tmp) == before, "-n left something behind"


@tap.test
def test_check_unwritable_state_dir(t):
    mt.require_maild()
    st = t.tmp / "state"
    err, hint = unwritable_dir(t, st)
    path, line = write_case(t, """\
state-dir = "{tmp}/state"           # <--
account "a" {{
    host = "127.0.0.1"
    user = "u"
    password = "p"
    maildir = "{tmp}/Maildir"
}}
""")
    r = mt.run_maild(["-n", "-f", path], timeout=20)
    assert r.rc == mt.EX_CONFIG, f"exit {r.rc}: {r.stderr}"
    want = (f"maild: {path}:{line}: state-dir {st}: cannot create a file in "
            f"{st}: {err}{hint}\n")
    assert r.stderr == want, f"stderr\n{r.stderr!r}\nexpected\n{want!r}"
    # the daemon does not start either
    r = mt.run_maild(["-d", "-f", path], timeout=20)
    assert r.rc == mt.EX_IOERR, f"daemon: exit {r.rc}: {r.stderr}"
    assert r.stderr == want.replace("\n", "; not starting\n"), r.stderr


@tap.test
def test_daemon_refuses_when_nothing_can_be_delivered(t):
    mt.require_maild()
    md = t.tmp / "Maildir"
    err, hint = unwritable_dir(t, md, ("cur", "new", "tmp"))
    path, line = two_accounts(t, md, None)
    r = mt.run_maild(["-d", "-f", path], timeout=20)
    assert r.rc == mt.EX_IOERR, f"exit {r.rc}: {r.stderr}"
    assert r.stderr == (
        f'maild: {path}:{line}: account "a": maildir {md}: cannot create a '
        f'file in {md}/tmp: {err}{hint}\n'
        f'maild: not starting: no account can deliver its mail\n'), r.stderr


@tap.test(timeout=60)
def test_daemon_starts_for_the_other_accounts(t):
    """One unwritable Maildir does not hold up the other accounts: the
    daemon says so on stderr and starts."""
    mt.require_maild()
    md = t.tmp / "Maildir"
    unwritable_dir(t, md, ("cur", "new", "tmp"))
    path, line = two_accounts(t, md, t.tmp / "Maildir-b")
    errpath = t.tmp / "daemon.stderr"
    p = mt.start_maild(["-d", "-f", path], errpath)
    t.defer(mt.kill_tree, p)
    text = ""
    for _ in range(200):
        text = errpath.read_text(errors="replace")
        if "starting anyway" in text or p.poll() is not None:
            break
        time.sleep(0.05)
    t.attach("daemon stderr", text)
    assert p.poll() is None, f"the daemon exited {p.returncode}"
    assert f'maild: {path}:{line}: account "a": maildir {md}: ' in text, text
    assert "maild: starting anyway for the other account\n" in text, text
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0, f"exit {p.returncode} after SIGTERM"


@tap.test(timeout=60)
def test_online_check_reports_the_maildir(t):
    """--check adds maildir and state-dir lines to its table; one that
    cannot be written fails the check (exit 74) though the login worked."""
    mt.require_maild()
    c = certs.get()
    md = t.tmp / "Maildir-bad"
    err, hint = unwritable_dir(t, md, ("cur", "new", "tmp"))
    with fakepop3.FakePOP3([corpus.simple("chk/1")], tls=c.server) as srv:
        good = mt.write_config(t.tmp / "good.conf", [mt.account(
            "a", "127.0.0.1", srv.port, srv.user, srv.password,
            t.tmp / "Maildir", ca_file=c.ca)], state_dir=t.tmp / "state")
        bad = mt.write_config(t.tmp / "bad.conf", [mt.account(
            "a", "127.0.0.1", srv.port, srv.user, srv.password, md,
            ca_file=c.ca)], state_dir=t.tmp / "state")
        r = mt.run_maild(["--check", "-f", good], timeout=30)
        t.attach("--check stdout", r.stdout)
        assert r.rc == 0, f"exit {r.rc}: {r.stdout}{r.stderr}"
        assert re.search(rf"^  maildir +ok +{re.escape(str(t.tmp))}/Maildir$",
                         r.stdout, re.M), r.stdout
        assert re.search(rf"^  state-dir +ok +{re.escape(str(t.tmp))}/state$",
                         r.stdout, re.M), r.stdout
        assert not (t.tmp / "Maildir").exists(), "--check made the Maildir"
        r = mt.run_maild(["--check", "-f", bad], timeout=30)
        t.attach("--check stdout (bad)", r.stdout)
        assert r.rc == mt.EX_IOERR, f"exit {r.rc}: {r.stdout}{r.stderr}"
        assert re.search(r"^  login +ok", r.stdout, re.M), r.stdout
        assert f"  maildir       FAILED  cannot create a file in {md}/tmp: " \
            f"{err}{hint}\n" in r.stdout, r.stdout


@tap.test
def test_expansion_in_a_real_run(t):
    """~ and $VAR expand; the Maildir is created 0700 with cur/new/tmp."""
    mt.require_maild()
    home = t.tmp / "home"
    home.mkdir()
    other = t.tmp / "other"
    other.mkdir()
    c = certs.get()
    msgs = [corpus.simple("cli/1"), corpus.simple("cli/2")]
    env = {"HOME": str(home), "MAILD_TEST_DIR": str(other)}
    with fakepop3.FakePOP3(msgs, tls=c.server) as srv:
        path = mt.write_config(t.tmp / "maild.conf", [mt.account(
            "a", "127.0.0.1", srv.port, srv.user, srv.password,
            "${MAILD_TEST_DIR}/deep/Maildir", keep=True, ca_file=c.ca)],
            state_dir="~/state")
        r = mt.run_maild(["-n", "-f", path], timeout=20, env=env)
        assert r.rc == 0, f"-n: exit {r.rc}: {r.stderr}"
        r = mt.run_maild(["--once", "-f", path], timeout=30, env=env)
        assert r.rc == 0, f"exit {r.rc}"
    md = other / "deep" / "Maildir"
    assert md.is_dir(), f"{md} was not created"
    mode = stat.S_IMODE(md.stat().st_mode)
    assert mode == 0o700, f"{md} has mode {mode:o}, expected 700"
    for sub in ("cur", "new", "tmp"):
        assert (md / sub).is_dir(), f"{md}/{sub} missing"
    mt.assert_maildir(md, msgs)
    assert (home / "state" / "a.state").exists(), "state not under ~/state"


if __name__ == "__main__":
    tap.main()
