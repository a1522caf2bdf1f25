"""Filesystem trees: one layer as its tar holds it, or every layer merged with whiteouts applied."""

from .merge import layer_tree, merged_tree
from .tree import Entry, Tree, split_path

__all__ = ["Entry", "Tree", "layer_tree", "merged_tree", "split_path"]
