"""Trainers: rectified-flow denoisers (SS, SLat) and the VAEs (SS occupancy, SLat encoder + mesh decoder)."""
from .trainer import TrainConfig, Trainer, sample_generator
from .flow import SLatFlowTrainer, SSFlowTrainer, flow_pair
from .init import initialize_weights

__all__ = ["TrainConfig", "Trainer", "sample_generator", "SSFlowTrainer", "SLatFlowTrainer", "flow_pair",
           "initialize_weights"]
