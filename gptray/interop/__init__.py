"""Interoperability with other tools' files: Hugging Face GPT-2 directories and the Hub."""
