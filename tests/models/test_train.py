"""Training loop: it learns (beyond a constant baseline), is deterministic, resumes exactly, and checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import models.train as train_mod
from models.data import iter_samples
from models.train import Batch, CrossEntropyLoss, TrainConfig, batch_keys, load_checkpoint, main, train
from runtime.metrics import MetricAccumulator


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(data), out=str(out), steps=4, batch_size=2, crop=64, eval_split=None, log_every=1, threads=1)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_batch_keys_cover_each_sample_once_per_epoch() -> None:
    keys = [k for s in range(6) for k in batch_keys(s, 4, 8, seed=3)]  # 24 positions = 3 epochs of 8
    for epoch in range(3):
        assert sorted(i for i, e in keys if e == epoch) == list(range(8))
    assert batch_keys(2, 4, 8, 3) == keys[8:12]
    assert [i for i, _ in keys[:8]] != [i for i, _ in keys[8:16]]  # reshuffled each epoch


@pytest.mark.slow
def test_short_training_learns(syn_small: Path, tmp_path: Path) -> None:
    """60 steps at 64x64 crops beat the untrained model and the all-background predictor, on several classes."""
    cfg = _cfg(syn_small, tmp_path / "run", steps=60, batch_size=4, lr=2e-3, eval_split="val", eval_at_start=True)
    cfg.log_every = 20
    res = train(cfg)
    before, after = res.metrics_at_start, res.metrics
    assert before is not None and after is not None and after["data"]["synthetic"]
    baseline = MetricAccumulator()
    for _, _, mask in iter_samples(syn_small, "val"):
        baseline.update(mask, np.zeros_like(mask))
    base = baseline.result()
    assert after["miou"] > before["miou"] + 0.05
    assert after["miou"] > base.miou + 0.03, (after["miou"], base.miou)
    assert after["pixel_accuracy"] > 0.6
    learned = [c["name"] for c in after["per_class"][1:] if (c["iou"] or 0) > 0.1]
    assert len(learned) >= 1, after["per_class"]  # at least one disaster class, not just background
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "train_config.json").is_file()


def test_deterministic_and_resume_is_exact(syn_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: dict[int, Path] = {}
    real_save = train_mod.save_checkpoint

    def keep_copies(path: Path, state: dict) -> None:
        real_save(path, state)
        saved.setdefault(state["step"], tmp_path / f"copy_{state['step']}.pt")
        shutil.copy(path, saved[state["step"]])

    monkeypatch.setattr(train_mod, "save_checkpoint", keep_copies)
    full = train(_cfg(syn_small, tmp_path / "a", checkpoint_every=2))
    assert sorted(saved) == [2, 4]
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    again = train(_cfg(syn_small, tmp_path / "b"))
    resumed = train(_cfg(syn_small, tmp_path / "c"), resume=saved[2])
    assert full.step == again.step == resumed.step == 4
    ref = load_checkpoint(full.checkpoint)
    for other in (again, resumed):
        state = load_checkpoint(other.checkpoint)
        assert state["step"] == 4
        for k, v in ref["model"].items():
            assert torch.equal(v, state["model"][k]), k
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[2:]]


def test_checkpoint_format(syn_small: Path, tmp_path: Path) -> None:
    res = train(_cfg(syn_small, tmp_path / "run", steps=2))
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=True)  # no code is unpickled
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "step", "rng", "config"}
    assert ckpt["config"]["model"] == "mobilevit_xxs" and ckpt["config"]["model_config"]["backbone"] == "mobilevit_xxs"
    assert set(ckpt["rng"]) == {"torch", "numpy", "python"}
    assert not list((tmp_path / "run").glob(".*"))  # no temp files left
    from models.weights import read_state_dict

    assert read_state_dict(res.checkpoint).keys() == ckpt["model"].keys()  # the exporter's --weights reads it
    model = train_mod.model_from_checkpoint(res.checkpoint)
    assert not model.training
    assert torch.equal(model.state_dict()[next(iter(ckpt["model"]))], next(iter(ckpt["model"].values())))


class _ScaledCE(nn.Module):
    """A loss with a learnable parameter, standing in for a distillation loss with adapters."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.ce = CrossEntropyLoss()
        self.seen: list[list[tuple[int, int]]] = []

    def forward(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self.seen.append(batch.keys)
        ce, _ = self.ce(outputs * self.log_scale.exp(), batch)
        return ce, {"ce": float(ce.detach()), "scale": float(self.log_scale.detach().exp())}


def test_custom_loss_is_optimised_and_checkpointed(syn_small: Path, tmp_path: Path) -> None:
    loss = _ScaledCE()
    res = train(_cfg(syn_small, tmp_path / "run", steps=3), loss_fn=loss)
    assert float(loss.log_scale.detach()) != 0.0
    assert loss.seen == [batch_keys(s, 2, 16, 0) for s in range(3)]
    assert "scale" in res.history[-1]
    ckpt = load_checkpoint(res.checkpoint)
    assert torch.equal(ckpt["loss"]["log_scale"], loss.log_scale.detach())


def test_cli_errors(tmp_path: Path, syn_small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--steps", "1", "-q"]) == 1
    assert "no such data folder" in capsys.readouterr().err
    for argv in (["--model", "nope"], ["--steps", "0"]):  # refused when parsed, before torch is needed
        with pytest.raises(SystemExit) as exc:
            main(["--data", str(syn_small), "--out", str(tmp_path / "o"), "--steps", "1", *argv])
        assert exc.value.code == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():  # asking for a GPU that is not there is a usage error, said plainly
        assert main(["--data", str(syn_small), "--out", str(tmp_path / "gpu"), "--steps", "1", "--device", "cuda"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
        assert not (tmp_path / "gpu").exists()


@pytest.fixture(scope="module")
def syn_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train + 2 val synthetic scenes at 96x96: enough for a 2-step run of a big model."""
    from models.synthetic import generate

    root = tmp_path_factory.mktemp("syn_tiny") / "tiny"
    generate(root, n_train=4, n_val=2, size=96, seed=0, workers=1)
    return root


def test_cli_swin_teacher_overrides_round_trip(syn_tiny: Path, tmp_path: Path) -> None:
    """``--model swin_t_upernet512 --crop 64 --decoder-width 32``: the Swin is built for the crop, the overrides are
    recorded, ``model_from_checkpoint`` rebuilds the same model from the checkpoint alone, and the final evaluation
    feeds the 96 px val images resized to the 64 px the backbone takes."""
    out = tmp_path / "swin"
    argv = ["--model", "swin_t_upernet512", "--data", str(syn_tiny), "--out", str(out), "--crop", "64"]
    argv += ["--decoder-width", "32", "--steps", "2", "--batch-size", "2", "--threads", "1", "-q"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics is not None and metrics["num_images"] == 2
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["model_overrides"] == {"input_size": 64, "decoder_width": 32}
    assert ckpt["config"]["model_config"]["input_size"] == 64 and ckpt["config"]["model_config"]["decoder_width"] == 32
    model = train_mod.model_from_checkpoint(out / "checkpoint.pt")
    assert model.config.family == "swin" and (model.config.input_size, model.config.decoder_width) == (64, 32)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, model.config.num_classes, 64, 64)
    # the fallback path (no recorded model_config) rebuilds from the model name and the overrides
    del ckpt["config"]["model_config"]
    torch.save({"model": ckpt["model"], "config": ckpt["config"]}, tmp_path / "old.pt")
    assert train_mod.model_from_checkpoint(tmp_path / "old.pt").config == model.config


def test_cli_override_errors(syn_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--data", str(syn_small), "--out", str(tmp_path / "o"), "--steps", "1"]
    assert main([*base, "--model", "swin_t_upernet512", "--crop", "64", "--input-size", "128"]) == 2
    assert "--input-size 128 != --crop 64" in capsys.readouterr().err
    assert main([*base, "--input-size", "100"]) == 2
    with pytest.raises(SystemExit) as exc:  # out of range when parsed
        main([*base, "--decoder-width", "0"])
    assert exc.value.code == 2 and "--decoder-width" in capsys.readouterr().err


def test_progress_bar_shows_step_total_loss_and_time_left(syn_small: Path, tmp_path: Path, capsys) -> None:
    """``progress=LABEL`` draws a tqdm bar on stderr (also when stderr is not a terminal, as under the pipeline)."""
    train(_cfg(syn_small, tmp_path / "run", steps=3), progress="student")
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("student: 100%") and "3/3" in last and "loss=" in last and "<00:00" in last, err[-500:]
    train(_cfg(syn_small, tmp_path / "quiet", steps=1))
    assert "%|" not in capsys.readouterr().err  # the library default: no bar
