# Data: the embedded synthetic demo set, and preprocessing of raw images into arrays.


rule make_demo:
    output:
        root=directory(DEMO_ROOT),
    log:
        "logs/make_demo.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    params:
        demo=config["demo"],
    script:
        "../scripts/make_demo.py"


rule prepare:
    input:
        raw=RAW_INPUTS,
    output:
        processed=directory(PROCESSED),
        summary="results/data/summary.json",
        rejected="results/data/rejected.csv",
        overview=report(
            "results/data/overview.png",
            caption="../report/data_overview.rst",
            category="Data",
        ),
    log:
        "logs/prepare.log",
    benchmark:
        "benchmarks/prepare.tsv"
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=4000,
    params:
        data=config["data"],
        prepare=config["prepare"],
        seed=config["seed"],
    script:
        "../scripts/prepare.py"
