"""medgrounder: Lightning + Hydra experiment suite for medical multimodal LLMs that ground text in chest X-rays."""

__version__ = "0.1.0"
