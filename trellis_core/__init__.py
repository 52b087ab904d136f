"""trellis_core: our implementation of the TRELLIS model family (sparse tensors, attention and
sparse-conv backends, SS/SLat VAEs and flows, checkpoint I/O, samplers).

Nothing here touches the network at import time."""
from .sparse import SparseTensor
from .attention import attention_backend, available_backends, set_attention_backend
from .registry import MODEL_REGISTRY, TrellisModel, get_model_class, register_model
from . import models  # noqa: F401  (registers every model class)
from .models import *  # noqa: F401,F403
from .checkpoint import (HubDownloadError, from_pretrained, load_model_config, save_pretrained,
                         weights_sha256)
from .pipeline import Pipeline, TrellisPipeline

__all__ = [
    "SparseTensor", "attention_backend", "available_backends", "set_attention_backend", "MODEL_REGISTRY",
    "TrellisModel", "get_model_class", "register_model", "from_pretrained", "save_pretrained",
    "load_model_config", "weights_sha256", "HubDownloadError", "Pipeline", "TrellisPipeline",
    *models.__all__,
]
