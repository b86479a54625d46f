"""Why a dimension cannot be cut or checked: typed facts, rendered as text only at the edge.

A :class:`Reason` is the sentence people read (it *is* a ``str``, so messages, JSON plans and
``inspect`` output are unchanged) and carries the facts code reads: its ``kind``, and for
sizes written in the code the operator and the module that spell them. Code decides on
``reason.kind`` / ``reason.module``, never by matching the sentence.

Example:
    >>> r = Reason.literal("aten.view", "encoder.attn")
    >>> r.kind, r.op, r.module
    ('literal', 'aten.view', 'encoder.attn')
    >>> str(r)
    'size written in the code (aten.view in encoder.attn)'
"""

from __future__ import annotations

#: Kinds that block a dimension for reasons nobody needs to read twice: the model's own
#: inputs and outputs, kernel and spatial sizes, unused tensors, rows looked up by index,
#: integer buffers. ``prunekit inspect`` hides groups blocked only by these.
TRIVIAL_KINDS = frozenset(
    {"model_input", "model_output", "kernel", "unused", "index", "spatial", "int_buffer"})


class Reason(str):
    """A reason as text, with its facts.

    Attributes:
        kind: what sort of reason (``literal``, ``unchecked``, ``model_input``,
            ``model_output``, ``kernel``, ``spatial``, ``unused``, ``index``, ``int_buffer``,
            ``other``).
        op: the operator that spelled a size (``literal``) or computed statistics over the
            dimension (``unchecked``), else None.
        module: the module path where it happened ("" for the model itself), else None.
    """

    kind: str
    op: str | None
    module: str | None

    def __new__(cls, text: str, *, kind: str = "other", op: str | None = None,
                module: str | None = None) -> Reason:
        self = super().__new__(cls, text)
        self.kind, self.op, self.module = kind, op, module
        return self

    @classmethod
    def literal(cls, op: str, module: str) -> Reason:
        """A size spelled out by ``op`` in ``module`` (``x.view(-1, 400)``)."""
        return cls(f"size written in the code ({op} in {module or '<model>'})", kind="literal",
                   op=op, module=module)


def kind_of(reason: str) -> str:
    """The kind of a reason (``"other"`` for plain strings, e.g. from an older plan file)."""
    return getattr(reason, "kind", "other")
