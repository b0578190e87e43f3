"""recbole-llmsrec: LLM-based sequential recommenders as RecBole models."""

__version__ = "0.1.0"
