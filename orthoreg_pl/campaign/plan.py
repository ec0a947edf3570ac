"""What a campaign runs: its grid checked against the real configs, then the multiruns that cover it.

A campaign is a grid of modes × λ × seeds on one backbone and a set of tasks. Penalised modes
(``*_ortho``) are trained at every λ; the other modes once (they are the λ = 0 reference), so the grid
becomes at most two training multiruns and two merge multiruns (addition and negation swept together
through their experiments). Every mode, task and experiment is composed here, with Hydra's compose
API, before anything is launched: a typo stops the campaign at once with what is accepted, and a
SLURM job the cluster would refuse (``sbatch --test-only``, runs/slurm.py) too.

A campaign's ``name`` is a name, not a path: its folder is ``<paths.campaigns_dir>/<name>`` and
stays there (:func:`check_folder`, run on the command line before Hydra makes the folder, and again
by the job).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from orthoreg_pl.config.groups import CONFIG_DIR
from orthoreg_pl.data.layouts import LAYOUTS
from orthoreg_pl.data.registry import get_task
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.runs.identity import campaign_settings, identity_hash
from orthoreg_pl.runs.slurm import check_submission, job_resources, launcher_overrides, shape_text, uses_slurm
from orthoreg_pl.utils.io import check_writable


@dataclass(frozen=True)
class Multirun:
    """One ``train.py -m`` or ``merge.py -m`` call: the jobs of one stage for one group of modes."""

    script: str  # "train.py" or "merge.py"
    label: str  # names its outcome log, e.g. "train-penalized"
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class CampaignPlan:
    name: str
    arch: str
    tasks: dict[str, str]  # dataset config name -> task name (digits -> Digits)
    penalized: tuple[str, ...]  # modes trained at every λ
    plain: tuple[str, ...]  # modes without the penalty: the λ = 0 reference
    lambdas: tuple[float, ...]
    seeds: tuple[int, ...]
    protocols: tuple[str, ...]  # "addition", "negation" when its control task is present
    skipped_protocols: dict[str, str]  # protocol -> why it does not run
    train: tuple[Multirun, ...]
    merge: tuple[Multirun, ...]
    settings: dict  # what identifies the campaign (its W&B run id)

    @property
    def identity(self) -> str:
        return identity_hash(self.settings)

    def points(self) -> list[tuple[str, float, int]]:
        """Every (mode, λ, seed) the summary has a row for (λ = 0 for modes without the penalty)."""
        rows = [(m, lam, s) for m in self.penalized for lam in self.lambdas for s in self.seeds]
        return rows + [(m, 0.0, s) for m in self.plain for s in self.seeds]


def check_name(name: object) -> str:
    """A campaign name is one folder name: no path separator, not ``.`` or ``..``, not hidden."""
    text = str(name)
    if not text or "/" in text or "\\" in text or "\0" in text or text in (".", "..") or text.startswith("."):
        raise OrthoRegError(
            f"name={text!r}; expected a campaign name: one folder name under paths.campaigns_dir, without "
            "/ or \\ and not starting with a dot (e.g. name=quickstart_lr3e-5)"
        )
    return text


def check_folder(cfg: DictConfig) -> Path:
    """The campaign's folder, ``<paths.campaigns_dir>/<name>``: the name checked, the folder under
    campaigns_dir once links are resolved, and campaigns_dir writable. Returns the folder."""
    name = check_name(cfg.name)
    root = Path(cfg.paths.campaigns_dir)
    folder = root / name
    if folder.resolve().parent != root.resolve():
        raise OrthoRegError(
            f"name={name!r}: {folder} leads outside paths.campaigns_dir ({root}); expected a folder in it"
        )
    check_writable(root, "paths.campaigns_dir")
    return folder


def precheck(argv: list[str] | None = None) -> None:
    """Before Hydra makes the campaign's folder: compose the command line and check the folder
    (exit 2 with one line). A command line that does not compose is left to Hydra's own message."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in argv):  # --help, --cfg, ...: Hydra's business
        return
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="campaign"):
            cfg = compose("campaign", overrides=argv)
        check_folder(cfg)
    except OrthoRegError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (HydraException, OmegaConfBaseException, ValueError):
        return  # a sweep Hydra expands, or a bad override: Hydra says so
    finally:
        GlobalHydra.instance().clear()


def _compose(config_name: str, overrides: list[str], what: str) -> DictConfig:
    try:
        return compose(config_name, overrides=overrides)
    except HydraException as err:
        first = str(err).splitlines()[0]
        raise OrthoRegError(f"{what} does not compose ({first})") from None


def _lambdas(values) -> tuple[float, ...]:
    out = []
    for raw in values:
        try:
            lam = float(raw)
        except (TypeError, ValueError):
            raise OrthoRegError(f"lambdas has {raw!r}; expected finite numbers λ > 0") from None
        if not math.isfinite(lam) or lam <= 0:
            raise OrthoRegError(
                f"lambdas has {raw!r}; expected finite numbers λ > 0 (λ = 0 is the plain mode, e.g. standard)"
            )
        out.append(lam)
    if len(set(out)) != len(out):
        raise OrthoRegError(f"lambdas={list(values)} repeats a value")
    return tuple(out)


def _seeds(values) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in values)
    except (TypeError, ValueError):
        raise OrthoRegError(f"seeds={list(values)}; expected a list of integers") from None
    if not seeds:
        raise OrthoRegError("seeds is empty; expected at least one seed, e.g. seeds=[0]")
    return seeds


def control_present(task: str, data_root: str | Path) -> bool:
    """Generated tasks are always there; a real dataset when its folder is under the data root."""
    if not get_task(task).needs_data_root:
        return True
    layout = LAYOUTS.get(task)
    return layout is not None and (Path(data_root) / layout.folder).is_dir()


def logger_choice(cfg: DictConfig) -> str:
    """The campaign's logger (configs/logger: wandb, csv, tensorboard or none), which its jobs use too:
    every training and merge job is then a run of the campaign's W&B group."""
    names = list(cfg.get("logger") or {})
    return names[0] if names else "none"


def common_overrides(cfg: DictConfig) -> list[str]:
    """Given to every job: the launcher, the logger, the campaign's paths as absolute paths (so its jobs read and write where it
    does), the learning rate if the campaign sets one, and the user's extra overrides."""
    out = [f"hydra/launcher={cfg.launcher}", f"logger={logger_choice(cfg)}"]
    out += [f"paths.{key}={Path(cfg.paths[key]).resolve()}" for key in ("root_dir", "data_root", "cache_dir")]
    if cfg.get("lr") is not None:
        out.append(f"optim.lr={float(cfg.lr)!r}")
    return out + [str(o) for o in cfg.overrides.all]


def train_overrides(cfg: DictConfig) -> list[str]:
    """``train_overrides=[...]`` for the merge jobs: the training settings the campaign gave its
    training jobs besides the experiment, so each merge selects exactly the campaign's runs
    (evaluation/selection.py); none when there are none."""
    given = [str(o) for o in (*cfg.overrides.all, *cfg.overrides.train)]
    settings = [o for o in given if not o.lstrip("+~").startswith(("hydra", "paths."))]
    return [f"train_overrides=[{','.join(json.dumps(o) for o in settings)}]"] if settings else []


def _protocols(experiments: DictConfig, merge_base: list[str], arch: str) -> tuple[dict, dict]:
    """(protocol -> merge experiment that runs, protocol -> why it does not): each experiment composed
    with the campaign's merge overrides, checked to be that protocol on the trained architecture."""
    running, skipped = {}, {}
    for protocol in ("addition", "negation"):
        experiment = experiments.get(protocol)
        if experiment is None:
            skipped[protocol] = "no experiment configured"
            continue
        composed = _compose("merge", [f"experiment={experiment}", *merge_base], f"experiment={experiment}")
        if composed.protocol.name != protocol:
            raise OrthoRegError(
                f"experiments.{protocol}={experiment} runs protocol {composed.protocol.name!r}, not {protocol!r}"
            )
        if composed.model.arch != arch:
            raise OrthoRegError(
                f"experiments.{protocol}={experiment} merges {composed.model.arch} task vectors, but "
                f"experiments.train={experiments.train} trains {arch}"
            )
        control = composed.protocol.get("control")
        if protocol == "negation" and not control_present(control, composed.paths.data_root):
            skipped[protocol] = f"control task {control} not found under {composed.paths.data_root}"
            continue
        running[protocol] = str(experiment)
    return running, skipped


def _merge_launcher_shape(running: dict[str, str], merge_base: list[str]) -> list[str]:
    """Under the SLURM launcher, the job shape the merge experiments need, as ``hydra.launcher`` overrides:
    the merge multirun sweeps its experiments, and Hydra composes the launcher without swept values (it
    would ask for merge.yaml's own trainer). The jobs' configs are unchanged; their shapes must agree."""
    configs = {
        e: compose("merge", [f"experiment={e}", *merge_base], return_hydra_config=True)
        for e in running.values()
    }
    if not any(uses_slurm(c) for c in configs.values()):
        return []
    shapes = {e: job_resources(c.get("trainer"), c.get("data")) for e, c in configs.items()}
    if len({tuple(shape.items()) for shape in shapes.values()}) > 1:
        need = "; ".join(f"{e}: {shape_text(shape)}" for e, shape in shapes.items())
        raise OrthoRegError(
            f"the merge experiments need different SLURM jobs ({need}), but their multirun asks once; give "
            "them the same trainer and data.num_workers (overrides.merge)"
        )
    return launcher_overrides(next(iter(shapes.values())))


def make_plan(cfg: DictConfig) -> CampaignPlan:
    """Check the campaign's grid and turn it into multiruns (see the module docstring)."""
    check_folder(cfg)
    experiments = cfg.experiments
    common = common_overrides(cfg)
    datasets = [str(d) for d in cfg.datasets]
    modes = [str(m) for m in cfg.modes]
    if not datasets:
        raise OrthoRegError(
            "datasets is empty; expected the tasks to fine-tune, e.g. datasets=[digits,shapes]"
        )
    if not modes:
        raise OrthoRegError("modes is empty; expected e.g. modes=[standard,standard_ortho]")
    lambdas = _lambdas(cfg.lambdas if cfg.get("lam") is None else [cfg.lam])
    seeds = _seeds(cfg.seeds)
    train_base = [f"experiment={experiments.train}", *common, *[str(o) for o in cfg.overrides.train]]
    what = (
        f"experiments.train={experiments.train} with dataset={datasets[0]}, launcher={cfg.launcher} "
        "and the campaign's overrides"
    )
    _compose("train", [*train_base, f"dataset={datasets[0]}"], what)
    tasks, penalized, plain, arch = {}, [], [], None
    for dataset in datasets:
        composed = _compose("train", [*train_base, f"dataset={dataset}"], f"dataset={dataset}")
        tasks[dataset] = str(composed.dataset.name)
        arch = str(composed.model.arch)
    for mode in modes:
        composed = _compose("train", [*train_base, f"dataset={datasets[0]}", f"mode={mode}"], f"mode={mode}")
        (penalized if composed.mode.penalized else plain).append(mode)
    if penalized and not lambdas:
        raise OrthoRegError(f"lambdas is empty but modes {penalized} need λ; e.g. lambdas=[0.1,1,10]")

    merge_base = [
        *common,
        f"tasks=[{','.join(tasks.values())}]",
        *train_overrides(cfg),
        *[str(o) for o in cfg.overrides.merge],
    ]
    running, skipped = _protocols(experiments, merge_base, arch)
    merge_base = [*merge_base, *_merge_launcher_shape(running, merge_base)]

    # The larger multirun of each stage, shown to sbatch when the launcher is SLURM's, with the overrides
    # its jobs share (what Hydra composes the launcher's resources from).
    points = max(len(penalized) * len(lambdas), len(plain)) * len(seeds)
    check_submission(compose("train", train_base, return_hydra_config=True), jobs=len(datasets) * points)
    if running:
        check_submission(compose("merge", merge_base, return_hydra_config=True), jobs=len(running) * points)

    seed_list = ",".join(str(s) for s in seeds)
    lam_list = ",".join(repr(lam) for lam in lambdas)  # exact: a searched λ trains as proposed
    groups = [("penalized", penalized, [f"ortho.lam={lam_list}"]), ("plain", plain, [])]
    train, merge = [], []
    for group, group_modes, lam_override in groups:
        if not group_modes:
            continue
        grid = [f"mode={','.join(group_modes)}", *lam_override, f"seed={seed_list}"]
        jobs = (*train_base, f"dataset={','.join(datasets)}", *grid)
        train.append(Multirun("train.py", f"train-{group}", jobs))
        if running:
            sweep = f"experiment={','.join(running.values())}"
            merge.append(Multirun("merge.py", f"merge-{group}", (sweep, *merge_base, *grid)))
    return CampaignPlan(
        name=str(cfg.name),
        arch=arch,
        tasks=tasks,
        penalized=tuple(penalized),
        plain=tuple(plain),
        lambdas=lambdas,
        seeds=seeds,
        protocols=tuple(running),
        skipped_protocols=skipped,
        train=tuple(train),
        merge=tuple(merge),
        settings=campaign_settings(cfg),
    )
