"""Text in, text out: encode prompts (checked against the model's vocabulary), decode, stream, stop."""

from __future__ import annotations

import sys
from collections.abc import Callable

from gptray.config import GenerateConfig
from gptray.core.errors import ConfigError
from gptray.generation.beam import beam_search
from gptray.generation.decode import Completion, generate
from gptray.generation.stopping import END_OF_TEXT, StopCondition
from gptray.model import GPT

DOCUMENT_BREAK = "\n\n──── end of document ────\n\n"  # what a sampled <|endoftext|> reads as


class DisplayTokenizer:
    """The tokenizer, with each end-of-text token decoded as DOCUMENT_BREAK: a sample that runs through
    a document's end shows a visible break, not the token's raw text glued to the next document."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def decode(self, tokens) -> str:
        eot, parts, current = self.tokenizer.eot_token, [], []
        for token in tokens:
            if int(token) == eot:
                parts.append(current)
                current = []
            else:
                current.append(token)
        return DOCUMENT_BREAK.join(self.tokenizer.decode(part) for part in [*parts, current])


def for_display(tokenizer, settings: GenerateConfig):
    """What completions are decoded with: end-of-text as a document break, unless raw tokens are asked."""
    if settings.raw_special_tokens or isinstance(tokenizer, DisplayTokenizer):
        return tokenizer
    return DisplayTokenizer(tokenizer)


def encode_prompt(tokenizer, text: str, vocab_size: int) -> list[int]:
    """The prompt's tokens; an empty prompt starts a new document (<|endoftext|>)."""
    tokens = tokenizer.encode(text) or [tokenizer.eot_token]
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise ConfigError("prompt", f"{text!r} encodes to token {bad[0]} ({tokenizer.decode([bad[0]])!r}), "
                                    f"outside the model's vocabulary of {vocab_size} tokens (the tokenizer "
                                    f"{tokenizer.name!r} has {tokenizer.vocab_size}); use a prompt the model "
                                    f"can read")
    return tokens


def stop_condition(tokenizer, settings: GenerateConfig) -> StopCondition:
    stop_tokens = frozenset([tokenizer.eot_token]) if settings.stop_at_eot else frozenset()
    return StopCondition(stop_tokens=stop_tokens, stop_strings=list(settings.stop), decode=tokenizer.decode)


def generate_texts(model: GPT, tokenizer, settings: GenerateConfig, prompts: list[str],
                   on_token: Callable[[int, int], None] | None = None) -> list[Completion]:
    """Continue each prompt; a completion's `text` leaves out the prompt, the stop token and the stop
    string. Sampling and greedy decoding run the prompts as one batch; beam search one prompt at a time.
    `on_token(i, token)` streams prompt i's tokens as they come (not with beam search)."""
    vocab = model.config.vocab_size
    tokenizer = for_display(tokenizer, settings)
    encoded = [encode_prompt(tokenizer, p, vocab) for p in prompts]
    stop = stop_condition(tokenizer, settings)
    allowed = min(vocab, tokenizer.vocab_size)  # a padded vocabulary's extra ids decode to nothing
    if settings.num_beams > 1:
        completions = [beam_search(model, tokens, settings, stop, allowed) for tokens in encoded]
    else:
        completions = generate(model, encoded, settings, stop, allowed, on_token)
    for completion in completions:
        completion.text = stop.text(completion.tokens, completion.finish_reason)
    return completions


def generate_text(model: GPT, tokenizer, settings: GenerateConfig, prompt: str | None = None) -> str:
    """The continuation of one prompt (default settings.prompt) as text, without the prompt."""
    return generate_texts(model, tokenizer, settings, [settings.prompt if prompt is None else prompt])[0].text


class TextStream:
    """Writes a completion's text as its tokens arrive. Text is held back while it could still change:
    an incomplete UTF-8 character, or a tail that may turn into a stop string (which is cut)."""

    def __init__(self, tokenizer, settings: GenerateConfig, out=None):
        self.tokenizer = for_display(tokenizer, settings)
        self.out = out or sys.stdout
        self.stop_tokens = {tokenizer.eot_token} if settings.stop_at_eot else set()
        self.stop_strings = list(settings.stop)
        self.hold = max((len(s) for s in settings.stop), default=1) - 1
        self.tokens: list[int] = []
        self.written = 0  # characters of the text written so far

    def __call__(self, row: int, token: int) -> None:
        self.tokens.append(token)
        if token in self.stop_tokens:
            return
        text = self.tokenizer.decode(self.tokens)
        if any(s in text for s in self.stop_strings):
            return  # generation ends here; finish() writes the text up to the stop string
        safe = len(text) - self.hold
        while safe > self.written and text[safe - 1] == "\ufffd":  # may be half a character
            safe -= 1
        if safe > self.written:
            self.out.write(text[self.written : safe])
            self.out.flush()
            self.written = safe

    def finish(self, completion: Completion) -> None:
        """Write what is left of the final text (cut at its stop token or string)."""
        text = completion.text or ""
        if len(text) > self.written:
            self.out.write(text[self.written :])
        self.out.write("\n")
        self.out.flush()
        self.tokens, self.written = [], 0


__all__ = ["DOCUMENT_BREAK", "END_OF_TEXT", "TextStream", "encode_prompt", "generate_text", "generate_texts",
           "stop_condition"]
