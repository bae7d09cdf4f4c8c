"""--explain: a PNG that shows the preprocessing step by step."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import explain
import inference
import preprocess

SAMPLES = Path(inference.__file__).parent / "sample_test_image"


def fake_prediction(digit):
    probabilities = tuple(0.91 if d == digit else 0.01 for d in range(10))
    return inference.Prediction(digit, 0.91, probabilities)


def test_write_figure_draws_one_row_per_image(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (60, 40), 255).save(blank)
    photo = np.full((300, 400, 3), 230, np.uint8)
    photo[100:220, 180:195] = (20, 30, 120)  # a blue "1"
    rows = [(SAMPLES / "3.png", fake_prediction(3)), (photo, fake_prediction(1)),
            (blank, preprocess.ImageError(f"no digit found in {blank}"))]
    out = tmp_path / "steps.png"
    assert explain.write_figure(rows, out, low_confidence=0.95) == 3
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 500 and height > 3 * 120  # five panels across, three rows down
        assert np.asarray(image.convert("L")).std() > 10  # something was drawn


def test_write_figure_caps_the_rows(tmp_path):
    rows = [(SAMPLES / "3.png", fake_prediction(3))] * (explain.MAX_ROWS + 3)
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
