"""The README's main command (short, from the shell); --config.mode=sample and eval and distillation through the
command line's parse, run and outcome in this process; pdist.load in a fresh process and the notebook (bad input
and interruptions: tests/test_reliability.py)."""

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, SMALL_MODEL, config_file, main_env, run_in_process, run_script

import pdist
from pdist import jobs, main, pretrained
from pdist.errors import ConfigError
from pdist.runtime import console


@pytest.mark.heavy
def test_short_main_run_leaves_checkpoints_grids_and_samples(cli_workdir):
    workdir = cli_workdir
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
    assert os.path.exists(os.path.join(workdir, "grids", "step_00000020.png"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    samples = np.load(os.path.join(workdir, "samples.npz"))
    assert samples["images"].shape == (16, 8, 8, 1) and samples["images"].dtype == np.uint8
    assert os.path.exists(os.path.join(workdir, "samples.png"))


# What the libraries print unless asked (--verbosity): JAX's TPU probe, TensorFlow's C++ notices, TFDS's warnings,
# lines and bars, matplotlib's font cache, clu's hyperparameters and scalars.
NOISE = ("libtpu", "oneDNN", "InitializeLog", "dataset_info.json", "Downloading and preparing", "Generating splits",
         "Shuffling", "font cache", "Hyperparameters", "steps_per_sec", "Setting work unit notes", "Traceback")  # fmt: skip


def test_the_console_opens_with_a_summary_and_ends_with_what_it_made_and_what_to_run_next(cli_workdir):
    with open(f"{cli_workdir}.stdout") as f:
        out = f.read()
    with open(f"{cli_workdir}.stderr") as f:
        err = f.read()
    lines = out.splitlines()
    # Its inputs first (a fresh data folder: the digits dataset is prepared, once), then what the job will do.
    assert lines[0].startswith("preparing the digits dataset in ") and lines[1].startswith("prepared digits in ")
    assert lines[2] == (
        f"pdist {pdist.__version__}: train a teacher (unet, v-parameterization) on digits 8x8x1, 20 steps of batch 128"
    ), out
    assert lines[3] == f"on 1 CPU device in 1 process; writing to {cli_workdir}", out
    (final,) = [line for line in lines if re.fullmatch(r"teacher  20/20 steps .*loss [0-9.]+  in \d+s", line)]
    done = next(i for i, line in enumerate(lines) if line.startswith("done in "))
    loss = pdist.load(cli_workdir).metadata["loss"]
    assert re.fullmatch(rf"done in (\d+m\d\d|\d+)s: final loss {loss:.4g}", lines[done]), lines[done]
    assert lines[done + 1].split() == ["checkpoint", f"{cli_workdir}/checkpoints/20"], lines[done + 1]
    assert any(line.split()[:2] == ["samples", f"{cli_workdir}/samples.npz,"] for line in lines[done:])
    nexts = lines[lines.index("next:") + 1 :]
    assert [c.split()[:3] for c in nexts] == [["python", "-m", "pdist.main"]] * 3 + [["python", "-c", '"import']]
    assert "--config=configs/digits_distill.py" in nexts[1] and f"--config.distill.teacher={cli_workdir}" in nexts[1]
    for noise in NOISE:
        assert noise not in out and noise not in err, noise
    assert err.strip() == "", err
    # The last line runs as printed: the checkpoint loads and samples in a fresh process.
    command = shlex.quote(sys.executable) + nexts[-1].strip().removeprefix("python")  # this Python, as `python`
    ran = subprocess.run(command, shell=True, cwd=REPO, env=main_env(), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.strip() == "(16, 8, 8, 1)", ran.stderr[-2000:]


@pytest.mark.parametrize("terminal", [True, False])
def test_a_progress_line_is_redrawn_in_a_terminal_and_printed_every_tenth_elsewhere(terminal, monkeypatch):
    class Stream(io.StringIO):
        def isatty(self):
            return terminal

    clock = iter(range(0, 10_000, 1))  # one second per call of time.time()
    monkeypatch.setattr(console.time, "time", lambda: float(next(clock)))
    stream = Stream()
    shown = console.Progress("teacher", 200, stream=stream)
    for step in range(1, 201):
        shown.update(step, **({"loss": 1.0 / step} if step % 50 == 0 else {}))
    shown.close()
    text = stream.getvalue()
    if terminal:  # one line, redrawn in place: carriage returns, one newline at the very end
        assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r\x1b[K") >= 200
    else:  # a line every tenth (steps 20, 40, ..., 180) and the final one; no control characters
        assert "\r" not in text and "\x1b" not in text
        assert [line.split()[1] for line in text.splitlines()] == [f"{s}/200" for s in range(20, 200, 20)] + ["200/200"]
    last = text.rstrip("\n").split("\r\x1b[K")[-1].splitlines()[-1]
    assert last == "teacher  200/200 steps  0.995 steps/s  loss 0.005  in 3m21s", last  # 199 steps in 200 s
    line = [x for x in text.replace("\r\x1b[K", "\n").splitlines() if x.startswith("teacher  100/200")][-1:]
    assert not line or "ETA 1m" in line[0], line  # 1 step/s after the first: 100 steps left


def test_a_fast_rate_is_written_in_digits_with_thousands_separators(monkeypatch):
    clock = iter([0.0, 0.0, 0.5])  # created; the first update at t = 0; 4,000 images more half a second later
    monkeypatch.setattr(console.time, "time", lambda: next(clock))
    stream = io.StringIO()
    shown = console.Progress("sampling ddim:1", 8_001, unit="images", stream=stream)
    for done in (1, 4_001):
        shown.update(done)
    assert stream.getvalue() == "sampling ddim:1  4,001/8,001 images  8,000 images/s  ETA 0s\n", stream.getvalue()


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
    assert "guid" not in table  # an unguided report says nothing about guided samplers
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
def test_distill_command_runs_its_round_and_a_rerun_resumes_without_training(cli_workdir, tfds_dir, tmp_path, capsys):
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
    # A finished run given a bad config is still checked whole: one sentence, status 2, nothing written.
    status, message, _ = run_in_process(*args, "--config.data.split=validation", config="configs/digits_distill.py")
    assert status == 2 and "validation" in message and "\n" not in message, message
    assert sorted(os.listdir(round_dir)) == listing
    # ... and given another valid config, it says in one line which keys differ from the ones it ran with.
    capsys.readouterr()
    status, message, _ = run_in_process(*args, "--config.train.log_every=1", config="configs/digits_distill.py")
    assert status == 0, message
    said = [line for line in capsys.readouterr().out.splitlines() if "differs" in line]
    assert len(said) == 1 and "train.log_every: 2 -> 1" in said[0] and "nothing was trained" in said[0], said
    assert sorted(os.listdir(round_dir)) == listing
    # The student samples with its own 2 steps on its uniform grid unless told otherwise, as pdist.load does;
    # another count is taken with one line on what it was distilled for.
    capsys.readouterr()
    status, message, _ = run_in_process(*args, "--config.mode=sample", "--config.sample.num_samples=4",
                                        config="configs/digits_distill.py")  # fmt: skip
    assert status == 0, message
    out = capsys.readouterr().out
    assert "(ddim, 2 steps)" in out and "note:" not in out, out
    samples = tmp_path / "distill" / "samples"
    assert sorted(os.listdir(samples)) == ["samples_ddim_2_uniform_step4.npz", "samples_ddim_2_uniform_step4.png"]
    np.testing.assert_array_equal(np.load(samples / "samples_ddim_2_uniform_step4.npz")["samples"],
                                  pdist.load(str(round_dir)).sample(4))  # fmt: skip
    status, message, _ = run_in_process(*args, "--config.mode=sample", "--config.sample.num_samples=4",
                                        "--config.sample.num_steps=3", config="configs/digits_distill.py")  # fmt: skip
    assert status == 0, message
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert said == ["note: this student was distilled for 2 DDIM steps on the uniform grid (ddim:2:uniform); "
                    "sampling it with ddim:3:uniform as asked"], said  # fmt: skip
    config = config_file("digits_distill")
    config.mode = "eval"
    stored = pretrained.stored(str(tmp_path / "distill"))
    assert jobs.own_sampling(config, *stored) and config.eval.samplers == "ddim:2:uniform"
    config.mode, config.eval.samplers = "eval", "ddim:8"
    assert not jobs.own_sampling(config, *stored, frozenset({"eval.samplers"}))
    assert config.eval.samplers == "ddim:8"


def test_a_finished_run_given_a_split_the_data_lacks_is_one_sentence_and_writes_nothing(cli_workdir, tfds_dir):
    before = {p: os.path.getmtime(os.path.join(cli_workdir, p)) for p in os.listdir(cli_workdir)}
    status, message, _ = run_in_process(
        f"--workdir={cli_workdir}",
        f"--config.data.data_dir={tfds_dir}",
        *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()),  # the run's network
        "--config.train.num_steps=20",
        "--config.data.split=validation",
    )
    assert status == 2 and "validation" in message and "\n" not in message, message
    assert {p: os.path.getmtime(os.path.join(cli_workdir, p)) for p in os.listdir(cli_workdir)} == before


def test_load_samples_in_a_fresh_process_without_training_code(cli_workdir):
    result = run_script("load_fresh", cli_workdir, "20", devices=1)
    assert 0.0 < result["max_abs"] <= 1.0 + 1e-3
    assert result["training_modules"] == []


@pytest.mark.heavy
def test_the_notebook_trains_distills_samples_and_plots_from_nothing(tfds_dir, tmp_path, monkeypatch):
    """examples/colab_quickstart.ipynb as a fresh runtime runs it (no checkpoint given), at a tiny size."""
    import nbclient
    import nbformat

    overrides = [*(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()), f"--config.data.data_dir={tfds_dir}"]
    overrides += ["--config.train.batch_size=32", "--config.train.log_every=2", "--config.distill.grid_samples=4"]
    env = {**main_env(), "PDIST_RUNS": str(tmp_path / "runs"), "PDIST_TEACHER_STEPS": "4"}
    env.update(PDIST_ROUND_UPDATES="1", PDIST_OVERRIDES=" ".join(overrides), PDIST_CHECKPOINT="")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(os.path.join(REPO, "examples", "colab_quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    pictures = [o for o in outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(pictures) == 2  # the side-by-side samples and the quality-against-steps plot
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "teacher: step 4" in text and text.count("distilled student") == 3, text[-3000:]
    for r, steps in ((1, 32), (2, 16), (3, 8)):
        assert pdist.load(str(tmp_path / "runs" / "distill" / f"round_{r:02d}_{steps}steps")).step == 1


def _main_args(command: str) -> list[str]:
    """The arguments of a printed ``python -m pdist.main ...`` command."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "pdist.main"], command
    return words[3:]


# every config file but configs/workdir.py, which reads a workdir's stored config (tests/test_interop.py runs it)
CONFIGS = sorted(n[:-3] for n in os.listdir(os.path.join(REPO, "configs")) if n.endswith(".py") and n != "workdir.py")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_printed_next_command_of_every_config_parses_validates_and_fits_its_teacher(name, tmp_path, monkeypatch):
    """What a run of each config prints to run next is a command the command line takes (the digits ones also
    run, at a tiny size: test_the_next_commands_a_run_prints_run)."""
    from absl import flags

    from pdist import config as config_lib
    from pdist.jobs import distill

    monkeypatch.chdir(tmp_path)  # where a printed convert command would write inception.npz
    (tmp_path / "inception.npz").touch()
    trained = config_lib.from_file(os.path.join(REPO, "configs", f"{name}.py"))
    variants = [("", trained)]
    if name == "imagenet64_guided":  # its teacher is a variant of it
        variants = [(":teacher", config_lib.from_file(os.path.join(REPO, "configs", f"{name}.py"), "teacher"))]
    for variant, config in variants:
        if config.mode not in ("train", "distill"):
            continue
        workdir = f"runs/{name}"
        for command in main.next_commands(config, os.path.join(REPO, "configs", f"{name}.py{variant}"), workdir):
            if not command.startswith("python -m pdist.main"):
                continue
            args = _main_args(command)
            argv = ["pdist.main", *args]
            fv = flags.FlagValues()
            main.define_flags(fv, argv)
            main.parse(argv, fv)
            jobs.validate(fv.config)
            if fv.config.mode == "distill":
                assert fv.config.distill.teacher == workdir, command
                distill.check_teacher(fv.config, config, "the run")


def _printed_next(out: str) -> list[str]:
    """The commands after ``next:`` in a job's output."""
    lines = out.splitlines()
    return [line.strip() for line in lines[lines.index("next:") + 1 :] if line.startswith("  ")]


TINY = {  # what each printed command gets appended, to run at a tiny size
    "sample": ["--config.sample.num_samples=4"],
    "eval": ["--config.eval.num_samples=16", "--config.eval.pr_samples=16", "--config.eval.num_seeds=1"],
    "distill": ["--config.distill.start_steps=4", "--config.distill.final_steps=2", "--config.train.batch_size=32",
                "--config.distill.updates_per_round=2", "--config.distill.updates_last_rounds=2",
                "--config.distill.fidelity_samples=4", "--config.distill.grid_samples=4"],
}  # fmt: skip


def _run_printed(command: str, extra: list[str], capsys) -> str:
    """Runs a printed next command in this process (``python -c CODE`` as CODE) with ``extra`` flags; its
    output."""
    capsys.readouterr()
    if command.startswith("python -c "):
        exec(shlex.split(command)[2], {})
        return capsys.readouterr().out
    args = _main_args(command)
    mode = next((a.split("=", 1)[1] for a in args if a.startswith("--config.mode=")), "distill")
    status, message, _ = main.invoke([*args, *extra, *TINY.get(mode, [])])
    out = capsys.readouterr().out
    assert status == 0, (command, message, out[-2000:])
    return out


def test_the_next_commands_a_run_prints_run(cli_workdir, tfds_dir, tmp_path, capsys):
    """README's run prints what to run next; each of those runs (at a tiny size), and so does each of what the
    distillation it suggests prints in turn: the teacher's samples and eval, the student's with its own steps."""
    teacher = str(tmp_path / "digits")
    shutil.copytree(cli_workdir, teacher)  # the shared workdir stays as it is
    with open(f"{cli_workdir}.stdout") as f:
        printed = [c.replace(cli_workdir, teacher) for c in _printed_next(f.read())]
    assert len(printed) == 4, printed  # sample, distill, eval, load
    extra = [f"--config.data.data_dir={tfds_dir}", *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items())]
    student_printed = []
    for command in printed:
        out = _run_printed(command, extra + (["--config.eval.samplers=ddim:2"] if "mode=eval" in command else []),
                           capsys)  # fmt: skip
        if "--config.distill.teacher=" in command:
            student_printed = _printed_next(out)
        if command.startswith("python -c "):
            assert out.strip() == "(16, 8, 8, 1)", out
    assert len(student_printed) == 3, student_printed  # sample, eval, load: with the student's own 2 steps
    for command in student_printed:
        out = _run_printed(command, extra, capsys)
        if "mode=eval" in command:
            assert "ddim:2:uniform" in out, out[-2000:]
        elif "mode=sample" in command:
            assert "(ddim, 2 steps)" in out, out[-2000:]


def test_show_lists_every_key_with_its_value_default_and_help_and_help_is_plain_text(capsys):
    from pdist import config as config_lib

    status, message, _ = run_in_process("--config.mode=show", "--config.sample.num_steps=16",
                                        config="configs/digits_cond.py")  # fmt: skip
    assert status == 0, message
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split(" = ", 1)[0]: line for line in lines if line.startswith("config.")}
    every = [f"config.{k}" for k in _keys(config_lib.base_config())]
    assert sorted(shown) == sorted(every)
    assert shown["config.sample.num_steps"].startswith("config.sample.num_steps = 16  (default 128)")
    assert shown["config.train.label_dropout"].startswith("config.train.label_dropout = 0.1  (default 0.0)")
    assert "# a TFDS name" in shown["config.data.name"]  # the defaults' own comments
    assert "--config.mode=show lists every key" in run_in_process("--config.nope=1", config="configs/digits.py")[1]
    # --help: plain text, exit status 0.
    out = subprocess.run([sys.executable, "-m", "pdist.main", "--help"], cwd=REPO, env=main_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "``" not in out.stdout and "--config.mode=show" in out.stdout, out


_REFUSED_WITHOUT_TENSORFLOW = """
import importlib.util, sys
from pdist import main
from pdist.runtime import console
console.quiet()
status, message, _ = main.invoke(["--config=configs/digits.py", "--workdir=w", "--config.diffusion.learned_variance=True"])
print(status, "tensorflow" in sys.modules)
importlib.util.find_spec("tensorflow")  # a look without importing (etils' gs:// check) keeps the hook
import tensorflow
print("tensorflow" in sys.modules)
"""


def test_a_refused_command_imports_no_tensorflow_and_its_later_import_stays_silent(tmp_path):
    """A config the train job refuses is refused before TensorFlow is imported (the jobs import pdist.data and
    clu's writers where they read data or write events); TensorFlow imported later, after quiet(), prints none
    of its C++ notices."""
    out = subprocess.run([sys.executable, "-c", _REFUSED_WITHOUT_TENSORFLOW], cwd=REPO, env=main_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["2", "False", "True"], out.stdout
    assert out.stderr == "", out.stderr[-3000:]


def _keys(config, prefix=""):
    out = []
    for k, v in config.items():
        out += _keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [prefix + k]
    return out


def test_a_finished_run_says_so_keeps_its_samples_and_a_model_prints_short(cli_workdir, capsys):
    samples = os.path.join(cli_workdir, "samples.npz")
    before = {p: os.path.getmtime(os.path.join(cli_workdir, p)) for p in os.listdir(cli_workdir)}
    capsys.readouterr()
    from conftest import SHORT

    data_dir = pdist.load(cli_workdir).config.data.data_dir  # the same command: its own data folder
    status, message, _ = run_in_process(f"--workdir={cli_workdir}", f"--config.data.data_dir={data_dir}", *SHORT)
    assert status == 0, message
    out = capsys.readouterr().out
    assert "teacher: complete at step 20 (nothing to train)" in out and "samples are in" in out, out
    assert {p: os.path.getmtime(os.path.join(cli_workdir, p)) for p in os.listdir(cli_workdir)} == before
    assert os.path.getmtime(samples) == before["samples.npz"]
    model = pdist.load(cli_workdir)
    count = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(model.params))
    assert repr(model) == (f"<pdist model: unet on digits 8x8x1, v-parameterization, {count:,} parameters, step 20, "
                           f"{os.path.join(cli_workdir, 'checkpoints')}>")  # fmt: skip
    # labels= on an unconditional model, or of the wrong length: one sentence each, before anything compiles.
    with pytest.raises(ConfigError, match="this model is unconditional"):
        model.sample(4, labels=[0, 1, 2, 3])


def test_readme_links_resolve_inside_the_repository():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "README links nothing"
    outside = [link for link in links if "://" in link or link.startswith("..") or link.startswith("/")]
    assert not outside, outside
    missing = [link for link in links if not os.path.exists(os.path.join(REPO, link.split("#", 1)[0]))]
    assert not missing, missing
    # It opens with what pdist is (three lines), then the two commands.
    lines = text.splitlines()
    assert lines[0] == "# pdist" and lines[1] == "" and lines[5] == "" and lines[6] == "```bash", lines[:8]
