"""train.py's outputs are one set: killed at any stage, the folder holds the old set or the new one.

Each case runs a tiny training into a folder that already holds a set, and kills the
process (SIGKILL: no clean-up runs) at one stage of writing. Then the folder is read as
the next reader would (loading the model finishes an interrupted commit), and must hold
exactly one consistent set: every file matching the hashes in its metrics.json, and
nothing else that a later inference.py or train.py would trip over.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import outputs
import train
from conftest import FEW_RENDERINGS, FIXTURE, ROOT

# stage -> (what to patch, after how many calls it kills, the set the folder must then hold)
STAGES = {
    "training done, nothing written": ("train.saved_model", 0, "old"),
    "Keras file written": ("train.export_litert", 0, "old"),
    "float export written": ("train.export_litert_int8", 0, "old"),
    "int8 export written": ("train.int8_metrics", 0, "old"),
    "plot written": ("train.run_record", 0, "old"),
    "all staged, before the journal": ("outputs.fsync_path", 0, "old"),
    "journal written, nothing moved": ("outputs.roll_forward", 0, "new"),
    "two files moved": ("os.replace", 3, "new"),
    "all moved, journal left": ("os.replace", len(train.OUTPUT_FILES) + 1, "new"),  # the journal is one too
}
QUICK = ("two files moved",)  # the rest run with -m slow

# Wraps one function so that its n-th call (0: the first, before it runs) SIGKILLs the process.
KILLER = """
import os, signal, sys
import outputs, train
target, after = sys.argv[1], int(sys.argv[2])
def counting(original):
    calls = []
    def wrapped(*args, **kwargs):
        if after == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped
if target == "os.replace":  # counted from the start of the commit only
    commit = outputs.ModelSet.commit
    def counted_commit(self):
        os.replace = counting(os.replace)
        return commit(self)
    outputs.ModelSet.commit = counted_commit
else:
    module, name = target.split(".")
    module = {"train": train, "outputs": outputs}[module]
    setattr(module, name, counting(getattr(module, name)))
train.main(sys.argv[3:])
"""


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_state(folder):
    """'old' or 'new' by the metrics' seed, after checking that every file is the one metrics.json names."""
    metrics = json.loads((folder / train.METRICS_FILE).read_text())
    for name, sha in metrics["files"].items():
        assert digest(folder / name) == sha, f"{name} does not belong to the set metrics.json describes"
    return "new" if metrics["config"]["seed"] == 7 else "old"


@pytest.fixture
def folder_with_a_set(smoke_run, tmp_path):
    out, metrics = smoke_run
    assert metrics["config"]["seed"] != 7
    folder = tmp_path / "models"
    folder.mkdir()
    for name in train.OUTPUT_FILES:
        shutil.copy(out / name, folder / name)
    return folder


def stage_params():
    for stage in STAGES:
        marks = () if stage in QUICK else (pytest.mark.slow,)
        yield pytest.param(stage, id=stage, marks=marks)


@pytest.mark.parametrize("stage", stage_params())
def test_killed_at_any_stage_leaves_one_set(folder_with_a_set, stage):
    target, after, expected = STAGES[stage]
    folder = folder_with_a_set
    args = ["--data", str(FIXTURE), "--epochs", "1", "--realistic-renderings", "1", "--batch-size", "32", "--seed", "7", "--out-dir", str(folder)]
    result = subprocess.run([sys.executable, "-c", KILLER, target, str(after), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]

    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == sorted(train.OUTPUT_FILES), visible  # no temporary file with a real name

    from classifier import load_classifier

    load_classifier.cache_clear()
    load_classifier(folder / train.LITERT_INT8_FILE)  # as inference.py would: finishes a commit
    assert sorted(p.name for p in folder.iterdir()) == sorted(train.OUTPUT_FILES)  # nothing hidden left
    assert set_state(folder) == expected

    import inference

    assert [p.name for p in inference.expand_paths([folder])] == sorted([train.HISTORY_FILE, train.RELIABILITY_FILE])


def test_a_complete_run_replaces_the_set(folder_with_a_set):
    folder = folder_with_a_set
    metrics = train.train(train.TrainConfig(**FEW_RENDERINGS, data=str(FIXTURE), epochs=1, batch_size=32, seed=7, out_dir=str(folder)))
    assert set_state(folder) == "new" and metrics["files"]["mnist_cnn.keras"] == digest(folder / "mnist_cnn.keras")
    assert sorted(p.name for p in folder.iterdir()) == sorted(train.OUTPUT_FILES)


def test_a_diverging_run_stops_and_writes_nothing(folder_with_a_set, monkeypatch):
    """A loss that turns NaN stops the run at once with TrainingDiverged; the old set stays.

    In mixed bfloat16 (what auto picks on many CPUs), so the dtype policy is seen restored after the failure."""
    import keras

    folder = folder_with_a_set
    compile_model = train.compile_model

    def compile_with_a_nan_loss(model, steps, config):
        compile_model(model, steps, config)
        model.compile(optimizer=model.optimizer, loss=lambda y, p: keras.ops.mean(p) * float("nan"),
                      steps_per_execution=1)

    monkeypatch.setattr(train, "compile_model", compile_with_a_nan_loss)
    before = {p.name: digest(p) for p in folder.iterdir()}
    with pytest.raises(train.TrainingDiverged, match="epoch 1"):
        train.train(train.TrainConfig(**FEW_RENDERINGS, data=str(FIXTURE), epochs=3, batch_size=32, seed=7, out_dir=str(folder),
                                      precision="mixed_bfloat16"))
    assert {p.name: digest(p) for p in folder.iterdir()} == before
    assert keras.mixed_precision.global_policy().name == "float32"  # a later model is not built in bfloat16


def test_two_runs_never_write_into_one_folder(tmp_path):
    with outputs.ModelSet(tmp_path, ["a"]):
        with pytest.raises(outputs.OutputError, match="another training run"):
            with outputs.ModelSet(tmp_path, ["a"]):
                pass


def test_a_journal_that_names_no_staging_folder_is_ignored(tmp_path):
    (tmp_path / "a").write_text("mine")
    (tmp_path / outputs.JOURNAL).write_text("../../etc\n")
    outputs.complete_interrupted(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["a"] and (tmp_path / "a").read_text() == "mine"
