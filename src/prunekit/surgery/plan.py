"""The pruning plan: what to cut, as plain data that saves to JSON and replays on a fresh model."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any

from .. import _io
from ..errors import ConfigError

FORMAT = "prunekit.plan/1"


def encode_ranges(indices: list[int]) -> list[int]:
    """Sorted indices as flat ``[start0, end0, start1, end1, ...]`` half-open runs."""
    out: list[int] = []
    for i in indices:
        if out and out[-1] == i:
            out[-1] = i + 1
        else:
            out += [i, i + 1]
    return out


def encode_indices(indices: list[int], size: int) -> list[int] | str:
    """Sorted indices as half-open runs, or as a bit string when that is shorter.

    The bit string is ``"bits:<size>:<base64 of the packed bits, big-endian>"``.
    """
    runs = encode_ranges(indices)
    if size < 256 or len(runs) * 3 < size // 3:  # readable runs unless bits are far shorter
        return runs
    bits = bytearray((size + 7) // 8)
    for i in indices:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return f"bits:{size}:{base64.b64encode(bytes(bits)).decode('ascii')}"


def decode_indices(value: list[int] | str) -> list[int]:
    """Inverse of :func:`encode_indices`."""
    if isinstance(value, str):
        try:
            tag, size, data = value.split(":", 2)
            raw = base64.b64decode(data, validate=True)
            n = int(size)
        except ValueError:
            raise ConfigError("a plan's bit string is damaged; save the plan again") from None
        if tag != "bits" or len(raw) != (n + 7) // 8:
            raise ConfigError("a plan's bit string is damaged; save the plan again")
        return [i for i in range(n) if raw[i >> 3] & (0x80 >> (i & 7))]
    return decode_ranges(value)


def decode_ranges(runs: list[int]) -> list[int]:
    """Inverse of :func:`encode_ranges`."""
    if len(runs) % 2:
        raise ConfigError("a plan's index runs must come in (start, end) pairs; "
                          "the file is damaged")
    return [i for s, e in zip(runs[::2], runs[1::2], strict=True) for i in range(s, e)]


@dataclass
class TensorCut:
    """How one parameter or buffer shrinks.

    Attributes:
        shape: the shape before pruning (checked on replay).
        kept: dimension -> kept indices along it (sorted).
    """

    shape: tuple[int, ...]
    kept: dict[int, list[int]]

    @property
    def new_shape(self) -> tuple[int, ...]:
        """The shape after pruning."""
        return tuple(len(self.kept[d]) if d in self.kept else s for d, s in enumerate(self.shape))


@dataclass
class GroupCut:
    """The decision for one group: which units stay, and where that shows.

    Attributes:
        id: the group's id in the graph it was planned on.
        name: readable name (first producer).
        size: units before.
        kept: kept unit indices.
        members: tensor name -> dimension -> kept positions for this group alone.
        unchecked: why zero-out equivalence cannot hold for this group (empty: it can).
        attrs: module attributes that follow this group's size (``groups``, ``num_heads``).
    """

    id: int
    name: str
    size: int
    kept: list[int]
    members: dict[str, dict[int, list[int]]]
    unchecked: list[str] = field(default_factory=list)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        """Number of units removed."""
        return self.size - len(self.kept)


def _is_set(value: Any) -> bool:
    """A PlanInfo field counts as set unless it is None or an empty list or dict."""
    return value is not None and not (isinstance(value, dict | list) and not value)


@dataclass
class PlanInfo(MutableMapping):
    """How a plan was made, and what it left whole: typed fields, saved in ``plan.json``.

    It also reads like the dict it replaces (``plan.info["excluded"]``,
    ``plan.info.get("target_reached")``): a field that was never set is absent.

    Attributes:
        criterion: the group criterion that ranked the units.
        ratio: the fraction of units asked to be removed per group (None with a budget).
        scope: ``"layer"``, ``"global"`` or ``"lamp"``.
        round_to: units kept in multiples of this.
        target: the budget asked for, ``{"params" | "macs" | ...: fraction}``.
        model: the class name of the model planned on.
        ignored: modules left alone (their outputs kept).
        target_reached: the fraction of the budget's quantity removed (budgets only).
        ratio_found: the ratio that meets the budget (budgets with a uniform scope).
        skipped: prunable groups left whole because another group cuts their dimension.
        excluded: groups the dry run left out, each with why.
        config_not_updated: Hugging Face config fields that could not follow the cut.
        compensation: what the transformer width cut folded into the next layer.
        cuts: the infos of the plans a combined plan was made from, in order.
        extra: anything else a tool records (kept through save and load).
    """

    criterion: str | None = None
    ratio: float | None = None
    scope: str | None = None
    round_to: int | None = None
    target: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    ignored: list[str] = field(default_factory=list)
    target_reached: float | None = None
    ratio_found: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    config_not_updated: list[str] = field(default_factory=list)
    compensation: dict[str, Any] = field(default_factory=dict)
    cuts: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: PlanInfo | dict[str, Any] | None) -> PlanInfo:
        """A PlanInfo from a dict (unknown keys go to ``extra``) or a copy of one."""
        info = cls()
        for key, value in dict(data or {}).items():
            info[key] = value
        return info

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as plain data."""
        return dict(self.items())

    def __getitem__(self, key: str) -> Any:
        if key in _INFO_FIELDS:
            value = getattr(self, key)
            if not _is_set(value):
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "cuts":  # plain data, so the plan saves as JSON
            value = [dict(c) for c in value]
        if key in _INFO_FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in _INFO_FIELDS:
            del self.extra[key]
            return
        value = self[key]  # KeyError when unset, as a dict
        setattr(self, key, type(value)() if isinstance(value, dict | list) else None)

    def __iter__(self) -> Iterator[str]:
        yield from (name for name in _INFO_FIELDS if _is_set(getattr(self, name)))
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: The typed fields of PlanInfo, in order (``extra`` holds the rest).
_INFO_FIELDS = tuple(f.name for f in fields(PlanInfo) if f.name != "extra")


@dataclass
class Plan:
    """A structured pruning plan (see :func:`prunekit.plan`).

    Attributes:
        tensors: qualified name -> :class:`TensorCut` for every tensor whose shape changes.
        attrs: module path -> attribute -> new value.
        config: path of the module owning a Hugging Face config -> field -> new value.
        aliases: extra names of tied tensors -> the first name.
        groups: the decision per group (for verification and reports).
        info: how the plan was made and what it left whole (:class:`PlanInfo`).
        before: the values ``attrs`` and ``config`` replace (checked on replay, so a
            model built differently from the original is refused); config entries
            are under ``"config:<path>"``.
        expected_views: per size-taking call of the traced forward pass, the shapes the
            cut model must give (from :meth:`Graph.predicted_views`; not saved): a dry
            run compares them to find code that regroups what it splits.
    """

    tensors: dict[str, TensorCut] = field(default_factory=dict)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    groups: list[GroupCut] = field(default_factory=list)
    info: PlanInfo = field(default_factory=PlanInfo)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    expected_views: list | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.info, PlanInfo):
            self.info = PlanInfo.of(self.info)

    # -- summary ------------------------------------------------------------------------
    @property
    def removed_units(self) -> int:
        """Units removed over all groups."""
        return sum(g.removed for g in self.groups)

    @property
    def left_whole(self) -> dict[str, str]:
        """Prunable groups this plan leaves whole, and why: a group sharing its dimension
        with one cut instead, or a cut the dry run refused (the forward pass breaks, or
        the code would regroup what it splits)."""
        out = dict(self.info.skipped)
        for name, why in self.info.excluded.items():
            out[name] = f"left whole because its cut fails the dry run: {why}"
        return out

    def __repr__(self) -> str:
        cut = [g for g in self.groups if g.removed]
        whole = len(self.left_whole)
        return (f"Plan({len(cut)} groups cut, {self.removed_units} units removed, "
                f"{len(self.tensors)} tensors reshaped"
                + (f"; {whole} prunable groups left whole, see plan.summary()" if whole else "")
                + ")")

    def summary(self) -> str:
        """What the plan cuts, and every prunable group it leaves whole with the reason.

        Example:
            >>> print(plan.summary())
        """
        lines = [repr(self)]
        lines += [f"  cut {g.name}: {len(g.kept)} of {g.size} units kept"
                  for g in self.groups if g.removed]
        lines += [f"  left whole {name}: {why}" for name, why in self.left_whole.items()]
        ignored = self.info.ignored
        if ignored:
            lines.append(f"  ignored modules (outputs kept): {', '.join(ignored)}")
        return "\n".join(lines)

    def subset(self, group_ids: set[int] | list[int]) -> Plan:
        """A plan that makes only the cuts of the given groups (no config changes)."""
        keep = set(group_ids)
        groups = [g for g in self.groups if g.id in keep]
        tensors: dict[str, TensorCut] = {}
        attrs: dict[str, dict[str, Any]] = {}
        for g in groups:
            for module, values in g.attrs.items():
                attrs.setdefault(module, {}).update(values)
            for name, dims in g.members.items():
                cut = tensors.setdefault(name, TensorCut(self.tensors[name].shape, {}))
                for d, kept in dims.items():
                    prev = cut.kept.get(d)
                    cut.kept[d] = kept if prev is None else sorted(set(prev) & set(kept))
        return Plan(tensors, attrs, {}, dict(self.aliases), groups, PlanInfo.of(self.info))

    # -- serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (index lists as half-open runs)."""
        return {
            "format": FORMAT,
            "info": self.info.to_dict(),
            "tensors": {
                n: {"shape": list(c.shape),
                    "kept": {str(d): encode_indices(k, c.shape[d]) for d, k in c.kept.items()}}
                for n, c in self.tensors.items()
            },
            "attrs": {m: {a: _jsonable(v) for a, v in d.items()} for m, d in self.attrs.items()},
            "config": self.config,
            "before": {m: {a: _jsonable(v) for a, v in d.items()} for m, d in self.before.items()},
            "aliases": self.aliases,
            "groups": [
                {"id": g.id, "name": g.name, "size": g.size, "kept": encode_indices(g.kept, g.size),
                 "unchecked": g.unchecked,
                 "attrs": {m: {a: _jsonable(v) for a, v in d.items()} for m, d in g.attrs.items()},
                 "members": {n: {str(d): "=" if k == g.kept else
                                 encode_indices(k, self._dim_size(n, d))
                                 for d, k in dims.items()}
                             for n, dims in g.members.items()}}
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a plan from :meth:`to_dict` data.

        Raises:
            ConfigError: not a plan, or a damaged entry (named).
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"not a prunekit plan (expected format {FORMAT!r}); "
                              "pass the plan.json that plan.save() wrote")
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"the plan is damaged ({type(e).__name__}: {e}); "
                              "save the plan again") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Plan:
        tensors = {
            n: TensorCut(tuple(c["shape"]),
                         {int(d): decode_indices(k) for d, k in c["kept"].items()})
            for n, c in data["tensors"].items()
        }
        groups = []
        for g in data.get("groups", []):
            kept = decode_indices(g["kept"])
            members = {n: {int(d): list(kept) if k == "=" else decode_indices(k)
                           for d, k in dims.items()} for n, dims in g["members"].items()}
            groups.append(GroupCut(g["id"], g["name"], g["size"], kept, members,
                                   list(g.get("unchecked", [])), g.get("attrs", {})))
        return cls(tensors, data.get("attrs", {}), data.get("config", {}),
                   data.get("aliases", {}), groups, data.get("info", {}), data.get("before", {}))

    def _dim_size(self, name: str, dim: int) -> int:
        return self.tensors[name].shape[dim]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically."""
        _io.write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plan written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"plan file {os.fspath(path)!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"plan file {os.fspath(path)!r} is not valid JSON ({e})") from None
        return cls.from_dict(data)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
