"""The projection benchmark under the name issue 3 gives it: runs ``bench/rebuild.py``.

    .venv/bin/python bench/projections.py [--events 100000] [--baseline-events 5000] [--live 300]

Run as a script, this file's folder is first on ``sys.path``, and this file's name
would then hide the ``projections`` app: the repository's root goes before it.
"""

import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

if __name__ != "__main__":
    raise ImportError(
        f"{__file__} is a script, not the projections app: put the repository's root"
        " before bench/ on sys.path (bench/harness.py does)"
    )
sys.path[0:1] = [str(BENCH.parent), str(BENCH)]
runpy.run_path(str(BENCH / "rebuild.py"), run_name="__main__")
