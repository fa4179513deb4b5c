"""Compare architectures on test: grouped bar chart with 95% CIs (the study's Figure 3).

Inputs:  any number of metrics JSONs, e.g. binary_resnet18=results/classify/binary/resnet18/
         metrics.json (names are free; every input is compared)
Outputs: figure=results/classify/model_comparison.png
         table=results/classify/model_comparison.csv
Params:  report (test_label: what the test split is, in the title)
"""

from pneumocxr.compare import compare_models
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    compare_models(list(io.input.values()), io.output["figure"], io.output.get("table"),
                   split_label=io.params["report"]["test_label"])
