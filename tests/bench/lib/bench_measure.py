"""CPU / memory accounting helpers for tests/bench/run (Linux /proc, stdlib only)."""

import os
import time
from pathlib import Path

_TCK = os.sysconf("SC_CLK_TCK")


def read_cpu_busy():
    """Total busy CPU seconds of the machine (all processes) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / _TCK


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return raw[raw.find("(") + 1:raw.rfind(")")], raw.rsplit(")", 1)[1].split()


def proc_cpu(pid, children=True):
    """CPU seconds of pid (plus its reaped children's, if children)."""
    try:
        _, fl = _stat_fields(pid)
    except (OSError, IndexError):
        return 0.0
    t = int(fl[11]) + int(fl[12])
    if children:
        t += int(fl[13]) + int(fl[14])
    return t / _TCK


def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            _, fl = _stat_fields(d)
            kids.setdefault(int(fl[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def tree_pids(root_pid):
    kids = _children_map()
    seen, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += kids.get(pid, [])
    return seen


def tree_cpu(root_pid):
    """CPU seconds of root_pid, its live descendants, and the reaped children
    accounted to them (cutime/cstime)."""
    return sum(proc_cpu(p, children=True) for p in tree_pids(root_pid))


def cpu_snapshot():
    """{pid: (name, own CPU seconds, is a kernel thread)} for every process
    (reaped children are not included: an orphan reaped by init would add
    its whole lifetime)."""
    snap = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            name, fl = _stat_fields(d)
        except (OSError, IndexError):
            continue
        pid, ppid = int(d), int(fl[1])
        kthread = pid == 2 or ppid == 2
        snap[pid] = (name, (int(fl[11]) + int(fl[12])) / _TCK, kthread)
    return snap


def kthread_cpu(before, after):
    """CPU seconds kernel threads (writeback, jbd2, loop, kworkers) used
    between two snapshots: mostly I/O done on behalf of whoever wrote."""
    t = 0.0
    for pid, (name, c, k) in after.items():
        if k:
            t += max(0.0, c - before.get(pid, (name, 0.0, k))[1])
    return t


def top_others(before, after, exclude, n=3):
    """The n user-space processes outside `exclude` that used the most CPU
    between two snapshots, as 'name[pid] 1.23s' strings."""
    deltas = []
    for pid, (name, t, kthread) in after.items():
        if pid in exclude or kthread:
            continue
        d = t - before.get(pid, (name, 0.0, kthread))[1]
        if d >= 0.05:
            deltas.append((d, f"{name}[{pid}]"))
    deltas.sort(reverse=True)
    return [f"{who} {d:.2f}s" for d, who in deltas[:n]]


def busy_cpu_rate(window=0.5):
    """Machine-wide busy CPU (in cores) over a short window."""
    b0, t0 = read_cpu_busy(), time.monotonic()
    time.sleep(window)
    return (read_cpu_busy() - b0) / (time.monotonic() - t0)


def parse_time_v(path):
    """Parse a GNU `time -v -o FILE` report."""
    r = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return r
    for line in text.splitlines():
        line = line.strip()
        k, _, v = line.rpartition(": ")
        try:
            if k == "User time (seconds)":
                r["user"] = float(v)
            elif k == "System time (seconds)":
                r["sys"] = float(v)
            elif k == "Maximum resident set size (kbytes)":
                r["maxrss_kb"] = int(v)
            elif k == "Voluntary context switches":
                r["vcsw"] = int(v)
            elif k == "File system outputs":
                r["fs_out"] = int(v)
            elif k.startswith("Elapsed (wall clock) time"):
                sec = 0.0
                for x in v.split(":"):
                    sec = sec * 60 + float(x)
                r["wall_time_v"] = sec
            elif k == "Exit status":
                r["exit"] = int(v)
            elif line.startswith("Command terminated by signal"):
                r["signal"] = int(line.split()[-1])
        except ValueError:
            continue
    return r


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def mem_total_mib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None
