"""What the CLI prints: JSON for scripts, aligned tables for people, and a run's steps as they progress."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import BaseModel

from rime_client.models import TERMINAL, PipelineRun


def as_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any], out: TextIO) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [item.model_dump(mode="json") for item in value]
    out.write(json.dumps(data, indent=2) + "\n")


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}s"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: TextIO) -> None:
    """Columns padded to their widest cell; `-` for an empty one."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def fields(pairs: Iterable[tuple[str, object]], out: TextIO) -> None:
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        out.write(f"{key + ':':<{width + 1}} {cell(value)}\n")


def step_rows(run: PipelineRun) -> list[list[object]]:
    return [[s.step_id, s.type, s.status, s.duration_seconds, s.rows, s.error] for s in run.steps]


STEP_HEADERS = ("STEP", "TYPE", "STATUS", "DURATION", "ROWS", "ERROR")


class RunProgress:
    """A run's steps as the run's updates arrive (RunHandle.wait's `on_update`). On a terminal, one block redrawn in
    place; otherwise (a log, CI) one timestamped line per change, so the output reads well when it is not a screen."""

    def __init__(self, out: TextIO, run_id: str, *, live: bool):
        self.out, self.run_id, self.live = out, run_id, live
        self.steps: dict[str, tuple[str, str, float | None]] = {}  # step id -> (name, status, duration)
        self.status = ""
        self.drawn = 0

    def __call__(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "step_update":
            step_id = str(message["step_id"])
            entry = (str(message.get("step_name") or step_id), str(message["status"]), message.get("duration_seconds"))
            if self.steps.get(step_id, ("", "", None))[1] == entry[1]:
                return
            self.steps[step_id] = entry
            self._changed(step_id, entry[1], entry[2])
        elif kind == "run_update" and message.get("status") != self.status:
            self.status = str(message["status"])
            self._changed("run", self.status, None)  # the closing summary gives the run's duration

    def _changed(self, name: str, status: str, duration: float | None) -> None:
        if self.live:
            self._redraw()
            return
        clock = datetime.now(UTC).strftime("%H:%M:%S")
        took = f" ({duration:.1f}s)" if duration is not None and status in TERMINAL | {"completed", "failed"} else ""
        self.out.write(f"{clock}  {name:<{self._width()}}  {status}{took}\n")
        self.out.flush()

    def _width(self) -> int:
        return max([len("run"), *(len(step_id) for step_id in self.steps)])

    def _redraw(self) -> None:
        lines = [f"run {self.run_id}: {self.status or 'queued'}"]
        width = self._width()
        for step_id, (_name, status, duration) in self.steps.items():
            took = f"  {duration:.1f}s" if duration is not None else ""
            lines.append(f"  {step_id:<{width}}  {status}{took}")
        # Back to the block's first line, then each line cleared and rewritten.
        self.out.write((f"\x1b[{self.drawn}F" if self.drawn else "") + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)
