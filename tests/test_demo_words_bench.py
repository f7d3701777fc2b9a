"""benchmarks/demo_words.py: its rows differ in the word source and nothing else."""

from __future__ import annotations

from benchmarks.demo_words import MODEL, ROWS
from emofuse.demo.pipeline import config_path, demo_overrides
from emofuse.training.config import load_config


def test_demo_words_rows_differ_only_in_where_the_words_come_from(tmp_path):
    configs = {row: load_config(config_path(MODEL), [*demo_overrides(MODEL, tmp_path), *sets, "seed=1"]).to_dict()
               for row, sets in ROWS.items()}
    for cfg in configs.values():
        cfg["data"].pop("align"), cfg["data"].pop("asr")
    first, *rest = configs.values()
    assert all(cfg == first for cfg in rest)
    assert first["data"]["store"] == str(tmp_path / "features")  # one store for every row

