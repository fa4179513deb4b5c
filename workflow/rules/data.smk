# Data: the params check, the embedded synthetic demo set, and preprocessing of raw images.


rule check_params:
    # Snakemake has validated the config at start-up already; this job writes the resolved
    # params of the run. Its DVC twin depends on every key of params.yaml, so under DVC a
    # typo or a key that changes which stages exist stops the run even when no other stage
    # reads the edited key.
    input:
        code=code("check_params.py"),
    output:
        params="results/params.json",
    log:
        "logs/check_params.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
    params:
        all=without_display(config),
    script:
        "../scripts/check_params.py"


rule make_demo:
    input:
        code=code("make_demo.py"),
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
        demo=section("demo", "n_train", "n_test", "n_val", "size", "seed"),
    script:
        "../scripts/make_demo.py"


rule prepare:
    input:
        raw=RAW_INPUTS,
        code=code("prepare.py"),
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
    script:
        "../scripts/prepare.py"
