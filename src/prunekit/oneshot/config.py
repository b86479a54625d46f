"""The typed, validated configuration of :func:`prunekit.oneshot`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..allocation import parse_pattern
from ..errors import ConfigError
from .methods import list_methods

ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True)
class OneShotConfig:
    """How to prune a pretrained model in one shot, block by block.

    Attributes:
        method: ``"sparsegpt"``, ``"wanda"`` or ``"magnitude"`` (see :func:`list_methods`).
        sparsity: fraction of each pruned layer's weights set to zero, in [0, 1);
            default 0.5. Not allowed together with ``pattern``.
        pattern: ``"N:M"`` (``"2:4"``, ``"4:8"``): keep N of every M consecutive input weights.
        allocation: ``"uniform"`` (every block at ``sparsity``) or ``"owl"``: per-block
            sparsity from the blocks' outlier ratios, averaging ``sparsity`` (Yin et al. 2023).
        owl_threshold: OWL's ``M``: a Wanda score above ``M`` times its layer's mean is an outlier.
        owl_lambda: OWL's ``lambda``: block sparsities lie within ``sparsity +- lambda``.
        blocksize: SparseGPT's column block (masks chosen and updates applied per block).
        dampening: SparseGPT's ``lambda`` as a fraction of the mean Hessian diagonal.
        batch_size: calibration samples run through a block at once (memory vs speed).
        blocks: dotted path of the ModuleList of blocks (``"model.layers"``); found by
            itself when empty.
        exclude: name patterns of layers left dense (``"re:.*\\.o_proj"``, ``"model.layers.0"``).
        sequential: block ``i + 1``'s inputs come from the pruned block ``i`` (the
            SparseGPT / Wanda reference scheme: two passes per block); False takes them from
            the dense block's outputs of the statistics pass (one pass per block, about
            half the time; as if all statistics came from one dense forward pass).
        quiet: no progress bar.
        rollback: keep a copy of each block's weights until the whole run succeeded, so a
            failure leaves the model as it was (costs one copy of the pruned weights).
    """

    method: str = "sparsegpt"
    sparsity: float | None = None
    pattern: str | None = None
    allocation: str = "uniform"
    owl_threshold: float = 5.0
    owl_lambda: float = 0.08
    blocksize: int = 128
    dampening: float = 0.01
    batch_size: int = 8
    blocks: str = ""
    exclude: tuple[str, ...] = ()
    sequential: bool = True
    quiet: bool = False
    rollback: bool = True

    def __post_init__(self) -> None:
        if self.method not in list_methods():
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(list_methods())}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(
                f"unknown allocation {self.allocation!r}; valid: {', '.join(ALLOCATIONS)}"
            )
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        self._check_amount()
        self._check_numbers()

    def _check_amount(self) -> None:
        if self.pattern is not None:
            parse_pattern(self.pattern)
            if self.sparsity is not None:
                raise ConfigError(
                    f"pattern={self.pattern!r} fixes the sparsity itself; drop sparsity"
                )
            if self.allocation != "uniform":
                raise ConfigError("allocation='owl' sets unstructured sparsities; drop pattern "
                                  "or use allocation='uniform'")
            return
        s = self.sparsity
        if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s)
                                  and 0.0 <= s < 1.0):
            raise ConfigError(f"sparsity must be in [0, 1), got {s!r}; 0.5 prunes half the weights")

    def _check_numbers(self) -> None:
        positive = {"blocksize": self.blocksize, "batch_size": self.batch_size,
                    "owl_threshold": self.owl_threshold}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if not (isinstance(self.dampening, (int, float)) and self.dampening >= 0):
            raise ConfigError(f"dampening must be >= 0, got {self.dampening!r}")
        if not (isinstance(self.owl_lambda, (int, float)) and 0 <= self.owl_lambda < 0.5):
            raise ConfigError(f"owl_lambda must be in [0, 0.5), got {self.owl_lambda!r}")

    @property
    def target_sparsity(self) -> float:
        """The unstructured sparsity asked for (0.5 when neither it nor a pattern is given)."""
        return 0.5 if self.sparsity is None else float(self.sparsity)

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of the pattern, or None."""
        return None if self.pattern is None else parse_pattern(self.pattern)

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> OneShotConfig:
        """Build from keywords; an unknown keyword names the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(valid))}")
        return cls(**kwargs)
