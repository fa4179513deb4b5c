# pneumocxr: pneumonia detection and typing on pediatric chest X-rays.
#
#   snakemake --cores 8 all                                  # real data (params.yaml)
#   snakemake --cores 2 all --configfile config/demo.yaml    # embedded synthetic demo
#
# params.yaml is the one config; overlays in config/ are merged on top (--configfile).
# dvc.yaml is generated from this workflow (`make dvc.yaml`); tests/test_workflow.py checks it.
# The HTML report (every figure with its caption and params) is Snakemake's own:
#   snakemake ... all --report-after-run --report results/report.html     (make demo / make run)

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/anomaly.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
