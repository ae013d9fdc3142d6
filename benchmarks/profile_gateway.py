"""Profile the gateway with py-spy during one large upload, and summarize by function.

    python benchmarks/profile_gateway.py [--size-mib 512] [--lines] [--native] [--perf]
        [--client curl|tus-js-8mib|tus-js-inf|curl-16x64]

`curl-16x64` is 16 curl PATCHes of 64 MiB at once. `--perf` instead runs one upload
under `perf record -e cpu-clock -g` and sorts the on-CPU samples into buckets (crypto,
kernel work by syscall, the interpreter and memcpy by thread), with CPU-s per GiB:
benchmarks/.work/perf-<client>-summary.json.

Three identical uploads on one fresh gateway, each under `py-spy record --pid`:
  1. all non-idle threads   -> benchmarks/.work/profile.txt      (raw collapsed stacks)
  2. only the GIL holder    -> benchmarks/.work/profile-gil.txt  (py-spy --gil)
  3. flamegraph of all      -> benchmarks/.work/profile.svg
plus benchmarks/.work/profile-summary.json (file names get a -<client> suffix for
clients other than curl). py-spy must be in the venv (`.venv/bin/pip install py-spy`)
and allowed to ptrace (root, or CAP_SYS_PTRACE).

Sampling is --nonblocking (the gateway is not paused; with --native it is, for each
sample, and py-spy then counts threads blocked in a futex as busy), 200 Hz, idle threads excluded
(py-spy counts a thread as active when the kernel reports it running or runnable, so a
thread waiting for a CPU counts, a thread blocked in fdatasync or epoll does not).
A share is "% of such samples", split by thread and by function (file:function,
lines merged). Samples x (1 / rate) gives busy thread-seconds, which can exceed CPU
seconds on this 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    CLK_TCK,
    ROOT,
    RUNS_DIR,
    WORK,
    Gateway,
    MiB,
    TestFile,
    UploadResult,
    curl_concurrent,
    curl_single,
    log,
    random_file,
    tree_cpu,
    tus_js,
)

RATE = 200
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


def _record(
    exe: str,
    gw: Gateway,
    f: TestFile,
    out: Path,
    *,
    fmt: str = "raw",
    gil: bool = False,
    native: bool = False,
    client: str = "curl",
    lines: bool = False,
) -> tuple[UploadResult, dict[int, tuple[float, float]]]:
    cmd = [exe, "record", "--pid", str(gw.pid), "--rate", str(RATE),
           "--threads", "--format", fmt, "-o", str(out)]  # fmt: skip
    if not native:
        cmd.append("--nonblocking")  # py-spy unwinds native stacks only with the process paused
    if not lines:
        cmd.append("--function")
    if gil:
        cmd.append("--gil")
    if native:
        cmd.append("--native")
    spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # let it attach
    try:
        cpu0 = thread_cpu(gw.pid)
        result = CLIENTS[client](gw, f)
        cpu1 = thread_cpu(gw.pid)
    finally:
        time.sleep(0.2)
        spy.send_signal(signal.SIGINT)
        output = spy.communicate(timeout=60)[0]
    for url in result.urls:
        gw.verify(url, f)
        gw.delete(url)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing:\n{output}")
    zero = (0.0, 0.0)
    return result, {
        tid: (u - cpu0.get(tid, zero)[0], s - cpu0.get(tid, zero)[1])
        for tid, (u, s) in cpu1.items()
    }


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(utime, stime) of every thread of `pid`, seconds, by OS thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


CLIENTS: dict[str, Callable[[Gateway, TestFile], UploadResult]] = {
    "curl": curl_single,
    "tus-js-8mib": lambda s, f: tus_js(s, f, str(8 * MiB)),
    "tus-js-inf": lambda s, f: tus_js(s, f, "Infinity"),
    "curl-16x64": lambda s, f: curl_concurrent(s, f, 16),
}
# Clients that upload a file of their own size, whatever --size-mib says.
CLIENT_MIB = {"curl-16x64": 64}


def _frame(raw: str, lines: bool = False) -> str:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    line = re.search(r":(\d+)\)$", raw.strip()) if lines else None
    return f"{m['file']}:{m['func']}" + (f":{line[1]}" if line else "")


def summarize(
    raw_path: Path,
    top: int = 15,
    lines: bool = False,
    cpu: dict[int, tuple[float, float]] | None = None,
) -> dict[str, object]:
    names: dict[int, str] = {}
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        thread = re.sub(r"_\d+$", "_*", thread)  # pool workers: one line per pool
        tid = re.match(r"thread \((\d+)\)", frames[0])
        if tid:
            names[int(tid[1])] = thread
        funcs = [_frame(fr, lines) for fr in frames[1:]]
        total += count
        threads[thread] += count
        if funcs:
            own[funcs[-1]] += count
        for fn in set(funcs):
            inclusive[fn] += count

    def pct(counter: Counter[str], n: int) -> list[dict[str, object]]:
        return [
            {"function": k, "samples": v, "pct": round(100 * v / total, 1)}
            for k, v in counter.most_common(n)
        ]

    gateway_inclusive = Counter({k: v for k, v in inclusive.items() if k.startswith("gateway/")})
    user: Counter[str] = Counter()
    system: Counter[str] = Counter()
    for tid, (u, s) in (cpu or {}).items():
        name = names.get(tid, "other (never sampled)")
        user[name] += u
        system[name] += s
    return {
        "cpu_s_by_thread": {
            k: {"user": round(user[k], 2), "sys": round(system[k], 2)}
            for k in sorted(user, key=lambda k: -(user[k] + system[k]))
        },
        "samples": total,
        "thread_seconds": round(total / RATE, 2),
        "by_thread": pct(threads, 10),
        "top_own": pct(own, top),
        "top_inclusive_gateway": pct(gateway_inclusive, top),
    }


def print_summary(prof: dict[str, Any]) -> None:
    print(
        f"\nProfile (py-spy, {prof['rate_hz']} Hz, --nonblocking) of the gateway during one "
        f"{prof['upload_mib']} MiB {prof['client']} upload"
    )
    for kind, title in (
        ("all", "non-idle samples (threads running or runnable)"),
        ("gil", "samples of the thread holding the GIL (--gil)"),
    ):
        summary = prof[kind]
        print(
            f"  [{kind}] {title}: {summary['samples']} samples "
            f"(~{summary['thread_seconds']} thread-s); upload ran at "
            f"{summary['upload_mb_s']:.1f} MB/s, {summary['upload_s']:.2f} s while sampled"
        )
        cpu = ", ".join(
            f"{k} {v['user']:.2f}+{v['sys']:.2f}" for k, v in summary["cpu_s_by_thread"].items()
        )
        print(f"    CPU s (user+sys) by thread during the upload (/proc/PID/task): {cpu}")
        for label, key in (
            ("by thread", "by_thread"),
            ("own time (leaf function)", "top_own"),
            ("inclusive, gateway/ functions", "top_inclusive_gateway"),
        ):
            print(f"    {label}:")
            for row in summary[key][:12]:
                print(f"      {row['pct']:5.1f}%  {row['function']}")


# -- perf: on-CPU samples by bucket ---------------------------------------------------------

# py-spy samples wall time: a thread waiting for a core counts, and with --native (the
# process paused for each sample) so does a thread blocked in a futex. `perf record -e
# cpu-clock` samples only what runs, kernel included; Python 3.11 frames show as the
# interpreter, so its time is split by thread only (py-spy --gil splits it further).
# A sample goes to the first bucket whose kernel frames match, else by its leaf's library.
_KERNEL_BUCKETS: list[tuple[tuple[str, ...], str]] = [
    (("asm_exc_page_fault", "exc_page_fault"), "page faults (fresh memory)"),
    (("do_fsync", "ext4_sync_file"), "kernel: fdatasync/fsync"),
    (("ksys_sync_file_range", "__x64_sys_sync_file_range"), "kernel: writeback hints"),
    (("ext4_buffered_write_iter", "do_pwritev", "ksys_pwrite64"), "kernel: page-cache writes"),
    (("sock_read_iter", "tcp_recvmsg", "sock_recvmsg"), "kernel: socket reads"),
    (("tcp_sendmsg", "sock_write_iter"), "kernel: socket writes"),
    (("do_sys_openat2", "__fput", "__x64_sys_close", "__x64_sys_flock", "vfs_fstatat",
      "__x64_sys_newfstatat", "ksys_pread64"), "kernel: open/close/flock/stat"),
    (("futex_wait", "futex_wake", "do_futex"), "kernel: futex (thread wakeups, GIL)"),
    (("ep_poll", "do_epoll_wait"), "kernel: epoll"),
    (("handle_softirqs", "net_rx_action", "tcp_v4_rcv"), "kernel: network (softirq)"),
    (("__schedule", "irqentry_exit_to_user_mode", "finish_task_switch"), "kernel: scheduler"),
]  # fmt: skip


def _perf_bucket(thread: str, frames: list[tuple[str, str]]) -> str:
    syms = {sym for sym, _ in frames}
    for keys, name in _KERNEL_BUCKETS:
        if not syms.isdisjoint(keys):
            return name
    sym, dso = frames[0]
    if dso == "[kernel.kallsyms]":
        return "kernel: other"
    if dso.startswith("_rust"):
        return "AES-256-GCM (cryptography)"
    if dso.startswith("libcrypto"):
        return "SHA-256 (hashlib: plaintext and ciphertext)"
    if dso.startswith("libsqlite"):
        return "catalog: SQLite"
    if dso.startswith(("loop.", "libuv")):
        return "uvloop"
    if dso.startswith("parser."):
        return "httptools"
    if dso.startswith("libc"):
        kind = "memcpy" if "memmove" in sym or "memcpy" in sym else "libc other"
        return f"{kind} ({thread})"
    if dso.startswith("libpython"):
        return f"Python interpreter ({thread})"
    return "other"


def _perf_samples(text: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(thread id, frames leaf first as (symbol, library)) of `perf script` output."""
    tid = -1
    frames: list[tuple[str, str]] = []
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if tid >= 0 and frames:
                yield tid, frames
            tid, frames = -1, []
        elif not line.startswith("\t"):  # the sample's line (the tid right-aligned)
            tid = int(line.split()[0])
        else:
            m = re.match(r"\s*[0-9a-f]+ (.*) \((.*)\)$", line)
            if m:
                frames.append((m[1], m[2].rsplit("/", 1)[-1]))


def perf_profile(client: str) -> dict[str, Any]:
    """One upload under `perf record -e cpu-clock -g`; samples by bucket, CPU-s per GiB."""
    size_mib = CLIENT_MIB.get(client, 512)
    f = random_file(size_mib * MiB)
    gw = Gateway(RUNS_DIR / "profile-gateway").start()
    data = WORK / f"perf-{client}.data"
    try:
        warm = curl_single(gw, random_file(64 * MiB))
        gw.delete(warm.urls[0])
        os.sync()
        perf = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "997", "-g", "-p", str(gw.pid),
             "-o", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        cpu0 = tree_cpu(gw.pid)
        result = CLIENTS[client](gw, f)
        time.sleep(0.3)
        cpu = tree_cpu(gw.pid) - cpu0
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
        dump = subprocess.run(
            [py_spy() or "py-spy", "dump", "--pid", str(gw.pid)], capture_output=True, text=True
        ).stdout
        for url in result.urls:
            gw.delete(url)
    finally:
        gw.stop()
    names = {int(m[1]): re.sub(r"_\d+$", "", m[2])
             for m in re.finditer(r'Thread (\d+) \(\w+\): "([^"]+)"', dump)}  # fmt: skip
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts: Counter[str] = Counter()
    for tid, frames in _perf_samples(script):
        counts[_perf_bucket(names.get(tid, "other thread"), frames)] += 1
    total = sum(counts.values())
    per_gib = cpu * (1 << 30) / result.bytes
    return {
        "client": client, "mb_s": round(result.mb_s, 1), "cpu_s": round(cpu, 2),
        "cpu_s_per_gib": round(per_gib, 2), "samples": total,
        "buckets": [
            {"bucket": k, "pct": round(100 * v / total, 1),
             "cpu_s_per_gib": round(per_gib * v / total, 3)}
            for k, v in counts.most_common()
        ],
    }  # fmt: skip


def run(
    size_mib: int = 512, native: bool = False, client: str = "curl", lines: bool = False
) -> dict[str, Any] | None:
    exe = py_spy()
    if exe is None:
        log("py-spy is not installed (.venv/bin/pip install py-spy): no profile")
        return None
    size_mib = CLIENT_MIB.get(client, size_mib)
    f = random_file(size_mib * MiB)
    suffix = ("" if client == "curl" else f"-{client}") + ("-lines" if lines else "")
    gw = Gateway(RUNS_DIR / "profile-gateway").start()
    prof: dict[str, Any] = {"upload_mib": size_mib, "client": client, "rate_hz": RATE,
                            "native": native, "files": []}  # fmt: skip
    try:
        warm = curl_single(gw, random_file(64 * MiB))  # warm up, not sampled
        gw.delete(warm.urls[0])
        for kind, gil in (("all", False), ("gil", True)):
            log(f"profiling the gateway (py-spy, {kind}) during a {size_mib} MiB {client} upload")
            out = WORK / f"profile{suffix}{'' if kind == 'all' else '-gil'}.txt"
            result, cpu = _record(
                exe, gw, f, out, gil=gil, native=native, client=client, lines=lines
            )
            prof[kind] = summarize(out, lines=lines, cpu=cpu)
            prof[kind].update(upload_mb_s=round(result.mb_s, 1), upload_s=round(result.seconds, 2))
            prof["files"].append(str(out.relative_to(ROOT)))
        svg = WORK / f"profile{suffix}.svg"
        _record(exe, gw, f, svg, fmt="flamegraph", native=native, client=client, lines=lines)
        prof["files"].append(str(svg.relative_to(ROOT)))
    finally:
        gw.stop()
    (WORK / f"profile{suffix}-summary.json").write_text(json.dumps(prof, indent=2) + "\n")
    return prof


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="curl")
    parser.add_argument("--lines", action="store_true", help="per source line, not function")
    parser.add_argument("--perf", action="store_true", help="perf record: on-CPU buckets")
    args = parser.parse_args()
    if args.perf:
        prof = perf_profile(args.client)
        (WORK / f"perf-{args.client}-summary.json").write_text(json.dumps(prof, indent=2) + "\n")
        print(f"{prof['client']}: {prof['mb_s']} MB/s, {prof['cpu_s_per_gib']} CPU-s per GiB")
        for row in prof["buckets"]:
            print(f"  {row['pct']:5.1f}%  {row['cpu_s_per_gib']:6.3f}  {row['bucket']}")
        raise SystemExit(0)
    result = run(args.size_mib, args.native, args.client, args.lines)
    if result is not None:
        print_summary(result)
