"""Where a training step's time goes: a per-stage breakdown of forward and backward from one profiled step.

Stages are named by the modules (and functions) of the step: hooks open a ``record_function`` range for the
duration of each one's forward. Forward time of a stage is the time spent inside its ranges (minus ranges of other
stages nested in them); backward time is that of the autograd functions created in those ranges, matched through
the sequence number the profiler records for a forward op and for the backward function it created. What no stage
claims is reported as "other" (tensor glue between the stages, the autograd engine's own work, Python).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from harness import quiet_stderr

PREFIX = "stage:"
BACKWARD = "autograd::engine::evaluate_function: "


@contextlib.contextmanager
def stage_hooks(modules: dict[str, list[nn.Module]], functions: dict[str, list[tuple[Any, str]]]) -> Iterator[None]:
    """Open a ``stage:<name>`` range around every forward of ``modules[name]`` and every call of the functions
    ``getattr(owner, attr)`` listed in ``functions[name]`` (patched for the duration)."""
    handles, patched, open_ranges = [], [], {}
    for name, mods in modules.items():
        for m in mods:
            def pre(module, args, name=name):
                rf = record_function(PREFIX + name)
                rf.__enter__()
                open_ranges.setdefault(id(module), []).append(rf)

            def post(module, args, output):
                open_ranges[id(module)].pop().__exit__(None, None, None)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    for name, targets in functions.items():
        for owner, attr in targets:
            original = getattr(owner, attr)

            def wrapped(*args, _original=original, _name=name, **kwargs):
                with record_function(PREFIX + _name):
                    return _original(*args, **kwargs)

            setattr(owner, attr, wrapped)
            patched.append((owner, attr, original))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for owner, attr, original in patched:
            setattr(owner, attr, original)


def _stage_of(event) -> str | None:
    """The innermost stage range enclosing ``event`` (walking its CPU parents), or None."""
    e = event
    while e is not None:
        if e.name.startswith(PREFIX):
            return e.name[len(PREFIX):]
        e = e.cpu_parent
    return None


def breakdown(step: Callable[[], Any]) -> tuple[dict[str, float], float]:
    """Milliseconds per stage (forward + backward) of one call of ``step`` and the call's profiled total."""
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    times: dict[str, float] = {}
    seq_stage: dict[int, str] = {}
    tops = [e for e in events if e.cpu_parent is None]
    total = (max(e.time_range.end for e in tops) - min(e.time_range.start for e in tops)) / 1e3
    for e in events:
        if e.name.startswith(PREFIX):  # forward: the range minus the stage ranges nested in it
            nested = sum(c.cpu_time_total for c in _stage_children(e))
            key = e.name[len(PREFIX):]
            times[key] = times.get(key, 0.0) + (e.cpu_time_total - nested) / 1e3
        elif e.sequence_nr >= 0 and not e.name.startswith(BACKWARD):
            stage = _stage_of(e)
            if stage is not None:
                seq_stage.setdefault(e.sequence_nr, stage)
    for e in events:
        if e.name.startswith(BACKWARD) and not _inside_backward(e.cpu_parent):
            stage = seq_stage.get(e.sequence_nr, "other")
            times[stage] = times.get(stage, 0.0) + e.cpu_time_total / 1e3
    times["other"] = times.get("other", 0.0) + max(0.0, total - sum(times.values()))
    return times, total


def _inside_backward(event) -> bool:
    while event is not None:
        if event.name.startswith(BACKWARD):
            return True
        event = event.cpu_parent
    return False


def _stage_children(event) -> Iterator:
    """The outermost stage ranges strictly inside ``event``."""
    for child in event.cpu_children:
        if child.name.startswith(PREFIX):
            yield child
        else:
            yield from _stage_children(child)


def format_breakdown(columns: dict[str, dict[str, float]], order: list[str]) -> str:
    """Stages as rows, one column per provider: milliseconds and share of the provider's profiled step."""
    names = [s for s in order if any(s in c for c in columns.values())]
    names += sorted({s for c in columns.values() for s in c} - set(names))
    head = f"{'stage':26s}" + "".join(f"{p:>22s}" for p in columns)
    lines = [head, "-" * len(head)]
    for s in names:
        cells = []
        for c in columns.values():
            total = sum(c.values())
            cells.append(f"{c[s]:12.0f} ms {100 * c[s] / total:5.1f} %" if s in c else f"{'-':>22s}")
        lines.append(f"{s:26s}" + "".join(cells))
    lines.append(f"{'total (profiled)':26s}" + "".join(f"{sum(c.values()):12.0f} ms {100.0:5.1f} %"
                                                       for c in columns.values()))
    return "\n".join(lines)

