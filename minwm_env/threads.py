"""Thread settings for minwm's CPU work, chosen by the package: fast on a shared machine with no
environment variable set.

Why: torch's OpenMP threads spin while they wait at the end of each parallel operation. When
another CPU-bound process holds one of the cores, the spinning thread burns its time slice
waiting for a thread that is not running, and a world-model step on 2 cores took 7-28x longer
(BENCHMARKS.md, "Env step time on a shared machine"). Two remedies work, measured: waiting
threads that sleep (``OMP_WAIT_POLICY=PASSIVE``), or a single torch thread (no one to wait for);
a shorter spin (``GOMP_SPINCOUNT``) helped less. Sleeping costs 1.5-1.8x on a quiet machine
(waking a thread takes longer than finding it spinning): ``MINWM_THREADS=off`` on a machine of
your own.

What the package does, unless you chose yourself:

1. ``import minwm_env`` sets ``OMP_WAIT_POLICY=PASSIVE`` as a default when torch is not loaded
   yet. OpenMP reads it once, when torch loads, so it takes effect only if ``minwm_env`` is
   imported before torch; the console scripts are, and so is the README's snippet.
2. If torch was loaded first (its threads spin), minwm's own work runs on one torch thread:
   env resets and steps (set for the call, then restored: your code keeps its threads) and the
   console scripts (set once: they own the process).

Yours win: set ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS`` before ``import minwm_env`` and the
package changes nothing; ``MINWM_THREADS=N`` runs minwm's work on N torch threads;
``MINWM_THREADS=off`` restores torch's defaults (spinning threads, all cores); an explicit
``num_threads=N`` (``gym.make("minwm/World-v0", num_threads=N)``, ``--num-threads N`` on the
command lines) wins over all of them.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

VARIABLE = "MINWM_THREADS"
OFF = "off"
# What was decided at ``import minwm_env`` (``apply_import_defaults``): whether torch's waiting
# threads sleep, and whether the user had set OpenMP's variables themselves.
_state = {"threads_sleep": False, "user_chose": False}


def apply_import_defaults() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless the user set OpenMP's variables
    or ``MINWM_THREADS=off``. Called once by ``import minwm_env``."""
    if os.environ.get(VARIABLE, "").strip().lower() == OFF:
        return
    if "OMP_WAIT_POLICY" in os.environ or "OMP_NUM_THREADS" in os.environ:
        _state["user_chose"] = True
    elif "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _state["threads_sleep"] = True


def _from_environment() -> int | str | None:
    value = os.environ.get(VARIABLE, "").strip().lower()
    if not value or value == "auto":
        return None
    if value == OFF:
        return OFF
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{VARIABLE} must be a number of threads >= 1, 'auto' or '{OFF}', got {value!r}")
    return int(value)


def chosen_threads(num_threads: int | None = None) -> int | None:
    """The torch thread count for minwm's CPU work, or None to leave torch's as it is."""
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1 (or None: the package's choice), got {num_threads!r}")
        return num_threads
    setting = _from_environment()
    if setting == OFF:
        return None
    if setting is not None:
        return setting
    if _state["user_chose"] or _state["threads_sleep"]:
        return None  # the user's settings, or all cores with waiting threads asleep
    return 1


def configure_process(num_threads: int | None = None) -> None:
    """For a command line or script that owns its process: set torch's threads once."""
    count = chosen_threads(num_threads)
    if count is not None:
        import torch

        torch.set_num_threads(count)


@contextmanager
def torch_threads(count: int | None):
    """Run a block on ``count`` torch threads (None: as they are), then restore the caller's."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
