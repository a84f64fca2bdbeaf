"""How wide each column of a CLI table is: the arithmetic of rich's Table, over cell lengths alone.

rich lays a table out by measuring every cell through its general renderer, which costs more
than the request behind `lbsolo apps` once there are a few hundred rows. For tables of one-line
cells the layout is plain arithmetic: each column as wide as its widest cell plus its padding,
then, if the table is wider than the terminal, the widest columns narrowed first and the rest
evenly. This module does that arithmetic and nothing else; lbsolo.cli.common draws the table
(and leaves any table this cannot lay out exactly as rich would to rich). It must not import
rich (lbsolo.cli.common is its only user) nor print.
"""

from __future__ import annotations

PADDING = 2  # a space each side of every cell


def column_widths(lengths: list[list[int]], available: int) -> list[int] | None:
    """Each column's width, padding included, for one-line cells of these lengths (rows of columns).

    `available` is the room for the cells, the borders already taken off. None when a column
    would be left too narrow for a character, where rich's own rules for slivers apply.
    """
    if available <= PADDING or not lengths:
        return None
    widths = [min(max(column) + PADDING, available) for column in zip(*lengths, strict=True)]
    if sum(widths) > available:
        widths = _narrowed(widths, available)
    if sum(widths) > available:
        widths = _reduced(sum(widths) - available, [1] * len(widths), widths, widths)
    return widths if min(widths) > PADDING else None


def _narrowed(widths: list[int], available: int) -> list[int]:
    """Take the excess off the widest columns, down to the next widest (or to nothing when all are
    as wide), until the table fits."""
    excess = sum(widths) - available
    while sum(widths) and excess > 0:
        widest = max(widths)
        difference = widest - max((w for w in widths if w != widest), default=0)
        if not difference:
            break
        ratios = [1 if w == widest else 0 for w in widths]
        widths = _reduced(excess, ratios, [min(excess, difference)] * len(widths), widths)
        excess = sum(widths) - available
    return widths


def _reduced(total: int, ratios: list[int], limits: list[int], values: list[int]) -> list[int]:
    """values, with `total` taken off in proportion to ratios, at most limits[i] from value i."""
    ratios = [ratio if limit else 0 for ratio, limit in zip(ratios, limits, strict=True)]
    ratio_left = sum(ratios)
    if not ratio_left:
        return list(values)
    out = []
    for ratio, limit, value in zip(ratios, limits, values, strict=True):
        if ratio and ratio_left > 0:
            cut = min(limit, round(ratio * total / ratio_left))
            out.append(value - cut)
            total -= cut
            ratio_left -= ratio
        else:
            out.append(value)
    return out
