"""The mount's inode numbers: the one place that packs and unpacks them.

An inode says where an entry is, so that nothing is remembered per inode:
  skeleton entries (the root, image dirs, layers/, config.json ...): 1, 2, 3 ... (the mount root is 1)
  tree entries: slot << (W + 1) | is_dir << W | value, where slot is the tree's place in the layout (>= 1),
  value a directory's tree node or anything else's member reference (hard links share one), and W the
  width of a reference of the image with the most layers. References grow with the layer count
  (tree/refs.py), so W does too: the widths are chosen per mount and checked, and no two entries share a number.
"""

from __future__ import annotations

from ..errors import ImgfsError
from ..tree.refs import ref_bits

MOUNT_ROOT = 1  # the inode the kernel asks for as the mount's root
INODE_BITS = 64  # FUSE node ids and st_ino are 64-bit


class Inodes:
    """The bit layout for one mount: `trees` tree slots, references of at most `layers` layers."""

    __slots__ = ("width", "slot_shift", "local_mask", "dir_bit")

    def __init__(self, trees: int, layers: int) -> None:
        self.width = ref_bits(layers)
        self.slot_shift = self.width + 1
        if trees.bit_length() + self.slot_shift > INODE_BITS:
            raise ImgfsError(f"an image of {layers} layers cannot be mounted (its inode numbers would collide):"
                             f" at most {max_layers()} layers can be")
        self.local_mask = (1 << self.slot_shift) - 1
        self.dir_bit = 1 << self.width

    def tree_root(self, slot: int) -> int:
        """The inode of the root of the tree in `slot` (its node 0)."""
        return slot << self.slot_shift | self.dir_bit

    def directory(self, slot: int, node: int) -> int:
        """The inode of directory node `node` of the tree in `slot`."""
        if not 0 <= node < self.dir_bit:
            raise OverflowError(f"tree node {node} does not fit in an inode")
        return slot << self.slot_shift | self.dir_bit | node

    def entry(self, slot: int, ref: int) -> int:
        """The inode of a non-directory with member reference `ref` in the tree in `slot`."""
        if not 0 <= ref < self.dir_bit:
            raise OverflowError(f"reference {ref} does not fit in an inode")
        return slot << self.slot_shift | ref

    def decode(self, ino: int) -> tuple[int, bool, int]:
        """(slot, is_dir, value) of an inode; slot 0: a skeleton entry, value its number."""
        slot = ino >> self.slot_shift
        if slot == 0:
            return 0, False, ino
        local = ino & self.local_mask
        return slot, bool(local & self.dir_bit), local & (self.dir_bit - 1)


def max_layers(images: int = 1) -> int:
    """The most layers an image can have and still be mounted (with `images` such images in one mount)."""
    best = 1
    for bits in range(1, INODE_BITS):
        layers = 1 << bits
        if (images * (layers + 1) + 1).bit_length() + ref_bits(layers) + 1 > INODE_BITS:
            break
        best = layers
    return best
