"""Fit one classifier's temperature and operating threshold on its val predictions.

Wildcards: task, arch
Inputs:  predictions=results/classify/{task}/{arch}/val_predictions.csv   (written by train)
Outputs: calibration=models/{task}/{arch}/calibration.json   (read by evaluate and predict)
Params:  calibrate (rule, target_sensitivity)
"""

from pneumocxr.calibration import run_calibration
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging() as log:
    result = run_calibration(io.input["predictions"], io.output["calibration"],
                             io.params["calibrate"])
    thr = result["operating_threshold"]
    log.info("temperature %.4f; threshold %.4f (%s): val sensitivity %.3f specificity %.3f",
             result["temperature"], thr["value"], thr["rule"], thr["val_sensitivity"],
             thr["val_specificity"])
