"""detector.py's command: it fits the "not a digit" detector and replaces its file only when
the new one is whole; bad input is one line and a non-zero exit, and the old file stays."""

import functools
import subprocess
import sys

import numpy as np
import pytest

import detector
from classifier import Classifier, opened
from conftest import FIXTURE, ROOT

TINY = ["--negatives", "8", "--renderings", "2", "--epochs", "1"]  # a detector in seconds: the command, not the model


def test_fit_writes_a_detector_that_loads(tmp_path, small_mnist, capsys):
    out = tmp_path / "detector.tflite"
    detector.main(["--data", str(FIXTURE), "--out", str(out), *TINY])
    scores = opened(out, functools.partial(Classifier, width=1))(small_mnist["x_test"][:20])
    assert scores.shape == (20, 1) and np.all((scores >= 0) & (scores <= 1))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("fitted on ") and printed[1].startswith("threshold logit ") and printed[-1] == f"wrote {out} ({out.stat().st_size / 1000:.0f} KB)"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no staged file left behind


@pytest.mark.parametrize("problem", ["bad data", "no folder", "out is a folder"])
def test_a_failed_fit_says_why_in_one_line_and_keeps_the_old_file(tmp_path, problem, capsys):
    out = tmp_path / "detector.tflite"
    out.write_bytes(b"the detector the user had")
    data = FIXTURE
    if problem == "bad data":
        data = tmp_path / "mnist.npz"
        data.write_bytes(b"not an archive")
    elif problem == "no folder":
        out = tmp_path / "missing" / "detector.tflite"
    else:
        out = tmp_path / "a folder"
        out.mkdir()
    with pytest.raises(SystemExit) as exit_:
        detector.main(["--data", str(data), "--out", str(out), *TINY])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert str(data if problem == "bad data" else out) in message
    assert (tmp_path / "detector.tflite").read_bytes() == b"the detector the user had"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing staged left


def test_bad_settings_are_one_line_errors():
    result = subprocess.run([sys.executable, "detector.py", "--epochs", "0"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --epochs must be at least 1") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["detector", "verifier"])
def test_the_shipped_files_have_the_layers_the_code_builds(name):
    # the defaults reproduce the shipped files: the detector and the segment verifier are both build_detector()'s
    import verifier
    from ai_edge_litert.interpreter import Interpreter

    path = {"detector": detector.DETECTOR_FILE, "verifier": verifier.VERIFIER_FILE}[name]
    built = {tuple(np.moveaxis(np.zeros(w.shape), -1, 0).shape)  # Keras keeps out-channels last, LiteRT first
             for w in detector.build_detector().weights if len(w.shape) >= 2}
    shipped = {tuple(int(n) for n in d["shape"]) for d in Interpreter(model_path=str(path)).get_tensor_details()}
    assert len(built) == 5 and built <= shipped
