"""One runner for resumable, shardable work over folders: export, galleries, map evaluation.

A job's output folder holds, while it runs, ``.parts/``: one append-only JSON-lines file per
rank, one line per finished unit of work, flushed as it is written. A kill loses at most the
line being written (a cut line is skipped when read) and the unit it belonged to is redone.
Which units are already done is read back from the parts (the *resume set*); a job's settings
and weights go into a *fingerprint* so that a rerun with other settings never mixes results.
Rank 0 merges the parts into the job's final files after a barrier (export and galleries then
remove them; map evaluation keeps them as its record of finished units, so a rerun is a no-op).

Sharding: rank ``r`` of ``world`` processes does the units ``i`` with ``i % world == r``
(``torchrun`` gives each process its rank; :func:`vtviz.runtime.init_distributed`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn
from tqdm import tqdm

from vtviz.errors import json_text

T = TypeVar("T")
#: the folder of unmerged parts inside a job's output folder
PARTS = ".parts"


@dataclass(frozen=True)
class Shard:
    """Which share of a job this process does, and how it waits for the others."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], Any] | None = None

    @property
    def main(self) -> bool:
        """True on the rank that merges (rank 0)."""
        return self.rank == 0

    def mine(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """``(index, item)`` of the items this rank does: ``index % world == rank``."""
        return [(i, item) for i, item in enumerate(items) if i % self.world == self.rank]

    def wait(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.barrier is not None:
            self.barrier()


class Parts:
    """A job folder's parts: ``OUT/.parts/rankRRR-of-WWW.jsonl``, one per rank."""

    def __init__(self, out: Path, shard: Shard = Shard()) -> None:
        self.folder = out / PARTS
        self.path = self.folder / f"rank{shard.rank:03d}-of-{shard.world:03d}.jsonl"

    def records(self) -> Iterator[dict[str, Any]]:
        """Every rank's records, file by file in name order (lines cut by a kill are skipped)."""
        for part in sorted(self.folder.glob("*.jsonl")):
            yield from read_jsonl(part)

    def writer(self) -> _Writer:
        """An append-only writer of this rank's part (a context manager)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return _Writer(open(self.path, "a", encoding="utf-8"))

    def exists(self) -> bool:
        """True when this rank's part file is there (an unfinished or unmerged run)."""
        return self.path.exists()

    def clear(self) -> None:
        """Remove every part (after a merge, or before a fresh start)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per line; a line cut by a kill is skipped,
    and a missing file has none."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


class _Writer:
    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line and flush it to the file."""
        self._f.write(json_text(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def fingerprint(model: nn.Module, settings: dict[str, Any]) -> str:
    """What a job's results depend on besides its inputs: every weight and the settings (16 hex)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def run_units(units: Sequence[tuple[str, Callable[[], Any]]], parts: Parts, shard: Shard, *,
              desc: str, progress: bool = True) -> None:
    """Run this rank's units that no part records yet; each finished unit becomes one line
    ``{"unit": id, "records": result}``. Unit ids must be unique and stable across reruns."""
    done = {rec.get("unit") for rec in parts.records()}
    mine = [(uid, fn) for _, (uid, fn) in shard.mine(units) if uid not in done]
    with parts.writer() as w:
        for uid, fn in tqdm(mine, desc=desc, unit="unit", disable=not progress or not shard.main):
            w.write({"unit": uid, "records": fn()})


def unit_records(parts: Parts) -> Iterator[Any]:
    """The results of every finished unit, once each (a unit redone after a kill counts once)."""
    seen: set[str] = set()
    for rec in parts.records():
        uid = rec.get("unit")
        if isinstance(uid, str) and uid not in seen:
            seen.add(uid)
            yield rec["records"]
