#!/usr/bin/env python3
"""test_systemd.py: the systemd units and the sysusers.d entry (issue 5).

The units are generated from systemd/*.in as make does (@sbindir@: the
directory of the maild under test, @sysconfdir@: a temp dir), then:

  - systemd-analyze verify accepts the system and the user unit, with no
    warning about them (and does reject a broken unit, so it is working)
  - systemd-analyze security --offline=yes rates the system unit's
    exposure at 2.0 or less
  - systemd-sysusers creates the user "maild" from maild.sysusers in a
    scratch root
  - make install DESTDIR=... puts the system unit, the user unit and the
    sysusers file where configure said, with the paths substituted, and
    make uninstall removes them
  - both units stop restarting on a configuration error (exit 78)
  - ./configure --prefix=<home>/.local && make install, as an
    unprivileged user (nobody, when the tests run as root): succeeds,
    and everything lands under the prefix, units and sysusers.d entry in
    <prefix>/lib/...; configure --prefix=/usr still takes systemd's own
    directories, and --with-...=DIR / =no override

Without systemd-analyze (or systemd-sysusers) those tests are skipped: CI
installs systemd.  Nothing here talks to the running systemd.
"""

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import maildtest as mt  # noqa: E402
import tap         # noqa: E402

MAX_EXPOSURE = 2.0


def srcdir():
    return Path(os.environ.get("MAILD_SRCDIR") or mt.REPO)


def builddir():
    return Path(os.environ.get("MAILD_BUILDDIR") or mt.REPO)


def need(tool):
    exe = shutil.which(tool)
    if exe is None:
        raise tap.Skip(f"{tool} is not installed (package systemd); CI "
                       "installs it")
    return exe


def run(cmd, timeout=60, env=None, cwd=None):
    t = tap.current()
    e = dict(os.environ, LC_ALL="C", SYSTEMD_COLORS="0", SYSTEMD_PAGER="")
    # a make started from make check must not join the outer one
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        e.pop(k, None)
    e.update(env or {})
    try:
        r = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, env=e, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{cmd[0]} did not finish within {timeout} s")
    if t is not None:
        t.attach(" ".join(map(str, cmd[:3])),
                 f"$ {' '.join(map(str, cmd))}\n{r.stdout}"
                 f"[exit status {r.returncode}]")
    return r


def generate(t, sbindir=None, sysconfdir=None):
    """The units and sysusers file from systemd/*.in, substituted like
    Makefile.am does; returns {name: Path}."""
    sbindir = sbindir or str(Path(mt.require_maild()).resolve().parent)
    sysconfdir = sysconfdir or str(t.tmp / "etc")
    out = {}
    for name in ("maild.service", "maild-user.service", "maild.sysusers"):
        src = srcdir() / "systemd" / f"{name}.in"
        assert src.exists(), f"{src} is missing"
        text = src.read_text()
        text = text.replace("@sbindir@", sbindir).replace(
            "@sysconfdir@", sysconfdir)
        left = re.findall(r"@[a-z_]+@", text)
        assert not left, f"{name}: placeholders left: {left}"
        # each unit in a directory of its own, under its installed name
        sub = {"maild.service": "system", "maild-user.service": "user",
               "maild.sysusers": "sysusers"}[name]
        inst = {"maild-user.service": "maild.service",
                "maild.sysusers": "maild.conf"}.get(name, name)
        d = t.tmp / sub
        d.mkdir(exist_ok=True)
        (d / inst).write_text(text)
        out[name] = d / inst
    return out


def unit_settings(text):
    """[(section, key, value)] of a unit file."""
    out, sec = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sec = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.append((sec, k.strip(), v.strip()))
    return out


def about_us(output, paths):
    """Lines of systemd-analyze output that concern our files."""
    keys = [str(p) for p in paths] + ["maild"]
    return [ln for ln in output.splitlines() if any(k in ln for k in keys)]


@tap.test(timeout=120)
def test_units_verify(t):
    """systemd-analyze verify: both units load without error or warning."""
    exe = need("systemd-analyze")
    units = generate(t)
    # the system unit
    sysu = units["maild.service"]
    r = run([exe, "verify", "--man=no", sysu])
    problems = about_us(r.stdout, [sysu])
    assert r.returncode == 0 and not problems, \
        f"system unit: exit {r.returncode}:\n{r.stdout}"
    # the user unit, with a private runtime dir for the user manager
    rt = t.tmp / "runtime"
    rt.mkdir(mode=0o700)
    useru = units["maild-user.service"]
    r = run([exe, "--user", "verify", "--man=no", useru],
            env={"XDG_RUNTIME_DIR": str(rt)})
    problems = about_us(r.stdout, [useru])
    assert r.returncode == 0 and not problems, \
        f"user unit: exit {r.returncode}:\n{r.stdout}"
    # and verify does catch a broken unit (not a no-op here)
    bad = t.tmp / "broken" / "maild.service"
    bad.parent.mkdir()
    bad.write_text(sysu.read_text().replace(
        str(Path(mt.maild_bin()).resolve().parent), "/nonexistent/dir"))
    r = run([exe, "verify", "--man=no", bad])
    assert r.returncode != 0, "verify accepted an ExecStart that does not " \
        "exist: this systemd-analyze checks nothing"


@tap.test(timeout=60)
def test_units_content(t):
    """What maild(8) says about the units: Type=notify, maild -d -f the
    configured file, reload by SIGHUP, the system unit runs as maild with
    its state directory, the user unit reads ~/.config/maild/maild.conf."""
    units = generate(t, sbindir="/opt/x/sbin", sysconfdir="/opt/x/etc")
    s = unit_settings(units["maild.service"].read_text())
    u = unit_settings(units["maild-user.service"].read_text())
    sd = {(sec, k): v for sec, k, v in s}
    ud = {(sec, k): v for sec, k, v in u}
    for name, d in (("system", sd), ("user", ud)):
        assert d.get(("Service", "Type")) == "notify", f"{name}: Type"
        assert d.get(("Service", "NotifyAccess")) in ("main", None), name
        assert re.search(r"kill -HUP \$MAINPID$",
                         d.get(("Service", "ExecReload"), "")), \
            f"{name}: ExecReload {d.get(('Service', 'ExecReload'))!r}"
        assert d.get(("Service", "StateDirectory")) == "maild", name
        tmo = d.get(("Service", "TimeoutStopSec"), "90s")
        secs = int(re.match(r"(\d+)", tmo).group(1)) * (
            60 if tmo.endswith("min") else 1)
        assert secs > 20, f"{name}: TimeoutStopSec={tmo} is shorter " \
            "than maild's 20 s stop grace time"
    assert sd[("Service", "ExecStart")] == \
        "/opt/x/sbin/maild -d -f /opt/x/etc/maild.conf", \
        sd[("Service", "ExecStart")]
    assert sd.get(("Service", "User")) == "maild", "system unit: User="
    assert sd.get(("Install", "WantedBy")) == "multi-user.target"
    assert ud[("Service", "ExecStart")] == \
        "/opt/x/sbin/maild -d -f %E/maild/maild.conf", \
        ud[("Service", "ExecStart")]
    assert ("Service", "User") not in ud, "user unit sets User="
    assert ud.get(("Install", "WantedBy")) == "default.target"
    su = units["maild.sysusers"].read_text()
    assert re.search(r"^u\s+maild\s", su, re.M), su


@tap.test(timeout=60)
def test_system_unit_exposure(t):
    """systemd-analyze security --offline=yes: overall exposure <= 2.0."""
    exe = need("systemd-analyze")
    units = generate(t)
    r = run([exe, "security", "--offline=yes", "--no-pager",
             units["maild.service"]])
    m = re.search(r"Overall exposure level for maild\.service: "
                  r"([0-9]+\.[0-9]+)", r.stdout)
    assert m, f"no exposure level in the output (exit {r.returncode}):\n" \
        f"{r.stdout[-2000:]}"
    score = float(m.group(1))
    t.note(f"exposure {score}")
    bad = [ln for ln in r.stdout.splitlines() if ln.startswith("✗")]
    assert score <= MAX_EXPOSURE, (
        f"exposure {score} > {MAX_EXPOSURE}; unprotected:\n"
        + "\n".join(bad[:30]))
    assert r.returncode == 0, f"exit {r.returncode}"


@tap.test(timeout=60)
def test_sysusers_creates_maild(t):
    """systemd-sysusers, in a scratch root, makes the user and group maild
    with /var/lib/maild as home and no login shell."""
    exe = need("systemd-sysusers")
    units = generate(t)
    root = t.tmp / "root"
    (root / "etc").mkdir(parents=True)
    r = run([exe, f"--root={root}", units["maild.sysusers"]])
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout}"
    pw = (root / "etc" / "passwd").read_text()
    gr = (root / "etc" / "group").read_text()
    m = re.search(r"^maild:x:(\d+):(\d+):[^:]*:([^:]*):(.*)$", pw, re.M)
    assert m, f"no user maild:\n{pw}"
    assert 0 < int(m.group(1)) < 1000, f"not a system uid: {m.group(0)}"
    assert m.group(3) == "/var/lib/maild", m.group(0)
    assert "nologin" in m.group(4) or m.group(4) in ("", "/bin/false"), \
        m.group(0)
    assert re.search(r"^maild:x:\d+:", gr, re.M), gr


def make_vars(path):
    """Variables of a generated Makefile, expanded ($(x) and ${x})."""
    raw = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*) = ?(.*)$", line)
        if m:
            raw[m.group(1)] = m.group(2).strip()

    def expand(v, depth=0):
        if depth > 20:
            return v
        return re.sub(r"\$[({]([A-Za-z_][A-Za-z0-9_]*)[)}]",
                      lambda m: expand(raw.get(m.group(1), ""), depth + 1),
                      v)
    return {k: expand(v) for k, v in raw.items()}


@tap.test(timeout=400)
def test_make_install(t):
    """make install DESTDIR=...: the system unit, the user unit and the
    sysusers file in the directories configure chose, paths substituted;
    make uninstall removes them."""
    b = builddir()
    mk = b / "Makefile"
    if not mk.exists():
        t.skip(f"{mk} does not exist (not configured)")
    if shutil.which("make") is None:
        t.skip("make is not installed")
    v = make_vars(mk)
    sysdir, userdir, susdir = (v.get("systemdsystemunitdir", ""),
                               v.get("systemduserunitdir", ""),
                               v.get("sysusersdir", ""))
    t.note(f"system {sysdir!r}, user {userdir!r}, sysusers {susdir!r}, "
           f"sbindir {v.get('sbindir')!r}, sysconfdir {v.get('sysconfdir')!r}")
    if not (sysdir and userdir and susdir):
        t.skip("configure found no systemd directories (no systemd.pc); "
               "use --with-systemdsystemunitdir etc.")
    dest = t.tmp / "dest"
    r = run(["make", "-C", b, "install", f"DESTDIR={dest}"], timeout=360)
    assert r.returncode == 0, f"make install: exit {r.returncode}\n" \
        f"{r.stdout[-3000:]}"
    sbindir, sysconfdir = v["sbindir"], v["sysconfdir"]
    assert (dest / sbindir.lstrip("/") / "maild").is_file(), \
        f"no {sbindir}/maild"
    sysu = dest / sysdir.lstrip("/") / "maild.service"
    useru = dest / userdir.lstrip("/") / "maild.service"
    sus = dest / susdir.lstrip("/") / "maild.conf"
    for p in (sysu, useru, sus):
        assert p.is_file(), f"make install did not create {p}"
        text = p.read_text()
        assert not re.search(r"@[a-z_]+@", text), f"{p}: placeholders left"
        mode = p.stat().st_mode & 0o777
        assert mode == 0o644, f"{p}: mode {mode:o}, expected 644"
    st = sysu.read_text()
    assert f"ExecStart={sbindir}/maild -d -f {sysconfdir}/maild.conf" in st, \
        f"installed system unit:\n{st}"
    assert "User=maild" in st
    ut = useru.read_text()
    assert f"ExecStart={sbindir}/maild -d -f %E/maild/maild.conf" in ut, \
        f"installed user unit:\n{ut}"
    assert "User=" not in ut
    assert re.search(r"^u\s+maild\s", sus.read_text(), re.M)
    r = run(["make", "-C", b, "uninstall", f"DESTDIR={dest}"], timeout=120)
    assert r.returncode == 0, f"make uninstall: exit {r.returncode}"
    left = [p for p in (sysu, useru, sus) if p.exists()]
    assert not left, f"make uninstall left {left}"


@tap.test(timeout=60)
def test_units_no_restart_on_config_error(t):
    """A configuration error (exit 78, EX_CONFIG) will not go away by
    itself: both units must not restart maild every RestartSec for it."""
    units = generate(t, sbindir="/opt/x/sbin", sysconfdir="/opt/x/etc")
    for name in ("maild.service", "maild-user.service"):
        sets = unit_settings(units[name].read_text())
        prevent = [v for sec, k, v in sets
                   if sec == "Service" and k == "RestartPreventExitStatus"]
        assert prevent and "78" in " ".join(prevent).split(), \
            f"{name}: RestartPreventExitStatus={prevent!r}, expected 78"
        restart = [v for sec, k, v in sets
                   if sec == "Service" and k == "Restart"]
        assert restart == ["on-failure"], f"{name}: Restart={restart!r}"


# What a copy of the source tree needs to configure, build and install;
# the build products of an in-place build are left out.
SOURCE_ENTRIES = ("configure", "configure.ac", "Makefile.am", "Makefile.in",
                  "aclocal.m4", "config.h.in", "README", "LICENSE",
                  "build-aux", "m4", "src", "man", "etc", "systemd", "tests")
BUILD_PRODUCTS = ("*.o", "*.a", ".deps", ".dirstamp", "__pycache__", "*.log",
                  "*.trs", "*.service", "maild.sysusers")


def copy_sources(dest):
    """A copy of the source tree, readable by everyone, timestamps kept
    (so that make does not try to run automake)."""
    top = srcdir()
    if not (top / "configure").exists():
        raise tap.Skip(f"{top}/configure does not exist (run autoreconf)")
    dest.mkdir()
    for name in SOURCE_ENTRIES:
        src = top / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True,
                            ignore=shutil.ignore_patterns(*BUILD_PRODUCTS))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / "src" / "maild").unlink(missing_ok=True)
    for p in [dest, *dest.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))


def unprivileged(t, *dirs):
    """The command prefix that runs a command as an unprivileged user, and
    that user's uid: nobody when we are root (dirs are given to it), else
    ourselves."""
    if os.geteuid() != 0:
        return [], os.geteuid()
    exe = shutil.which("setpriv")
    if exe is None:
        t.skip("setpriv is not installed (package util-linux)")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        t.skip("there is no user nobody")
    for d in dirs:
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return [exe, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
            "--clear-groups", "--"], pw.pw_uid


def files_under(d):
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*")
                  if not p.is_dir())


@tap.test(timeout=900)
def test_install_prefix_unprivileged(t):
    """As a user without root (nobody, under CI's root):
    ./configure --prefix=$HOME/.local && make && make install succeeds and
    writes nothing outside the prefix: the units go to
    <prefix>/lib/systemd/{system,user}, the sysusers.d entry to
    <prefix>/lib/sysusers.d.  make uninstall removes every file."""
    if shutil.which("make") is None:
        t.skip("make is not installed")
    os.chmod(t.tmp, 0o755)
    src = t.tmp / "src"
    copy_sources(src)
    home = t.tmp / "home"
    build = t.tmp / "build"
    dest = t.tmp / "dest"
    for d in (home, build, dest):
        d.mkdir()
    as_user, uid = unprivileged(t, home, build, dest)
    prefix = home / ".local"
    env = {"HOME": str(home), "TMPDIR": str(build)}

    r = run(as_user + [src / "configure", f"--prefix={prefix}"],
            timeout=300, env=env, cwd=build)
    assert r.returncode == 0, f"configure: exit {r.returncode}\n" \
        f"{r.stdout[-3000:]}"
    r = run(as_user + ["make", "-j2"], timeout=600, env=env, cwd=build)
    assert r.returncode == 0, f"make: exit {r.returncode}\n" \
        f"{r.stdout[-3000:]}"

    # every file make install writes is under the prefix (DESTDIR shows
    # where each one goes, wherever that is)
    r = run(as_user + ["make", "install", f"DESTDIR={dest}"], timeout=300,
            env=env, cwd=build)
    assert r.returncode == 0, f"make install DESTDIR: exit {r.returncode}" \
        f"\n{r.stdout[-3000:]}"
    staged = files_under(dest)
    inside = str(prefix).lstrip("/") + "/"
    outside = [f for f in staged if not f.startswith(inside)]
    assert staged and not outside, \
        f"make install writes outside --prefix={prefix}: {outside}"

    # and the real thing, without DESTDIR, as that user
    r = run(as_user + ["make", "install"], timeout=300, env=env, cwd=build)
    assert r.returncode == 0, f"make install as uid {uid}: exit " \
        f"{r.returncode}\n{r.stdout[-3000:]}"
    got = files_under(prefix)
    t.note("installed: " + " ".join(got))
    assert got == [f[len(inside):] for f in staged], \
        f"installed {got}, DESTDIR run staged {staged}"
    want = {"sbin/maild": None,
            "share/man/man8/maild.8": None,
            "share/man/man5/maild.conf.5": None,
            "share/doc/maild/examples/maild.conf": None,
            "lib/systemd/system/maild.service":
                f"ExecStart={prefix}/sbin/maild -d -f {prefix}/etc/maild.conf",
            "lib/systemd/user/maild.service":
                f"ExecStart={prefix}/sbin/maild -d -f %E/maild/maild.conf",
            "lib/sysusers.d/maild.conf": "u maild"}
    for f, text in want.items():
        p = prefix / f
        assert p.is_file(), f"no {p}"
        assert p.stat().st_uid == uid, f"{p} not owned by uid {uid}"
        if text is not None:
            assert text in p.read_text(), f"{p}:\n{p.read_text()}"

    r = run(as_user + ["make", "uninstall"], timeout=300, env=env, cwd=build)
    assert r.returncode == 0, f"make uninstall: exit {r.returncode}"
    left = files_under(prefix)
    assert not left, f"make uninstall left {left}"


@tap.test(timeout=300)
def test_configure_systemd_dirs(t):
    """--prefix=/usr: systemd's own directories (its pkg-config file);
    --with-...=DIR puts a file there, =no does not install it."""
    top = srcdir()
    if not (top / "configure").exists():
        t.skip(f"{top}/configure does not exist (run autoreconf)")
    if shutil.which("pkg-config") is None:
        t.skip("pkg-config is not installed")
    cases = [
        (["--prefix=/usr"], {
            k: run(["pkg-config", f"--variable={k}", "systemd"]
                   ).stdout.strip() or f"/usr/lib/{sub}"
            for k, sub in (("systemdsystemunitdir", "systemd/system"),
                           ("systemduserunitdir", "systemd/user"),
                           ("sysusersdir", "sysusers.d"))}),
        (["--prefix=/opt/m", "--with-systemdsystemunitdir=/etc/sys",
          "--with-systemduserunitdir=no", "--with-sysusersdir=/x/s"],
         {"systemdsystemunitdir": "/etc/sys", "systemduserunitdir": "",
          "sysusersdir": "/x/s"}),
    ]
    for i, (args, want) in enumerate(cases):
        d = t.tmp / f"b{i}"
        d.mkdir()
        # configure alone is enough: the directories are in the Makefile
        r = run([top / "configure", "--disable-dependency-tracking"] + args,
                timeout=240, cwd=d)
        assert r.returncode == 0, f"configure {args}: exit {r.returncode}" \
            f"\n{r.stdout[-3000:]}"
        v = make_vars(d / "Makefile")
        got = {k: v.get(k, "") for k in want}
        assert got == want, f"configure {' '.join(args)}: {got}, " \
            f"expected {want}"


if __name__ == "__main__":
    tap.main()
