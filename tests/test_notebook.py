"""notebooks/token_semantics.ipynb runs top to bottom (on a tiny folder made here)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

pytestmark = pytest.mark.slow  # real models, a real browser or a notebook kernel

ROOT = Path(__file__).resolve().parent.parent


def test_notebook_executes(app_models, tmp_path):
    import skimage.data as sk

    data = tmp_path / "data"
    for cls, names in {"n02102040": ["chelsea"], "n03028079": ["rocket", "coffee"], "n03417042": ["astronaut"]}.items():
        (data / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(getattr(sk, name)()).save(data / cls / f"{name}.jpg")
    nb = nbformat.read(ROOT / "notebooks" / "token_semantics.ipynb", as_version=4)
    (tmp_path / "tmp").mkdir()  # the notebook's gallery folder goes to the temp dir: this test's
    env = {"VTVIZ_NB_DATA": str(data), "VTVIZ_NB_PER_CLASS": "2", "VTVIZ_PRETRAINED": str(app_models),
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(tmp_path / "tmp")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 9  # every figure cell drew a picture (mosaic class maps and curves too)
    text = "".join(o.get("text", "") for o in outputs)
    assert "site-packages" not in text and "Warning" not in text  # no warnings with local paths
    assert "pointing game, Grad-CAM" in text
