"""`load()`: one loaded model (heavy, shared) that opens many cheap streams."""

from __future__ import annotations

from pathlib import Path

from edge_stream.errors import ManifestError
from edge_stream.runtime.kvbuffer import KVPool
from edge_stream.runtime.manifest import Manifest, load_manifest
from edge_stream.runtime.runner import ModelRunner, ThreadOptions


class Model:
    """A model directory loaded once; `open_stream()` makes per-stream state.

    Streams share the ONNX Runtime session, so one process serves many streams
    with one copy of the weights.
    """

    def __init__(self, model_dir: str | Path, providers=None, intra_op_threads: int | None = None,
                 manifest: Manifest | None = None, thread_options: ThreadOptions | None = None):
        self.dir = Path(model_dir)
        self.manifest: Manifest = manifest or read_manifest(self.dir)
        self.runner = ModelRunner(self.dir / self.manifest.model_file, self.manifest, providers=providers,
                                  intra_op_threads=intra_op_threads, thread_options=thread_options)
        self.kv_pool = KVPool()  # KV memory recycled across this model's streams (runtime/kvbuffer.py)
        self.tokenizer = None
        if self.manifest.tokenizer:
            from tokenizers import Tokenizer  # text models only

            tok_path = self.dir / self.manifest.tokenizer
            if not tok_path.is_file():
                raise ManifestError(f"{tok_path}: tokenizer file named by the manifest is missing")
            self.tokenizer = Tokenizer.from_file(str(tok_path))

    @property
    def name(self) -> str:
        return self.manifest.name

    def encode(self, text: str):
        """Token ids of `text` (no special tokens added), as int64."""
        import numpy as np

        if self.tokenizer is None:
            raise ManifestError(f"{self.name}: no tokenizer in the model directory; feed token ids instead")
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def open_stream(self, **options):
        """A new stream with its own state. Options override the manifest's defaults:
        LMs take `kv_window`, `sink_tokens`, `max_chunk`, and `prefix=snapshot` to start from a
        shared, already-run prompt (sequence.StreamSession); block models `max_chunk_samples`.
        (VAD event parameters: `edge_stream.load` gives a voice.vad.VadModel for those.)"""
        if self.manifest.blocking is not None:
            from edge_stream.runtime.blocks import BlockStream

            return BlockStream(self, **options)
        from edge_stream.runtime.sequence import StreamSession

        return StreamSession(self, **options)


def read_manifest(model_dir: str | Path) -> Manifest:
    """The manifest of a model directory, with a hint when given a bare .onnx file."""
    path = Path(model_dir)
    if path.is_file() and path.suffix == ".onnx":
        raise ManifestError(
            f"{path}: load() takes a model directory with manifest.json; "
            f"run `edge-stream inspect {path} --write` to derive one")
    return load_manifest(path)


def load(model_dir: str | Path, providers=None, intra_op_threads: int | None = None,
         thread_options: ThreadOptions | None = None) -> Model:
    """Load a model directory (model.onnx + manifest.json [+ tokenizer.json]) as the runtime sees it:
    block models give bare BlockStreams. `edge_stream.load` adds the voice policy for VAD models."""
    return Model(model_dir, providers=providers, intra_op_threads=intra_op_threads, thread_options=thread_options)
