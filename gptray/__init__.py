"""gptray: distributed GPT pretraining on Ray (Data → Train → Tune) with MLflow tracking.

`gptray.load(path)` gives a trained model and its tokenizer, `gptray.generate(model, tokenizer, prompt)`
text (gptray/api.py). Importing gptray stays light: the API, and torch with it, loads on first use.
"""

__version__ = "0.1.0"

_API = ("load", "generate")


def __getattr__(name: str):
    if name in _API:
        import gptray.api as api  # on first use: `import gptray` loads neither torch nor anything else

        return getattr(api, name)
    raise AttributeError(f"module 'gptray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
