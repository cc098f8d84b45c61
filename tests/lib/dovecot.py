"""dovecot.py: a private, throw-away Dovecot (POP3, IMAP, LMTP) for the tests.

    with dovecot.Dovecot(certs.get()) as srv:     # started; stopped at exit
        srv.add_user("user1")                      # password srv.password
        srv.set_mailbox("user1", msgs)             # corpus.Message list
        srv.add_messages("user1", [m])             # one more, into new/
        srv.mailbox("user1")                       # list of bytes on server
        srv.uidls("user1")                         # via POP3S (poplib)
        srv.host, srv.pop3s_port, srv.pop3_port, srv.ca

IMAP (Debian: dovecot-imapd; served when installed, imap=True insists):

        srv.imaps_port, srv.imap_port              # IMAPS; IMAP + STARTTLS
        srv.create_folder("user1", "Archive")
        srv.deliver("user1", msgs, folder="Archive")       # doveadm save
        srv.deliver("user1", msgs, via="lda")              # dovecot-lda
        srv.add_messages("user1", msgs, folder="Archive")  # files into new/
        srv.messages("user1", "Archive")   # [{"uid": 1, "flags": {...}...}]
        srv.status("user1", "INBOX")       # {"uidvalidity": ..., ...}
        srv.set_uidvalidity("user1", "INBOX", 1234)   # UIDs kept
        srv.reset_uids("user1", "INBOX")   # new UIDVALIDITY, UIDs from 1
        srv.imap("user1")                  # a logged-in imaplib client
        srv.restart()                      # same ports, same mail

LMTP with Pigeonhole Sieve (Debian: dovecot-lmtpd, dovecot-sieve), with
lmtp=True:

        srv.lmtp_socket, srv.lmtp_port     # unix socket, 127.0.0.1 port
        srv.set_sieve("user1", 'require "fileinto"; fileinto "Lists";')
        srv.lmtp_send(["user1"], data)     # [(250, "2.0.0 <user1> ...")]

Everything lives in one temp directory: dovecot.conf, passwd-file, base_dir,
state_dir, log (srv.log), and the users' homes (Maildir, Sieve scripts).
Listeners: POP3S and IMAPS (implicit TLS), plain POP3 and IMAP (STLS /
STARTTLS offered), LMTP on a unix socket and a TCP port, all on 127.0.0.1
with free ports.  UIDLs are the Maildir base names (pop3_uidl_format =
%g), stable across restarts.  Folders are Maildir++ directories (".Name")
of the user's Maildir, "/" the IMAP hierarchy separator; Archive, Sent,
Drafts, Junk and Trash carry their special-use attributes once created.
Dovecot tells a client in IDLE of new mail about half a second after it
arrives (inotify on the Maildir).  A user's Sieve script is
~/sieve/<name>.sieve, active through the link ~/.dovecot.sieve; the
"duplicate" and "vnd.dovecot.duplicate" extensions are available (their
database is ~/.dovecot.lda-dupes).

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

OAuth2 (oauth2_introspection="https://127.0.0.1:PORT/introspect", e.g.
the mock provider's, oauth2mock.py): XOAUTH2 and OAUTHBEARER logins are
checked by Dovecot's oauth2 passdb, which posts the token to that URL
(RFC 7662, introspection_mode = post) trusting the test CA, and takes
the login if the reply says active = true with the user's name as
"username"; the other mechanisms stay with the passwd-file.
"""

import grp
import imaplib
import os
import poplib
import pwd
import re
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
SPECIAL_USE = {"Archive": "\\Archive", "Drafts": "\\Drafts",
               "Junk": "\\Junk", "Sent": "\\Sent", "Trash": "\\Trash"}


LIBEXEC = "/usr/lib/dovecot"


class DovecotError(Exception):
    pass


def find_dovecot():
    exe = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK)
        else None)
    return exe


def find_tool(name):
    """A Dovecot program (doveadm, sievec, dovecot-lda, or a service
    binary such as imap or lmtp), or None."""
    for d in (os.path.dirname(find_dovecot() or "/usr/sbin/dovecot"),
              "/usr/bin", "/usr/sbin", LIBEXEC):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return shutil.which(name)


def have_imap():
    """Is Dovecot's IMAP server installed (dovecot-imapd)?"""
    return find_dovecot() is not None and find_tool("imap") is not None \
        and os.access(os.path.join(LIBEXEC, "imap-login"), os.X_OK)


def have_lmtp():
    """Are Dovecot's LMTP server and Pigeonhole Sieve installed
    (dovecot-lmtpd, dovecot-sieve)?"""
    return find_dovecot() is not None and \
        os.access(os.path.join(LIBEXEC, "lmtp"), os.X_OK) and \
        os.path.exists(os.path.join(LIBEXEC, "modules",
                                    "lib90_sieve_plugin.so"))


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
                 auth_mechanisms="plain login", client_ca=None, imap=None,
                 lmtp=False, oauth2_introspection=None):
        """auth_mechanisms: Dovecot's auth_mechanisms (e.g. "plain login
        cram-md5 apop xoauth2 oauthbearer"; the passwd-file holds {PLAIN}
        passwords, so all of them work; with xoauth2/oauthbearer the
        token is checked as the password).  client_ca: a CA certificate
        file; if given, Dovecot asks for a client certificate signed by
        it and refuses to log in without one (ssl_verify_client_cert,
        auth_ssl_require_client_cert).  imap: serve IMAP (None: if
        dovecot-imapd is installed; True: skip the test if it is not).
        lmtp: serve LMTP with Sieve (skips without dovecot-lmtpd and
        dovecot-sieve).  oauth2_introspection: an introspection URL for
        Dovecot's oauth2 passdb, which then checks XOAUTH2 and
        OAUTHBEARER logins (added to auth_mechanisms)."""
        self.exe = find_dovecot()
        if self.exe is None:
            raise tap.Skip("dovecot is not installed (dovecot-pop3d)")
        if imap and not have_imap():
            raise tap.Skip("Dovecot's IMAP server is not installed "
                           "(dovecot-imapd)")
        if lmtp and not have_lmtp():
            raise tap.Skip("Dovecot's LMTP server or Sieve is not "
                           "installed (dovecot-lmtpd, dovecot-sieve)")
        self.imap_enabled = have_imap() if imap is None else bool(imap)
        self.lmtp_enabled = bool(lmtp)
        self.certs = certs
        self.password = password
        self.plaintext_auth = plaintext_auth
        self.extra_conf = extra_conf
        self.auth_mechanisms = auth_mechanisms
        self.oauth2_introspection = oauth2_introspection
        if oauth2_introspection:
            for m in ("xoauth2", "oauthbearer"):
                if m not in self.auth_mechanisms.split():
                    self.auth_mechanisms += " " + m
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
        self.imaps_port = self.imap_port = self.lmtp_port = None
        self.lmtp_socket = self.dir / "run" / "lmtp" if lmtp else None

    # ------------------------------------------------------------------
    def _oauth2_conf(self):
        """The oauth2 passdb's settings file (Dovecot 2.3 syntax)."""
        path = self.dir / "dovecot-oauth2.conf.ext"
        shutil.copyfile(self.ca, self.dir / "ssl" / "oauth2-ca.pem")
        os.chmod(self.dir / "ssl" / "oauth2-ca.pem", 0o644)
        path.write_text("\n".join([
            "# generated by tests/lib/dovecot.py",
            "introspection_mode = post",
            f"introspection_url = {self.oauth2_introspection}",
            "force_introspection = yes",
            "username_attribute = username",
            "active_attribute = active",
            "active_value = true",
            f"tls_ca_cert_file = {self.dir / 'ssl' / 'oauth2-ca.pem'}",
            "timeout_msecs = 10000",
            "debug = yes",
        ]) + "\n")
        os.chmod(path, 0o644)
        return path

    def _conf_text(self):
        d = self.dir
        lines = [
            "# generated by tests/lib/dovecot.py",
            f"instance_name = maild-test-{self.pop3s_port}",
            f"base_dir = {d / 'run'}",
            f"state_dir = {d / 'state'}",
            f"log_path = {self.log}",
            f"info_log_path = {self.log}",
            "protocols = pop3" + (" imap" if self.imap_enabled else "")
            + (" lmtp" if self.lmtp_enabled else ""),
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
        lines.append(f"first_valid_uid = {min(self.mail_uid, 500) or 1}")
        if self.oauth2_introspection:
            lines += [
                "passdb {",
                "  driver = oauth2",
                "  mechanisms = xoauth2 oauthbearer",
                f"  args = {self._oauth2_conf()}",
                "}",
            ]
        lines += [
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {self.passwd}",
        ]
        if self.oauth2_introspection:
            lines.append("  mechanisms = " + " ".join(
                m for m in self.auth_mechanisms.split()
                if m not in ("xoauth2", "oauthbearer")))
        lines += [
            "}",
            "userdb {",
            "  driver = passwd-file",
            # %n: LMTP's RCPT TO:<user@domain> finds "user"
            f"  args = username_format=%n {self.passwd}",
            "}",
            "mail_location = maildir:~/Maildir",
            "pop3_uidl_format = %g",
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
        ]
        for box, use in SPECIAL_USE.items():
            lines += [f"  mailbox {box} {{", f"    special_use = {use}",
                      "  }"]
        lines.append("}")
        lines += self._listeners("pop3", self.pop3_port, self.pop3s_port)
        if self.imap_enabled:
            lines += self._listeners("imap", self.imap_port,
                                     self.imaps_port)
            lines += [
                # Dovecot's defaults, spelled out: new mail reaches an
                # IDLE client through inotify (after about 0.5 s); the
                # interval is only the fallback
                "mailbox_idle_check_interval = 30 secs",
                "imap_idle_notify_interval = 2 mins",
                "protocol imap {",
                "  mail_max_userip_connections = 100",
                "}",
            ]
        if self.lmtp_enabled:
            lines += self._lmtp_conf()
        if self.as_root:
            lines += ["service auth {", "  user = root", "}",
                      "service auth-worker {", "  user = root", "}"]
        else:
            lines += ["service anvil {", "  chroot =", "}"]
        lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    def _listeners(self, proto, plain_port, tls_port):
        lines = [f"service {proto}-login {{",
                 f"  inet_listener {proto} {{",
                 f"    address = {LOOPBACK}",
                 f"    port = {plain_port}",
                 "  }",
                 f"  inet_listener {proto}s {{",
                 f"    address = {LOOPBACK}",
                 f"    port = {tls_port}",
                 "    ssl = yes",
                 "  }"]
        if not self.as_root:
            lines.append("  chroot =")
        return lines + ["}"]

    def _lmtp_conf(self):
        return [
            "service lmtp {",
            "  unix_listener lmtp {",
            "    mode = 0666",
            "  }",
            "  inet_listener lmtp {",
            f"    address = {LOOPBACK}",
            f"    port = {self.lmtp_port}",
            "  }",
            "}",
            "postmaster_address = postmaster@maild-test.example",
            "lda_mailbox_autocreate = yes",
            "lda_mailbox_autosubscribe = yes",
            "protocol lmtp {",
            "  mail_plugins = $mail_plugins sieve",
            "}",
            "protocol lda {",
            "  mail_plugins = $mail_plugins sieve",
            "}",
            "plugin {",
            "  sieve = file:~/sieve;active=~/.dovecot.sieve",
            # RFC 7352 duplicate is there by default, the older
            # vnd.dovecot.duplicate (what older Pigeonholes know) is not
            "  sieve_extensions = +vnd.dovecot.duplicate",
            "}",
        ]

    def _write_passwd(self):
        tmp = self.passwd.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for u, pw in self.users.items():
                f.write(f"{u}:{{PLAIN}}{pw}:{self.mail_uid}:{self.mail_gid}"
                        f"::{self.dir / 'mail' / u}::\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.passwd)

    def _ports(self):
        return [p for p in (self.pop3s_port, self.pop3_port, self.imaps_port,
                            self.imap_port, self.lmtp_port) if p]

    def _pick_ports(self):
        names = ["pop3s_port", "pop3_port"]
        if self.imap_enabled:
            names += ["imaps_port", "imap_port"]
        if self.lmtp_enabled:
            names.append("lmtp_port")
        taken = set()
        for n in names:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            setattr(self, n, port)

    def start(self, timeout=20.0):
        last = None
        for attempt in range(3):
            self._pick_ports()
            self.conf.write_text(self._conf_text())
            try:
                self._start_once(timeout)
                return self
            except DovecotError as e:
                last = e
                self.stop()
        raise last

    def restart(self, timeout=20.0):
        """Stop (by PID: the clients are disconnected) and start again on
        the same ports with the same mail, as a server restart does."""
        self.stop()
        self._start_once(timeout)
        return self

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
        for port in self._ports():
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
            self._remove_pid_file()
            return True
        if "dovecot" not in _cmdline(pid):
            raise DovecotError(f"pid {pid} does not look like our dovecot")
        kids = [k for k in self.children() if self._ours(k)]
        # end the sessions first: a master that has to wait for an IMAP
        # session in IDLE takes seconds to go
        for name in ("imap", "pop3", "lmtp"):
            for k in self.sessions(name):
                if self._ours(k):
                    try:
                        os.kill(k, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
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
        self._remove_pid_file()
        return not pid_alive(pid)

    def _remove_pid_file(self):
        # a restart must not take the old master's PID for the new one
        try:
            (self.dir / "run" / "master.pid").unlink()
        except FileNotFoundError:
            pass

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

    def sessions(self, name="pop3"):
        """PIDs of the POP3 (or name: "imap", "lmtp") session processes
        still running."""
        return self.children(name)

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

    def home(self, user):
        return self.dir / "mail" / user

    def maildir(self, user, folder=None):
        """The Maildir of user's INBOX, or of a folder (Maildir++: ".a.b"
        for "a/b", non-ASCII names in modified UTF-7)."""
        md = self.dir / "mail" / user / "Maildir"
        if folder is None or folder.upper() == "INBOX":
            return md
        import fakeimap
        return md / ("." + fakeimap.mutf7_encode(folder).replace("/", "."))

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

    def _write_msgs(self, user, msgs, new, folder=None):
        md = self.maildir(user, folder)
        if not md.exists():
            make_maildir(md)
            (md / "maildirfolder").touch()
            chown_tree(md, self.mail_uid, self.mail_gid)
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

    def add_messages(self, user, msgs, new=True, folder=None):
        """Add messages to the user's mailbox or a folder (new/ by
        default) as files: the quickest way, and Dovecot sees them at
        once (IDLE clients too).  A folder made this way exists for IMAP
        but is not subscribed; create_folder() first for that."""
        self._write_msgs(user, msgs, new=new, folder=folder)

    def mailbox(self, user, folder=None):
        """The messages the server still has for user, in the INBOX or a
        folder (list of bytes, LF line ends as stored)."""
        self.wait_idle()
        md = self.maildir(user, folder)
        if not md.is_dir():
            return []
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

    # ------------------------------------------------------------------
    # IMAP: folders, messages, UIDs (through doveadm and dovecot-lda,
    # which read this instance's configuration)

    def _need_imap(self):
        if not self.imap_enabled:
            raise tap.Skip("Dovecot's IMAP server is not installed "
                           "(dovecot-imapd)")

    def run_tool(self, argv, data=None, timeout=30):
        """Run a Dovecot program with this instance's configuration
        (argv[0]: "doveadm", "sievec", "dovecot-lda"...); its output
        (str), or DovecotError with what it said."""
        exe = find_tool(argv[0])
        if exe is None:
            raise tap.Skip(f"{argv[0]} is not installed")
        cmd = [exe, "-c", str(self.conf)] + [str(a) for a in argv[1:]]
        try:
            r = subprocess.run(cmd, input=data, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DovecotError(f"{' '.join(cmd)} did not finish within "
                               f"{timeout} s")
        out = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0:
            raise DovecotError(f"{' '.join(cmd)} failed ({r.returncode}):"
                               f"\n{out}" + self.log_tail(5))
        return out

    def doveadm(self, *args, data=None, timeout=30):
        return self.run_tool(["doveadm", *args], data=data, timeout=timeout)

    def create_folder(self, user, folder, subscribe=True):
        """Create (and subscribe) a folder; "a/b" makes a hierarchy."""
        self.doveadm("mailbox", "create", "-u", user,
                     *(["-s"] if subscribe else []), folder)

    def folders(self, user):
        """The user's folder names (str; INBOX included)."""
        return self.doveadm("mailbox", "list", "-u", user).splitlines()

    def deliver(self, user, msgs, folder="INBOX", via="save"):
        """Deliver messages (bytes or corpus.Message) one by one, as new
        mail: via "save" (doveadm save: straight into the folder) or
        "lda" (dovecot-lda -d user -m folder: the user's Sieve script,
        if any, decides)."""
        for m in msgs:
            data = m if isinstance(m, (bytes, bytearray)) else m.data
            if via == "save":
                self.doveadm("save", "-u", user, "-m", folder, data=data)
            elif via == "lda":
                self.run_tool(["dovecot-lda", "-d", user, "-m", folder,
                               "-f", "sender@maild-test.example"],
                              data=data)
            else:
                raise ValueError(f"via={via!r}")

    def messages(self, user, folder="INBOX"):
        """The folder's messages as Dovecot sees them, ascending UID:
        dicts with uid (int), flags (set of str), size (RFC822.SIZE),
        guid, message_id (None when there is none)."""
        out = self.doveadm("-f", "pager", "fetch", "-u", user,
                           "uid flags size.virtual guid hdr.message-id",
                           "mailbox", folder)
        recs = []
        for block in out.split("\f"):
            kv = {}
            for line in block.strip("\n").splitlines():
                k, _, v = line.partition(": ")
                kv[k.rstrip(":")] = v
            if "uid" not in kv:
                continue
            recs.append({"uid": int(kv["uid"]),
                         "flags": set(kv.get("flags", "").split()),
                         "size": int(kv.get("size.virtual") or 0),
                         "guid": kv.get("guid"),
                         "message_id": kv.get("hdr.message-id") or None})
        return sorted(recs, key=lambda r: r["uid"])

    def status(self, user, folder="INBOX"):
        """messages, uidnext, uidvalidity, unseen of a folder (ints)."""
        out = self.doveadm("-f", "flow", "mailbox", "status", "-u", user,
                           "messages uidnext uidvalidity unseen", folder)
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out)}

    def set_uidvalidity(self, user, folder, value=None):
        """Give a folder another UIDVALIDITY (default: the current one +
        1000), its messages keeping their UIDs: what a client must treat
        as "every UID I know is void".  Returns the new value."""
        if value is None:
            value = self.status(user, folder)["uidvalidity"] + 1000
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity",
                     value, folder)
        return value

    def reset_uids(self, user, folder="INBOX", uidvalidity=None):
        """Forget a folder's UIDs, as a rebuilt server does: its index
        and dovecot-uidlist are removed, Dovecot numbers the messages
        again from 1 under a new UIDVALIDITY (uidvalidity, or one above
        the old one).  Sessions that have it open should be gone (IMAP
        clients stopped) first.  Returns the new UIDVALIDITY."""
        old = self.status(user, folder)["uidvalidity"]
        md = self.maildir(user, folder)
        for p in md.iterdir():
            if p.name == "dovecot-uidlist" or \
                    p.name.startswith("dovecot.index"):
                p.unlink()
        new = self.status(user, folder)["uidvalidity"]
        if uidvalidity is not None or new <= old:
            new = self.set_uidvalidity(user, folder, uidvalidity or old + 1)
        return new

    def imap(self, user, starttls=False, timeout=20):
        """A logged-in imaplib client: IMAPS, or plain IMAP upgraded
        with STARTTLS; the test CA is trusted."""
        self._need_imap()
        if starttls:
            c = imaplib.IMAP4(self.host, self.imap_port, timeout=timeout)
            c.starttls(self.ssl_context())
        else:
            c = imaplib.IMAP4_SSL(self.host, self.imaps_port,
                                  ssl_context=self.ssl_context(),
                                  timeout=timeout)
        c.login(user, self.users[user])
        return c

    # ------------------------------------------------------------------
    # LMTP and Sieve

    def set_sieve(self, user, script, name="maildtest"):
        """Make script (str) the user's active Sieve script, checked with
        sievec first (DovecotError shows what it did not like)."""
        if not self.lmtp_enabled:
            raise DovecotError("set_sieve() needs Dovecot(..., lmtp=True)")
        home = self.home(user)
        sdir = home / "sieve"
        sdir.mkdir(exist_ok=True)
        path = sdir / f"{name}.sieve"
        path.write_text(script)
        check = self.dir / "run" / "sieve-check.svbin"
        try:
            self.run_tool(["sievec", path, check])
        finally:
            if check.exists():
                check.unlink()
        link = home / ".dovecot.sieve"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"sieve/{name}.sieve")
        for stale in (home / ".dovecot.svbin", sdir / f"{name}.svbin"):
            if stale.exists():
                stale.unlink()
        chown_tree(sdir, self.mail_uid, self.mail_gid)
        os.lchown(link, self.mail_uid, self.mail_gid)
        return path

    def lmtp_send(self, rcpts, data, sender="sender@maild-test.example",
                  tcp=False, timeout=20):
        """Deliver data (bytes) over LMTP (the unix socket, or the TCP
        port) to rcpts: a tiny LMTP client (RFC 2033).  Returns one
        (code, text) per recipient: the RCPT reply if refused, else
        the reply after DATA."""
        if not self.lmtp_enabled:
            raise DovecotError("lmtp_send() needs Dovecot(..., lmtp=True)")
        if tcp:
            s = socket.create_connection((self.host, self.lmtp_port),
                                         timeout=timeout)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(str(self.lmtp_socket))
        with s, s.makefile("rwb") as f:
            def reply():
                lines = []
                while True:
                    line = f.readline()
                    if not line:
                        raise DovecotError("LMTP connection closed: "
                                           f"{lines!r}")
                    lines.append(line.decode("utf-8", "replace").rstrip())
                    if line[3:4] != b"-":
                        return int(lines[-1][:3]), "\n".join(
                            x[4:] for x in lines)

            def cmd(line):
                f.write(line.encode() + b"\r\n")
                f.flush()
                return reply()
            reply()
            cmd("LHLO maild-test.example")
            code, text = cmd(f"MAIL FROM:<{sender}>")
            if code != 250:
                raise DovecotError(f"LMTP MAIL FROM: {code} {text}")
            results = [cmd(f"RCPT TO:<{r}>") for r in rcpts]
            if any(c == 250 for c, _ in results):
                code, text = cmd("DATA")
                if code != 354:
                    raise DovecotError(f"LMTP DATA: {code} {text}")
                body = data.replace(b"\r\n", b"\n").split(b"\n")
                if data.endswith(b"\n"):
                    body.pop()
                f.write(b"".join((b"." + ln if ln.startswith(b".") else ln)
                                 + b"\r\n" for ln in body) + b".\r\n")
                f.flush()
                results = [reply() if c == 250 else (c, t)
                           for c, t in results]
            cmd("QUIT")
        return results


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
