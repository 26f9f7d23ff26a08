"""medgrounder: Lightning + Hydra experiment suite for medical multimodal LLMs that ground text in chest X-rays."""

from medgrounder.utils.resolvers import register as _register_resolvers

__version__ = "0.1.0"
_register_resolvers()
