"""Training-time frame masking (augment section): what it masks, and that only training sees it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from emofuse.errors import ConfigError
from emofuse.training.augment import FrameMasking
from emofuse.training.config import AugmentConfig, save_config
from emofuse.training.data import Collator
from emofuse.training.fold import FoldDataModule
from emofuse.training.run import run_folds
from helpers import folds_for, synthetic_data, tiny_config



def test_masks_are_zero_spans_and_bands_within_the_configured_widths():
    frames = np.arange(1, 101 * 8 + 1, dtype=np.float32).reshape(101, 8)  # no zero anywhere
    masking = FrameMasking(AugmentConfig(time_masks=1, time_width=15, feature_masks=1, feature_width=3), seed=0)
    seen_time, seen_band = set(), set()
    for _ in range(200):
        out = masking(frames)
        assert out.shape == frames.shape and np.all(frames > 0)  # a copy: the input is untouched
        zero_rows = np.where((out == 0).all(axis=1))[0]
        zero_cols = np.where((out == 0).all(axis=0))[0]
        for idx, widest in ((zero_rows, 15), (zero_cols, 3)):
            assert len(idx) <= widest
            if len(idx):
                assert np.all(np.diff(idx) == 1)  # one contiguous span / band
        # Every zero lies in a masked span or band; everything else is unchanged.
        kept = np.ones_like(out, dtype=bool)
        kept[zero_rows] = False
        kept[:, zero_cols] = False
        np.testing.assert_array_equal(out[kept], frames[kept])
        assert np.all(out[~kept] == 0)
        seen_time.add(len(zero_rows))
        seen_band.add(len(zero_cols))
    assert max(seen_time) > 5 and max(seen_band) >= 2  # the widths are really drawn


def test_a_span_never_covers_more_than_a_fifth_of_a_short_utterance():
    masking = FrameMasking(AugmentConfig(time_masks=1, time_width=50), seed=1)
    for _ in range(100):
        out = masking(np.ones((12, 3), dtype=np.float32))
        assert (out == 0).all(axis=1).sum() <= 2
    assert np.all(masking(np.ones((4, 3), dtype=np.float32)) == 1)  # too short to mask


def test_the_same_seed_draws_the_same_masks():
    cfg = AugmentConfig(time_masks=2, time_width=10, feature_masks=2, feature_width=4)
    frames = np.random.default_rng(0).normal(size=(80, 12)).astype(np.float32)
    a, b, c = FrameMasking(cfg, [0, 1]), FrameMasking(cfg, [0, 1]), FrameMasking(cfg, [0, 2])
    first = [a(frames) for _ in range(5)]
    np.testing.assert_array_equal(np.stack(first), np.stack([b(frames) for _ in range(5)]))
    assert not np.array_equal(np.stack(first), np.stack([c(frames) for _ in range(5)]))


def test_only_the_training_loader_masks_frames(tmp_path):
    data = synthetic_data()
    cfg = tiny_config(tmp_path, "augment.time_masks=2", "augment.time_width=50", "augment.feature_masks=1",
                      "augment.feature_width=6")
    fold = folds_for(data, cfg)[0]
    module = FoldDataModule(cfg, Collator(data), fold.train, fold.val, fold.index)

    def zeros(loader):
        return sum(int((batch.acoustic[batch.acoustic_mask] == 0).sum()) for batch in loader)

    assert zeros(module.train_dataloader()) > 0  # the synthetic frames are never exactly 0
    assert zeros(module.val_dataloader()) == 0
    plain = tiny_config(tmp_path)
    assert zeros(FoldDataModule(plain, Collator(data), fold.train, fold.val).train_dataloader()) == 0


def test_a_run_with_masking_trains_and_records_its_settings(tmp_path):
    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "augment.time_masks=1", "augment.time_width=5")
    torch.manual_seed(0)
    run = run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    assert run["folds_done"] == 1
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["augment"] == {"time_masks": 1, "time_width": 5, "feature_masks": 0, "feature_width": 10}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Training frames masked per utterance: 1 time span(s) of ≤5 frames." in report
    assert "Validation: 1 speaker(s) carved from each training part." in report


@pytest.mark.parametrize("override, message", [
    ("augment.time_masks=-1", "augment.time_masks=-1 must be >= 0"),
    ("augment.mixup=0.2", "valid augment keys: time_masks, time_width, feature_masks, feature_width"),
])
def test_bad_augment_settings_fail_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, override)


def test_masking_of_a_text_only_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.acoustic is null"):
        tiny_config(tmp_path, "model.name=B-LEX", "data.acoustic=null", "data.words=minilm", "augment.time_masks=1",
                    model="B-LEX")


def test_a_run_saved_before_the_augment_section_existed_still_resumes(tmp_path):
    cfg = tiny_config(tmp_path)
    old = cfg.to_dict()
    del old["augment"]
    (tmp_path / "run" / "fold-0").mkdir(parents=True)  # a run that has started, so its config binds
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    save_config(cfg, tmp_path / "run")  # no "different config" error
    with pytest.raises(ConfigError, match=r"different config \(augment.time_masks\)"):
        save_config(tiny_config(tmp_path, "augment.time_masks=2"), tmp_path / "run")


def test_loader_workers_draw_different_masks():
    import torch.utils.data as tud

    cfg = AugmentConfig(time_masks=3, time_width=10, feature_masks=2, feature_width=4)
    masking = FrameMasking(cfg, [0, 0, 0])
    frames = np.ones((60, 12), dtype=np.float32)

    class Frames(tud.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return masking(frames)

    loader = tud.DataLoader(Frames(), batch_size=1, num_workers=2)  # worker w takes items w, w + 2
    masks = [batch[0].numpy() for batch in loader]
    # Same draw order within each worker: without per-worker streams items 0 and 1 would match.
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], FrameMasking(cfg, [0, 0, 0, 0])(frames))
