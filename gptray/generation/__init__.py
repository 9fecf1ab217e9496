"""Text generation: KV-cached decoding (greedy, sampling, beam search) of prompts and batches of them."""

from gptray.generation.beam import beam_search
from gptray.generation.decode import Completion, generate
from gptray.generation.loading import checkpoint_tokenizer, load_model, resolve_device
from gptray.generation.stopping import StopCondition
from gptray.generation.text import TextStream, encode_prompt, generate_text, generate_texts

__all__ = ["Completion", "StopCondition", "TextStream", "beam_search", "checkpoint_tokenizer", "encode_prompt",
           "generate", "generate_text", "generate_texts", "load_model", "resolve_device"]
