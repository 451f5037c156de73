"""Dataset readers and generators (installed as ``sparseconv.datasets``)."""

from sparseconv.datasets.labels import SEMANTICKITTI_CLASSES, semantickitti_learning_map
from sparseconv.datasets.synthetic import SceneConfig, synthesize_scan

__all__ = ["SEMANTICKITTI_CLASSES", "SceneConfig", "semantickitti_learning_map", "synthesize_scan"]
