"""Multi-view training of Aguilar et al. 2019: contrastive loss, negatives, frozen views, teacher-student."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.models.base import InputSpec, get_model
from emofuse.models.multiview import (
    NegativeSampler, contrastive_loss, cosine_distance, distillation_loss,
)

torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine

SPEC = InputSpec(num_classes=4, acoustic_dim=6, word_dim=5)
ANGRY, HAPPY, NEUTRAL, SAD = range(4)  # ravdess4 / iemocap4 class order


def utterance(uid, frames, words, rng):
    edges = np.linspace(0.05, frames * 0.01 - 0.05, words + 1)
    return UtteranceFeatures(
        uid,
        acoustic=rng.standard_normal((frames, 6)).astype(np.float32),
        words=[f"w{i}" for i in range(words)],
        word_times=np.stack([edges[:-1], edges[1:] - 0.02], 1),
        word_vectors=rng.standard_normal((words, 5)).astype(np.float32),
    )


def batch_of(labels, seed=0):
    rng = np.random.default_rng(seed)
    items = [utterance(f"u{i}", 20 + 3 * i, 2 + i % 3, rng) for i in range(len(labels))]
    return collate(items, labels)


def teacher_file(tmp_path, name="teacher.safetensors", prefix="", **settings):
    torch.manual_seed(1)
    teacher = get_model("H-MM-4").build(SPEC, hidden=8, **settings)
    teacher.train()(batch_of([0, 1, 2, 3]))  # move the batch-norm statistics off their defaults
    state = {prefix + k: v.detach().clone().contiguous() for k, v in teacher.state_dict().items()}
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return path, state


# --- contrastive loss -------------------------------------------------------------------------


def test_cosine_distance_is_one_minus_cosine():
    v, w = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert torch.allclose(cosine_distance(v, w), torch.tensor([1.0, 0.0]), atol=1e-6)


def test_contrastive_loss_equals_a_hand_computed_three_sample_example():
    h_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h_m = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([1, 0, 0])
    c = 1 - 1 / math.sqrt(2)  # 1 - cos 45°
    # anchor 0: a-side max(0, .5 + d(a0,m0)=0 - d(a0,m1)=0) = .5;  m-side max(0, .5 + 0 - d(m0,a1)=1) = 0
    # anchor 1: a-side max(0, .5 + 1 - d(a1,m0)=1) = .5;           m-side max(0, .5 + 1 - d(m1,a0)=0) = 1.5
    # anchor 2: a-side max(0, .5 + c - d(a2,m0)=c) = .5;           m-side max(0, .5 + c - d(m2,a0)=1) = 0
    expected = (0.5 + 0.5 + 0.5 + 0.0 + 1.5 + max(0.0, 0.5 + c - 1)) / (2 * 3)
    assert contrastive_loss(h_a, h_m, negatives, margin=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.5)


def test_contrastive_loss_leaves_out_anchors_without_a_negative():
    h_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h_m = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # only anchors 0 and 2 count: (.5 + 0 + .5 + 0) / (2 * 2)
    assert contrastive_loss(h_a, h_m, torch.tensor([1, -1, 0])).item() == pytest.approx(0.25, abs=1e-6)
    none = contrastive_loss(h_a.requires_grad_(), h_m, torch.tensor([-1, -1, -1]))
    assert none.item() == 0.0
    none.backward()  # still part of the graph


def test_contrastive_loss_is_zero_when_views_agree_and_negatives_are_far():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert contrastive_loss(h, h.clone(), torch.tensor([1, 0]), margin=0.5).item() == 0.0


def test_distillation_loss_is_kl_of_teacher_to_student():
    teacher, student = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p, q = torch.softmax(teacher, -1), torch.softmax(student, -1)
    expected = (p * (p.log() - q.log())).sum().item()
    assert distillation_loss(teacher, student).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


# --- negative sampler -------------------------------------------------------------------------


def similar_map():
    return NegativeSampler.similarity_map(("angry", "happy", "neutral", "sad"), (("angry", "happy"), ("neutral", "sad")))


@pytest.mark.parametrize("strategy", ["random", "similar"])
def test_negative_sampler_never_returns_the_anchors_class(strategy):
    sampler = NegativeSampler(strategy, similar_map())
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        labels = torch.randint(0, 4, (int(torch.randint(2, 12, (1,), generator=generator)),), generator=generator)
        picked = sampler(labels, generator)
        has_other = (labels.unsqueeze(0) != labels.unsqueeze(1)).any(1)
        assert torch.equal(picked >= 0, has_other)
        assert torch.all(labels[picked[has_other]] != labels[has_other])


def test_similar_negatives_come_from_the_acoustically_similar_class_when_present():
    sampler = NegativeSampler("similar", similar_map())
    labels = torch.tensor([ANGRY, HAPPY, HAPPY, NEUTRAL, SAD, SAD, NEUTRAL, ANGRY])
    partner = torch.tensor([HAPPY, ANGRY, ANGRY, SAD, NEUTRAL, NEUTRAL, SAD, HAPPY])
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert torch.equal(labels[sampler(labels, generator)], partner)


def test_similar_negatives_fall_back_to_any_other_class_when_the_similar_one_is_absent():
    sampler = NegativeSampler("similar", similar_map())
    labels = torch.tensor([ANGRY, NEUTRAL, NEUTRAL])  # no happy for angry, no sad for neutral
    seen = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        picked = labels[sampler(labels, generator)]
        assert picked[0] == NEUTRAL and torch.all(picked[1:] == ANGRY)
        seen.add(int(sampler(labels, generator)[0]))
    assert seen == {1, 2}  # uniform among the candidates, not always the first


def test_random_negatives_use_every_other_class():
    sampler = NegativeSampler("random")
    labels = torch.tensor([ANGRY, HAPPY, NEUTRAL, SAD])
    generator = torch.Generator().manual_seed(0)
    seen = {int(labels[sampler(labels, generator)[0]]) for _ in range(100)}
    assert seen == {HAPPY, NEUTRAL, SAD}


def test_a_batch_of_one_class_has_no_negatives():
    sampler = NegativeSampler("similar", similar_map())
    assert sampler(torch.tensor([SAD, SAD, SAD])).tolist() == [-1, -1, -1]


def test_similarity_map_rejects_unknown_classes():
    with pytest.raises(ConfigError, match="two different classes"):
        NegativeSampler.similarity_map(("angry", "happy"), (("angry", "calm"),))


# --- the multi-view model ---------------------------------------------------------------------


def test_joint_multiview_trains_both_views_and_sums_the_papers_terms():
    torch.manual_seed(0)
    model = get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8)
    batch = batch_of([ANGRY, HAPPY, NEUTRAL, SAD, ANGRY, SAD])
    loss = model.loss(model(batch), batch)
    terms = model.last_terms
    assert set(terms) == {"contrastive", "ce_a", "ce_m"}
    assert loss.item() == pytest.approx(terms["contrastive"] + 1.0 * terms["ce_a"] + 0.3 * terms["ce_m"], rel=1e-5)
    loss.backward()
    for view in (model.view_a, model.view_m):
        assert all(p.grad is not None for p in view.parameters())


def test_class_weights_weight_both_cross_entropy_terms():
    torch.manual_seed(0)
    model = get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8, dropout=0.0).eval()
    batch = batch_of([ANGRY, HAPPY, NEUTRAL, SAD, ANGRY, SAD])
    out = model(batch)
    model.loss(out, batch)  # (the contrastive term draws random negatives: compare the CE terms)
    plain = dict(model.last_terms)
    model.loss(out, batch, class_weights=torch.ones(4))
    assert model.last_terms["ce_a"] == pytest.approx(plain["ce_a"], rel=1e-6)
    assert model.last_terms["ce_m"] == pytest.approx(plain["ce_m"], rel=1e-6)
    weights = torch.tensor([4.0, 0.1, 0.1, 0.1])
    model.loss(out, batch, class_weights=weights)
    weighted = model.last_terms
    expected = torch.nn.functional.cross_entropy(out.logits, batch.labels, weight=weights).item()
    assert weighted["ce_a"] == pytest.approx(expected, rel=1e-5)


def test_beta_schedule_decays_the_cross_entropy_weights_with_the_epoch():
    torch.manual_seed(0)
    model = get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8, beta_decay=1.0, dropout=0.0).eval()
    batch = batch_of([ANGRY, HAPPY, NEUTRAL, SAD])
    model.on_epoch_start(3)
    loss = model.loss(model(batch), batch).item()
    t = model.last_terms
    assert loss == pytest.approx(t["contrastive"] + (t["ce_a"] + 0.3 * t["ce_m"]) / 4, rel=1e-5)


def test_forward_and_deployable_need_no_words():
    torch.manual_seed(0)
    model = get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8).eval()
    batch = batch_of([ANGRY, HAPPY, SAD])
    rng = np.random.default_rng(0)
    acoustic_only = collate([UtteranceFeatures(i, acoustic=rng.standard_normal((30, 6)).astype(np.float32))
                             for i in "abc"], [0, 1, 3])
    assert acoustic_only.words is None and acoustic_only.word_frames is None
    deployable = model.deployable()
    assert torch.allclose(model(acoustic_only).logits, deployable(acoustic_only).logits)
    assert torch.allclose(model(batch).logits, deployable(batch).logits)
    assert not any(n.startswith("view_m") for n, _ in deployable.named_parameters())
    name, settings = model.deployable_config()
    rebuilt = get_model(name).build(SPEC, **settings).eval()
    rebuilt.load_state_dict(deployable.state_dict())
    assert torch.allclose(rebuilt(acoustic_only).logits, deployable(acoustic_only).logits)


def test_teacher_gets_no_gradient_and_keeps_its_weights(tmp_path):
    path, saved = teacher_file(tmp_path)
    torch.manual_seed(0)
    model = get_model("teacher-student").build(SPEC, hidden=8, teacher_checkpoint=str(path))
    model.train()
    assert not model.view_m.training  # eval mode always: no dropout, frozen batch-norm statistics
    student_before = {k: v.clone() for k, v in model.view_a.state_dict().items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
    for step in range(3):
        batch = batch_of([ANGRY, HAPPY, NEUTRAL, SAD], seed=step)
        loss = model.loss(model(batch), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert set(model.last_terms) == {"contrastive", "kl"}
    assert all(p.grad is None and not p.requires_grad for p in model.view_m.parameters())
    for k, v in model.view_m.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in model.view_a.state_dict().items())


def test_frozen_view_uses_contrastive_and_acoustic_cross_entropy_only(tmp_path):
    path, _ = teacher_file(tmp_path, "teacher.pt", prefix="model.")  # Lightning-style file
    model = get_model("MV-frozen").build(SPEC, hidden=8, teacher_checkpoint=str(path))
    batch = batch_of([ANGRY, HAPPY, NEUTRAL, SAD])
    loss = model.loss(model(batch), batch)
    assert set(model.last_terms) == {"contrastive", "ce_a"}
    loss.backward()
    assert all(p.grad is None for p in model.view_m.parameters())


def test_teacher_student_with_attention_student_builds_and_runs(tmp_path):
    path, _ = teacher_file(tmp_path)
    model = get_model("teacher-student+attn").build(SPEC, hidden=8, teacher_checkpoint=str(path))
    batch = batch_of([ANGRY, HAPPY])
    out = model(batch)
    assert "frame_attention" in out.explain
    assert torch.isfinite(model.loss(out, batch))


def test_missing_or_mismatched_teacher_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        get_model("teacher-student").build(SPEC, hidden=8)
    with pytest.raises(DataError, match="not found"):
        get_model("teacher-student").build(SPEC, hidden=8, teacher_checkpoint=str(tmp_path / "none.pt"))
    path, _ = teacher_file(tmp_path, "wide.safetensors")
    with pytest.raises(DataError, match="same hidden size"):
        get_model("MV-frozen").build(SPEC, hidden=8, teacher_checkpoint=str(path),
                                     view_m_settings={"gmu_size": 6})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt: cannot read"):
        get_model("MV-frozen").build(SPEC, hidden=8, teacher_checkpoint=str(tmp_path / "junk.pt"))


def test_multiview_settings_are_validated():
    with pytest.raises(ConfigError, match="only acoustic"):
        get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8, view_a="B-LEX")
    with pytest.raises(ConfigError, match="same hidden size"):
        get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8, view_m_settings={"hidden": 4})
    with pytest.raises(ConfigError, match="class names"):
        get_model("MV-B-ACO-1+H-MM-4").build(InputSpec(8, 6, 5), hidden=8)
    with pytest.raises(ConfigError, match="mode"):
        get_model("MV-B-ACO-1+H-MM-4").build(SPEC, hidden=8, mode="both")
    # random negatives need no class names, so any number of classes works
    get_model("MV-B-ACO-1+B-LEX").build(InputSpec(8, 6, 5), hidden=8, negatives="random")


def test_teacher_checkpoint_can_be_a_trained_fold_directory(tmp_path):
    import json

    fold = tmp_path / "fold-2"
    (fold / "checkpoints").mkdir(parents=True)
    path, saved = teacher_file(fold / "checkpoints", "best-epoch04.ckpt", prefix="model.")
    (fold / "trained.json").write_text(json.dumps({"best_checkpoint": "checkpoints/best-epoch04.ckpt"}))
    model = get_model("teacher-student").build(SPEC, hidden=8, teacher_checkpoint=str(fold))
    for k, v in model.view_m.state_dict().items():
        assert torch.equal(v, saved["model." + k]), k
    with pytest.raises(DataError, match="still holds {fold}"):
        get_model("teacher-student").build(SPEC, hidden=8, teacher_checkpoint=str(tmp_path / "fold-{fold}"))
    with pytest.raises(DataError, match="trained.json"):
        get_model("teacher-student").build(SPEC, hidden=8, teacher_checkpoint=str(tmp_path))
