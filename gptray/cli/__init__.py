"""The command line interface (the only place that prints and exits).

Each handler imports the library it calls inside its body, so that `gptray --help` and a mistyped
command answer without waiting for torch, Ray and MLflow to import.
"""
