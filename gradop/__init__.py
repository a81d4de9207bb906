"""gradop: high-fidelity scribble-guided image synthesis with latent diffusion models (GradOP, GradOP+)."""
from .models import load_pipeline
from .pipeline import GradOPPipeline, GradOPPipelineOutput
from .schedulers import RELEASED_DDIM_CONFIG, make_scheduler, released_ddim_scheduler

__all__ = ["GradOPPipeline", "GradOPPipelineOutput", "load_pipeline", "make_scheduler", "released_ddim_scheduler",
           "RELEASED_DDIM_CONFIG"]
__version__ = "0.1.0"
