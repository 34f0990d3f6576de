"""TensorBoard event files written and read through :mod:`pdist.runtime.files`, so a ``gs://`` workdir works.

:func:`writer` is clu's default writer (a log line per write, asynchronous)
with :class:`EventWriter` in place of clu's ``SummaryWriter``: the same event
files (scalars, images, texts, histograms, hparams, tensor summaries, videos as
animated GIFs, audio as WAV; TensorBoard reads them),
built from TensorBoard's own protos and record format, but written through
the one path abstraction pdist uses for every file rather than through
TensorFlow's filesystem layer, which has its own GCS client, reaches no other
object store and cannot be pointed at a test server. A local event file is
appended record by record; on an object store, whose objects cannot be
appended to, the object is rewritten whole at each flush and at least every
:data:`UPLOAD_SECONDS` (TensorFlow's GCS writer does the same, every 120 s),
so TensorBoard sees the run as it goes.

:func:`scalars` reads a tag back (the refined learning-rate schedule reads
the gradient norms of a previous run this way).
"""

from __future__ import annotations

import fnmatch
import io
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers
from clu.metric_writers import interface
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.util import tensor_util

from pdist.runtime import files

PATTERN = "events.out.tfevents.*"  # TensorBoard's event files, one per writer
UPLOAD_SECONDS = 120.0  # the longest an object store's copy of an event file lags behind its writer
_count = itertools.count()


def writer(directory: str, *, just_logging: bool = False) -> metric_writers.MetricWriter:
    """Log lines, and on the writing process an event file in ``directory``; writes return at once."""
    writers = [metric_writers.LoggingWriter()]
    if not just_logging:
        writers.append(EventWriter(directory))
    return metric_writers.AsyncMultiWriter(writers)


class EventWriter(interface.MetricWriter):
    """One new event file in ``directory`` (created on the first write)."""

    def __init__(self, directory: str):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_count)}.v2"
        self.path = os.path.join(directory, name)
        self._remote = files.remote(directory)
        self._lock = threading.RLock()
        self._records: list[bytes] = []  # what the object store holds after the next flush
        self._file = None
        self._dirty, self._uploaded = False, time.time()
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: event_pb2.Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
        with self._lock:
            self._dirty = True
            if self._remote:
                self._records.append(record)
                if time.time() - self._uploaded > UPLOAD_SECONDS:
                    self.flush()
                return
            if self._file is None:
                files.makedirs(os.path.dirname(self.path))
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open for the writer's life
            self._file.write(record)  # one unbuffered write per record: on disk at once

    def _summary(self, step: int, summary: summary_pb2.Summary) -> None:
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for tag, value in scalars.items():
            self._summary(step, scalar_summary.scalar_pb(tag, np.asarray(value)))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        self._pictures(step, images, 3, _png)

    def _pictures(self, step: int, items: Mapping[str, Any], ndim: int, encode) -> None:
        """Each entry (one picture of ``ndim`` dimensions, or a batch of them), as ``encode(uint8) -> bytes``
        image values: ``tag``, or ``tag/i`` in a batch."""
        summary = summary_pb2.Summary()
        for tag, batch in items.items():
            batch = np.asarray(batch)
            batch = batch[None] if batch.ndim == ndim else batch
            for i, picture in enumerate(batch):
                picture = _uint8(picture)
                h, w, c = picture.shape[-3:]
                encoded = summary_pb2.Summary.Image(
                    height=h, width=w, colorspace=c, encoded_image_string=encode(picture)
                )
                summary.value.add(tag=tag if len(batch) == 1 else f"{tag}/{i}", image=encoded)
        self._summary(step, summary)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for tag, text in texts.items():
            self._summary(step, text_summary.text_pb(tag, text))

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None) -> None:
        for tag, values in arrays.items():
            buckets = num_buckets.get(tag) if isinstance(num_buckets, Mapping) else num_buckets
            self._summary(step, histogram_summary.histogram_pb(tag, np.asarray(values), buckets=buckets))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._summary(0, hparams_summary.hparams_pb(dict(hparams)))

    def write_summaries(self, step: int, values: Mapping[str, Any], metadata=None) -> None:
        """Tensor summaries; ``metadata``: a ``SummaryMetadata`` (or its bytes) for every value."""
        if isinstance(metadata, bytes):
            metadata = summary_pb2.SummaryMetadata.FromString(metadata)
        summary = summary_pb2.Summary()
        for tag, value in values.items():
            entry = summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(np.asarray(value)))
            if metadata is not None:
                entry.metadata.CopyFrom(metadata)
        self._summary(step, summary)

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        """Each video [N, T, H, W, C] or [T, H, W, C] (values in [0, 1], or uint8) as an animated GIF image,
        which TensorBoard's image dashboard plays; frames 10 per second."""
        self._pictures(step, videos, 4, _gif)

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        """Each batch of clips [N, T, C] in [-1, 1] as 16-bit WAV, in TensorBoard's audio plugin format (a
        [N, 2] string tensor of encoded clips and labels)."""
        from tensorboard.plugins.audio import metadata as audio_metadata

        summary = summary_pb2.Summary()
        for tag, clips in audios.items():
            encoded = [[_wav(np.asarray(clip, np.float64), int(sample_rate)), b""] for clip in np.asarray(clips)]
            meta = audio_metadata.create_summary_metadata(
                display_name=tag, description="", encoding=audio_metadata.Encoding.Value("WAV")
            )
            tensor = tensor_util.make_tensor_proto(np.array(encoded, dtype=object))
            summary.value.add(tag=tag, metadata=meta, tensor=tensor)
        self._summary(step, summary)

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            if self._remote:
                files.write_bytes(self.path, b"".join(self._records))
                self._uploaded = time.time()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read(path: str) -> list[event_pb2.Event]:
    """The events of one event file, up to its first incomplete or damaged record (a writer may be mid-write)."""
    data, events, at = files.read_bytes(path), [], 0
    while at + 12 <= len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        end = at + 12 + length + 4
        if struct.unpack("<I", data[at + 8 : at + 12])[0] != masked_crc32c(header) or end > len(data):
            break
        events.append(event_pb2.Event.FromString(data[at + 12 : end - 4]))
        at = end
    return events


def _uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] (or already uint8) as uint8."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.asarray(pixels, np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG")
    return out.getvalue()


def _gif(video: np.ndarray) -> bytes:
    from PIL import Image

    frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in video]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _wav(clip: np.ndarray, sample_rate: int) -> bytes:
    """A clip [T, C] in [-1, 1] as a 16-bit PCM WAV file."""
    import wave

    pcm = np.round(np.clip(clip, -1.0, 1.0) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return out.getvalue()


def scalars(directory: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of the scalar ``tag`` in ``directory``'s event files (not its subfolders), one value
    per step: files are read in the order they were started, so a step logged again by a resumed run keeps
    its newest value."""
    logs = [read(os.path.join(directory, name)) for name in files.listdir(directory) if fnmatch.fnmatch(name, PATTERN)]
    by_step = {}
    for events in sorted((e for e in logs if e), key=lambda e: e[0].wall_time):
        for event in events:
            for value in event.summary.value:
                if value.tag == tag:
                    array = tensor_util.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                    by_step[event.step] = float(np.asarray(array))
    steps = np.array(sorted(by_step), np.int64)
    return steps, np.array([by_step[s] for s in steps], np.float64)
