"""How many compute threads to give ONNX Runtime: the cores really free, not the cores present.

Why: ONNX Runtime splits every convolution over its intra-op threads and waits for the
slowest. On a machine where another process keeps a core busy, a thread placed on that core
gets only part of it, so every layer waits for it: two threads on two cores with one
competitor run *slower* than one thread (measured: benchmarks/results/cores.md). And idle
pool threads that spin (ONNX Runtime's default) take time from the competitor and from our
own image-decoding threads. So: count the cores this process may use (its CPU affinity, as
``taskset`` or a batch job sets it, within a container's CPU quota), subtract what other
processes use right now (a short sample of ``/proc/stat``, else the load average), and never
let idle threads spin.

Many images: the compute threads then run whole images side by side, one thread each
(``runs``), instead of splitting each image's layers over all of them, because a split layer
waits for its slowest thread and whole images do not (benchmarks/results/cores.md: IE-IQA's
backbones on 2 idle cores run faster side by side than split, with or without spinning
threads). One image (or a few) keeps the split, which is what makes it
come back sooner. Side by side, a run on a shared core only slows itself, so a busy machine
gets one run more than it has free cores (benchmarks/results/cores.md, beside one CPU-bound
process on 2 cores: 2 runs side by side beat one single-thread run, which beats one run split
over both cores); the extra run takes its share of a busy core
by the OS's fair scheduling, never by spinning. ``--threads 1`` leaves the other processes alone.
"""
from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass, replace

MAX_THREADS_PER_CPU = 4
"""Asked-for thread counts beyond this many per CPU are refused."""


def check_thread_count(threads: object, name: str = "threads") -> None:
    """ValueError unless ``threads`` is None or a whole number a machine can run: beyond a few
    per CPU a run only waits on itself (thousands of threads took minutes and gigabytes for one
    photo; a count past a C int was a traceback from the runtime)."""
    if threads is None:
        return
    most = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 1 <= threads <= most:
        raise ValueError(f"{name} must be a whole number from 1 to {most} ({MAX_THREADS_PER_CPU} per CPU of this "
                         f"machine), got {threads!r}")

SAMPLE_SECONDS = 0.1
"""How long the CPU use of the machine is sampled before choosing (start-up cost)."""
SAMPLE_MAX_AGE = 5.0
"""A sample started longer ago than this (a long folder listing) is started again: the plan
follows the machine's use now, not its average since the command began."""
BUSY_THRESHOLD = 0.5
"""A core counts as taken when other processes use more than this fraction of it."""
PARALLEL_RUNS_MIN_IMAGES = 8
"""From this many images on, T compute threads score T images at once, one thread each."""
PROC_STAT = "/proc/stat"
CPU_QUOTA_FILES = (("/sys/fs/cgroup/cpu.max", None),
                   ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
"""Where a container's CPU quota is read: cgroup v2 (``QUOTA PERIOD`` or ``max PERIOD``), then v1."""


@dataclass(frozen=True)
class ThreadPlan:
    """Intra-op threads per run, how many runs (images) at once, whether idle threads may spin,
    with what it was chosen from."""

    threads: int
    spinning: bool
    cpus: int
    busy: float  # cores' worth of CPU used by other processes when chosen
    runs: int = 1  # images (batches) in the model at the same time, each on ``threads`` threads

    @property
    def compute_threads(self) -> int:
        return self.threads * self.runs

    def describe(self) -> str:
        how = (f"{self.runs} images at once, {self.threads} thread each" if self.runs > 1
               else f"{self.threads} compute thread(s)")
        return (f"{how} of {self.cpus} CPU(s), {self.busy:.1f} busy elsewhere"
                f"{', idle threads spinning' if self.spinning else ''}")


def _affinity() -> set[int] | None:
    """The CPUs this process may run on (a container's or ``taskset``'s set), None where unknown."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask where the OS has one (taskset, a batch
    job's cores), within a container's CPU quota (``docker --cpus``, Kubernetes' CPU limit),
    which throttles threads beyond it without taking any core away from the mask."""
    n = _mask_cpus()
    quota = cpu_quota()
    return max(1, min(n, math.ceil(quota)) if quota is not None else n)


def _mask_cpus() -> int:
    """The CPUs of the affinity mask (all of them where the OS has none)."""
    cpus = _affinity()
    return max(1, len(cpus) if cpus is not None else (os.cpu_count() or 1))


def cpu_quota() -> float | None:
    """CPUs' worth of time a container's quota allows (cgroup v2 ``cpu.max``, else v1's CFS
    quota and period), None where there is none or it cannot be read."""
    for quota_file, period_file in CPU_QUOTA_FILES:
        try:
            with open(quota_file, "rb") as fh:
                words = fh.read().split()
            if period_file is not None:  # v1: the quota and the period in files of their own
                with open(period_file, "rb") as fh:
                    words = [words[0], fh.read().strip()]
            quota, period = int(words[0]), int(words[1])
        except (OSError, ValueError, IndexError):  # absent, or 'max' / -1: no quota
            continue
        if quota > 0 and period > 0:
            return quota / period
    return None


def omp_threads() -> int | None:
    """``$OMP_NUM_THREADS`` where it is a positive whole number: a batch job's share of its node's
    compute. PyTorch keeps to it; ONNX Runtime reads no OpenMP setting, so the plan caps its
    compute threads at it (the cores free to share are still counted on all the CPUs)."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(omp) if omp.isdigit() and int(omp) > 0 else None


def _proc_stat() -> tuple[int, int, int] | None:
    """(busy, total) jiffies and the number of CPUs summed, from /proc/stat's lines of the CPUs
    this process may run on (the machine's first line counts a host's other cores, which a pinned
    job cannot use: their load would shrink its plan), or None where it does not exist."""
    try:
        with open(PROC_STAT, "rb") as fh:
            lines = fh.read().split(b"\n")
    except OSError:
        return None
    mine = _affinity()
    busy = total = n = 0
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith(b"cpu"):
            continue
        name = fields[0][3:]  # b"" on the all-CPUs line
        # that line where there is no affinity set, else the lines of this process's own CPUs
        if (name != b"") if mine is None else not (name.isdigit() and int(name) in mine):
            continue
        values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        busy, total, n = busy + sum(values) - idle, total + sum(values), n + (1 if name else os.cpu_count() or 1)
    return (busy, total, n) if total else None


class CpuSample:
    """A measurement of the machine's CPU use, started now and read later.

    Why: sampling costs its own length in start-up (:data:`SAMPLE_SECONDS`) when it only waits.
    Started at the top of a command, it spans the command's own imports and file listing, so
    by the time the plan is needed the window is usually long enough already. What this process
    used in the window (its imports) is subtracted: only the other processes count as busy."""

    def __init__(self) -> None:
        self._begin()

    def _begin(self) -> None:
        self.started = time.monotonic()
        self.stat = _proc_stat()
        self.own = time.process_time()

    @classmethod
    def start(cls) -> "CpuSample":
        return cls()

    def busy_others(self, min_seconds: float = SAMPLE_SECONDS) -> float | None:
        """Cores' worth of CPU used by other processes since the start (waiting until the window
        is ``min_seconds`` long), or None where /proc/stat is not there to tell."""
        if self.stat is None:
            return None
        if time.monotonic() - self.started > SAMPLE_MAX_AGE:
            self._begin()
        wait = min_seconds - (time.monotonic() - self.started)
        if wait > 0:
            time.sleep(wait)
        now, own = _proc_stat(), time.process_time()
        if now is None or now[1] <= self.stat[1] or now[2] != self.stat[2]:
            return None
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = (now[0] - self.stat[0]) - (own - self.own) * ticks
        return max(0.0, busy / (now[1] - self.stat[1]) * now[2])  # a share of these CPUs, in cores


def busy_cores(sample_seconds: float = SAMPLE_SECONDS, sample: CpuSample | None = None) -> float:
    """Cores' worth of CPU used by the other processes right now: from ``sample`` (started
    earlier, see :class:`CpuSample`) or a new one over ``sample_seconds``, else the one-minute
    load average (which counts this process too)."""
    if sample_seconds > 0 or sample is not None:
        busy = (sample or CpuSample.start()).busy_others(sample_seconds)
        if busy is not None:
            return busy
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def choose_threads(cpus: int, busy: float, requested: int | None = None, images: int | None = None) -> ThreadPlan:
    """The plan for ``cpus`` usable CPUs of which ``busy`` cores' worth are used by others.

    ``requested`` (``--threads``) is kept as given. Otherwise one thread per core not taken
    (a core counts as taken above :data:`BUSY_THRESHOLD` of its time), at least one. Idle
    threads never spin: on a busy machine spinning steals the time the waiting thread needs,
    and even idle it took the cores our image-decoding threads use. ``images``: how many are
    to be scored; from :data:`PARALLEL_RUNS_MIN_IMAGES` on, the threads score that many
    images at once, one thread each, plus one run when some core is taken (None: one run split
    over the threads)."""
    cpus = max(1, int(cpus))
    busy = max(0.0, float(busy))
    taken = int(busy + (1.0 - BUSY_THRESHOLD))  # round half a core or more up
    free = max(1, min(cpus, cpus - taken))
    threads = int(requested) if requested else free
    # Spinning stays off even on an idle machine: measured 10 % slower end to end there
    # (benchmarks/results/cores.md, first run: the decoding threads need the cores it burns).
    if images is not None and images >= PARALLEL_RUNS_MIN_IMAGES:
        runs = threads if requested else min(cpus, free + (1 if taken > 0 else 0))
        if runs > 1:
            return ThreadPlan(threads=1, spinning=False, cpus=cpus, busy=busy, runs=runs)
    return ThreadPlan(threads=threads, spinning=False, cpus=cpus, busy=busy)


NATIVE_RUN_BYTES_PER_PIXEL = 250
"""Memory a native-resolution model's run takes per input pixel (IQA-CR on a CPU; see
:data:`contentiqa.models.scoring.DEFAULT_MAX_SIDE`)."""


def available_memory() -> int | None:
    """Bytes of memory this process could still take: the system's available memory, within a
    container's (cgroup v2) limit where one is set; None where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", "rb") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", "rb") as fh:
            used = int(fh.read().strip())
        if limit.isdigit():
            avail = min(avail if avail is not None else int(limit), max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def runs_within_memory(runs: int, max_side: int | None) -> int:
    """``runs`` of a native-resolution model, at most as many as half the available memory holds
    at ``max_side`` (a 4:3 photo): each run side by side holds its own activations, so a plan of
    one run per free core on a many-core machine could take more memory than it has."""
    avail = available_memory()
    if runs <= 1 or avail is None:
        return runs
    pixels = max_side * max_side * 3 / 4 if max_side else 24e6  # unbounded (--max-side 0): a 24 MP photo
    per_run = NATIVE_RUN_BYTES_PER_PIXEL * pixels
    return max(1, min(runs, int(avail / 2 // per_run)))


def plan_threads(requested: int | None = None, images: int | None = None, sample: CpuSample | None = None) -> ThreadPlan:
    """:func:`choose_threads` for this machine now (samples the CPU use unless ``requested``;
    ``sample``: a :class:`CpuSample` started earlier, which saves the wait)."""
    cpus = usable_cpus()
    if requested:
        return choose_threads(cpus, 0.0, requested, images)
    # The free cores are counted on the mask's: other processes there (another pod on the node)
    # take none of a container's quota, which caps the plan as OpenMP's share does.
    mask = _mask_cpus()
    plan = choose_threads(mask, min(busy_cores(sample=sample), float(mask)), images=images)
    caps = [c for c in (omp_threads(), cpus if cpus < mask else None) if c is not None]
    cap = min(caps) if caps else None
    if cap is None or plan.compute_threads <= cap:
        return plan
    return replace(plan, threads=min(plan.threads, cap), runs=max(1, min(plan.runs, cap // plan.threads)))
