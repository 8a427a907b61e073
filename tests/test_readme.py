"""The README's quick start is what CI runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_COMMAND='([^']+)'", ci).group(1)
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the quick start is exactly two commands"
    assert block[1] == command
    assert "streamlit run app/streamlit_app.py" in block[0]
    assert (ROOT / "app" / "streamlit_app.py").is_file()


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The "Python API in a dozen lines" block runs unchanged on two photos named as in it."""
    import skimage.data as sk
    from PIL import Image

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## The Python API.*?```python\n(.*?)```", readme, re.S).group(1)
    Image.fromarray(sk.chelsea()).save(tmp_path / "dog.jpg")
    Image.fromarray(sk.coffee()).save(tmp_path / "fish.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    top3 = ast.literal_eval(out[0])  # [[(class, probability), ...] per photo]
    assert len(top3) == 2 and all(len(row) == 3 for row in top3)
    assert all(0 <= p <= 1 for row in top3 for _, p in row)
    assert out[1].startswith("filter torch.Size([2, 16, ") and out[2].startswith("recurrent torch.Size([2, 16, ")
    assert "LayerStats(kind='filter'" in out[3] and "kind='recurrent'" in out[3]
    # one diagnostics line per layer: mixing targets, max received, owners (None: last layer), warnings
    assert float(out[4].split()[0]) >= 6 and out[4].endswith("]")  # mixing targets and the warnings list
    assert out[5].split()[2] == "None"
    assert out[6].startswith("looks like: ") and out[6].endswith("not one of this model's 10 classes")
    assert len(out) == 7
