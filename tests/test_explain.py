"""--explain: a PNG that shows the preprocessing step by step."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import decode
import explain
import inference
import preprocess
from errors import ImageError

SAMPLES = Path(inference.__file__).parent / "sample_test_image"


def fake_prediction(digit):
    probabilities = tuple(0.91 if d == digit else 0.01 for d in range(10))
    return inference.Prediction(digit, 0.91, probabilities)


def traced(source):
    """(source, outcome, trace) as the CLI hands them to explain.write_figure."""
    trace = preprocess.Trace()
    try:
        preprocess.to_mnist(decode.decode(source), trace)
        return source, fake_prediction(3), trace
    except ImageError as error:
        return source, error, trace


def test_write_figure_draws_one_row_per_image(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (60, 40), 255).save(blank)
    photo = np.full((300, 400, 3), 230, np.uint8)
    photo[100:220, 180:195] = (20, 30, 120)  # a blue "1"
    rows = [traced(SAMPLES / "3.png"), traced(photo), traced(blank), (tmp_path / "gone.png", ImageError("gone"), None)]
    out = tmp_path / "steps.png"
    assert explain.write_figure(rows, out, low_confidence=0.95) == 4
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 500 and height > 4 * 120  # five panels across, four rows down
        assert np.asarray(image.convert("L")).std() > 10  # something was drawn


def test_write_figure_draws_without_preprocessing_again(tmp_path, monkeypatch):
    rows = [traced(np.full((200, 200), 255, np.uint8) - np.eye(200, dtype=np.uint8) * 200)]
    monkeypatch.setattr(preprocess, "to_mnist", None)  # drawing must not need it
    assert explain.write_figure(rows, tmp_path / "one.png") == 1


def test_write_figure_caps_the_rows(tmp_path):
    rows = [traced(SAMPLES / "3.png")] * (explain.MAX_ROWS + 3)
    assert explain.write_figure(rows, tmp_path / "many.png") == explain.MAX_ROWS


@pytest.mark.skipif(not Path(inference.DEFAULT_MODEL).is_file(),
                    reason=f"no trained model at {inference.DEFAULT_MODEL} (python train.py makes one)")
def test_cli_explain_writes_a_png(tmp_path, capsys):
    out = tmp_path / "explain.png"
    with pytest.raises(SystemExit) as exit_:
        inference.main([str(SAMPLES / "3.png"), str(SAMPLES / "7.png"), "--explain", str(out)])
    assert exit_.value.code == 0
    assert f"wrote {out}" in capsys.readouterr().err
    with Image.open(out) as image:
        image.verify()
