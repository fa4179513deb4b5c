"""The binary model of the joint head (train.joint_head): the three-class network folded.

Wildcards: arch
Inputs:  model=models/three_class/{arch}/best.pt
         val_predictions=results/classify/three_class/{arch}/val_predictions.csv
Outputs: model=models/binary/{arch}/best.pt   (the same weights: p(pneumonia) = p(bacteria)
                                               + p(virus))
         val_predictions=results/classify/binary/{arch}/val_predictions.csv   (for calibrate)
"""

from pneumocxr.joint import run_fold
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    run_fold(io.input["model"], io.input["val_predictions"], io.output)
