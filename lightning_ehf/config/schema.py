"""The one typed configuration schema: every default of every knob, its type, its range and the rules
between keys live here (pydantic v2, strict). YAML files and ``key=value`` overrides only override.

Keys marked *contract* in their description are public (docs/design.md, "Public contracts"): scripts and
users rely on their names. A rule between keys raises :func:`config_error`, which names the key the user
should change; :mod:`lightning_ehf.config.load` turns every failure into one line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lightning_ehf.validation import config_error

__all__ = [
    "Config",
    "FILE_DEFAULTS",
    "ROTATION_GROUPS",
    "choices",
    "config_error",
]

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]

Target = Literal["ring2d", "rings2d", "shell3d", "particles2d", "gmm8", "two_rings4d", "dw4", "lj13"]
Group = Literal["auto", "none", "so2", "so3", "rotations", "matrices"]
Strategy = Literal["auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp", "deepspeed", "single_device"]
#: Groups made of plane rotations (``auto`` is decided by the target; ``build`` checks it there).
ROTATION_GROUPS = ("so2", "so3", "rotations")


def choices(section: type[BaseModel], name: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` key (``None`` included where the key is nullable)."""
    annotation = section.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(v for arg in get_args(annotation) for v in (get_args(arg) if arg is not type(None) else (None,)))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, protected_namespaces=())


class DataCfg(Section):
    target: Target | None = "ring2d"  # contract: an analytic target, or null for file data
    # contract: user data file (.npy/.npz/.csv; N×d, or N×n×D particles); implies FILE_DEFAULTS
    path: str | None = None
    regime: Literal["finite", "infinite"] = "infinite"  # contract: finite|infinite (file data: finite)
    n_train: Positive = 20000  # contract: training set size (finite regime; file data: at most this many rows train)
    # contract: validation samples / rows of the file; null (files only): file_val_fraction of the rows
    n_val: Positive | None = 1000
    # contract: finite targets: validation rows come out of n_train (e.g. 0.2); null: n_val fresh samples
    val_fraction: Fraction | None = None
    # contract: test samples / rows of the file; null (files only): file_test_fraction of the rows
    n_test: Positive | None = 5000
    # contract: file data with n_val=null: this fraction of its rows validates (at least 1)
    file_val_fraction: Fraction = 0.1
    # contract: file data with n_test=null: this fraction of its rows tests (at least 1)
    file_test_fraction: Fraction = 0.1
    batch_size: Positive = 256  # contract; chosen with model.leapfrog_steps (see there)
    augment: bool = False  # contract: random group element applied to every training batch
    num_workers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _sources_and_splits(self) -> DataCfg:
        if self.target is None and not self.path:
            raise config_error("target", "no data: set data.target (an analytic target) or data.path (a data file)")
        if self.target is not None and self.path:
            raise config_error(
                "path",
                f"both data.target={self.target} and data.path are set; remove data.target "
                "(or set data.target=null) to use the file",
            )
        if self.path is not None and not self.path.strip():
            raise config_error("path", "is empty")
        if self.path is not None and self.regime != "finite":
            raise config_error(
                "regime",
                "file data (data.path) is a fixed sample: data.regime must be finite "
                "(what data.path implies when data.regime is not set)",
            )
        for key in ("n_val", "n_test"):
            if getattr(self, key) is None and self.path is None:
                raise config_error(
                    key,
                    f"null (a fraction of a data file's rows, data.file_{key[2:]}_fraction) "
                    "needs data.path; a target needs a number of samples",
                )
        if self.file_val_fraction + self.file_test_fraction >= 1:
            raise config_error(
                "file_test_fraction",
                "data.file_val_fraction + data.file_test_fraction must be < 1 (the rest of a data file's rows train)",
            )
        if self.val_fraction is not None:
            if self.regime != "finite" or self.target is None:
                raise config_error(
                    "val_fraction",
                    "applies to a finite training set of a target (data.regime=finite);"
                    " an infinite stream or a file has its own validation rows "
                    "(data.n_val)",
                )
            if not 1 <= round(self.val_fraction * self.n_train) < self.n_train:
                raise config_error(
                    "val_fraction",
                    f"{self.val_fraction} of data.n_train={self.n_train} leaves no validation or no training rows",
                )
        return self


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_planes(planes: Any, bound: int | None, where: str, key: str = "planes") -> None:
    """Rotation planes: distinct pairs of distinct coordinate indices below ``bound`` (when known)."""
    if not isinstance(planes, list) or not planes:
        raise config_error(key, "must be a non-empty list of planes, e.g. [[0,1],[2,3]]")
    seen: set[frozenset[int]] = set()
    for i, plane in enumerate(planes):
        if not (isinstance(plane, list) and len(plane) == 2 and all(_is_index(a) for a in plane)):
            raise config_error(f"{key}[{i}]", f"a plane is two non-negative coordinate indices, got {plane!r}")
        if plane[0] == plane[1]:
            raise config_error(f"{key}[{i}]", f"a plane needs two distinct coordinates, got {plane!r}")
        if frozenset(plane) in seen:
            raise config_error(f"{key}[{i}]", f"plane {plane!r} is listed twice")
        seen.add(frozenset(plane))
        if bound is not None and max(plane) >= bound:
            raise config_error(
                f"{key}[{i}]",
                f"plane {plane!r} uses coordinate {max(plane)}, but {where} (valid indices 0..{bound - 1})",
            )


def _check_coords(group: str, coords: Any, bound: int | None, where: str, key: str = "coords") -> None:
    """The coordinates so2 / so3 act on: 2 / 3 distinct indices below ``bound`` (when known)."""
    need = 2 if group == "so2" else 3
    if coords is None:
        if bound is not None and bound < need:
            raise config_error("group", f"{group} acts on {need} coordinates, but {where}")
        return
    if not isinstance(coords, list) or not all(_is_index(c) for c in coords):
        raise config_error(key, f"must be a list of non-negative coordinate indices, got {coords!r}")
    if len(coords) != need:
        raise config_error(key, f"symmetry.group={group} acts on {need} coordinates, got {len(coords)}: {coords!r}")
    if len(set(coords)) != len(coords):
        raise config_error(key, f"coordinates must be distinct, got {coords!r}")
    if bound is not None and max(coords) >= bound:
        raise config_error(key, f"coordinate {max(coords)} is out of range: {where} (valid indices 0..{bound - 1})")


def _check_matrices(matrices: Any, bound: int | None, where: str, key: str = "matrices") -> None:
    """Explicit generators: square matrices of finite numbers, ``bound``×``bound`` (when known)."""
    if not isinstance(matrices, list) or not matrices:
        raise config_error(key, "must be a non-empty list of square matrices (lists of rows)")
    for i, mat in enumerate(matrices):
        k = f"{key}[{i}]"
        if not isinstance(mat, list) or not mat or not all(isinstance(r, list) for r in mat):
            raise config_error(k, "must be a matrix given as a list of rows, e.g. [[0,-1],[1,0]]")
        for r, row in enumerate(mat):
            if len(row) != len(mat):
                raise config_error(k, f"must be square: it has {len(mat)} rows but row {r} has {len(row)} entries")
            for c, entry in enumerate(row):
                if isinstance(entry, bool) or not isinstance(entry, (int, float)) or entry != entry:
                    raise config_error(f"{k}[{r}][{c}]", f"matrix entries must be finite numbers, got {entry!r}")
        if bound is not None and len(mat) != bound:
            raise config_error(k, f"is {len(mat)}×{len(mat)} but must be {bound}×{bound}: {where}")


class SymmetryCfg(Section):
    group: Group = "auto"  # contract: auto (the target's) | none | so2 | so3 | rotations | matrices
    planes: list[list[int]] | None = None  # contract: rotation planes, e.g. [[0,1],[2,3]]
    coords: list[int] | None = None  # coordinates so2/so3 act on (default: the first 2 / 3)
    particle_dim: Positive | None = None  # contract: q holds particles of this many coordinates
    matrices: list[Any] | None = None  # contract: explicit generators, each d×d (list of lists)
    # contract: auto (the target's: com for dw4, else none) | none | com (particles: model the centre-of-mass-free
    # coordinates)
    translation: Literal["auto", "none", "com"] = "auto"
    # contract: identical particles: augmentation relabels them; invariant Hamiltonians use pair-distance features
    permutations: bool = False

    @model_validator(mode="after")
    def _group_arguments(self) -> SymmetryCfg:
        self.check_arguments(None)
        return self

    def check_arguments(self, bound: int | None, where: str = "") -> None:
        """The group's planes / coords / matrices, against ``bound`` coordinates when known (``where`` says why)."""
        if self.group == "rotations":
            if self.planes is None:
                raise config_error("planes", "symmetry.group=rotations needs symmetry.planes, e.g. [[0,1],[2,3]]")
            _check_planes(self.planes, bound, where)
        elif self.group in ("so2", "so3"):
            _check_coords(self.group, self.coords, bound, where)
        elif self.group == "matrices":
            if self.matrices is None:
                raise config_error(
                    "matrices", "symmetry.group=matrices needs symmetry.matrices (a list of d×d generators)"
                )
            _check_matrices(self.matrices, bound, where)


class ModelCfg(Section):
    # contract: ehf | nsf (the zuko baseline) | efm (equivariant flow matching)
    kind: Literal["ehf", "nsf", "efm"] = "ehf"
    invariant: bool = False  # contract: invariant-by-construction Hamiltonians
    blocks: Positive = 6  # T: flow blocks, each with its own Hamiltonian
    # L: leapfrog steps per block. 1 (with optim.lr 1e-2, data.batch_size 256) is the ring2d cost/quality
    # frontier's pick (docs/benchmarks.md); particle systems need 3, which their experiments set
    leapfrog_steps: Positive = 1
    step_size: PositiveFloat = 0.2  # initial ε per block
    learn_step_size: bool = True
    hidden: Positive = 64  # MLP width (potential, kinetic, encoder)
    depth: Positive = 2  # hidden layers per MLP
    activation: Literal["softplus", "tanh", "silu"] = "softplus"  # smooth: forces must be differentiable
    kinetic: Literal["quadratic", "mlp"] = "mlp"
    # auto (equivariant when the group rotates 2-D planes, else gaussian) | gaussian (diagonal) | full (full covariance)
    # | flow (conditional coupling flow) | equivariant
    encoder: Literal["auto", "gaussian", "full", "flow", "equivariant"] = "auto"
    standardise: bool = False  # whiten q by its group-invariant training mean and covariance
    sigma_q: PositiveFloat = 1.0  # base N(0, σ_q² I) on q
    sigma_p: PositiveFloat = 1.0  # base N(0, σ_p² I) on p
    # analytic (closed-form MLP gradients) | autograd (the reference path, slower)
    forces: Literal["analytic", "autograd"] = "analytic"
    # memory-flat backward: auto (when leapfrog_steps >= 32) | always | never
    reversible: Literal["auto", "always", "never"] = "auto"
    # invariant particle models (symmetry.permutations): Gaussian bases of the pair-distance and norm histograms, their
    # centres spread evenly over squared distances [0, pair_cutoff²]
    pair_bins: Annotated[int, Field(ge=2)] = 24
    pair_cutoff: PositiveFloat = 8.0
    # the kinetic energy's own histogram of the momenta (an invariant particle ehf with model.kinetic=mlp); null: the
    # potential's pair_bins / pair_cutoff
    kinetic_pair_bins: Annotated[int, Field(ge=2)] | None = None
    kinetic_pair_cutoff: PositiveFloat | None = None
    nsf_transforms: Positive = 4  # nsf: autoregressive transforms
    nsf_bins: Positive = 8  # nsf: spline bins
    # efm: equivariant flow matching (a continuous flow; width model.hidden, MLP depth model.depth)
    efm_layers: Positive = 3  # EGNN layers of the particle vector field
    efm_hidden: Positive | None = None  # width of the vector field's MLPs (null: model.hidden)
    efm_atol: PositiveFloat = 1.0e-5  # dopri5 absolute tolerance (likelihood and sampling)
    efm_rtol: PositiveFloat = 1.0e-5  # dopri5 relative tolerance


class ConstraintCfg(Section):
    mode: Literal["none", "penalty", "dual"] = "dual"  # contract: none | penalty | dual
    # additive (projected dual ascent) | augmented (method of multipliers, ρ = lr) | geco (multiplicative, EMA)
    rule: Literal["additive", "augmented", "geco"] = "additive"
    tolerance: NonNegative = 1e-3  # contract: ε_k, the allowed mean squared bracket
    lr: PositiveFloat = 1.0  # contract: η, the multiplier's step
    init: NonNegative = 0.0  # contract: λ_k at the start (the fixed λ in penalty mode)
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.9  # geco moving-average factor
    # what picks best.ckpt and drives early stopping: nll (the lowest validation NLL) | feasible (the lowest
    # validation NLL among validations whose bracket RMS is within 1.1 × √tolerance; until one is, the lowest
    # NLL is kept and trainer.patience does not count)
    selection: Literal["nll", "feasible"] = "nll"


class OptimCfg(Section):
    lr: PositiveFloat = 1e-2
    weight_decay: NonNegative = 0.0
    grad_clip: NonNegative = 10.0
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    elbo_samples: Positive = 1  # contract: momentum samples per data point in the training objective (K of iwae)
    # contract: elbo (the mean over the samples) | iwae (log-mean-exp: the IWAE_K bound)
    objective: Literal["elbo", "iwae"] = "elbo"
    estimator: Literal["reparam", "dreg"] = "reparam"  # the encoder's gradient: reparam | dreg (doubly reparameterised)
    # stop (keep the last good checkpoint) | skip (skip the batch, halve the block's step)
    on_nonfinite: Literal["stop", "skip"] = "stop"


class TrainerCfg(Section):
    max_steps: Positive = 2000  # contract
    # stop training after this many seconds of fit, validation included, carried across resumes (null: off); with a
    # large max_steps it gives every method of a comparison the same wall-clock budget
    max_time_s: PositiveFloat | None = None
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"  # contract
    devices: Any = 1  # contract: a count, -1 (all), 'auto' or a list of device indices
    strategy: Strategy = "auto"  # contract
    num_nodes: Positive = 1  # contract
    # contract
    precision: Literal["32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true"] = "32-true"
    val_check_interval: Positive = 500  # validate every this many training steps
    # contract: stop after this many validations without improvement of the validation NLL (null: off)
    patience: Positive | None = None
    min_delta: NonNegative = 0.0  # contract: an improvement must lower the validation NLL by more than this (nats)
    log_every_n_steps: Positive = 25
    deterministic: bool = True
    # torch.compile the training objective (forward and backward) once per batch shape, eager if that fails; CUDA:
    # CUDA graphs (reduce-overhead). On a CPU compiling costs minutes: only long runs gain (docs/benchmarks.md)
    compile: bool = False
    ddp_timeout_s: Positive = 300
    # optimiser step every this many batches (global batch × this); passed to Lightning
    accumulate_grad_batches: Positive = 1
    # validate on this many batches (an integer) or this fraction of them (a number in (0, 1]); passed to Lightning
    limit_val_batches: Any = 1.0

    @field_validator("limit_val_batches", mode="after")
    @classmethod
    def _limit_val_batches(cls, limit: Any) -> Any:
        count = isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1
        if not (count or isinstance(limit, float) and 0 < limit <= 1):
            raise config_error(
                "",
                f"must be a number of batches (an integer >= 1) or a fraction in (0, 1], got {limit!r}",
            )
        return limit

    @field_validator("devices", mode="after")
    @classmethod
    def _devices(cls, devices: Any) -> Any:
        count = isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1)
        indices = isinstance(devices, list) and devices and all(_is_index(d) for d in devices)
        if not (devices == "auto" or count or indices):
            raise config_error(
                "",
                f"must be a positive count, -1 (all), 'auto' or a list of device indices, got {devices!r}",
            )
        return devices


class WandbCfg(Section):
    # mode, project and entity: a key set in a config file or override wins; otherwise WANDB_MODE,
    # WANDB_PROJECT, WANDB_ENTITY when set (lightning_ehf/tracking.py); otherwise these defaults
    mode: Literal["offline", "online", "disabled"] = "offline"  # contract: offline | online | disabled
    project: str = "lightning_ehf"  # contract
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    name: str | None = None  # the run's display name (null: the experiment's name; a study cell: the cell's name)
    group: str | None = None  # W&B group (a study cell: the study's name)
    job_type: str | None = None  # W&B job type (a study cell: its method)
    # extra top-level fields of the W&B config (a study cell: its axes)
    fields: dict[str, Any] = Field(default_factory=dict)


class LoggerCfg(Section):
    wandb: WandbCfg = Field(default_factory=WandbCfg)


class EvalCfg(Section):
    # contract: K of the IWAE estimate for the test NLL (and validation, unless val_iw_samples)
    iw_samples: Positive = 256
    val_iw_samples: Positive | None = None  # contract: K of the validation NLL (null: iw_samples)
    iw_chunk: Positive = 64  # momentum samples evaluated at once (memory bound)
    n_group_samples: Positive = 4  # group elements for the invariance error
    n_eval: Positive = 512  # data points used for the invariance / equivariance errors
    invariance_iw: Positive = 32  # K of the IWAE estimates compared in the invariance error
    compile: bool = False  # torch.compile the density evaluation (pays off only for large evaluations)


class PlotCfg(Section):
    enabled: bool = True
    every_n_val: Positive = 4  # plot every N validation rounds (and always at the end)
    grid: Positive = 80  # resolution of density images


class ProgressCfg(Section):
    # contract: auto (a bar on a terminal, plain lines otherwise) | bar | lines | none
    mode: Literal["auto", "bar", "lines", "none"] = "auto"
    every_n_steps: Positive = 100  # contract: lines mode: a line at least every this many steps ...
    every_s: PositiveFloat = 30.0  # contract: ... and at least every this many seconds


class CheckpointCfg(Section):
    # contract: also refresh last.ckpt after this many minutes of training (null: off)
    every_n_minutes: float | None = None

    @field_validator("every_n_minutes", mode="after")
    @classmethod
    def _minutes(cls, minutes: float | None) -> float | None:
        if minutes is not None and not minutes > 0:
            raise config_error("", f"must be > 0 (minutes) or null (off), got {minutes!r}")
        return minutes


class RunCfg(Section):
    root: str = "runs"
    dir: str | None = None  # contract: exact run folder (default runs/<experiment>/<timestamp>-<id>)


class Config(Section):
    experiment: str = "default"
    seed: int = 0  # contract
    data: DataCfg = Field(default_factory=DataCfg)
    symmetry: SymmetryCfg = Field(default_factory=SymmetryCfg)
    model: ModelCfg = Field(default_factory=ModelCfg)
    constraint: ConstraintCfg = Field(default_factory=ConstraintCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    trainer: TrainerCfg = Field(default_factory=TrainerCfg)
    logger: LoggerCfg = Field(default_factory=LoggerCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    plots: PlotCfg = Field(default_factory=PlotCfg)
    progress: ProgressCfg = Field(default_factory=ProgressCfg)
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    run: RunCfg = Field(default_factory=RunCfg)

    @field_validator("experiment", mode="after")
    @classmethod
    def _experiment(cls, name: str) -> str:
        if not name.strip():
            raise config_error("", "must be a non-empty name")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name):
            raise config_error("", f"must be a plain folder name (letters, digits, '.', '_', '-'), got {name!r}")
        return name

    @field_validator("seed", mode="after")
    @classmethod
    def _seed(cls, seed: int) -> int:
        if not 0 <= seed < 2**32:
            raise config_error("", f"must be in [0, 2**32), got {seed!r}")
        return seed

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        group, target = self.symmetry.group, self.data.target
        if group == "auto" and target is None:
            raise config_error(
                "symmetry.group",
                "is auto, but file data declares no symmetry: set symmetry.group "
                "(none, so2, so3, rotations or matrices)",
            )
        rotation_like = (*ROTATION_GROUPS, "auto")
        if self.model.invariant:
            if group not in rotation_like:
                raise config_error(
                    "model.invariant",
                    "invariant-by-construction Hamiltonians need a rotation group "
                    f"(so2, so3, rotations), not symmetry.group={group}",
                )
            # efm's vector field is equivariant by construction, so the key states what it is anyway
            if self.model.kind not in ("ehf", "efm"):
                raise config_error(
                    "model.invariant",
                    f"needs model.kind=ehf (or efm, which is always equivariant), not {self.model.kind}",
                )
        kinetic_histogram = [
            k for k in ("kinetic_pair_bins", "kinetic_pair_cutoff") if getattr(self.model, k) is not None
        ]
        if kinetic_histogram and not (
            self.symmetry.permutations
            and self.model.invariant
            and (self.model.kind, self.model.kinetic) == ("ehf", "mlp")
        ):
            raise config_error(
                f"model.{kinetic_histogram[0]}",
                "sets the kinetic energy's own pair-distance histogram: it needs an invariant particle model "
                "(symmetry.permutations=true, model.invariant=true, model.kind=ehf, model.kinetic=mlp)",
            )
        if self.model.encoder == "equivariant" and group not in rotation_like:
            raise config_error(
                "model.encoder",
                f"the equivariant encoder needs a rotation group (so2, so3, rotations), not symmetry.group={group}",
            )
        if self.data.augment and group == "none" and not self.symmetry.permutations:
            raise config_error(
                "data.augment", "needs a symmetry to sample group elements from, but symmetry.group=none"
            )
        return self


#: What ``data.path`` implies for every key of this table that no config file (``-c``, with its
#: ``defaults:``) and no override sets: the file is the data (no analytic target), a fixed sample
#: (finite regime) without a declared symmetry (set ``symmetry.group`` to constrain one), split into
#: ``data.file_val_fraction`` / ``data.file_test_fraction`` of its rows for validation and test. A key
#: set explicitly keeps its value (``data.n_val=100``: 100 rows; ``data.target=ring2d``: refused, exit 2).
#: :func:`~lightning_ehf.config.load.load_config` applies it, so ``ehf print-config`` and a run's
#: ``config.yaml`` show the values used, and the saved config reloads to the same config.
FILE_DEFAULTS: dict[str, Any] = {
    "data.target": None,
    "data.regime": "finite",
    "data.n_val": None,
    "data.n_test": None,
    "symmetry.group": "none",
}
