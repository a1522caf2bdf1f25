"""Filesystem trees: one layer as its tar holds it, or every layer merged with whiteouts applied."""

from .merge import layer_tree, merged_tree
from .refs import MAX_LAYERS, layer_of, layer_refs, make_ref, member_of
from .tree import Entry, Tree, split_path

__all__ = ["MAX_LAYERS", "Entry", "Tree", "layer_of", "layer_refs", "layer_tree", "make_ref", "member_of",
           "merged_tree", "split_path"]
