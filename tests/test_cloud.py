"""A gs:// workdir end to end: train (and resume), evaluate, distill, load and sample, against a Cloud Storage server on
127.0.0.1.

Why this stands for gs://. The server (gcp-storage-emulator) speaks Cloud Storage's JSON API over HTTP, and
the real clients talk to it: Orbax's arrays through TensorStore's GCS driver (TENSORSTORE_GCS_HTTP_URL),
every other file (Orbax's metadata, pdist's grids, samples, reports, TensorBoard events) through etils.epath
and gcsfs (STORAGE_EMULATOR_HOST, EPATH_USE_TF=false). It is an object store like the real one: no folders
(only name prefixes), no appends, no renames, an object visible only once its upload completes. What it does
not check is TensorFlow's own GCS client, which epath uses for gs:// when TensorFlow is installed and gcsfs is
not chosen: that client cannot be pointed at a local server. A local filesystem under another name (TF's
``ram://``, fsspec's ``memory://``) could not stand in: TensorStore writes only local files, gs:// and s3://.
"""

import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, main_env
from PIL import Image
from tensorboard.util import tensor_util

from pdist.runtime import events

BUCKET = "pdist"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The environment of a process whose gs:// paths reach a fresh in-memory server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "gcs_server.py"), str(port), BUCKET],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the storage server did not start"
            time.sleep(0.1)
    yield dict(
        main_env(),
        STORAGE_EMULATOR_HOST=url,  # gcsfs (epath's fsspec backend)
        TENSORSTORE_GCS_HTTP_URL=url,  # Orbax's arrays
        GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
        EPATH_USE_TF="false",  # epath through gcsfs, which honours STORAGE_EMULATOR_HOST
    )
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.mark.heavy(2)
def test_a_gs_workdir_trains_resumes_evaluates_distills_loads_and_samples(gcs, tfds_dir, evaluator_cache, tmp_path):
    teacher = f"gs://{BUCKET}/teacher"
    local = tmp_path / "copy"
    ran = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "scripts", "cloud_workflow.py"), BUCKET, str(local), tfds_dir],
        cwd=REPO, env=dict(gcs, PDIST_CACHE=evaluator_cache), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    trained, resumed, evaluated, _ = result["printed"]
    assert f"writing to {teacher}" in trained and f"checkpoint   {teacher}/checkpoints/4" in trained, trained
    assert f"tensorboard --logdir {teacher}" in trained, trained
    assert f"teacher: resuming at step 4 from {teacher}/checkpoints/4" in resumed, resumed
    assert f"report       {teacher}/eval/teacher_step6/eval.md" in evaluated, evaluated
    # pdist.load from the bucket gives the same model as from a local copy of it, and it samples.
    for name, step in (("teacher", 6), ("student", 2)):
        assert result[name]["same_as_copy"] and result[name]["step"] == step, result
        assert result[name]["directory"].startswith(f"gs://{BUCKET}/{name}/") and result[name]["max_abs"] > 0
    # Both runs' TensorBoard events were written to the bucket and read back from it, in order.
    assert result["loss_steps"] == [2, 4, 6] and result["losses_match_copy"], result
    assert result["kept_after_interrupt"] == {"version": 1} and result["replaced"] == {"version": 3}
    assert result["refused"] == {
        f"gs://{BUCKET}-missing/run": f"--workdir=gs://{BUCKET}-missing/run: the bucket gs://{BUCKET}-missing does "
        "not exist or these credentials cannot list it; create it (gcloud storage buckets create) or check its name.",
        f"gs://{BUCKET}/atomic.json": f"--workdir=gs://{BUCKET}/atomic.json is a file; pass a folder (it is created "
        "if missing).",
        "s3://bucket/run": "--workdir=s3://bucket/run is on a filesystem pdist cannot write (s3://); pass a local "
        "folder or a gs:// URI.",
    }
    # Everything a local workdir would hold is there, and nothing half-written (no temporary files).
    written = {os.path.relpath(os.path.join(d, f), local) for d, _, names in os.walk(local) for f in names}
    for expected in ("teacher/checkpoints/6/metadata/metadata", "teacher/grids/step_00000004.png",
                     "teacher/eval/teacher_step6/eval.json", "teacher/eval/teacher_step6/eval.png",
                     "teacher/samples.npz", "teacher/samples.png", "student/teacher_4steps.npz",
                     "student/round_01_2steps/round.json", "student/round_01_2steps/samples.npz",
                     "student/summary.json", "student/summary.md", "student/rounds.png"):  # fmt: skip
        assert expected in written, sorted(written)
    assert sorted(os.listdir(local / "teacher" / "checkpoints")) == ["2", "4", "6"]  # the newest three
    assert not [n for n in written if ".tmp" in n], sorted(written)
    assert len([n for n in os.listdir(local / "teacher") if n.startswith("events.out.tfevents")]) == 2
    with np.load(local / "teacher" / "samples.npz") as f:
        assert f["images"].shape == (4, 8, 8, 1)
    assert len(events.scalars(str(local / "student" / "round_01_2steps"), "loss")[0]) == 1


def test_event_files_read_back_by_tensorboard_itself(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = events.EventWriter(str(tmp_path))
    writer.write_hparams({"lr": 0.001, "model": "unet"})
    for step in (10, 20):
        writer.write_scalars(step, {"loss": 1.0 / step, "steps_per_sec": np.float32(3.5)})
    grid = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    writer.write_images(20, {"samples": grid[None]})
    writer.close()
    log = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0})
    log.Reload()
    scalars = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in log.Tensors("loss")]  # as tf.summary
    assert scalars == [(10, np.float32(0.1)), (20, np.float32(0.05))]
    assert log.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    (image,) = log.Images("samples")
    assert (image.step, image.width, image.height) == (20, 13, 9)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))), grid)
    assert "_hparams_/session_start_info" in log.PluginTagToContent("hparams")
    steps, values = events.scalars(str(tmp_path), "loss")
    assert steps.tolist() == [10, 20] and values.tolist() == [np.float32(0.1), np.float32(0.05)]


def test_an_event_file_cut_mid_record_reads_up_to_its_last_whole_record(tmp_path):
    writer = events.EventWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write_scalars(step, {"loss": float(step)})
    writer.close()
    data = open(writer.path, "rb").read()
    with open(writer.path, "wb") as f:
        f.write(data[:-7])  # the last record loses its end, as when a writer is killed mid-write
    assert events.scalars(str(tmp_path), "loss")[0].tolist() == [1, 2, 3, 4]


def test_an_interrupted_local_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from pdist.runtime import files

    target = str(tmp_path / "report.json")
    files.write_json(target, {"version": 1})
    with pytest.raises(KeyboardInterrupt), files.atomic(target, "w") as f:
        f.write('{"version": 2, "half')
        raise KeyboardInterrupt
    assert files.read_json(target) == {"version": 1} and os.listdir(tmp_path) == ["report.json"]
