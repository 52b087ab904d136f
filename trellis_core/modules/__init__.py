"""Neural-network building blocks shared by the TRELLIS models."""
from .attention import MultiHeadAttention, SparseMultiHeadAttention
from .blocks import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
