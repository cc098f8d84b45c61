"""dovecot.py: a private, throw-away Dovecot POP3 server for the tests.

    with dovecot.Dovecot(certs.get()) as srv:     # started; stopped at exit
        srv.add_user("user1")                      # password srv.password
        srv.set_mailbox("user1", msgs)             # corpus.Message list
        srv.add_messages("user1", [m])             # one more, into new/
        srv.mailbox("user1")                       # list of bytes on server
        srv.uidls("user1")                         # via POP3S (poplib)
        srv.host, srv.pop3s_port, srv.pop3_port, srv.ca

Everything lives in one temp directory: dovecot.conf, passwd-file, base_dir,
state_dir, log (srv.log), and the users' Maildirs.  Listeners: POP3S
(implicit TLS) and plain POP3 (STLS offered), both on 127.0.0.1 with free
ports.  UIDLs are the Maildir base names (pop3_uidl_format = %g), stable
across restarts.

Note: Dovecot counts a connection whose remote address equals its local
address (any loopback connection here) as secured, so on the plain port it
accepts USER/PASS before STLS whatever disable_plaintext_auth / ssl say.
Whether maild sends a password in the clear must be checked with the fake
server (fakepop3 records every command and whether TLS was up).

As root (CI): mail processes run as "nobody", login processes as
"dovenull", auth as root (so the passwd-file stays 0600); Maildirs are
chowned to nobody and the directory is made o+x.  As a normal user:
everything runs as that user, without chroot.

The server is stopped by its master PID (run/master.pid), never by name.
"""

import grp
import os
import poplib
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import tap

LOOPBACK = "127.0.0.1"
DEFAULT_PASSWORD = "t3st-Pa55word"


class DovecotError(Exception):
    pass


def find_dovecot():
    exe = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK)
        else None)
    return exe


def free_port(host=LOOPBACK):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return True


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def make_maildir(path, mode=0o700):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(exist_ok=True, mode=mode)
    return path


def chown_tree(path, uid, gid):
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)


class Dovecot:
    def __init__(self, certs, directory=None, plaintext_auth=False,
                 password=DEFAULT_PASSWORD, extra_conf="",
                 auth_mechanisms="plain login", client_ca=None):
        """auth_mechanisms: Dovecot's auth_mechanisms (e.g. "plain login
        cram-md5 apop xoauth2 oauthbearer"; the passwd-file holds {PLAIN}
        passwords, so all of them work; with xoauth2/oauthbearer the
        token is checked as the password).  client_ca: a CA certificate
        file; if given, Dovecot asks for a client certificate signed by
        it and refuses to log in without one (ssl_verify_client_cert,
        auth_ssl_require_client_cert)."""
        self.exe = find_dovecot()
        if self.exe is None:
            raise tap.Skip("dovecot is not installed (dovecot-pop3d)")
        self.certs = certs
        self.password = password
        self.plaintext_auth = plaintext_auth
        self.extra_conf = extra_conf
        self.auth_mechanisms = auth_mechanisms
        self.client_ca = client_ca
        self.host = LOOPBACK
        self.ca = str(certs.ca)
        self.as_root = os.geteuid() == 0
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else tap.mkdtemp(
            prefix="maild-dovecot-")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users = {}             # name -> password
        self._seq = 0
        self.master_pid = None
        if self.as_root:
            try:
                mu = pwd.getpwnam("nobody")
                pwd.getpwnam("dovenull")
                pwd.getpwnam("dovecot")
            except KeyError as e:
                raise tap.Skip(f"system user missing: {e}")
            self.mail_uid, self.mail_gid = mu.pw_uid, mu.pw_gid
            self.internal_user, self.login_user = "dovecot", "dovenull"
            # the mail user must be able to walk down to the Maildirs
            os.chmod(self.dir, 0o711)
            for anc in self.dir.parents:
                if not os.stat(anc).st_mode & 0o001:
                    raise DovecotError(
                        f"{anc} is not searchable by others; the mail user "
                        "'nobody' could not reach the Maildirs")
        else:
            self.mail_uid, self.mail_gid = os.geteuid(), os.getegid()
            name = pwd.getpwuid(self.mail_uid).pw_name
            self.internal_user = self.login_user = name
        for sub in ("run", "state", "log", "mail", "ssl"):
            (self.dir / sub).mkdir(exist_ok=True)
        os.chmod(self.dir / "mail", 0o711)
        os.chmod(self.dir / "ssl", 0o755)
        # a copy of the server certificate, readable by the master
        cert, key = certs.server
        shutil.copyfile(cert, self.dir / "ssl" / "server.crt")
        shutil.copyfile(key, self.dir / "ssl" / "server.key")
        os.chmod(self.dir / "ssl" / "server.key", 0o600)
        if client_ca is not None:
            shutil.copyfile(client_ca, self.dir / "ssl" / "client-ca.pem")
        self.log = self.dir / "log" / "dovecot.log"
        self.conf = self.dir / "dovecot.conf"
        self.passwd = self.dir / "users"
        self.passwd.write_text("")
        os.chmod(self.passwd, 0o600)
        self.pop3s_port = self.pop3_port = None

    # ------------------------------------------------------------------
    def _conf_text(self):
        d = self.dir
        lines = [
            "# generated by tests/lib/dovecot.py",
            f"instance_name = maild-test-{self.pop3s_port}",
            f"base_dir = {d / 'run'}",
            f"state_dir = {d / 'state'}",
            f"log_path = {self.log}",
            f"info_log_path = {self.log}",
            "protocols = pop3",
            f"listen = {LOOPBACK}",
            "shutdown_clients = yes",
            "verbose_proctitle = yes",
            "ssl = yes",
            f"ssl_cert = <{d / 'ssl' / 'server.crt'}",
            f"ssl_key = <{d / 'ssl' / 'server.key'}",
            "ssl_min_protocol = TLSv1.2",
            "disable_plaintext_auth = "
            + ("no" if self.plaintext_auth else "yes"),
            f"auth_mechanisms = {self.auth_mechanisms}",
            f"default_internal_user = {self.internal_user}",
            f"default_login_user = {self.login_user}",
        ]
        if self.client_ca is not None:
            lines += [
                f"ssl_ca = <{d / 'ssl' / 'client-ca.pem'}",
                "ssl_verify_client_cert = yes",
                "ssl_require_crl = no",
                "auth_ssl_require_client_cert = yes",
            ]
        if not self.as_root:
            lines.append("default_internal_group = "
                         + grp.getgrgid(os.getegid()).gr_name)
        lines += [
            f"first_valid_uid = {min(self.mail_uid, 500) or 1}",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {self.passwd}",
            "}",
            "userdb {",
            "  driver = passwd-file",
            f"  args = username_format=%u {self.passwd}",
            "}",
            "mail_location = maildir:~/Maildir",
            "pop3_uidl_format = %g",
            "service pop3-login {",
            "  inet_listener pop3 {",
            f"    address = {LOOPBACK}",
            f"    port = {self.pop3_port}",
            "  }",
            "  inet_listener pop3s {",
            f"    address = {LOOPBACK}",
            f"    port = {self.pop3s_port}",
            "    ssl = yes",
            "  }",
        ]
        if not self.as_root:
            lines.append("  chroot =")
        lines.append("}")
        if self.as_root:
            lines += ["service auth {", "  user = root", "}",
                      "service auth-worker {", "  user = root", "}"]
        else:
            lines += ["service anvil {", "  chroot =", "}"]
        lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    def _write_passwd(self):
        tmp = self.passwd.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for u, pw in self.users.items():
                f.write(f"{u}:{{PLAIN}}{pw}:{self.mail_uid}:{self.mail_gid}"
                        f"::{self.dir / 'mail' / u}::\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.passwd)

    def start(self, timeout=20.0):
        last = None
        for attempt in range(3):
            self.pop3s_port = free_port()
            self.pop3_port = free_port()
            while self.pop3_port == self.pop3s_port:
                self.pop3_port = free_port()
            self.conf.write_text(self._conf_text())
            try:
                self._start_once(timeout)
                return self
            except DovecotError as e:
                last = e
                self.stop()
        raise last

    def _start_once(self, timeout):
        out_path = self.dir / "log" / "dovecot-start.out"
        # the master daemonizes and keeps stdout/stderr: give it a file
        with open(out_path, "w") as out:
            try:
                r = subprocess.run([self.exe, "-c", str(self.conf)],
                                   stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DovecotError("dovecot did not start within "
                                   f"{timeout} s")
        if r.returncode != 0:
            raise DovecotError("dovecot failed to start:\n"
                               + out_path.read_text() + self.log_tail())
        deadline = time.monotonic() + timeout
        while self._read_pid() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.master_pid = self._read_pid()
        for port in (self.pop3s_port, self.pop3_port):
            left = max(0.5, deadline - time.monotonic())
            if not wait_port(LOOPBACK, port, left):
                raise DovecotError(f"dovecot does not listen on port {port}"
                                   + self.log_tail())

    def _read_pid(self):
        try:
            return int((self.dir / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout=15.0):
        """Stop the master by its PID (SIGTERM, then SIGKILL)."""
        pid = self.master_pid or self._read_pid()
        if pid is None or not pid_alive(pid):
            self.master_pid = None
            return True
        if "dovecot" not in _cmdline(pid):
            raise DovecotError(f"pid {pid} does not look like our dovecot")
        kids = [k for k in self.children() if self._ours(k)]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.master_pid = None
        # the master's processes (sessions, auth, log...) go with it; do
        # not leave any behind
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(pid_alive, kids)):
            time.sleep(0.05)
        for k in kids:
            if pid_alive(k) and self._ours(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return not pid_alive(pid)

    def cleanup(self):
        self.stop()
        if self._own_dir and not tap.keep_tmp() and self.dir.exists():
            tap.rmtree(self.dir)

    def __enter__(self):
        # stopped at the end of the running test at the latest (a server
        # started by a file's fixture lives until the fixture ends)
        if tap.current() is not None:
            tap.current().defer(self.cleanup)
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def log_tail(self, n=20):
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n--- dovecot.log:\n" + "\n".join(lines[-n:])

    def children(self, name=None):
        """PIDs of the master's child processes (optionally only those whose
        process name is name)."""
        master = self.master_pid or self._read_pid()
        out = []
        if master is None:
            return out
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.find("(") + 1:stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 1 and int(fields[1]) == master and \
                    (name is None or comm == name) and fields[0] != "Z":
                out.append(int(entry))
        return out

    def sessions(self):
        """PIDs of the POP3 session processes still running."""
        return self.children("pop3")

    def _ours(self, pid):
        return f"maild-test-{self.pop3s_port}/" in _cmdline(pid)

    def wait_idle(self, timeout=20.0, grace=5.0):
        """Wait until no POP3 session process is left: a client that was
        killed leaves one behind for a moment, still touching the Maildir.
        Sessions still there after grace seconds are idle leftovers (Dovecot
        sometimes misses that a client vanished right after login): they
        are ended with SIGTERM, by PID."""
        started = time.monotonic()
        deadline = started + timeout
        termed = set()
        while self.sessions():
            if time.monotonic() > started + grace:
                for pid in self.sessions():
                    if pid not in termed and self._ours(pid):
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                        termed.add(pid)
            if time.monotonic() > deadline:
                info = []
                for pid in self.sessions():
                    try:
                        wchan = open(f"/proc/{pid}/wchan").read()
                    except OSError:
                        wchan = "?"
                    info.append(f"{pid} {_cmdline(pid)!r} wchan={wchan}")
                raise DovecotError(f"dovecot sessions still running after "
                                   f"{timeout} s: " + "; ".join(info)
                                   + self.log_tail())
            time.sleep(0.01)

    # ------------------------------------------------------------------
    # users and mailboxes

    def maildir(self, user):
        return self.dir / "mail" / user / "Maildir"

    def add_user(self, user, password=None):
        """Add a user.  Dovecot rereads the passwd-file at most once a
        second: a user added while it runs may not exist for a moment;
        add users before start() where possible."""
        self.users[user] = password or self.password
        self._write_passwd()
        home = self.dir / "mail" / user
        make_maildir(home / "Maildir")
        chown_tree(home, self.mail_uid, self.mail_gid)
        return user

    def _name(self, data, new):
        self._seq += 1
        vsize = len(data) + data.count(b"\n")
        base = (f"{1700000000 + self._seq}.M{self._seq:06d}P{os.getpid()}"
                f".maildtest,S={len(data)},W={vsize}")
        return base if new else base + ":2,"

    def _write_msgs(self, user, msgs, new):
        md = self.maildir(user)
        sub = md / ("new" if new else "cur")
        for m in msgs:
            data = m if isinstance(m, (bytes, bytearray)) else m.data
            p = sub / self._name(data, new)
            with open(p, "wb") as f:
                f.write(data)
            os.chown(p, self.mail_uid, self.mail_gid)

    def set_mailbox(self, user, msgs):
        """Replace the user's mailbox (and Dovecot's indexes) with msgs."""
        self.wait_idle()
        home = self.dir / "mail" / user
        if home.exists():
            shutil.rmtree(home)
        make_maildir(home / "Maildir")
        self._write_msgs(user, msgs, new=False)
        chown_tree(home, self.mail_uid, self.mail_gid)

    def add_messages(self, user, msgs, new=True):
        """Add messages to the user's mailbox (new/ by default)."""
        self._write_msgs(user, msgs, new=new)

    def mailbox(self, user):
        """The messages the server still has for user (list of bytes)."""
        self.wait_idle()
        md = self.maildir(user)
        out = []
        for sub in ("cur", "new"):
            for name in sorted(os.listdir(md / sub)):
                if not name.startswith("."):
                    out.append((md / sub / name).read_bytes())
        return out

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx

    def uidls(self, user, timeout=20):
        """UIDL listing over POP3S: list of (num, uidl)."""
        p = poplib.POP3_SSL(self.host, self.pop3s_port,
                            context=self.ssl_context(), timeout=timeout)
        try:
            p.user(user)
            p.pass_(self.users[user])
            lines = p.uidl()[1]
            return [(int(a), b.decode()) for a, b in
                    (ln.split(b" ", 1) for ln in lines)]
        finally:
            try:
                p.quit()
            except Exception:
                p.close()


class Lazy:
    """One Dovecot for a test file, started by the first test that asks
    for it (t.fx.get(t)), so that a file's fake-server tests run without
    it.  users: {name: password, or None for the default}, made before
    it starts (Dovecot rereads its passwd-file only once a second).  kw
    go to Dovecot().  Use as tap.main(fixture=functools.partial(Lazy,
    users, ...))."""

    def __init__(self, users, **kw):
        self.users = dict(users)
        self.kw = kw
        self.srv = None

    def get(self, t):
        if find_dovecot() is None:
            t.skip("dovecot is not installed (dovecot-pop3d)")
        if self.srv is None:
            import certs
            srv = Dovecot(certs.get(), **self.kw)
            try:
                for user, password in self.users.items():
                    srv.add_user(user, password)
                srv.start()
            except BaseException:
                srv.cleanup()
                raise
            self.srv = srv
        return self.srv

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.srv is not None:
            self.srv.cleanup()
        return False
