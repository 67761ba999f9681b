"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which this project does not use).

Markdown cells are copied, code cells become ```python blocks, `#| hide` cells are skipped.
`python tools/make_readme.py --check` exits 1 when README.md is out of date (CI runs it).
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if not src:
        continue
    if cell["cell_type"] == "markdown":
        parts.append(src)
    elif cell["cell_type"] == "code" and not src.startswith("#| hide"):
        lines = [line for line in src.splitlines() if not line.startswith("#|")]
        parts.append("```python\n" + "\n".join(lines) + "\n```")
text = "<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n" + "\n\n".join(parts) + "\n"
readme = root / "README.md"
if "--check" in sys.argv:
    if readme.read_text(encoding="utf-8") != text:
        sys.exit("README.md is out of date with nbs/index.ipynb: run python tools/make_readme.py")
else:
    readme.write_text(text, encoding="utf-8")
