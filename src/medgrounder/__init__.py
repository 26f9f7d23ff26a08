"""medgrounder: Lightning + Hydra experiment suite for medical multimodal LLMs that ground text in chest X-rays."""

import warnings as _warnings

from medgrounder.utils.resolvers import register as _register_resolvers

__version__ = "0.1.0"
_register_resolvers()

# conf/hydra/launcher/submitit_slurm.yaml replaces the plugin's defaults under the same name on
# purpose (`hydra/launcher=submitit_slurm` is the documented switch); Hydra still validates it
# against the plugin's schema, and warns that it does.
_warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema")
