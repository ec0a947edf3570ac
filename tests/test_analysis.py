"""The analysis (issue #11): cosines, column angles, ξ(α1, α2) on the engine, the figures and their data
files, the analysis merge protocol end to end, and the per-layer-type orthogonality monitor."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    MERGE_RUN_OVERRIDES,
    MERGE_SELECT,
    MERGE_TASKS,
    compose_config,
    cpu_trainer,
    fixed_batches,
    make_classifier,
    path_overrides,
)
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader

from orthoreg_pl import OrthoRegError
from orthoreg_pl.analysis.figures import alpha_curves_figure
from orthoreg_pl.analysis.geometry import column_angles, cosine_tables, deviation_from_orthogonal
from orthoreg_pl.analysis.layers import LAYER_TYPES, layer_type
from orthoreg_pl.analysis.monitoring import orthogonality_statistics
from orthoreg_pl.analysis.xi import disagreements, evaluation_points, xi_from_counts
from orthoreg_pl.evaluation.curves import collect_curves
from orthoreg_pl.evaluation.disentanglement import xi_by_rebuilding, xi_grid
from orthoreg_pl.evaluation.engine import MergeEvalModule
from orthoreg_pl.evaluation.protocols.analysis_options import ModeSpec, check_settings, mode_specs
from orthoreg_pl.evaluation.protocols.analysis_run import mode_checksums
from orthoreg_pl.penalties.ortho import ortho_penalty
from orthoreg_pl.task_vectors import TaskVector, TaskVectorInfo, load_run

BLOCK = "visual.transformer.resblocks.0."
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def vector(tensors: dict, task: str) -> TaskVector:
    return TaskVector(tensors, TaskVectorInfo("tiny", "random", "standard", "weight", task))


# ---- pure core ----------------------------------------------------------------------------------------


def test_layer_types():
    assert layer_type(BLOCK + "attn.in_proj_weight") == "attn_in_proj"
    assert layer_type(BLOCK + "attn.out_proj.weight") == "attn_out_proj"
    assert layer_type(BLOCK + "mlp.c_fc.weight") == "mlp_c_fc"
    assert layer_type(BLOCK + "mlp.c_proj.weight") == "mlp_c_proj"
    for other in (BLOCK + "attn.in_proj_bias", BLOCK + "mlp.c_fc.bias", "visual.proj", "visual.conv1.weight"):
        assert layer_type(other) == "other"


def test_cosine_tables_equal_direct_cosines():
    """Whole vector and per layer type: the numbers are TaskVector.cosine of the (restricted) vectors."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        BLOCK + "attn.in_proj_weight": (12, 4),
        BLOCK + "mlp.c_fc.weight": (8, 4),
        "visual.proj": (4, 3),
    }
    vectors = {t: vector({k: torch.randn(s, generator=g) for k, s in shapes.items()}, t) for t in "ABC"}
    vectors["C"].tensors["visual.proj"] = torch.zeros(4, 3)  # zero on one part: cosine undefined there
    tables = cosine_tables(vectors)
    assert set(tables) == {"all", "attn_in_proj", "mlp_c_fc", "other"}
    tasks = list(vectors)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            assert tables["all"][i][j] == pytest.approx(vectors[a].cosine(vectors[b]), abs=1e-12)
            for kind, keys in (
                ("attn_in_proj", [BLOCK + "attn.in_proj_weight"]),
                ("mlp_c_fc", [BLOCK + "mlp.c_fc.weight"]),
            ):
                direct = vectors[a].restrict(keys).cosine(vectors[b].restrict(keys))
                assert tables[kind][i][j] == pytest.approx(direct, abs=1e-12)
    assert tables["other"][2] == [None, None, None] and tables["other"][0][1] is not None


def test_orthonormal_columns_are_at_90_degrees():
    """Orthonormal columns: every angle is 90° (all pairs, and sampled pairs of a big matrix)."""
    for rows, cols, max_pairs in ((40, 12, 4096), (300, 200, 50)):
        q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows)))
        angles = column_angles(q, max_pairs=max_pairs)
        expected_pairs = cols * (cols - 1) // 2 if max_pairs == 4096 else 55  # 11 sampled columns
        assert angles.numel() == expected_pairs
        torch.testing.assert_close(angles, torch.full_like(angles, 90.0), atol=1e-3, rtol=0)
        assert float(deviation_from_orthogonal(angles).max()) < 1e-3
    parallel = torch.ones(5, 3)
    parallel[:, 1] *= -2.0  # antiparallel: 180°
    parallel[:, 2] = 0.0  # a zero column has no angle: its pairs are left out
    assert column_angles(parallel).tolist() == pytest.approx([180.0], abs=1e-2)
    assert deviation_from_orthogonal(column_angles(parallel)).tolist() == pytest.approx([90.0], abs=1e-2)
    wide = torch.linalg.qr(torch.randn(30, 6))[0].T  # [6, 30]: orthonormal rows, not columns
    assert float(deviation_from_orthogonal(column_angles(wide, vectors="min_side")).max()) < 1e-3
    with pytest.raises(OrthoRegError, match="vectors='rows'"):
        column_angles(wide, vectors="rows")


def test_xi_counts_a_hand_made_case():
    """ξ by the definition on 4 inputs per task, grid α ∈ {0, 1}: counted by hand."""
    alphas = [0.0, 1.0]
    points, grid, ref = evaluation_points(alphas, 0)
    assert points == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    # task 1's inputs; its own model at α1 is (α1, 0): rows (0,0) and (1,0) are the references
    predictions = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0], [5, 1, 2, 3], [5, 5, 2, 3]])
    counts_1 = disagreements(predictions, grid, ref)
    # (0,0) vs (0,0): 0; (0,1) vs (0,0): inputs 2, 3 differ -> 2; (1,0) vs (1,0): 0; (1,1) vs (1,0): input 1 -> 1
    assert counts_1.tolist() == [[0, 2], [0, 1]]
    points, grid, ref = evaluation_points(alphas, 1)
    # task 2's inputs; references (0, α2): points (0,0) and (0,1)
    predictions = torch.tensor([[1, 1, 1, 1], [1, 2, 1, 1], [0, 1, 1, 1], [0, 2, 2, 1]])
    counts_2 = disagreements(predictions, grid, ref)
    # (0,0) vs (0,0): 0; (0,1) vs (0,1): 0; (1,0) vs (0,0): input 0 -> 1; (1,1) vs (0,1): inputs 0, 2 -> 2
    assert counts_2.tolist() == [[0, 0], [1, 2]]
    xi, terms = xi_from_counts([counts_1, counts_2], [4, 4])
    assert xi.tolist() == [[0.0, 0.5], [0.25, 0.75]]  # a sum of the two tasks' shares
    assert terms[0].tolist() == [[0.0, 0.5], [0.0, 0.25]] and terms[1].tolist() == [[0.0, 0.0], [0.25, 0.5]]


def test_xi_grid_without_zero_adds_the_references():
    points, grid, ref = evaluation_points([0.5, 1.0], 1)
    assert points[4:] == [(0.0, 0.5), (0.0, 1.0)]  # task 2's own models, not on the grid
    assert ref.tolist() == [[4, 5], [4, 5]] and grid.tolist() == [[0, 1], [2, 3]]
    with pytest.raises(OrthoRegError, match="distinct"):
        evaluation_points([0.0, 0.0], 0)


# ---- ξ on the engine -----------------------------------------------------------------------------------


def _pair_setup(seed: int = 1):
    model = make_classifier()
    template = copy.deepcopy(model.visual)
    head = model.head.weight.detach().clone()
    g = torch.Generator().manual_seed(seed)
    names = [n for n, _ in model.named_parameters() if n.startswith("visual.")]
    taus = [
        {n: 0.3 * torch.randn(model.get_parameter(n).shape, generator=g) for n in names} for _ in range(2)
    ]
    loaders = [DataLoader(fixed_batches(2, 8, seed=s), batch_size=8) for s in (11, 12)]
    return model, template, head, taus, loaders


@pytest.mark.parametrize(
    "tangent,alphas", [(False, [0.0, 0.5, 1.0]), (True, [0.0, 0.5, 1.0]), (False, [0.25, 0.5, 1.0])]
)
def test_engine_xi_equals_rebuilding_per_point(tangent, alphas):
    """3×3 grid: the engine (one model, weights in place; closed form for tangent vectors) gives exactly
    the ξ of a fresh model per grid point."""
    model, template, head, taus, loaders = _pair_setup()
    base = MergeEvalModule(model)
    xi, terms = xi_grid(cpu_trainer(), base, loaders, [head, head], taus, alphas, closed_form=tangent)
    expected, expected_terms = xi_by_rebuilding(
        lambda: copy.deepcopy(template), loaders, [head, head], taus, alphas, tangent=tangent
    )
    assert torch.equal(xi, expected) and torch.equal(terms, expected_terms)
    assert float(xi.max()) > 0  # the case is not trivial
    for name in base.param_names:  # θ0 is back in place
        assert torch.equal(model.get_parameter(name), base.theta0(name))


def test_xi_on_the_axes_follows_the_definition():
    """ξ(0, 0) = 0; on the axis α2 = 0 the task-1 term is 0 (both models are θ0 + α1τ1), and ξ(α1, 0) is
    the share of task-2 inputs whose prediction τ1 alone changes (not 0 in general), and vice versa."""
    model, template, head, taus, loaders = _pair_setup(seed=2)
    alphas = [0.0, 0.5, 1.0]
    xi, terms = xi_grid(cpu_trainer(), MergeEvalModule(model), loaders, [head, head], taus, alphas)
    assert xi[0, 0] == 0
    assert terms[0][:, 0].abs().max() == 0 and terms[1][0, :].abs().max() == 0
    for i, alpha in enumerate(alphas):  # direct count: task 2's inputs under θ0 + α·τ1 against θ0
        changed = 0
        for images, _ in loaders[1]:
            theta0 = copy.deepcopy(template).eval()
            moved = copy.deepcopy(template).eval()
            with torch.no_grad():
                for n, p in moved.named_parameters():
                    p.add_(taus[0]["visual." + n], alpha=alpha)
                changed += int((head_of(theta0, head, images) != head_of(moved, head, images)).sum())
        assert xi[i, 0].item() == pytest.approx(changed / 16)
    assert xi[1:, 0].max() > 0 or xi[0, 1:].max() > 0  # the axes are not 0 here: entangled random vectors


def head_of(visual, head: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    from orthoreg_pl.models.heads import ZeroShotHead

    return ZeroShotHead(head)(visual(images)).argmax(-1)


# ---- settings -----------------------------------------------------------------------------------------


def _settings_cfg(**protocol) -> object:
    return OmegaConf.create({"tasks": ["Digits", "Shapes", "Colors"], "protocol": protocol})


def test_analysis_settings_are_checked():
    own = ModeSpec("standard_ortho", 0.1)
    specs = mode_specs(_settings_cfg(modes=[{"mode": "standard", "lam": 0}]), own)
    assert [s.label for s in specs] == ["standard_ortho λ=0.1", "standard"]
    assert [s.tag for s in specs] == ["standard_ortho_lam0.1", "standard"]
    bad = [
        ({"modes": [{"mode": "nope", "lam": 0}]}, "mode='nope'"),
        ({"modes": [{"mode": "standard", "lam": 1.0}]}, "adds no penalty"),
        ({"modes": [{"mode": "standard_ortho", "lam": -1}]}, "lam=-1"),
        ({"modes": [{"mode": "standard", "lam": 0}, {"mode": "standard", "lam": 0}]}, "twice"),
        ({"modes": [{"mode": "standard", "lr": 1}]}, "expected {mode"),
    ]
    for protocol, message in bad:
        with pytest.raises(OrthoRegError, match=message):
            mode_specs(_settings_cfg(**protocol), own)
    assert check_settings(_settings_cfg())["pairs"] == [("Digits", "Shapes")]  # null: the first two tasks
    for protocol, message in [
        ({"xi": {"pairs": [["Digits", "Cars"]]}}, "Cars not among tasks"),
        ({"xi": {"pairs": [["Digits", "Digits"]]}}, "two different tasks"),
        ({"xi": {"split": "train"}}, "protocol.xi.split='train'"),
        ({"xi": {"max_samples": 0}}, "protocol.xi.max_samples=0"),
        ({"angles": {"max_pairs": "many"}}, "protocol.angles.max_pairs='many'"),
        ({"angles": {"vectors": "rows"}}, "protocol.angles.vectors='rows'"),
    ]:
        with pytest.raises(OrthoRegError, match=message):
            check_settings(_settings_cfg(**protocol))
    with pytest.raises(OrthoRegError, match="protocol.curves='yes'"):
        check_settings(_settings_cfg(curves="yes"))


@pytest.mark.parametrize(
    "experiment",
    [
        "quickstart_analysis",
        "quickstart_clip_analysis",
        "analysis_vitb32",
        "analysis_vitb16",
        "analysis_vitl14",
    ],
)
def test_analysis_experiments_compose_and_validate(experiment, tmp_path):
    from orthoreg_pl.evaluation.validation import validate_merge

    cfg = compose_config([f"experiment={experiment}", f"paths.root_dir={tmp_path}"], config_name="merge")
    with open_dict(cfg):
        cfg.merge_method_name = "task_arithmetic"
    validate_merge(cfg)  # with protocol=analysis it runs validate_analysis
    resolved = OmegaConf.to_container(cfg.protocol, resolve=True)
    assert resolved["name"] == "analysis" and cfg.experiment_kind == "merge"
    grid = 5 if experiment.startswith("quickstart") else 11  # the quickstart keeps a CPU-sized ξ grid
    assert len(resolved["alphas"]) == grid and resolved["objective"]["metric"] == "xi_mean"
    settings = check_settings(cfg)
    assert all(a in cfg.tasks and b in cfg.tasks for a, b in settings["pairs"])
    assert resolved["modes"][1] == {"mode": "standard_ortho", "lam": float(cfg.ortho.lam)}


# ---- figures and data files -----------------------------------------------------------------------------


def check_figure(folder: Path, name: str) -> tuple[list[dict], dict]:
    """A valid PNG of sensible size, with its CSV and JSON beside it; returns their contents."""
    width, height = png_size(folder / f"{name}.png")
    assert 400 <= width <= 5000 and 250 <= height <= 5000, (name, width, height)
    assert (folder / f"{name}.png").stat().st_size > 10_000
    return read_csv(folder / f"{name}.csv"), json.loads((folder / f"{name}.json").read_text())


def test_alpha_curves_from_existing_reports(tmp_path):
    """Curves come from the newest report.json of each mode; the figure's data file holds them."""
    reports = tmp_path / "reports"
    alphas = [0.0, 0.5, 1.0]
    for protocol, mode, lam, tag in (("addition", "standard", 0.0, "standard"),
                                     ("negation", "standard_ortho", 0.1, "standard_ortho_lam0.1")):  # fmt: skip
        curves = (
            {"A": [0.1, 0.2, 0.3], "B": [0.3, 0.2, 0.1], "normalized mean": [0.4, 0.6, 0.5]}
            if protocol == "addition"
            else {"A target": [0.5, 0.3, 0.1], "A control": [0.9, 0.8, 0.7], "B target": [0.7, 0.5, 0.3],
                  "B control": [0.9, 0.9, 0.8]}
        )  # fmt: skip
        folder = reports / protocol / "tiny" / tag / "task_arithmetic" / "seed0-abc"
        folder.mkdir(parents=True)
        report = {"protocol": protocol, "mode": mode, "lam": lam, "merge_method": "task_arithmetic",
                  "alphas": alphas, "val_curves": curves, "per_task": {"A": {}, "B": {}}}  # fmt: skip
        if protocol == "addition":
            report["chosen_alpha"] = 0.5
        else:
            report |= {"threshold": 0.95, "control": "ImageNet", "control_zeroshot": {"val": 0.8}}
        (folder / "report.json").write_text(json.dumps(report))
    modes = [("standard", "standard", 0.0), ("standard_ortho λ=0.1", "standard_ortho", 0.1)]
    found = collect_curves(reports, modes, "tiny", 0, ["A", "B"], "task_arithmetic")
    assert found["standard"]["addition"]["curves"] == {"normalized mean": [0.4, 0.6, 0.5]}
    negation = found["standard_ortho λ=0.1"]["negation"]["curves"]
    assert negation["mean target"] == pytest.approx([0.6, 0.4, 0.2])
    assert negation["mean control"] == pytest.approx([0.9, 0.85, 0.75])
    assert found["standard"]["addition"]["marks"] == {"chosen_alpha": 0.5}  # α* is starred
    marks = found["standard_ortho λ=0.1"]["negation"]["marks"]  # the line at 0.95 × zero-shot control
    assert (
        marks["threshold"] == pytest.approx(0.76) and marks["threshold_label"] == "0.95 × zero-shot ImageNet"
    )
    assert collect_curves(reports, modes, "tiny", 1, ["A", "B"], "task_arithmetic") == {}  # other seed
    out = tmp_path / "figs"
    alpha_curves_figure(found, out, "test")
    rows, payload = check_figure(out, "alpha_curves")
    assert len(rows) == 9 and payload["modes"] == json.loads(json.dumps(found))
    assert [float(r["value"]) for r in rows if r["curve"] == "normalized mean"] == [0.4, 0.6, 0.5]


# ---- the protocol end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_mode_runs(merge_runs, cache_dir, tmp_path_factory) -> Path:
    """merge_runs' standard_ortho runs (λ 0.1) beside standard runs of the same tasks (3 steps each)."""
    from orthoreg_pl.training.fit import train

    tmp = tmp_path_factory.mktemp("analysis_runs")
    shutil.copytree(merge_runs / "runs", tmp / "runs")
    for task in MERGE_TASKS:
        overrides = [*MERGE_RUN_OVERRIDES, f"dataset={task.lower()}", "mode=standard"]
        train(
            compose_config(
                [*overrides, *path_overrides(tmp, cache_dir, output_dir=tmp / "runs" / f"{task}-standard")]
            )
        )
    return tmp


def test_analysis_report_end_to_end(two_mode_runs, cache_dir, tmp_path):
    """merge.py's pipeline with protocol=analysis: every figure a valid PNG beside the data it plots,
    report.md embedding them, numbers equal to direct computations, the objective ξ of merge.py's mode."""
    from orthoreg_pl.evaluation.pipeline import run_merge

    out = tmp_path / "report"
    cfg = compose_config(
        [
            "experiment=quickstart_analysis",
            "mode=standard_ortho",
            f"tasks=[{','.join(MERGE_TASKS)}]",
            "protocol.alphas=[0.0,0.5,1.0]",
            f"protocol.xi.pairs=[[{','.join(MERGE_TASKS)}]]",
            "protocol.xi.max_samples=100",
            "protocol.angles.max_pairs=200",
            MERGE_SELECT,
            *path_overrides(two_mode_runs, cache_dir, output_dir=out),
            f"paths.reports_dir={tmp_path / 'reports'}",
        ],
        config_name="merge",
    )
    with open_dict(cfg):
        cfg.merge_method_name = "task_arithmetic"
    report = run_merge(cfg)
    saved = json.loads((out / "report.json").read_text())
    labels = ["standard_ortho λ=0.1", "standard"]  # merge.py's own mode first
    assert [m["label"] for m in saved["analysis"]["modes"]] == labels
    assert (
        saved["objective"]["metric"] == "xi_mean"
        and report["objective"]["value"] == saved["per_task"][labels[0]]["xi_mean"]
    )

    vectors = {
        label: {t: load_run(Path(m["inputs"][t]["path"]).parent) for t in MERGE_TASKS}
        for label, m in zip(labels, saved["analysis"]["modes"])
    }
    assert {m["inputs"]["Digits"]["mode"] for m in saved["analysis"]["modes"]} == {
        "standard",
        "standard_ortho",
    }

    md = (out / "report.md").read_text()
    blocks: list[set[int]] = [set()]  # every markdown table keeps one column count (escaped pipes in cells)
    for line in md.splitlines():
        if line.startswith("|"):
            blocks[-1].add(len(re.split(r"(?<!\\)\|", line)))
        elif blocks[-1]:
            blocks.append(set())
    assert len(blocks) > 3 and all(len(b) <= 1 for b in blocks)
    figures = saved["figures"]
    expected = {"cosine_heatmap", "cosine_by_layer", "angles_standard_ortho_lam0.1", "angles_standard",
                "angles_by_mode", "angles_summary", "xi"}  # fmt: skip
    assert set(figures) == expected  # no α curves: no addition / negation report under reports_dir
    for name, png in figures.items():
        rows, payload = check_figure(out, name)
        assert f"]({png})" in md and f"]({name}.csv)" in md
        assert len(rows) == len(saved["tables"].get(name, {"data": rows})["data"])

    rows, payload = check_figure(out, "cosine_heatmap")  # the plotted numbers are the direct cosines
    for label in labels:
        matrix = payload["modes"][label]["all"]
        direct = vectors[label]["Digits"].cosine(vectors[label]["Shapes"])
        assert matrix[0][1] == pytest.approx(direct, abs=1e-9) and matrix[1][1] == pytest.approx(1.0)
        csv_value = [r for r in rows if (r["mode"], r["task_a"], r["task_b"]) == (label, "Digits", "Shapes")]
        assert float(csv_value[0]["cosine"]) == pytest.approx(direct, abs=1e-9)

    rows, payload = check_figure(out, "xi")
    assert len(rows) == 2 * 9 and payload["alphas"] == [0.0, 0.5, 1.0]
    for r in rows:
        assert float(r["xi"]) == pytest.approx(float(r["xi_task_1"]) + float(r["xi_task_2"]))
        if float(r["alpha_2"]) == 0:
            assert float(r["xi_task_1"]) == 0  # the own-task term vanishes on its axis
    mine = [float(r["xi"]) for r in rows if r["mode"] == labels[0]]
    assert saved["objective"]["value"] == pytest.approx(sum(mine) / len(mine))
    assert saved["analysis"]["xi"]["inputs"] == {"Digits": 100, "Shapes": 100}

    summary, _ = check_figure(out, "angles_summary")
    _, hist = check_figure(out, "angles_by_mode")
    assert {r["task"] for r in summary} == {"all"}  # what the bars show
    for series in hist["series"]:  # each plotted histogram holds every sampled pair of its summary row
        match = [r for r in summary if (r["mode"], r["weights"], r["layer_type"]) ==
                 (series["mode"], series["weights"], series["layer_type"])]  # fmt: skip
        assert sum(series["counts"]) == int(match[0]["pairs"]) > 0
    assert {r["layer_type"] for r in summary} == set(LAYER_TYPES)
    assert saved["reference_check"]["beyond_tolerance"] == []
    assert mode_checksums(cfg) == saved["analysis"]["mode_checksums"]  # what a re-run compares to reuse it
    assert getattr(run_merge(cfg), "skipped", False)  # the same analysis again: reused, not recomputed

    import wandb

    from orthoreg_pl.evaluation.figure_logging import log_figures

    stub = _StubWandb(tmp_path / "wandb")  # W&B: every figure as an image, every table as a table
    keys = log_figures(stub, saved, out)
    assert set(keys) == {f"analysis/{n}" for n in figures} | {f"analysis/{n}_table" for n in saved["tables"]}
    logged = {k: v for row in stub.recorder.rows for k, v in row.items()}
    assert all(isinstance(logged[f"analysis/{n}"][0], wandb.Image) for n in figures)
    assert (
        isinstance(logged["analysis/xi_table"], wandb.Table) and len(logged["analysis/xi_table"].data) == 18
    )


# ---- the training-time monitor ---------------------------------------------------------------------------


class _Recorder:
    """Stands in for a wandb run: records what is logged, accepts everything else."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.config = SimpleNamespace(update=lambda *a, **k: None)

    def log(self, row: dict, *args, **kwargs) -> None:
        self.rows.append(row)

    def __getattr__(self, name: str):
        return lambda *a, **k: None


class _StubWandb(WandbLogger):
    def __init__(self, save_dir: Path) -> None:
        super().__init__(offline=True, save_dir=str(save_dir))
        self.recorder = _Recorder()

    @property
    def experiment(self):  # no wandb process: what the monitor logs is recorded
        return self.recorder


def test_monitor_logs_per_layer_type_keys(tmp_path):
    """Per layer type: penalty share (summing to 1), ‖ΔW‖, angle mean and spread, one row per step to the
    loggers (with a W&B histogram per type); the totals still through LightningModule.log; once per
    optimizer step under gradient accumulation."""
    from orthoreg_pl.callbacks.orthogonality_monitor import OrthogonalityMonitor
    from orthoreg_pl.modules import StandardOrthoFineTuning

    with pytest.raises(ValueError, match="max_pairs=0"):
        OrthogonalityMonitor(max_pairs=0)
    module = StandardOrthoFineTuning(make_classifier(), lr=1e-2, warmup_steps=1, lam=0.1)
    wandb_logger = _StubWandb(tmp_path)
    monitor = OrthogonalityMonitor(every_n_steps=1, max_pairs=64)
    trainer = cpu_trainer(
        max_steps=2, accumulate_grad_batches=2, limit_val_batches=0, logger=wandb_logger, callbacks=[monitor]
    )
    trainer.fit(module, DataLoader(fixed_batches(4, batch_size=2), batch_size=2))
    tv = module.task_vector()
    matrices = [tv[n].double() for n in module.penalized_names]
    penalty = trainer.callback_metrics["monitor/ortho_penalty"].item()
    assert penalty == pytest.approx(ortho_penalty(matrices).item(), rel=1e-5)
    rows = [r for r in wandb_logger.recorder.rows if "monitor/attn_in_proj/penalty_share" in r]
    steps = [r["trainer/global_step"] for r in rows]  # the step LightningModule.log gives the same batch
    assert len(rows) == 2 and steps == sorted(set(steps))  # once per optimizer step
    last = rows[-1]
    for kind in LAYER_TYPES:
        for key in ("penalty_share", "delta_norm", "angle_dev_mean", "angle_dev_std"):
            assert isinstance(last[f"monitor/{kind}/{key}"], float), (kind, key)
        assert 0 <= last[f"monitor/{kind}/angle_dev_mean"] <= 90
        assert last[f"monitor/{kind}/angle_dev_hist"].__class__.__name__ == "Histogram"
    assert sum(last[f"monitor/{kind}/penalty_share"] for kind in LAYER_TYPES) == pytest.approx(1.0, rel=1e-5)
    c_fc = [n for n in tv if layer_type(n) == "mlp_c_fc"]
    expected = torch.sqrt(sum(tv[n].double().square().sum() for n in c_fc))
    assert last["monitor/mlp_c_fc/delta_norm"] == pytest.approx(expected.item(), rel=1e-5)
    monitor.histograms = False  # no histogram: the same row without them
    assert not any(k.endswith("_hist") for k in monitor._histograms({}))


def test_monitor_statistics_before_the_first_step():
    """ΔW = 0: norms 0, the penalty Σ√k, and no angle (zero columns have none)."""
    model = make_classifier()
    matrices = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.ndim == 2}
    metrics, deviations = orthogonality_statistics(matrices, matrices, max_pairs=16)
    assert deviations == {} and not any(k.endswith("angle_dev_mean") for k in metrics)
    assert metrics["monitor/delta_norm"].item() == 0
    assert metrics["monitor/ortho_penalty"].item() == pytest.approx(
        ortho_penalty(list(matrices.values())).item()
    )
