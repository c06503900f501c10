"""An interrupted study cell resumes from the step it reached (``last.ckpt``), not from its best validation
(``best.ckpt``, an earlier step). The cell's own ``ehf train`` command runs in-process (``cli.main``)."""

from __future__ import annotations

import os
import re
import signal

import pytest
import torch
import yaml

from lightning_ehf import cli
from lightning_ehf.lit.module import EHFModule
from lightning_ehf.study.runner import StudyFolder, cell_command
from lightning_ehf.study.spec import load_study

BASE = {
    "data.regime": "finite", "data.n_train": 64, "data.n_val": 32, "data.n_test": 32, "data.batch_size": 32,
    "trainer.max_steps": 20, "trainer.val_check_interval": 5, "eval.iw_samples": 4, "eval.n_eval": 16,
    "eval.n_group_samples": 1, "eval.invariance_iw": 4, "model.blocks": 2, "model.hidden": 16,
    "plots.enabled": False, "logger.wandb.mode": "disabled",
}  # fmt: skip
STOP_AT = 13  # SIGTERM during step 13: last.ckpt at step 13; validations at 5 and 10, the best at 5


def _train_argv(folder: StudyFolder, cell) -> list[str]:
    cmd = cell_command(folder, cell)
    assert cmd[1:4] == ["-m", "lightning_ehf", "train"], cmd
    return cmd[3:]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_interrupted_cell_resumes_from_the_step_it_reached(tmp_path, ehf_clean_env, monkeypatch, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"study": "resume", "base": BASE, "axes": {"seed": {"key": "seed", "values": [0]}}}))
    folder = StudyFolder(tmp_path / "study", load_study(spec))
    (cell,) = folder.cells
    checkpoints = folder.cell_dir(cell) / "checkpoints"

    with monkeypatch.context() as m:
        training_step = EHFModule.training_step

        def interrupted(self, batch, batch_idx):
            loss = training_step(self, batch, batch_idx)
            if self.global_step == STOP_AT - 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss

        def worsening(self, batch, batch_idx):  # every validation worse than the one before: best.ckpt stays at 5
            self.log(f"val/{self.nll_key}", float(self.global_step), on_epoch=True, batch_size=float(batch.shape[0]))

        m.setattr(EHFModule, "training_step", interrupted)
        m.setattr(EHFModule, "validation_step", worsening)
        previous = signal.signal(signal.SIGTERM, lambda *_: None)  # pytest survives a missing handler
        try:
            assert cli.main(_train_argv(folder, cell)) == 75
        finally:
            signal.signal(signal.SIGTERM, previous)
    steps = {
        name: int(torch.load(checkpoints / f"{name}.ckpt", map_location="cpu", weights_only=True)["global_step"])
        for name in ("best", "last")
    }
    assert steps == {"best": 5, "last": STOP_AT}
    assert folder.state(cell).state == "interrupted"
    capsys.readouterr()

    argv = _train_argv(folder, cell)
    assert "--resume" in argv
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    resumed = re.search(r"resuming from step (\d+)", out)
    assert resumed and int(resumed.group(1)) == STOP_AT, out[-2000:]
    assert folder.state(cell).state == "done"


def test_a_cell_starts_its_own_w_and_b_service_and_run():
    """A cell's environment drops the parent's W&B service (it would keep a preempted segment's run ID open), its
    run folder and run ID (outside a sweep agent), and sets the thread counts."""
    from lightning_ehf.study.runner import cell_environment

    parent = {
        "PATH": "/bin",
        "WANDB_SERVICE": "2-123-tcp-localhost-4567",
        "EHF_RUN_DIR": "/runs/x",
        "WANDB_RUN_ID": "abc",
        "OMP_NUM_THREADS": "8",
    }
    env = cell_environment(parent, threads=1)
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert parent["WANDB_SERVICE"] == "2-123-tcp-localhost-4567"  # the parent's own mapping is left alone
    swept = cell_environment({**parent, "WANDB_SWEEP_ID": "s1"})
    assert swept["WANDB_RUN_ID"] == "abc" and "WANDB_SERVICE" not in swept and swept["OMP_NUM_THREADS"] == "8"
