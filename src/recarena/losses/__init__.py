"""Training objectives, chosen by ``loss=``. Each declares what it needs from a family (``Loss.needs``)."""

from recarena.losses.base import Loss, NoLoss
from recarena.losses.pointwise import MSELoss

__all__ = ["Loss", "MSELoss", "NoLoss"]
