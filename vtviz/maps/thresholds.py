"""Every threshold that vtviz's diagnostics and views judge tokens by, in one documented place.

Diagnostics (:mod:`vtviz.maps.diagnostics`) say when a view is meaningless; the targets
(``MIN_*``/``MAX_*``) are what a model must meet for its diagnostics panel to show no warning
(the models issues' targets); token statistics bounds (:meth:`vtviz.maps.tokens.LayerStats.within_bounds`)
say whether a layer's tokens are focused and distinct enough to show; the rest are drawing rules.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- diagnostics
#: A token owns a pixel when it has the largest assignment weight there; it is an
#: "owner" when it owns at least this share of the pixels.
OWNER_SHARE = 0.05
#: A token receives "most" attention above this share of all attention (rows average).
SINK_SHARE = 0.5
#: Border sink: more than this share of a token's attention on the map's outer ring.
BORDER_SHARE = 0.5
#: Positional token: the mean distance of its peak to its dataset-mean peak, in cells of
#: the token map, is below this. A token that follows content moves across photos by many
#: cells (4.5 or more on Imagenette val for every token of the first bundled models); one
#: cell is the resolution of the map itself.
POSITIONAL_CELLS = 1.5
#: Tokens that give the register tokens more than this share of their attention barely read
#: one another: the transformer then relates them only through the registers' summary.
REGISTER_SHARE = 0.9
#: Tokens that give themselves more than this share of their attention (the diagonal of the
#: mixing) mostly read no other token: the transformer is then close to the identity, however
#: many distinct argmax targets the rows have (16 for the identity itself).
SELF_SHARE = 0.5
#: High-norm token: its vector norm exceeds the image's median token norm by this factor.
HIGH_NORM_FACTOR = 3.0

# --------------------------------------------------------------------------- targets (no warning)
#: At least this many distinct tokens read most by the rows of the mixing, per image.
MIN_MIXING_TARGETS = 6
#: At least this many projector owners (tokens owning >= OWNER_SHARE of the pixels), per image.
MIN_OWNERS = 4
#: At most this many positional tokens, and this many border sinks per image.
MAX_POSITIONAL = 1
MAX_BORDER_SINKS = 1

# --------------------------------------------------------------------------- token statistics
#: A layer's tokens are worth showing one by one when their mean normalised entropy is at most
#: this (1 = uniform maps), their mean pairwise map cosine at most STATS_COSINE, and they peak
#: at STATS_PEAKS or more distinct cells per image.
STATS_ENTROPY = 0.85
STATS_COSINE = 0.5
STATS_PEAKS = 8

# --------------------------------------------------------------------------- views
#: Share of each token's attention mass inside the region the all-tokens view draws.
ALL_TOKENS_MASS = 0.5
#: Mean pieces per token region (on the token grid) from which the all-tokens view says its
#: regions are fragmented: on Imagenette val photos, focused layers average 1.6-3.5 pieces, the
#: filter-only models' spread-out layers 3.9-7.2.
FRAGMENTED = 4.0
#: A matched pair below this mean map similarity is labelled weak: its tokens do not
#: clearly correspond (cosine similarity of two random sharp maps is near 0).
WEAK_MATCH = 0.3
