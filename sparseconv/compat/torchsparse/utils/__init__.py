"""``torchsparse.utils``: voxel quantisation and batch collation."""

from sparseconv.compat.torchsparse.utils import collate, quantize

__all__ = ["collate", "quantize"]
