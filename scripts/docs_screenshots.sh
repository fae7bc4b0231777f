#!/usr/bin/env bash
# Retake the screenshots under docs/ (README "Look at the results"): the visual tests render storyboards, the batch
# gallery and the web demo in headless Chromium and, with LOOM_DOCS_SCREENSHOTS set, copy each screenshot there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
if [ -z "${LOOM_SERVE_PYTHON:-}" ] && [ -x .venv-app/bin/python ]; then
    export LOOM_SERVE_PYTHON="$PWD/.venv-app/bin/python"  # the web demo's venv (`make app`)
fi
LOOM_DOCS_SCREENSHOTS="$PWD/docs" "$PY" -m pytest -q -p no:cacheprovider \
    tests/infer/test_storyboard.py tests/infer/test_gallery.py tests/app/test_serve.py
ls -l docs/*.png
