"""Common command line for client adapters (clients/<name>).

Contract (any language may implement it; this module is one way):

  clients/<name> version
      Print one line identifying the client and its version; exit 0 if the
      client is usable, 3 if it is not installed / not built.

  clients/<name> protocols
      Print the protocols the adapter can configure, e.g. "pop3 imap";
      tests/bench/run leaves a client out of the other protocol's
      scenarios.  (Optional: without it, pop3 is assumed.)

  clients/<name> prepare --accounts FILE --maildir-root DIR --ca CAFILE
                         --host H --port P --state-dir SDIR (--keep|--delete)
                         [--opt KEY=VALUE ...]
      Create DIR/<user>/{cur,new,tmp} for every account, write the client's
      configuration into SDIR (which persists between runs that share the
      same SDIR: UIDL/seen state lives there), and write SDIR/command.json:
          {"argv": [...], "env": {...}, "client": "...", "version": "...",
           "ok_exit": [0]}        (exit statuses meaning success)
      The command must fetch every account once and exit (0 = success).
      It must not depend on the current directory and must keep all its
      state under SDIR.  The runner (tests/bench/run) may execute it as another,
      unprivileged user after chown'ing SDIR and DIR; HOME is set to SDIR.

  clients/<name> prepare ... --protocol imap [--push]
      The same for IMAP (implicit TLS, INBOX only; --port is then the IMAPS
      port).  Keep mode: messages stay on the server and only new ones are
      fetched next time (by UID, or by the \\Seen flag where that is all the
      client can do).  With --push, command.json describes the client's
      long-running mode instead (IMAP IDLE, or its shortest sensible poll
      interval): it keeps delivering new mail until it gets SIGTERM;
      command.json then also has "push": "IDLE" or "poll every N s".
      A client that cannot do what is asked (no IMAP, no IDLE/daemon mode,
      no delete mode) exits with status 4 and says why on stderr;
      tests/bench/run reports the cell as n/a.

  clients/<name> run <same options as prepare>
      prepare, then exec the command (convenience for manual use).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench_common import (read_accounts, make_maildir, require_loopback, die,
                          default_run_as, lookup_user, chown_tree,
                          check_traversable, privdrop_prefix)


class Context:
    def __init__(self, a):
        self.accounts = read_accounts(a.accounts)
        self.maildir_root = Path(a.maildir_root).resolve()
        self.ca = str(Path(a.ca).resolve())
        self.host = require_loopback(a.host)
        self.port = int(a.port)
        self.state_dir = Path(a.state_dir).resolve()
        self.keep = a.keep
        self.protocol = a.protocol
        self.push = a.push
        self.opts = dict(kv.split("=", 1) for kv in (a.opt or []))

    def maildir(self, user):
        return self.maildir_root / user

    def write_private(self, name, text):
        """Write a config file readable by its owner only (they hold passwords)."""
        p = self.state_dir / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(p, 0o600)
        return str(p)


class NotSupported(Exception):
    """The client cannot do what was asked (exit status 4 = n/a)."""


class Adapter:
    name = "?"
    binary = None
    ok_exit = [0]  # exit statuses that mean success
    protocols = ("pop3",)  # what build() can configure
    push_mode = None  # e.g. "IDLE": what build() runs with ctx.push set

    def find(self):
        return shutil.which(self.binary) if self.binary else None

    def version(self):
        exe = self.find()
        if not exe:
            return None
        r = subprocess.run([exe, "--version"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        return lines[0].strip() if lines else exe

    def build(self, ctx):
        """Write config into ctx.state_dir; return (argv, env).  May raise
        NotSupported."""
        raise NotImplementedError


def _q(s):
    """Double-quote a string for configs that use C-like quoting."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(adapter):
    ap = argparse.ArgumentParser(prog=f"clients/{adapter.name}",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    sub.add_parser("protocols", help="print the protocols the adapter can "
                   "configure (pop3, imap), one line")
    for name in ("prepare", "run"):
        p = sub.add_parser(name)
        p.add_argument("--accounts", required=True)
        p.add_argument("--maildir-root", required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", required=True, type=int)
        p.add_argument("--state-dir", required=True)
        g = p.add_mutually_exclusive_group()
        g.add_argument("--keep", dest="keep", action="store_true", default=True,
                       help="leave messages on the server, fetch only new ones "
                            "(default)")
        g.add_argument("--delete", dest="keep", action="store_false",
                       help="delete messages from the server after delivery")
        p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                       help="adapter specific option")
        p.add_argument("--protocol", choices=("pop3", "imap"), default="pop3",
                       help="pop3 (POP3S, default) or imap (IMAPS)")
        p.add_argument("--push", action="store_true",
                       help="long-running mode (IMAP IDLE or shortest poll) "
                            "instead of fetch-once; runs until SIGTERM")
    sub.choices["run"].add_argument(
        "--run-as", default=default_run_as(),
        help="when started as root, run the client as this user after "
             "chown'ing the state dir and maildirs (default: nobody)")
    a = ap.parse_args()

    if a.cmd == "protocols":
        print(" ".join(adapter.protocols))
        return
    if a.cmd == "version":
        v = adapter.version()
        if not v:
            print(f"{adapter.name}: not installed", file=sys.stderr)
            sys.exit(3)
        print(v)
        return

    ctx = Context(a)
    if ctx.protocol not in adapter.protocols:
        die(f"{adapter.name} does not speak {ctx.protocol.upper()} "
            f"(only {', '.join(x.upper() for x in adapter.protocols)})", 4)
    if ctx.push and not adapter.push_mode:
        die(f"{adapter.name} has no IDLE or daemon/poll mode", 4)
    ctx.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ctx.state_dir, 0o700)
    for user, _ in ctx.accounts:
        make_maildir(ctx.maildir(user))
    exe = adapter.find()
    if not exe:
        die(f"{adapter.name} is not installed", 3)
    try:
        argv, env = adapter.build(ctx)
    except NotSupported as e:
        die(str(e), 4)
    env = dict(env)
    env.setdefault("HOME", str(ctx.state_dir))
    cmd = {"client": adapter.name, "version": adapter.version(),
           "argv": argv, "env": env, "ok_exit": adapter.ok_exit,
           "protocol": ctx.protocol}
    if ctx.push:
        cmd["push"] = adapter.push_mode
    with open(ctx.state_dir / "command.json", "w") as f:
        json.dump(cmd, f, indent=2)
    if a.cmd == "prepare":
        print(ctx.state_dir / "command.json")
        return
    full_env = dict(os.environ)
    full_env.update(env)
    if os.geteuid() == 0 and a.run_as and a.run_as != "root":
        pw = lookup_user(a.run_as)
        for path in [ctx.state_dir, ctx.maildir_root, Path(ctx.ca)]:
            bad = check_traversable(path.parent)
            if bad is not None:
                die(f"{bad} is not searchable by {a.run_as} (o+x missing)")
        chown_tree(ctx.state_dir, pw.pw_uid, pw.pw_gid)
        os.chown(ctx.maildir_root, pw.pw_uid, pw.pw_gid)
        for user, _ in ctx.accounts:
            chown_tree(ctx.maildir(user), pw.pw_uid, pw.pw_gid)
        full_env.update({"USER": pw.pw_name, "LOGNAME": pw.pw_name})
        argv = privdrop_prefix(pw) + argv
    sys.stdout.flush()
    os.execvpe(argv[0], argv, full_env)
