"""Language models behind one small protocol: prefill, extend, rollback."""

from specdec.models.base import LanguageModel, check_same_vocabulary
from specdec.models.hf import HFCausalLM, HFSeq2SeqLM
from specdec.models.loading import load_model
from specdec.models.static import StaticCausalLM
from specdec.models.wrap import wrap

__all__ = ["HFCausalLM", "HFSeq2SeqLM", "LanguageModel", "check_same_vocabulary", "load_model",
           "StaticCausalLM", "wrap"]
