"""Token maps and what they mean: typed results from one forward pass, per-token statistics,
diagnostics and their thresholds, class maps beside Grad-CAM."""
