"""``vtviz evaluate-maps``: do the tokens land on the object, and do the maps explain the prediction?

On an image folder with class sub-folders (a model's classes), reproducible (seeded), streamed
with a progress bar, resumable after a kill and ``torchrun``-shardable, this measures for the
class token maps of every VT layer (:func:`vtviz.maps.faithful.class_maps`), Grad-CAM of the same
model and simple baselines:

* **grid pointing game** on 2x2 mosaics of photos of four different classes, each classified
  correctly on its own with probability >= 0.5: each quadrant class's map mass in its quadrant
  (uniform = 0.25); and the share of **object-bound tokens** (>= 80% of a token's attention in
  one quadrant);
* **deletion / insertion** AUCs (pixels in map order, blurred baseline) against a random order,
  and **token-space** deletion / insertion for the last layer (exact) against a random order;
* **model randomisation** (cascading from the head down through the VT modules and the last
  ResNet stage): Spearman rank correlation of each map type with the original;
* **a constructed ground truth**: a small object (the centre of a val photo of another class)
  pasted at four known places on each host photo; which token follows it, with what share.

Outputs in ``OUT``: ``.parts/rank*.jsonl`` (:mod:`vtviz.jobs.runner`: one record per batch of
work, appended as it is done; a rerun skips what is there), then ``results.json`` (every
statistic with its bootstrap 95% CI) and ``results.md`` (the tables).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vtviz.data import list_image_folder
from vtviz.errors import ImageError, json_text
from vtviz.image import fit_image, load_image, to_tensor
from vtviz.jobs.runner import Parts, Shard, run_units, unit_records
from vtviz.maps.explain import _require_vt, logits_of, preprocess_for, token_maps
from vtviz.maps.faithful import (
    ClassMaps,
    blur,
    bootstrap_ci,
    centre_prior,
    class_maps,
    curve_auc,
    deletion_insertion,
    object_bound,
    pixel_ranks,
    pointing_scores,
    randomise_,
    spearman,
    token_curves,
)
from vtviz.models.checkpoint import model_meta
from vtviz.models.vt import VTModel
from vtviz.preprocess import Preprocess

RANDOMISATION_STEPS = ("head", "+VT module 1", "+VT module 0", "+ResNet stage 3")  # cascading, in order


@dataclass(frozen=True)
class MapEvalConfig:
    """What ``evaluate-maps`` measures, on how many images.

    limit: photos drawn (seeded) from the folder; mosaics are made from those classified
    correctly with p >= ``min_p``; curves: photos (of the limit) with deletion/insertion curves;
    randomised / paste: photos with the randomisation check / used as hosts of the paste check;
    steps: points of each deletion/insertion curve minus one; blur: baseline blur sigma as a
    share of the side; batch_size: photos (or mosaics) per unit of work.
    """

    limit: int = 400
    curves: int = 200
    randomised: int = 48
    paste: int = 64
    steps: int = 10
    min_p: float = 0.5
    blur: float = 0.04
    batch_size: int = 8
    seed: int = 0


@dataclass
class _Data:
    files: list[str]
    labels: list[int]
    images: list[np.ndarray]  # fitted RGB [S, S, 3]
    pre: Preprocess
    classes: tuple[str, ...]
    prob: np.ndarray = field(default_factory=lambda: np.zeros(0))  # p of the true class, alone
    pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# --------------------------------------------------------------------------- data
def _sample(folder: Path, class_ids: Sequence[str], limit: int, seed: int) -> tuple[list[str], list[int]]:
    """``limit`` photos of ``folder/<class id>/`` drawn at random (seeded), with their labels
    (indices into ``class_ids``: the model's class ids, or its class names)."""
    files, labels, _, _ = list_image_folder(folder, class_ids)
    if not files:
        raise FileNotFoundError(f"{folder}: no images in class sub-folders")
    pick = np.random.default_rng(seed).permutation(len(files))[:limit]
    return [files[i] for i in pick], [labels[i] for i in pick]


def _load(model: VTModel, folder: Path, cfg: MapEvalConfig, progress: bool) -> _Data:
    meta = model_meta(model)
    pre = preprocess_for(model)
    files, labels = _sample(folder, meta.class_ids or meta.classes, cfg.limit, cfg.seed)
    images, kept_files, kept_labels = [], [], []
    for f, y in tqdm(list(zip(files, labels)), desc="decode", unit="img", disable=not progress, leave=False):
        try:
            images.append(fit_image(load_image(f), pre)[0])
        except ImageError as exc:
            tqdm.write(f"skipped: {exc}")
            continue
        kept_files.append(f)
        kept_labels.append(y)
    data = _Data(kept_files, kept_labels, images, pre, meta.classes)
    probs = []
    for i in range(0, len(images), 32):
        probs.append(logits_of(model, to_tensor(images[i:i + 32], pre)).softmax(-1))
    p = torch.cat(probs)
    data.prob = p.gather(1, torch.tensor(kept_labels)[:, None])[:, 0].numpy()
    data.pred = p.argmax(1).numpy()
    return data


def mosaics(labels: Sequence[int], ok: Sequence[bool], seed: int) -> list[tuple[int, int, int, int]]:
    """Groups of four photos of four different classes among those with ``ok`` (seeded, greedy,
    each photo used at most once): indices into ``labels``."""
    pool = [i for i in np.random.default_rng(seed + 1).permutation(len(labels)) if ok[i]]
    groups: list[tuple[int, int, int, int]] = []
    while True:
        group: list[int] = []
        for i in pool:
            if labels[i] not in {labels[j] for j in group}:
                group.append(int(i))
                if len(group) == 4:
                    break
        if len(group) < 4:
            return groups
        groups.append((group[0], group[1], group[2], group[3]))
        pool = [i for i in pool if i not in group]


def mosaic_image(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Four ``[S, S, 3]`` images as one ``[2S, 2S, 3]`` (top-left, top-right, bottom-left, bottom-right)."""
    return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)


# --------------------------------------------------------------------------- units of work
def _pointing(model: VTModel, data: _Data, groups: Sequence[tuple[int, ...]]) -> list[dict[str, Any]]:
    x = to_tensor([mosaic_image([data.images[i] for i in g]) for g in groups], data.pre)
    targets = torch.tensor([[data.labels[i] for i in g] for g in groups]).flatten()
    cm = class_maps(model, x.repeat_interleave(4, 0), targets)
    quadrant = torch.arange(4).repeat(len(groups))
    kinds = {f"token map, layer {i}": m for i, m in enumerate(cm.token_maps)} | {"Grad-CAM": cm.gradcam}
    h, w = cm.gradcam.shape[-2:]
    kinds["centre prior"] = centre_prior(h, w).expand(len(quadrant), h, w)
    scores = {k: pointing_scores(m, quadrant).view(len(groups), 4) for k, m in kinds.items()}
    records = []
    for n, g in enumerate(groups):
        bound = {f"layer {i}": float(object_bound(a[4 * n:4 * n + 1]).float().mean())
                 for i, a in enumerate(cm.attention)}
        records.append({"files": [data.files[i] for i in g], "classes": [data.classes[data.labels[i]] for i in g],
                        "pointing": {k: [round(float(v), 5) for v in s[n]] for k, s in scores.items()},  # NaN: empty
                        "object_bound": bound})
    return records


def _curves(model: VTModel, x: Tensor, cm: ClassMaps, cfg: MapEvalConfig,
            gen: torch.Generator) -> list[dict[str, Any]]:
    b, _, hh, ww = x.shape
    reps = cm.target.repeat_interleave(cfg.steps + 1)

    def score(imgs: Tensor) -> Tensor:
        return logits_of(model, imgs).softmax(-1).gather(1, reps[:, None])[:, 0].cpu()

    base = blur(x, cfg.blur * hh)
    h, w = cm.gradcam.shape[-2:]
    kinds = {f"token map, layer {i}": m for i, m in enumerate(cm.token_maps)} | {"Grad-CAM": cm.gradcam}
    kinds["random"] = torch.rand((b, h, w), generator=gen)
    out: list[dict[str, Any]] = [{"deletion": {}, "insertion": {}} for _ in range(b)]
    for name, m in kinds.items():
        d, i = deletion_insertion(score, x, base, pixel_ranks(m, (hh, ww), gen), cfg.steps)
        for n in range(b):
            out[n]["deletion"][name] = round(float(curve_auc(d[n])), 5)
            out[n]["insertion"][name] = round(float(curve_auc(i[n])), 5)
    last = len(cm.tokens) - 1
    by_attr = cm.contributions[last].argsort(1, descending=True)
    rand = torch.stack([torch.randperm(by_attr.shape[1], generator=gen) for _ in range(b)])
    for name, order in (("tokens by attribution", by_attr), ("tokens, random order", rand)):
        d, i = token_curves(cm.tokens[last], model.fc.weight.detach().cpu(), model.fc.bias.detach().cpu(),
                            cm.target, order)
        for n in range(b):
            out[n]["deletion"][name] = round(float(curve_auc(d[n])), 5)
            out[n]["insertion"][name] = round(float(curve_auc(i[n])), 5)
    return out


def _map_kinds(cm: ClassMaps) -> dict[str, Tensor]:
    """Maps of a batch by kind, ``[B, ...]``: tokenizer attention (per token) and the class maps
    before their positive part (after it, a randomised model's map is often empty: no ranking)."""
    assert cm.signed_gradcam is not None
    kinds = {f"tokenizer attention, layer {i}": a for i, a in enumerate(cm.attention)}
    kinds |= {f"token map, layer {i}": m for i, m in enumerate(cm.signed_token_maps)}
    kinds["Grad-CAM"] = cm.signed_gradcam
    return kinds


def _randomisation(model: VTModel, x: Tensor, cm: ClassMaps, seed: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    rnd = copy.deepcopy(model)
    parts: list[nn.Module] = [rnd.fc, rnd.vt_layers[-1], rnd.vt_layers[0], rnd.last_stage()]
    ref = _map_kinds(cm)
    out: list[dict[str, Any]] = [{} for _ in range(x.shape[0])]
    for step, part in zip(RANDOMISATION_STEPS, parts):
        randomise_(part, gen)
        now = _map_kinds(class_maps(rnd, x, cm.target))
        for kind, m in now.items():
            r = ref[kind]
            if m.ndim == 4:  # attention: one correlation per token, averaged per image
                corr = spearman(r.flatten(0, 1), m.flatten(0, 1)).view(r.shape[:2]).nanmean(1)
            else:
                corr = spearman(r, m)
            for n in range(x.shape[0]):
                out[n].setdefault(step, {})[kind] = round(float(corr[n]), 5)
    return out


def _paste_object(data: _Data, host_label: int) -> tuple[int, np.ndarray]:
    """The object pasted on a host: the centre half of the most confident photo of the first
    class (in label order) other than the host's, shrunk to a quarter of the side."""
    s = data.pre.size
    for label in range(len(data.classes)):
        cands = [i for i, y in enumerate(data.labels) if y == label and data.pred[i] == y]
        if label != host_label and cands:
            best = max(cands, key=lambda i: data.prob[i])
            crop = data.images[best][s // 4:s - s // 4, s // 4:s - s // 4]
            small = F.interpolate(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float(),
                                  size=(s // 4, s // 4), mode="area")[0].permute(1, 2, 0)
            return label, small.round().clamp(0, 255).byte().numpy()
    raise ValueError("paste check: no correctly classified photo of another class")


def _paste(model: VTModel, data: _Data, idx: Sequence[int]) -> list[dict[str, Any]]:
    s = data.pre.size
    q = s // 4
    corners = [(q // 2, q // 2), (q // 2, s - q - q // 2), (s - q - q // 2, q // 2), (s - q - q // 2, s - q - q // 2)]
    out = []
    objects: dict[int, tuple[int, np.ndarray]] = {}  # by host label: chosen once
    for i in idx:
        if data.labels[i] not in objects:
            objects[data.labels[i]] = _paste_object(data, data.labels[i])
        label, obj = objects[data.labels[i]]
        imgs, regions = [data.images[i]] * 4, []  # the host alone first: what lands there by chance
        for y, x0 in corners:
            img = data.images[i].copy()
            img[y:y + q, x0:x0 + q] = obj
            imgs.append(img)
            r = torch.zeros(s, s)
            r[y:y + q, x0:x0 + q] = 1
            regions.append(r)
        x = to_tensor(imgs, data.pre)
        region = torch.stack(regions * 2)  # [8, S, S]: host alone at the 4 places, then pasted
        maps = token_maps(model, x)
        cm = class_maps(model, x, label)
        rec: dict[str, Any] = {"file": data.files[i], "object_class": data.classes[label], "area": q * q / s / s,
                               "layers": {}}
        for li, la in enumerate(maps.layers):
            up = F.interpolate(la.attention.float().cpu(), size=(s, s), mode="bilinear", align_corners=False)
            share = (up * region[:, None]).sum((-2, -1)) / up.sum((-2, -1)).clamp(min=1e-12)  # [8, L]
            best = share[4:].argmax(1)
            cmap = F.interpolate(cm.token_maps[li][:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
            cshare = (cmap * region).sum((-2, -1)) / cmap.sum((-2, -1)).clamp(min=1e-12)
            rec["layers"][f"layer {li}"] = {
                "best_token": best.tolist(), "best_share": [round(float(v), 5) for v in share[4:].max(1).values],
                "best_share_without": [round(float(v), 5) for v in share[:4].max(1).values],
                "same_token_everywhere": bool((best == best[0]).all()),
                "class_map_share": [round(float(v), 5) for v in cshare[4:]],
                "class_map_share_without": [round(float(v), 5) for v in cshare[:4]],
            }
        out.append(rec)
    return out


def _work(model: VTModel, data: _Data, cfg: MapEvalConfig) -> list[tuple[str, Callable[[], list[dict]]]]:
    """Every unit of work, in a fixed order: (id, function returning its records)."""
    ok = [bool(data.pred[i] == data.labels[i] and data.prob[i] >= cfg.min_p) for i in range(len(data.labels))]
    groups = mosaics(data.labels, ok, cfg.seed)
    units: list[tuple[str, Callable[[], list[dict]]]] = []
    bs = cfg.batch_size
    for start in range(0, len(groups), bs):
        units.append((f"mosaics {start}", partial(_mosaic_unit, model, data, groups[start:start + bs])))
    n = min(cfg.curves, len(data.images))
    for start in range(0, n, bs):
        units.append((f"images {start}", partial(_image_unit, model, data, cfg, start, min(start + bs, n))))
    return units


def _mosaic_unit(model: VTModel, data: _Data, groups: Sequence[tuple[int, ...]]) -> list[dict[str, Any]]:
    return [{"kind": "mosaic", **r} for r in _pointing(model, data, groups)]


def _subset(cm: ClassMaps, idx: list[int]) -> ClassMaps:
    """The images ``idx`` of a batch's class maps."""
    def pick(ts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(t[idx] for t in ts)

    assert cm.signed_gradcam is not None
    return ClassMaps(cm.target[idx], cm.logits[idx], pick(cm.attention), pick(cm.tokens), pick(cm.contributions),
                     pick(cm.token_maps), cm.gradcam[idx], pick(cm.signed_token_maps), cm.signed_gradcam[idx])


def _image_unit(model: VTModel, data: _Data, cfg: MapEvalConfig, start: int, stop: int) -> list[dict[str, Any]]:
    idx = list(range(start, stop))
    x = to_tensor([data.images[i] for i in idx], data.pre)
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + start)
    cm = class_maps(model, x)
    recs: list[dict[str, Any]] = [{"kind": "image", "file": data.files[i], "class": data.classes[data.labels[i]],
             "predicted": data.classes[int(cm.target[n])]} for n, i in enumerate(idx)]
    for rec, c in zip(recs, _curves(model, x, cm, cfg, gen)):
        rec.update(c)
    rnd = [n for n, i in enumerate(idx) if i < cfg.randomised]
    if rnd:
        sub = _subset(cm, rnd)
        for n, r in zip(rnd, _randomisation(model, x[rnd], sub, cfg.seed)):
            recs[n]["randomisation"] = r
    hosts = [i for i in idx if i < cfg.paste]
    for i, r in zip(hosts, _paste(model, data, hosts) if hosts else []):
        recs[i - start]["paste"] = r
    return recs


# --------------------------------------------------------------------------- driver
def evaluate_maps(model: nn.Module, folder: str | Path, out_dir: str | Path,
                  config: MapEvalConfig = MapEvalConfig(), *, rank: int = 0, world: int = 1,
                  barrier: Callable[[], Any] | None = None, progress: bool = True,
                  model_name: str = "") -> dict[str, Any] | None:
    """Run (or resume) the map evaluation of ``model`` on ``folder/<class>/*`` into ``out_dir``;
    returns the summary (rank 0; None on other ranks). See the module's docstring."""
    vt = _require_vt(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": model_name or model_meta(vt).name, "data": str(folder), "config": asdict(config)}
    stamp = out / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) != settings:
        raise ValueError(f"{out}: holds a run with other settings ({stamp}); use another --out")
    t0 = time.perf_counter()
    data = _load(vt, Path(folder), config, progress and rank == 0)  # bad data fails before anything is written
    if rank == 0:
        stamp.write_text(json_text(settings, indent=1))
    shard = Shard(rank, world, barrier)
    parts = Parts(out, shard)
    run_units(_work(vt, data, config), parts, shard, desc="evaluate-maps", progress=progress)
    shard.wait()
    if not shard.main:
        return None
    records = [r for unit in unit_records(parts) for r in unit]
    summary = summarise(records, settings, data, time.perf_counter() - t0)
    (out / "results.json").write_text(json_text(summary, indent=1))
    (out / "results.md").write_text(markdown(summary))
    return summary


# --------------------------------------------------------------------------- summary
def _ci(values: Sequence[float | None]) -> dict[str, float | int]:
    v = np.array([np.nan if x is None else x for x in values], np.float64)  # null: an undefined value
    mean, lo, hi = bootstrap_ci(v)
    return {"mean": round(mean, 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": int(np.isfinite(v).sum())}


def summarise(records: Sequence[dict[str, Any]], settings: dict[str, Any], data: _Data | None = None,
              seconds: float = 0.0) -> dict[str, Any]:
    """Every statistic of the records with its bootstrap 95% CI (the unit: a mosaic or a photo)."""
    mos = [r for r in records if r["kind"] == "mosaic"]
    imgs = [r for r in records if r["kind"] == "image"]
    out: dict[str, Any] = {**settings, "mosaics": len(mos), "images": len(imgs), "seconds_this_run": round(seconds, 1)}
    if data is not None:
        ok = (data.pred == np.asarray(data.labels)) & (data.prob >= settings["config"]["min_p"])
        out["eligible_for_mosaics"] = int(ok.sum())
    if mos:
        def share(values: list[float | None]) -> float:
            v = [np.nan if x is None else x for x in values]
            return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

        out["pointing"] = {k: _ci([share(r["pointing"][k]) for r in mos]) for k in mos[0]["pointing"]}
        out["empty_class_maps"] = {k: round(float(np.mean([x is None for r in mos for x in r["pointing"][k]])), 4)
                                   for k in mos[0]["pointing"]}
        out["object_bound"] = {k: _ci([r["object_bound"][k] for r in mos]) for k in mos[0]["object_bound"]}
    if imgs:
        out["deletion"] = {k: _ci([r["deletion"][k] for r in imgs]) for k in imgs[0]["deletion"]}
        out["insertion"] = {k: _ci([r["insertion"][k] for r in imgs]) for k in imgs[0]["insertion"]}
    rnd = [r["randomisation"] for r in imgs if "randomisation" in r]
    if rnd:
        out["randomisation"] = {step: {k: _ci([r[step][k] for r in rnd]) for k in rnd[0][step]}
                                for step in rnd[0]}
    pastes = [r["paste"] for r in imgs if "paste" in r]
    if pastes:
        out["paste"] = {"area": pastes[0]["area"]}
        for layer in pastes[0]["layers"]:
            ls = [p["layers"][layer] for p in pastes]
            out["paste"][layer] = {
                "best_token_share": _ci([float(np.mean(x["best_share"])) for x in ls]),
                "best_token_share_without_object": _ci([float(np.mean(x["best_share_without"])) for x in ls]),
                "same_token_at_all_4_places": _ci([float(x["same_token_everywhere"]) for x in ls]),
                "class_map_share": _ci([float(np.mean(x["class_map_share"])) for x in ls]),
                "class_map_share_without_object": _ci([float(np.mean(x["class_map_share_without"])) for x in ls]),
            }
    return out


def _cell(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables (mean [95% bootstrap CI])."""
    lines = [f"# Map evaluation: {summary['model']}", "",
             f"Data: `{summary['data']}`; {summary['mosaics']} mosaics, {summary['images']} photos; "
             f"settings: `{json.dumps(summary['config'])}`. Cells: mean [95% bootstrap CI].", ""]
    if "pointing" in summary:
        lines += ["## Grid pointing game (share of the class map in its quadrant; uniform = 0.25)", "",
                  "| map | score |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in summary["pointing"].items()]
        lines += ["", "Class maps with no positive mass (left out of the score above): "
                  + ", ".join(f"{k} {v:.1%}" for k, v in summary["empty_class_maps"].items()) + "."]
        lines += ["", "Object-bound tokens (>= 80% of the attention in one quadrant of a mosaic):", "",
                  "| layer | share of tokens |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in summary["object_bound"].items()]
    if "deletion" in summary:
        lines += ["", "## Deletion (lower is better) and insertion (higher is better) AUC", "",
                  "| order | deletion | insertion |", "|---|---|---|"]
        lines += [f"| {k} | {_cell(summary['deletion'][k])} | {_cell(summary['insertion'][k])} |"
                  for k in summary["deletion"]]
    if "randomisation" in summary:
        kinds = list(next(iter(summary["randomisation"].values())))
        lines += ["", "## Model randomisation: Spearman correlation with the trained model's map", "",
                  "Class maps compared before their positive part (signed); tokenizer attention per token. "
                  "A pass: tokenizer attention is class-agnostic, so it stays exactly 1 while only later parts "
                  "are random and falls once its own module is; a class map (token map, Grad-CAM) must fall "
                  "already when only the head is random, or it does not depend on what the model learned "
                  "about the class.", "",
                  "| randomised (cascading) | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        lines += [f"| {step} | " + " | ".join(_cell(v[k]) for k in kinds) + " |"
                  for step, v in summary["randomisation"].items()]
    if "paste" in summary:
        p = summary["paste"]
        lines += ["", f"## Pasted object (area {p['area']:.4f} of the photo, four places per photo)", "",
                  "Without: the same places on the photo without the object (what lands there by chance).", "",
                  "| layer | best token's share on the object | without | same best token at all 4 places | "
                  "object class's token map on the object | without |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {_cell(v['best_token_share'])} | {_cell(v['best_token_share_without_object'])} | "
                  f"{_cell(v['same_token_at_all_4_places'])} | {_cell(v['class_map_share'])} | "
                  f"{_cell(v['class_map_share_without_object'])} |" for k, v in p.items() if k != "area"]
    return "\n".join(lines) + "\n"


__all__ = ["MapEvalConfig", "evaluate_maps", "markdown", "mosaic_image", "mosaics", "summarise"]
