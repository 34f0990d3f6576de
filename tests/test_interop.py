"""Foreign checkpoints imported as pdist workdirs, against fixtures the peers' own code wrote (provenance.json)."""

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import pdist
from pdist import diffusion, samplers, schedules, vlb
from pdist.errors import InputError
from pdist.evaluation import nll
from pdist.interop import importer, openai

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pd_release")
CKPT = os.path.join(FIXTURE, "checkpoint_1234")
CONFIG = os.path.join(FIXTURE, "tiny_base.py")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pd") / "w")
    importer.import_checkpoint(CKPT, workdir, source_config=CONFIG)
    return pdist.load(workdir), np.load(os.path.join(FIXTURE, "outputs.npz"))


def _raw(model, ref, **network):
    net = model.spec.network.clone(**network) if network else model.spec.network
    return np.asarray(_network_out(net, model.ema_params, ref["z"], ref["logsnr"], ref["label"]))


@functools.partial(jax.jit, static_argnums=0)
def _network_out(network, params, z, logsnr, label):
    """``network``'s output, compiled (see :func:`_spec_out`)."""
    return network.apply({"params": params}, z, logsnr, label, None, train=False)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_the_official_pd_network_equals_the_release_and_each_convention_matters(imported):
    model, ref = imported
    assert model.step == 1234 and model.metadata["source"]["format"] == "pd-release"
    assert model.metadata["source"]["sha256"] == __import__("hashlib").sha256(open(CKPT, "rb").read()).hexdigest()
    assert _rel(_raw(model, ref), ref["raw"]) < 1e-5
    # the release's embedding alone (pdist's own sinusoids instead) breaks parity
    assert _rel(_raw(model, ref, logsnr_input="pdist"), ref["raw"]) > 1e-4
    assert _rel(_raw(model, ref, logsnr_input="sigmoid"), ref["raw"]) > 1e-4


@pytest.mark.parametrize("mean_type", ["x", "eps", "v"])
def test_predictions_and_ddim_equal_the_releases_for_each_mean_type(imported, mean_type):
    model, ref = imported
    raw = _raw(model, ref)
    pred = diffusion.predict(jnp.asarray(raw), jnp.asarray(ref["z"]), jnp.asarray(ref["logsnr"]),
                             parameterization=mean_type, learned_variance=False)  # fmt: skip
    assert _rel(np.asarray(pred.x), ref[f"x_{mean_type}"]) < 1e-5
    # v: the release gets eps-hat from x-hat by dividing by sigma (2.5e-3 at logSNR 12), which scales float32's
    # rounding by 400; pdist's alpha v + sigma z does not
    assert _rel(np.asarray(pred.eps), ref[f"eps_{mean_type}"]) < (1e-4 if mean_type == "v" else 1e-5)
    if mean_type == "x":  # the imported config's own sampler: DDIM on t = i / N with clipping, 4 steps
        denoise = model.denoiser(label=jnp.asarray(ref["label"]))
        x = samplers.sample(denoise, model.schedule, jnp.asarray(ref["z"]), method="ddim", num_steps=4,
                            grid=model.config.sample.grid, clip_x=model.config.sample.clip_x)  # fmt: skip
        assert model.config.sample.num_steps == 4
        # The release's last step returns x-hat itself; pdist's DDIM steps to t = 0 (logSNR 20: alpha x-hat +
        # sigma eps-hat, sigma = 4.5e-5), so the two differ by sigma eps-hat there and nowhere else.
        assert _rel(np.asarray(x), ref["ddim4_x"]) < 5e-4


# --- OpenAI's improved-diffusion and guided-diffusion ------------------------------------------------------

OPENAI = os.path.join(os.path.dirname(__file__), "fixtures", "openai")


@functools.partial(jax.jit, static_argnums=0)
def _spec_out(spec, params, x, t, label):
    """``spec.apply`` compiled, one program per network (run eagerly, a network's hundreds of operations compile
    one by one)."""
    return spec.apply(params, x, t, label, None)


@functools.partial(jax.jit, static_argnums=0)
def _predict(spec, params, label, z, t):
    """``spec(...)``'s prediction, compiled (see :func:`_spec_out`)."""
    return spec(params, label, None, z, t)


_level_term = jax.jit(nll.level_term, static_argnums=(1, 5, 6, 7, 8))  # compiled (see _spec_out)


def _openai_flags(name: str) -> str:
    made = json.loads(open(os.path.join(OPENAI, "provenance.json")).read())["models"][name]
    return f"{made['flags']} --timestep_respacing {made['timestep_respacing']}"


@pytest.fixture(scope="module", params=["improved", "guided"])
def openai_model(request, tmp_path_factory):
    name = request.param
    workdir = str(tmp_path_factory.mktemp(name) / "w")
    importer.import_checkpoint(os.path.join(OPENAI, f"{name}.pt"), workdir, source_flags=_openai_flags(name))
    return name, pdist.load(workdir), np.load(os.path.join(OPENAI, f"{name}.npz"))


@pytest.mark.heavy  # each, with its import: 10 s alone, a minute beside the other workers on a cold cache
def test_openai_networks_and_reverse_steps_equal_their_codes(openai_model):
    """improved-diffusion (additive conditioning, legacy qkv order, rescaled time steps, strided-conv
    downsampling, class-conditional, cosine) and guided-diffusion (scale-shift, BigGAN up/down blocks, the new qkv
    order, heads of 16 channels, linear): the network, then ``p_mean_variance`` of the full and the respaced
    diffusion (mean, learned log-variance, x-hat), then the code's DDIM sample from the same noise."""
    name, model, ref = openai_model
    spec, T = model.spec, model.spec.schedule.num_timesteps
    source = model.metadata["source"]
    assert source["format"] == "openai" and model.metadata["source"]["code"] == f"{name}-diffusion"
    made = json.loads(open(os.path.join(OPENAI, "provenance.json")).read())["models"][name]
    null_row = 4 * model.config.model.ch if model.config.model.class_conditional else 0  # pdist's null class
    assert sum(a.size for a in jax.tree.leaves(model.ema_params)) == made["parameters"] + null_row
    label = jnp.asarray(ref["y"]) if "y" in ref.files else None
    z = jnp.asarray(ref["x"])
    level = jnp.asarray(ref["steps"] + 1, jnp.float32)  # OpenAI's step i - 1 is pdist's level i
    raw = _spec_out(spec, model.ema_params, z, level / T, label)
    assert _rel(np.asarray(raw), ref["raw"]) < 1e-5
    # each convention alone breaks parity: GroupNorm's epsilon, the time input's scale, the qkv order, and
    # (improved's strided-conv downsampling) the padding
    m = model.config.model
    time_input = {"timestep": "rescaled_timestep"}.get(m.logsnr_input, "timestep")
    flipped = {"norm_eps": 1e-6}
    if not m.resblock_updown:
        flipped["downsample_padding"] = "same"
    # 0.1 x: the first norms see a variance where epsilon shows (at 0.01 x Flax's one-pass variance, E[x^2] -
    # E[x]^2, departs from PyTorch's by 8e-5 of the output: noticed, left alone)
    small = jnp.asarray(ref["x_small"])
    assert _rel(np.asarray(_spec_out(spec, model.ema_params, small, level / T, label)), ref["raw_small"]) < 1e-5
    others = {k: dataclasses.replace(spec, network=spec.network.clone(**{k: v})) for k, v in flipped.items()}
    if T != 1000:  # the time steps' rescaling by 1000 / T
        others["time scale"] = dataclasses.replace(spec, network_input=time_input)
    for key, other in others.items():
        flip = np.asarray(_spec_out(other, model.ema_params, small, level / T, label))
        assert _rel(flip, ref["raw_small"]) > 1e-4, key
    # level i given as the model's step i (not i - 1)
    flip = np.asarray(_spec_out(spec, model.ema_params, small, (level - 1) / T, label))
    assert _rel(flip, ref["raw_small"]) > 1e-4
    new_order = model.metadata["source"]["flags"].get("use_new_attention_order", False)
    sd = openai.read(open(os.path.join(OPENAI, f"{name}.pt"), "rb").read())
    other_order = openai.to_pdist_params(sd, model.config, not new_order)
    assert _rel(np.asarray(_spec_out(spec, other_order, z, level / T, label)), ref["raw"]) > 1e-4

    def reverse_step(t_level, s_level, tag, rows):
        pred = _predict(spec, model.ema_params, label, z, t_level / T)
        tr = diffusion.transition(spec.schedule.logsnr(s_level / T), spec.schedule.logsnr(t_level / T))
        mean = diffusion.posterior_mean(tr, pred.x, z)
        log_var = diffusion.log_variance("learned", tr, pred.var_frac)
        assert _rel(np.asarray(pred.x), ref[f"{tag}_pred_xstart"]) < 1e-5
        assert _rel(np.asarray(mean), ref[f"{tag}_mean"]) < 1e-5
        # OpenAI clips the posterior variance of the last step (beta-tilde_1 = 0) to beta-tilde_2; pdist's last
        # step returns x-hat without noise, so its variance there is never used: compared at the other steps
        assert _rel(np.asarray(log_var)[rows], ref[f"{tag}_log_variance"][rows]) < 1e-5

    reverse_step(level, level - 1, "full", slice(1, None))
    spaced = ref["spaced_timesteps"]
    k = (len(spaced) - 1) // 2
    t_level, s_level = jnp.full((4,), spaced[k] + 1.0), jnp.full((4,), spaced[k - 1] + 1.0)
    reverse_step(t_level, s_level, "spaced", slice(None))

    s = model.config.sample  # the flags' timestep_respacing: ddim5 (DDIM's stride) or 8 (evenly respaced)
    assert (s.method, s.num_steps, s.grid) == (
        ("ddim", 5, "ddim_stride") if name == "improved" else ("ddpm", 8, "respaced")
    )
    grid = schedules.time_grid(spec.schedule, s.num_steps, s.grid)
    np.testing.assert_array_equal(np.round(grid[:-1] * T).astype(int) - 1, spaced[::-1])  # the code's timesteps
    x = samplers.sample(model.denoiser(label=label), spec.schedule, jnp.asarray(ref["ddim_noise"]), method="ddim",
                        num_steps=s.num_steps, grid=s.grid, clip_x=True)  # fmt: skip
    # Both in float32; OpenAI's coefficients come from float64 tables, pdist's from the float32 logSNR. On the
    # evenly respaced grid (guided's) the first step's x-hat = (z - sigma eps-hat) / alpha divides by
    # alpha_T = 6.4e-3, which scales the rounding by 150: 2.3e-4 of the largest value; improved's DDIM stride
    # grid starts at level 81 of 100 (alpha 0.29): 6.5e-6.
    assert _rel(np.asarray(x), ref["ddim"]) < 5e-4


def _rounding_of_the_codes_cdf(pixels: np.ndarray) -> np.ndarray:
    """Per image, in bits/dim, how far the code's float32 decoder can be from any other float32 evaluation of
    the same formula: a bin probability p is a difference of CDF values near 0 or 1, each rounded to float32's
    step there (2^-24 below 1), so log p is known to about 4 * 2^-24 / p (all of it for the bins the code
    floors at 1e-12, between that floor and p + 4 steps); ``pixels`` are its log-likelihoods [B, ...] in nats."""
    p, step = np.exp(pixels.astype(np.float64)), 4 * 2.0**-24
    slack = np.maximum(np.log1p(step / p), np.log(p) - np.log(np.maximum(1e-12, p - step)))
    return slack.reshape(len(p), -1).mean(axis=1) / np.log(2.0)


def test_the_nll_bound_of_an_imported_model_is_its_codes_term_by_term(openai_model):
    """The eval mode's NLL protocol for an imported learned-variance model (``split_nll``: the model's own T
    levels, its learned variance, x-hat clipped by default, the code's tanh CDF) against the code's
    ``_vb_terms_bpd`` from the same noise at steps 0 (the decoder), 1, 17, T/2 and T - 1, clipped and not, and
    its ``_prior_bpd``."""
    name, model, ref = openai_model
    T = int(model.config.diffusion.num_timesteps)
    assert T == model.spec.schedule.num_timesteps and model.spec.learned_variance and model.config.eval.clip_x
    cdf = model.config.eval.nll_cdf
    assert cdf == "tanh"  # the code's approximation of the normal CDF in its decoder
    x = jnp.asarray(ref["vb_x"])
    rows, batch = len(ref["vb_steps"]), len(x)
    # every step's two images in one batch: level i + 1 for the code's step i, each with its noise
    xs, eps = jnp.tile(x, (rows, 1, 1, 1)), jnp.asarray(ref["vb_noise"].reshape(rows * batch, *x.shape[1:]))
    levels = jnp.repeat(jnp.asarray(ref["vb_steps"] + 1, jnp.float32), batch)
    label = jnp.tile(jnp.asarray(ref["y"][:batch]), rows) if "y" in ref.files else None
    denoise_fn = model.spec.bind(model.ema_params, label)
    for clip in (True, False):
        tag = "clipped" if clip else "unclipped"
        theirs = ref[f"vb_terms_{tag}"]
        ours = np.asarray(_level_term(denoise_fn, model.schedule, xs, eps, levels, T, "learned", clip, cdf))
        ours = ours.reshape(rows, batch)
        # Row by row, so that the small late KLs are not lost beside the decoder's NLL: to 1e-4 relative, or
        # 1e-7 bits/dim where a KL that small is float32's cancellation in it (both codes compute in float32).
        # The decoder's bins far from x-hat have probabilities of a few float32 steps of 1 - tanh: there the
        # code's own rounding is the tolerance (a pixel the code gives log p = -17.3 is floored at 1e-12 by
        # XLA's tanh, which reaches -1 a step earlier than PyTorch's).
        slack = _rounding_of_the_codes_cdf(ref[f"vb_decoder_pixels_{tag}"])
        assert np.all(slack < 5e-3 * theirs[0]), slack  # the rounding is a small part of the decoder term
        for row, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            tol = 1e-4 * np.abs(b) + 1e-7 + (slack if row == 0 else 0.0)
            assert np.all(np.abs(a - b) <= tol), (name, clip, row, a, b, tol)
        if name == "guided":
            # The exact CDF is another protocol: its decoder term differs by more than the code's rounding (on
            # improved's clipped random network so many bins sit in the tails that the rounding hides it).
            exact = _level_term(denoise_fn, model.schedule, xs, eps, levels, T, "learned", clip, "exact")
            exact = np.asarray(exact).reshape(rows, batch)[0]
            assert np.all(np.abs(exact - theirs[0]) > 1e-4 * theirs[0] + slack), (exact, theirs[0], slack)
    prior = vlb.prior_bpd(x, model.schedule.logsnr(jnp.ones((batch,), jnp.float32)))
    assert np.all(np.abs(np.asarray(prior) - ref["vb_prior"]) <= 1e-4 * ref["vb_prior"] + 1e-7)


def test_an_openai_class_model_has_no_null_class_and_wrong_flags_name_the_tensor(openai_model, tmp_path):
    name, model, ref = openai_model
    if name == "improved":  # class-conditional without label dropout: classifier-free guidance is refused
        with pytest.raises(ValueError, match="never saw the null class"):
            model.sample(2, num_steps=2, guidance=2.0, labels=np.array([1, 2]))
        # It edits unguided (InfEdit's DDCM with both branches at w = 0): a class into itself is the image
        # exactly, into another class it moves; the default target weight w = 1 is refused in one sentence.
        x0, e = ref["vb_x"], model.config.edit
        assert (e.guidance, e.source_guidance) == (0.0, 0.0)  # the edit mode's weights: unguided
        edited = model.edit(x0, [3, 999], [3, 0], num_steps=2, guidance=e.guidance, source_guidance=e.source_guidance)
        assert float(np.abs(edited[0] - x0[0]).max()) < 1e-5
        assert float(np.abs(edited[1] - x0[1]).max()) > 1e-2
        with pytest.raises(ValueError, match="never saw the null class"):
            model.edit(x0, [3, 999], [3, 0], num_steps=2)
    flags = _openai_flags(name).replace("--num_res_blocks 1", "--num_res_blocks 2")
    with pytest.raises(InputError, match="has no tensor 'input_blocks[.]"):
        importer.prepare(os.path.join(OPENAI, f"{name}.pt"), source_flags=flags)
    flags = _openai_flags(name).replace("--num_channels 32", "--num_channels 64")
    with pytest.raises(InputError, match="has shape"):
        importer.prepare(os.path.join(OPENAI, f"{name}.pt"), source_flags=flags)
    with pytest.raises(InputError, match="needs --image_size"):
        importer.prepare(os.path.join(OPENAI, f"{name}.pt"), source_flags="--num_channels 32")
    # ddim30 of T steps: the code strides by the first c giving 30 steps, which is not pdist's T // 30
    with pytest.raises(InputError, match="strides its"):
        importer.prepare(
            os.path.join(OPENAI, f"{name}.pt"), source_flags=_openai_flags(name) + " --timestep_respacing ddim30"
        )
    with pytest.raises(InputError, match="not a flag of"):
        importer.prepare(os.path.join(OPENAI, f"{name}.pt"), source_flags=_openai_flags(name) + " --num_chanels 3")


def test_each_released_openai_model_is_its_readmes_network_with_its_parameter_count():
    """pdist's presets against the READMEs of both codes: the same flags, and the network pdist builds from them
    has as many parameters as the one the code builds (provenance.json, counted by the code itself) but for
    the null class's row."""
    from pdist.spec import ModelSpec

    released = json.loads(open(os.path.join(OPENAI, "provenance.json")).read())["released"]
    run_flags = set(openai.RUN_FLAGS)
    checked = []
    for name, (flags, _) in openai.PRESETS.items():
        readme = released.get(name) or released["lsun_bedroom"]  # cat and horse: "should work as well"
        code, mine = openai.parse_flags(flags)
        theirs = openai.parse_flags(readme["flags"])[1]
        assert {k: v for k, v in mine.items() if k not in run_flags} == theirs, name
        config = openai.to_pdist_config(code, mine)
        count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(ModelSpec.of(config).param_shapes()))
        null_row = config.model.ch * 4 if config.model.class_conditional else 0
        assert count - null_row == readme["parameters"], (name, count, readme["parameters"])
        checked.append(name)
    assert len(checked) == 15
    # the README models pdist's UNet cannot be: the 512x512 one (first multiplier 0.5) and the upsamplers
    with pytest.raises(InputError, match="first or fractional multiplier"):
        openai.to_pdist_config(*openai.parse_flags(released["512x512_diffusion"]["flags"]))


@pytest.mark.parametrize("ours, theirs", [("cifar10", "cifar_base"), ("imagenet64", "imagenet64_base")])
def test_pdists_paper_configs_are_the_releases_networks_and_diffusions(ours, theirs):
    """configs/cifar10.py and configs/imagenet64.py describe the release's network, diffusion and optimizer."""
    from pdist.config import from_file
    from pdist.interop import pd_release

    mine = from_file(os.path.join(os.path.dirname(__file__), "..", "configs", f"{ours}.py"))
    release = pd_release.to_pdist_config(pd_release.release_config(theirs))
    for section, keys in (("model", None), ("diffusion", None), ("data", ("image_size", "channels", "num_classes")),
                          ("optim", ("learning_rate", "warmup_steps", "weight_decay", "grad_clip"))):  # fmt: skip
        a, b = mine[section].to_dict(), release[section].to_dict()
        for key in keys or sorted(set(a) | set(b)):
            if key == "head_dim" and a.get("num_heads"):  # a fixed number of heads: the width is not read
                continue
            u, v = a.get(key), b.get(key)
            if key == "attn_resolutions":  # a set of resolutions
                u, v = sorted(u), sorted(v)
            if key == "emb_ch":  # None: 4 ch
                u, v = (x or 4 * mine.model.ch for x in (u, v))
            assert u == v, (ours, section, key, u, v)
    assert (mine.train.batch_size, mine.train.ema_decay) == (release.train.batch_size, release.train.ema_decay)


def _distill_one_round(teacher: str, students: str, tfds_dir: str):
    """README's distill command from an imported ``teacher``, one round of 2 -> 1 steps at a tiny size, in this
    process: (exit status, message, flags)."""
    from helpers import run_in_process

    args = [f"--workdir={students}", f"--config.distill.teacher={teacher}", f"--config.data.data_dir={tfds_dir}",
            "--config.distill.start_steps=2", "--config.distill.updates_per_round=2",
            "--config.distill.updates_last_rounds=2", "--config.train.batch_size=4", "--config.train.log_every=1",
            "--config.distill.fidelity_samples=4", "--config.distill.grid_samples=2"]  # fmt: skip
    return run_in_process(*args, config="configs/digits_distill.py")


@pytest.mark.heavy(3)
def test_an_imported_teacher_distills_a_round_from_the_command_line(tmp_path, tfds_dir):
    """The README's command on the official PD fixture: the students take its 32x32x3 class-conditional network
    (the digits, resized to 32x32x3, stand in for CIFAR-10); one round, 2 -> 1 steps, its student loads."""
    from helpers import run_in_process

    teacher, students = str(tmp_path / "teacher"), str(tmp_path / "students")
    importer.import_checkpoint(CKPT, teacher, source_config=CONFIG)
    status, message, _ = _distill_one_round(teacher, students, tfds_dir)
    assert status == 0, message
    student = pdist.load(students)
    assert (student.step, student.metadata["sampling_steps"]) == (2, 1)
    assert student.config.model.to_dict() == {**pdist.load(teacher).config.model.to_dict(), "dropout": 0.0}
    assert student.sample(2, labels=np.array([1, 2])).shape == (2, 32, 32, 3)
    # The imported workdir's own config (configs/workdir.py) continues its training; its evaluation (CIFAR-10's: the
    # FID Inception) asks for the Inception weights in one sentence, before anything compiles.
    config, more = (
        f"configs/workdir.py:{teacher}",
        [f"--config.data.data_dir={tfds_dir}", "--config.train.batch_size=2"],
    )
    status, message, _ = run_in_process(f"--workdir={teacher}", "--config.mode=eval", *more, config=config)
    assert status == 2 and "config.eval.inception_weights is not set" in message, message
    steps = [
        "--config.data.name=digits",
        "--config.train.num_steps=1235",
        "--config.train.sample_every=0",
        "--config.sample.num_samples=2",
        "--config.train.num_grid_samples=2",  # the grid and the samples: one program
    ]
    status, message, _ = run_in_process(f"--workdir={teacher}", *more, *steps, "--config.sample.num_steps=2",
                                        config=config)  # fmt: skip
    assert status == 0, message
    assert pdist.load(teacher).step == 1235 and pdist.load(teacher).metadata["source"]["step"] == 1234


def test_refusals_are_one_sentence_with_status_2_and_write_nothing(tmp_path, capsys):
    from pdist.interop.__main__ import main as interop_main

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not a checkpoint" * 100)
    wrong = tmp_path / "wrong.py"
    wrong.write_text(open(CONFIG).read().replace("ch=32,", "ch=64,"))
    cases = [
        ([str(junk), "w1", f"--source_config={CONFIG}"], "of no format pdist imports"),
        ([CKPT, "w2"], "needs --source_config"),
        ([CKPT, "w3", f"--source_config={wrong}"], "has shape"),
        ([CKPT, "w4", f"--source_config={CONFIG}", "--config.model.nope=1"], "nope"),
        ([os.path.join(OPENAI, "guided.pt"), "w5", "--source_flags=--num_channels 32"], "needs --image_size"),
    ]
    for i, (args, said) in enumerate(cases):
        args = [args[0], str(tmp_path / args[1]), *args[2:]]
        if i == 0:  # from the shell: the process's own exit status and output
            out = subprocess.run([sys.executable, "-m", "pdist.interop", "import", *args], cwd=tmp_path,
                                 capture_output=True, text=True)  # fmt: skip
            status, err = out.returncode, out.stderr
        else:  # the same main in this process (an interpreter and its imports saved each)
            capsys.readouterr()
            status, err = interop_main(["import", *args]), capsys.readouterr().err
        assert status == 2, err
        assert said in err and err.count("\n") == 1, err
        assert not os.path.exists(args[1])


def test_students_of_an_imported_teacher_take_its_network_and_a_conflicting_override_is_one_sentence(tmp_path):
    from pdist import config as config_lib
    from pdist.errors import ConfigError
    from pdist.jobs import distill
    from pdist.pretrained import stored

    workdir = str(tmp_path / "teacher")
    importer.import_checkpoint(CKPT, workdir, source_config=CONFIG)
    config = config_lib.from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "digits_distill.py"))
    config.distill.teacher = workdir
    with pytest.raises(distill.TeacherMismatchError):  # the digits network is not the teacher's
        distill.check_teacher(config, stored(workdir)[0], workdir)
    assert distill.adopt_imported_teacher(config)
    assert (config.model.logsnr_input, config.model.emb_ch, config.data.image_size) == ("inv_cos", 64, 32)
    distill.check_teacher(config, stored(workdir)[0], workdir)  # now the teacher's network: no error
    config.model.ch = 8
    with pytest.raises(ConfigError, match=r"--config.model.ch=8 disagrees with the imported teacher"):
        distill.adopt_imported_teacher(config, given=frozenset({"model.ch"}))
    legacy = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_teacher")
    config.distill.teacher = legacy
    assert not distill.adopt_imported_teacher(config)  # a pdist teacher: the config's own network, checked


DIFFUSERS = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers")


@pytest.fixture(scope="module", params=["ho", "scale_shift"])
def diffusers_model(request, tmp_path_factory):
    name = request.param
    workdir = str(tmp_path_factory.mktemp(f"diffusers_{name}") / "w")
    importer.import_checkpoint(os.path.join(DIFFUSERS, name), workdir)
    return name, pdist.load(workdir), np.load(os.path.join(DIFFUSERS, f"{name}.npz"))


def test_diffusers_unets_equal_diffusers_and_each_convention_matters(diffusers_model):
    """A pipeline folder in Ho's layout (additive conditioning, sines first with frequency shift 1, padding
    (0, 1, 0, 1), epsilon 1e-6, one head; linear betas, eps) and in the scale-shift one (cosines first, padding
    1, epsilon 1e-5, heads of 16 channels, no norm before the middle attention; squaredcos_cap_v2, v): the
    network's output at diffusers' time steps t = level - 1, then each convention flipped alone."""
    name, model, ref = diffusers_model
    spec, T, m = model.spec, model.spec.schedule.num_timesteps, model.config.model
    source = model.metadata["source"]
    assert source["format"] == "diffusers" and source["scheduler"]["_class_name"] == "DDPMScheduler"
    made = json.loads(open(os.path.join(DIFFUSERS, "provenance.json")).read())["models"][name]
    assert sum(a.size for a in jax.tree.leaves(model.ema_params)) == made["parameters"]
    d = model.config.diffusion
    assert (d.schedule, d.parameterization, T) == (("linear", "eps") if name == "ho" else ("cosine", "v")) + (1000,)
    assert model.config.sample.clip_x and m.scale_shift == (name == "scale_shift")
    z, level = jnp.asarray(ref["x"]), jnp.asarray(ref["timesteps"] + 1, jnp.float32)
    assert _rel(np.asarray(_spec_out(spec, model.ema_params, z, level / T, None)), ref["out"]) < 1e-5
    flipped = {
        "sin_first": not m.sin_first,
        "freq_shift": 1.0 - m.freq_shift,
        "norm_eps": 1e-5 if m.norm_eps == 1e-6 else 1e-6,
        "downsample_padding": "symmetric" if m.downsample_padding == "same" else "same",
    }
    small = jnp.asarray(ref["x_small"])  # 0.1 x: the first norms see a variance where epsilon shows
    assert _rel(np.asarray(_spec_out(spec, model.ema_params, small, level / T, None)), ref["out_small"]) < 1e-5
    for key, value in flipped.items():
        other = dataclasses.replace(spec, network=spec.network.clone(**{key: value}))
        flip = np.asarray(_spec_out(other, model.ema_params, small, level / T, None))
        assert _rel(flip, ref["out_small"]) > 1e-4, key
    # level i given as diffusers' time step i (not i - 1)
    assert _rel(np.asarray(_spec_out(spec, model.ema_params, z, (level - 1) / T, None)), ref["out"]) > 1e-4


def test_ddim_on_an_imported_pipeline_equals_diffusers_ddim_scheduler(diffusers_model):
    """DDIMScheduler (eta 0, its default "leading" spacing, which is pdist's ddim_stride grid; set_alpha_to_one:
    the last step returns x-hat) from the same noise, 10 steps: without clipping, and with diffusers' clip_sample,
    which clips x-hat but steps with the network's eps-hat (the imported config's sample.clip_keeps_eps); pdist's
    own clipping (eps-hat recomputed from the clipped x-hat) is another sampler."""
    name, model, ref = diffusers_model
    schedule, s = model.spec.schedule, model.config.sample
    grid = schedules.time_grid(schedule, 10, "ddim_stride")
    np.testing.assert_array_equal(np.round(grid[:-1] * schedule.num_timesteps) - 1, ref["ddim_timesteps"])
    noise = jnp.asarray(ref["ddim_noise"])

    def ddim(clip_x, keep_eps):
        return np.asarray(samplers.sample(model.denoiser(), schedule, noise, method="ddim", num_steps=10,
                                          grid="ddim_stride", clip_x=clip_x, clip_keeps_eps=keep_eps))  # fmt: skip

    assert _rel(ddim(False, False), ref["ddim_unclipped"]) < 1e-5
    assert s.clip_x and s.clip_keeps_eps  # the scheduler config's clip_sample, as diffusers clips
    assert model.config.eval.clip_x and model.config.eval.clip_keeps_eps  # the eval mode's samplers too
    # eps-hat on Ho's linear schedule: x-hat = (z - sigma eps-hat) / alpha divides the network's float error by
    # alpha = 0.02 at t = 900, and the clipped trajectory carries it (1.1e-3; 2.3e-6 for the v model)
    assert _rel(ddim(True, True), ref["ddim_clipped"]) < (2e-3 if name == "ho" else 1e-5)
    assert _rel(ddim(True, False), ref["ddim_clipped"]) > 0.1


def _diffusers_variances(schedule, ref) -> tuple[np.ndarray, np.ndarray]:
    """DDPMScheduler's posterior variances at the fixture's steps in float64 from the schedule's betas (linear, or
    squaredcos_cap_v2 capped at 0.999: the fixture's scheduler config), and how far float32 rounding of
    1 - alphas_cumprod, which diffusers computes them from, can move them (relative)."""
    abar = np.concatenate([[1.0], np.cumprod(1 - schedule.betas_np())])  # abar[level]
    levels = ref["ddpm_timesteps"] + 1
    prev = np.concatenate([levels[1:], [0]])
    variance = (1 - abar[prev]) / (1 - abar[levels]) * (1 - abar[levels] / abar[prev])
    rounding = 4 * 2.0**-24 / np.maximum(1 - abar[prev], 1e-30)
    return variance, rounding


def test_pdist_samplers_equal_diffusers_schedulers_on_an_imported_pipeline(diffusers_model):
    """From the same noise, 10 steps unless said: pdist's grid kinds are diffusers' spacings (the time steps each
    scheduler called the network at); DDIM equals DDIMScheduler (eta 0) with ``trailing`` and with ``leading``
    plus ``steps_offset=1``; DPM-Solver++ 2M with ``lower_order_final="final"`` equals DPMSolverMultistepScheduler
    (dpmsolver++, order 2, its final sigma zero) at 10 and 20 steps and on ``trailing``; PLMS with the improved-Euler
    warm-up and eps-hat blends equals PNDMScheduler with skip_prk_steps on the eps model (it ends on level 1, its
    set_alpha_to_one=False); ancestral DDPM's means and variances equal DDPMScheduler's. Each convention flipped
    alone breaks parity."""
    from pdist.samplers import pndm
    from pdist.samplers.core import Predictor

    name, model, ref = diffusers_model
    schedule, T, den = model.spec.schedule, model.spec.schedule.num_timesteps, model.denoiser()
    noise = jnp.asarray(ref["sampler_noise"])

    def run(key, method, num_steps, grid, **options):
        times = schedules.time_grid(schedule, num_steps, grid)
        np.testing.assert_array_equal(np.round(times[:-1] * T).astype(int) - 1, ref[f"{key}_timesteps"])
        return _rel(np.asarray(samplers.sample(den, schedule, noise, method=method, num_steps=num_steps, grid=grid,
                                               **options)), ref[key])  # fmt: skip

    assert run("ddim_trailing", "ddim", 10, "trailing") < 1e-5
    assert run("ddim_leading_offset", "ddim", 10, "leading+1") < 1e-5
    # DDIMScheduler's linspace steps from t to t - T // N, not to its next time step: no grid's sampler
    assert run("ddim_linspace", "ddim", 10, "linspace") > 1e-2
    final = dict(lower_order_final="final")
    assert run("dpmpp_2m", "dpmpp_2m", 10, "linspace_dpm", **final) < 1e-5
    assert run("dpmpp_2m_20", "dpmpp_2m", 20, "linspace_dpm", **final) < 1e-5
    assert run("dpmpp_2m_trailing", "dpmpp_2m", 10, "trailing", **final) < 1e-5
    # pdist's default also lowers the step before x-hat (on Ho's linear schedule its last steps sit at high SNR,
    # where the order barely shows: 1.5e-5)
    assert run("dpmpp_2m", "dpmpp_2m", 10, "linspace_dpm", lower_order_final="always") > (
        1e-5 if name == "ho" else 1e-3
    )
    with pytest.raises(AssertionError):  # the N + 1 spacing is DPM-Solver's own
        run("dpmpp_2m", "dpmpp_2m", 10, "linspace")

    times = schedules.time_grid(schedule, 10, "leading")
    np.testing.assert_array_equal(np.round(times[:-1] * T).astype(int) - 1, np.unique(ref["plms_timesteps"])[::-1])

    @functools.partial(jax.jit, static_argnums=1)
    def plms_to_level_1(noise, blend):  # PNDMScheduler returns z on level 1: pdist's grid without its x-hat
        ev = Predictor(den, schedule, False)
        return pndm.plms(ev, jnp.asarray(times[:-1], jnp.float32), noise, None, warmup="improved_euler", blend=blend)

    if name == "ho":
        assert _rel(np.asarray(plms_to_level_1(noise, "eps")), ref["plms"]) < 1e-5
        assert _rel(np.asarray(plms_to_level_1(noise, "auto")), ref["plms"]) > 1e-3
    else:  # PNDMScheduler blends a v model's raw outputs and converts the blend with the current sample
        assert _rel(np.asarray(plms_to_level_1(noise, "eps")), ref["plms"]) > 1e-2

    z = jnp.asarray(ref["ddpm_z"])
    levels = ref["ddpm_timesteps"] + 1
    prev = np.concatenate([levels[1:], [0]])

    @jax.jit
    def mean_and_variance(z, t, s):
        pred = den(z, t)
        tr = diffusion.transition(schedule.logsnr(s), schedule.logsnr(t))
        return diffusion.posterior_mean(tr, pred.x, z), jnp.exp(diffusion.log_variance("small", tr, None)), pred.x

    variance, rounding = _diffusers_variances(schedule, ref)
    for i, (t, s) in enumerate(zip(levels, prev, strict=True)):
        at = [jnp.full((len(z),), level / T, jnp.float32) for level in (t, s)]
        mean, var, x = mean_and_variance(z, *at)
        if s == 0:  # the last step returns x-hat, without noise
            assert _rel(np.asarray(x), ref["ddpm_means"][i]) < 1e-5
            continue
        assert _rel(np.asarray(mean), ref["ddpm_means"][i]) < 1e-5, i
        v = float(np.asarray(var)[0])
        assert abs(v / variance[i] - 1) < 1e-5, (i, v, variance[i])
        assert abs(ref["ddpm_variances"][i] / variance[i] - 1) < 1e-6 + rounding[i], (i, ref["ddpm_variances"][i])


def test_an_exported_pipeline_reimports_to_the_same_model_and_sampler(diffusers_model, tmp_path):
    """``python -m pdist.interop export``: the imported pipeline's network goes back to diffusers' layout tensor
    for tensor (the fixture's own weights, bit for bit in float32), and the folder imports again to the same
    parameters, network options, schedule and time grid; an existing folder is one sentence."""
    import safetensors.numpy

    from pdist.interop import __main__ as cli

    name, model, _ = diffusers_model
    folder = str(tmp_path / "exported")
    assert cli.main(["export", model.directory, folder]) == 0
    theirs = safetensors.numpy.load_file(os.path.join(DIFFUSERS, name, "unet", "diffusion_pytorch_model.safetensors"))
    ours = safetensors.numpy.load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value.astype(np.float32), err_msg=key)
    scheduler = json.loads(open(os.path.join(folder, "scheduler", "scheduler_config.json")).read())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["clip_sample"]
    again = str(tmp_path / "again")
    importer.import_checkpoint(folder, again)
    back = pdist.load(again)
    _same_tree(back.ema_params, model.ema_params)
    keys = ("schedule", "num_timesteps", "parameterization", "learned_variance")
    assert all(back.config.diffusion[k] == model.config.diffusion[k] for k in keys)
    assert back.config.model.to_dict() == model.config.model.to_dict()
    assert back.config.sample.grid == "leading"  # the 1000 steps' grid, DDIMScheduler's spacing
    status = cli.main(["export", model.directory, folder])
    assert status == 2 and sorted(os.listdir(folder)) == sorted(os.listdir(str(tmp_path / "exported")))


def _same_tree(a, b) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _native_workdir(path: str, class_conditional: bool = False) -> str:
    """A pdist workdir of a continuous-time model (the digits config's cosine logSNR, pdist's noise embedding,
    scale-shift with a normed middle attention), random weights: a 4-step student of it, as PD writes one."""
    from helpers import config_file, perturb

    from pdist import build
    from pdist.runtime.checkpoint import save_once
    from pdist.spec import ModelSpec

    config = config_file("digits")
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), head_dim=32,
                        class_conditional=class_conditional)  # fmt: skip
    config.sample.num_steps, config.sample.grid = 4, "uniform"
    spec = ModelSpec.of(config)
    init_fn, _ = build.state_init(config, spec)
    state = jax.jit(init_fn)()
    params = perturb(state.params, jax.random.key(3), 0.05)
    state = state.replace(params=params, ema_params=params)
    save_once(os.path.join(path, "checkpoints"), 0, state, {"config": json.loads(config.to_json()), "step": 0,
                                                             "sampling_steps": 4})  # fmt: skip
    return path


def test_an_exported_continuous_time_student_samples_by_its_readme_loop(tmp_path):
    """A continuous-time student has no diffusers scheduler: the folder's pdist_sampling.json and sample_pdist.py
    give the UNet's float time step, alpha and sigma at each of its 4 times. That loop, run here in JAX on the
    exported tensors read back through diffusers' layout by a network that takes diffusers' time step, equals
    the student's own sample from the same noise; and what the export refuses is one sentence, nothing
    written."""
    from pdist.interop import diffusers, exporter

    student = pdist.load(_native_workdir(str(tmp_path / "student")))
    wrote = exporter.export(student.directory, str(tmp_path / "folder"))
    assert wrote["scheduler"] is None and not os.path.exists(tmp_path / "folder" / "scheduler")
    unet, how = wrote["unet"], wrote["sampling"]
    assert unet["attn_norm_num_groups"] == 32 and unet["resnet_time_scale_shift"] == "scale_shift"
    assert len(how["timesteps"]) == 4 and how["times"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(str(tmp_path / "folder" / "unet" / "diffusion_pytorch_model.safetensors"))
    params = diffusers.to_pdist_params(tensors, student.config)
    _same_tree(params, jax.device_get(student.ema_params))
    # diffusers' Timesteps(flip_sin_to_cos=True, freq_shift=0) on tau is pdist's network given tau as its step
    network = student.spec.network.clone(logsnr_input="timestep", sin_first=not unet["flip_sin_to_cos"],
                                         freq_shift=unet["freq_shift"])  # fmt: skip
    apply = jax.jit(lambda z, tau: network.apply({"params": params}, z, jnp.full((3,), tau, jnp.float32)))
    noise = jax.random.normal(jax.random.key(5), (3, 8, 8, 1))
    z = noise
    for i, tau in enumerate(how["timesteps"]):
        out = apply(z, tau)
        a, s, a2, s2 = how["alpha"][i], how["sigma"][i], how["alpha"][i + 1], how["sigma"][i + 1]
        x = {"eps": lambda: (z - s * out) / a, "x": lambda: out, "v": lambda: a * z - s * out}[
            how["parameterization"]
        ]()
        eps = (z - a * x) / s
        if how["clip_x"]:
            x = jnp.clip(x, -1.0, 1.0)
            eps = eps if how["clip_keeps_eps"] else (z - a * x) / s
        z = a2 * x + s2 * eps
    own = samplers.sample(student.denoiser(), student.schedule, noise, method="ddim", num_steps=4, grid="uniform",
                          clip_x=how["clip_x"])  # fmt: skip
    assert _rel(np.asarray(z), np.asarray(own)) < 1e-5
    # DDIMScheduler gives the UNet its integer time step: a scheduler only for a network that takes one (and whose
    # output is the prediction alone)
    discrete = ml_collections.ConfigDict(student.config.to_dict())
    discrete.diffusion.update(schedule="linear", num_timesteps=1000)
    linear = schedules.LinearBetas(1000)
    assert exporter._ddim_scheduler(discrete, linear, 4, "uniform") is None  # pdist's noise-level input
    discrete.model.logsnr_input = "timestep"
    assert exporter._ddim_scheduler(discrete, linear, 4, "uniform")["timestep_spacing"] == "trailing"
    discrete.diffusion.learned_variance = True
    assert exporter._ddim_scheduler(discrete, linear, 4, "uniform") is None
    # a class-conditional network: its label embedding with pdist's null row is num_class_embeds, tensor for tensor
    from pdist.spec import ModelSpec

    config = ml_collections.ConfigDict(student.config.to_dict())
    config.model.class_conditional = True
    shapes = ModelSpec.of(config).param_shapes()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), shapes)
    tensors = diffusers.to_diffusers_tensors(params, config)
    assert (
        tensors["class_embedding.weight"].shape == (11, 128) and exporter.unet_config(config)["num_class_embeds"] == 11
    )
    _same_tree(diffusers.to_pdist_params(tensors, config), params)
    # what diffusers' UNet2DModel cannot hold (export checks it before it writes anything)
    for key, value, said in (("guidance_input", True, "guidance weight"), ("ch", 16, "model.ch=16"),
                             ("resblock_updown", True, "residual blocks"), ("num_heads", 3, "3 attention heads")):  # fmt: skip
        config = ml_collections.ConfigDict(student.config.to_dict())
        config.model[key] = value
        with pytest.raises(InputError, match=re.escape(said)):
            exporter.unet_config(config)


@pytest.mark.skipif(not os.environ.get("PDIST_TORCH_PYTHON"), reason="PDIST_TORCH_PYTHON names no Python with torch")
def test_an_exported_folder_runs_in_diffusers_itself(diffusers_model, tmp_path):
    """Optional (never in CI's default run): with PDIST_TORCH_PYTHON a Python that has torch and diffusers, the
    exported folder loads with ``UNet2DModel.from_pretrained`` there (tests/scripts/diffusers_side.py, a
    subprocess: this process never imports PyTorch), its output equals pdist's network's, its
    ``sample_pdist.py`` equals pdist's DDIM and its ``DDIMScheduler`` pdist's DDIM with diffusers' clipping."""
    from helpers import SCRIPTS

    from pdist.interop import exporter

    name, model, ref = diffusers_model
    workdir = str(tmp_path / "ten_steps")
    importer.import_checkpoint(os.path.join(DIFFUSERS, name), workdir, overrides=[("sample.num_steps", "10")])
    folder = str(tmp_path / "folder")
    how = exporter.export(workdir, folder)["sampling"]
    z, tau, noise = ref["x"], ref["timesteps"].astype(np.float32), ref["sampler_noise"]
    inputs, out = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    np.savez(inputs, z=np.moveaxis(z, -1, 1).copy(), tau=tau, noise=np.moveaxis(noise, -1, 1).copy())
    subprocess.run([os.environ["PDIST_TORCH_PYTHON"], os.path.join(SCRIPTS, "diffusers_side.py"), folder, inputs, out],
                   check=True)  # fmt: skip
    theirs = {k: np.moveaxis(v, 1, -1) for k, v in np.load(out).items()}
    level = jnp.asarray(ref["timesteps"] + 1, jnp.float32) / model.spec.schedule.num_timesteps
    assert _rel(theirs["out"], np.asarray(model.spec.apply(model.ema_params, jnp.asarray(z), level, None, None))) < 1e-5

    def ddim(keep):
        return np.asarray(samplers.sample(model.denoiser(), model.schedule, jnp.asarray(noise), method="ddim",
                                          num_steps=10, grid=how["grid"], clip_x=how["clip_x"], clip_keeps_eps=keep))  # fmt: skip

    tol = 2e-3 if name == "ho" else 1e-5  # the eps model's x-hat divides float error by alpha = 0.02
    assert _rel(theirs["loop"], ddim(how["clip_keeps_eps"])) < tol
    assert _rel(theirs["scheduler"], ddim(True)) < tol


def _diffusers_copy(tmp_path, edit_unet=None, edit_scheduler=None, name="ho"):
    folder = tmp_path / f"edited_{name}"
    shutil.copytree(os.path.join(DIFFUSERS, name), folder, dirs_exist_ok=True)
    for path, edit in (
        (folder / "unet" / "config.json", edit_unet),
        (folder / "scheduler" / "scheduler_config.json", edit_scheduler),
    ):
        if edit:
            cfg = json.loads(path.read_text())
            edit(cfg)
            path.write_text(json.dumps(cfg))
    return str(folder)


def test_a_diffusers_folder_pdist_cannot_represent_is_one_sentence_naming_the_field(tmp_path):
    cases = [
        (dict(edit_unet=lambda c: c.update(class_embed_type="timestep")), "class_embed_type='timestep'"),
        (dict(edit_unet=lambda c: c.update(up_block_types=["UpBlock2D", "AttnUpBlock2D"])), "same levels in both"),
        (dict(edit_unet=lambda c: c.update(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"])), "CrossAttn"),
        (dict(edit_unet=lambda c: c.update(block_out_channels=[32, 48])), "block_out_channels=[32, 48]"),
        (dict(edit_scheduler=lambda c: c.update(beta_schedule="scaled_linear")), "beta_schedule='scaled_linear'"),
        (dict(edit_scheduler=lambda c: c.update(beta_start=0.00085)), "beta_start=0.00085"),
        (dict(edit_scheduler=lambda c: c.update(variance_type="fixed_large")), "variance_type='fixed_large'"),
        (dict(edit_unet=lambda c: c.update(layers_per_block=2)), "have no tensor 'down_blocks.0.resnets.1."),
        (dict(edit_scheduler=lambda c: c.update(timestep_spacing="karras")), "timestep_spacing='karras'"),
        (dict(edit_scheduler=lambda c: c.update(timestep_spacing="trailing", steps_offset=1)), "without offset"),
        (
            dict(edit_scheduler=lambda c: c.update(_class_name="DDIMScheduler", timestep_spacing="linspace")),
            "rather than to its next time step",
        ),
    ]
    for i, (edits, said) in enumerate(cases):
        folder = _diffusers_copy(tmp_path / str(i), **edits)
        with pytest.raises(InputError, match=re.escape(said)):
            importer.prepare(folder)
    folder = _diffusers_copy(tmp_path / "no_weights")
    os.remove(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    with pytest.raises(InputError, match="pdist reads diffusers' safetensors weights"):
        importer.prepare(folder)
    with pytest.raises(InputError, match="of no format pdist imports"):
        importer.prepare(str(tmp_path))
    bare = _diffusers_copy(tmp_path / "bare")
    with pytest.raises(InputError, match="no scheduler config"):
        importer.prepare(os.path.join(bare, "unet"))
    config, *_ = importer.prepare(
        os.path.join(bare, "unet"), source_config=os.path.join(bare, "scheduler", "scheduler_config.json")
    )
    assert config.diffusion.schedule == "linear"
    # the scheduler's spacing is the sampling grid: DDPMPipeline's every level above the offset, DDIMPipeline's 50
    for edit, expected in (
        (lambda c: c.update(steps_offset=1), ("ddpm", 999, "leading+1")),
        (lambda c: c.update(timestep_spacing="linspace"), ("ddpm", 1000, "linspace")),
        (lambda c: c.update(_class_name="DDIMScheduler", timestep_spacing="trailing"), ("ddim", 50, "trailing")),
    ):
        config, *_ = importer.prepare(_diffusers_copy(tmp_path / expected[2], edit_scheduler=edit))
        assert (config.sample.method, config.sample.num_steps, config.sample.grid) == expected


@pytest.mark.heavy
def test_an_imported_diffusers_teacher_distills_a_round_from_the_command_line(tmp_path, tfds_dir):
    """README's command on the Ho-layout pipeline fixture (the digits, resized to 16x16x3, stand in for its data):
    one round, 2 -> 1 steps, whose student has the teacher's network and samples."""
    teacher, students = str(tmp_path / "teacher"), str(tmp_path / "students")
    importer.import_checkpoint(os.path.join(DIFFUSERS, "ho"), teacher)
    status, message, _ = _distill_one_round(teacher, students, tfds_dir)
    assert status == 0, message
    student = pdist.load(students)
    assert (student.step, student.metadata["sampling_steps"]) == (2, 1)
    assert student.config.model.to_dict() == pdist.load(teacher).config.model.to_dict()
    assert student.config.diffusion.parameterization == "eps" and student.spec.schedule.num_timesteps == 1000
    assert student.sample(2).shape == (2, 16, 16, 3)
    # README's export of the student: its 1-step uniform grid is DDIMScheduler's trailing spacing
    from pdist.interop import exporter

    wrote = exporter.export(students, str(tmp_path / "student_diffusers"))
    assert wrote["scheduler"]["timestep_spacing"] == "trailing" and wrote["sampling"]["timesteps"] == [999.0]
