"""The patch teacher (blocks/learn/teacher.py) against the real YAMNet TFLite on real recordings.

Reference = the TFLite interpreter on 15600-sample waveform windows (its own int8-DFT front-end);
candidate = the Keras teacher on the NumPy float log-mel patches (blocks/dsp/features.py) of the
same windows. Feeding the TFLite's own log-mel (``Identity_1``) into the Keras teacher isolates
the weight loading: only dequantisation vs. hybrid int8 kernels differ then.

The reference itself is noisy: its front-end uses int8 DFT matrices, and its int8-weight layers
quantise their activations at run time, differently per kernel set. The default interpreter
(XNNPACK delegate, used here) and the builtin kernels (``use_delegates=False``) agree with
each other only to cry-probability correlation 0.944 on these windows; the Keras teacher on
float patches agrees with the XNNPACK one to 0.983 (and with the builtin one to 0.944).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from cryblock.blocks.dsp.features import pad_waveform, waveform_to_patches
from cryblock.audio import load_audio
from cryblock.blocks.learn.teacher import cry_probability, load_teacher
from cryblock.blocks.learn.teacher_files import TeacherSource, resolve_teacher_path, verify_sha256
from cryblock.blocks.learn.tflite import TfliteWaveformYamnet
from cryblock.blocks.learn.yamnet import EMBEDDING_SIZE, NUM_CLASSES
from cryblock.errors import CryblockError
from cryblock.params import DspParams

DSP = DspParams()


def _sample(clips):
    """30 clips: ESC-10 baby cries, donateacry, theunissen, FSDD speech, ESC-10 ambience/other,
    Speech Commands background noise, one LibriSpeech utterance (librosa data)."""
    def take(pred, n):
        sel = [c for c in clips if pred(c)]
        step = max(1, len(sel) // n)
        return sel[::step][:n]

    return (take(lambda c: c.source == "ESC-10" and c.category == "baby cry", 6)
            + take(lambda c: c.source == "donateacry-corpus", 5)
            + take(lambda c: c.source.startswith("theunissenlab"), 5)
            + take(lambda c: c.source == "free-spoken-digit-dataset", 4)
            + take(lambda c: c.source == "ESC-10" and c.category in ("rain", "sea waves", "helicopter",
                                                                     "fire crackling", "person sneeze",
                                                                     "dog bark", "rooster"), 7)
            + take(lambda c: c.source == "Speech Commands background noise"
                   and c.category in ("running_tap", "doing_the_dishes"), 2)
            + take(lambda c: c.source == "librosa/data" and c.category == "198-209-0000", 1))


@pytest.fixture(scope="module")
def paired(clips, teacher, teacher_path):
    """TFLite on waveform windows vs Keras teacher on NumPy patches of the same windows."""
    sample = _sample(clips)
    assert len(sample) == 30
    ref = TfliteWaveformYamnet(teacher_path)
    ref_scores, ref_logmel, patches, windows = [], [], [], []
    for c in sample:
        x = pad_waveform(load_audio(c.path, DSP.sample_rate), DSP)
        p = waveform_to_patches(x, DSP)  # every window of the clip, no selection
        for k in range(len(p)):
            w = x[k * DSP.patch_hop_samples:k * DSP.patch_hop_samples + DSP.patch_samples]
            s, lm = ref.run(w)
            windows.append(w)
            ref_scores.append(s)
            ref_logmel.append(lm)
        patches.append(p)
    patches = np.concatenate(patches)
    scores, emb = teacher.predict(patches, batch_size=64)
    return dict(ref_scores=np.stack(ref_scores), ref_logmel=np.stack(ref_logmel), patches=patches,
                windows=np.stack(windows),
                scores=scores, emb=emb)


def test_weight_loading_reproduces_tflite_on_its_own_log_mel(paired, teacher):
    # Same input as the TFLite body → only float (dequantised) vs hybrid-int8 kernels differ.
    s = teacher.scores(paired["ref_logmel"])
    d = np.abs(s - paired["ref_scores"])
    print(f"\nTFLite log-mel → Keras: {len(s)} windows, max|diff| {d.max():.4f}, mean|diff| {d.mean():.2e}")
    # Measured here: max 0.042, mean 9e-5 (XNNPACK interpreter); see the per-layer test for why.
    assert d.max() < 0.08 and d.mean() < 3e-4
    assert np.corrcoef(cry_probability(s), cry_probability(paired["ref_scores"]))[0, 1] > 0.999


def test_keras_on_float_patches_matches_tflite_on_waveforms(paired):
    ref, got = paired["ref_scores"], paired["scores"]
    cr, cg = cry_probability(ref), cry_probability(got)
    corr = np.corrcoef(cr, cg)[0, 1]
    mad = np.abs(ref - got).mean()
    print(f"\nwaveform TFLite vs Keras on NumPy patches: {len(ref)} windows, cry corr {corr:.4f}, "
          f"mean|diff| all classes {mad:.4f}, max|diff| cry {np.abs(cr - cg).max():.3f}")
    # Measured here: corr 0.983, mean|diff| 5e-4 over 626 windows (default XNNPACK interpreter).
    assert corr >= 0.98
    assert mad < 0.002
    # The cry windows really are cries for both (not a correlation of near-zeros).
    assert (cr > 0.5).sum() >= 10 and ((cr > 0.5) == (cg > 0.5)).mean() > 0.9


def test_outputs_shapes_dtypes_determinism(paired, teacher):
    p = paired["patches"][:20]
    s1, e1 = teacher.predict(p, batch_size=7)
    s2, e2 = teacher.predict(p, batch_size=256)
    assert s1.shape == (20, NUM_CLASSES) and e1.shape == (20, EMBEDDING_SIZE)
    assert s1.dtype == np.float32 and e1.dtype == np.float32
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_allclose(e1, e2, atol=1e-4)
    s3, e3 = teacher.predict(p, batch_size=7)
    np.testing.assert_array_equal(s1, s3)
    np.testing.assert_array_equal(e1, e3)
    assert np.all((s1 >= 0) & (s1 <= 1)) and np.all(e1 >= 0)  # sigmoid; mean of ReLUs
    # same batch size → bit-identical (oneDNN may pick other kernels for other batch sizes)
    np.testing.assert_array_equal(teacher.embeddings(p, batch_size=7), e3)
    np.testing.assert_array_equal(teacher.scores(p, batch_size=7), s3)
    assert teacher.predict(np.zeros((0, 96, 64), np.float32))[0].shape == (0, NUM_CLASSES)
    z = teacher.logits_from_embeddings(e1)
    assert z.shape == (20, NUM_CLASSES) and z.dtype == np.float32
    np.testing.assert_allclose(1 / (1 + np.exp(-z.astype(np.float64))), s1, atol=1e-6)


def test_keras_model_runs_in_tf_function(paired, teacher):
    import tensorflow as tf

    fn = tf.function(lambda x: teacher.keras_model(x, training=False))
    s, e = fn(tf.constant(paired["patches"][:5]))
    np.testing.assert_allclose(s.numpy(), paired["scores"][:5], atol=1e-5)
    assert e.shape == (5, EMBEDDING_SIZE)


def test_esc10_baby_cries_score_high(clips, teacher, data_dir):
    from cryblock.data import compute_patches

    cries = [c for c in clips if c.source == "ESC-10" and c.category == "baby cry"]
    assert len(cries) == 40
    ps = compute_patches(cries, DSP, workers=1)
    prob = teacher.cry_probability(ps.patches)
    per_clip = np.array([prob[ps.clip_index == i].max() for i in range(len(ps.clips))])
    print(f"\nESC-10 baby cry: median of per-clip max cry probability {np.median(per_clip):.3f}")
    assert np.median(per_clip) >= 0.8


def test_class_names_and_cry_rule(teacher):
    assert teacher.known_release and teacher.sha256.startswith("469be6a3")
    assert len(teacher.class_names) == NUM_CLASSES
    assert teacher.class_names[19] == "Crying, sobbing" and teacher.class_names[20] == "Baby cry, infant cry"
    s = np.zeros((3, NUM_CLASSES), np.float32)
    s[0, 19], s[1, 20], s[2, 19], s[2, 20] = 0.7, 0.4, 0.6, 0.9
    np.testing.assert_array_equal(cry_probability(s), np.array([0.7, 0.4, 0.9], np.float32))
    with pytest.raises(CryblockError, match="521"):
        cry_probability(np.zeros((3, 520)))


def test_bad_patches_are_rejected(teacher):
    with pytest.raises(CryblockError, match=r"\[N, 96, 64\]"):
        teacher.predict(np.zeros((2, 64, 96), np.float32))
    bad = np.zeros((2, 96, 64), np.float32)
    bad[1, 3, 4] = np.nan
    with pytest.raises(CryblockError, match="NaN"):
        teacher.predict(bad)


def test_missing_teacher_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CRYBLOCK_TEACHER", raising=False)
    monkeypatch.setenv("CRYBLOCK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CryblockError, match="not found"):
        load_teacher(tmp_path / "nope.tflite")
    with pytest.raises(CryblockError, match="CRYBLOCK_TEACHER"):
        resolve_teacher_path(download=False)
    # Unreachable release (port 9 on localhost refuses): error names the URL, nothing left behind.
    src = TeacherSource("yamnet.tflite", "http://127.0.0.1:9/yamnet.tflite", "0" * 64)
    with pytest.raises(CryblockError, match=r"127\.0\.0\.1:9.*CRYBLOCK_TEACHER"):
        load_teacher(sources=[src])
    assert not any((tmp_path / "cache" / "models").glob("*"))


def test_corrupt_or_wrong_teacher_is_rejected(tmp_path, monkeypatch, teacher_path):
    monkeypatch.delenv("CRYBLOCK_TEACHER", raising=False)
    data = teacher_path.read_bytes()
    truncated = tmp_path / "yamnet.tflite"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CryblockError, match=str(truncated)):
        load_teacher(truncated)
    with pytest.raises(CryblockError, match="sha256"):
        verify_sha256(truncated, "469be6a3421cbc52cf97e9f2f966cba984198e8e7af9854d68b3e3ebb1e04194")
    # A damaged file in the user cache fails its checksum before any parsing.
    cache = tmp_path / "cache" / "models"
    cache.mkdir(parents=True)
    shutil.copy(truncated, cache / "yamnet.tflite")
    monkeypatch.setenv("CRYBLOCK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CryblockError, match=r"yamnet\.tflite: sha256 .* does not match"):
        load_teacher()
    # Not a model at all.
    junk = tmp_path / "teacher.bin"
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(CryblockError, match="teacher.bin"):
        load_teacher(junk)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_each_layer_matches_tflite_interpreter(paired, teacher, teacher_path):
    """Layer by layer against the TFLite reference kernels: each Keras conv(+ReLU) is fed the
    TFLite's own input activation of that layer and compared with the TFLite's output.

    Float ops of the file (layer1 conv and every depthwise conv: their int8 weights go through
    a DEQUANTIZE op) must agree to float rounding. The int8-weight pointwise convs are "hybrid"
    kernels that also quantise their input *activation* to int8 (symmetric, per tensor:
    scale = max|x| / 127); with that input rounding emulated they must agree to float rounding
    too — which proves the dequantised weights (per-channel scales, layouts, folded biases) are
    exactly the file's. Without the emulation they differ by up to ~5 % relative RMS."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_path=str(teacher_path), experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    details = it.get_tensor_details()
    convs = [op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 27
    layers = [l for l in teacher.keras_model.layers if l.name.startswith("layer") and not l.name.endswith("_relu")]
    assert len(layers) == 27
    worst_float, worst_hybrid = 0.0, 0.0
    for w in paired["windows"][::97][:4]:
        it.set_tensor(it.get_input_details()[0]["index"], w[None])
        it.invoke()
        for op, layer in zip(convs, layers):
            x = it.get_tensor(int(op["inputs"][0]))
            want = it.get_tensor(int(op["outputs"][0]))
            if details[int(op["inputs"][1])]["dtype"] == np.int8:  # hybrid: emulate its int8 input
                scale = np.abs(x).max() / 127.0
                x = np.round(x / scale) * scale
            got = tf.nn.relu(layer(x)).numpy()
            rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))  # relative RMS error
            if details[int(op["inputs"][1])]["dtype"] == np.int8:  # hybrid kernel
                worst_hybrid = max(worst_hybrid, rel)
            else:
                worst_float = max(worst_float, rel)
    print(f"\nper layer vs TFLite reference kernels: float ops rel. RMS error {worst_float:.1e}, "
          f"hybrid int8 ops {worst_hybrid:.1e}")
    assert worst_float < 1e-5
    assert worst_hybrid < 1e-5


def _official_variables(weights, rng):
    """Folded weights → YAMNet's unfolded variables, named as in yamnet.py
    (``layerK/conv/kernel:0``, ``layerK/conv/bn/beta:0``, ``…/moving_mean:0``, …, ``dense/bias:0``),
    with random batch-norm statistics so that the loaders' folding is exercised.
    Returns ``[(keras layer name, {variable name: array})]`` in layer order."""
    from cryblock.blocks.learn.yamnet import BN_EPSILON, _layer_names

    out = []
    for name, kind, *_ in _layer_names():
        kernel, bias = weights[name]
        ch = kernel.shape[2] if kind == "depthwise" else kernel.shape[3]
        mean = rng.normal(0, 1, ch).astype(np.float32)
        var = rng.uniform(0.5, 2.0, ch).astype(np.float32)
        std = np.sqrt(var.astype(np.float64) + BN_EPSILON)
        k = kernel * (std[None, None, :, None] if kind == "depthwise" else std[None, None, None, :])
        kname = "depthwise_kernel" if kind == "depthwise" else "kernel"
        out.append((name, {f"{name}/{kname}:0": k.astype(np.float32)}))
        out.append((f"{name}/bn", {f"{name}/bn/beta:0": (bias + mean / std).astype(np.float32),
                                   f"{name}/bn/moving_mean:0": mean, f"{name}/bn/moving_variance:0": var}))
    out.append(("dense", {"dense/kernel:0": weights["dense"][0], "dense/bias:0": weights["dense"][1]}))
    return out


def _write_official_h5(path, variables):
    """The layout of the official yamnet.h5 (Keras 2 ``save_weights``): one group per layer with
    a ``weight_names`` attribute and the weights under those names; batch norms are separate
    layers ``…/bn``; root attribute ``layer_names``."""
    import h5py

    with h5py.File(path, "w") as f:
        for layer, arrays in variables:
            g = f.create_group(layer) if layer not in f else f[layer]
            g.attrs["weight_names"] = np.array([n.encode() for n in arrays])
            for n, arr in arrays.items():
                g.create_dataset(n, data=arr)
        f.attrs["layer_names"] = np.array([layer.encode() for layer, _ in variables])


def test_h5_weights_in_official_layout_load_and_fold(tmp_path, paired, teacher, teacher_path):
    from cryblock.blocks.learn.yamnet import weights_from_tflite

    h5 = tmp_path / "yamnet.h5"
    _write_official_h5(h5, _official_variables(weights_from_tflite(teacher_path), np.random.default_rng(0)))
    t2 = load_teacher(h5)
    p = paired["patches"][:40]
    s1, e1 = teacher.predict(p)
    s2, e2 = t2.predict(p)
    np.testing.assert_allclose(s2, s1, atol=2e-5)
    np.testing.assert_allclose(e2, e1, rtol=1e-4, atol=1e-4)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(h5.read_bytes()[:5000])
    with pytest.raises(CryblockError, match="broken.h5"):
        load_teacher(broken)


def test_saved_model_variables_load_and_fold(tmp_path, paired, teacher, teacher_path):
    """A SavedModel folder whose variables carry YAMNet's names (as TF-Hub google/yamnet's do);
    a folder holding no teacher is refused by name."""
    import tensorflow as tf

    from cryblock.blocks.learn.yamnet import weights_from_tflite

    module = tf.Module()
    module.vars = [tf.Variable(arr, name=n.split(":")[0])
                   for _, arrays in _official_variables(weights_from_tflite(teacher_path), np.random.default_rng(1))
                   for n, arr in arrays.items()]
    tf.saved_model.save(module, str(tmp_path / "yamnet_sm"))
    t2 = load_teacher(tmp_path / "yamnet_sm")
    np.testing.assert_allclose(t2.scores(paired["patches"][:20]), teacher.scores(paired["patches"][:20]), atol=2e-5)
    with pytest.raises(CryblockError, match="no yamnet.tflite"):
        load_teacher(tmp_path)


@pytest.fixture()
def local_release(tmp_path, teacher_path):
    """The shared TFLite served over HTTP from 127.0.0.1 (a stand-in for the release server)."""
    import functools
    import http.server
    import threading

    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    shutil.copy(teacher_path, srv_dir / "yamnet.tflite")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(srv_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/yamnet.tflite"
    server.shutdown()
    server.server_close()


def test_download_checks_sha256_and_fills_the_cache(tmp_path, monkeypatch, local_release, teacher, paired):
    monkeypatch.delenv("CRYBLOCK_TEACHER", raising=False)
    monkeypatch.setenv("CRYBLOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cache = tmp_path / "cache" / "models"
    # Wrong checksum: rejected, named, nothing left in the cache.
    bad = TeacherSource("yamnet.tflite", local_release, "f" * 64)
    with pytest.raises(CryblockError, match=r"sha256 469be6a3.* does not match"):
        load_teacher(sources=[bad])
    assert not any(cache.glob("*"))
    # Right checksum: downloaded into the cache, loads, and is found there next time (offline).
    good = TeacherSource("yamnet.tflite", local_release,
                         "469be6a3421cbc52cf97e9f2f966cba984198e8e7af9854d68b3e3ebb1e04194")
    t2 = load_teacher(sources=[good])
    assert t2.path == cache / "yamnet.tflite" and sorted(p.name for p in cache.iterdir()) == ["yamnet.tflite"]
    np.testing.assert_array_equal(t2.scores(paired["patches"][:8]), teacher.scores(paired["patches"][:8]))
    assert resolve_teacher_path(download=False) == cache / "yamnet.tflite"
