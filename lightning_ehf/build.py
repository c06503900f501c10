"""The one place that maps config names to constructors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config.schema import Config, OptimCfg
from .core import symmetries
from .core.coordinates import DataMap
from .core.flows import make_ehf
from .core.frames import CentreOfMassFrame
from .core.invariants import PairDistanceFeatures
from .core.symmetries import Symmetry
from .core.targets import Target, make_target
from .errors import ConfigError

__all__ = [
    "make_symmetry",
    "make_data_symmetry",
    "make_frame",
    "particle_dim_of",
    "resolve_translation",
    "make_model",
    "make_datamodule",
    "make_module",
    "make_trainer",
    "resolve_encoder",
    "check_logger",
    "resolve_data_file",
    "make_flow_matching",
]


def _kron_particles(mats: torch.Tensor, n_particles: int) -> torch.Tensor:
    eye = torch.eye(n_particles, dtype=mats.dtype)
    return torch.stack([torch.kron(eye, m) for m in mats])


def make_symmetry(sym_cfg: Any, dim: int, target: Target | None = None) -> Symmetry:
    """Symmetry from ``symmetry.*`` keys; ``auto`` takes the target's declared group."""
    group = sym_cfg.group
    particle_dim = sym_cfg.particle_dim
    if group == "auto":
        if target is None:
            raise ConfigError(
                "symmetry.group: 'auto' needs a target; file data has no declared symmetry: set symmetry.group"
            )
        return target.symmetry
    try:
        if group == "none":
            return symmetries.no_symmetry(dim)
        if particle_dim:
            n = dim // particle_dim
            if group in ("so2", "so3"):
                want = 2 if group == "so2" else 3
                if particle_dim != want:
                    raise ConfigError(
                        f"symmetry.particle_dim: {group} per particle needs particle_dim={want}, got {particle_dim}"
                    )
                return symmetries.particle_rotations(n, particle_dim)
            if group == "rotations":
                one = symmetries.product(*[symmetries.rotation_plane(particle_dim, a, b) for a, b in sym_cfg.planes])
                return symmetries.from_matrices(_kron_particles(one.matrices, n), one.generator_names)
            mats = symmetries.from_matrices(list(sym_cfg.matrices)).matrices
            return symmetries.from_matrices(_kron_particles(mats, n))
        if group == "so2":
            return symmetries.so2(dim, list(sym_cfg.coords) if sym_cfg.coords else (0, 1))
        if group == "so3":
            return symmetries.so3(dim, list(sym_cfg.coords) if sym_cfg.coords else (0, 1, 2))
        if group == "rotations":
            return symmetries.product(*[symmetries.rotation_plane(dim, a, b) for a, b in sym_cfg.planes])
        if group == "matrices":
            return symmetries.from_matrices(list(sym_cfg.matrices))
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        key = {"rotations": "symmetry.planes", "matrices": "symmetry.matrices"}.get(group, "symmetry.group")
        raise ConfigError(f"{key}: {e}") from None
    raise ConfigError(f"symmetry.group: unknown group '{group}'")


def particle_dim_of(cfg: Any, target: Target | None = None) -> int | None:
    """Coordinates per particle: ``symmetry.particle_dim`` (set by hand or by an N×n×D data file), else
    the particles the target declares, else None (the data are not particles)."""
    if cfg.symmetry.particle_dim:
        return int(cfg.symmetry.particle_dim)
    if target is not None and target.particle_dim is not None:
        return int(target.particle_dim)
    return None


def resolve_translation(cfg: Any, target: Target | None = None) -> str:
    """``symmetry.translation``: ``auto`` → what the target declares (``com`` for translation-invariant
    particle targets such as dw4), ``none`` for file data. Refuses combinations that cannot be right."""
    declared = "com" if target is not None and target.translation_invariant else "none"
    translation = cfg.symmetry.translation
    if translation == "auto":
        return declared
    if target is not None and translation != declared:
        if declared == "com":
            raise ConfigError(
                f"symmetry.translation: target {target.name} is translation invariant, so its density "
                "lives on the centre-of-mass-free subspace; use com (or auto)"
            )
        raise ConfigError(
            f"symmetry.translation: com needs a translation-invariant density, and target {target.name} "
            "is not (its density fixes the centre of mass); com is for dw4 and particle data files"
        )
    return translation


def make_data_symmetry(cfg: Any, data_dim: int, target: Target | None = None) -> Symmetry:
    """The symmetry of the data, in their own coordinates.

    Starts from :func:`make_symmetry`. ``symmetry.permutations`` gives a group that rotates every particle
    alike pair-distance invariants (:class:`PairDistanceFeatures`, unchanged by relabelling the particles), with
    ``model.pair_bins`` bases up to ``model.pair_cutoff``."""
    symmetry = make_symmetry(cfg.symmetry, data_dim, target)
    if cfg.symmetry.permutations:
        if particle_dim_of(cfg, target) is None:
            raise ConfigError(
                "symmetry.permutations: needs particles: set symmetry.particle_dim (or use an N×n×D data file)"
            )
        if symmetry.particles is not None:
            features = PairDistanceFeatures(
                *symmetry.particles, n_bins=cfg.model.pair_bins, max_distance=cfg.model.pair_cutoff
            )
            symmetry = replace(symmetry, name=f"{symmetry.name}+perm", invariants=features)
    return symmetry


def make_kinetic_features(cfg: Any, symmetry: Symmetry, data_map: DataMap) -> PairDistanceFeatures | None:
    """The kinetic energy's own pair-distance histogram of the momenta, ``model.kinetic_pair_bins`` bases up to
    ``model.kinetic_pair_cutoff`` (each null: the potential's), in the model's coordinates; None when neither is
    set (the schema refuses them outside invariant particle models) or the group does not rotate particles alike
    (then the symmetry has no pair features either, and :func:`make_ehf` refuses ``model.invariant``)."""
    model_cfg = cfg.model
    if (model_cfg.kinetic_pair_bins, model_cfg.kinetic_pair_cutoff) == (None, None) or symmetry.particles is None:
        return None
    features = PairDistanceFeatures(
        *symmetry.particles,
        n_bins=model_cfg.kinetic_pair_bins or model_cfg.pair_bins,
        max_distance=model_cfg.kinetic_pair_cutoff or model_cfg.pair_cutoff,
    )
    return data_map.restrict_features(features)


def make_frame(cfg: Any, symmetry: Symmetry, target: Target | None = None) -> CentreOfMassFrame | None:
    """The centre-of-mass frame when ``symmetry.translation`` is com (else None), checked against the data's
    ``symmetry``: the model then lives in the orthonormal coordinates of the centre-of-mass-free subspace,
    where the group acts as :meth:`~.core.frames.CentreOfMassFrame.restrict` makes it."""
    if resolve_translation(cfg, target) != "com":
        return None
    particle_dim = particle_dim_of(cfg, target)
    if particle_dim is None:
        raise ConfigError(
            "symmetry.translation: com needs particles: set symmetry.particle_dim (or use an N×n×D data file)"
        )
    try:
        frame = CentreOfMassFrame(symmetry.dim // particle_dim, particle_dim)
        frame.restrict(symmetry)
    except ValueError as e:
        raise ConfigError(f"symmetry.translation: {e}") from None
    return frame


def resolve_encoder(model_cfg: Any, symmetry: Symmetry) -> str:
    """``auto`` → ``equivariant`` when the group rotates disjoint 2-D planes, else ``gaussian``."""
    if model_cfg.encoder != "auto":
        return model_cfg.encoder
    planes = symmetry.rotation_blocks
    ok = bool(planes) and all(len(b) == 2 for b in planes) and symmetry.invariants is not None
    return "equivariant" if ok else "gaussian"


def make_model(cfg: Any, symmetry: Symmetry) -> nn.Module:
    """The density model named by ``model.kind``: ``ehf``, the ``nsf`` baseline or the ``efm`` peer, on the
    data's coordinates (``symmetry`` acts on them). The model holds the map to its own coordinates
    (:class:`~.core.coordinates.DataMap`: the centre-of-mass frame of :func:`make_frame`, if any, and the
    standardisation)."""
    model_cfg = cfg.model
    target = make_target(cfg.data.target) if cfg.data.target else None
    data_map = DataMap(symmetry.dim, make_frame(cfg, symmetry, target))
    model_symmetry = data_map.restrict(symmetry)  # make_frame has refused a group the frame cannot carry
    if model_cfg.kind == "efm":
        return make_flow_matching(cfg, model_symmetry, data_map)
    if model_cfg.kind == "nsf":
        from .baselines import NSFModel

        return NSFModel(
            model_symmetry,
            transforms=model_cfg.nsf_transforms,
            bins=model_cfg.nsf_bins,
            hidden=model_cfg.hidden,
            depth=model_cfg.depth,
            data_map=data_map,
        )
    try:
        model = make_ehf(
            model_symmetry,
            kinetic_features=make_kinetic_features(cfg, symmetry, data_map),
            blocks=model_cfg.blocks,
            leapfrog_steps=model_cfg.leapfrog_steps,
            step_size=model_cfg.step_size,
            learn_step_size=model_cfg.learn_step_size,
            hidden=model_cfg.hidden,
            depth=model_cfg.depth,
            activation=model_cfg.activation,
            kinetic=model_cfg.kinetic,
            invariant=model_cfg.invariant,
            encoder=resolve_encoder(model_cfg, model_symmetry),
            sigma_q=model_cfg.sigma_q,
            sigma_p=model_cfg.sigma_p,
            forces=model_cfg.forces,
            reversible={"auto": "auto", "always": True, "never": False}[model_cfg.reversible],
            data_map=data_map,
        )
        return model.compile_density(cfg.eval.compile)
    except ValueError as e:
        msg = str(e)
        if "base density is not invariant" in msg:
            key = "symmetry.matrices" if cfg.symmetry.group == "matrices" else "symmetry.group"
        elif "encoder" in msg:
            key = "model.encoder"
        elif "invariant" in msg:
            key = "model.invariant"
        else:
            key = "model"
        raise ConfigError(f"{key}: {e}") from None


def make_flow_matching(cfg: Config, symmetry: Symmetry, data_map: DataMap) -> nn.Module:
    """``model.kind=efm``: equivariant flow matching (:mod:`lightning_ehf.core.flow_matching`). Particles
    rotated alike get an EGNN field (relabelling-equivariant with ``symmetry.permutations``, in the
    centre-of-mass frame with ``translation=com``); rotations of disjoint blocks a block-rotation field;
    no group an MLP. Width ``model.efm_hidden`` (null: ``model.hidden``), MLP depth ``model.depth``, ``model.efm_layers`` EGNN layers,
    base N(0, ``model.sigma_q``² I). ``symmetry`` acts on the model's coordinates, ``data_map`` leads there."""
    from .core.flow_matching import make_efm

    model_cfg = cfg.model
    target = make_target(cfg.data.target) if cfg.data.target else None
    particle_dim = particle_dim_of(cfg, target)
    particles, basis, identical = None, None, False
    if particle_dim and symmetry.num_generators:
        group = cfg.symmetry.group
        whole = {"so2": 2, "so3": 3}.get(group) == particle_dim or (
            group == "auto" and target is not None and target.particle_dim is not None
        )
        if not whole:
            raise ConfigError(
                f"symmetry.group: model.kind=efm on particles needs every particle rotated by the whole "
                f"rotation group (so2 for 2-D particles, so3 for 3-D, or auto), not {group}"
            )
        particles = (data_map.data_dim // particle_dim, particle_dim)
        basis = data_map.frame.basis if data_map.frame is not None else None
        identical = cfg.symmetry.permutations
    try:
        return make_efm(
            symmetry,
            particles=particles,
            identical=identical,
            basis=basis,
            hidden=model_cfg.efm_hidden or model_cfg.hidden,
            depth=model_cfg.depth,
            layers=model_cfg.efm_layers,
            activation=model_cfg.activation,
            sigma=model_cfg.sigma_q,
            atol=model_cfg.efm_atol,
            rtol=model_cfg.efm_rtol,
            data_map=data_map,
        )
    except ValueError as e:
        raise ConfigError(f"model.kind: {e}") from None


def resolve_data_file(cfg: Config, absolute: bool = True) -> Config:
    """What a run needs to know of its data file before it starts: ``data.path`` made absolute (the saved
    config then finds the file from any folder) and, for an N×n×D particle file, ``symmetry.particle_dim``
    (unless set)."""
    if not cfg.data.path:
        return cfg
    from .data.files import particle_shape

    path = Path(cfg.data.path).expanduser()
    data = cfg.data.model_copy(update={"path": str(path.resolve())}) if absolute else cfg.data
    shape = particle_shape(path) if cfg.symmetry.particle_dim is None else None
    symmetry = cfg.symmetry.model_copy(update={"particle_dim": shape[1]}) if shape is not None else cfg.symmetry
    return cfg.model_copy(update={"data": data, "symmetry": symmetry})


def make_datamodule(cfg: Config):
    """Data module with its declared dimension and symmetry (validated against the config), in the data's
    own coordinates (the model maps them to its own)."""
    from .config.load import validate_for_dim
    from .data.datamodule import EHFDataModule

    data_cfg = cfg.data
    target = make_target(data_cfg.target) if data_cfg.target is not None else None
    rows = None
    if target is not None:
        dim = target.dim
    else:
        from .data.files import load_array, particle_shape

        rows = load_array(data_cfg.path)
        dim = rows.shape[1]
        shape = particle_shape(data_cfg.path)
        if shape is not None and cfg.symmetry.particle_dim and int(cfg.symmetry.particle_dim) != shape[1]:
            raise ConfigError(
                f"symmetry.particle_dim: {cfg.symmetry.particle_dim}, but {data_cfg.path} holds particles of "
                f"{shape[1]} coordinates (shape N×{shape[0]}×{shape[1]})"
            )
    validate_for_dim(cfg, dim)
    symmetry = make_data_symmetry(cfg, dim, target)
    make_frame(cfg, symmetry, target)  # refused combinations are refused before any file is written
    particle_dim = particle_dim_of(cfg, target)
    permute = dim // particle_dim if cfg.symmetry.permutations and particle_dim else None
    return EHFDataModule(
        symmetry,
        target=target,
        path=data_cfg.path,
        rows=rows,
        regime=data_cfg.regime,
        n_train=data_cfg.n_train,
        n_val=data_cfg.n_val,
        n_test=data_cfg.n_test,
        batch_size=data_cfg.batch_size,
        augment=data_cfg.augment,
        num_workers=data_cfg.num_workers,
        seed=cfg.seed,
        val_fraction=data_cfg.val_fraction,
        file_val_fraction=data_cfg.file_val_fraction,
        file_test_fraction=data_cfg.file_test_fraction,
        permute_particles=permute,
    )


def make_module(cfg: Config, datamodule, run_id: str = "") -> Any:
    """The LightningModule for a config and its data (entropy of a known target included)."""
    from .lit.module import EHFModule

    resolve_invariant_constraint(cfg)
    note_particle_leapfrog_steps(cfg, datamodule.target)
    model = make_model(cfg, datamodule.symmetry)
    moot = {
        k: v
        for k, v in (
            ("optim.objective", cfg.optim.objective),
            ("optim.elbo_samples", cfg.optim.elbo_samples),
            ("optim.estimator", cfg.optim.estimator),
        )
        if v != OptimCfg.model_fields[k[6:]].default
    }
    if getattr(model, "exact_likelihood", False) and moot:
        print(
            f"note: model.kind={cfg.model.kind} has an exact likelihood, so {', '.join(moot)} do not apply: it trains "
            "on log p(q)",
            flush=True,
        )
    if cfg.model.standardise and cfg.model.kind == "ehf":
        standardise(model, datamodule)
    entropy = None
    if datamodule.target is not None:
        entropy = datamodule.target.entropy(200_000, generator=torch.Generator().manual_seed(12345))[0]
    log_prob = datamodule.target.log_prob if datamodule.target is not None else None
    return EHFModule(cfg, model, entropy, run_id, target_log_prob=log_prob)


def resolve_invariant_constraint(cfg: Any) -> None:
    """``model.invariant``: every bracket ``{g_k, H_t}`` is zero by construction, so there is nothing to
    constrain: ``constraint.mode`` becomes ``none`` (in the config the run saves too), the model skips the
    bracket statistics, and one line says so."""
    if cfg.model.kind != "ehf" or not cfg.model.invariant or cfg.constraint.mode == "none":
        return
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    was = cfg.constraint.mode
    cfg.constraint.mode = "none"
    rank_zero_only(print)(
        f"model.invariant=true: every bracket is zero by construction, so constraint.mode={was} "
        "becomes none and the bracket statistics are not computed",
        flush=True,
    )


def note_particle_leapfrog_steps(cfg: Any, target: Target | None) -> None:
    """One line when an EHF of particles runs 1 leapfrog step per block (the default, chosen on ring2d): on
    particles2d every 1-step model stalled (docs/benchmarks.md), and the shipped particle experiments set 3."""
    if cfg.model.kind != "ehf" or cfg.model.leapfrog_steps != 1 or particle_dim_of(cfg, target) is None:
        return
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    rank_zero_only(print)(
        "note: model.leapfrog_steps=1 (the default, chosen on ring2d) on particles: every 1-step model stalled on "
        "particles2d (docs/benchmarks.md); the shipped particle experiments set model.leapfrog_steps=3",
        flush=True,
    )


def standardise(model: nn.Module, datamodule) -> None:
    """``model.standardise``: the model sees its data whitened by their group-invariant mean and
    covariance (:mod:`lightning_ehf.core.standardise`), estimated from the training data alone."""
    from .core.standardise import invariant_moments

    frame = model.data_map.frame
    n_particles = datamodule.permute_particles  # identical particles: also average over relabellings
    try:
        sample = model.data_map.to_frame(datamodule.moment_sample())
        mean, cov = invariant_moments(
            sample,
            model.symmetry.matrices,
            n_particles=n_particles,
            basis=frame.basis if (frame is not None and n_particles) else None,
        )
        model.standardise(mean, cov)
    except ValueError as e:
        raise ConfigError(f"model.standardise: {e}") from None


def check_logger(cfg: Any) -> None:
    """Refuse, before anything is written, a logger set-up that cannot work here."""
    import os

    if cfg.logger.wandb.mode == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
        raise ConfigError(
            "logger.wandb.mode: 'online' needs a W&B API key (run `wandb login` or set WANDB_API_KEY); "
            "use offline (default) or disabled"
        )


def _wandb_logger(cfg: Any, run_dir, run_id: str):
    import os

    wandb_cfg = cfg.logger.wandb
    if wandb_cfg.mode == "disabled":
        return None
    check_logger(cfg)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")  # the run's console is ours (and the CSV/metrics files)
    from lightning.pytorch.loggers import WandbLogger

    from .tracking import keep_run_id_in_sweep, wandb_run_arguments, wandb_save_dir

    keep_run_id_in_sweep(run_id)
    # mode goes straight to wandb.init: WandbLogger(offline=True) would set WANDB_MODE process-wide
    logger = WandbLogger(
        save_dir=wandb_save_dir(run_dir),
        project=wandb_cfg.project,
        entity=wandb_cfg.entity,
        id=run_id,
        resume="allow",
        mode=wandb_cfg.mode,
        **wandb_run_arguments(cfg),
    )
    # Lightning always passes anonymous=None, which wandb 0.31 answers with a deprecation warning
    logger._wandb_init.pop("anonymous", None)
    return logger


def _netrc_has_wandb() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _show_bar(mode: str) -> bool:
    """``progress.mode``: the rich bar on a terminal (``auto``) or when asked for (``bar``)."""
    import sys

    return mode == "bar" or (mode == "auto" and sys.stdout.isatty())


def make_trainer(cfg: Any, run_dir, run_id: str, extra_callbacks: list | None = None, resume_step: int | None = None):
    """A Lightning Trainer writing into ``run_dir``: CSV (+ W&B) loggers; ``best.ckpt`` (lowest validation
    NLL) and an always-current ``last.ckpt`` (also every ``checkpoint.every_n_minutes``); a clean stop on
    SIGTERM, SIGUSR1 or SIGUSR2; plots; learning-rate monitor;
    a progress bar on terminals and progress lines elsewhere (``progress.*``); atomic, finite-only
    checkpoint writes. ``resume_step``: the step a resumed run restarts from (metrics.csv is appended to)."""
    from datetime import timedelta
    from pathlib import Path

    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy

    from .lit.atomic_io import SafeCheckpointIO
    from .lit.callbacks import (
        FeasibleEarlyStopping,
        LastCheckpoint,
        PlotCallback,
        Preemption,
        ProgressLines,
        StepProgressBar,
    )
    from .lit.loggers import RunCSVLogger

    run_dir = Path(run_dir)
    trainer_cfg = cfg.trainer
    loggers: list = [RunCSVLogger(str(run_dir), resume_step)]
    wandb_logger = _wandb_logger(cfg, run_dir, run_id)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    monitor = (
        "val/selection"
        if cfg.constraint.selection == "feasible"
        else f"val/nll_iw{cfg.eval.val_iw_samples or cfg.eval.iw_samples}"
    )
    last = LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_n_minutes)
    callbacks: list = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best",
            monitor=monitor,
            mode="min",
            save_last=False,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        last,
        Preemption(last),
        LearningRateMonitor(logging_interval="step"),
    ]
    show_bar = _show_bar(cfg.progress.mode)
    if show_bar:
        callbacks.append(StepProgressBar(leave=True))
    elif cfg.progress.mode != "none":
        callbacks.append(ProgressLines(cfg.progress.every_n_steps, cfg.progress.every_s))
    if cfg.plots.enabled:
        callbacks.append(PlotCallback(run_dir / "plots", cfg.plots.every_n_val, cfg.plots.grid))
    if trainer_cfg.patience is not None:
        stopping = FeasibleEarlyStopping if monitor == "val/selection" else EarlyStopping
        callbacks.append(
            stopping(
                monitor=monitor,
                mode="min",
                patience=int(trainer_cfg.patience),
                min_delta=float(trainer_cfg.min_delta),
                check_on_train_epoch_end=False,
                strict=True,
            )
        )
    callbacks += extra_callbacks or []
    strategy: Any = trainer_cfg.strategy
    if trainer_cfg.strategy == "ddp":
        # λ are kept identical by reducing C̄ before each update; not broadcasting buffers lets the
        # val/lambda_rank_spread check see a divergence instead of masking it
        strategy = DDPStrategy(timeout=timedelta(seconds=trainer_cfg.ddp_timeout_s), broadcast_buffers=False)
    plugins: list = [SafeCheckpointIO()]
    if (
        SLURMEnvironment.detect()
    ):  # SIGTERM, SIGUSR1 and SIGUSR2 are handled by Preemption; no second, requeueing handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_steps=trainer_cfg.max_steps,
        max_time=None if trainer_cfg.max_time_s is None else timedelta(seconds=trainer_cfg.max_time_s),
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=strategy,
        num_nodes=trainer_cfg.num_nodes,
        precision=trainer_cfg.precision,
        logger=loggers,
        callbacks=callbacks,
        val_check_interval=trainer_cfg.val_check_interval,
        check_val_every_n_epoch=None,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        accumulate_grad_batches=trainer_cfg.accumulate_grad_batches,
        # None when unlimited: Lightning announces an explicit 1.0 ("100% of the batches will be used")
        limit_val_batches=(
            None
            if isinstance(trainer_cfg.limit_val_batches, float) and trainer_cfg.limit_val_batches == 1.0
            else trainer_cfg.limit_val_batches
        ),
        gradient_clip_val=cfg.optim.grad_clip or None,
        deterministic=trainer_cfg.deterministic,
        inference_mode=False,  # the reference (autograd) force path needs autograd in validation/test (docs/design.md §6)
        num_sanity_val_steps=0,
        enable_model_summary=False,
        max_epochs=-1,
        plugins=plugins,
        enable_progress_bar=show_bar,
        use_distributed_sampler=False,  # the data module shards validation/test rows itself, without padding
    )
