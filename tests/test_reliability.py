"""Reliability: bad input stops in one sentence before anything is written; SIGTERM and kill -9 lose nothing
and resume bit-identically; a corrupt checkpoint is named (or skipped when allowed); NaNs stop or are skipped."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    REPO,
    SMALL_MODEL,
    assert_same_state,
    assert_same_tree,
    main_command,
    main_env,
    one_sentence,
    run_in_process,
    run_main,
    small_config,
    snapshot,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pdist
from pdist import samplers
from pdist.errors import NonFiniteError
from pdist.jobs import train
from pdist.runtime import checkpoint, phase

# A digits teacher small enough to train hundreds of steps in seconds from the command line.
TINY = [
    *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()),
    "--config.train.batch_size=16",
    "--config.train.sample_every=0",
    "--config.train.num_grid_samples=4",
    "--config.sample.num_steps=2",
    "--config.sample.num_samples=4",
    "--config.optim.warmup_steps=10",
    "--config.train.log_every=10",
]


@pytest.fixture(scope="module")
def run_args(tfds_dir):
    return [f"--config.data.data_dir={tfds_dir}", *TINY, "--config.train.num_steps=160"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, run_args):
    """The run the interrupted ones must equal, bit for bit (in this process: the same parse and run)."""
    path = str(tmp_path_factory.mktemp("uninterrupted"))
    status, message, _ = run_in_process(f"--workdir={path}", *run_args, "--config.train.checkpoint_every=100")
    assert status == 0, message
    return path


@pytest.mark.heavy
def test_sigterm_saves_the_current_step_and_the_same_command_resumes_bit_identically(
    uninterrupted, run_args, tmp_path, capsys
):
    workdir = str(tmp_path / "w")
    args = [f"--workdir={workdir}", *run_args, "--config.train.checkpoint_every=100"]
    proc = subprocess.Popen(
        main_command(*args), cwd=REPO, env=main_env(), stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:  # the first progress line with a loss: training is under way
        if re.match(r"teacher  \d+/160 steps .*loss ", line):
            proc.send_signal(signal.SIGTERM)
            break
    err, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = re.search(r"Stopped by SIGTERM at step (\d+); its checkpoint is in (\S+): rerun", err)
    assert stopped, err[-3000:]
    step = int(stopped.group(1))
    assert 10 <= step < 100 and "Traceback" not in err
    # The signal's line in the console's own words (no logging prefix), before the stop's sentence.
    assert "\nSIGTERM: saving a checkpoint at the current step, then stopping;" in err and "preemption.py" not in err
    assert stopped.group(2) == os.path.join(workdir, "checkpoints", str(step))
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]  # the current step, not a periodic one
    assert not os.path.exists(os.path.join(workdir, "samples.npz"))

    capsys.readouterr()
    status, message, _ = run_in_process(*args)  # the same command, resumed in this process (its programs reused)
    assert status == 0, message
    out = capsys.readouterr()
    assert f"teacher: resuming at step {step} from {os.path.join(workdir, 'checkpoints', str(step))}" in out.out
    assert "differs" not in out.out + out.err  # the saved config read back equals the same command's
    assert_same_state(workdir, uninterrupted)
    np.testing.assert_array_equal(
        np.load(os.path.join(workdir, "samples.npz"))["samples"],
        np.load(os.path.join(uninterrupted, "samples.npz"))["samples"],
    )


def test_kill_9_during_a_save_resumes_from_the_last_complete_checkpoint_bit_identically(
    uninterrupted, run_args, tmp_path, capsys
):
    workdir = str(tmp_path / "w")
    folder = os.path.join(workdir, "checkpoints")
    args = [f"--workdir={workdir}", *run_args, "--config.train.checkpoint_every=5"]
    # kill -9 inside the save of step 15: its files written to a temporary folder, the commit not yet run
    script = os.path.join(REPO, "tests", "scripts", "kill_during_save.py")
    killed = subprocess.run([sys.executable, script, "15", *main_command(*args)[3:]], cwd=REPO, env=main_env(),
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = [n for n in os.listdir(folder) if "tmp" in n]
    complete = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
    assert len(partial) == 1 and partial[0].startswith("15.") and complete == [5, 10], os.listdir(folder)
    assert _data_files(os.path.join(folder, partial[0]))  # the step's arrays were written, uncommitted
    capsys.readouterr()
    # The same run, with fewer saves to wait for, resumed in this process (the uninterrupted run's programs reused).
    status, message, _ = run_in_process(*args[:-1], "--config.train.checkpoint_every=100")
    assert status == 0, message
    assert "teacher: resuming at step 10 from" in capsys.readouterr().out  # the newest complete checkpoint
    assert not [n for n in os.listdir(folder) if "tmp" in n]  # the partial save was cleared away
    assert_same_state(workdir, uninterrupted)


def _data_files(checkpoint_dir) -> list[str]:
    """The checkpoint's array data files (OCDBT), largest first."""
    files = glob.glob(os.path.join(checkpoint_dir, "state", "**", "d", "*"), recursive=True)
    return sorted(files, key=lambda f: (-os.path.getsize(f), f))


def _truncate_newest(workdir) -> str:
    """Cuts every data file of the newest checkpoint to half its size (one file's tail can hold no array bytes)."""
    step = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
    folder = os.path.join(workdir, "checkpoints", str(step))
    for data in _data_files(folder):
        os.truncate(data, os.path.getsize(data) // 2)
    return folder


def test_a_truncated_checkpoint_is_named_and_with_fallback_the_previous_one_resumes(
    uninterrupted, run_args, tmp_path, capsys
):
    workdir = str(tmp_path / "w")
    shutil.copytree(uninterrupted, workdir)
    damaged = _truncate_newest(workdir)
    assert damaged.endswith(os.path.join("checkpoints", "160"))
    before = snapshot(workdir)
    args = [f"--workdir={workdir}", *run_args, "--config.train.checkpoint_every=100"]
    status, message, _ = run_in_process(*args)
    assert status == 2, message
    assert message.startswith(f"error: The checkpoint {damaged} is corrupt or truncated")
    assert "use step 100 instead, or set config.train.fallback_checkpoint=True" in message and one_sentence(message)
    assert snapshot(workdir) == before

    status, message, _ = run_in_process(*args, "--config.train.fallback_checkpoint=True")
    assert status == 0, message
    assert (
        f"teacher: resuming at step 100 from {os.path.join(workdir, 'checkpoints', '100')}" in capsys.readouterr().out
    )
    assert snapshot(damaged + ".corrupt") == {k[len("checkpoints/160/") :]: v for k, v in before.items()
                                              if k.startswith("checkpoints/160/")}  # fmt: skip
    assert_same_state(workdir, uninterrupted, 160)  # steps 101..160 again, bit for bit


def test_a_flipped_bit_fails_the_checksum(uninterrupted, tmp_path):
    source = os.path.join(uninterrupted, "checkpoints", "100")
    clean = pdist.load(source)
    caught = []
    for n, data in enumerate(_data_files(source)):  # one bit in the middle of one file at a time
        copy = str(tmp_path / str(n) / "100")
        shutil.copytree(source, copy)
        target = os.path.join(copy, os.path.relpath(data, source))
        raw = bytearray(open(target, "rb").read())
        raw[len(raw) // 2] ^= 0x10
        open(target, "wb").write(bytes(raw))
        try:
            model = pdist.load(copy)
        except checkpoint.CheckpointCorruptError as e:
            caught.append(str(e))
            if "do not match the checksum saved with them" in str(e):
                break
            continue
        # Read without complaint: then the flipped byte held none of the arrays (OCDBT files hold other bytes too),
        # and what was read is what was saved. Silently changed parameters would fail here.
        assert_same_tree((model.params, model.ema_params), (clean.params, clean.ema_params))
    assert any("do not match the checksum saved with them" in c for c in caught), caught


def test_the_checksum_is_the_same_in_memory_and_on_the_devices():
    """The checksum's NumPy path (arrays in this process's memory) and its compiled path (arrays spread over
    processes, or on an accelerator) give the same words, wrap-around included, for every dtype a state holds; a
    state saved by one and checked by the other restores."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((300, 7)).astype(np.float32),
        rng.standard_normal((5, 3, 3, 16)).astype(ml_dtypes.bfloat16),
        rng.integers(-(2**31), 2**31 - 1, size=(2**20 + 3,), dtype=np.int32),  # the weighted sum wraps
        rng.integers(0, 256, size=(17,), dtype=np.uint8),
        rng.random(9) < 0.5,
        np.float32(-0.0),
        rng.standard_normal(11),  # float64, and a Python number: as JAX places them (float32, int32)
        7,
    ]
    for a in arrays:
        on_host = checkpoint._words(a)
        assert isinstance(on_host, np.ndarray) and on_host.dtype == np.uint32, a
        np.testing.assert_array_equal(on_host, np.asarray(checkpoint._words_on_devices(jnp.asarray(a))), str(a))
    words = [checkpoint._words(a) for a in arrays]
    assert len({tuple(w) for w in words}) == len(words)  # a different array, different words
    flipped = arrays[0].copy()
    flipped.view(np.uint32)[123, 4] ^= 1 << 7
    assert not np.array_equal(checkpoint._words(flipped), words[0])


def _error_cases(tfds_dir, empty_dir):
    data = f"--config.data.data_dir={tfds_dir}"
    distill = "configs/digits_distill.py"
    return [
        (
            ["--config.train.no_such_key=1"],
            None,
            1,
            "config.train.no_such_key is not a config key; did you mean config.train.num_steps?",
        ),  # fmt: skip
        (["--config.trian.batch_size=8"], None, 1, "did you mean config.train.batch_size?"),
        (["--config.train.batch_size=abc"], None, 1, "invalid literal for int()"),
        (["--config.model.ch_mult=abc"], None, 1, "must be a tuple of positive integers"),
        (["--config.diffusion.learned_variance=True"], None, 1, "leaves the variance untrained"),
        (["--config.data.image_size=6", "--config.model.ch_mult=(1,2,2)"], None, 1, "must be divisible by 2**"),
        ([data, "--config.train.batch_size=6"], None, 4, "must split evenly over the 4 devices"),
        ([data, "--config.distill.teacher=/no/such/teacher"], distill, 1, "/no/such/teacher does not exist"),
        ([data, "--config.distill.teacher=TEACHER"], distill, 1, "is another architecture than config.model"),
        ([data, "--config.distill.start_steps=12"], distill, 1, "times a power of two"),
        (
            ["--config.data.name=imagenet2012", f"--config.data.data_dir={empty_dir}"],
            None,
            1,
            "run `tfds build imagenet2012 --data_dir=DIR`",
        ),  # fmt: skip
        ([data, "--config.data.split=trian"], None, 1, "'trian' is not a split of 'digits'"),
        (["--config.mode=sample"], None, 1, "No checkpoint in"),
        (["--config.mode=eval", "--config.eval.samplers=ddim:8,plms"], None, 1, "entry 'plms' is not method:steps"),
        (["--config.mode=eval", "--config.eval.evaluator=inception"], None, 1, "config.eval.inception_weights is not"),
        (
            ["--config.mode=eval", "--config.eval.nll=True", "--config.eval.nll_timesteps=0"],
            None,
            1,
            "config.eval.nll_timesteps=0 must be a positive integer",
        ),  # fmt: skip
    ]


# The cases run from the shell: a flag typo (absl's parser), 4 devices, a dataset to build, a missing checkpoint.
# The others go through the same parse, run and outcome in this process (helpers.run_in_process), which is quicker.
FROM_THE_SHELL = (0, 6, 10, 12)


@pytest.mark.parametrize("case", range(16))
def test_bad_input_stops_in_one_sentence_and_changes_nothing(case, tfds_dir, uninterrupted, tmp_path, capsys):
    empty = str(tmp_path / "empty_tfds")
    flags_, config, devices, expected = _error_cases(tfds_dir, empty)[case]
    flags_ = [f.replace("TEACHER", uninterrupted) for f in flags_]
    workdir = tmp_path / "w"
    os.makedirs(workdir / "grids")  # a workdir with something in it already
    (workdir / "grids" / "keep.txt").write_text("x")
    before = snapshot(workdir)
    args = [f"--workdir={workdir}", *flags_]
    config = config or "configs/digits.py"
    if case in FROM_THE_SHELL:
        out = run_main(*args, config=config, devices=devices, timeout=300)
        status, message, said = out.returncode, out.stderr.strip().splitlines()[-1], out.stdout
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
    else:
        assert devices == 1
        capsys.readouterr()
        status, message, _ = run_in_process(*args, config=config)
        said = capsys.readouterr().out
    assert "writing to" not in said, said  # nothing is announced before a refusal
    assert status == 2, message
    assert message.startswith("error: ") and expected in message, message
    assert one_sentence(message) and "XLA" not in message
    assert snapshot(workdir) == before
    assert snapshot(uninterrupted + "/checkpoints") is not None


@pytest.mark.heavy
def test_a_nan_stops_at_its_step_naming_the_last_good_checkpoint(tfds_dir, tmp_path):
    config = small_config(tfds_dir, num_steps=4, checkpoint_every=2, log_every=3, batch_size=16, keep_checkpoints=10)
    workdir = str(tmp_path / "w")
    train.run(config, workdir)
    config.train.num_steps, config.train.checkpoint_every = 12, 1
    config.optim.learning_rate = 1e30  # one update to 1e30-sized weights, whose next loss overflows
    with pytest.raises(NonFiniteError) as info:
        train.run(config, workdir)
    message = str(info.value)
    step = int(re.search(r"Non-finite values at step (\d+) \(", message).group(1))
    assert 5 < step <= 12 and one_sentence(message)
    good = int(re.search(r"the last good checkpoint is \S+/checkpoints/(\d+):", message).group(1))
    assert good == step - 1
    steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
    assert max(steps) == good  # nothing was saved from the NaN on
    for s in steps:
        model = pdist.load(workdir, s)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((model.params, model.ema_params)))


@pytest.mark.heavy
def test_skipped_updates_leave_the_state_and_are_counted_until_the_limit(tfds_dir, tmp_path):
    config = small_config(tfds_dir, num_steps=4, checkpoint_every=4, log_every=2, batch_size=16, keep_checkpoints=10)
    workdir = str(tmp_path / "w")
    train.run(config, workdir)
    config.optim.learning_rate = 1e30
    config.train.skip_nonfinite = 20
    config.train.num_steps, config.train.checkpoint_every = 10, 1
    train.run(config, workdir)
    final = pdist.load(workdir)
    skipped = final.metadata["skipped_updates"]
    assert 0 < skipped <= 5 and final.step == 10
    first_skip = 10 - skipped + 1  # from the first non-finite update on, every update is skipped
    for u, v in zip(jax.tree.leaves(final.params), jax.tree.leaves(pdist.load(workdir, first_skip - 1).params),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # A resumed run carries the count on, and stops once it passes the limit.
    config.train.num_steps, config.train.skip_nonfinite = 40, skipped + 3
    with pytest.raises(NonFiniteError, match=rf"and {skipped + 4} updates were skipped \(limit {skipped + 3}\)"):
        train.run(config, workdir)


OVERRIDES = {
    "train.batch_size": ["0", "-4", "3", "8", "abc", "2.5"],
    "train.grad_accum_steps": ["1", "2", "3", "0"],
    "train.num_steps": ["0", "2", "3"],
    "train.checkpoint_every": ["1", "0"],
    "train.skip_nonfinite": ["-1", "2"],
    "diffusion.loss": ["mse", "hybrid", "vlb", "l1"],
    "diffusion.learned_variance": ["True", "False"],
    "diffusion.schedule": ["cosine_logsnr", "linear", "cosine", "nope"],
    "diffusion.num_timesteps": ["None", "20", "0"],
    "diffusion.parameterization": ["eps", "x", "v", "both", "epsilon"],
    "diffusion.importance_sampling": ["True"],
    "model.ch_mult": ["(1,2)", "(1,2,2)", "(1,2,2,2,2)", "abc", "()"],
    "model.dtype": ["float32", "bfloat16", "float16"],
    "model.class_conditional": ["True"],
    "train.label_dropout": ["0.1", "1.5"],
    "sample.guidance": ["2"],
    "data.image_size": ["8", "6", "0"],
    "data.split": ["train", "train[:50%]", "trian"],
    "optim.learning_rate": ["0", "-1", "1e-3", "x"],
    "optim.schedule": ["cosine", "rex", "step"],
    "sample.method": sorted(samplers.SAMPLERS) + ["nope"],
    "sample.num_steps": ["2", "0"],
    "sample.grid": ["auto", "respaced", "logsnr", "nope"],
    "mode": ["train", "sample", "eval", "distill", "fit"],
    "train.num_step": ["3"],  # typos
    "trian.batch_size": ["8"],
    "model.chmult": ["(1,2)"],
}
override = st.sampled_from(sorted(OVERRIDES)).flatmap(lambda k: st.sampled_from(OVERRIDES[k]).map(lambda v: (k, v)))


# Config files and workdirs of every kind; the first config and the first two workdirs are good.
CONFIG_FILES = ["configs/digits.py", "configs/no_such_config.py", "configs", "configs/digits.py:no_variant", "BROKEN"]
WORKDIRS = ["fresh", "nested/run", "FILE", "FILE/run", "UNWRITABLE/run", "s3://pdist-bucket/run"]


def _workdir(kind: str, root) -> str:
    """A workdir of ``kind`` under ``root`` (a file, below a file, unwritable, another filesystem)."""
    if kind.startswith("FILE"):
        (root / "FILE").write_text("a file, not a folder")
    if kind.startswith("UNWRITABLE"):
        os.makedirs(root / "UNWRITABLE")
        os.chmod(root / "UNWRITABLE", 0o500)
        if os.access(root / "UNWRITABLE", os.W_OK):  # root ignores permissions: a folder no one may write
            return "/proc/1/run"
    return kind if "://" in kind else str(root / kind)


@pytest.mark.heavy
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    overrides=st.lists(override, min_size=1, max_size=3),
    config=st.sampled_from(CONFIG_FILES),
    where=st.sampled_from(WORKDIRS),
)
@example(overrides=[("train.num_steps", "3"), ("diffusion.parameterization", "eps")], config=CONFIG_FILES[0],
         where="fresh")  # a run, for sure  # fmt: skip
@example(overrides=[("mode", "fit")], config=CONFIG_FILES[0], where="fresh")  # an error, for sure
@example(overrides=[("data.image_size", "0")], config=CONFIG_FILES[0], where="fresh")  # once a TF error mid-run
@example(overrides=[("train.num_steps", "3")], config="BROKEN", where="fresh")
@example(overrides=[("train.num_steps", "3")], config=CONFIG_FILES[1], where="FILE")
@example(overrides=[("train.num_steps", "3")], config=CONFIG_FILES[0], where="FILE/run")
@example(overrides=[("train.num_steps", "3")], config=CONFIG_FILES[0], where="UNWRITABLE/run")
@example(overrides=[("train.num_steps", "3")], config=CONFIG_FILES[0], where="s3://pdist-bucket/run")
def test_random_overrides_end_in_a_run_or_one_sentence(overrides, config, where, tfds_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("h")
    if config == "BROKEN":
        config = str(root / "broken_config.py")
        with open(config, "w") as f:
            f.write("def get_config():\n    return {'mode': 'train'\n")  # a syntax error
    workdir = _workdir(where, root)
    args = [f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}", *TINY]
    args += ["--config.train.num_steps=2", "--config.train.log_every=1", *(f"--config.{k}={v}" for k, v in overrides)]
    before = snapshot(root)
    status, message, fv = run_in_process(*args, config=config)
    if status:
        assert status == 2 and one_sentence(message), message
        assert snapshot(root) == before  # nothing written
        if where not in WORKDIRS[:2] or config != CONFIG_FILES[0]:
            assert "--workdir=" in message or "--config=" in message or "config." in message, message
    else:
        assert where in WORKDIRS[:2] and config == CONFIG_FILES[0], message
        assert fv.config.mode == "train"  # the other modes need a checkpoint or teacher this workdir lacks
        assert pdist.load(workdir).step == fv.config.train.num_steps


def test_a_resume_names_every_setting_that_differs_from_the_checkpoints_config():
    config = small_config()
    saved = json.loads(config.to_json())
    assert phase.config_changes(saved, config) == ""
    assert phase.config_changes(None, config) == ""
    config.train.num_steps, config.optim.schedule = 2 * config.train.num_steps, "linear"
    expected = f"optim.schedule: {saved['optim']['schedule']} -> linear, "
    expected += f"train.num_steps: {saved['train']['num_steps']} -> {config.train.num_steps}"
    assert phase.config_changes(saved, config) == expected
