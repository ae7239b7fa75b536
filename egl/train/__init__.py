"""The built-in training loop for recipes: logs, checkpoints with bit-exact resume,
TensorBoard, and data-parallel training under ``torchrun`` (see ``docs/training.md``)."""

from egl._amp import inner_scale
from egl.train.checkpoint import DataStream, latest_checkpoint, load_checkpoint, save_checkpoint
from egl.train.distributed import init_distributed
from egl.train.ema import WeightAverage
from egl.train.loop import MissingDependencyError, fit, seed_everything
from egl.train.loss_scale import LossScaler
from egl.train.lr_schedule import LRSchedule
from egl.train.validation import Validation

__all__ = ["fit", "seed_everything", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "DataStream",
           "init_distributed", "MissingDependencyError", "LossScaler", "Validation",
           "LRSchedule", "WeightAverage", "inner_scale"]
