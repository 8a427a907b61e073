"""vtviz in the browser: upload photos and compare what each visual token attends to.

A thin shell over the vtviz API: ``streamlit run app/streamlit_app.py``.
Models are loaded once per process; inference is cached per (model, image content, fit),
so changing colours, scale or tokens only re-renders pictures.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from pathlib import Path

import streamlit as st

import vtviz
from vtviz.app.session import (
    ModelStore,
    Upload,
    comparable_first,
    content_hash,
    explain_upload,
    plain,
    sample_uploads,
)
from vtviz.errors import CheckpointError, VTVizError
from vtviz.image import load_image, prepare
from vtviz.indices import parse_indices
from vtviz.jobs.gallery import Gallery, GalleryOptions, gallery_of_images, load_gallery
from vtviz.maps.diagnostics import diagnose
from vtviz.maps.diagnostics import table as diagnostics_table
from vtviz.maps.explain import preprocess_for
from vtviz.maps.faithful import ClassMaps, class_maps, class_panels, class_title
from vtviz.maps.tokens import Scale
from vtviz.preprocess import Fit
from vtviz.runtime import device_label
from vtviz.viz import codecs, views
from vtviz.viz.colors import Colormap

SAMPLES = Path(__file__).resolve().parent / "samples"
DEFAULT_MODEL = "vt-lite0-imagenet"
PAGE = 8  # images per page: many uploads never render hundreds of overlays at once
COLUMNS = 4  # photos per row in the overview
OVERVIEW_SIZE = 216  # px: the overview's pictures are shown at their own size at 1400 px wide
MAIN_WIDTH = 900  # px: the main column's width at 1400 px (pictures are made to fit it)
STRIP_CELL = 112  # px: one token of the selected photo in the overview's strip
ORIENTATION = (
    "A **visual token** is a soft spotlight over the photo: the model pools what lies under each of its "
    "16 spotlights into one token, lets the tokens exchange information, and answers from them. "
    "Below, each photo shows where its spotlights fall (each coloured outline holds half of one token's "
    "light, its number at the brightest spot) with the model's answer, then the spotlights of one photo "
    "one by one. Next, try **Token grid** (one token across photos), **Why this class** (which tokens "
    "carry the answer) or **Filter vs recurrent** (the first and the second tokenizer).")

st.set_page_config(page_title="vtviz: visual tokens", layout="wide")
_started = time.perf_counter()


@st.cache_resource
def store() -> ModelStore:
    return ModelStore()


@st.cache_data(max_entries=512, show_spinner=False)
def explain_cached(model_key: str, image_hash: str, fit: str, _upload: Upload) -> vtviz.ImageMaps:
    """Maps of one image; cached by (model, content hash, fit), never by the bytes themselves."""
    return explain_upload(store().get(model_key), _upload, fit=fit)


@st.cache_data(max_entries=64, show_spinner=False)
def class_maps_cached(model_key: str, image_hash: str, fit: str, target: int, _upload: Upload) -> ClassMaps:
    """Class token maps and Grad-CAM of one image for one class (cached like the maps)."""
    model = store().get(model_key)
    result = explain_cached(model_key, image_hash, fit, _upload)  # the photo as the app shows it
    x, _ = prepare(result.images, preprocess_for(model, fit))
    return class_maps(model, x, target)


def gallery_cached(model_key: str, fit: str, hashes: tuple[str, ...], layer: int,
                   uploads: list[Upload]) -> Gallery:
    """The gallery of the photos shown (kept per model, fit and photo contents)."""
    key = ("gallery", model_key, fit, hashes, layer)
    if key not in st.session_state:
        images = [(up.name, load_image(up.data, name=up.name)) for up in uploads]
        st.session_state[key] = gallery_of_images(store().get(model_key), images,
                                                  GalleryOptions(layers=(layer,)))[layer]
    return st.session_state[key]


@st.cache_data(show_spinner=False)
def samples(dataset: bool) -> tuple[list[Upload], bool]:
    return sample_uploads(SAMPLES, "default" if dataset else None)


def run_model(model_key: str, uploads: list[Upload], fit: str) -> tuple[vtviz.ImageMaps | None,
                                                                        list[Upload]]:
    """Explain every image; a bad one becomes an error message and the rest still render.

    Returns the maps and the uploads they belong to, in the same order (result i is upload i).
    """
    results, kept = [], []
    for up in uploads:
        try:
            results.append(explain_cached(model_key, content_hash(up.data), fit, up))
            kept.append(up)
        except VTVizError as exc:
            st.error(f"Skipped {plain(exc)}")
    return (views.concat(results) if results else None), kept


# --------------------------------------------------------------------------- sidebar
sb = st.sidebar
sb.title("vtviz")
sb.caption(f"Device: {device_label()}")
bundled = store().bundled()
if "models" not in st.session_state:
    st.session_state.models = {name: name for name in bundled}  # label -> key
with sb.expander("Load another checkpoint"):
    ckpt = st.file_uploader("vtviz checkpoint (.safetensors, .pt)",
                            type=["safetensors", "pt", "pth"], key="ckpt")
    data = ckpt.getvalue() if ckpt is not None else b""
    if ckpt is not None and content_hash(data) != st.session_state.get("ckpt_seen"):
        st.session_state.ckpt_seen = content_hash(data)
        try:
            key = store().add_upload(data, ckpt.name)
            label = f"uploaded: {len(st.session_state.models):02d}-{views.safe_stem(ckpt.name)}"
            st.session_state.models[label] = key
            st.success(f"Loaded {plain(label)}")
        except CheckpointError as exc:
            st.error(f"Not a usable vtviz model, kept the previous one. {plain(exc)}")
model_labels = list(st.session_state.models)
if not model_labels:
    st.error("No model: put a checkpoint in vtviz/pretrained/ (or set VTVIZ_PRETRAINED to a folder) "
             "or upload one in the sidebar.")
    st.stop()
default = model_labels.index(DEFAULT_MODEL) if DEFAULT_MODEL in model_labels else 0
model_label = sb.selectbox("Model", model_labels, index=default,
                           help="A bundled model, or one loaded below from a checkpoint file")
model_key = st.session_state.models[model_label]
try:
    model = store().get(model_key)
except CheckpointError:  # an uploaded checkpoint evicted to bound memory (the store keeps the newest)
    del st.session_state.models[model_label]
    st.error(f"{plain(model_label)} was unloaded to save memory: upload it again to use it.")
    st.stop()
meta = vtviz.model_meta(model)
if not isinstance(model, vtviz.VTModel):
    st.error(f"{plain(model_label)} is a {meta.config.arch} without visual tokens (e.g. the ResNet baseline): "
             "there are no token maps to show. Choose a VT model in the sidebar.")
    st.stop()
with sb.expander(f"Classes this model knows ({len(meta.classes)})"):
    st.text(", ".join(map(str, meta.classes)))  # text, never Markdown: names come from the checkpoint
    flagged = isinstance(model, vtviz.VTModel) and model.ood is not None
    st.caption("Any other photo is still forced into one of these. "
               + ("A photo of something else is marked 'unfamiliar', with what it looks like instead."
                  if flagged else "This model has no unfamiliar-photo flag." if len(meta.classes) < 1000
                  else ""))
kinds = list(meta.config.tokenizers)
layer = sb.radio("Layer", range(len(kinds)), format_func=lambda i: f"layer {i} · {kinds[i]}",
                 index=0, horizontal=True,
                 help="Which VT module: the first has a filter-based tokenizer (fixed learned filters), "
                      "later ones a recurrent tokenizer (filters computed from the previous tokens)")
num_tokens = meta.config.num_tokens
token_text = sb.text_input("Tokens", f"0-{num_tokens - 1}",
                           help=f"Token numbers and ranges, e.g. 0-3,7 (0 to {num_tokens - 1})")
try:
    tokens = sorted(set(parse_indices(token_text, num_tokens, "token") or range(num_tokens)))
except ValueError as exc:
    sb.warning(f"{exc}. Showing all tokens.", icon="⚠️")
    tokens = list(range(num_tokens))
kind_names = {views.MapKind.ATTENTION: "tokenizer attention",
              views.MapKind.MIXED: "token-mixed attention",
              views.MapKind.ASSIGNMENT: "projector assignment"}
kind = sb.radio("Map", views.model_kinds(model, layer),
                format_func=lambda k: kind_names[k],
                help="Tokenizer attention: where each token pools from (sums to 1 over the map). "
                     "Token-mixed: the same after the transformer mixes tokens. Projector assignment: how "
                     "much each pixel takes from the token (not on the last layer, which has no projector)")
colormap = sb.selectbox("Colour map", [c.value for c in Colormap], index=0,
                        help="Colours of map values, low to high (see the colour bar under the grid)")
DEFAULTS = views.RenderOptions()
alpha = sb.slider("Opacity", 0.0, 1.0, DEFAULTS.alpha, 0.05,
                  help="Largest opacity of a map; weaker parts fade out (opacity = this x value^0.3)")
dim = sb.slider("Dim photo", 0.0, 1.0, DEFAULTS.dim, 0.05,
                help="Grey and darken the photo under the maps so that they stand out")
scale = sb.radio("Colour scale", [Scale.PER_MAP.value, Scale.SHARED.value],
                 format_func=lambda s: {"per_map": "each map on its own",
                                        "shared": "shared by all images"}[s],
                 help="Each map on its own: every map from its min to its max (shapes comparable). "
                      "Shared: one range 0..max for all maps drawn (strengths comparable too)")
fits = [f.value for f in Fit]
fit = sb.selectbox("Fit images", fits, index=fits.index(meta.preprocess.fit.value),
                   help="crop: the centre square; letterbox: whole photo; stretch: as Imagenette")
options = views.RenderOptions(Colormap(colormap), alpha, Scale(scale), cell=200, dim=dim)

# --------------------------------------------------------------------------- images
st.title("What do the visual tokens see?")
st.markdown(ORIENTATION)
# No type filter: vtviz decodes by content (".JPEG", ".jfif", ... all work) and names bad files.
files = st.file_uploader("Drop images here", accept_multiple_files=True, key="images")
# a model of a few classes opens on photos of them (when the dataset is at hand) and one it does not know
few_classes = len(meta.classes) <= 100
uploads, familiar = ([Upload(f.name, f.getvalue()) for f in files], False) if files else samples(few_classes)
if not files and familiar:
    st.caption(f"Showing {len(uploads) - 1} Imagenette val photos (read from the dataset beside the repository; "
               "ImageNet's terms: research and education) and a cat, which this model does not know. "
               "Upload your own above.")
elif not files:
    st.caption("Showing four photos that scikit-image ships (app/samples/README.md). Upload your own above.")
result, shown = run_model(model_key, uploads, fit)
names = [up.name for up in shown]
PHOTOS_KEY = zlib.crc32("\n".join(names).encode())


def pick_photo(label: str, key: str, **kwargs) -> int:
    """One photo of this page, by name. Keyed by the photo set: a new set gets a fresh picker
    (a kept one showed a stale name after an upload)."""
    return st.selectbox(label, page_ids, format_func=lambda i: names[i], key=f"{key}-{PHOTOS_KEY}", **kwargs)


captions = [plain(name) for name in names]  # image captions render Markdown: file names are made inert
if result is None:
    st.warning("No image could be read.")
    st.stop()
n_images = len(names)


def photo_line(i: int) -> str:
    """A photo's name and its one prediction (from the one forward pass every view draws)."""
    return f"**{plain(names[i])}** · {plain(result.prediction_label(i))}"


page_ids = list(range(n_images))
if n_images > PAGE:
    pages = -(-n_images // PAGE)
    page = st.number_input(f"Page (of {pages}, {PAGE} images each)", 1, pages, 1)
    page_ids = page_ids[(page - 1) * PAGE: page * PAGE]

diagnostics = diagnose(result.maps)
for warning in views.view_warnings(diagnostics[layer], kind):
    st.warning(warning)
VIEWS = ["Overview", "Token grid", "All tokens", "Why this class", "Filter vs recurrent", "Compare models",
         "Token gallery", "Token details"]
view = st.radio("View", VIEWS, horizontal=True, key="view")  # only the chosen view is rendered

if view == "Overview":
    cols = st.columns(COLUMNS)
    for n, i in enumerate(page_ids):
        with cols[n % COLUMNS]:
            st.image(codecs.encode(views.constellation_view(result, i, layer, tokens, size=OVERVIEW_SIZE,
                                                            options=options, title=False, legend=False),
                                   "jpg", quality=92), width=OVERVIEW_SIZE)
            st.markdown(photo_line(i))
            if (note := result.unfamiliar_note(i)) is not None:
                st.caption(plain(note))
    image = pick_photo("Tokens of", "strip_image")
    strip, _ = views.overlays(result, layer, tokens, kind, dataclasses.replace(options, contour=None),
                              [image], cell=STRIP_CELL)
    st.image([codecs.encode(p, "jpg", quality=90) for p in strip[0]], caption=[f"token {t}" for t in tokens],
             width=STRIP_CELL)
    st.caption(f"Each token's {kind_names[kind]} over {plain(names[image])}, brighter where it looks more "
               "(each map on its own colour scale unless 'shared' is chosen in the sidebar).")

elif view == "Token grid":
    # cells sized so that the grid is shown at its own size (its labels stay >= 12 px)
    fitted = dataclasses.replace(options, cell=max(96, min(200, (MAIN_WIDTH - 80) // len(page_ids) - 2)))
    grid = views.token_grid(result, layer, tokens, kind, fitted, names=names, images=page_ids)
    st.image(codecs.encode(grid, "jpg", quality=92),  # fast to encode and send; PNG on download
             caption="rows: tokens · columns: images (top prediction above)", width=grid.shape[1])
    c1, c2, c3 = st.columns(3)  # files are made when clicked, not on every rerun
    c1.download_button("Grid (PNG)", lambda: views.png_bytes(grid), "vtviz-grid.png", "image/png")
    c2.download_button("Overlays (ZIP)",
                       lambda: views.overlays_zip(result, layer, tokens, options, names),
                       "vtviz-overlays.zip", "application/zip")
    c3.download_button("Raw maps (NPZ)", lambda: views.maps_npz(result, names, model_label),
                       "vtviz-maps.npz",
                       "application/octet-stream")

elif view == "All tokens":
    isolate = st.selectbox("Isolate a token", [None, *tokens], key="isolate",
                           format_func=lambda t: "none: all tokens" if t is None else f"token {t}",
                           help="Keep one token bright; the others stay as thin outlines")
    pictures = [views.constellation_view(result, i, layer, tokens, isolate=isolate, size=360, options=options)
                for i in page_ids]
    st.image([codecs.encode(p, "jpg", quality=92) for p in pictures], caption=[captions[i] for i in page_ids],
             width=360)
    st.caption("Each token's 50%-mass region of the tokenizer attention, in its own colour, with its "
               "number at its peak; the photo is dimmed. Compare where the same token lands across images.")

elif view == "Why this class":
    image = pick_photo("Image", "why_image")
    predicted = int(result.maps.logits[image].argmax())
    target = st.selectbox("Class", range(len(result.classes)), index=predicted, key="why_class",
                          format_func=lambda c: result.classes[c] + (" (predicted)" if c == predicted else ""),
                          help="The class whose evidence is drawn (default: the model's prediction)")
    if (note := result.unfamiliar_note(image)) is not None:
        st.warning(f"Unfamiliar photo ({plain(note)}): the evidence below explains a prediction that "
                   "probably means nothing.")
    st.markdown(photo_line(image))  # the same line, from the same pass, as in the overview
    cm = class_maps_cached(model_key, content_hash(shown[image].data), fit, target, shown[image])
    st.image(codecs.encode(views.class_map_view(result.images[image], result.geometries[image],
                                                class_panels(cm, 0),
                                                class_title(cm, 0, result.classes, result.maps.logits[image]),
                                                options, size=(MAIN_WIDTH - 40) // 3), "jpg", quality=92))
    st.caption("Class token map: each token's tokenizer attention weighted by its contribution to this "
               "class's logit (gradient x token), summed, positive part. For the last layer the "
               "contributions are exact (the logits are linear in its tokens); for layer 0 they are a "
               "first-order estimate. Grad-CAM: the same model, on the feature map the tokens attend over. "
               "How well each lands on the object is measured in the model's card (`vtviz evaluate-maps`, "
               f"vtviz/pretrained/{plain(model_label)}.md). Token maps often look like a few bright spots: "
               "each token attends to a few cells of the grid, so their weighted sum is as sharp; the ring "
               "marks the strongest evidence and the outline the region holding half of it.")
    contrib = cm.contributions[-1][0]
    st.dataframe([{"token": k, "contribution to the logit": round(float(contrib[k]), 3)}
                  for k in contrib.argsort(descending=True).tolist()], height=200)

elif view == "Filter vs recurrent":
    image = pick_photo("Image", "tok_image")
    st.image(views.layer_grid(result, image, tokens, kind, options, name=names[image]),
             caption="one image: rows are the first layer's tokens; each later layer shows the token "
                     "matched to it (Hungarian matching of the maps over all images shown)")

elif view == "Compare models":
    others = comparable_first(meta, {m: vtviz.model_meta(store().get(st.session_state.models[m]))
                                     for m in model_labels if m != model_label})
    if not others:
        st.info("Only one model is loaded: add a checkpoint to compare.")
    else:
        other_label = st.selectbox("Compare with", others, key="other_model")
        image = pick_photo("Image", "cmp_image", help="One image at a time, so that the comparison stays readable")
        other_result, _ = run_model(st.session_state.models[other_label], shown, fit)
        if other_result is not None:
            # tokens are matched over every image shown, not only this one
            grid = views.model_grid([result, other_result], [model_label, other_label], layer, tokens,
                                    kind, options, names=names, image=image)
            st.image(codecs.encode(grid, "jpg", quality=92),
                     caption="rows: tokens of the first model; the second model's column shows the token "
                             "matched to each (Hungarian matching of their maps over all images shown; "
                             "'weak': similarity below 0.3, no clear counterpart)")
            st.download_button("Comparison (PNG)", lambda: views.png_bytes(grid), "vtviz-compare.png",
                               "image/png")

elif view == "Token gallery":
    folder = st.text_input("Gallery folder (made by `vtviz gallery --model M --out DIR FOLDER`)", "",
                           key="gallery_dir", help="Leave empty to use the photos shown on this page")
    token = st.selectbox("Token", tokens, key="gallery_token")
    if folder:
        try:
            gallery = load_gallery(folder, layer)
            source = f"gallery folder {folder}"
        except (OSError, ValueError, KeyError) as exc:
            st.error(f"Cannot read that gallery: {plain(exc)}")
            st.stop()
    else:
        gallery = gallery_cached(model_key, fit, tuple(content_hash(up.data) for up in shown), layer, shown)
        source = f"the {len(shown)} photos shown"
    items = gallery.items[token] if token < len(gallery.items) else []
    st.caption(f"Token {token}, layer {layer}: its top {len(items)} photos among {source}, cropped at its peak, "
               "its map drawn on the crop with its 50%-mass outline; the number is its score (the map's peak "
               "value). Beside them: the token on the photos of this page.")
    c1, c2 = st.columns(2)
    if items:
        c1.image([it.crop for it in items], caption=[plain(Path(it.source).name) for it in items], width=128)
    ov, _ = views.overlays(result, layer, [token], views.MapKind.ATTENTION, options, page_ids)
    c2.image([o[0] for o in ov], caption=[captions[i] for i in page_ids], width=200)

else:
    token = st.selectbox("Token", tokens, key="detail_token")
    big = dataclasses.replace(options, cell=320)
    ov, _ = views.overlays(result, layer, [token], kind, big, page_ids)
    st.image([o[0] for o in ov], caption=[captions[i] for i in page_ids], width=320)
    stats = views.token_statistics(result, layer, token)
    st.dataframe([{"image": names[s["image"]], **{k: v for k, v in s.items() if k not in ("image", "layer")}}
                  for s in stats if s["image"] in page_ids])
    st.caption("entropy: of the map over its cells, / ln(number of cells) (1 = spread evenly, 0 = one cell); "
               "peak: [row, col] of the map's largest cell (the map has one cell per 16x16 input pixels); "
               "peak_xy: that cell's centre on the original photo, in its pixels [x, y]; spread: RMS "
               "distance of the attention from its centre of mass, in cells; top10: share of the attention "
               "in the 10% most attended cells; overlap: mean IoU of this token's 50%-mass region with the "
               "other tokens' regions.")
    image = pick_photo("Image for the matrix and the partition", "detail_image")
    c1, c2 = st.columns(2)
    c1.image(views.mixing_view(result, image, layer), caption="token mixing (transformer attention)")
    c2.image(views.partition_view(result, image, layer, by=kind), caption="which token owns each pixel")

st.divider()
with st.expander("Diagnostics: do the transformer and projector relate tokens?"):
    st.caption("Per layer, over the images shown. Mixing targets: distinct tokens read most (per image, "
               "of 16; 1 = every token reads one 'sink' token; 16 also for tokens reading only themselves, which "
               "'reads itself' shows). Max received: the largest share of all "
               "transformer attention one token receives. Owners: tokens owning >= 5% of the pixels in "
               "the projector. Border sinks: tokens per image with most of their attention on the border. "
               "Positional tokens need 8 or more images.")
    st.dataframe(diagnostics_table(diagnostics))
    for i, d in enumerate(diagnostics):
        for warning in d.warnings():
            st.warning(f"layer {i}: {warning}")

# How long this run took (read by the tests to compare a first render with a re-render).
st.session_state["render_seconds"] = time.perf_counter() - _started
