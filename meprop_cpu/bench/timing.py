"""Timing callables interleaved (:func:`interleave`) and summarizing the times
(:func:`summarize`, :func:`speedup`)."""
import statistics
import time

import numpy as np

_PC = time.perf_counter


def interleave(fns, repeats, warmup=1, clock=None, trace=None):
    """Time zero-argument callables, interleaved.

    fns: {name: callable}. First ``warmup`` untimed rounds (every variant once
    per round, in order), then ``repeats`` timed rounds; round r starts at
    variant ``r % len(fns)`` and wraps around (A B C, B C A, C A B, ...).
    Returns {name: [seconds per call]} (``repeats`` entries each). ``trace``,
    if a list, receives ("warmup" | "timed", name) in call order.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"interleave: repeats must be >= 1 and warmup >= 0, got {repeats}, "
                         f"{warmup}")
    clock = _PC if clock is None else clock
    names = list(fns)
    times = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            if trace is not None:
                trace.append(("warmup", name))
            fns[name]()
    for r in range(repeats):
        s = r % len(names) if names else 0
        for name in names[s:] + names[:s]:
            f = fns[name]
            if trace is not None:
                trace.append(("timed", name))
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    return times


def summarize(ts):
    """Median, min, max, quartiles (seconds) and count of a list of times."""
    if not ts:
        raise ValueError("summarize: no times")
    a = np.asarray(ts, dtype=np.float64)
    return {"median_s": float(statistics.median(ts)), "min_s": float(a.min()),
            "max_s": float(a.max()), "q1_s": float(np.percentile(a, 25)),
            "q3_s": float(np.percentile(a, 75)), "n": int(a.size)}


def speedup(baseline, t):
    """How many times faster ``t`` is than ``baseline`` (= baseline / t); None if unknown."""
    if baseline is None or t is None or t <= 0 or baseline <= 0:
        return None
    return float(baseline) / float(t)
