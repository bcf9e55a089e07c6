"""argparse pieces shared by every command line of the package (``meprop-cpu``
and its subcommands, the bench harness, the parser and tagger options): the
usage-error type, a parser whose errors are one line, and checked option types."""
import argparse

import numpy as np


class CliError(Exception):
    """A bad option found after parsing: reported as a usage error (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr (no usage block) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _option_type(convert, ok, expected, range_expected=None):
    """An argparse type: ``convert(text)``, then ``ok(value)``; otherwise the error
    says what was expected (``range_expected`` for a value out of range)."""
    range_expected = range_expected or expected

    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {range_expected}, got {text}")
        return v
    return parse


_positive_int = _option_type(int, lambda v: v >= 1, "an integer >= 1")
_nonneg_int = _option_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _option_type(float, lambda v: bool(np.isfinite(v)) and v > 0,
                               "a number > 0", "a finite number > 0")
_nonneg_float = _option_type(float, lambda v: bool(np.isfinite(v)) and v >= 0,
                             "a number >= 0", "a finite number >= 0")
_probability = _option_type(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _int_in(lo, hi):
    """An option type: an integer in [lo, hi]."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}")
        return v
    return parse


def _sizes(text):
    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 784,500,500,10, got {text!r}") from None
    if len(sizes) < 2:
        raise argparse.ArgumentTypeError(f"expected at least two layer sizes, got {text!r}")
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


def _int_list(what, low):
    """An argparse type: comma-separated integers >= low (``what`` names the option)."""
    def parse(text):
        try:
            xs = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            xs = []
        if not xs or min(xs) < low:
            raise argparse.ArgumentTypeError(
                f"{what}: expected comma-separated integers >= {low}, got {text!r}")
        return xs
    return parse
