"""Lower floors never import upper ones: prediction and serving need the model, its directory
and the normaliser, not the training package (nor Lightning, which only training uses)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import emofuse

PACKAGE = Path(emofuse.__file__).parent
PREDICTION_PACKAGES = ("inference", "serving")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (function-level imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against the file's package
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level]
            base = ".".join(parts + ((node.module,) if node.module else ()))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def training_imports(package: str) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
            for path in sorted((PACKAGE / package).rglob("*.py"))
            for line, module in imported_modules(path)
            if module == "emofuse.training" or module.startswith("emofuse.training.")]


# An HTTP status where only the service may know one: `status = 413`, `"status": 415`, "(status
# 413)" in a docstring, `status_code`, `HTTPException`. Below `emofuse.serving` a layer raises an
# `emofuse.errors` type; `serving.app.HTTP_STATUS` alone turns it into a status.
HTTP_STATUS_IN_TEXT = re.compile(r"(?i)\b(?:status|http)\w*\W{1,6}[45]\d\d\b|\b[45]\d\d\W{1,6}(?:status|http)\b"
                                 r"|\bstatus_code\b|\bHTTPException\b")
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "httpx")


def http_statuses(path: Path, imports: bool = True) -> list[str]:
    """`file:line: text` for every line that carries an HTTP status, or (`imports`) imports a web
    framework (the CLI may: `emofuse serve` starts uvicorn)."""
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [f"{where}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if HTTP_STATUS_IN_TEXT.search(line)]
    if imports:
        found += [f"{where}:{n}: imports {module}" for n, module in imported_modules(path)
                  if module.split(".")[0] in WEB_FRAMEWORKS]
    return found


def test_the_import_finder_sees_imports_inside_functions(tmp_path):
    probe = PACKAGE / "inference" / "predictor.py"  # a real file, so relative paths resolve
    modules = {m for _, m in imported_modules(probe)}
    assert "emofuse.features.normalise" in modules  # module level
    assert "emofuse.align.vad" in modules  # inside a method (Predictor.features)


def test_prediction_and_serving_never_import_the_training_package():
    bad = [hit for package in PREDICTION_PACKAGES for hit in training_imports(package)]
    assert not bad, "\n".join(bad)


def test_no_http_status_below_the_serving_package():
    bad = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] != "serving"
           for hit in http_statuses(path, imports=path.relative_to(PACKAGE).parts[0] != "cli")]
    assert not bad, "\n".join(bad)


def test_the_http_status_check_catches_a_status_set_below_serving(tmp_path):
    lower = tmp_path / "audio.py"
    lower.write_text('class TooLong(Refused):\n    """Longer than the limit (status 413)."""\n\n    status = 413\n\n\n'
                     'def answer():\n    return {"status": 415}\n\n\n'
                     'def refuse():\n    from fastapi import HTTPException\n    raise HTTPException(status_code=422)\n')
    assert {int(hit.split(": ", 1)[0].rsplit(":", 1)[1]) for hit in http_statuses(lower)} == {2, 4, 8, 12, 13}
    assert http_statuses(PACKAGE / "serving" / "app.py"), "the service's own table is what it would flag"


def test_the_training_package_is_what_the_check_would_catch():
    # the same finder flags the training loop's own imports: the check is not vacuous
    assert any("emofuse.training.refit_output" in hit for hit in training_imports("training"))


SERVE_PATH = """
import json, sys
from pathlib import Path
from emofuse.cli import app  # what `emofuse serve` loads: every command module registers itself
import emofuse.cli.predict, emofuse.cli.serve, emofuse.inference.predictor, emofuse.inference.onnx_export, emofuse.inference.folder
from emofuse.serving.app import ServeSettings, create_app
model_dir = sys.argv[1]
if model_dir:
    application = create_app(model_dir, ServeSettings(workers=0, threads=1))
    assert application.state.predictor.name
print(json.dumps(sorted(m for m in sys.modules if m == "lightning" or m.startswith(("lightning.", "emofuse.training")))))
"""


def _serve_path_modules(model_dir: str = "") -> list[str]:
    done = subprocess.run([sys.executable, "-c", SERVE_PATH, model_dir], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_emofuse_serve_imports_neither_lightning_nor_the_training_package():
    assert _serve_path_modules() == []


def test_serving_a_model_directory_imports_neither_lightning_nor_the_training_package(tmp_path):
    from helpers import registry_model_dir

    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None)
    assert _serve_path_modules(str(model_dir)) == []
