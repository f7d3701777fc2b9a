"""Every shipped config works from a fresh clone: it resolves with the project's loader, names
no machine's absolute path, and each `configs/ravdess4/` file (recipe-r included) trains for one
step on a tiny slice of the real RAVDESS data through `emofuse train`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emofuse.cli import app
from emofuse.models.base import get_model
from emofuse.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# A file whose name starts with "_" is a base the configs of its folder name in `defaults:`, not an
# experiment: it is checked for machine paths as text, never loaded or trained on its own.
BASES = sorted(p for p in (ROOT / "configs").rglob("_*.yaml"))
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p not in BASES)
RAVDESS4 = sorted(p for p in (ROOT / "configs" / "ravdess4").rglob("*.yaml") if p not in BASES)
# Environment variables the configs may read; unset here, so that their defaults resolve.
DATA_VARIABLES = ("EMOFUSE_DATA", "IEMOCAP", "MOSEI", "MELD")
# A value naming a path from the root of one machine: /tmp/x, ~/x, C:\x.
ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/])")
# In the YAML text (comments dropped): such a path after a key, a list dash or a bracket.
ABSOLUTE_IN_TEXT = re.compile(r"""(?:^|[:\-\[,\s])\s*["']?((?:/|~/)[^\s"',\]]*)""")
# Rows that read the trained H-MM-4 of the same folder and fold (Aguilar et al. 2019, Table 3).
TEACHER_ROWS = {"multiview-frozen", "teacher-student", "teacher-student-attn"}
# RAVDESS file names: modality-channel-emotion-intensity-statement-repetition-actor.
RAVDESS4_EMOTIONS = ("01", "03", "04", "05")  # neutral, happy, sad, angry
ACTORS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04")  # two men, two women


def label(path: Path) -> str:
    return path.relative_to(ROOT / "configs").with_suffix("").as_posix()


def strings(value, where: str = ""):
    """Every string in a parsed YAML document, with its dotted key."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def resolved_with_defaults(path: Path):
    """The config as a fresh clone resolves it: the data variables unset, their defaults used."""
    saved = {name: os.environ.pop(name) for name in DATA_VARIABLES if name in os.environ}
    try:
        return load_config(path)
    finally:
        os.environ.update(saved)


def machine_paths(path: Path) -> list[str]:
    """Absolute paths a config names other than through an environment variable, one line each
    (a base file: in its text only)."""
    problems, resolved = [], []
    if path not in BASES:
        cfg = resolved_with_defaults(path)
        resolved = [(f"data.{key}", getattr(cfg.data, key)) for key in ("manifest", "path", "store")]
        resolved += [("run_dir", cfg.run_dir)]
        resolved += [(f"model.{key}", value) for key, value in cfg.model_settings.items() if isinstance(value, str)]
    for key, value in resolved:
        if value is not None and ABSOLUTE.match(str(value).removeprefix("glove-file:")):
            problems.append(f"{key} resolves to the absolute path {value}")
    for key, value in strings(yaml.safe_load(path.read_text(encoding="utf-8"))):
        if ABSOLUTE.match(value.removeprefix("glove-file:")):
            problems.append(f"{key} is the absolute path {value}")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
        problems += [f"line {number}: absolute path {found}" for found in ABSOLUTE_IN_TEXT.findall(code)]
    return problems


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 60 and {label(p) for p in BASES} >= {"ravdess4/_base", "ravdess8/_base"}
    recipes = {f"ravdess4/recipe-r/{row}" for row in ("b-aco-1", "h-mm-4", "teacher-student", "fgcme")}
    assert recipes <= {label(p) for p in RAVDESS4}


@pytest.mark.parametrize("path", CONFIGS + BASES, ids=label)
def test_every_config_resolves_without_a_machine_specific_path(path):
    assert machine_paths(path) == [], label(path)


def test_a_store_under_tmp_is_caught(tmp_path):
    shipped = (ROOT / "configs" / "ravdess4" / "b-aco-1.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "ravdess4" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(shipped.replace("data:\n", "data:\n  store: /tmp/emofuse-features/ravdess\n", 1))
    (tmp_path / "ravdess4" / "_base.yaml").write_text((ROOT / "configs" / "ravdess4" / "_base.yaml").read_text())
    problems = machine_paths(bad)
    assert "data.store resolves to the absolute path /tmp/emofuse-features/ravdess" in problems
    assert any(p.startswith("line ") and p.endswith("/tmp/emofuse-features/ravdess") for p in problems)


def test_a_path_from_an_environment_variable_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFUSE_DATA", str(tmp_path))  # an absolute data folder, as CI sets it
    config = ROOT / "configs" / "ravdess4" / "b-aco-1.yaml"
    assert load_config(config).data.path == f"{tmp_path}/ravdess"
    assert machine_paths(config) == []
    assert os.environ["EMOFUSE_DATA"] == str(tmp_path)


def _similar_negatives(path: Path):
    """(model classes, label set classes) of a config whose model draws similar negatives and
    whose label set is a built-in one; None for any other config."""
    from emofuse.corpora.labels import get_label_set, is_label_set_file
    from emofuse.models.base import get_model

    cfg = load_config(path)
    entry = get_model(cfg.model["name"])
    settings = {**entry.defaults, **cfg.model_settings}
    if settings.get("negatives", getattr(entry.config_cls, "negatives", None)) != "similar":
        return None
    if cfg.data.classes is not None or cfg.data.label_set in (None, "auto") or is_label_set_file(cfg.data.label_set):
        return None  # classes known only from the data or a file
    return tuple(settings.get("classes", entry.config_cls.classes)), get_label_set(cfg.data.label_set).classes


SIMILAR = [p for p in CONFIGS if _similar_negatives(p) is not None]


def test_some_configs_draw_similar_negatives():
    assert len(SIMILAR) >= 5  # the paper's multi-view rows on IEMOCAP and RAVDESS-4


@pytest.mark.parametrize("path", SIMILAR, ids=label)
def test_similar_negatives_name_every_class_of_the_configs_label_set(path):
    """negatives='similar' maps each class to its acoustically similar one by name: a config whose
    label set has other classes than the model's `classes` fails only when its first fold builds
    the model, after the features are read (the 8-class teacher-student config did)."""
    model_classes, label_classes = _similar_negatives(path)
    assert sorted(model_classes) == sorted(label_classes), label(path)


# ---------------------------------------------------------------------------------------
# One training step per RAVDESS config


@pytest.fixture(scope="module")
def tiny_ravdess(ravdess_root, tmp_path_factory) -> Path:
    """Four actors x four classes x both statements (first repetition, normal intensity):
    32 links to the real files, laid out as the corpus is."""
    root = tmp_path_factory.mktemp("tiny") / "ravdess"
    for actor in ACTORS:
        (root / actor).mkdir(parents=True)
        for audio in sorted((ravdess_root / actor).iterdir()):
            fields = audio.stem.split("-")
            if len(fields) == 7 and fields[2] in RAVDESS4_EMOTIONS and fields[3] == "01" and fields[5] == "01":
                (root / actor / audio.name).symlink_to(audio)
    found = sum(1 for _ in root.rglob("*.*"))
    if found != 32:
        pytest.skip(f"{ravdess_root}: expected 32 RAVDESS4 files of {', '.join(ACTORS)}, found {found}")
    return root


class Runs:
    """`emofuse train CONFIG` on the tiny slice, fold 0 of 2, one epoch of one batch; one shared
    feature store, so each feature is extracted once for all configs."""

    def __init__(self, corpus: Path, out: Path):
        self.corpus, self.out, self.done = corpus, out, {}

    def train(self, config: Path) -> tuple[Path, str]:
        if config not in self.done:
            run_dir = self.out / "runs" / label(config)
            overrides = [
                f"data.path={self.corpus}", f"data.store={self.out / 'store'}", "data.workers=1",
                "protocol.k=2", "protocol.val_speakers=1", "fold=0", f"run_dir={run_dir}",
                "trainer.max_epochs=1", "trainer.min_epochs=1", "trainer.accelerator=cpu", "trainer.threads=1",
                "trainer.progress=false",
            ]
            if config.stem in TEACHER_ROWS:  # the H-MM-4 of the same folder, the same fold
                teacher, _ = self.train(config.parent / "h-mm-4.yaml")
                overrides.append(f"model.teacher_checkpoint={teacher}/fold-{{fold}}")
            result = CliRunner().invoke(app, ["train", str(config), *overrides])
            assert result.exit_code == 0, f"{label(config)}: {result.output[-2000:]}{result.exception!r}"
            self.done[config] = (run_dir, result.output)
        return self.done[config]


@pytest.fixture(scope="module")
def runs(tiny_ravdess, tmp_path_factory) -> Runs:
    return Runs(tiny_ravdess, tmp_path_factory.mktemp("configs"))


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("config", RAVDESS4, ids=label)
def test_every_ravdess4_config_trains_one_step_on_a_tiny_slice(config, runs):
    shipped = load_config(config)
    assert shipped.data.corpus == "ravdess" and shipped.data.manifest is None, \
        f"{label(config)}: read the corpus folder (data.corpus, data.path), not one machine's manifest"
    run_dir, output = runs.train(config)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["folds_done"] == 1 and metrics["folds_total"] == 2
    fold = metrics["folds"][0]
    fitted = get_model(shipped.model_name).fitted  # the linear probe: a back-end fitted, no epochs
    assert fold["epochs_run"] == (0 if fitted else 1)
    assert fold["n_train"] == 8 and fold["n_val"] == 8 and fold["n_test"] == 16  # one, one and two actors
    assert 0.0 <= fold["test"]["ua"] <= 1.0
    assert ("backend" in fold) == (shipped.protocol.backend is not None or fitted)
    assert "mean ± std" in output
