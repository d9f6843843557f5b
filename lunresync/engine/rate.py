"""A job's rate from a recent window of its progress, not from its start: a job that
slowed down, or ran on after a reboot, shows how fast it copies now, and its ETA follows.

Each poll adds a sample (time, bytes done). The rate is measured from the oldest sample
of the last :data:`WINDOW` seconds, or, when polls are further apart, from the one sample
before (the kernel copied all along in between). ``activate`` forgets the samples: the
time a machine was down is no copying time.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Seconds of progress the rate is measured over.
WINDOW = 20.0

Sample = tuple[float, int]  # (unix time, bytes done)


def add_sample(samples: Sequence[Sample], at: float, done: int
               ) -> tuple[list[Sample], float | None]:
    """The samples to keep once (``at``, ``done``) is added, and the rate they give
    (bytes per second; None with a single sample)."""
    kept = [s for s in samples if s[0] < at]
    recent = [s for s in kept if s[0] >= at - WINDOW]
    older = [s for s in kept if s[0] < at - WINDOW]
    window = ([older[-1]] if older and not recent else []) + recent + [(at, done)]
    first_at, first_done = window[0]
    rate = (done - first_done) / (at - first_at) if at > first_at else None
    return window, (max(0.0, rate) if rate is not None else None)
