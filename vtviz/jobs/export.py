"""Batch export of token heatmaps for folders of images (``vtviz export``).

Pipeline: decoding in worker processes -> batched inference (GPU, or bf16 autocast on CPUs
that have it) -> drawing, encoding and writing in the same worker processes (no GIL shared
with the model; a whole batch is drawn while the next one runs), overlapping with inference;
bounded windows keep memory flat, and the decoded photo is kept only at the largest size
drawn. Every file is written atomically (temporary name, then
rename) and each input gets one ``manifest.jsonl`` record once all its outputs exist, so a
killed export resumes where it stopped. Under ``torchrun`` the inputs are sharded across
ranks (:mod:`vtviz.jobs.runner`), each writing its own manifest part, merged by rank 0 at the end.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import json
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vtviz.errors import ImageError, json_text
from vtviz.files import atomic_write, remove_stale_temporaries
from vtviz.image import Geometry, Inputs, fit_image, load_image_reduced, scan_inputs, to_tensor
from vtviz.indices import parse_indices
from vtviz.jobs.runner import Parts, Shard, fingerprint, read_jsonl
from vtviz.jobs.workers import stop_pool, worker_pool
from vtviz.maps.diagnostics import image_diagnostics
from vtviz.maps.explain import ood_scores, preprocess_for, token_maps
from vtviz.maps.faithful import class_maps, class_panels, class_title
from vtviz.maps.tokens import ImageMaps, Scale, TokenMaps, TokenStat, token_table
from vtviz.models.checkpoint import model_meta
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import cpu_threads_beside, model_device
from vtviz.viz import codecs, views
from vtviz.viz.colors import Colormap

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class ExportOptions:
    """What to write for each image.

    layers/tokens: indices to export (None = all); overlays: also one picture per token and
    layer, and the partition (default: per layer the token grid and the all-tokens view);
    class_maps: also "why this class" for the predicted class, the class token map of each
    layer beside Grad-CAM (:mod:`vtviz.maps.faithful`; a backward pass per batch, ~3x the forward);
    colormap, alpha, contour (mass level or None): overlay look (see :attr:`render`); size:
    longer side of the pictures in pixels (None = original); fmt: jpg (default), png or webp;
    images: write pictures; raw: write ``maps.npz``; fit: override the model's preprocessing
    fit (e.g. letterbox).
    """

    layers: tuple[int, ...] | None = None
    tokens: tuple[int, ...] | None = None
    overlays: bool = False
    class_maps: bool = False
    colormap: Colormap = Colormap.TURBO
    alpha: float = views.RenderOptions.alpha
    contour: float | None = views.RenderOptions.contour
    size: int | None = 1600  # pictures' longer side; None: the photo's own (memory grows with it)
    fmt: str = "jpg"  # photos with overlays: JPEG (quality 90) encodes ~10x faster than PNG
    images: bool = True
    raw: bool = True
    fit: Fit | None = None

    @property
    def render(self) -> views.RenderOptions:
        """The drawing options of the shared views (every map on its own range)."""
        return views.RenderOptions(self.colormap, self.alpha, Scale.PER_MAP, self.contour)


@dataclass
class ExportSummary:
    """Counts and throughput of one export run (also the manifest's last line)."""

    inputs: int = 0
    ok: int = 0  # inputs with complete outputs in the merged manifest (all runs, all ranks)
    exported: int = 0
    skipped: int = 0
    failed: int = 0
    not_images: int = 0  # files in the input folders skipped as not images (recorded, not failures)
    wall_s: float = 0.0
    images_per_s: float = 0.0
    device: str = ""
    model: str = ""
    world_size: int = 1
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every input succeeded, 2 when some failed."""
        return 2 if self.failed else 0


# --------------------------------------------------------------------------- naming, files
def safe_name(path: Path) -> str:
    """A collision-free, file-system-safe folder name for an input path.

    The readable part is :func:`vtviz.viz.views.safe_stem` of the file name; an 8-hex hash of the
    full path tells apart equal names in other folders.
    """
    stem = views.safe_stem(path.name)
    digest = hashlib.sha1(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}"


# --------------------------------------------------------------------------- manifest
def read_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Input records of the manifest and of unmerged parts, by source path (latest wins)."""
    merged = [*read_jsonl(out_dir / MANIFEST), *Parts(out_dir).records()]
    return {rec["source"]: rec for rec in merged if "source" in rec}


def is_complete(record: dict[str, Any], out_dir: Path) -> bool:
    """True when a record says ok and every output file it lists exists."""
    return record.get("status") == "ok" and all((out_dir / p).is_file() for p in record_outputs(record))


def record_outputs(record: dict[str, Any]) -> list[str]:
    """All output paths (relative to the export folder) of a record."""
    paths = [record["raw"]] if record.get("raw") else []
    for layer in record.get("layers", []):
        paths += [t["file"] for t in layer.get("tokens", []) if t.get("file")]
        paths += [layer[k] for k in ("grid", "partition", "constellation") if layer.get(k)]
    if record.get("class_maps"):
        paths.append(record["class_maps"]["file"])
    return paths


def merge_manifest(out_dir: Path, order: Sequence[str], summary: ExportSummary) -> list[dict[str, Any]]:
    """Write ``manifest.jsonl``: every record in input order, then the summary; drop parts."""
    records = read_records(out_dir)
    rank = {s: i for i, s in enumerate(order)}
    ordered = sorted(records.values(), key=lambda r: (rank.get(r["source"], len(rank)), r["source"]))
    summary.failed = sum(r.get("status") == "error" for r in ordered)
    summary.not_images = sum(r.get("status") == "not an image" for r in ordered)
    summary.ok = sum(r.get("status") == "ok" for r in ordered)
    summary.failures = [{"source": r["source"], "error": r.get("error", "")}
                        for r in ordered if r.get("status") == "error"]
    lines = [json_text(r, ensure_ascii=False) for r in ordered]
    lines.append(json_text({"summary": asdict(summary)}, ensure_ascii=False))
    atomic_write(out_dir / MANIFEST, ("\n".join(lines) + "\n").encode("utf-8"))
    Parts(out_dir).clear()
    return ordered


# --------------------------------------------------------------------------- stages
@dataclass
class _Decoded:
    index: int
    source: str
    path: Path
    sha256: str = ""
    image: np.ndarray | None = None
    fitted: np.ndarray | None = None
    geometry: Geometry | None = None
    error: str = ""


def _decode(index: int, path: Path, pre: Preprocess, display: int | None = None) -> _Decoded:
    """Read, hash, decode and fit one input. The photo kept for drawing is shrunk to ``display``
    px on its longer side (the largest picture drawn): what travels between processes and
    waits in the pipeline does not grow with the photo."""
    item = _Decoded(index, str(path), path)
    try:
        data = path.read_bytes()
        item.sha256 = hashlib.sha256(data).hexdigest()
        # a JPEG is decoded no larger than the pictures (and twice the model's input) need
        image, factor, full = load_image_reduced(data, None if display is None else (display, 2 * pre.size),
                                                 name=str(path))
        del data
        item.fitted, geometry = fit_image(image, pre)
        item.geometry = geometry.of_full_image(factor, full)
        if display and max(image.shape[:2]) > display:
            image = codecs.resize_image(image, codecs.fit_size(image.shape[:2], display))
        item.image = image
    except ImageError as exc:
        item.error = exc.reason
    except OSError as exc:
        item.error = f"cannot read file ({exc.strerror or exc})"
    return item


def _decoded_stream(jobs: list[tuple[int, Path]], pre: Preprocess, pool: ProcessPoolExecutor | None,
                    window: int, display: int | None, workers: int = 0) -> Iterator[_Decoded]:
    """Decode in input order (in ``pool``, or inline when None) with at most ``window`` images in
    flight. Until the pool's ``workers`` have started (spawning one imports torch: ~2 s; forked
    ones start at once), inputs are decoded inline, so that the model starts at once instead of waiting for them."""
    if pool is None:
        for index, path in jobs:
            yield _decode(index, path, pre, display)
        return
    started = [pool.submit(os.getpid) for _ in range(workers)]
    pending: deque[Future | _Decoded] = deque()
    it = iter(jobs)

    def fill() -> None:
        """Top the window up; an input decoded inline ends it (it can be handed over at once)."""
        while len(pending) < window:
            nxt = next(it, None)
            if nxt is None:
                return
            if all(f.done() for f in started):
                pending.append(pool.submit(_decode, nxt[0], nxt[1], pre, display))
            else:
                pending.append(_decode(nxt[0], nxt[1], pre, display))
                return

    fill()
    while pending:
        head = pending.popleft()
        yield head.result() if isinstance(head, Future) else head
        fill()


@dataclass
class RenderJob:
    """Everything one image's outputs are drawn from, handed to a drawing worker.

    ``maps``: its maps (batch of one); ``ood``: its flag record (None: the model has none);
    ``why``: the title and panels of its class maps (:func:`vtviz.maps.faithful.class_panels`);
    ``stats``: its rows of the token table and its diagnostics, computed with its batch's."""

    item: _Decoded
    maps: TokenMaps
    classes: Sequence[str]
    options: ExportOptions
    out_dir: Path
    ood: dict[str, Any] | None = None
    model_name: str = ""
    fingerprint: str = ""
    why: tuple[str, list[tuple[str, torch.Tensor]]] | None = None
    stats: tuple[list[TokenStat], list[dict[str, Any]]] | None = None


def _render_one(job: RenderJob) -> dict[str, Any]:
    """Draw (through :func:`vtviz.viz.views.image_pictures`), encode and write all outputs of one
    image (statistics computed here when the job has none). Returns its manifest record."""
    item, maps, classes, opts, out_dir, ood = job.item, job.maps, job.classes, job.options, job.out_dir, job.ood
    model_name, fingerprint, why, stats = job.model_name, job.fingerprint, job.why, job.stats
    assert item.image is not None and item.geometry is not None
    folder = safe_name(item.path)
    one = ImageMaps([item.image], [item.geometry], maps, tuple(classes),
                    None if ood is None else (ood["score"],), None if ood is None else ood["threshold"])
    layers = [i for i in range(len(maps.layers)) if opts.layers is None or i in opts.layers]
    h0, w0 = item.geometry.original_size
    record: dict[str, Any] = {
        "source": item.source, "status": "ok", "sha256": item.sha256, "size": [w0, h0],
        "fingerprint": fingerprint,  # model weights and options: a rerun with others redoes the photo
        "output_dir": folder,
        "top5": [{"class": c, "p": round(p, 4)} for c, p in one.top_k(5)[0]],
        "ood": ood,  # out-of-distribution score and flag (None: the model has none)
        "layers": [],
    }
    if not torch.isfinite(maps.logits).all():
        record["warning"] = "the model's output holds NaN or infinite values (written as null)"
    table, record["diagnostics"] = stats or (token_table(maps, [item.geometry], layers),
                                             image_diagnostics(maps)[0])
    pictures = {p.layer: p for p in views.image_pictures(
        one, 0, layers, opts.tokens, opts.render, opts.size, title=item.path.name,
        full_overlays=opts.overlays, partition=opts.overlays)} if opts.images else {}
    for i in layers:
        la = maps.layers[i]
        wanted = range(la.num_tokens) if opts.tokens is None else opts.tokens
        rows = {r.token: r.to_dict() for r in table if r.layer == i and r.token in wanted}
        entry: dict[str, Any] = {"layer": i, "kind": la.kind, "tokens": [
            {k: v for k, v in row.items() if k not in ("image", "layer", "kind")} for row in rows.values()]}
        pics = pictures.get(i)
        if pics is not None:
            # the layer's pictures beside maps.npz, its per-token overlays in a folder of their
            # own (a new folder costs as much as a new file: 0.5 ms of CPU on some disks)
            sub = f"{folder}/layer{i}-{la.kind}"
            for rec, img in zip(entry["tokens"], pics.overlays if opts.overlays else ()):
                rec["file"] = f"{sub}/token{rec['token']:02d}.{opts.fmt}"
                atomic_write(out_dir / rec["file"], codecs.encode(img, opts.fmt))
            for key, picture in (("grid", pics.grid), ("partition", pics.partition),
                                 ("constellation", pics.constellation)):
                if picture is not None:
                    entry[key] = f"{sub}-{key}.{opts.fmt}"
                    atomic_write(out_dir / entry[key], codecs.encode(picture, opts.fmt))
            entry["partition_by"] = "attention"
        record["layers"].append(entry)
    if why is not None and opts.images:
        title, panels = why
        record["class_maps"] = {"file": f"{folder}/class-maps.{opts.fmt}", "title": title,
                                "panels": [label for label, _ in panels]}
        picture = views.class_map_view(item.image, item.geometry, panels, title, opts.render,
                                       size=min(opts.size or 480, 480))
        atomic_write(out_dir / record["class_maps"]["file"], codecs.encode(picture, opts.fmt))
    if opts.raw:
        record["raw"] = f"{folder}/maps.npz"
        arrays = views.raw_arrays(one, names=[item.path.name], model=model_name)
        atomic_write(out_dir / record["raw"], views.npz_bytes(arrays))
    return record


def _pack(job: RenderJob) -> bytes:
    """Pickle a render job, CPU tensors as NumPy arrays: torch pickles each tensor through its
    own serialiser (~50 us a tensor each way; a job holds eight), NumPy as plain bytes."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[torch.Tensor] = _reduce_tensor
    pickler.dump(job)
    return buf.getvalue()


def _reduce_tensor(t: torch.Tensor) -> tuple[Any, ...]:
    if t.device.type == "cpu" and not t.requires_grad and t.dtype != torch.bfloat16:  # (NumPy has no bfloat16)
        return torch.from_numpy, (t.numpy(),)
    return t.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _render_packed(job: bytes) -> dict[str, Any]:
    """:func:`_render_one` of a job pickled by the exporter. Tensors travel inside plain pickle
    bytes: handed to the pool as they are, torch would share each through a file descriptor
    served by a listener thread, which prints a traceback when a stopped export kills workers."""
    return _render_one(pickle.loads(job))


# --------------------------------------------------------------------------- driver
def _start(out: Path, resume: bool, shard: Shard, fingerprint: str) -> dict[str, str]:
    """Clean up after a killed run (rank 0); return the sources already complete under the same
    model and options (``fingerprint``), with the SHA-256 of the content they were made from."""
    if shard.main:
        remove_stale_temporaries(out)
        if not resume:
            (out / MANIFEST).unlink(missing_ok=True)
            Parts(out).clear()
    shard.wait()
    if not resume:
        return {}
    return {s: r.get("sha256", "") for s, r in read_records(out).items()
            if is_complete(r, out) and r.get("fingerprint") == fingerprint}


def export_fingerprint(model: nn.Module, options: ExportOptions) -> str:
    """What an export's outputs depend on besides the photo: the weights and the options."""
    return fingerprint(model, asdict(options))


def _unchanged(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def check_selection(model: nn.Module, layers: Sequence[int] | None, tokens: Sequence[int] | None) -> None:
    """Raise ValueError when ``layers`` or ``tokens`` name a layer or token the model lacks."""
    num_layers = len(getattr(model, "vt_layers", ()))
    num_tokens = model_meta(model).config.num_tokens
    for what, chosen, count in (("layer", layers, num_layers), ("token", tokens, num_tokens)):
        bad = [i for i in (chosen or ()) if not 0 <= i < count]
        if bad:
            raise ValueError(f"{what} {bad[0]} is out of range: the model has {count} {what}s (0-{count - 1})")


def export(model: nn.Module, inputs: Sequence[Path], out_dir: str | Path,
           options: ExportOptions = ExportOptions(), *, batch_size: int = 16, workers: int = 2,
           writers: int = 2, resume: bool = True, progress: bool = True, rank: int = 0,
           world: int = 1, barrier: Callable[[], Any] | None = None, model_name: str = "",
           notes: Sequence[tuple[Path, str, str]] = ()) -> ExportSummary:
    """Export token maps of ``inputs`` (image paths, in this order) into ``out_dir``.

    Returns the summary of this run (after merging the manifest when ``rank == 0``).
    ``barrier`` is called before merging in multi-process runs. ``notes`` are inputs that were
    not exported, recorded as they are: ``(path, status, reason)`` with status ``"error"`` (a
    failed input) or ``"not an image"`` (skipped by :func:`vtviz.image.scan_inputs`'s rule).
    """
    check_selection(model, options.layers, options.tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shard, meta = Shard(rank, world, barrier), model_meta(model)
    parts = Parts(out, shard)
    order = [str(p) for p in inputs] + [str(p) for p, _, _ in notes]  # the manifest's order
    fp = export_fingerprint(model, options)
    done = _start(out, resume, shard, fp)
    mine = [(i, Path(p)) for i, p in shard.mine(inputs)]
    todo = [(i, p) for i, p in mine if str(p) not in done or not _unchanged(p, done[str(p)])]
    summary = ExportSummary(inputs=len(inputs), skipped=len(mine) - len(todo),
                            device=str(next(model.parameters()).device), model=model_name or meta.name,
                            world_size=world)
    if not todo and not notes and world == 1 and (out / MANIFEST).exists() and not parts.exists():
        return summary  # a finished export: nothing to do, nothing written (a read-only copy works)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"export{f' rank {rank}' if world > 1 else ''}",
               unit="img", disable=not progress)
    with parts.writer() as part, cpu_threads_beside(model_device(model), workers):
        for path, status, reason in (notes if shard.main else ()):
            part.write({"source": str(path), "status": status, "error": reason})
        _Pipeline(model, options, out, fp, summary, part, bar, batch_size, workers, writers).run(todo)
    bar.close()
    summary.wall_s = round(time.perf_counter() - t0, 3)
    summary.images_per_s = round(summary.exported / summary.wall_s, 2) if summary.wall_s > 0 else 0.0
    shard.wait()
    if shard.main:
        merge_manifest(out, order, summary)
    return summary


class _Pipeline:
    """Decoding -> batched inference -> drawing for one rank's inputs. One pool of worker
    processes decodes inputs and draws outputs beside the model (no GIL shared with it); without
    workers, decoding is inline and drawing runs in ``writers`` threads."""

    def __init__(self, model: nn.Module, options: ExportOptions, out: Path, fingerprint: str,
                 summary: ExportSummary, part: Any, bar: Any, batch_size: int, workers: int, writers: int) -> None:
        self.model, self.options, self.out, self.fingerprint = model, options, out, fingerprint
        self.summary, self.part, self.bar, self.batch_size, self.workers = summary, part, bar, batch_size, workers
        self.meta, self.pre = model_meta(model), preprocess_for(model, options.fit)
        self.procs = worker_pool(workers) if workers > 0 else None
        self.pool: ProcessPoolExecutor | ThreadPoolExecutor = self.procs or ThreadPoolExecutor(max(1, writers))
        # renders in flight: a whole batch beside the next batch's forward pass, plus a few queued
        self.in_flight = batch_size + 2 * (workers if self.procs else writers)
        self.pending: deque[Future] = deque()

    def run(self, todo: list[tuple[int, Path]]) -> None:
        """Export ``todo``; interrupted, queued work is dropped (files are atomic, the rest resumes)."""
        finished = False
        try:
            batch: list[_Decoded] = []
            window = max(2 * self.batch_size, 4)
            for item in _decoded_stream(todo, self.pre, self.procs, window, self.options.size, self.workers):
                if item.error:
                    self.drain(0)
                    self.write({"source": item.source, "status": "error", "error": item.error, "sha256": item.sha256})
                    continue
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self.submit(batch)
                    batch = []
            self.submit(batch)
            self.drain(0)
            finished = True
        finally:
            if self.procs is not None:
                stop_pool(self.procs, finished)
            else:
                self.pool.shutdown(wait=True, cancel_futures=not finished)

    def write(self, rec: dict[str, Any]) -> None:
        self.part.write(rec)
        if rec["status"] == "ok":
            self.summary.exported += 1
        self.bar.update(1)
        self.bar.set_postfix(ok=self.summary.exported, failed=self.bar.n - self.summary.exported)

    def drain(self, limit: int) -> None:
        while len(self.pending) > limit:
            self.write(self.pending.popleft().result())

    def submit(self, batch: list[_Decoded]) -> None:
        """One forward pass for the batch, then one render job per image."""
        if not batch:
            return
        for job in self.jobs(batch):
            self.pending.append(self.pool.submit(_render_packed, _pack(job)) if self.procs is not None
                                else self.pool.submit(_render_one, job))
        self.drain(self.in_flight)

    def jobs(self, batch: list[_Decoded]) -> list[RenderJob]:
        model, options = self.model, self.options
        x = to_tensor([b.fitted for b in batch], self.pre)  # type: ignore[misc]
        for b in batch:
            b.fitted = None  # the drawing needs the photo only: less to send to the workers
        maps = token_maps(model, x).cpu()
        cm = class_maps(model, x) if options.class_maps and options.images else None
        flag = ood_scores(model, maps, [b.image for b in batch])  # type: ignore[misc]
        # statistics of the whole batch at once (torch's per-call overhead once, not per image)
        table = token_table(maps, [b.geometry for b in batch], options.layers)  # type: ignore[misc]
        diagnostics = image_diagnostics(maps)
        rows: list[list[TokenStat]] = [[] for _ in batch]
        for r in table:
            rows[r.image].append(r)  # each image's rows (the record drops the batch index)
        jobs = []
        for j, item in enumerate(batch):
            ood: dict[str, Any] | None = None
            if flag.scores is not None:
                ood = {"score": round(flag.scores[j], 4), "threshold": flag.threshold,
                       "unfamiliar": bool(flag.threshold is not None and flag.scores[j] > flag.threshold)}
                if flag.looks_like is not None:
                    ood["looks_like"] = flag.looks_like[j]
            why = None if cm is None else (class_title(cm, j, self.meta.classes, maps.logits[j]), class_panels(cm, j))
            jobs.append(RenderJob(item, maps.select(j), self.meta.classes, options, self.out, ood,
                                  self.summary.model, self.fingerprint, why, (rows[j], diagnostics[j])))
        return jobs


def load_manifest(out_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Records and summary of a finished export's ``manifest.jsonl``."""
    records, summary = [], None
    for line in (Path(out_dir) / MANIFEST).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "summary" in rec:
            summary = rec["summary"]
        else:
            records.append(rec)
    return records, summary


def iter_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand the command line's INPUTs (files, folders, globs) in a stable order."""
    return scan_inputs(inputs).files


def input_notes(scan: Inputs) -> list[tuple[Path, str, str]]:
    """The ``notes`` of :func:`export` for what :func:`vtviz.image.scan_inputs` set aside."""
    return ([(p, "error", reason) for p, reason in scan.rejected]
            + [(p, "not an image", reason) for p, reason in scan.skipped])


__all__ = ["ExportOptions", "ExportSummary", "export", "iter_inputs", "load_manifest", "parse_indices",
           "safe_name"]
