"""Audit 2: a run stopped between an ingredient's two writes (curves, weights) never leaves an ingredient
that a later run trusts next to curves of another training run."""

import pytest

import soupline.train as train_mod
from tests.test_train_soup import _train


def test_a_run_killed_while_writing_curves_leaves_no_ingredient(tiny_model, tmp_path, monkeypatch):
    def die(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a SIGKILL / Ctrl-C between the two writes

    monkeypatch.setattr(train_mod, "write_curves", die)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model, tmp_path, "ing")
    assert not (tmp_path / "ing").exists()  # not built: the next run trains it and writes its curves
    monkeypatch.undo()
    _train(tiny_model, tmp_path, "ing")
    assert (tmp_path / "ing" / "train_info.json").exists() and (tmp_path / "curves-ing").is_dir()
