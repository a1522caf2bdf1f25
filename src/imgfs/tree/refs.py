"""References: the one int a tree names an entry by, `layer << 32 | member`. Decoded here only."""

from __future__ import annotations

from ..errors import FormatError

SHIFT = 32
MASK = (1 << SHIFT) - 1
# The most layers an image may have: far above Docker's 127, and low enough that references (and the
# mount's inodes built from them, which must stay below 2^47) never collide. Past it an image is refused.
MAX_LAYERS = 4096


def make_ref(layer: int, member: int) -> int:
    """The reference of member `member` of layer `layer` (0-based position, bottom first)."""
    return layer << SHIFT | member


def layer_of(ref: int) -> int:
    """The 0-based layer position a (non-negative) reference names."""
    return ref >> SHIFT


def member_of(ref: int) -> int:
    """The member number, in its layer's index, a (non-negative) reference names."""
    return ref & MASK


def ref_bits(layers: int) -> int:
    """How many bits the biggest reference of an image of `layers` layers takes."""
    return max(1, (max(layers, 1) - 1).bit_length()) + SHIFT


def layer_refs(layer: int) -> range:
    """Every reference a member of `layer` can have (`ref in layer_refs(p)` is a cheap range test)."""
    return range(layer << SHIFT, (layer + 1) << SHIFT)


def check_layer_count(n: int) -> None:
    """Refuse an image with more layers than references can name (FormatError)."""
    if n > MAX_LAYERS:
        raise FormatError(f"the image has {n} layers, more than imgfs supports ({MAX_LAYERS})")
