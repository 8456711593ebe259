"""shelfdet: dense shelf-object detection with Detectron2, locally and on SageMaker."""

__version__ = "0.1.0"
