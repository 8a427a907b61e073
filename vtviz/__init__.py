"""vtviz: see what the visual tokens of a Visual Transformer attend to.

Typical use::

    import vtviz
    model = vtviz.load_model("vt-r18-imagenette-v7")     # bundled, GPU when present
    result = vtviz.explain_images(model, ["cat.jpg"])     # one forward pass
    layer = result.maps.layers[0]                         # layer.kind == "filter"
    layer.attention                                       # [B, L, h, w], sums to 1 over h*w
"""

from vtviz.errors import CheckpointError, ImageError, VTVizError
from vtviz.image import Geometry, load_image, maps_to_original, prepare
from vtviz.maps.diagnostics import LayerDiagnostics, diagnose
from vtviz.maps.explain import explain_images, predict, token_maps
from vtviz.maps.tokens import (
    ImageMaps,
    LayerMaps,
    LayerStats,
    Scale,
    TokenMaps,
    layer_stats,
    normalize,
    normalized_entropy,
    top_k,
    upsample,
)
from vtviz.models.checkpoint import (
    attach_meta,
    load_model,
    model_meta,
    read_checkpoint,
    save_model,
)
from vtviz.models.meta import ModelMeta
from vtviz.models.registry import build_model, list_pretrained
from vtviz.models.vt import Ablation, ModelConfig, VTModel, VTResNet, resnet18, vt_resnet18, vt_resnet34
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import device_label, resolve_device

__version__ = "0.1.0"

__all__ = [
    "Ablation", "CheckpointError", "Fit", "Geometry", "ImageError", "ImageMaps", "LayerMaps", "LayerStats",
    "ModelConfig", "ModelMeta", "Preprocess", "Scale", "TokenMaps", "VTModel", "VTResNet", "VTVizError",
    "LayerDiagnostics", "attach_meta", "build_model", "device_label", "diagnose", "explain_images",
    "layer_stats", "list_pretrained",
    "load_image", "load_model", "maps_to_original", "model_meta", "normalize",
    "normalized_entropy", "predict", "prepare", "read_checkpoint", "resnet18",
    "resolve_device", "save_model", "token_maps", "top_k", "upsample", "vt_resnet18",
    "vt_resnet34",
]
