"""gradop: high-fidelity scribble-guided image synthesis with latent diffusion models (GradOP, GradOP+)."""
from .callback import PaintingCallback
from .callback_pipeline import CallbackPipeline
from .models import load_pipeline
from .pipeline import GradOPPipeline, GradOPPipelineOutput
from .schedulers import RELEASED_DDIM_CONFIG, make_scheduler, released_ddim_scheduler

__all__ = ["GradOPPipeline", "GradOPPipelineOutput", "PaintingCallback", "CallbackPipeline", "load_pipeline",
           "make_scheduler", "released_ddim_scheduler", "RELEASED_DDIM_CONFIG"]
__version__ = "0.1.0"
