# A quick probe of region binding while designing the toy (not part of the suite; the report's "Region semantics"
# is the measurement):   python benchmarks/toy_binding_probe.py MODEL [SCENES] [WEIGHTS]   e.g. toy 8 1,3,10
"""On held-out scenes whose forest and meadow are painted in one green: the share of the forest region judged forest
and of the meadow region judged forest / meadow, unbound, bound and with the two phrases swapped, at each w'."""
import sys

import numpy as np
import torch

from gradop import load_pipeline
from gradop.colors import to_hex
from gradop.metrics import semantic_accuracy
from gradop.toy.evaluate import binding_scenes
from gradop.toy.judge import load_judge
from gradop.toy.world import CLASSES

model = sys.argv[1] if len(sys.argv) > 1 else "toy"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 8
weights = [float(w) for w in (sys.argv[3] if len(sys.argv) > 3 else "1,3,10").split(",")]
torch.set_num_threads(2)
pipe, judge = load_pipeline(model), load_judge()
pipe.set_progress_bar_config(disable=True)
scenes = binding_scenes(count)
prompt = "a photo of a forest and a meadow"
runs = [("unbound", None, 0.0)] + [(f"{kind} w'={w:g}", kind, w) for w in weights for kind in ("bound", "swapped")]
print(f"{count} scenes, prompt {prompt!r}; share of patches: forest region → forest | meadow region → forest | "
      "meadow region → meadow")
for name, kind, weight in runs:
    shares = []
    for i, s in enumerate(scenes):
        green = {c: to_hex(np.median(s.painting[s.labels == CLASSES.index(c)], axis=0)) for c in ("forest", "grass")}
        phrases = ("forest", "meadow") if kind == "bound" else ("meadow", "forest")
        kwargs = {} if kind is None else {"regions": dict(zip(green.values(), phrases)), "region_weight": weight}
        image = pipe.gradop_plus(prompt, s.painting, generator=torch.Generator().manual_seed(i), output_type="pt",
                                 **kwargs).images.float()
        forest, meadow = (torch.from_numpy(s.labels == CLASSES.index(c)) for c in ("forest", "grass"))
        shares.append([semantic_accuracy(image, forest, "forest", judge).item(),
                       semantic_accuracy(image, meadow, "forest", judge).item(),
                       semantic_accuracy(image, meadow, "grass", judge).item()])
    print(f"{name:<16}" + "  ".join(f"{v:.2f}" for v in np.nanmean(shares, 0)), flush=True)
