"""gptray: distributed GPT pretraining on Ray (Data → Train → Tune) with MLflow tracking."""

__version__ = "0.1.0"
