"""Drafters propose tokens for the target to verify."""

from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.model import ModelDrafter

__all__ = ["Drafter", "ModelDrafter", "Proposal"]
