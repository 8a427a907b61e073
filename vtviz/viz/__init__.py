"""Pixels from maps: colour tables, overlays, regions, labelled grids, and the comparison views
shared by the app, the exporter and notebooks."""
