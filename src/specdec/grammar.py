"""Constraints compiled by llguidance: the token mask of every position, per request.

Why llguidance and not xgrammar: both compute CPU token bitmasks and roll back, but xgrammar
needs `triton` and `apache-tvm-ffi` on Linux x86_64 (a heavy install for a CPU engine), while
llguidance 1.9.1 installs with no dependency and offers `compute_ff_tokens` (forced tokens).

GrammarCompiler (one per tokenizer: building llguidance's tokenizer takes ~1.5 s on a 150k
vocabulary, so it is built once, on first use) turns a Constraint into a validated grammar
and gives each request its own GrammarMatcher. A matcher holds one request's parser state at
the end of its output; `masks_along` reads the masks of a draft block by consuming the drafts
and rolling them back, so the state always stays at the accepted output.

Stop tokens: llguidance's own EOS bit is replaced by the request's stop tokens, allowed
exactly when the grammar accepts; a grammar that has stopped (nothing more may follow) ends
the sequence, with or without a stop token.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.gbnf_to_lark import any_to_lark

from specdec.constraint import Constraint
from specdec.errors import InvalidParameter, SpecdecError

# JSON layout: one space after ':' and ',' (as json.dumps and most models write it), no other
# whitespace: a model cannot pad its output with endless blanks, and more tokens are forced
JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
GRAMMAR_CACHE = 64  # compiled grammars kept per compiler (a server sees the same schemas)


class ConstraintError(SpecdecError, RuntimeError):
    """A constrained sequence reached a state where no token is allowed (a dead end)."""


class GrammarCompiler:
    """Compiles constraints for one tokenizer whose model has `vocab_size` logits."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll: LLTokenizer | None = None
        self._grammars: OrderedDict[Constraint, str] = OrderedDict()
        # a server compiles in its request handlers and makes matchers in its engine thread
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> LLTokenizer:
        """llguidance's view of the tokenizer, built on first use."""
        with self._lock:
            if self._ll is None:
                self._ll = ll_tokenizer(self.hf_tokenizer, self.vocab_size)
            return self._ll

    def compile(self, constraint: Constraint) -> str:
        """The constraint's llguidance grammar; InvalidParameter (naming constraint.name)
        when it does not compile or allows nothing this tokenizer can write."""
        with self._lock:
            grammar = self._grammars.get(constraint)
            if grammar is not None:
                self._grammars.move_to_end(constraint)
                return grammar
        grammar = _grammar(constraint)
        message = LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if message and not message.startswith("WARNING"):
            raise InvalidParameter(constraint.name, f"{constraint.name} does not compile: "
                                   f"{_first_lines(message)}")
        matcher = LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidParameter(constraint.name, f"{constraint.name} does not compile: "
                                   f"{_first_lines(matcher.get_error())}")
        allowed = _bits(matcher, self.vocab_size)
        allowed[sorted(i for i in self._blocked() if i < self.vocab_size)] = False
        if not matcher.is_accepting() and not bool(allowed.any()):
            raise InvalidParameter(constraint.name, f"{constraint.name} matches nothing the "
                                   "model's tokenizer can write")
        with self._lock:
            self._grammars[constraint] = grammar
            if len(self._grammars) > GRAMMAR_CACHE:
                self._grammars.popitem(last=False)
        return grammar

    def matcher(self, constraint: Constraint, stop_ids: set[int]) -> GrammarMatcher:
        """A fresh matcher for one request (its stop tokens end an accepted output)."""
        matcher = LLMatcher(self.ll_tokenizer, self.compile(constraint), log_level=0)
        return GrammarMatcher(matcher, self.vocab_size, stop_ids, self._blocked())

    def _blocked(self) -> set[int]:
        """Ids a grammar never allows: llguidance's EOS (the request's stop tokens stand in
        for it) and the unknown token (it means no text)."""
        unknown = getattr(self.hf_tokenizer, "unk_token_id", None)
        return set(self.ll_tokenizer.eos_tokens) | ({unknown} if isinstance(unknown, int)
                                                    else set())


class GrammarMatcher:
    """One request's parser state: committed at the end of its output, and a speculative
    `path` of draft tokens past it that reading masks moves along (see the module
    docstring). Masks read along a step's drafts are cached until the output advances, so
    drafting and verifying the same tokens computes each mask once."""

    def __init__(self, matcher: LLMatcher, vocab_size: int, stop_ids: set[int],
                 blocked: set[int]):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.stops = frozenset(i for i in stop_ids if i < vocab_size)
        self.stop_ids = torch.tensor(sorted(self.stops), dtype=torch.long)
        self.blocked = torch.tensor(sorted(i for i in blocked if i < vocab_size),
                                    dtype=torch.long)
        self._path: list[int] = []  # consumed past the committed output
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def stopped(self) -> bool:
        """True when the grammar is complete at the current state and nothing may follow."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    def mask_at(self, path: list[int]) -> torch.Tensor | None:
        """bool [V]: the tokens allowed after the output plus `path` (stop tokens where the
        grammar accepts; past a completed grammar see `_stop_mask`); None when the grammar
        refuses `path` itself. ConstraintError when nothing is allowed (a dead end)."""
        key = tuple(path)
        mask = self._masks.get(key)
        if mask is not None:
            return mask
        if not self._goto(path):
            return None
        if self.stopped:
            mask = self._stop_mask()
        else:
            mask = _bits(self.matcher, self.vocab_size)
            mask[self.blocked] = False
            if self.matcher.is_accepting():
                mask[self.stop_ids] = True
            if not bool(mask.any()):
                error = self.matcher.get_error()
                raise ConstraintError("the constraint allows no next token"
                                      + (f": {_first_lines(error)}" if error else ""))
        self._masks[key] = mask
        return mask

    def masks_along(self, drafts: list[int]) -> tuple[torch.Tensor, int]:
        """Masks [k + 1, V] of the positions a block verifies: position i after drafts[:i].
        Past the first draft the mask refuses (or a stop token), that draft is rejected for
        sure (p = 0) or ends the output, so the positions after it, never emitted, repeat its
        mask. Also returns how many drafts the grammar allows in a row."""
        masks = [self.mask_at([])]
        for i, token in enumerate(drafts):
            last = masks[-1]
            assert last is not None
            if not bool(last[token]) or token in self.stops:
                break
            mask = self.mask_at(drafts[: i + 1])
            if mask is None:
                break
            masks.append(mask)
        self.settle()
        valid = len(masks) - 1
        masks.extend([masks[-1]] * (len(drafts) + 1 - len(masks)))
        return torch.stack(masks), valid  # type: ignore[arg-type]

    def tree_masks(self, tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Masks [N, V] of a verified tree: node 0 the pending token (the output's end), node
        j's mask the state after the tokens on its root path; below a node the grammar
        refuses (rejected for sure), its parent's mask."""
        masks: list[torch.Tensor] = []
        paths: list[list[int] | None] = []
        for j, parent in enumerate(parents):
            if parent < 0:
                path: list[int] | None = []
            else:
                above = paths[parent]
                token = tokens[j]
                ok = above is not None and bool(masks[parent][token]) and \
                    token not in self.stops
                path = above + [token] if ok else None  # type: ignore[operator]
            mask = None if path is None else self.mask_at(path)
            if mask is None:
                path, mask = None, masks[parent]
            paths.append(path)
            masks.append(mask)
        self.settle()
        return torch.stack(masks)

    def settle(self) -> None:
        """Back to the committed output (drafting and verifying left the path elsewhere)."""
        self._goto([])

    def accept_output(self, tokens: list[int]) -> tuple[int, bool]:
        """Commit a step's emitted tokens; returns how many to keep and whether the grammar
        completed there (the output ends: tokens past that point are dropped). A stop token
        where the grammar accepts is kept unconsumed (the output ends there too)."""
        self.settle()
        self._masks.clear()
        for i, token in enumerate(tokens):
            if token in self.stops and self.matcher.is_accepting():
                return i + 1, False
            if self.matcher.try_consume_tokens([token]) != 1:
                raise ConstraintError(f"token {token} breaks the constraint: "
                                      f"{_first_lines(self.matcher.get_error())}")
            if self.stopped:
                return i + 1, True
        return len(tokens), False

    def forced(self, limit: int) -> list[int]:
        """Up to `limit` tokens the grammar forces next (llguidance's fast-forward tokens:
        the canonical tokenization of the forced bytes, good drafts even where the mask
        allows another split)."""
        self.settle()
        if limit <= 0 or self.matcher.is_stopped():
            return []
        return self.matcher.compute_ff_tokens()[:limit]

    def guide(self, prefix: list[int]) -> DraftGuide:
        """What a drafter masks its q with, continuing after the output plus `prefix`."""
        return DraftGuide(self, list(prefix))

    def _goto(self, path: list[int]) -> bool:
        """Move the speculative path to `path`; False (left at its longest valid prefix)
        when the grammar refuses a token of it."""
        common = 0
        for a, b in zip(self._path, path, strict=False):
            if a != b:
                break
            common += 1
        back = len(self._path) - common
        if back:
            if not self.matcher.rollback(back):
                raise ConstraintError(f"grammar rollback of {back} tokens failed: "
                                      f"{self.matcher.get_error()}")
            del self._path[common:]
        for token in path[common:]:
            if self.matcher.is_stopped() or self.matcher.try_consume_tokens([token]) != 1:
                return False
            self._path.append(token)
        return True

    def _stop_mask(self) -> torch.Tensor:
        """Past a completed grammar: stop tokens only, or, with none, any token (such a
        position is cut by the output's end, never emitted)."""
        if len(self.stop_ids):
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[self.stop_ids] = True
            return mask
        return torch.ones(self.vocab_size, dtype=torch.bool)


class DraftGuide:
    """A drafter's view of a request's grammar along its drafts: `allowed()` masks the next
    draft's q, `advance(token)` follows the draft. Masking q only raises acceptance: the
    verification is exact whatever the drafter proposes."""

    def __init__(self, grammar: GrammarMatcher, prefix: list[int]):
        self.grammar = grammar
        self.path = prefix
        self.off = False  # past a refused draft or a stop token: nothing to mask any more

    def allowed(self) -> torch.Tensor:
        mask = None if self.off else self.grammar.mask_at(self.path)
        if mask is None:
            self.off = True
            return torch.ones(self.grammar.vocab_size, dtype=torch.bool)
        return mask

    def advance(self, token: int) -> None:
        if token in self.grammar.stops:
            self.off = True
        self.path.append(token)


def mask_logits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """logits [..., V] with disallowed tokens at -inf (masks bool, broadcastable)."""
    return logits.masked_fill(~masks.to(logits.device), float("-inf"))


def ll_tokenizer(tokenizer: Any, vocab_size: int) -> LLTokenizer:
    """llguidance's tokenizer for a Hugging Face fast tokenizer, `vocab_size` wide; tokenizers
    whose decoder llguidance does not read (e.g. WordLevel with a Fuse decoder) go through
    each token's decoded bytes."""
    import llguidance.hf  # transformers: imported only when a constraint is used
    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    except ValueError:
        return LLTokenizer(llguidance.TokenizerWrapper(_DecodedTokens(tokenizer)),
                           n_vocab=vocab_size)


class _DecodedTokens:
    """The fields llguidance.TokenizerWrapper reads, from a tokenizer's decode()."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        specials = set(tokenizer.all_special_ids)
        self.special_token_ids = sorted(specials)
        # a special token's bytes never occur in text: llguidance marks them by their name
        self.tokens = [b"<" + str(tokenizer.convert_ids_to_tokens(i)).encode() + b">"
                       if i in specials else tokenizer.decode([i]).encode()
                       for i in range(len(tokenizer))]

    def __call__(self, text: bytes) -> list[int]:
        return self.tokenizer(text.decode("utf-8", "replace"),
                              add_special_tokens=False).input_ids


def _grammar(constraint: Constraint) -> str:
    """llguidance grammar text for the constraint (not yet validated)."""
    name = constraint.name
    try:
        if constraint.kind == "regex":
            return LLMatcher.grammar_from_regex(constraint.source)
        if constraint.kind == "grammar":
            return LLMatcher.grammar_from_lark(any_to_lark(constraint.source))
        schema = {"type": "object"} if constraint.kind == "json_object" else \
            json.loads(constraint.source)
        options = {**JSON_OPTIONS, "lenient": not constraint.strict}
        return LLMatcher.grammar_from_json_schema(schema, defaults=options)  # type: ignore
    except Exception as error:  # the GBNF translator and the schema reader raise plain errors
        raise InvalidParameter(name, f"{name} does not compile: {error}") from None


def _bits(matcher: LLMatcher, vocab_size: int) -> torch.Tensor:
    """The matcher's next-token bitmask as bool [vocab_size] (ids past the tokenizer: no)."""
    import llguidance.torch  # it compiles a kernel at import (seconds): constrained rows only

    words = llguidance.torch.allocate_token_bitmask(1, vocab_size)
    llguidance.torch.fill_next_token_bitmask(matcher, words, 0)
    bits = (words[0, :, None] >> _SHIFTS) & 1
    return bits.flatten()[:vocab_size].bool()


_SHIFTS = torch.arange(32, dtype=torch.int32)


def _first_lines(message: str, lines: int = 3) -> str:
    return " ".join(message.strip().splitlines()[:lines])
