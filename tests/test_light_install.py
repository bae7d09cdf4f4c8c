"""The inference-only install (requirements-inference.txt): the CLI and the web app without TensorFlow.

.ci/run builds that environment and runs this file in it with LIGHT_INSTALL=1. In the full
environment it skips: there TensorFlow is installed, and the other tests cover the same code.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(os.environ.get("LIGHT_INSTALL") != "1",
                                reason="runs in the inference-only environment that .ci/run builds")


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None
    assert importlib.util.find_spec("keras") is None


def test_the_cli_classifies_the_samples():
    result = subprocess.run([sys.executable, "inference.py", "--format", "csv"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == [str(d) for d in range(10)]


def test_the_web_app_answers():
    import app as webapp

    client = webapp.create_app().test_client()
    assert client.get("/health").get_json()["status"] == "ok"
    response = client.post("/api/predict", data=(ROOT / "sample_test_image" / "7.png").read_bytes(),
                           content_type="image/png")
    assert response.status_code == 200 and response.get_json()["digit"] == 7
    assert "tensorflow" not in sys.modules


def test_explain_draws_without_tensorflow(tmp_path):
    import inference

    out = tmp_path / "steps.png"
    with pytest.raises(SystemExit) as exit_:
        inference.main([str(ROOT / "sample_test_image" / "3.png"), "--explain", str(out)])
    assert exit_.value.code == 0 and out.stat().st_size > 1000
