# A quick probe of region binding while designing the toy (not part of the suite; the report's "Region semantics"
# is the measurement, at its w' of 0.4 and 1):   python benchmarks/toy_binding_probe.py MODEL [SCENES] [WEIGHTS]
#   e.g. python benchmarks/toy_binding_probe.py toy 8 1,3,10
"""The report's region-semantics table and checks (`gradop.toy.evaluate.region_semantics`) on fewer scenes and at
any w': held-out scenes whose forest and meadow are painted in one green, unbound, bound, swapped and kept out."""
import sys

import torch

from gradop import load_pipeline
from gradop.toy.evaluate import region_semantics
from gradop.toy.judge import load_judge

model = sys.argv[1] if len(sys.argv) > 1 else "toy"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 8
weights = tuple(float(w) for w in (sys.argv[3] if len(sys.argv) > 3 else "1,3,10").split(","))
torch.set_num_threads(2)
pipe = load_pipeline(model)
pipe.set_progress_bar_config(disable=True)
lines, checks = region_semantics(pipe, load_judge(), count, weights)
print("\n".join(lines))
print("\n".join(f"{target}: {measured} ({'met' if ok else 'not met'})" for target, measured, ok in checks))
