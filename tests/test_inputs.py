"""Input sets: .npz loading and its errors, image preprocessing against hand-computed arrays,
opt-in labels (labels files, file names), random inputs, and the shared CLI flags."""

from __future__ import annotations

import argparse
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_alds.errors import InputDataError, OnnxAldsError
from onnx_alds.inputs import (PRESETS, InputSet, Preprocess, add_input_arguments, inputs_from_args,
                              label_from_filename, load_inputs, preprocess_image, preprocess_from_args,
                              read_labels_file)

OPSET = 17


def _image_model(dims, name="x", elem=TensorProto.FLOAT) -> onnx.ModelProto:
    """x → GlobalAveragePool → y: a model that takes an image batch of ``dims``."""
    node = helper.make_node("GlobalAveragePool", [name], ["y"], name="pool")
    graph = helper.make_graph([node], "img", [helper.make_tensor_value_info(name, elem, dims)],
                              [helper.make_tensor_value_info("y", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _text_model() -> onnx.ModelProto:
    """input_ids, attention_mask (int64, dynamic [batch, seq]) and a float input."""
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 4])]
    nodes = [helper.make_node("Add", ["input_ids", "attention_mask"], ["s"], name="add"),
             helper.make_node("Identity", ["scale"], ["t"], name="id")]
    graph = helper.make_graph(nodes, "text", inputs, [helper.make_tensor_value_info("s", TensorProto.INT64, None),
                                                      helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# --- npz --------------------------------------------------------------------------------------------


def test_integer_values_that_do_not_fit_the_input_type_are_refused(tmp_path):
    """int64 ids of 2**32 and more for an int32 input wrapped silently, with only a "cast" note."""
    model = _image_model(["N", 4], elem=TensorProto.INT32)
    np.savez(tmp_path / "ok.npz", x=np.arange(8, dtype=np.int64).reshape(2, 4))
    assert load_inputs(model, npz=tmp_path / "ok.npz").arrays["x"].dtype == np.int32
    np.savez(tmp_path / "big.npz", x=np.full((2, 4), 2 ** 32 + 5, dtype=np.int64))
    with pytest.raises(InputDataError, match=r"values outside the input's int32 range \(4294967301 to 4294967301\)"):
        load_inputs(model, npz=tmp_path / "big.npz")


@pytest.mark.parametrize("elem", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN])
def test_an_input_numpy_cannot_feed_to_onnxruntime_is_one_error_for_every_source(tmp_path, elem):
    """A bfloat16 graph input: an .npz failed inside ONNX Runtime ("Numpy_type 256 can't be converted"),
    images asked for whole-number pixels, random inputs asked for an .npz."""
    model = _image_model(["N", 3, 4, 4], elem=elem)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 4, 4), np.float32))
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    sources = [dict(npz=tmp_path / "d.npz"), dict(random=2), dict(images=tmp_path, preprocess=PRESETS["imagenet"])]
    for source in sources:
        with pytest.raises(InputDataError, match="graph input 'x' is .*, which ONNX Runtime's Python API cannot be fed"):
            load_inputs(model, **source)


def test_random_inputs_refused_for_a_string_input_name_the_flag_of_the_command(tmp_path):
    """The message named both commands' flags, and the compress rewrite turned validate's into
    "--calibration FILE.npz for validate"."""
    from onnx_alds.inputs import with_prefixed_flags

    model = _image_model(["N", 4], elem=TensorProto.STRING)
    with pytest.raises(InputDataError) as caught:
        load_inputs(model, random=2)
    assert "(--inputs FILE.npz)" in str(caught.value)
    rewritten = with_prefixed_flags(str(caught.value), "calibration-")
    assert "(--calibration FILE.npz)" in rewritten and "--inputs" not in rewritten
    # every validate flag in a message, not only "--inputs FILE.npz" ("with --inputs write one class id ...")
    assert with_prefixed_flags("with --inputs write one id per line, or give --images DIR or --random N",
                               "validate-") == ("with --validate-inputs write one id per line, or give "
                                                "--validate-images DIR or --validate-random N")


def test_npz_whose_arrays_or_labels_disagree_on_the_sample_count_is_named(tmp_path):
    model = _text_model()
    np.savez(tmp_path / "n.npz", input_ids=np.zeros((12, 4), np.int64), attention_mask=np.ones((10, 4), np.int64),
             scale=np.zeros((12, 4), np.float32))
    with pytest.raises(InputDataError, match=r"^'.*n\.npz': input arrays disagree on the number of samples .*an "
                                             r"input without one, such as a table every sample reads, cannot be fed: "
                                             r"make it a constant of the model; inputs that share no sample axis"):
        load_inputs(model, npz=tmp_path / "n.npz")


def test_a_scalar_input_is_refused_with_the_ways_out(tmp_path):
    """A scalar graph input (a temperature beside the data) was refused without a way out."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Mul", ["h", "t"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                       [numpy_helper.from_array(np.ones((8, 8), np.float32), "w")])
    np.savez(tmp_path / "s.npz", x=np.ones((4, 8), np.float32), t=np.ones(4, np.float32))
    with pytest.raises(InputDataError, match=r"graph input 't' is a scalar \(rank 0\); .*export 't' with shape \[1\] "
                                             r"or \[N\] \(or as a constant of the model\) to give it data; data-free "
                                             r"compression needs no inputs"):
        load_inputs(model, npz=tmp_path / "s.npz")


def test_a_dim_name_two_inputs_declare_with_two_sizes_is_named():
    import onnxruntime as ort

    from onnx_alds.inputs import dim_name_clash

    session = ort.InferenceSession(_text_model().SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.zeros((2, 8), np.int64), "attention_mask": np.ones((2, 6), np.int64),
            "scale": np.zeros((2, 4), np.float32)}
    assert dim_name_clash(session, feed) == ("; inputs 'input_ids' and 'attention_mask' both declare the dim 'seq', "
                                             "but the arrays give it 8 and 6: give them equal sizes")
    feed["attention_mask"] = np.ones((2, 8), np.int64)
    assert dim_name_clash(session, feed) == ""


def test_npz_loads_casts_and_reads_labels(tmp_path):
    model = _image_model(["N", 3, 4, 4])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4, 4))  # float64: cast to the input's float32
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(5))
    data = load_inputs(model, npz=tmp_path / "d.npz")
    assert len(data) == 5
    assert data.arrays["x"].dtype == np.float32
    np.testing.assert_allclose(data.arrays["x"], x.astype(np.float32))
    np.testing.assert_array_equal(data.labels, np.arange(5))
    assert [len(next(iter(b.values()))) for b in data.batches(2)] == [2, 2, 1]
    assert len(load_inputs(model, npz=tmp_path / "d.npz", limit=3)) == 3
    assert "'x' float64 cast to float32" in data.source
    np.savez(tmp_path / "pixels.npz", x=rng.integers(0, 255, (2, 3, 4, 4)).astype(np.uint8))
    assert "uint8 cast to float32, integer values: are they preprocessed?" in \
        load_inputs(model, npz=tmp_path / "pixels.npz").source
    np.savez(tmp_path / "same.npz", x=x.astype(np.float32))
    assert load_inputs(model, npz=tmp_path / "same.npz").source.endswith("same.npz (5 samples)")


@pytest.mark.parametrize("arrays, message", [
    ({"wrong": np.zeros((2, 3, 4, 4), np.float32)}, "no array for graph input 'x'"),
    ({"x": np.zeros((2, 3, 4, 4), np.float32), "extra": np.zeros(2)}, "'extra', which is not a graph input"),
    ({"x": np.zeros((3, 4, 4), np.float32)}, "rank 3"),
    ({"x": np.where(np.arange(96).reshape(2, 3, 4, 4) == 50, np.nan, 0).astype(np.float32)},
     r"holds NaN or Inf values \(first in sample 1\)"),
    ({"x": np.zeros((2, 3, 5, 4), np.float32)}, "fixes dim 2 to 4"),
    ({"x": np.zeros((0, 3, 4, 4), np.float32)}, r"array 'x' in '.*bad.npz' holds no samples"),
    # strings from pandas' .values are an object array: 'cannot read as an .npz; save it with numpy.savez' said
    # the file numpy.savez had just written
    ({"x": np.zeros((2, 3, 4, 4), np.float32), "s": np.array([["red"], ["blue"]], dtype=object)},
     r"member 's' of '.*bad.npz' is an array of Python objects.*array.astype\(str\)"),
])
def test_npz_errors_name_the_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputDataError, match=message):
        load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "bad.npz")


def test_npz_with_a_damaged_member_is_one_error(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as archive:  # numpy returns the member's raw bytes
        archive.writestr("x.npy", b"not an npy payload")
    with pytest.raises(InputDataError, match="member 'x' of '.*bad.npz' is not a numpy array"):
        load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "bad.npz")


def test_npz_float_into_int_input_is_refused(tmp_path):
    np.savez(tmp_path / "t.npz", input_ids=np.zeros((2, 3)), attention_mask=np.ones((2, 3), np.int64),
             scale=np.zeros((2, 4), np.float32))
    with pytest.raises(InputDataError, match="cannot be cast to the input's int64"):
        load_inputs(_text_model(), npz=tmp_path / "t.npz")


def test_exactly_one_source(tmp_path):
    with pytest.raises(InputDataError, match="exactly one"):
        load_inputs(_image_model(["N", 3, 4, 4]))
    with pytest.raises(InputDataError, match="exactly one"):
        load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "a.npz", random=3)


def test_input_set_rejects_unequal_sample_counts():
    with pytest.raises(InputDataError, match="disagree"):
        InputSet({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})


# --- images -----------------------------------------------------------------------------------------


def _write(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_fractions_with_decimal_denominators_parse():
    """``--scale 1/127.5`` (TF-style x/127.5 − 1) was refused: Fraction takes no decimal denominator."""
    from onnx_alds.inputs import _parse_floats

    assert _parse_floats("1/127.5", "--scale") == (1 / 127.5,)
    assert _parse_floats("0.5, 1/255,2", "--mean") == (0.5, 1 / 255, 2.0)
    for bad in ("1/0", "nan", "1/x", "inf"):
        with pytest.raises(InputDataError, match="write finite numbers or fractions"):
            _parse_floats(bad, "--scale")


def test_integer_image_inputs_take_whole_pixels_that_fit_their_type(tmp_path):
    """An int8 input (pixel − 128) got raw pixels cast with wrap-around (200 became −56), and --mean 128,
    which fits exactly, was refused as "fractional"."""
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 10
    _write(tmp_path / "a.png", pixels)
    model = _image_model(["N", 3, 4, 6], elem=TensorProto.INT8)
    with pytest.raises(InputDataError, match=r"int8 \(-128..127\).*makes pixels 0..255, which would wrap around.*"
                                             r"--mean 128"):
        load_inputs(model, images=tmp_path, preprocess=Preprocess("custom"))
    shifted = load_inputs(model, images=tmp_path, preprocess=Preprocess("custom", mean=(128.0,))).arrays["x"]
    assert shifted.dtype == np.int8
    np.testing.assert_array_equal(shifted[0], pixels.transpose(2, 0, 1).astype(np.int16) - 128)
    with pytest.raises(InputDataError, match="makes fractional values"):
        load_inputs(model, images=tmp_path, preprocess=Preprocess("custom", mean=(127.5,)))


def test_float16_image_inputs_refuse_preprocessing_past_their_range(tmp_path):
    """--scale 1000 made pixels up to 255000 for a float16 input: Inf fed (the API returned millions of them),
    then "holds NaN or Inf values ... give finite inputs"."""
    _write(tmp_path / "a.png", np.full((4, 6, 3), 200, np.uint8))
    model = _image_model(["N", 3, 4, 6], elem=TensorProto.FLOAT16)
    with pytest.raises(InputDataError, match=r"float16 \(values up to 65504\).*makes pixels up to 255000.*"
                                             r"--scale, --mean and --std"):
        load_inputs(model, images=tmp_path, preprocess=Preprocess("custom", scale=1000.0))
    fits = load_inputs(model, images=tmp_path, preprocess=Preprocess("custom", scale=100.0)).arrays["x"]
    assert fits.dtype == np.float16 and np.isfinite(fits).all() and float(fits.max()) == 20000.0


def test_crop_scale_mean_std_nchw_by_hand(tmp_path):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2  # H=4, W=6, RGB
    _write(tmp_path / "a.png", pixels)
    pre = Preprocess("t", crop=(2, 2), scale=1 / 255, mean=(0.5,), std=(0.25,))
    got = preprocess_image(tmp_path / "a.png", pre)
    # center crop offsets: top = round((4-2)/2) = 1, left = round((6-2)/2) = 2
    window = pixels[1:3, 2:4].astype(np.float32)
    expected = ((window / 255 - 0.5) / 0.25).transpose(2, 0, 1)
    assert got.shape == (3, 2, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_grayscale_nhwc_by_hand(tmp_path):
    gray = np.array([[0, 10, 20], [30, 40, 50]], dtype=np.uint8)
    _write(tmp_path / "g.png", np.repeat(gray[:, :, None], 3, axis=2))  # R=G=B: luminance is exact
    pre = Preprocess("t", scale=1.0, mean=(10.0,), std=(2.0,), layout="NHWC", channels=1)
    got = preprocess_image(tmp_path / "g.png", pre)
    np.testing.assert_array_equal(got, ((gray.astype(np.float32) - 10) / 2)[:, :, None])


def test_imagenet_preset_resizes_short_side_and_crops(tmp_path):
    color = np.array([200, 100, 50], dtype=np.uint8)
    _write(tmp_path / "photo_7.png", np.broadcast_to(color, (300, 400, 3)))
    data = load_inputs(_image_model(["N", 3, 224, 224]), images=tmp_path, preprocess="imagenet")
    assert data.arrays["x"].shape == (1, 3, 224, 224)
    mean, std = np.array(PRESETS["imagenet"].mean), np.array(PRESETS["imagenet"].std)
    expected = (color / 255 - mean) / std  # a constant image stays constant through bilinear resizing
    np.testing.assert_allclose(data.arrays["x"][0].reshape(3, -1).mean(axis=1), expected, rtol=1e-5)
    np.testing.assert_allclose(data.arrays["x"][0].reshape(3, -1).std(axis=1), 0, atol=1e-5)
    assert data.labels is None  # labels are opt-in: the 7 in the name is not read by default
    assert "imagenet" in data.source


@pytest.mark.parametrize("dims, layout, hint", [
    (["N", 1, 8, 8], "NHWC", "add --layout NCHW and add --grayscale"),
    (["N", 8, 8, 1], "NCHW", "add --layout NHWC and add --grayscale"),
    (["N", 4, 8, 8], "NCHW", "feed this input from an .npz"),
])
def test_channel_mismatch_hint_names_every_change(tmp_path, dims, layout, hint):
    """The hint said "use an RGB preprocessing" to users whose preprocessing was already RGB."""
    _write(tmp_path / "a.png", np.zeros((8, 8, 3)))
    with pytest.raises(InputDataError, match=re.escape(hint)):
        load_inputs(_image_model(dims), images=tmp_path, preprocess=Preprocess("custom", layout=layout))


def test_layout_mismatch_says_which_flag(tmp_path):
    _write(tmp_path / "a.png", np.zeros((28, 28, 3)))
    with pytest.raises(InputDataError, match="--layout NHWC"):
        load_inputs(_image_model(["N", 28, 28, 3]), images=tmp_path, preprocess="imagenet")


def test_hidden_files_in_an_image_folder_are_not_images(tmp_path):
    """macOS writes '._name.jpg' metadata files beside copied photos: they failed to decode."""
    digit = np.zeros((28, 28), np.uint8)
    Image.fromarray(digit).save(tmp_path / "a_1.png")
    (tmp_path / "._a_1.png").write_bytes(b"\x00\x05\x16\x07 not an image")
    data = load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path, preprocess="mnist")
    assert data.arrays["x"].shape[0] == 1


def test_mnist_preset_grayscale_28(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[10:18, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "mnist_00_7.png")
    Image.fromarray(digit).save(tmp_path / "mnist_01_3.png")
    data = load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path, preprocess="mnist",
                       labels_from_filenames=True)
    np.testing.assert_allclose(data.arrays["x"][0, 0], (digit / 255 - 0.1307) / 0.3081, atol=1e-6)
    np.testing.assert_array_equal(data.labels, [7, 3])  # sorted by name: mnist_00_7, mnist_01_3


def test_a_preset_that_fits_changed_by_flags_names_the_flags_to_drop(tmp_path):
    """"--preprocess imagenet --layout NHWC" for a 3x224x224 input was told "use --preprocess imagenet or
    efficientnet-lite": the preset in use, which the flag had changed."""
    from dataclasses import replace

    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(tmp_path / "a.png")
    model = _image_model(["N", 3, 224, 224])
    for changes, flag in ((dict(layout="NHWC"), "--layout NHWC"), (dict(crop=(200, 200)), "--crop"),
                          (dict(channels=1, mean=(0.0,), std=(1.0,)), "--grayscale")):
        changed = replace(PRESETS["imagenet"], name="imagenet+custom", **changes)
        with pytest.raises(InputDataError, match=f"--preprocess imagenet fits this input as it is: drop {flag}$"):
            load_inputs(model, images=tmp_path, preprocess=changed)


def test_images_that_do_not_fit_name_the_preset_that_does(tmp_path):
    """Digits for a 1x28x28 model with the default preprocessing took three tries: "add --grayscale", then
    "needs one --mean and --std value", then "makes 1x224x224 ... choose the matching --preprocess"."""
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "d.png")
    with pytest.raises(InputDataError, match=r"use --preprocess mnist, whose images fit it"):
        load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path)
    with pytest.raises(InputDataError, match=r"makes 1x224x224 per image.*use --preprocess mnist"):
        load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path,
                    preprocess=Preprocess("gray", resize_short=256, crop=(224, 224), channels=1))
    with pytest.raises(InputDataError, match=r"add --grayscale"):  # no preset makes 1x32x32
        load_inputs(_image_model(["N", 1, 32, 32]), images=tmp_path)
    # two presets make 3x224x224 with other normalizations: both named (the first alone misled)
    with pytest.raises(InputDataError, match=r"use --preprocess imagenet or efficientnet-lite \(the one the model "
                                             r"was trained with\)"):
        load_inputs(_image_model(["N", 3, 224, 224]), images=tmp_path, preprocess="mnist")


def test_mnist_preset_matches_the_bundled_model(tmp_path):
    """The preset scaled to 0..1 only; the bundled model expects torchvision's normalization: on real
    digits saved as PNG its accuracy was 0.000 through the preset (and validation still passed)."""
    from importlib.resources import files

    from onnx_alds.runtime import make_session

    data = files("onnx_alds") / "data"
    evaluation = np.load(str(data / "mnist_eval.npz"))
    pixels = np.clip(np.rint((evaluation["input"][::10, 0] * 0.3081 + 0.1307) * 255), 0, 255).astype(np.uint8)
    for index, (digit, label) in enumerate(zip(pixels, evaluation["labels"][::10])):
        Image.fromarray(digit).save(tmp_path / f"digit_{index:02d}_{label}.png")
    model = onnx.load(str(data / "mnist_resnet.onnx"))
    loaded = load_inputs(model, images=tmp_path, preprocess="mnist", labels_from_filenames=True)
    logits = make_session(model).run(None, {"input": loaded.arrays["input"]})[0]
    assert np.mean(logits.argmax(1) == loaded.labels) >= 0.95


@pytest.mark.parametrize("name, label", [("cat_281.jpg", 281), ("imagenet_03_281.png", 281), ("7.png", 7),
                                         ("a-12.bmp", 12), ("img5.jpg", None), ("cat.jpg", None)])
def test_label_rule(name, label):
    assert label_from_filename(name) == label


def test_image_names_give_no_labels_by_default(tmp_path):
    for name in ("IMG_2030.png", "IMG_2031.png"):
        _write(tmp_path / name, np.zeros((4, 4, 3)))
    data = load_inputs(_image_model(["N", 3, 4, 4]), images=tmp_path, preprocess=Preprocess("raw"))
    assert len(data) == 2 and data.labels is None


def test_labels_from_filenames_needs_every_file_and_fails_before_decoding(tmp_path, monkeypatch):
    for name in ("a_1.png", "b.png"):
        _write(tmp_path / name, np.zeros((4, 4, 3)))
    decoded = []
    monkeypatch.setattr("onnx_alds.inputs.preprocess_image", lambda *a: decoded.append(a))
    with pytest.raises(InputDataError, match="'b.png' has no class id at the end of its name"):
        load_inputs(_image_model(["N", 3, 4, 4]), images=tmp_path, preprocess=Preprocess("raw"),
                    labels_from_filenames=True)
    assert decoded == []  # the names were checked before any image was decoded


def test_labels_from_filenames_with_a_huge_class_id_is_an_error_not_a_traceback(tmp_path):
    """'shot_99999999999999999999999.png' raised OverflowError from NumPy (a labels file said it cleanly)."""
    _write(tmp_path / "shot_99999999999999999999999.png", np.zeros((4, 4, 3)))
    with pytest.raises(InputDataError, match="class id at the end of 'shot_9+.png' is too large"):
        load_inputs(_image_model(["N", 3, 4, 4]), images=tmp_path, preprocess=Preprocess("raw"),
                    labels_from_filenames=True)


def test_labels_from_filenames_only_with_images(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(InputDataError, match="use it with --images"):
        load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "d.npz", labels_from_filenames=True)


# --- labels files -----------------------------------------------------------------------------------


def _folder(tmp_path, names=("b.png", "a.png", "c.png")):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for value, name in enumerate(names):
        _write(folder / name, np.full((4, 4, 3), value * 50))
    return folder


def test_labels_match_file_names_written_in_another_unicode_form(tmp_path):
    """macOS writes 'café' decomposed (e + U+0301); a labels file typed elsewhere holds é (U+00E9)."""
    decomposed, composed = "cafe\u0301.png", "caf\u00e9.png"
    folder = _folder(tmp_path, names=(decomposed, "b.png"))
    (tmp_path / "l.csv").write_text(f"{composed},3\nb.png,1\n", encoding="utf-8")
    data = load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"),
                       labels_file=tmp_path / "l.csv")
    by_file = dict(zip(sorted([decomposed, "b.png"]), data.labels.tolist()))
    assert by_file == {decomposed: 3, "b.png": 1}
    _write(folder / composed, np.full((4, 4, 3), 7))  # the same name in the other form: which one is meant?
    with pytest.raises(InputDataError, match="named 'caf\u00e9.png' in two Unicode forms"):
        load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"),
                    labels_file=tmp_path / "l.csv")


def test_an_image_over_pillows_pixel_guard_is_named_as_too_large(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    folder = _folder(tmp_path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 4)  # the 4x4 images are 16 pixels: over twice the guard
    with pytest.raises(InputDataError, match=r"image '.*a\.png' has more pixels than Pillow reads"):
        load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"))


def test_numbers_for_a_string_input_are_refused(tmp_path):
    """int64 values were cast to the strings "1", "2" ... with only a cast note."""
    model = _image_model(["N", 2], elem=TensorProto.STRING)
    np.savez(tmp_path / "n.npz", x=np.arange(4, dtype=np.int64).reshape(2, 2))
    with pytest.raises(InputDataError, match="is int64, but the graph input takes strings"):
        load_inputs(model, npz=tmp_path / "n.npz")
    np.savez(tmp_path / "s.npz", x=np.array([["a", "b"], ["c", "d"]]))
    assert load_inputs(model, npz=tmp_path / "s.npz").arrays["x"].dtype == object


def test_labels_file_of_ids_follows_sorted_file_order(tmp_path):
    folder = _folder(tmp_path)
    (tmp_path / "l.txt").write_text("# class ids, sorted file order\n4\n5\n\n6\n")
    data = load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"),
                       labels_file=tmp_path / "l.txt")
    np.testing.assert_array_equal(data.labels, [4, 5, 6])  # a.png, b.png, c.png
    np.testing.assert_allclose(data.arrays["x"][:, 0, 0, 0], [50, 0, 100])  # a.png was written second
    limited = load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"),
                          labels_file=tmp_path / "l.txt", limit=2)
    np.testing.assert_array_equal(limited.labels, [4, 6])  # the first and the last image (spread evenly)


def test_labels_file_of_names_maps_each_image(tmp_path):
    folder = _folder(tmp_path)
    (tmp_path / "l.csv").write_text("c.png,2\nb.png, 1\na.png,0\n")
    data = load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"),
                       labels_file=tmp_path / "l.csv")
    np.testing.assert_array_equal(data.labels, [0, 1, 2])


def test_labels_file_with_an_npz(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 3, 4, 4), np.float32))
    (tmp_path / "l.txt").write_text("1\n0\n2\n")
    data = load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "d.npz", labels_file=tmp_path / "l.txt", limit=2)
    np.testing.assert_array_equal(data.labels, [1, 2])  # samples 0 and 2 (spread evenly)
    (tmp_path / "bom.txt").write_text("\ufeff1\n0\n2\n", encoding="utf-8")  # as Notepad and Excel save it
    data = load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "d.npz", labels_file=tmp_path / "bom.txt")
    np.testing.assert_array_equal(data.labels, [1, 0, 2])
    np.savez(tmp_path / "e.npz", x=np.zeros((3, 3, 4, 4), np.float32), labels=np.arange(3))
    with pytest.raises(InputDataError, match="already holds 'labels'"):
        load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "e.npz", labels_file=tmp_path / "l.txt")


@pytest.mark.parametrize("text, message", [
    ("", "holds no labels"),
    ("1\ncat\n", "line 2: 'cat' is not an integer class id"),
    ("1\n2.0\n", "line 2: '2.0' is not an integer class id"),
    ("0\n-1\n", "line 2: class id -1 is negative"),
    ("0\na.png,1\n", "mixes plain ids and name,label lines (line 1 is plain, line 2 is name,label)"),
    ("a.png,1\na.png,2\n", "line 2: 'a.png' is listed twice"),
    (",3\n", "line 1: no file name before the comma"),
    ("0\n99999999999999999999\n", "line 2: class id 99999999999999999999 is beyond any class count"),
    ("0\n1_0\n", "line 2: '1_0' is not an integer class id"),  # (int() read it as 10)
    ("+1\n", "line 1: '+1' is not an integer class id"),
])
def test_bad_labels_files_name_the_line(tmp_path, text, message):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(InputDataError, match=re.escape(message)):
        read_labels_file(tmp_path / "l.txt")


@pytest.mark.parametrize("text, message", [
    ("0\n1\n", "has 2 labels for 3 images"),
    ("a.png,0\nb.png,1\n", "image 'c.png' has no label"),
    ("a.png,0\nb.png,1\nc.png,2\nd.png,3\n", "names 'd.png', which is not an image of the folder"),
])
def test_labels_file_must_match_the_images(tmp_path, text, message):
    folder = _folder(tmp_path)
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(InputDataError, match=re.escape(message)):
        load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"),
                    labels_file=tmp_path / "l.txt")


def test_labels_file_errors_for_other_sources(tmp_path):
    model = _image_model(["N", 3, 4, 4])
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 4, 4), np.float32))
    (tmp_path / "n.txt").write_text("a.png,1\nb.png,0\n")
    with pytest.raises(InputDataError, match="name,label lines, which name image files"):
        load_inputs(model, npz=tmp_path / "d.npz", labels_file=tmp_path / "n.txt")
    with pytest.raises(InputDataError, match="labels for random inputs mean nothing"):
        load_inputs(model, random=2, labels_file=tmp_path / "n.txt")
    with pytest.raises(InputDataError, match="does not exist"):
        load_inputs(model, npz=tmp_path / "d.npz", labels_file=tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputDataError, match="as UTF-8 text"):
        read_labels_file(tmp_path / "bin.txt")


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(InputDataError, match="no .jpg"):
        load_inputs(_image_model(["N", 3, 4, 4]), images=tmp_path)


# --- random -----------------------------------------------------------------------------------------


def test_random_honours_dtypes_shapes_and_masks():
    data = load_inputs(_text_model(), random=5, input_shapes={"input_ids": (1, 16), "attention_mask": (1, 16)})
    ids, mask, scale = data.arrays["input_ids"], data.arrays["attention_mask"], data.arrays["scale"]
    assert ids.shape == (5, 16) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 100
    assert mask.dtype == np.int64 and np.all(mask == 1)
    assert scale.shape == (5, 4) and scale.dtype == np.float32
    assert data.is_random and "not real data" in data.source
    again = load_inputs(_text_model(), random=5, input_shapes={"input_ids": (1, 16), "attention_mask": (1, 16)})
    np.testing.assert_array_equal(again.arrays["input_ids"], ids)  # seeded


def test_random_dynamic_dims_need_input_shape():
    with pytest.raises(OnnxAldsError, match="--input-shape input_ids"):
        load_inputs(_text_model(), random=2)


# --- CLI --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_input_arguments(parser, labels=True)
    add_input_arguments(parser, "calibration-", preprocess=False, input_shape=False)
    return parser


def test_prefixed_and_plain_flags_live_together(tmp_path):
    args = _parser().parse_args(["--calibration", "c.npz", "--random", "4", "--input-shape", "x:1x3x4x4"])
    assert args.calibration == "c.npz" and args.random == 4 and args.calibration_images is None
    data = inputs_from_args(_image_model(["N", 3, 4, 4]), args)
    assert len(data) == 4
    args = _parser().parse_args(["--calibration-random", "3"])
    assert len(inputs_from_args(_image_model(["N", 3, 4, 4]), args, "calibration-")) == 3
    assert inputs_from_args(_image_model(["N", 3, 4, 4]), _parser().parse_args([]), "calibration-",
                            required=False) is None
    with pytest.raises(InputDataError, match="--inputs FILE.npz"):
        inputs_from_args(_image_model(["N", 3, 4, 4]), _parser().parse_args([]))


@pytest.mark.parametrize("argv", [["--images", "a", "--random", "3"],
                                  ["--calibration", "a.npz", "--calibration-random", "2"],
                                  ["--images", "a", "--labels", "l.txt", "--labels-from-filenames"]])
def test_two_sources_is_a_usage_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2


def test_label_flags_reach_load_inputs(tmp_path):
    folder = _folder(tmp_path, names=("x_3.png", "y_1.png"))
    model = _image_model(["N", 3, 4, 4])
    args = _parser().parse_args(["--images", str(folder), "--preprocess", "custom", "--labels-from-filenames"])
    np.testing.assert_array_equal(inputs_from_args(model, args).labels, [3, 1])
    assert inputs_from_args(model, _parser().parse_args(["--images", str(folder), "--preprocess", "custom"])).labels \
        is None
    (tmp_path / "l.txt").write_text("7\n8\n")
    args = _parser().parse_args(["--images", str(folder), "--preprocess", "custom", "--labels", str(tmp_path / "l.txt")])
    np.testing.assert_array_equal(inputs_from_args(model, args).labels, [7, 8])
    with pytest.raises(InputDataError, match="--labels-from-filenames reads class ids from image file names"):
        inputs_from_args(model, _parser().parse_args(["--random", "2", "--labels-from-filenames"]))
    with pytest.raises(InputDataError, match="--labels labels the samples of --inputs or --images"):
        inputs_from_args(model, _parser().parse_args(["--labels", "l.txt"]), required=False)
    assert not hasattr(_parser().parse_args([]), "calibration_labels")  # labels only where asked for


def test_custom_flags_override_the_preset():
    args = _parser().parse_args(["--preprocess", "efficientnet-lite", "--layout", "NHWC", "--crop", "200",
                                 "--scale", "1/255", "--mean", "0.5", "--std", "0.5"])
    pre = preprocess_from_args(args)
    assert pre.layout == "NHWC" and pre.crop == (200, 200) and pre.resize_short == 256
    assert pre.scale == pytest.approx(1 / 255) and pre.mean == (0.5,)
    args = _parser().parse_args(["--preprocess", "custom", "--resize", "32x48", "--grayscale", "--mean", "0"])
    pre = preprocess_from_args(args)
    assert pre.size == (32, 48) and pre.channels == 1 and pre.resize_short is None
    with pytest.raises(InputDataError, match="--mean"):
        preprocess_from_args(_parser().parse_args(["--mean", "a,b"]))


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """PIL's convert clips a 16-bit PNG to 255 everywhere: every pixel read as white."""
    from PIL import Image

    from onnx_alds.inputs import preprocess_image

    grey = np.full((28, 28), 32896, np.uint16)  # mid-grey in 16 bits (0x8080)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "grey8.png")
    sixteen = preprocess_image(tmp_path / "grey16.png", PRESETS["mnist"])
    eight = preprocess_image(tmp_path / "grey8.png", PRESETS["mnist"])
    np.testing.assert_allclose(sixteen, eight, atol=1e-6)


def test_an_image_of_extreme_aspect_is_refused_before_it_fills_the_memory(tmp_path):
    from PIL import Image

    from onnx_alds.inputs import preprocess_image

    Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(tmp_path / "strip.png")  # 1x3000 -> 256x768000
    with pytest.raises(InputDataError, match=r"'.*strip.png' \(1x3000\) would be 256x768000 after resizing"):
        preprocess_image(tmp_path / "strip.png", PRESETS["imagenet"])


def test_input_shape_must_name_an_input_and_match_the_images(tmp_path):
    """validate --images ignored --input-shape: an unknown name passed, and images of 8x8 were fed where
    x:1x3x6x6 was asked for (compress counted MACs at one size and calibrated at another)."""
    _write(tmp_path / "a.png", np.zeros((8, 8, 3)))
    model = _image_model(["N", 3, "H", "W"])
    custom = Preprocess("custom")
    with pytest.raises(InputDataError, match="--input-shape names 'nosuch', which is not a graph input"):
        load_inputs(model, images=tmp_path, preprocess=custom, input_shapes={"nosuch": (1, 3, 8, 8)})
    with pytest.raises(InputDataError, match=r"images come out 3x8x8 per sample for 'x', but --input-shape asks for x:1x3x6x6"):
        load_inputs(model, images=tmp_path, preprocess=custom, input_shapes={"x": (1, 3, 6, 6)})
    assert load_inputs(model, images=tmp_path, preprocess=custom, input_shapes={"x": (1, 3, 8, 8)}).arrays["x"].shape \
        == (1, 3, 8, 8)


def test_input_shape_must_match_the_npz_arrays(tmp_path):
    """validate --inputs FILE.npz --input-shape x:1x3x6x6 ignored the shape silently (exit 0) while the
    arrays were 3x8x8 per sample; compress planned at one size and calibrated at another."""
    model = _image_model(["N", 3, "H", "W"])
    np.savez(tmp_path / "v.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(InputDataError, match=r"the arrays in '.*v.npz' are 3x8x8 per sample for 'x', but --input-shape asks "
                                             r"for x:1x3x6x6; make them agree"):
        load_inputs(model, npz=tmp_path / "v.npz", input_shapes={"x": (1, 3, 6, 6)})
    assert load_inputs(model, npz=tmp_path / "v.npz", input_shapes={"x": (2, 3, 8, 8)}).arrays["x"].shape \
        == (4, 3, 8, 8)


def test_an_input_without_a_shape_is_not_taken_for_a_scalar(tmp_path):
    """A graph input with no shape field: --input-shape X:1x3x8x8 was answered "gives 4 dims for 'x', which has
    0; give all of them, e.g. x:" (an unknown rank taken for a scalar)."""
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.model_io import parse_input_shapes

    model = _image_model(["N", 3, "H", "W"])
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(UnsupportedModelError, match="graph input 'x' has no shape, so its rank is unknown"):
        load_inputs(model, random=2, input_shapes={"x": (1, 3, 8, 8)})
    with pytest.raises(InputDataError, match="has a dim above 2147483647"):
        parse_input_shapes(["x:1x3x9223372036854775808x8"])


def test_values_beyond_a_float16_input_are_named_not_taken_for_infinities(tmp_path):
    """A finite float32 .npz holding 1e6 for a float16 input was cast to inf silently, then refused as "holds NaN
    or Inf values"."""
    model = _image_model(["N", 3, 4, 4], elem=TensorProto.FLOAT16)
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[0, 0, 0, 0] = 1e6
    np.savez(tmp_path / "v.npz", x=x)
    with pytest.raises(InputDataError, match=r"holds values beyond the range of the input's float16 \(largest 1e\+06\)"):
        load_inputs(model, npz=tmp_path / "v.npz")


def test_a_dim_the_model_fixes_to_zero_is_fixed_not_dynamic():
    """An input [batch, 0] (an empty feature block, e.g. no extra features): the 0 was read as dynamic, so
    --keep-flops was refused ('dynamic dims'), the probe fed 1 (which ONNX Runtime refuses), and the
    suggested --input-shape E:1x0 was refused as not positive."""
    from onnx import numpy_helper

    from onnx_alds import compress
    from onnx_alds.model_io import graph_inputs

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Concat", ["h", "E"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 32]),
                                           helper.make_tensor_value_info("E", TensorProto.FLOAT, ["B", 0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 24])],
                              [numpy_helper.from_array(rng.standard_normal((32, 24)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert graph_inputs(model)[1].dims == ("B", 0)
    result = compress(model, keep_flops=0.6, rank_multiple=1)
    assert result.report.macs_before == 32 * 24
    result = compress(model, keep_flops=0.6, rank_multiple=1, input_shapes={"x": (2, 32), "E": (2, 0)})
    assert result.report.achieved <= 0.6
    calibrated = load_inputs(model, random=8)
    assert calibrated.arrays["E"].shape == (8, 0)


def test_inputs_with_a_dynamic_batch_share_one_note():
    """A scikit-learn ColumnTransformer export has one graph input per column: 21 identical notes."""
    from onnx_alds.model_io import resolve_input_shapes

    inputs = [helper.make_tensor_value_info(f"c{i}", TensorProto.FLOAT, ["N", 1]) for i in range(5)]
    graph = helper.make_graph([helper.make_node("Concat", [v.name for v in inputs], ["y"], axis=1)], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes, notes = resolve_input_shapes(model, None, batch_default=1)
    assert all(shape == (1, 1) for shape in shapes.values())
    assert notes == ["inputs 'c0', 'c1', 'c2' and 2 more: dynamic batch dim set to 1"]


def test_a_limited_set_is_spread_over_the_file_not_its_first_samples(tmp_path):
    """The bundled MNIST eval set is sorted by class: its first 100 digits are all '0', so a limit of 100 gave a
    one-class 'accuracy'. Limited sets take evenly spaced samples; an image folder's labels follow them."""
    labels = np.repeat(np.arange(10), 20)
    np.savez(tmp_path / "sorted.npz", x=np.arange(200, dtype=np.float32)[:, None, None, None]
             * np.ones((1, 3, 4, 4), np.float32), labels=labels)
    data = load_inputs(_image_model(["N", 3, 4, 4]), npz=tmp_path / "sorted.npz", limit=10)
    np.testing.assert_array_equal(data.labels, np.arange(10))
    assert data.arrays["x"][0, 0, 0, 0] == 0 and data.arrays["x"][-1, 0, 0, 0] == 199
    assert "10 of 200 samples, evenly spaced" in data.source
    folder = _folder(tmp_path)  # a.png, b.png, c.png in sorted order
    limited = load_inputs(_image_model(["N", 3, 4, 4]), images=folder, preprocess=Preprocess("raw"), limit=2)
    np.testing.assert_allclose(limited.arrays["x"][:, 0, 0, 0], [50, 100])  # a.png and c.png


def test_images_in_formats_not_read_are_counted_in_the_source(tmp_path):
    """A folder of 2 PNGs and 3 TIFF/WebP images used the 2 PNGs without a word about the other 3."""
    digit = np.zeros((28, 28), np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(digit).save(tmp_path / name)
    for name in ("c.tif", "d.webp", "e.TIFF"):
        Image.fromarray(digit).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("a.png,1\n")  # not an image: not counted
    data = load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path, preprocess="mnist")
    assert data.arrays["x"].shape[0] == 2
    assert "2 images; 3 images in other formats left out (.tif, .tiff, .webp: only .jpg/.jpeg/.png/.bmp are read)" \
        in data.source


def test_links_to_nothing_and_subfolders_beside_the_images_are_counted_in_the_source(tmp_path):
    """A dangling link, a link to a folder and a subfolder were left out without a word; a folder of links
    to nothing was told to "put images in it"."""
    digit = np.zeros((28, 28), np.uint8)
    Image.fromarray(digit).save(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(digit).save(tmp_path / "sub" / "b.png")
    (tmp_path / "dir.png").symlink_to(tmp_path / "sub")
    data = load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path, preprocess="mnist")
    assert data.arrays["x"].shape[0] == 1
    assert ("1 images; 2 entries named like images left out: links to no file, or folders (first: 'dir.png'); "
            "1 subfolder not read (first: 'sub')") in data.source
    only_links = tmp_path / "links"
    only_links.mkdir()
    (only_links / "x.jpg").symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(InputDataError, match=r"its 1 entry named like images \('x.jpg'\) is a link to no file, or "
                                             "a folder: link the images themselves"):
        load_inputs(_image_model(["N", 1, 28, 28]), images=only_links, preprocess="mnist")


@pytest.mark.parametrize("names, message", [
    # a folder of TIFF images was told to "put images in it"
    (("a.tif", "b.webp"), r"holds no .jpg/.jpeg/.png/.bmp files; its 2 images are .tif, .webp, which are not read: "
                          r"convert them to PNG"),
    # one holding only '.a_1.png' and '._b_1.png' was said to hold no PNG files: "put images in it"
    ((".a_1.png", "._b_1.png"), r"holds no .jpg/.jpeg/.png/.bmp files but 2 hidden ones \('._b_1.png'; names "
                                r"starting with '.' are skipped.*rename them without the leading"),
])
def test_a_folder_of_images_that_are_not_read_says_why(tmp_path, names, message):
    for name in names:
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / name)
    with pytest.raises(InputDataError, match=message):
        load_inputs(_image_model(["N", 1, 28, 28]), images=tmp_path, preprocess="mnist")


def test_an_initializer_listed_as_an_input_is_named_as_such_when_fed(tmp_path):
    """'scale' (an initializer the graph also lists as an input) in an .npz or --input-shape was "not a graph
    input"; it is one, an overridable default, which onnx-alds reads as the constant it holds."""
    from onnx_alds.inputs import conform_inputs
    from onnx_alds.model_io import check_input_shapes

    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("scale", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.ones(4, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((2, 4), np.float32), scale=np.ones((2, 4), np.float32))
    with pytest.raises(InputDataError, match="'scale', an initializer the graph also lists as an input .* feeds only "
                                             r"the inputs without one \(x\)"):
        load_inputs(model, npz=path)
    with pytest.raises(InputDataError, match="'scale', an initializer the graph also lists as an input"):
        conform_inputs(model, InputSet({"x": np.ones((2, 4), np.float32), "scale": np.ones((2, 4), np.float32)}),
                       "calibration")
    with pytest.raises(InputDataError, match="--input-shape names 'scale', an initializer"):
        check_input_shapes(model, {"scale": (4,)})


def test_dims_named_like_a_given_inputs_take_its_sizes_once_each():
    """adj [N, N] beside x [N, 16] given as 5x16: 5x5, the note said "(N=5, N=5)"."""
    from onnx_alds.model_io import resolve_input_shapes

    graph = helper.make_graph([helper.make_node("MatMul", ["adj", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                               helper.make_tensor_value_info("adj", TensorProto.FLOAT, ["N", "N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])])
    shapes, notes = resolve_input_shapes(helper.make_model(graph), {"x": (5, 16)}, batch_default=1)
    assert shapes == {"x": (5, 16), "adj": (5, 5)}
    assert notes == ["input 'adj': its dims named like those of 'x' take their sizes (N=5)"]


def test_a_truncated_image_is_named_with_what_is_wrong(tmp_path):
    """'cannot read image ... (OSError)': the reason Pillow gives (a truncated file) was dropped."""
    import io

    from PIL import Image

    from onnx_alds.inputs import preprocess_image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(InputDataError, match=r"cannot read image '.*cut.png' \(.*(truncated|broken).*\); remove"):
        preprocess_image(path, PRESETS["imagenet"])


def test_a_past_of_length_zero_in_the_data_agrees_with_an_input_shape_that_sizes_it():
    """--input-shape past:1x2x1x16 (every dim given is at least 1) with calibration arrays of past length 0 (the
    first decoding step) was refused as "2x0x16 per sample ... but --input-shape asks for past:1x2x1x16", so a
    key/value cache model could not be calibrated at its first step under --keep-flops, as the README says."""
    from onnx_alds.inputs import check_sample_dims

    first_step = InputSet({"past": np.zeros((8, 2, 0, 16), np.float32)})
    check_sample_dims(first_step, {"past": (1, 2, 1, 16)}, "the calibration arrays are", "fix")
    with pytest.raises(InputDataError, match=r"the calibration arrays are 2x3x16 per sample for 'past', but "
                                             r"--input-shape asks for past:1x2x1x16"):
        check_sample_dims(InputSet({"past": np.zeros((8, 2, 3, 16), np.float32)}), {"past": (1, 2, 1, 16)},
                          "the calibration arrays are", "fix")
    # the attention mask spans past + current positions: 4 in the first step's data, 6 + 4 as --input-shape sizes it
    step = InputSet({"past": np.zeros((8, 2, 0, 16), np.float32), "mask": np.ones((8, 4), np.int64)})
    check_sample_dims(step, {"past": (1, 2, 6, 16), "mask": (1, 10)}, "the calibration arrays are", "fix")
    with pytest.raises(InputDataError, match=r"the calibration arrays are 5 per sample for 'mask', but --input-shape "
                                             r"asks for mask:1x10"):  # a length no past accounts for
        check_sample_dims(InputSet({"past": np.zeros((8, 2, 0, 16), np.float32), "mask": np.ones((8, 5), np.int64)}),
                          {"past": (1, 2, 6, 16), "mask": (1, 10)}, "the calibration arrays are", "fix")
    # only a mask spans the past: token ids 4 long against an --input-shape of 8 are refused whatever the past
    with pytest.raises(InputDataError, match=r"the calibration arrays are 4 per sample for 'input_ids', but "
                                             r"--input-shape asks for input_ids:1x8"):
        check_sample_dims(InputSet({"past": np.zeros((8, 2, 0, 16), np.float32),
                                    "input_ids": np.ones((8, 4), np.int64)}),
                          {"past": (1, 2, 4, 16), "input_ids": (1, 8)}, "the calibration arrays are", "fix")


def test_images_converted_from_other_modes_are_counted_in_the_source(tmp_path):
    """A grayscale and an RGBA PNG in a folder read as RGB were converted (the alpha dropped) without a word."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "b.png")  # grayscale (mode L)
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "c.png")  # RGBA
    data = load_inputs(_image_model(["N", 3, 8, 8]), images=tmp_path, preprocess="custom")
    assert data.arrays["x"].shape == (3, 3, 8, 8)
    assert "3 images; 2 images converted to RGB (Pillow modes L, RGBA: alpha dropped)" in data.source, data.source


def test_preprocessing_given_with_an_npz_is_refused_not_ignored(tmp_path):
    """load_inputs(npz=..., preprocess="nope") or preprocess=5 loaded the arrays and ignored it without a word
    (the command line refuses --preprocess without --images)."""
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 28, 28), np.float32))
    model = _image_model(["N", 1, 28, 28])
    for preprocess in ("nope", 5, "mnist"):
        with pytest.raises(InputDataError, match=r"applies to images only"):
            load_inputs(model, npz=tmp_path / "x.npz", preprocess=preprocess)
    assert load_inputs(model, npz=tmp_path / "x.npz").arrays["x"].shape == (2, 1, 28, 28)


def test_inputs_sharing_no_sample_axis_are_named_and_a_fixed_first_dim_is_still_the_batch():
    """Arrays of a graph's nodes [20, 64] and its edge list [2, 60] share no sample axis: the error says such
    inputs cannot be calibrated. Random inputs beside an input fixing its first dim (a [2] scale) still take
    that dim as the batch, whatever first dim --input-shape gives the others (it was an error for a while)."""
    from conftest import make_model
    from onnx_alds.inputs import random_inputs

    with pytest.raises(InputDataError, match="graph's nodes and its edge list, cannot be calibrated"):
        InputSet({"x": np.ones((20, 64), np.float32), "ei": np.zeros((2, 60), np.int64)})
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ReduceSum", ["scale"], ["s"]),
             helper.make_node("Mul", ["h", "s"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
                               helper.make_tensor_value_info("scale", TensorProto.FLOAT, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                       [numpy_helper.from_array(np.ones((64, 8), np.float32), "w")])
    arrays = random_inputs(model, 4, input_shapes={"x": (8, 64)}).arrays
    assert arrays["x"].shape == (4, 64) and arrays["scale"].shape == (4,)
