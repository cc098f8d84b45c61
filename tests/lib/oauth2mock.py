"""oauth2mock.py: a mock OAuth2 provider for the tests (stdlib only).

    with oauth2mock.Provider(certs.get()) as p:      # HTTPS on 127.0.0.1
        p.url("/token")             # https://127.0.0.1:PORT/token
        p.options(name="x")         # the maild.conf options of a custom
                                    # provider pointed at the mock
        rt = p.grant("user1")       # a refresh token, as --authorize gets
        p.expires_in = 5            # lifetime of the next access tokens

Endpoints (all HTTPS with the test CA's server certificate):

  POST /device        RFC 8628 device authorization: device_code,
                      user_code, verification_uri (/device/verify),
                      verification_uri_complete, expires_in, interval
  GET  /device/verify?user_code=C   the person approves (the test plays
                      them); ...&deny=1 declines
  GET  /authorize     the authorization code grant, auto-approving:
                      302 to redirect_uri?code=..&state=.. (the test
                      plays the browser and follows it to maild), or
                      ?error=access_denied if p.deny_authorize
  POST /token         grant_type refresh_token, authorization_code (PKCE
                      S256 checked: code_verifier against the
                      code_challenge) and device_code
                      (authorization_pending until approved, slow_down
                      when p.slow_down > 0, counting down)
  POST /introspect    RFC 7662 for Dovecot's oauth2 passdb: token=...
                      -> {"active": true, "username": ...} or
                      {"active": false}

Refresh tokens rotate on every use when p.rotate (the default), like
Microsoft's.  p.rotation says when the token they replace dies:
"strict": as soon as its successor is issued; "until-used": when the
successor (or an access token issued with it) is first used, so that a
client killed before it could store a new token still holds one that
works, but a client that used a new access token before storing the
refresh token that came with it is caught (its stored token is dead).
p.invalid_grant(rt) revokes a token (the next refresh gets
invalid_grant).  Faults for the token endpoint, taken in order from
p.faults (a list): 500, 502, 503 (that status, a JSON error), "hang"
(no answer until p.release() or the client goes), "drop" (close
without an answer), "invalid_grant".  p.hold_token() makes refreshes
wait (p.release_token() lets them go): the moment to kill a client.
Client authentication: p.client_id must match; with p.client_secret
set the client must send it; with p.public, a client that sends a
secret gets AADSTS700025.

Everything is recorded: p.requests (path, form, time), p.refreshes
(count), p.introspected (token, active), p.used_access (tokens the
introspection accepted), p.hanging (token requests hanging now).  Stop with p.close() (or the context manager).
"""

import base64
import hashlib
import itertools
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"
HANG_LIMIT = 120            # a hanging request gives up after this


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, provider, ctx):
        self.provider = provider
        self.ctx = ctx
        super().__init__((LOOPBACK, 0), _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(30)
        try:
            return self.ctx.wrap_socket(sock, server_side=True), addr
        except (ssl.SSLError, OSError):
            sock.close()
            raise


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):      # quiet
        pass

    def _form(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n > 0 else ""
        return {k: v[0] for k, v in urllib.parse.parse_qs(
            body, keep_blank_values=True).items()}

    def _send(self, status, obj=None, headers=None, body=None):
        if body is None:
            body = json.dumps(obj if obj is not None else {}).encode()
            ctype = "application/json"
        else:
            ctype = "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_POST(self):
        p = self.server.provider
        path = urllib.parse.urlsplit(self.path).path
        form = self._form()
        p._record(path, form)
        r = p._handle_post(path, form, self)
        if r is None:           # dropped or hung up
            self.close_connection = True
            return
        self._send(*r)

    def do_GET(self):
        p = self.server.provider
        u = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        p._record(u.path, q)
        status, obj, headers = p._handle_get(u.path, q)
        if obj is None and headers:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        self._send(status, obj, headers)


class Provider:
    def __init__(self, certs, client_id="maild-test-client",
                 client_secret=None, public=False, user="user1",
                 expires_in=3600, rotate=True, rotation="strict"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.public = public
        self.user = user
        self.expires_in = expires_in
        self.rotate = rotate
        self.rotation = rotation
        self.interval = 1
        self.device_expires_in = 120
        self.slow_down = 0
        self.deny_authorize = False
        self.faults = []
        self.lock = threading.RLock()
        self.requests = []
        self.introspected = []
        self.used_access = []
        self.refreshes = 0
        self.hanging = 0            # token requests hanging now
        self.refresh_tokens = {}    # rt -> {user, alive, parent}
        self.access_tokens = {}     # at -> {user, expires, rt}
        self.codes = {}             # code -> {user, redirect, challenge}
        self.devices = {}           # device_code -> {user_code, state}
        self._seq = itertools.count(1)
        self._release = threading.Event()
        self._hold = threading.Event()
        self._hold.set()
        self.holding = threading.Event()    # a refresh waits in hold
        self._closed = False
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*[str(x) for x in certs.server])
        self.ca = str(certs.ca)
        self.srv = _Server(self, ctx)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------
    def url(self, path):
        return f"https://{LOOPBACK}:{self.port}{path}"

    def options(self, device=True, scope="mail.read offline_access"):
        """maild.conf options for an account whose provider is the mock:
        oauth2-provider = custom, the client, its endpoints (the device
        endpoint only with device=True) and scope."""
        o = {"oauth2_provider": "custom",
             "oauth2_client_id": self.client_id,
             "oauth2_token_url": self.url("/token"),
             "oauth2_auth_url": self.url("/authorize"),
             "oauth2_scope": scope}
        if device:
            o["oauth2_device_url"] = self.url("/device")
        if self.client_secret is not None:
            o["oauth2_client_secret"] = self.client_secret
        return o

    def close(self):
        self._closed = True
        self._release.set()
        self._hold.set()
        self.srv.shutdown()
        self.srv.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ------------------------------------------------------------------
    # test controls

    def grant(self, user=None):
        """A fresh refresh token for user, as a completed authorization
        would give (for writing a token file by hand)."""
        with self.lock:
            return self._new_rt(user or self.user, None)

    def invalid_grant(self, rt=None):
        """Revoke rt (default: every refresh token)."""
        with self.lock:
            for k, v in self.refresh_tokens.items():
                if rt is None or k == rt:
                    v["alive"] = False

    def release(self):
        """Let hanging requests end (with a 503)."""
        self._release.set()

    def hold_token(self):
        self._hold.clear()

    def release_token(self):
        self._hold.set()

    def alive(self, rt):
        with self.lock:
            r = self.refresh_tokens.get(rt)
            return bool(r and r["alive"])

    def token_requests(self, grant_type=None):
        with self.lock:
            return [f for p, f, _ in self.requests if p == "/token" and
                    (grant_type is None or f.get("grant_type") ==
                     grant_type)]

    def check_access(self, token, user=None):
        """Is token a live access token (of user)?  Marks it used."""
        with self.lock:
            a = self.access_tokens.get(token)
            ok = bool(a and a["expires"] > time.time() and
                      (user is None or a["user"] == user))
            if ok:
                self.used_access.append(token)
                self._used(a["rt"])
            return ok

    # ------------------------------------------------------------------
    def _record(self, path, form):
        with self.lock:
            self.requests.append((path, dict(form), time.monotonic()))

    def _new_rt(self, user, parent):
        rt = f"rt-{next(self._seq)}-{secrets.token_urlsafe(12)}"
        self.refresh_tokens[rt] = {"user": user, "alive": True,
                                   "parent": parent}
        if parent is not None and self.rotation == "strict":
            self.refresh_tokens[parent]["alive"] = False
        return rt

    def _used(self, rt):
        """rt (or an access token issued with it) was used: in
        "until-used" rotation, the token it replaced dies now."""
        r = self.refresh_tokens.get(rt)
        if r and r["parent"] is not None:
            self.refresh_tokens[r["parent"]]["alive"] = False

    def _tokens(self, user, rt, rotate):
        at = f"at-{next(self._seq)}-{secrets.token_urlsafe(24)}"
        new_rt = self._new_rt(user, rt) if rotate else rt
        self.access_tokens[at] = {"user": user,
                                  "expires": time.time() + self.expires_in,
                                  "rt": new_rt}
        out = {"access_token": at, "token_type": "Bearer",
               "expires_in": self.expires_in, "scope": "mail"}
        if rotate or rt is None:
            out["refresh_token"] = new_rt
        return out

    def _client_error(self, form):
        if form.get("client_id") != self.client_id:
            return (400, {"error": "invalid_client",
                          "error_description": "unknown client"})
        if self.public and "client_secret" in form:
            return (401, {"error": "invalid_client",
                          "error_description": "AADSTS700025: Client is "
                          "public so neither 'client_assertion' nor "
                          "'client_secret' should be presented."})
        if self.client_secret is not None and \
                form.get("client_secret") != self.client_secret:
            return (401, {"error": "invalid_client",
                          "error_description": "bad client secret"})
        return None

    def _fault(self, handler):
        with self.lock:
            f = self.faults.pop(0) if self.faults else None
        if f is None:
            return None
        if isinstance(f, int):
            return (f, {"error": "server_error"})
        if f == "invalid_grant":
            return (400, {"error": "invalid_grant",
                          "error_description": "mock: revoked"})
        if f == "drop":
            return "drop"
        if f == "hang":
            with self.lock:
                self.hanging += 1
            deadline = time.monotonic() + HANG_LIMIT
            try:
                while not self._release.is_set() and not self._closed \
                        and time.monotonic() < deadline:
                    self._release.wait(0.1)
            finally:
                with self.lock:
                    self.hanging -= 1
            return (503, {"error": "server_error"})
        raise ValueError(f"unknown fault {f!r}")

    def _handle_post(self, path, form, handler):
        if path == "/introspect":
            tok = form.get("token", "")
            with self.lock:
                a = self.access_tokens.get(tok)
                ok = self.check_access(tok)
                self.introspected.append((tok, ok))
            if not ok:
                return (200, {"active": False})
            return (200, {"active": True, "username": a["user"],
                          "exp": int(a["expires"])})
        if path == "/device":
            err = self._client_error(form)
            if err:
                return err
            with self.lock:
                dc = secrets.token_urlsafe(16)
                uc = f"{secrets.randbelow(10**8):08d}"
                uc = uc[:4] + "-" + uc[4:]
                self.devices[dc] = {"user_code": uc, "state": "pending",
                                    "expires": time.time() +
                                    self.device_expires_in}
            return (200, {"device_code": dc, "user_code": uc,
                          "verification_uri": self.url("/device/verify"),
                          "verification_uri_complete":
                          self.url(f"/device/verify?user_code={uc}"),
                          "expires_in": self.device_expires_in,
                          "interval": self.interval})
        if path != "/token":
            return (404, {"error": "not_found"})
        f = self._fault(handler)
        if f == "drop":
            return None
        if f is not None:
            return f
        err = self._client_error(form)
        if err:
            return err
        gt = form.get("grant_type")
        if gt == "refresh_token":
            if not self._hold.is_set():
                self.holding.set()
                self._hold.wait(HANG_LIMIT)
                self.holding.clear()
            with self.lock:
                rt = form.get("refresh_token")
                r = self.refresh_tokens.get(rt)
                if not r or not r["alive"]:
                    return (400, {"error": "invalid_grant",
                                  "error_description": "AADSTS70000: the "
                                  "refresh token is not valid"})
                self._used(rt)
                self.refreshes += 1
                return (200, self._tokens(r["user"], rt, self.rotate))
        if gt == "authorization_code":
            with self.lock:
                c = self.codes.pop(form.get("code"), None)
            if c is None or c["redirect"] != form.get("redirect_uri"):
                return (400, {"error": "invalid_grant",
                              "error_description": "bad code or "
                              "redirect_uri"})
            v = form.get("code_verifier", "")
            if b64url(hashlib.sha256(v.encode()).digest()) != \
                    c["challenge"] or not 43 <= len(v) <= 128:
                return (400, {"error": "invalid_grant",
                              "error_description": "PKCE verification "
                              "failed"})
            with self.lock:
                return (200, self._tokens(c["user"], None, True))
        if gt == "urn:ietf:params:oauth:grant-type:device_code":
            with self.lock:
                d = self.devices.get(form.get("device_code"))
                if d is None:
                    return (400, {"error": "invalid_grant"})
                if time.time() > d["expires"]:
                    return (400, {"error": "expired_token"})
                if self.slow_down > 0:
                    self.slow_down -= 1
                    return (400, {"error": "slow_down"})
                if d["state"] == "pending":
                    return (400, {"error": "authorization_pending"})
                if d["state"] == "denied":
                    return (400, {"error": "access_denied"})
                if d["state"] == "done":
                    return (400, {"error": "invalid_grant",
                                  "error_description": "used already"})
                d["state"] = "done"
                return (200, self._tokens(self.user, None, True))
        return (400, {"error": "unsupported_grant_type"})

    def _handle_get(self, path, q):
        if path == "/device/verify":
            with self.lock:
                for d in self.devices.values():
                    if d["user_code"] == q.get("user_code"):
                        d["state"] = "denied" if q.get("deny") else \
                            "approved"
                        return (200, {"ok": True}, None)
            return (404, {"error": "no such code"}, None)
        if path == "/authorize":
            redirect = q.get("redirect_uri", "")
            if q.get("client_id") != self.client_id or \
                    not redirect.startswith("http://127.0.0.1:"):
                return (400, {"error": "invalid_request"}, None)
            if q.get("response_type") != "code" or \
                    q.get("code_challenge_method") != "S256" or \
                    not q.get("code_challenge"):
                return (400, {"error": "invalid_request",
                              "error_description": "PKCE S256 needed"},
                        None)
            state = q.get("state", "")
            if self.deny_authorize:
                loc = redirect + "?" + urllib.parse.urlencode(
                    {"error": "access_denied", "error_description":
                     "the user said no", "state": state})
                return (302, None, {"Location": loc})
            code = secrets.token_urlsafe(16)
            with self.lock:
                self.codes[code] = {"user": self.user,
                                    "redirect": redirect,
                                    "challenge": q["code_challenge"]}
            loc = redirect + "?" + urllib.parse.urlencode(
                {"code": code, "state": state})
            return (302, None, {"Location": loc})
        return (404, {"error": "not_found"}, None)
