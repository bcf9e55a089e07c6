"""The thread count a training loop uses when the user did not fix one.

Every kernel gives bit-identical results for any thread count, so a training
loop may change the count between steps freely. When the count is automatic
(neither ``OMP_NUM_THREADS`` nor :func:`meprop_cpu.set_num_threads` fixed it),
:class:`ThreadTuner` times the loop's steps at a few candidate counts (all
usable CPUs, half of them, one), keeps the fastest for a while and measures
again: periodically, and at once when the steps get much slower than they
were when the count was chosen (another process started competing for the
cores). On a quiet machine it settles on all CPUs and the probes at fewer
threads cost about 1 % of the time; on a busy one it falls back to the count
that is fastest there. The timings are means over windows of at least
``probe_s`` seconds, so a thread descheduled for a scheduler quantum shows.
"""

__all__ = ["ThreadTuner", "candidates", "auto_tuner"]


def candidates(n):
    """The thread counts tried for n usable CPUs: n, n // 2, ... down to 1 (at most 3)."""
    n = max(1, int(n))
    out = [n]
    if n // 2 > 1:
        out.append(n // 2)
    if n > 1:
        out.append(1)
    return out


class ThreadTuner:
    """Chooses the thread count step by step from measured step times.

    use: ``t = tuner.threads()`` before a step (apply it), ``tuner.record(dt)``
    after it with the step's wall time.

    cands: thread counts to try (the first is used first).
    probe_steps, probe_s: a candidate is timed over at least this many steps
    and seconds. hold: after a choice, run it for ``hold`` times as long as
    the probes took (at least ``hold_steps`` steps) before probing again.
    slower: re-probe early when a window of the chosen count is this much
    slower than its probe was.
    """

    def __init__(self, cands, probe_steps=16, probe_s=0.02, hold=40.0, hold_steps=400,
                 slower=1.5):
        self.cands = list(cands) or [1]
        self.probe_steps, self.probe_s = probe_steps, probe_s
        self.hold, self.hold_steps, self.slower = hold, hold_steps, slower
        self.choice = self.cands[0]
        self.probes = 0            # probe rounds completed
        self.switches = 0          # probe rounds whose choice differed from the previous one
        self.last = {}             # candidate -> mean step time of the last probe round
        self._order = list(self.cands)
        self._i = 0 if len(self.cands) > 1 else None   # index into _order while probing
        self._n = 0
        self._t = 0.0
        self._probe_t = 0.0
        self._hold_left = 0.0
        self._hold_steps_left = 0

    def threads(self):
        """The thread count for the next step."""
        if self._i is not None:
            return self._order[self._i]
        return self.choice

    def record(self, dt):
        """Account one step of ``dt`` seconds run at ``threads()``."""
        self._n += 1
        self._t += dt
        if self._i is not None:             # probing
            if self._n < self.probe_steps or self._t < self.probe_s:
                return
            self.last[self._order[self._i]] = self._t / self._n
            self._probe_t += self._t
            self._n, self._t = 0, 0.0
            self._i += 1
            if self._i == len(self._order):
                self._decide()
            return
        self._hold_left -= dt
        self._hold_steps_left -= 1
        if self._n >= self.probe_steps and self._t >= self.probe_s:
            mean = self._t / self._n
            self._n, self._t = 0, 0.0
            if mean > self.slower * self.last[self.choice]:
                self._start_probe()
                return
        if self._hold_left <= 0 and self._hold_steps_left <= 0:
            self._start_probe()

    def _decide(self):
        best = min(self._order, key=lambda c: (self.last[c], -c))
        if self.probes and best != self.choice:
            self.switches += 1
        self.choice = best
        self.probes += 1
        self._i = None
        self._hold_left = self.hold * self._probe_t
        self._hold_steps_left = self.hold_steps
        self._probe_t = 0.0
        # next round starts with a different candidate (drifts hit each alike)
        self._order = self._order[1:] + self._order[:1]

    def _start_probe(self):
        self._n, self._t = 0, 0.0
        self._i = 0

    def state(self):
        """A summary for logs: choice, probe rounds, switches, last mean step times."""
        return {"threads": self.choice, "probes": self.probes, "switches": self.switches,
                "step_s": {str(k): v for k, v in sorted(self.last.items())}}


def auto_tuner(tuner):
    """The ThreadTuner a training loop uses now: ``tuner`` (or a new one when it
    is None or was made for another CPU count) while the thread count is
    automatic, None when it is fixed or only one CPU is usable."""
    from . import _config
    n = _config._auto_threads()
    if n is None or n < 2:
        return None
    if tuner is None or tuner.cands[0] != n:
        return ThreadTuner(candidates(n))
    return tuner


def restore_auto(tuner):
    """After a loop that tuned: the automatic count again (every usable CPU)."""
    from . import _config
    if tuner is not None and _config._auto_threads() is not None:
        _config._use_threads(_config._auto_threads())
