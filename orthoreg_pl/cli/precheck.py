"""What ``python train.py ...`` and ``python merge.py ...`` do before Hydra runs the job: compose the
config from the command line and validate it, so that a typo ends in one line and exit status 2
before any folder is made, data read or model built. Nothing here loads torch, Lightning or open_clip:
a usage error or ``--help`` costs well under a second and a half of CPU (benchmarks/cli.py).

Hydra's own composition errors (an unknown group option, a malformed override) keep their message,
on one line, and the script's usage line follows. A multirun is checked job by job (the basic
sweeper's grid); values a sweeper proposes later are checked by each job itself. A multirun through
the SLURM launcher is also shown to ``sbatch --test-only`` (runs/slurm.py), with the resources Hydra's
launcher will ask for (composed from the overrides the jobs share): a job the cluster would refuse
stops here, before Hydra writes ``multirun.yaml``.
"""

from __future__ import annotations

import os
import string
import sys
from collections.abc import Callable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

import orthoreg_pl.cli.help  # noqa: F401  (registers ${script_groups:}, which --help resolves)
from orthoreg_pl.config.groups import CONFIG_DIR, check_experiment_kind
from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.evaluation.validation import validate_merge
from orthoreg_pl.runs.slurm import check_slurm_multirun, uses_slurm
from orthoreg_pl.training.validation import validate_train

USAGE = {
    "train": "usage: python train.py dataset=<task> [mode=<mode>] [ortho.lam=<λ>] [experiment=<name>] "
    "[-m for a sweep]; python train.py --help lists the options",
    "merge": "usage: python merge.py experiment=<addition|negation|analysis>_<vitb32|vitb16|vitl14> "
    "(or quickstart_clip_<addition|negation|analysis>) [mode=<mode>] [ortho.lam=<λ>] [-m for a sweep]; "
    "python merge.py --help lists the options",
}
VALIDATORS: dict[str, Callable[[DictConfig], None]] = {"train": validate_train, "merge": validate_merge}
MULTIRUN_FLAGS = ("-m", "--multirun")
HELP_FLAGS = ("--help", "-h")
# What a bad command line raises while composing and checking (Hydra raises ValueError for `group=null`).
BAD_INPUT = (OrthoRegError, HydraException, OmegaConfBaseException, ValueError)
MAX_CHECKED_JOBS = 512  # a larger basic-sweeper grid is checked on its first jobs; each job checks itself


def one_line(message: str) -> str:
    """Hydra's multi-line messages (e.g. a list of available options, one per line) on one line."""
    out, listing = "", False
    message = str(message).split("Config search path:")[0]  # where Hydra looked: noise to a user
    for line in (raw.strip() for raw in message.splitlines()):
        if not line:
            continue
        option = " " not in line  # a bare name, as Hydra lists the options of a group
        if not out:
            out = line
        elif option and (listing or out.endswith(":")):
            out += (" " if out.endswith(":") else ", ") + line
        else:
            out += (" " if out.endswith(".") else "; ") + line
        listing = option and (listing or out.endswith(line))
    return out


def fail(kind: str, message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)
    print(USAGE[kind], file=sys.stderr)
    sys.exit(2)


def job_overrides(argv: list[str]) -> list[list[str]] | None:
    """The overrides of each job the command line stands for (one unless ``-m``); None when a flag
    asks Hydra for something else (``--help``, ``--cfg``, another config dir or name)."""
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return None
    parser = OverridesParser.create()
    given: dict[str, str] = {}
    for override in overrides:  # Hydra's parse error does not say which override it is
        try:
            key = parser.parse_override(override).get_key_element()
        except HydraException as err:  # OverrideParseException, or HydraException for some syntax
            raise OrthoRegError(f"the override {override} does not parse ({one_line(str(err))})") from None
        key = key.lstrip("+~")
        # Hydra would take the last one without a word; hydra.* is Hydra's own (Lightning's DDP launcher
        # starts a run's other processes with hydra.run.dir given again)
        if key in given and not key.startswith("hydra."):
            raise OrthoRegError(f"{key} is given twice ({given[key]} and {override}); give it once")
        given[key] = override
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parser.parse_overrides(overrides=overrides)
    try:
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException:  # a sweep the basic sweeper cannot expand (interval, ...): its sweeper's job
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return jobs[:MAX_CHECKED_JOBS]


def sweep_base(argv: list[str]) -> list[str]:
    """The overrides every job of a multirun shares: Hydra composes the launcher's config (its SLURM
    resources included) from these alone, without the swept values (``experiment=a,b`` is not in it)."""
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def compose_job(kind: str, overrides: list[str]) -> DictConfig:
    """The config one job will get (with the ``hydra`` node, so its run folder can be resolved)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=kind):
        return compose(config_name=kind, overrides=overrides, return_hydra_config=True)


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """``+key=value`` adds a key: refused unless something reads it, i.e. it lands in a node that is
    built from the config (``_target_``: its keys are the constructor's arguments) or names a config
    group (``+experiment=...``); ``+foo=1`` would otherwise be accepted without a word."""
    parser = OverridesParser.create()
    for text in overrides:
        override = parser.parse_override(text)
        if not override.is_add() and not override.is_force_add():
            continue
        key = override.key_or_group
        if (CONFIG_DIR / key).is_dir():
            continue  # a config group
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else None
        if not (OmegaConf.is_dict(node) and "_target_" in node):
            raise OrthoRegError(
                f"{text} adds {key}, which nothing reads; expected an existing key "
                "(--help lists the config) or an argument of a node built from _target_"
            )


def check_job(kind: str, overrides: list[str]) -> DictConfig:
    """Compose and validate one job (its config back); OrthoRegError (or Hydra's error) when it would not run."""
    cfg = compose_job(kind, overrides)
    VALIDATORS[kind](cfg)  # first: a rule names what a known key accepts
    check_added_keys(cfg, overrides)
    HydraConfig.instance().set_config(cfg)
    try:
        OmegaConf.select(cfg, "hydra.run.dir", throw_on_missing=True)  # the run folder's name resolves
    finally:
        HydraConfig.instance().cfg = None
    return cfg


def help_text(kind: str, overrides: list[str]) -> str:
    """The script's ``--help``: configs/hydra/help/<kind>.yaml's template with the composed config.

    Rendered here rather than by Hydra, whose help lists every option of every config group
    (Hydra's own included) whether or not the template shows them: over a second of CPU."""
    cfg = compose_job(kind, overrides)
    HydraConfig.instance().set_config(cfg)
    try:
        template = OmegaConf.select(cfg, "hydra.help.template")
    finally:
        HydraConfig.instance().cfg = None
    with open_dict(cfg):
        del cfg["hydra"]
    return string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(cfg))


def precheck(kind: str, argv: list[str] | None = None) -> None:
    """Exit 2 with one line and the usage when the command line would give a bad job; print the help
    and exit 0 for ``--help``."""
    argv = sys.argv[1:] if argv is None else argv
    check_experiment_kind(kind, argv)
    if os.environ.get("ORTHOREG_SKIP_PRECHECK") == "1":
        return
    if any(a in HELP_FLAGS for a in argv):
        try:
            print(help_text(kind, [a for a in argv if not a.startswith("-")]), flush=True)
        except BAD_INPUT as err:
            fail(kind, str(err))
        except BrokenPipeError:  # `python train.py --help | head`
            sys.stdout = None
        sys.exit(0)
    try:
        jobs = job_overrides(argv)
        checked = []
        for overrides in jobs or []:
            try:
                checked.append((overrides, check_job(kind, overrides)))
            except OrthoRegError as err:
                if len(jobs) > 1:
                    raise OrthoRegError(f"{err} (in the job {' '.join(overrides)})") from None
                raise
        if checked and any(a in MULTIRUN_FLAGS for a in argv) and uses_slurm(checked[0][1]):
            check_slurm_multirun(compose_job(kind, sweep_base(argv)), checked)
    except BAD_INPUT as err:
        fail(kind, str(err))
    finally:
        GlobalHydra.instance().clear()


def start(kind: str, hydra_main: Callable[[], object]) -> None:
    """``if __name__ == "__main__"`` of train.py and merge.py: check, then let Hydra run."""
    precheck(kind)
    hydra_main()


__all__ = ["USAGE", "one_line", "precheck", "start"]
