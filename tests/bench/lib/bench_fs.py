"""A private file system for the mailboxes, so that file-creation costs are
the clients' own and not an artefact of the host's file system.

Why: every run deletes and creates thousands of files (the server mailbox
is reset, the previous Maildir removed).  On an ext4 without a journal
(such as this project's development VM's root file system), ext4 refuses
to reuse an inode deleted less than 60-300 s earlier and scans past each
of them when it allocates a new one (ext4 recently_deleted()), so creating
a file gets slower the more files anybody deleted in the last minutes: on
the VM, maild's kernel time for S1 grew from 0.1 s to 0.9 s over a few
consecutive runs.  A fresh journaled ext4 (what mkfs.ext4 makes by default,
as on most installed systems) in a loop-mounted image file has no such
effect and no other tenant.

Modes:
  loop   sparse image file + mkfs.ext4 (journaled) + mount -o loop (root)
  tmpfs  mount -t tmpfs (root); no disk at all, so fsync costs nothing
  plain  no mount: use the scratch directory as it is
  auto   loop if we are root and it works, else plain
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench_common import log


def _run(cmd, timeout=120):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, timeout=timeout)


def describe(path):
    """'fstype (options) on source' of the file system holding path."""
    path = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                src, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
                    if best is None or len(mnt) > len(best[1]):
                        best = (src, mnt, fstype, opts)
    except OSError:
        return "?"
    if not best:
        return "?"
    src, mnt, fstype, opts = best
    extra = ""
    if fstype == "ext4":
        dev = os.path.basename(os.path.realpath(src)) if src.startswith("/") else src
        journaled = any(e.startswith(dev + "-") for e in
                        (os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2")
                         else []))
        extra = ", journaled" if journaled else ", NO journal"
    return f"{fstype}{extra} ({opts}) on {src} at {mnt}"


class DataFS:
    def __init__(self, work, mode="auto", size_gb=4):
        self.work = Path(work)
        self.mode = mode
        self.size_gb = size_gb
        self.mnt = None
        self.image = None
        self.path = self.work
        self.kind = "plain"

    def setup(self):
        mode = self.mode
        if mode == "auto":
            mode = "loop" if os.geteuid() == 0 else "plain"
            if mode == "loop" and not all(shutil.which(t) for t in
                                          ("mount", "umount", "mkfs.ext4")):
                mode = "plain"
            try:
                return self._setup(mode)
            except RuntimeError as e:
                log(f"cannot set up a private file system ({e}); using "
                    f"{self.work} as it is")
                return self._setup("plain")
        return self._setup(mode)

    def _setup(self, mode):
        if mode in ("loop", "tmpfs") and os.geteuid() != 0:
            raise RuntimeError(f"--fs {mode} needs root")
        mnt = self.work / "fs"
        if mode == "plain":
            self.kind, self.path = "plain", self.work
        elif mode == "loop":
            self.image = self.work / "fs.img"
            with open(self.image, "wb") as f:
                f.truncate(int(self.size_gb * (1 << 30)))
            r = _run(["mkfs.ext4", "-q", "-F", "-E",
                      "lazy_itable_init=0,lazy_journal_init=0",
                      str(self.image)], timeout=600)
            if r.returncode != 0:
                self.image.unlink()
                raise RuntimeError("mkfs.ext4 failed: " + r.stdout.strip())
            mnt.mkdir()
            r = _run(["mount", "-o", "loop", str(self.image), str(mnt)])
            if r.returncode != 0:
                mnt.rmdir()
                self.image.unlink()
                raise RuntimeError("mount -o loop failed: " + r.stdout.strip())
            self.mnt, self.kind, self.path = mnt, "loop", mnt
        elif mode == "tmpfs":
            mnt.mkdir()
            r = _run(["mount", "-t", "tmpfs", "-o",
                      f"size={int(self.size_gb * 1024)}m,mode=0711",
                      "maild-bench", str(mnt)])
            if r.returncode != 0:
                mnt.rmdir()
                raise RuntimeError("mount -t tmpfs failed: " + r.stdout.strip())
            self.mnt, self.kind, self.path = mnt, "tmpfs", mnt
        else:
            raise RuntimeError(f"unknown --fs mode {mode!r}")
        os.chmod(self.path, 0o711)
        return self.path

    def description(self):
        d = describe(self.path)
        if self.kind == "loop":
            d += f", image {self.image} ({self.size_gb:g} GiB sparse)"
        return f"{self.kind}: {d}"

    def teardown(self):
        """Unmount (bounded retries).  Returns False if it stays mounted."""
        if not self.mnt:
            return True
        for i in range(20):
            r = _run(["umount", str(self.mnt)])
            if r.returncode == 0:
                self.mnt = None
                return True
            time.sleep(0.5)
        log(f"WARNING: cannot unmount {self.mnt}: {r.stdout.strip()}; "
            f"unmount it by hand (umount {self.mnt}) and remove {self.work}")
        return False
