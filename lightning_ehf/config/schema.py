"""Typed configuration schema. Every default of every knob lives here; YAML files only override.

The keys marked *contract* are public (docs/design.md, "Public contracts"): scripts and users rely on
their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class DataCfg:
    target: Optional[str] = "ring2d"  # contract: ring2d|rings2d|shell3d|particles2d|gmm8|two_rings4d|dw4 or null
    path: Optional[str] = None  # contract: user data file (.npy/.npz/.csv; N×d, or N×n×D particles); implies FILE_DEFAULTS (below)
    regime: str = "infinite"  # contract: finite|infinite (file data: finite)
    n_train: int = 20000  # contract: training set size (finite regime; file data: at most this many rows train)
    n_val: Optional[int] = 1000  # contract: validation samples / rows of the file; null (files only): file_val_fraction of the rows
    val_fraction: Optional[float] = None  # contract: finite targets: validation rows come out of n_train (e.g. 0.2); null: n_val fresh samples
    n_test: Optional[int] = 5000  # contract: test samples / rows of the file; null (files only): file_test_fraction of the rows
    file_val_fraction: float = 0.1  # contract: file data with n_val=null: this fraction of its rows validates (at least 1)
    file_test_fraction: float = 0.1  # contract: file data with n_test=null: this fraction of its rows tests (at least 1)
    batch_size: int = 512  # contract
    augment: bool = False  # contract: random group element applied to every training batch
    num_workers: int = 0


@dataclass
class SymmetryCfg:
    group: str = "auto"  # contract: auto|none|so2|so3|rotations|matrices
    planes: Optional[list[list[int]]] = None  # contract: rotation planes, e.g. [[0,1],[2,3]]
    coords: Optional[list[int]] = None  # coordinates so2/so3 act on (default: the first 2 / 3)
    particle_dim: Optional[int] = None  # contract: q holds particles of this many coordinates
    matrices: Optional[list[Any]] = None  # contract: explicit generators, each d×d (list of lists)
    translation: str = "auto"  # contract: auto (the target's: com for dw4, else none) | none | com (particles: model the centre-of-mass-free coordinates)
    permutations: bool = False  # contract: identical particles: augmentation relabels them; invariant Hamiltonians use pair-distance features


@dataclass
class ModelCfg:
    kind: str = "ehf"  # contract: ehf|nsf|efm
    invariant: bool = False  # contract: invariant-by-construction Hamiltonians
    blocks: int = 6  # T: flow blocks, each with its own Hamiltonian
    leapfrog_steps: int = 3  # L: leapfrog steps per block
    step_size: float = 0.2  # initial ε per block
    learn_step_size: bool = True
    hidden: int = 64  # MLP width (potential, kinetic, encoder)
    depth: int = 2  # hidden layers per MLP
    activation: str = "softplus"  # softplus|tanh|silu (smooth: forces must be differentiable)
    kinetic: str = "mlp"  # quadratic|mlp
    encoder: str = "auto"  # auto (equivariant when the group is rotations of 2-D planes, else gaussian) | gaussian (diagonal) | full (full covariance) | flow (conditional coupling flow) | equivariant
    standardise: bool = False  # whiten q by its group-invariant training mean and covariance (ehf; nsf ignores it)
    sigma_q: float = 1.0  # base N(0, σ_q² I) on q
    sigma_p: float = 1.0  # base N(0, σ_p² I) on p
    forces: str = "analytic"  # analytic (closed-form MLP gradients) | autograd (the reference path, slower)
    reversible: str = "auto"  # memory-flat backward: auto (when leapfrog_steps >= 16) | always | never
    # nsf baseline (zuko)
    nsf_transforms: int = 4
    nsf_bins: int = 8
    # efm: equivariant flow matching (a continuous flow; width model.hidden, MLP depth model.depth)
    efm_layers: int = 3  # EGNN layers of the particle vector field
    efm_atol: float = 1.0e-5  # dopri5 absolute tolerance (likelihood and sampling)
    efm_rtol: float = 1.0e-5  # dopri5 relative tolerance


@dataclass
class ConstraintCfg:
    mode: str = "dual"  # contract: none|penalty|dual
    rule: str = "additive"  # additive (projected dual ascent) | geco (multiplicative, EMA)
    tolerance: float = 1e-3  # contract: ε_k, the allowed mean squared bracket
    lr: float = 1.0  # contract: η, the multiplier's step
    init: float = 0.0  # contract: λ_k at the start (the fixed λ in penalty mode)
    ema: float = 0.9  # geco moving-average factor


@dataclass
class OptimCfg:
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    scheduler: str = "cosine"  # cosine|none
    warmup_steps: int = 100
    elbo_samples: int = 1  # contract: momentum samples per data point in the training objective (K of iwae)
    objective: str = "elbo"  # contract: elbo (the mean over the samples) | iwae (log-mean-exp: the IWAE_K bound, K = elbo_samples)
    estimator: str = "reparam"  # the encoder's gradient: reparam | dreg (doubly reparameterised; sticking the landing under the ELBO)
    on_nonfinite: str = "stop"  # stop (keep the last good checkpoint) | skip (skip the batch, halve the block's step)


@dataclass
class TrainerCfg:
    max_steps: int = 2000  # contract
    accelerator: str = "auto"  # contract
    devices: Any = 1  # contract: int or "auto"
    strategy: str = "auto"  # contract
    num_nodes: int = 1  # contract
    precision: str = "32-true"  # contract: 32-true|64-true|bf16-mixed…
    val_check_interval: int = 500  # validate every this many training steps
    patience: Optional[int] = None  # contract: stop after this many validations without improvement of the validation NLL (null: off)
    min_delta: float = 0.0  # contract: an improvement must lower the validation NLL by more than this (nats)
    log_every_n_steps: int = 25
    deterministic: bool = True
    ddp_timeout_s: int = 300


@dataclass
class WandbCfg:
    mode: str = "offline"  # contract: offline|online|disabled
    project: str = "lightning_ehf"  # contract
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerCfg:
    wandb: WandbCfg = field(default_factory=WandbCfg)


@dataclass
class EvalCfg:
    iw_samples: int = 256  # contract: K of the IWAE estimate for the test NLL (and validation, unless val_iw_samples)
    val_iw_samples: Optional[int] = None  # contract: K of the validation NLL (null: iw_samples); small K makes frequent validation cheap
    iw_chunk: int = 64  # momentum samples evaluated at once (memory bound)
    n_group_samples: int = 4  # group elements for the invariance error
    n_eval: int = 512  # data points used for the invariance / equivariance errors
    invariance_iw: int = 32  # K of the IWAE estimates compared in the invariance error
    compile: bool = False  # torch.compile the density evaluation (pays off only for large evaluations)


@dataclass
class PlotCfg:
    enabled: bool = True
    every_n_val: int = 4  # plot every N validation rounds (and always at the end)
    grid: int = 80  # resolution of density images


@dataclass
class ProgressCfg:
    mode: str = "auto"  # contract: auto (a bar on a terminal, plain lines otherwise) | bar | lines | none
    every_n_steps: int = 100  # contract: lines mode: a line at least every this many training steps ...
    every_s: float = 30.0  # contract: ... and at least every this many seconds


@dataclass
class CheckpointCfg:
    every_n_minutes: Optional[float] = None  # contract: also refresh last.ckpt after this many minutes of training (null: off)


@dataclass
class RunCfg:
    root: str = "runs"
    dir: Optional[str] = None  # contract: exact run folder (default runs/<experiment>/<timestamp>-<id>)


@dataclass
class Config:
    experiment: str = "default"
    seed: int = 0  # contract
    data: DataCfg = field(default_factory=DataCfg)
    symmetry: SymmetryCfg = field(default_factory=SymmetryCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    constraint: ConstraintCfg = field(default_factory=ConstraintCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    plots: PlotCfg = field(default_factory=PlotCfg)
    progress: ProgressCfg = field(default_factory=ProgressCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    run: RunCfg = field(default_factory=RunCfg)


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
