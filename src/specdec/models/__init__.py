"""Language models behind one small protocol: prefill, extend, rollback."""

from specdec.models.base import LanguageModel, check_same_vocabulary
from specdec.models.hf import HFCausalLM, HFSeq2SeqLM, wrap

__all__ = ["HFCausalLM", "HFSeq2SeqLM", "LanguageModel", "check_same_vocabulary", "wrap"]
