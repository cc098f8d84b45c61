"""courier.py: a private, throw-away Courier POP3 server for the tests.

    with courier.Courier(certs.get()) as srv:      # started; stopped at exit
        srv.add_user("user1")                      # password srv.password
        srv.set_mailbox("user1", msgs)             # corpus.Message list
        srv.add_messages("user1", [m])             # one more, into new/
        srv.mailbox("user1")                       # list of bytes on server
        srv.uidls("user1")                         # via POP3S (poplib)
        srv.host, srv.pop3s_port, srv.pop3_port, srv.ca

Courier (Debian: courier-base, courier-authdaemon, courier-authlib-userdb,
and courier-pop, which tests/install-deps unpacks into
/usr/local/lib/maild-tests/courier-pop because it conflicts with
dovecot-pop3d) is two programs per connection: courierpop3login reads the
login and asks authdaemond; on success it hands the connection to
courierpop3d, and whatever the client pipelined behind the login is lost.

Everything but authdaemond is configured by environment variables and
arguments.  authdaemond's configuration (/etc/courier/authdaemonrc), its
user database (/etc/courier/userdb.dat) and its socket
(/run/courier/authdaemon/socket) are compiled in: the whole server runs in
a private mount and PID namespace (unshare, root only) in which a temp
directory is bound over /etc/courier and another over /run.  The system's
files are never touched, and a system authdaemond is not used.  The
namespace's first process is start.sh; it starts authdaemond (module
authuserdb) and two couriertcpd listeners on free ports of 127.0.0.1:
POP3S (implicit TLS, through couriertls) and plain POP3 offering STLS.
Both offer USER/PASS and SASL PLAIN, LOGIN and CRAM-MD5.

Stopping kills unshare by its PID; its child, the namespace's PID 1, then
gets SIGKILL and the kernel ends every process of the namespace with it,
so nothing Courier started can be left behind.

Mail is served as "nobody"; UIDLs are Courier's own ("UID<n>-<validity>",
kept in the Maildir's courierpop3dsizelist), stable across sessions.
"""

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dovecot
import tap
from dovecot import (DEFAULT_PASSWORD, LOOPBACK, chown_tree, free_port,
                     make_maildir, pid_alive, wait_port)

# where tests/install-deps unpacks courier-pop and courier-imap;
# $MAILD_COURIER_POP and $MAILD_COURIER_IMAP override
UNPACKED = "/usr/local/lib/maild-tests/courier-pop"
UNPACKED_IMAP = "/usr/local/lib/maild-tests/courier-imap"
AUTHDAEMOND = "/usr/lib/courier/courier-authlib/authdaemond"
COURIERTCPD = "/usr/sbin/couriertcpd"
COURIERTLS = "/usr/bin/couriertls"
MAKEUSERDB = "/usr/sbin/makeuserdb"
USERDBPW = "/usr/sbin/userdbpw"
SASL = "PLAIN LOGIN CRAM-MD5"


class CourierError(Exception):
    pass


def find_pop3_programs():
    """(courierpop3login, courierpop3d), or None."""
    for root in (os.environ.get("MAILD_COURIER_POP"), UNPACKED, "/"):
        if not root:
            continue
        d = Path(root) / "usr/lib/courier/courier"
        login, pop3d = d / "courierpop3login", d / "courierpop3d"
        if os.access(login, os.X_OK) and os.access(pop3d, os.X_OK):
            return str(login), str(pop3d)
    return None


def find_imap_programs():
    """(imaplogin, imapd), or None."""
    for root in (os.environ.get("MAILD_COURIER_IMAP"), UNPACKED_IMAP, "/"):
        if not root:
            continue
        login = Path(root) / "usr/lib/courier/courier/imaplogin"
        imapd = Path(root) / "usr/bin/imapd"
        if os.access(login, os.X_OK) and os.access(imapd, os.X_OK):
            return str(login), str(imapd)
    return None


def why_not(imap=False):
    """Why a private Courier cannot run here, or None."""
    if imap and find_imap_programs() is None:
        return ("Courier's imapd is missing (courier-imap; tests/install-deps"
                f" unpacks it into {UNPACKED_IMAP})")
    if os.geteuid() != 0:
        return ("Courier needs root here: authdaemond's socket and files "
                "are compiled in, so it runs in a private mount namespace")
    for exe in (AUTHDAEMOND, COURIERTCPD, COURIERTLS, MAKEUSERDB, USERDBPW):
        if not os.access(exe, os.X_OK):
            return (f"{exe} is missing (courier-base, courier-authdaemon, "
                    "courier-authlib-userdb; see tests/install-deps)")
    if find_pop3_programs() is None:
        return ("courierpop3login is missing (courier-pop; tests/install-deps"
                f" unpacks it into {UNPACKED})")
    if not os.path.isdir("/etc/courier"):
        return "/etc/courier is missing (courier-authdaemon)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is missing (util-linux, mount)"
    try:
        pwd.getpwnam("courier")
        pwd.getpwnam("nobody")
    except KeyError as e:
        return f"no user {e} (courier-base makes 'courier')"
    return None


def _ns_pid(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class Courier:
    def __init__(self, certs, directory=None, password=DEFAULT_PASSWORD,
                 sasl=SASL, imap=False, idle_timeout=60):
        """sasl: the SASL mechanisms offered (POP3AUTH and POP3AUTH_TLS),
        "" for none (USER/PASS only).  imap: also serve IMAPS and IMAP
        with STARTTLS (courier-imap; srv.imaps_port, srv.imap_port), whose
        IDLE looks at the Maildir every idle_timeout seconds."""
        why = why_not(imap)
        if why is not None:
            raise tap.Skip(why)
        self.login_prog, self.pop3d_prog = find_pop3_programs()
        self.imap = imap
        self.idle_timeout = idle_timeout
        if imap:
            self.imaplogin_prog, self.imapd_prog = find_imap_programs()
        self.imaps_port = self.imap_port = None
        self.certs = certs
        self.password = password
        self.sasl = sasl
        self.host = LOOPBACK
        self.ca = str(certs.ca)
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else tap.mkdtemp(
            prefix="maild-courier-")
        self.dir.mkdir(parents=True, exist_ok=True)
        # the mail user (nobody) must reach the Maildirs
        os.chmod(self.dir, 0o711)
        mu = pwd.getpwnam("nobody")
        self.mail_uid = mu.pw_uid
        self.mail_gid = mu.pw_gid
        self.users = {}             # name -> password
        self._seq = 0
        self.proc = None            # unshare
        self._ns = None             # its PID namespace (/proc/N/ns/pid)
        self.pop3s_port = self.pop3_port = None
        for sub in ("etc", "run", "log", "mail"):
            (self.dir / sub).mkdir(exist_ok=True)
        os.chmod(self.dir / "etc", 0o755)
        os.chmod(self.dir / "mail", 0o711)
        (self.dir / "run" / "courier" / "authdaemon").mkdir(parents=True,
                                                           exist_ok=True)
        self.log = self.dir / "log"
        self._write_etc()

    # ------------------------------------------------------------------
    def _write_etc(self):
        etc = self.dir / "etc"
        (etc / "authdaemonrc").write_text(
            "# generated by tests/lib/courier.py\n"
            'authmodulelist="authuserdb"\n'
            "daemons=2\n"
            "authdaemonvar=/run/courier/authdaemon\n"
            "DEBUG_LOGIN=0\n"
            'DEFAULTOPTIONS=""\n'
            'LOGGEROPTS=""\n')
        # TLS_CERTFILE: key and certificate in one file, readable by the
        # "courier" user couriertls runs as
        cert, key = self.certs.server
        pem = etc / "pop3d.pem"
        pem.write_bytes(Path(key).read_bytes() + Path(cert).read_bytes())
        os.chown(pem, 0, grp.getgrnam("courier").gr_gid)
        os.chmod(pem, 0o640)
        self.userdb = etc / "userdb"
        self._write_userdb()

    def _hash(self, args, password):
        r = subprocess.run(args, input=password, capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0 or not r.stdout.strip():
            raise CourierError(f"{args[0]} failed: {r.stderr}")
        return r.stdout.strip()

    def _write_userdb(self):
        """userdb (0600) and, by makeuserdb, userdb.dat and
        userdbshadow.dat, which authdaemond reads (as /etc/courier/...)."""
        lines = []
        for u, pw in self.users.items():
            home = self.dir / "mail" / u
            crypt = self._hash(["openssl", "passwd", "-6", "-stdin"], pw)
            # CRAM-MD5 needs the HMAC-MD5 precomputed key, not a crypt hash
            hmac = self._hash([USERDBPW, "-hmac-md5"], f"{pw}\n{pw}\n")
            lines.append(f"{u}\tuid={self.mail_uid}|gid={self.mail_gid}"
                         f"|home={home}|mail={home / 'Maildir'}"
                         f"|systempw={crypt}|hmac-md5pw={hmac}\n")
        tmp = self.userdb.with_suffix(".new")
        with open(tmp, "w") as f:
            f.write("".join(lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.userdb)
        r = subprocess.run([MAKEUSERDB, "-f", str(self.userdb)],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise CourierError("makeuserdb failed: " + r.stdout + r.stderr)

    def _env(self, tls, imap=False):
        """The environment of a listener: POP3 or IMAP, implicit TLS or
        STARTTLS (required for IMAP, so that it says LOGINDISABLED)."""
        proto = "IMAP" if imap else "POP3"
        env = {
            "PATH": "/usr/bin:/bin",
            "TLS_CERTFILE": "/etc/courier/pop3d.pem",
            "TLS_VERIFYPEER": "NONE",
            "MAILDIRPATH": "Maildir",
        }
        if imap:
            # Debian's /etc/courier/imapd, without AUTH=CRAM-*: PLAIN
            # after TLS
            caps = ("IMAP4rev1 UIDPLUS CHILDREN NAMESPACE "
                    "THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE")
            env.update({
                "IMAP_CAPABILITY": caps,
                "IMAP_CAPABILITY_TLS": caps + " AUTH=PLAIN",
                "IMAP_KEYWORDS": "1",
                "IMAP_ACL": "1",
                "IMAP_IDLE_TIMEOUT": str(self.idle_timeout),
                "IMAP_ENHANCEDIDLE": "0",
                "IMAP_MAILBOX_SANITY_CHECK": "1",
                "IMAP_USELOCKS": "1",
                "IMAP_UMASK": "022",
                "IMAP_TRASHFOLDERNAME": "Trash",
                "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
            })
        else:
            env.update(POP3AUTH=self.sasl, POP3AUTH_TLS=self.sasl)
        if tls:
            env.update({f"{proto}_TLS": "1", f"{proto}_STARTTLS": "NO",
                        f"{proto}_TLS_REQUIRED": "0"})
        else:
            env.update({"COURIERTLS": COURIERTLS, f"{proto}_STARTTLS": "YES",
                        f"{proto}_TLS_REQUIRED": "1" if imap else "0"})
        return " ".join(f"{k}={_sh(v)}" for k, v in env.items())

    def _tcpd(self, tls, imap=False):
        if imap:
            port = self.imaps_port if tls else self.imap_port
            log = self.log / ("imaps.log" if tls else "imap.log")
            progs = [self.imaplogin_prog, self.imapd_prog, "Maildir"]
        else:
            port = self.pop3s_port if tls else self.pop3_port
            log = self.log / ("pop3s.log" if tls else "pop3.log")
            progs = [self.login_prog, self.pop3d_prog, "Maildir"]
        cmd = [COURIERTCPD, f"-address={LOOPBACK}", "-maxprocs=40",
               "-maxperip=40", "-nodnslookup", "-noidentlookup",
               f"-stderr={log}", str(port)]
        if tls:
            cmd += [COURIERTLS, "-server", "-tcpd", "-user=courier"]
        cmd += progs
        return f"env -i {self._env(tls, imap)} " + " ".join(map(_sh, cmd))

    def _script(self):
        d = self.dir
        return "\n".join([
            "#!/bin/sh",
            "# generated by tests/lib/courier.py: PID 1 of a private PID",
            "# and mount namespace",
            "set -e",
            f"mount --bind {_sh(d / 'run')} /run",
            f"mount --bind {_sh(d / 'etc')} /etc/courier",
            f"{_sh(AUTHDAEMOND)} >>{_sh(self.log / 'authdaemond.log')} 2>&1 &",
            "i=0",
            "while [ ! -S /run/courier/authdaemon/socket ]; do",
            "\ti=$((i + 1))",
            '\t[ "$i" -lt 200 ] || { echo "authdaemond did not start" >&2;'
            " exit 1; }",
            "\tsleep 0.05",
            "done",
            self._tcpd(True) + " &",
            self._tcpd(False) + " &",
            *([self._tcpd(True, imap=True) + " &",
               self._tcpd(False, imap=True) + " &"] if self.imap else []),
            "wait",
            ""])

    def ports(self):
        return [p for p in (self.pop3s_port, self.pop3_port, self.imaps_port,
                            self.imap_port) if p is not None]

    def start(self, timeout=20.0):
        last = None
        for attempt in range(3):
            taken = set()
            for name in ("pop3s_port", "pop3_port") + (
                    ("imaps_port", "imap_port") if self.imap else ()):
                port = free_port()
                while port in taken:
                    port = free_port()
                taken.add(port)
                setattr(self, name, port)
            try:
                self._start_once(timeout)
                return self
            except CourierError as e:
                last = e
                self.stop()
        raise last

    def _start_once(self, timeout):
        script = self.dir / "start.sh"
        script.write_text(self._script())
        out = open(self.log / "start.out", "ab")
        try:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--pid",
                 "--kill-child", "--", "/bin/sh", str(script)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        for port in self.ports():
            while not wait_port(LOOPBACK, port, 0.2):
                if self.proc.poll() is not None:
                    raise CourierError("courier failed to start"
                                       + self.log_tail())
                if time.monotonic() > deadline:
                    raise CourierError(f"courier does not listen on port "
                                       f"{port}" + self.log_tail())
        # unshare has made the namespace by now (its PID 1 listens)
        self._ns = self._children_ns()

    def _children_ns(self):
        try:
            return os.readlink(f"/proc/{self.proc.pid}/ns/pid_for_children")
        except OSError:
            raise CourierError("cannot read the PID namespace of unshare"
                               + self.log_tail())

    def processes(self):
        """PIDs of every live process in the server's PID namespace."""
        if self._ns is None:
            return []
        return [int(e) for e in os.listdir("/proc")
                if e.isdigit() and _ns_pid(e) == self._ns and
                pid_alive(int(e))]

    def stop(self, timeout=15.0):
        """Kill unshare by its PID; the kernel ends the namespace's
        processes with its PID 1.  Waits until none is left."""
        if self.proc is None:
            return True
        left = self.processes()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CourierError(f"unshare (pid {self.proc.pid}) did not end")
        self.proc = None
        deadline = time.monotonic() + timeout
        while any(map(pid_alive, left)) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [p for p in left if pid_alive(p)]
        if alive:
            raise CourierError(f"courier processes {alive} outlived their "
                               "namespace")
        self._ns = None
        return True

    # stopped at the end of the running test at the latest, as Dovecot
    cleanup = dovecot.Dovecot.cleanup
    __enter__ = dovecot.Dovecot.__enter__
    __exit__ = dovecot.Dovecot.__exit__

    def log_tail(self, n=20):
        out = ""
        for name in ("start.out", "authdaemond.log", "pop3s.log",
                     "pop3.log", "imaps.log", "imap.log"):
            try:
                lines = (self.log / name).read_text(
                    errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                out += f"\n--- {name}:\n" + "\n".join(lines[-n:])
        return out

    def sessions(self):
        """PIDs of the POP3 session processes still running."""
        return [p for p in self.processes() if _comm(p) in
                ("courierpop3logi", "courierpop3d", "couriertls",
                 "imaplogin", "imapd")]

    def wait_idle(self, timeout=20.0):
        """Wait until no POP3 session is left: a client that went away
        leaves one behind for a moment, still touching the Maildir.  The
        listeners' couriertls processes are sessions too (one per TLS
        connection)."""
        deadline = time.monotonic() + timeout
        while self.sessions():
            if time.monotonic() > deadline:
                raise CourierError(f"courier sessions still running after "
                                   f"{timeout} s: {self.sessions()}"
                                   + self.log_tail())
            time.sleep(0.02)

    # ------------------------------------------------------------------
    # users and mailboxes

    def add_user(self, user, password=None):
        """Add a user (authdaemond sees the rebuilt userdb.dat at once)."""
        self.users[user] = password or self.password
        self._write_userdb()
        home = self.dir / "mail" / user
        make_maildir(home / "Maildir")
        chown_tree(home, self.mail_uid, self.mail_gid)
        return user

    # the rest is the same as Dovecot's: Maildirs under mail/<user>/, and
    # UIDL over POP3S with USER/PASS
    maildir = dovecot.Dovecot.maildir
    _name = dovecot.Dovecot._name
    _write_msgs = dovecot.Dovecot._write_msgs
    set_mailbox = dovecot.Dovecot.set_mailbox
    add_messages = dovecot.Dovecot.add_messages
    mailbox = dovecot.Dovecot.mailbox
    ssl_context = dovecot.Dovecot.ssl_context
    uidls = dovecot.Dovecot.uidls


def _sh(s):
    """A word for sh, single-quoted."""
    return "'" + str(s).replace("'", "'\\''") + "'"
