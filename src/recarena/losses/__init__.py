"""Training objectives, chosen by ``loss=``. Each declares what it needs from a family (``Loss.needs``)."""

from recarena.losses.base import AlternatingLoss, Loss, NoLoss
from recarena.losses.frequency import FrequencyQ, ItemFrequencyEstimator, StreamingQ
from recarena.losses.pairwise import BPRLoss
from recarena.losses.pointwise import MSELoss
from recarena.losses.sampled_softmax import (
    InBatchSoftmaxLoss,
    LogQCorrectedSoftmaxLoss,
    MixedNegativeSamplingLoss,
)

__all__ = [
    "AlternatingLoss",
    "BPRLoss",
    "FrequencyQ",
    "InBatchSoftmaxLoss",
    "ItemFrequencyEstimator",
    "LogQCorrectedSoftmaxLoss",
    "Loss",
    "MSELoss",
    "MixedNegativeSamplingLoss",
    "NoLoss",
    "StreamingQ",
]
