"""tap.py: a tiny TAP (Test Anything Protocol) runner for maild's tests.

Usage in a test file:

    import tap

    @tap.test                        # or just name the function test_*
    def fetch_works(t):
        t.tmp                        # a fresh temp dir (pathlib.Path)
        t.note("something useful")   # diagnostic, printed if the test fails
        t.skip("no dovecot")         # ends the test as "ok N - ... # SKIP"
        assert ...

    @tap.test(timeout=300, name="a longer name")
    def slow(t): ...

    if __name__ == "__main__":
        tap.main(fixture=make_server)   # fixture: optional, see main()

Output: "ok N - name" / "not ok N - name", "# " diagnostic lines
(traceback, notes, the last lines of the outputs attached with
t.attach()), then the plan "1..N".  Exit status 1 if any test failed.

Environment:
  MAILD_KEEP_TMP=1    keep every temp dir (its path is printed)
  MAILD_TEST_ONLY=re  run only the tests whose name matches the regex
  MAILD_TEST_TIMEOUT  default per-test timeout in seconds (120)
"""

import contextlib
import inspect
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["test", "main", "Skip", "TestTimeout", "current", "mkdtemp",
           "keep_tmp", "diag"]

_registry = []          # (name, func, options), in registration order
_current = None         # the running test's context

DEFAULT_TIMEOUT = float(os.environ.get("MAILD_TEST_TIMEOUT", "120"))


class Skip(Exception):
    """Raised (by t.skip() or by anyone) to skip the running test."""


class TestTimeout(Exception):
    """The running test exceeded its time limit."""


def keep_tmp():
    return os.environ.get("MAILD_KEEP_TMP", "") not in ("", "0")


def mkdtemp(prefix="maild-test-"):
    """A fresh directory under /tmp (mode 0700)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def rmtree(path):
    """Remove a temp dir, also files made read-only by a test."""
    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)


def diag(text):
    """Print text as TAP diagnostic lines ("# ...")."""
    for line in str(text).splitlines() or [""]:
        print("# " + line)
    sys.stdout.flush()


def _tail(text, n):
    lines = text.splitlines()
    if len(lines) > n:
        return [f"... ({len(lines) - n} earlier lines)"] + lines[-n:]
    return lines


class Context:
    """What a test function receives."""

    def __init__(self, name, number, fixture):
        self.name = name
        self.number = number
        self.fx = fixture           # the value of main()'s fixture, or None
        self._tmp = None
        self._notes = []
        self._attachments = {}      # label -> text (latest wins)
        self._cleanups = []

    @property
    def tmp(self):
        """A fresh temp dir for this test (created on first use)."""
        if self._tmp is None:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name)[:40].strip("-")
            self._tmp = mkdtemp(prefix=f"maild-test-{slug}-")
        return self._tmp

    def note(self, msg):
        """A diagnostic, printed only if the test fails (or always, with
        MAILD_TEST_VERBOSE=1)."""
        self._notes.append(str(msg))
        if os.environ.get("MAILD_TEST_VERBOSE"):
            diag(msg)

    def attach(self, label, text):
        """Attach (the latest version of) an output, e.g. maild's stderr;
        its last lines are printed if the test fails."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self._attachments[label] = text

    def defer(self, func, *args, **kw):
        """Run func(*args, **kw) when the test ends (LIFO), pass or fail."""
        self._cleanups.append((func, args, kw))

    def skip(self, reason):
        raise Skip(reason)

    def _run_cleanups(self):
        errors = []
        while self._cleanups:
            func, args, kw = self._cleanups.pop()
            try:
                func(*args, **kw)
            except Exception:
                errors.append(traceback.format_exc())
        return errors


def current():
    """The running test's Context (None outside a test)."""
    return _current


def test(func=None, *, name=None, timeout=None, skip=None):
    """Register a test function.  Usable bare (@tap.test) or with options:
    name (default: the function name without 'test_'), timeout in seconds,
    skip (a reason string, or a callable returning a reason or None)."""
    def register(f):
        _registry.append((name or _default_name(f), f,
                          {"timeout": timeout, "skip": skip}))
        f._tap_registered = True
        return f
    if func is not None:
        return register(func)
    return register


def _default_name(f):
    n = f.__name__
    return n[5:] if n.startswith("test_") else n


def _collect(module):
    """Registered tests, plus test_* functions of module not registered."""
    tests = list(_registry)
    if module is not None:
        extra = []
        for n, f in vars(module).items():
            if (n.startswith("test_") and inspect.isfunction(f)
                    and not getattr(f, "_tap_registered", False)
                    and f.__module__ == module.__name__):
                extra.append((f.__code__.co_firstlineno, n, f))
        for _, n, f in sorted(extra):
            tests.append((_default_name(f), f, {"timeout": None,
                                               "skip": None}))
    return tests


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def _format_failure(exc_info):
    etype, value, tb = exc_info
    if etype is AssertionError:
        # assertion message first, then where it happened
        lines = [f"AssertionError: {value}" if str(value)
                 else "AssertionError"]
        frames = traceback.extract_tb(tb)
        for fr in frames[-3:]:
            lines.append(f"  at {os.path.basename(fr.filename)}:{fr.lineno}"
                         f" in {fr.name}: {fr.line}")
        return "\n".join(lines)
    return "".join(traceback.format_exception(etype, value, tb)).rstrip()


def _run_one(number, name, func, opts, fixture):
    global _current
    ctx = Context(name, number, fixture)
    _current = ctx
    skip = opts.get("skip")
    if callable(skip):
        skip = skip()
    if skip:
        print(f"ok {number} - {name} # SKIP {skip}")
        sys.stdout.flush()
        _current = None
        return True
    limit = opts.get("timeout") or DEFAULT_TIMEOUT
    status, failure, skip_reason = "ok", None, None
    started = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        func(ctx)
    except Skip as e:
        skip_reason = str(e) or "skipped"
    except BaseException as e:  # noqa: B902 - a test may raise anything
        if isinstance(e, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, 0)
            ctx._run_cleanups()
            raise
        status = "not ok"
        failure = _format_failure(sys.exc_info())
        if isinstance(e, TestTimeout):
            failure = f"timed out after {limit:.0f} s\n" + failure
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # cleanups get their own bounded time
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 60)
    try:
        cleanup_errors = ctx._run_cleanups()
    except TestTimeout:
        cleanup_errors = ["cleanup timed out after 60 s"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if cleanup_errors and status == "ok" and skip_reason is None:
        status = "not ok"
        failure = "cleanup failed:\n" + "\n".join(cleanup_errors)
    elapsed = time.monotonic() - started
    _current = None

    try:
        if skip_reason is not None and status == "ok":
            print(f"ok {number} - {name} # SKIP {skip_reason}")
        else:
            print(f"{status} {number} - {name}")
        if status != "ok":
            diag(failure)
            for n in ctx._notes:
                diag(n)
            for label, text in ctx._attachments.items():
                diag(f"--- last lines of {label}:")
                for line in _tail(text, 25):
                    diag("    " + line)
            for e in cleanup_errors:
                diag(e)
        diag(f"{name}: {elapsed:.1f} s")
        sys.stdout.flush()
    finally:
        if ctx._tmp is not None:
            if keep_tmp() or (status != "ok" and
                              os.environ.get("MAILD_KEEP_FAILED_TMP")):
                diag(f"kept temp dir {ctx._tmp}")
            else:
                rmtree(ctx._tmp)
    return status == "ok"


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(fixture=None, module=None):
    """Run the tests and exit.  fixture: a callable returning a context
    manager (e.g. a running server) shared by all tests as t.fx.  If it
    raises Skip, the whole file is skipped ("1..0 # SKIP reason"); if it
    fails otherwise, "Bail out!" is printed and the exit status is 1."""
    if module is None:
        module = sys.modules.get("__main__")
    tests = _collect(module)
    only = os.environ.get("MAILD_TEST_ONLY")
    if only:
        tests = [t for t in tests if re.search(only, t[0])]
    # A SIGTERM (e.g. from make's timeout) still runs cleanups.
    signal.signal(signal.SIGTERM, _sigterm)
    failed = 0
    n = 0
    started = time.monotonic()
    stack = contextlib.ExitStack()
    try:
        fx = None
        if fixture is not None:
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, 300)
            try:
                fx = stack.enter_context(fixture())
            except Skip as e:
                signal.setitimer(signal.ITIMER_REAL, 0)
                print(f"1..0 # SKIP {e}")
                sys.exit(0)
            except BaseException:
                signal.setitimer(signal.ITIMER_REAL, 0)
                print("Bail out! fixture setup failed")
                diag(traceback.format_exc())
                sys.stdout.flush()
                sys.exit(1)
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            for name, func, opts in tests:
                n += 1
                if not _run_one(n, name, func, opts, fx):
                    failed += 1
        except KeyboardInterrupt:
            print("Bail out! interrupted")
            sys.stdout.flush()
            raise SystemExit(1)
    finally:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, 120)
        try:
            stack.close()
        except BaseException:
            failed += 1
            diag("fixture teardown failed:\n" + traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    print(f"1..{n}")
    diag(f"{n} tests, {failed} failed, {time.monotonic() - started:.1f} s")
    sys.stdout.flush()
    sys.exit(1 if failed else 0)
