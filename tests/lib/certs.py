"""certs.py: test certificates, made with the openssl command line tool.

    c = certs.make(directory)       # or certs.get() for a per-process cache
    c.ca             test CA certificate (what clients should trust)
    c.server         (cert, key) signed by the CA for DNS:localhost,
                     IP:127.0.0.1, IP:::1
    c.wrong_host     (cert, key) signed by the CA, only DNS:wrong.example
    c.wrong_ip       (cert, key) signed by the CA, DNS:wrong.example,
                     IP:192.0.2.1, IP:2001:db8::1 (documentation
                     addresses, never connected to)
    c.self_signed    (cert, key) self-signed, for localhost/127.0.0.1/::1
    c.expired        (cert, key) signed by the CA, right names, expired
                     in 2020
    c.not_yet_valid  (cert, key) signed by the CA, valid from 2100 on
    c.other_ca       an unrelated CA certificate (clients given this one
                     must refuse c.server)
    c.other_server   (cert, key) signed by the unrelated CA, right names

Keys are EC P-256 (fast to generate).  Works with OpenSSL 3.0 (Debian 12):
certificates with chosen validity dates are made with "openssl ca",
which takes -startdate/-enddate (x509 -req has no -not_after in 3.0).
"""

import os
import subprocess
import threading
from pathlib import Path

import tap

NAMES = ("localhost",)
IPS = ("127.0.0.1", "::1")


class CertError(Exception):
    pass


def _openssl(args, cwd, timeout=60):
    try:
        r = subprocess.run(["openssl"] + list(args), cwd=cwd,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout)
    except FileNotFoundError:
        raise tap.Skip("the openssl command is not installed")
    if r.returncode != 0:
        raise CertError("openssl " + " ".join(args) + " failed:\n" + r.stderr)
    return r.stdout


_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def _san(names, ips):
    return ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])


def _make_ca(d, prefix, cn):
    _openssl(["req", "-x509", "-nodes", *_EC, "-sha256", "-days", "3650",
              "-subj", f"/CN={cn}", "-keyout", f"{prefix}.key",
              "-out", f"{prefix}.pem",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-addext", "subjectKeyIdentifier=hash"], cwd=d)
    os.chmod(d / f"{prefix}.key", 0o600)
    # what "openssl ca" needs
    cadir = d / f"{prefix}.db"
    cadir.mkdir(exist_ok=True)
    (cadir / "index.txt").write_text("")
    (cadir / "serial").write_text("1000\n")
    (cadir / "newcerts").mkdir(exist_ok=True)
    (d / f"{prefix}.cnf").write_text(f"""\
[ ca ]
default_ca = testca

[ testca ]
dir = {cadir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/newcerts
certificate = {d / (prefix + '.pem')}
private_key = {d / (prefix + '.key')}
default_md = sha256
default_days = 3650
policy = anything
unique_subject = no
copy_extensions = none
email_in_dn = no

[ anything ]
commonName = supplied

[ server_ext ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = ${{ENV::MAILD_TEST_SAN}}
""")
    return d / f"{prefix}.pem"


def _make_leaf(d, name, ca_prefix, names=NAMES, ips=IPS, startdate=None,
               enddate=None):
    """A server certificate signed by the CA ca_prefix, with openssl ca."""
    key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    cn = names[0] if names else ips[0]
    _openssl(["req", "-new", "-nodes", *_EC, "-subj", f"/CN={cn}",
              "-keyout", key.name, "-out", csr.name], cwd=d)
    os.chmod(key, 0o600)
    args = ["ca", "-batch", "-config", f"{ca_prefix}.cnf", "-extensions",
            "server_ext", "-notext", "-in", csr.name, "-out", crt.name]
    if startdate:
        args += ["-startdate", startdate]
    if enddate:
        args += ["-enddate", enddate]
    else:
        args += ["-days", "3650"]
    env = dict(os.environ, MAILD_TEST_SAN=_san(names, ips))
    try:
        r = subprocess.run(["openssl"] + args, cwd=d, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    except FileNotFoundError:
        raise tap.Skip("the openssl command is not installed")
    if r.returncode != 0:
        raise CertError("openssl " + " ".join(args) + " failed:\n" + r.stderr)
    return crt, key


def _make_self_signed(d, name, names=NAMES, ips=IPS):
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl(["req", "-x509", "-nodes", *_EC, "-sha256", "-days", "3650",
              "-subj", f"/CN={names[0]}", "-keyout", key.name,
              "-out", crt.name,
              "-addext", "basicConstraints=critical,CA:FALSE",
              "-addext", "keyUsage=critical,digitalSignature",
              "-addext", "extendedKeyUsage=serverAuth",
              "-addext", f"subjectAltName={_san(names, ips)}"], cwd=d)
    os.chmod(key, 0o600)
    return crt, key


class Certs:
    def __init__(self, d):
        self.dir = Path(d)


def make(d):
    """Generate the whole set into directory d (created if needed)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    c = Certs(d)
    c.ca = _make_ca(d, "ca", "maild test CA")
    c.other_ca = _make_ca(d, "other-ca", "unrelated test CA")
    c.server = _make_leaf(d, "server", "ca")
    c.wrong_host = _make_leaf(d, "wrong-host", "ca", names=("wrong.example",),
                              ips=())
    c.wrong_ip = _make_leaf(d, "wrong-ip", "ca", names=("wrong.example",),
                            ips=("192.0.2.1", "2001:db8::1"))
    c.expired = _make_leaf(d, "expired", "ca", startdate="20190101000000Z",
                           enddate="20200101000000Z")
    c.not_yet_valid = _make_leaf(d, "not-yet-valid", "ca",
                                 startdate="21000101000000Z",
                                 enddate="21010101000000Z")
    c.other_server = _make_leaf(d, "other-server", "other-ca")
    c.self_signed = _make_self_signed(d, "self-signed")
    # readable by unprivileged server processes (Dovecot's login user
    # reads the cert through the master, but be lenient)
    os.chmod(d, 0o755)
    for p in d.iterdir():
        if p.suffix in (".pem", ".crt"):
            os.chmod(p, 0o644)
    return c


_cache = None
_cache_lock = threading.Lock()


def get():
    """The certificate set of this process, made on first use in a temp dir
    that is removed at exit (unless MAILD_KEEP_TMP=1)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            import atexit
            d = tap.mkdtemp(prefix="maild-certs-")
            os.chmod(d, 0o755)
            _cache = make(d)
            if not tap.keep_tmp():
                atexit.register(tap.rmtree, d)
        return _cache
