"""ScalingNote: LLM dual-tower retrieval with a distilled query encoder for online serving."""

__version__ = "0.1.0"
