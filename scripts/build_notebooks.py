"""Write notebooks/*.ipynb from the cell lists in helpers.notebook_sources (the notebooks' one source).

    python scripts/build_notebooks.py            # rewrite the notebooks (outputs cleared)
    python scripts/build_notebooks.py --execute  # also store the outputs nbval checks (runs each notebook)

tests/test_notebooks.py checks that the committed notebooks' cells equal these sources.
"""
import os
import sys
import tempfile

from helpers.notebook_sources import write_all

if __name__ == "__main__":
    execute = "--execute" in sys.argv
    if execute:  # keep the user's own server and metrics out of it
        scratch = tempfile.mkdtemp(prefix="build-notebooks-")
        os.environ.setdefault("WORKBOOK_METRICS_DIR", os.path.join(scratch, "metrics"))
        os.environ.setdefault("WORKBOOK_SERVER_DIR", os.path.join(scratch, "server"))
        os.environ.setdefault("WORKBOOK_PORT", "8329")
    try:
        for path in write_all(execute=execute):
            print(path)
    finally:
        if execute:  # stop the server notebook 00 started
            import signal

            import httpx

            try:
                os.kill(httpx.get(f"http://127.0.0.1:{os.environ['WORKBOOK_PORT']}/health", timeout=2).json()["pid"], signal.SIGTERM)
            except (httpx.HTTPError, OSError):
                pass
