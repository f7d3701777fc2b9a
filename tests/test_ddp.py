"""Two-process DDP on CPU (gloo): the same engine trains sharded and evaluates whole splits.

A subprocess runs a script that trains fold 0 of the synthetic corpus with
`trainer.devices=2 trainer.strategy=ddp trainer.accelerator=cpu`; Lightning starts the second
rank by re-running the script. Each rank records the utterances it trained on and the
validation scores it saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import lightning as L
    import torch
    from helpers import folds_for, synthetic_data, tiny_config
    from emofuse.training.run import run_folds

    out = Path({out!r})

    class Record(L.Callback):
        def __init__(self):
            self.train_ids, self.val = [], []
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 0:
                self.train_ids += batch.ids
        def on_validation_end(self, trainer, module):
            self.val.append(float(trainer.callback_metrics["val_ua"]))
        def on_train_end(self, trainer, module):
            record = {{"rank": trainer.global_rank, "world": trainer.world_size,
                       "train_ids": self.train_ids, "val_ua": self.val}}
            (out / f"rank-{{trainer.global_rank}}.json").write_text(json.dumps(record))

    data = synthetic_data()
    cfg = tiny_config(out, "fold=0", "trainer.max_epochs=3", "trainer.devices=2", "trainer.strategy=ddp",
                      "trainer.accelerator=cpu", "trainer.threads=1", "trainer.batch_size=6")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None, extra_callbacks=(Record(),))
    """
)


@pytest.mark.slow
def test_two_process_ddp_trains_sharded_and_evaluates_the_whole_split(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    split = json.loads((tmp_path / "run" / "fold-0" / "split.json").read_text())
    # Each rank trains on its own shard; together they cover the whole training part.
    shard0, shard1 = set(ranks[0]["train_ids"]), set(ranks[1]["train_ids"])
    assert shard0 and shard1 and len(shard0 & shard1) < min(len(shard0), len(shard1))
    assert shard0 | shard1 == set(split["train"])
    # Validation is not sharded: both ranks score the whole validation part identically.
    assert ranks[0]["val_ua"] == ranks[1]["val_ua"] and len(ranks[0]["val_ua"]) == 3

    metrics = json.loads((tmp_path / "run" / "fold-0" / "metrics.json").read_text())
    rows = (tmp_path / "run" / "fold-0" / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == metrics["n_test"] == len(split["test"])  # the whole test part, once
    assert {r.split(",")[0] for r in rows} == set(split["test"])
    assert metrics["test"]["ua"] > 0.5  # it learned (chance 0.25)
