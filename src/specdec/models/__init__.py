"""Language models behind one small protocol: prefill, extend, rollback."""

from specdec.models.base import LanguageModel, check_same_vocabulary
from specdec.models.hf import HFCausalLM, HFSeq2SeqLM, wrap
from specdec.models.loading import load_model

__all__ = ["HFCausalLM", "HFSeq2SeqLM", "LanguageModel", "check_same_vocabulary", "load_model",
           "wrap"]
