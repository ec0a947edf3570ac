"""``python -m orthoreg_pl.data check``: the report on a healthy tree and on trees with one defect each."""

from __future__ import annotations

import runpy
import sys

import pytest
from fake_trees import BUILDERS, DEFECTS, copy_dataset, truncate_image, write_image

from orthoreg_pl.data.check import check_dataset, check_root, image_problem, main
from orthoreg_pl.data.layouts import LAYOUTS

REAL = list(BUILDERS)


@pytest.mark.parametrize("task", REAL)
def test_healthy_tree(task, fake_data):
    """Found, every split counted, no problem (expected counts = the tiny tree's)."""
    tree = fake_data[task]
    report = check_dataset(task, tree.root, expected=tree.counts)
    assert report.status == "ok" and report.healthy and report.problem is None, report.problem
    assert report.classes == LAYOUTS[task].num_classes
    assert {c.split: (c.found, c.expected) for c in report.counts} == {
        split: (n, n) for split, n in tree.counts.items()
    }


def test_counts_are_compared_with_datasets_md(fake_data):
    """By default a split size other than docs/data.md's is the problem; lenient counts accept it."""
    tree = fake_data["Cars"]
    strict = check_dataset("Cars", tree.root)
    assert strict.status == "problem"
    assert strict.problem == (
        f"wrong count: train pool has 24 images under {tree.root / 'stanford_cars'}, docs/data.md expects 8144"
    )
    assert [(c.split, c.found, c.expected) for c in strict.counts] == [
        ("train_pool", 24, 8144),
        ("test", 10, 8041),
    ]
    lenient = check_dataset("Cars", tree.root, strict_counts=False)
    assert lenient.healthy and lenient.count("test").expected == 8041


@pytest.mark.parametrize("defect", DEFECTS, ids=str)
def test_one_defect(defect, fake_data, tmp_path):
    """The first concrete problem, with the path the layout expects."""
    tree = fake_data[defect.task]
    root = copy_dataset(tree, tmp_path)
    path = defect.apply(root)
    report = check_dataset(defect.task, root, strict_counts=False)
    assert report.status == "problem" and not report.healthy
    assert str(path) in report.problem and defect.expect in report.problem, report.problem


def test_missing_dataset_and_missing_root(tmp_path):
    report = check_dataset("SUN397", tmp_path)
    assert report.status == "missing" and str(tmp_path / "sun397") in report.problem
    report = check_dataset("SUN397", tmp_path / "nowhere")
    assert report.status == "problem" and str(tmp_path / "nowhere") in report.problem


def test_image_check_modes(fake_data, tmp_path):
    """quick finds a truncated file from its tail; none skips the files; full decodes everything."""
    root = copy_dataset(fake_data["GTSRB"], tmp_path)
    counts = fake_data["GTSRB"].counts
    path = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00004.ppm"
    truncate_image(path)
    assert check_dataset("GTSRB", root, expected=counts, images="none").healthy
    for mode in ("quick", "full"):
        report = check_dataset("GTSRB", root, expected=counts, images=mode)
        assert report.problem.startswith("GTSRB test: unreadable image") and str(path) in report.problem


def test_parallel_image_check_reports_the_first_problem_in_order(fake_data, tmp_path, monkeypatch):
    """Big trees are checked by a process pool in chunks; the problem reported is still the first one."""
    from orthoreg_pl.data import check

    monkeypatch.setattr(check, "_PARALLEL_FROM", 1)
    monkeypatch.setattr(check, "_CHUNK", 3)
    paths = [write_image(tmp_path / f"{i:02d}.jpg", i) for i in range(20)]
    assert check.first_image_problem(paths, "quick", workers=2) is None
    for i in (16, 7):
        truncate_image(paths[i])
    problem = check.first_image_problem(paths, "quick", workers=2)
    assert problem.startswith("unreadable image") and str(paths[7]) in problem


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".ppm"])
def test_image_problem_per_format(suffix, tmp_path):
    path = write_image(tmp_path / f"a{suffix}", 3)
    assert image_problem(path, "quick") is None and image_problem(path, "full") is None
    truncate_image(path)
    for mode in ("quick", "full"):
        assert str(path) in image_problem(path, mode)
    assert "missing" in image_problem(tmp_path / f"absent{suffix}")


def test_check_root_defaults_to_all_nine(tmp_path):
    reports = check_root(tmp_path)
    assert [r.task for r in reports] == list(LAYOUTS)
    assert all(r.status == "missing" for r in reports)


def test_command_healthy_and_damaged(fake_data, tmp_path, capsys):
    root = fake_data["MNIST"].root
    assert main(["check", "--root", str(root), "--tasks", "mnist", "cars", "--lenient-counts"]) == 0
    out = capsys.readouterr().out
    assert "MNIST" in out and "Cars" in out and "ok" in out and "40/60000" in out
    assert main(["check", "--root", str(root), "--tasks", "MNIST"]) == 1  # strict counts: 40 != 60000
    assert "wrong count" in capsys.readouterr().out
    damaged = copy_dataset(fake_data["RESISC45"], tmp_path)
    (damaged / "resisc45" / "resisc45-test.txt").unlink()
    assert main(["check", "--root", str(damaged), "--tasks", "RESISC45", "--lenient-counts"]) == 1
    out = capsys.readouterr().out
    assert f"\nRESISC45: split list {damaged / 'resisc45' / 'resisc45-test.txt'} not found" in out
    assert main(["check", "--root", str(root), "--tasks", "NoSuchSet"]) == 2
    assert "NoSuchSet" in capsys.readouterr().err


def test_python_dash_m(fake_data, monkeypatch, capsys):
    """``python -m orthoreg_pl.data check`` runs the same command and exits with its status."""
    root = str(fake_data["SVHN"].root)
    monkeypatch.setattr(
        sys, "argv", ["orthoreg_pl.data", "check", "--root", root, "--tasks", "SVHN", "--lenient-counts"]
    )
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("orthoreg_pl.data", run_name="__main__")
    assert exit_.value.code == 0 and "SVHN" in capsys.readouterr().out


def test_the_quickstart_tasks_are_known_and_need_no_data_root(tmp_path, capsys):
    """``--tasks digits``: generated offline, so healthy without a data root, with its split sizes."""
    assert main(["check", "--root", str(tmp_path / "nothing"), "--tasks", "digits", "Quadrants"]) == 0
    out = capsys.readouterr().out
    assert "Digits" in out and "Quadrants" in out and "ok" in out and "359" in out
    (report,) = check_root(tmp_path / "nothing", ["Digits"])
    assert report.healthy and report.classes == 10 and report.count("test").found == 359
