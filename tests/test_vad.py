"""Silero VAD through load/open_stream/feed: same numbers and events as silero's own code,
for any chunking, with rejected chunks leaving the stream untouched."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_stream as es
from edge_stream.errors import ConfigError, InputError, StreamStateError
from edge_stream.runtime.blocks import BlockOutput, BlockStream
from edge_stream.voice.vad import VadEvents, VadStream

BLOCK = 512


@pytest.fixture(scope="session")
def blocked(vad_model, speech):
    """Reference: the speech fed one 512-sample block per feed."""
    return feed_in_chunks(vad_model.open_stream(), speech, [BLOCK] * (len(speech) // BLOCK + 1))


@pytest.fixture(scope="session")
def torch_silero():
    try:
        import torch  # noqa: F401
        from silero_vad.utils_vad import OnnxWrapper, VADIterator
    except Exception as exc:  # torch missing or broken: the comparison cannot run
        print(f"skipping silero comparison: torch/silero_vad import failed: {exc!r}")
        pytest.skip(f"torch/silero_vad import failed: {exc!r}")
    return OnnxWrapper, VADIterator


def feed_in_chunks(stream, audio: np.ndarray, sizes) -> tuple[np.ndarray, list, list]:
    """Feed `audio` in chunks of `sizes` (the rest in max-size chunks): (probs, events, outputs)."""
    outs, pos = [], 0
    for n in sizes:
        if pos >= len(audio):
            break
        outs.append(stream.feed(audio[pos:pos + n]))
        pos += n
    while pos < len(audio):
        outs.append(stream.feed(audio[pos:pos + stream.max_chunk_samples]))
        pos += stream.max_chunk_samples
    probs = np.concatenate([o.probs for o in outs])
    events = [e for o in outs for e in o.events]
    return probs, events, outs


def same_results(a, b) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


# -- export -------------------------------------------------------------------------------------

def test_export_reads_state_shape_and_batch_axis_from_the_graph(vad_model):
    (state,) = vad_model.manifest.states
    assert (state.input, state.output, state.shape, state.batch_axis) == ("state", "stateN", (2, 1, 128), 1)
    assert vad_model.manifest.blocking.block == BLOCK
    assert vad_model.runner.initial_states(3)[0].shape == (2, 3, 128)


# -- against silero's own code -----------------------------------------------------------------

def test_probabilities_match_silero_onnxwrapper(vad_dir, speech, blocked, torch_silero):
    import torch

    OnnxWrapper, _ = torch_silero
    wrapper = OnnxWrapper(str(vad_dir / "model.onnx"), force_onnx_cpu=True)
    n = len(speech) // BLOCK
    theirs = np.array([wrapper(torch.from_numpy(speech[i * BLOCK:(i + 1) * BLOCK]), 16000).item()
                       for i in range(n)], dtype=np.float32)
    ours = blocked[0]
    assert len(ours) == n
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_events_match_silero_vaditerator(vad_dir, speech, blocked, torch_silero):
    import torch

    OnnxWrapper, VADIterator = torch_silero
    iterator = VADIterator(OnnxWrapper(str(vad_dir / "model.onnx"), force_onnx_cpu=True), sampling_rate=16000)
    theirs = []
    for i in range(len(speech) // BLOCK):
        event = iterator(torch.from_numpy(speech[i * BLOCK:(i + 1) * BLOCK]))
        if event:
            theirs.append(event)
    assert blocked[1] == theirs
    assert sum("start" in e for e in theirs) >= 3  # three phrases: the clip really contains speech


class ReplayModel:
    """Stands in for silero's model inside VADIterator: replays given probabilities."""

    def __init__(self, probs):
        self.probs = list(probs)

    def reset_states(self):
        pass

    def __call__(self, x, sr):
        import torch

        return torch.tensor(self.probs.pop(0))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(probs=st.lists(st.floats(0.0, 1.0, width=32), max_size=80),
       threshold=st.sampled_from([0.3, 0.5, 0.62, 0.9]),
       min_silence_ms=st.sampled_from([0, 32, 100, 250]),
       speech_pad_ms=st.sampled_from([0, 30, 64]),
       splits=st.lists(st.integers(0, 80), max_size=4))
def test_vad_events_policy_equals_vaditerator(torch_silero, probs, threshold, min_silence_ms, speech_pad_ms, splits):
    import torch

    _, VADIterator = torch_silero
    iterator = VADIterator(ReplayModel(probs), threshold=threshold, sampling_rate=16000,
                           min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
    theirs = [e for e in (iterator(torch.zeros(BLOCK)) for _ in probs) if e]
    policy = VadEvents(16000, BLOCK, threshold=threshold, min_silence_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
    ours, pos = [], 0
    for cut in sorted(splits) + [len(probs)]:  # the policy gets probabilities in arbitrary groups
        ours += policy.update(np.asarray(probs[pos:max(pos, cut)], dtype=np.float32))
        pos = max(pos, cut)
    assert ours == theirs
    assert policy.triggered == iterator.triggered


# -- chunking ---------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 20000), min_size=1, max_size=25))
def test_any_chunking_gives_the_blocked_probabilities_and_events(vad_model, speech, blocked, sizes):
    stream = vad_model.open_stream()
    probs, events, outs = feed_in_chunks(stream, speech, sizes)
    same_results((probs, events), blocked)
    blocks_before = 0
    for out in outs:  # start_sample is the absolute index of each feed's first block
        assert out.start_sample == blocks_before * BLOCK
        assert out.outputs["output"].shape == (len(out.probs), 1)
        blocks_before += len(out.probs)
    assert stream.samples_fed == len(speech)
    assert stream.pending_samples == len(speech) % BLOCK


def test_short_chunks_buffer_until_a_block_is_complete(vad_model, speech):
    stream = vad_model.open_stream()
    out = stream.feed(speech[:BLOCK - 1])
    assert len(out.probs) == 0 and out.events == [] and stream.pending_samples == BLOCK - 1
    out = stream.feed(speech[BLOCK - 1:BLOCK + 10])
    assert len(out.probs) == 1 and out.start_sample == 0 and stream.pending_samples == 10


def test_row_vector_chunk_equals_flat_chunk(vad_model, speech):
    a = vad_model.open_stream().feed(speech[:5000])
    b = vad_model.open_stream().feed(speech[:5000][None, :])
    np.testing.assert_array_equal(a.probs, b.probs)


# -- boundary validation ----------------------------------------------------------------------

def _nan_chunk(n):
    x = np.zeros(n, np.float32)
    x[n // 2] = np.nan
    return x


def _inf_chunk(n):
    x = np.zeros(n, np.float32)
    x[-1] = -np.inf
    return x


BAD_CHUNKS = {
    "float64": (lambda: np.zeros(1000, np.float64), "float64"),
    "int32": (lambda: np.zeros(1000, np.int32), "expected float32, int16 (PCM) or float16"),
    "two-channels": (lambda: np.zeros((2, 1000), np.float32), "[2, 1000]"),
    "nan": (lambda: _nan_chunk(1000), "nan"),
    "inf": (lambda: _inf_chunk(1000), "inf"),
    "empty": (lambda: np.zeros(0, np.float32), "empty"),
    "oversize": (lambda: np.zeros(160_001, np.float32), "max_chunk_samples=160000"),
    "list": (lambda: [0.0] * 1000, "numpy array"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CHUNKS))
def test_rejected_chunk_raises_input_error_and_leaves_the_stream_unchanged(vad_model, speech, blocked, kind):
    make, words = BAD_CHUNKS[kind]
    stream = vad_model.open_stream()
    first = stream.feed(speech[:3000])  # leaves 440 samples pending
    before = (stream.samples_fed, stream.blocks_run, stream.pending_samples, stream.in_speech)
    with pytest.raises(InputError, match="silero-vad stream") as info:
        stream.feed(make())
    assert words in str(info.value)
    assert (stream.samples_fed, stream.blocks_run, stream.pending_samples, stream.in_speech) == before
    rest = stream.feed(speech[3000:])  # continues as if the bad chunk never came
    same_results((np.concatenate([first.probs, rest.probs]), first.events + rest.events), blocked)
    assert rest.start_sample == first.start_sample + len(first.probs) * BLOCK


def test_int16_pcm_and_float16_samples_equal_their_float32_values(vad_model, speech):
    pcm = np.round(speech[:20_000] * 32767).astype(np.int16)
    as_float = vad_model.open_stream().feed(pcm.astype(np.float32) / 32768)
    out = vad_model.open_stream().feed(pcm)
    np.testing.assert_array_equal(out.probs, as_float.probs)
    assert out.samples.dtype == np.float32 and out.events == as_float.events
    half = speech[:20_000].astype(np.float16)
    np.testing.assert_array_equal(vad_model.open_stream().feed(half).probs,
                                  vad_model.open_stream().feed(half.astype(np.float32)).probs)


def test_a_sample_rate_other_than_the_models_is_refused(vad_model):
    stream = vad_model.open_stream()
    assert len(stream.feed(np.zeros(BLOCK, np.float32), sr=16000).probs) == 1
    with pytest.raises(InputError, match="sr 8000 is not supported; this model takes 16000 Hz"):
        stream.feed(np.zeros(BLOCK, np.float32), sr=8000)
    assert stream.samples_fed == BLOCK


def test_es_load_gives_vad_streams_and_the_runtime_alone_gives_probabilities_only(vad_dir, vad_model):
    from edge_stream.runtime.model import load

    assert isinstance(vad_model.open_stream(), VadStream)
    bare = load(vad_dir, intra_op_threads=1).open_stream()
    assert isinstance(bare, BlockStream) and not hasattr(bare.feed(np.zeros(BLOCK, np.float32)), "events")


def test_max_chunk_is_configurable(vad_model):
    stream = vad_model.open_stream(max_chunk_samples=1024)
    assert len(stream.feed(np.zeros(1024, np.float32)).probs) == 2
    with pytest.raises(InputError, match="1025 samples exceeds max_chunk_samples=1024"):
        stream.feed(np.zeros(1025, np.float32))


def test_unknown_option_is_a_config_error(vad_model):
    with pytest.raises(ConfigError, match="unknown option.*kv_window"):
        vad_model.open_stream(kv_window=64)


def test_block_output_has_no_logits(vad_model):
    out = vad_model.open_stream().feed(np.zeros(BLOCK, np.float32))
    assert isinstance(out, BlockOutput)
    with pytest.raises(AttributeError, match="use|probs"):
        out.logits


# -- events options -----------------------------------------------------------------------------

def test_event_options_override_the_manifest(vad_model, speech, blocked):
    stream = vad_model.open_stream(threshold=0.8, min_silence_ms=300, speech_pad_ms=0)
    probs, events, _ = feed_in_chunks(stream, speech, [])
    expected = VadEvents(16000, BLOCK, threshold=0.8, min_silence_ms=300, speech_pad_ms=0).update(blocked[0])
    assert events == expected
    assert events != blocked[1]  # the overrides really changed something


def test_events_false_gives_probabilities_and_no_events(vad_model, speech, blocked):
    probs, events, _ = feed_in_chunks(vad_model.open_stream(events=False), speech, [])
    np.testing.assert_array_equal(probs, blocked[0])
    assert events == []


def test_bad_threshold_is_a_config_error(vad_model):
    with pytest.raises(ConfigError, match="threshold"):
        vad_model.open_stream(threshold=1.5)


# -- state: reset, snapshot/restore, independence -----------------------------------------------

def test_reset_gives_a_fresh_stream(vad_model, speech, blocked):
    stream = vad_model.open_stream()
    stream.feed(speech[:70_001])  # mid-speech, with samples pending
    stream.reset()
    assert (stream.samples_fed, stream.pending_samples, stream.in_speech) == (0, 0, False)
    probs, events, outs = feed_in_chunks(stream, speech, [])
    same_results((probs, events), blocked)
    assert outs[0].start_sample == 0


def test_restore_replays_exactly_from_the_snapshot(vad_model, speech):
    stream = vad_model.open_stream()
    stream.feed(speech[:40_100])  # inside the first pause, samples pending
    snap = stream.snapshot()
    first = stream.feed(speech[40_100:])
    stream.restore(snap)
    assert stream.samples_fed == 40_100
    again = stream.feed(speech[40_100:])
    np.testing.assert_array_equal(first.probs, again.probs)
    assert first.events == again.events and first.start_sample == again.start_sample
    assert len(first.events) >= 2


def test_snapshot_forks_into_another_stream(vad_model, speech):
    a = vad_model.open_stream()
    a.feed(speech[:50_000])
    b = vad_model.open_stream()
    b.restore(a.snapshot())
    out_a, out_b = a.feed(speech[50_000:]), b.feed(speech[50_000:])
    np.testing.assert_array_equal(out_a.probs, out_b.probs)
    assert out_a.events == out_b.events


def test_snapshot_is_not_disturbed_by_later_feeds(vad_model, speech):
    stream = vad_model.open_stream()
    stream.feed(speech[:30_000])
    snap = stream.snapshot()
    saved = (snap.blocks.tail.copy(), snap.blocks.states[0].copy())
    stream.feed(speech[30_000:90_000])
    np.testing.assert_array_equal(snap.blocks.tail, saved[0])
    np.testing.assert_array_equal(snap.blocks.states[0], saved[1])


def test_restore_rejects_a_snapshot_of_another_model(vad_dir, vad_model):
    other = es.load(vad_dir, intra_op_threads=1).open_stream()
    with pytest.raises(StreamStateError, match="another model"):
        vad_model.open_stream().restore(other.snapshot())


def test_interleaved_streams_do_not_disturb_each_other(vad_model, speech, blocked):
    a, b = vad_model.open_stream(), vad_model.open_stream()
    rng = np.random.default_rng(1)
    noise = (0.05 * rng.standard_normal(len(speech))).astype(np.float32)
    outs_a, outs_b, pos = [], [], 0
    while pos < len(speech):
        n = int(rng.integers(100, 3000))
        outs_a.append(a.feed(speech[pos:pos + n]))
        outs_b.append(b.feed(noise[::-1][pos:pos + n].copy()))
        pos += n
    same_results((np.concatenate([o.probs for o in outs_a]), [e for o in outs_a for e in o.events]), blocked)
    solo = feed_in_chunks(vad_model.open_stream(), noise[::-1].copy(), [])
    same_results((np.concatenate([o.probs for o in outs_b]), [e for o in outs_b for e in o.events]), solo)


# -- cross-stream batching ----------------------------------------------------------------------

def test_batched_streams_match_solo_streams(vad_model, speech, blocked):
    streams = [vad_model.open_stream() for _ in range(3)]
    audios = [speech, speech[::-1].copy(), np.zeros_like(speech)]
    solos = [feed_in_chunks(vad_model.open_stream(), a, []) for a in audios]
    rng = np.random.default_rng(2)
    pos = [0, 0, 0]
    outs = [[], [], []]
    while any(p < len(speech) for p in pos):
        live = [k for k in range(3) if pos[k] < len(speech)]
        sizes = [int(rng.integers(1, 4000)) for _ in live]  # different chunk sizes per stream
        results = VadStream.feed_batched([streams[k] for k in live],
                                         [audios[k][pos[k]:pos[k] + n] for k, n in zip(live, sizes)])
        for k, n, out in zip(live, sizes, results):
            outs[k].append(out)
            pos[k] += n
    for k in range(3):
        probs = np.concatenate([o.probs for o in outs[k]])
        np.testing.assert_allclose(probs, solos[k][0], atol=1e-5, rtol=0)
        assert [e for o in outs[k] for e in o.events] == solos[k][1]
    assert solos[0][1] == blocked[1]


def test_batched_rejection_leaves_every_stream_unchanged(vad_model, speech):
    a, b = vad_model.open_stream(), vad_model.open_stream()
    a.feed(speech[:1000])
    before = [(s.samples_fed, s.pending_samples) for s in (a, b)]
    with pytest.raises(InputError, match="float64"):
        VadStream.feed_batched([a, b], [speech[1000:5000], speech[:4000].astype(np.float64)])
    assert [(s.samples_fed, s.pending_samples) for s in (a, b)] == before


def test_stream_continues_alone_after_batched_feeds(vad_model, speech, blocked):
    a, b = vad_model.open_stream(), vad_model.open_stream()
    first = VadStream.feed_batched([a, b], [speech[:50_000], speech[:30_000]])[0]
    rest = a.feed(speech[50_000:])  # its state is now a slice of a batched output
    np.testing.assert_allclose(np.concatenate([first.probs, rest.probs]), blocked[0], atol=1e-5, rtol=0)
    assert first.events + rest.events == blocked[1]
