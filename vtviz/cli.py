"""The ``vtviz`` command: ``info``, ``predict``, ``export``, ``train``, ``evaluate``.

A thin shell over the library: parse arguments, call the API, print JSON or text.
Exit status: 0 success, 1 fatal error (bad model, bad arguments), 2 some inputs failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vtviz.errors import CheckpointError, VTVizError, json_text
from vtviz.models.checkpoint import load_model, model_meta, record_evaluation
from vtviz.preprocess import Fit
from vtviz.viz.colors import Colormap


def _describe(name: str, model: Any, full: bool = False) -> dict[str, Any]:
    """What ``vtviz info`` prints: a concise summary, or everything with ``full``."""
    from vtviz.models.vt import count_parameters

    meta = model_meta(model)
    training = dict(meta.training)
    if not full:
        val = training.get("val") or {}
        training = {"data": training.get("data"), "epochs": training.get("epochs"),
                    "wall_time_s": training.get("wall_time_s"), "hardware": training.get("hardware"),
                    "val": {k: val[k] for k in ("images", "top1", "top5", "input_size") if k in val},
                    "dev": {k: v for k, v in (training.get("dev") or {}).items() if k != "token_stats"},
                    "fine-tuned from": (training.get("init") or {}).get("checkpoint")}
        training = {k: v for k, v in training.items() if v not in (None, {})}
    summary = {
        "model": name,
        "name": meta.name,
        "description": meta.description,
        "architecture": meta.config.arch,
        "tokenizers": list(getattr(model, "tokenizer_kinds", [])),
        "num_tokens": meta.config.num_tokens if meta.config.tokenizers else 0,
        "token_channels": meta.config.token_channels,
        "num_classes": meta.config.num_classes,
        "classes": list(meta.classes),
        "parameters": count_parameters(model),
        "input_size": meta.preprocess.size,
        "preprocess": meta.preprocess.to_dict(),
        "config": meta.config.to_dict(),
        "ood_flag": meta.ood if full else (None if meta.ood is None else
                                           {k: meta.ood[k] for k in ("k", "threshold", "quantile") if k in meta.ood}),
        "training": training,
    }
    return summary


def cmd_info(args: argparse.Namespace) -> int:
    model = load_model(args.model, device="cpu")
    print(json_text(_describe(args.model, model, args.full), indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vtviz.image import load_image, scan_inputs, shown_path
    from vtviz.maps.explain import predictions

    scan = scan_inputs(args.images)
    model = load_model(args.model, device=args.device)
    n_classes = len(model_meta(model).classes)
    failed = 0

    def fail(path: Path | str, reason: str) -> None:
        nonlocal failed
        failed += 1
        if args.json:
            print(json_text({"image": str(path), "error": reason}))
        print(f"error: {shown_path(path)}: {reason}", file=sys.stderr)

    for path, reason in scan.rejected:
        fail(path, reason)
    for path in scan.files:
        try:
            image = load_image(path)
        except VTVizError as exc:
            fail(path, getattr(exc, "reason", str(exc)))
            continue
        pred = predictions(model, [image], k=args.top)[0]
        if args.json:
            print(json_text({"image": str(path), "top": [{"class": c, "p": p} for c, p in pred.top],
                              "unfamiliar": pred.unfamiliar, "ood_score": pred.ood_score,
                              **({"looks_like": pred.looks_like} if pred.looks_like else {})}))
        else:
            seen = f"looks like: {pred.looks_like} — " if pred.looks_like else "probably "
            flag = f"  [unfamiliar photo: {seen}not one of this model's {n_classes} classes]" if pred.unfamiliar else ""
            print(f"{shown_path(path)}: " + ", ".join(f"{c} {p:.3f}" for c, p in pred.top) + flag)
    if failed:
        print(f"{failed} of {len(scan.files) + len(scan.rejected)} inputs failed", file=sys.stderr)
    return 2 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vtviz.jobs.evaluate import evaluate

    model = load_model(args.model, device=args.device)
    if args.record and args.size not in (None, model_meta(model).preprocess.size):
        raise CheckpointError("--record stores the accuracy at the model's own input size: drop --size")
    result = evaluate(model, args.data, size=args.size, batch_size=args.batch_size,
                      confusion=args.confusion, cache_dir=args.cache_dir, progress=not args.quiet,
                      ablate=args.ablate)
    if not args.quiet:
        print(_evaluation_text(result), file=sys.stderr)
    if args.record:
        path = record_evaluation(args.model, {**result, "data": str(args.data)})
        print(f"recorded in {path}", file=sys.stderr)
    result["model"] = args.model
    print(json_text(result, indent=2))
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from vtviz.indices import parse_indices
    from vtviz.jobs.export import iter_inputs
    from vtviz.jobs.gallery import GalleryOptions, build_gallery
    from vtviz.models.vt import VTModel
    from vtviz.runtime import close_distributed, init_distributed

    d, device = init_distributed(args.device)
    try:
        model = load_model(args.model, device=device)
        if not isinstance(model, VTModel):
            raise CheckpointError(f"{args.model}: a token gallery needs a VT model")
        options = GalleryOptions(k=args.k, crop=args.crop,
                                 layers=parse_indices(args.layers, len(model.vt_layers), "layer"),
                                 batch_size=args.batch_size, save_every=args.save_every)
        index = build_gallery(model, iter_inputs(args.inputs), args.out, options, rank=d.rank, world=d.world,
                              barrier=d.barrier, progress=not args.quiet and d.main, model_name=args.model)
    finally:
        close_distributed(d)
    if d.main:
        for failure in index.get("failed", []):
            print(f"failed: {failure['source']}: {failure['error']}", file=sys.stderr)
        if not args.quiet:
            print(json_text({"out": args.out, "images": index.get("images"), "failed": len(index.get("failed", []))}))
    return 2 if d.main and index.get("failed") else 0


def cmd_calibrate_ood(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from vtviz.data import read_image_folder
    from vtviz.jobs.evaluate import calibrate_ood
    from vtviz.models.checkpoint import save_model
    from vtviz.models.vt import VTModel
    from vtviz.train.dev import dev_split

    model = load_model(args.model, device=args.device)
    if not isinstance(model, VTModel):
        raise CheckpointError(f"{args.model}: the OOD flag needs a VT model")
    meta = model_meta(model)
    train = read_image_folder(Path(args.data) / "train", meta.preprocess, class_ids=meta.class_ids or None,
                              cache_dir=args.cache_dir)
    _, held_out = dev_split(train.labels, args.dev_fraction, args.seed)
    model.ood = calibrate_ood(model, train, held_out, bank_size=args.bank, k=args.k, quantile=args.quantile,
                              seed=args.seed)
    model.ood.info.update(dev_fraction=args.dev_fraction, data=Path(args.data).name)
    path = save_model(model.cpu(), args.out, meta, dtype=torch.float16)
    print(json_text({"checkpoint": str(path), **model.ood.meta()}))
    return 0


def _evaluation_text(result: dict) -> str:
    """A few readable lines: accuracy, each layer's diagnostics and warnings, ablations."""
    from vtviz.maps.diagnostics import LayerDiagnostics

    lines = [f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  ({result['images']} images, "
             f"{result['input_size']} px)"]
    for i, d in enumerate(result.get("diagnostics", [])):
        diag = LayerDiagnostics(**d)
        owners = "" if diag.owners is None else f", {diag.owners:.1f} projector owners >= 5%"
        own = "" if diag.self_read is None else f" (self {diag.self_read:.2f})"
        lines.append(f"layer {i} ({diag.kind}): {diag.mixing_targets:.1f} mixing targets{own}, max received "
                     f"{diag.max_received:.2f}{owners}, {diag.border_sinks:.2f} border sinks, "
                     f"positional {diag.positional or 'none'}")
        lines += [f"  warning: {w}" for w in diag.warnings()]
    for name, ab in result.get("ablations", {}).items():
        lines.append(f"ablation '{name}': top-1 {ab['top1']:.4f} ({ab['top1_change']:+.4f}), "
                     f"map correlation {ab['attention_correlation']}")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from vtviz.image import scan_inputs
    from vtviz.indices import parse_indices
    from vtviz.jobs.export import ExportOptions, export, input_notes
    from vtviz.runtime import close_distributed, init_distributed

    d, device = init_distributed(args.device)
    rank, world, barrier = d.rank, d.world, d.barrier
    import signal
    from concurrent.futures.process import BrokenProcessPool

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        scan = scan_inputs(args.inputs)
        model = load_model(args.model, device=device)
        meta = model_meta(model)
        options = ExportOptions(
            layers=parse_indices(args.layers, len(meta.config.tokenizers), "layer"),
            tokens=parse_indices(args.tokens, meta.config.num_tokens, "token"), overlays=args.overlays,
            class_maps=args.class_maps,
            colormap=Colormap(args.colormap), alpha=args.alpha, contour=args.contour,
            size=args.size or None, fmt=args.format, images=not args.raw_only, raw=not args.no_raw,
            fit=Fit(args.fit) if args.fit else None)
        summary = export(model, scan.files, args.out, options, batch_size=args.batch_size,
                         workers=args.workers, writers=args.writers, resume=args.resume,
                         progress=not args.quiet and rank == 0, rank=rank, world=world,
                         barrier=barrier, model_name=args.model, notes=input_notes(scan))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what is written stays, the rest resumes
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 128 + (exc.args[0] if exc.args else signal.SIGINT)
    except BrokenProcessPool:  # a worker killed from outside (e.g. the out-of-memory killer)
        print("vtviz export: error: a worker process died (killed, e.g. by the out-of-memory killer); what "
              "is written stays: rerun the same command to resume, with fewer --workers or a smaller "
              "--batch-size if memory is short", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        close_distributed(d)
    if rank == 0 and not args.quiet:
        print(json_text({k: v for k, v in summary.__dict__.items() if k != "failures"}))
        for failure in summary.failures:
            print(f"failed: {failure['source']}: {failure['error']}", file=sys.stderr)
    return summary.exit_code if rank == 0 else 0


def cmd_train(args: argparse.Namespace) -> int:
    from vtviz.train.loop import train

    train(args)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from vtviz.train.distill import DistillConfig, distill

    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "recipe", "run")}
    print(json_text({"checkpoint": str(distill(DistillConfig.from_recipe(args.recipe, args.run, **values)))}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vtviz`` command."""
    parser = argparse.ArgumentParser(prog="vtviz", description="Visual-token attention maps of VT models.")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_add_info_predict, _add_evaluate_calibrate, _add_evaluate_maps, _add_export, _add_gallery):
        add(sub)
    p = sub.add_parser("train", help="train a VT model on an ImageFolder dataset")
    from vtviz.train.config import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_train)
    from vtviz.train.distill import add_arguments as distill_arguments

    p = sub.add_parser("distill", help="distil VT-Lite0 (1000 classes) from its backbone: a recipe file")
    distill_arguments(p)
    p.set_defaults(func=cmd_distill)
    return parser


def _add_info_predict(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a model as JSON")
    p.add_argument("model", help="bundled model name or checkpoint path")
    p.add_argument("--full", action="store_true", help="the whole training summary (history, parent's too)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="top-k classes per image")
    p.add_argument("model")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)



def _add_evaluate_maps(sub: Any) -> None:
    from vtviz.jobs.evaluate_maps import MapEvalConfig

    d = MapEvalConfig()
    p = sub.add_parser("evaluate-maps", help="do the maps land on the object and explain the prediction? "
                                             "(pointing game, deletion/insertion, randomisation, pasted object)")
    p.add_argument("model")
    p.add_argument("--data", required=True, help="folder of class sub-folders (e.g. imagenette/val)")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    p.add_argument("--limit", type=int, default=d.limit, help=f"photos drawn from the folder (default {d.limit})")
    p.add_argument("--curves", type=int, default=d.curves,
                   help=f"photos with deletion/insertion curves (default {d.curves})")
    p.add_argument("--randomised", type=int, default=d.randomised,
                   help=f"photos of the model-randomisation check (default {d.randomised})")
    p.add_argument("--paste", type=int, default=d.paste,
                   help=f"host photos of the pasted-object check (default {d.paste})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"deletion/insertion steps (default {d.steps})")
    p.add_argument("--min-p", type=float, default=d.min_p,
                   help=f"mosaic photos: classified correctly alone with at least this probability (default {d.min_p})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate_maps)


def cmd_evaluate_maps(args: argparse.Namespace) -> int:
    from vtviz.jobs.evaluate_maps import MapEvalConfig, evaluate_maps
    from vtviz.runtime import close_distributed, init_distributed

    d, device = init_distributed(args.device)
    try:
        model = load_model(args.model, device=device)
        cfg = MapEvalConfig(limit=args.limit, curves=args.curves, randomised=args.randomised, paste=args.paste,
                            steps=args.steps, min_p=args.min_p, batch_size=args.batch_size, seed=args.seed)
        summary = evaluate_maps(model, args.data, args.out, cfg, rank=d.rank, world=d.world, barrier=d.barrier,
                                progress=not args.quiet, model_name=args.model)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        close_distributed(d)
    if summary is not None and not args.quiet:
        print(f"wrote {Path(args.out) / 'results.json'} and results.md", file=sys.stderr)
    return 0


def _add_evaluate_calibrate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="accuracy and token statistics on an image folder (JSON)")
    p.add_argument("model")
    p.add_argument("--data", required=True, help="folder of class sub-folders (e.g. imagenette/val)")
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--confusion", action="store_true", help="include the confusion matrix")
    p.add_argument("--ablate", action="store_true",
                   help="also top-1 and map correlation with parts switched off (transformer "
                        "attention identity/uniform, no transformer, no projector, recurrent "
                        "token-dependent term zeroed)")
    p.add_argument("--record", action="store_true",
                   help="store the result in the checkpoint's training summary (its 'val')")
    p.add_argument("--cache-dir", default=None, help="cache decoded images here")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate-ood", help="fit the out-of-distribution flag on training photos")
    p.add_argument("model")
    p.add_argument("--data", required=True, help="ImageFolder root with train/ (val/ is not read)")
    p.add_argument("--out", required=True, help="checkpoint to write (the model with its flag)")
    p.add_argument("--dev-fraction", type=float, default=0.1,
                   help="held-out share of train/ for the threshold (per class; as vtviz train's)")
    p.add_argument("--seed", type=int, default=0, help="dev split seed (as vtviz train's)")
    p.add_argument("--bank", type=int, default=2000, help="training images in the feature bank")
    p.add_argument("--k", type=int, default=10, help="k of the k-th nearest neighbour")
    p.add_argument("--quantile", type=float, default=0.95,
                   help="threshold: this quantile of the held-out training scores")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_calibrate_ood)



def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="token heatmaps for folders of images")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs")
    p.add_argument("--model", required=True, help="bundled model name or checkpoint path")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layers", default=None, help="layer indices, e.g. 0 or 0,1 (default: all)")
    p.add_argument("--tokens", default=None, help="token indices, e.g. 0-3,7 (default: all)")
    p.add_argument("--overlays", action="store_true",
                   help="also write one overlay picture per token and layer, and the partition "
                        "(default: per layer the token grid and the all-tokens view, plus maps.npz)")
    p.add_argument("--class-maps", action="store_true",
                   help="also 'why this class': the class token map of each layer beside Grad-CAM, for "
                        "the predicted class (class-maps.jpg; a backward pass per batch)")
    p.add_argument("--colormap", default="turbo", choices=[c.value for c in Colormap])
    p.add_argument("--alpha", type=float, default=0.85, help="largest overlay opacity (default 0.85)")
    p.add_argument("--contour", type=lambda v: None if v.lower() == "none" else float(v), default=0.5,
                   help="outline the region holding this share of each token's attention (default 0.5; "
                        "'none': no outline)")
    p.add_argument("--size", type=int, default=1600,
                   help="longer side of the pictures in px (default 1600: memory stays bounded whatever "
                        "the photo's size; 0: the photo's own size)")
    p.add_argument("--format", default="jpg", choices=["png", "jpg", "webp"],
                   help="picture format (default jpg, quality 90: ~10x faster to write than png)")
    p.add_argument("--fit", default=None, choices=[f.value for f in Fit],
                   help="override the model's preprocessing (letterbox: see whole photos)")
    p.add_argument("--raw-only", action="store_true", help="only maps.npz, no pictures")
    p.add_argument("--no-raw", action="store_true", help="no maps.npz")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes that decode inputs and draw outputs (0: decode inline)")
    p.add_argument("--writers", type=int, default=2, help="drawing threads when --workers is 0")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip inputs whose outputs are complete (default when a manifest exists)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)




def _add_gallery(sub: Any) -> None:
    p = sub.add_parser("gallery", help="each token's top photos of folders, with its map (resumable)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="gallery folder (index.json, index.html, crops)")
    p.add_argument("--k", type=int, default=8, help="photos per token")
    p.add_argument("--crop", type=int, default=128, help="crop side, px")
    p.add_argument("--layers", default=None, help="e.g. 0 or 0,1 (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--save-every", type=int, default=256, help="photos between resumable saves")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_gallery)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vtviz`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (VTVizError, OSError, ValueError) as exc:
        print(f"vtviz {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
