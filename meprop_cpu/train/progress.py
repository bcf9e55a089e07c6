"""What a running fit shows and how it stops: the one-line progress display and
the exception a Ctrl-C ends training with."""
import time

__all__ = ["TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary after Ctrl-C (or ``request_stop()``).

    ``checkpoint``: the path the state was saved to (None if the trainer has no
    checkpoint path or the weights were not finite); ``epoch``, ``step``: the
    epoch being trained and the last step completed in it (0: none)."""

    def __init__(self, message, checkpoint=None, epoch=None, step=None):
        super().__init__(message)
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step


class _Progress:
    """One updating line on a terminal: epoch, steps, steps/s, running loss."""

    def __init__(self, stream, interval=0.2):
        self.stream = stream
        self.interval = interval
        self._last = 0.0
        self._width = 0

    def update(self, epoch, epochs, step, spe, loss, elapsed, force=False):
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        rate = step / elapsed if elapsed > 0 else 0.0
        line = (f"epoch {epoch}/{epochs}  step {step}/{spe}  {rate:,.0f} steps/s  "
                f"loss {loss:.4f}")
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def clear(self):
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
