"""The README's main command (short, from the shell); --config.mode=sample and eval and distillation through the
command line's parse, run and outcome in this process; pdist.load in a fresh process and the notebook (bad input
and interruptions: tests/test_reliability.py)."""

import json
import os

import numpy as np
import pytest
from helpers import REPO, SMALL_MODEL, run_in_process, run_script


@pytest.mark.heavy
def test_short_main_run_leaves_checkpoints_grids_and_samples(cli_workdir):
    workdir = cli_workdir
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
    assert os.path.exists(os.path.join(workdir, "grids", "step_00000020.png"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    samples = np.load(os.path.join(workdir, "samples.npz"))
    assert samples["images"].shape == (16, 8, 8, 1) and samples["images"].dtype == np.uint8
    assert os.path.exists(os.path.join(workdir, "samples.png"))


def test_sample_mode_writes_grid_and_npz(cli_workdir, tmp_path):
    workdir = str(tmp_path / "w")  # the samples go to this workdir, the checkpoint is read from the shared one
    status, message, _ = run_in_process(
        f"--workdir={workdir}",
        f"--config.sample.checkpoint={cli_workdir}",
        "--config.mode=sample",
        "--config.sample.method=heun",
        "--config.sample.num_steps=4",
        "--config.sample.num_samples=9",
    )
    assert status == 0, message
    npz = np.load(os.path.join(workdir, "samples", "samples_heun_4_uniform_step20.npz"))
    assert npz["samples"].shape == (9, 8, 8, 1)
    assert np.isfinite(npz["samples"]).all()
    np.testing.assert_array_equal(npz["images"], np.clip(np.round((npz["samples"] + 1) * 127.5), 0, 255))
    status, message, _ = run_in_process(  # this model is unconditional: no guidance, one sentence, status 2
        f"--workdir={workdir}",
        f"--config.sample.checkpoint={cli_workdir}",
        "--config.mode=sample",
        "--config.sample.guidance=2",
    )
    assert status == 2 and "Guidance needs a class-conditional model" in message, message


@pytest.mark.heavy
def test_eval_mode_scores_each_sampler_over_seeds_and_the_nll(cli_workdir, tfds_dir, evaluator_cache, tmp_path):
    workdir = str(tmp_path / "w")
    status, message, _ = run_in_process(
        f"--workdir={workdir}",
        f"--config.eval.checkpoint={cli_workdir}",
        "--config.mode=eval",
        "--config.eval.samplers=ddim:4,ddpm:4:logsnr",
        "--config.eval.num_samples=64",
        "--config.eval.pr_samples=64",
        "--config.eval.num_seeds=2",
        "--config.eval.nll=True",
        "--config.eval.nll_timesteps=10",
        "--config.eval.nll_examples=20",
        "--config.eval.nll_batch_size=8",
    )
    assert status == 0, message
    (tag,) = os.listdir(os.path.join(workdir, "eval"))
    assert tag.endswith("_step20")
    folder = os.path.join(workdir, "eval", tag)
    with open(os.path.join(folder, "eval.json")) as f:
        result = json.load(f)
    rows = [(r["method"], r["steps"], r["grid"], r["nfe"]) for r in result["rows"]]
    assert rows == [("ddim", 4, "uniform", 4), ("ddpm", 4, "logsnr", 4)]  # no grid given: the model's (auto)
    for row in result["rows"]:
        assert row["seeds"] == [0, 1] and len(row["per_seed"]) == 2
        for m in ("fd", "is", "precision", "recall"):
            values = [s[m] for s in row["per_seed"]]
            assert row[m]["mean"] == pytest.approx(np.mean(values)) and row[m]["low"] <= row[m]["high"]
        assert row["fd"]["mean"] > 0 and 1.0 <= row["is"]["mean"] <= 10.0
        assert sum(row["class_histogram"]) == pytest.approx(1.0)
    nll = result["nll"]
    assert nll["examples"] == 20 and len(nll["terms"]) == 11  # the decoder at t_min, then 10 steps
    assert (nll["bound"], nll["clip_x"]) == ("10 steps", True)
    assert nll["bits_per_dim"] == pytest.approx(nll["prior"] + sum(nll["terms"]), rel=1e-5)
    with open(os.path.join(folder, "eval.md")) as f:
        table = f.read()
    assert "| ddim | 4 | uniform | 4 |" in table and "| ddpm | 4 | logsnr | 4 |" in table and "bits/dim" in table
    assert os.path.exists(os.path.join(folder, "eval.png"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(folder))
    # The same seed through pdist.load and the evaluator in this process gives the same Frechet distance.
    import pdist
    from pdist.data.pipeline import load_split
    from pdist.evaluation import DigitsEvaluator, frechet_distance, gaussian_stats

    x = pdist.load(cli_workdir).sample(64, method="ddim", num_steps=4, seed=1)
    evaluator = DigitsEvaluator(data_dir=tfds_dir, cache_dir=evaluator_cache)
    train_images = load_split("digits", "train", tfds_dir, 8, 1)["image"]
    fd = frechet_distance(*gaussian_stats(evaluator.features(x)), *gaussian_stats(evaluator.features(train_images)))
    assert fd == pytest.approx(result["rows"][0]["per_seed"][1]["fd"], rel=1e-4)


@pytest.mark.heavy
def test_distill_command_runs_its_round_and_a_rerun_resumes_without_training(cli_workdir, tfds_dir, tmp_path):
    args = [
        f"--workdir={tmp_path / 'distill'}",
        f"--config.distill.teacher={cli_workdir}",
        f"--config.data.data_dir={tfds_dir}",
        *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()),  # the teacher's
        "--config.distill.start_steps=4",
        "--config.distill.final_steps=2",
        "--config.distill.updates_per_round=4",
        "--config.distill.updates_last_rounds=4",
        "--config.distill.fidelity_samples=8",
        "--config.train.batch_size=32",
        "--config.train.log_every=2",
        "--config.train.checkpoint_every=2",
    ]
    status, message, _ = run_in_process(*args, config="configs/digits_distill.py")
    assert status == 0, message
    round_dir = tmp_path / "distill" / "round_01_2steps"
    assert sorted(os.listdir(round_dir / "checkpoints")) == ["2", "4"]
    with open(tmp_path / "distill" / "summary.md") as f:
        table = f.read()
    assert "| 1 | 4 -> 2 | 4 |" in table
    listing = sorted(os.listdir(round_dir))
    status, message, _ = run_in_process(*args, config="configs/digits_distill.py")
    assert status == 0, message
    assert sorted(os.listdir(round_dir)) == listing  # no new events file: nothing was trained again
    with open(tmp_path / "distill" / "summary.md") as f:
        assert f.read() == table


def test_load_samples_in_a_fresh_process_without_training_code(cli_workdir):
    result = run_script("load_fresh", cli_workdir, "20", devices=1)
    assert 0.0 < result["max_abs"] <= 1.0 + 1e-3
    assert result["training_modules"] == []


def test_notebook_runs_on_the_checkpoint(cli_workdir):
    import nbclient
    import nbformat

    nb = nbformat.read(os.path.join(REPO, "examples", "colab_quickstart.ipynb"), as_version=4)
    os.environ["PDIST_CHECKPOINT"] = cli_workdir
    os.environ["JAX_PLATFORMS"] = "cpu"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
