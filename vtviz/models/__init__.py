"""The networks and their files: VT modules, VT-Lite0, the teacher, metadata, checkpoints, the
unfamiliar-photo flag that travels with a model."""
