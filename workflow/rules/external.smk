# External test sets (params external): each named set is prepared like the training images
# and every model is evaluated on it; nothing is fitted on it. Adding a set trains nothing: it
# adds its own prepare_external and evaluate_external jobs and a column of the summary.


rule make_demo_site:
    input:
        code=code("make_demo_site.py"),
    output:
        root=directory(DEMO_SITE_ROOT),
    log:
        "logs/make_demo_site.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    params:
        demo=section("demo", "site", "size"),
    script:
        "../scripts/make_demo_site.py"


rule list_external:
    input:
        code=code("list_external.py"),
    output:
        sets="results/external/sets.json",
    log:
        "logs/list_external.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
    params:
        external=config["external"],
    script:
        "../scripts/list_external.py"


rule prepare_external:
    input:
        raw=external_raw,
        processed=PROCESSED,
        code=code("prepare_external.py"),
    output:
        prepared=directory("data/external/{set}"),
        report="results/external/{set}/data.json",
        rejected="results/external/{set}/rejected.csv",
    log:
        "logs/prepare_external/{set}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
    params:
        external=lambda w: pick(f"external.{w.set}")["external"],
        data=section("data", "min_side", "max_pixels"),
    script:
        "../scripts/prepare_external.py"


rule evaluate_external:
    input:
        unpack(external_eval_inputs),
        prepared="data/external/{set}",
        report="results/external/{set}/data.json",
        code=code("evaluate_external.py"),
    output:
        metrics="results/external/{set}/metrics.json",
        predictions="results/external/{set}/predictions.csv",
        roc=report(
            "results/external/{set}/roc.png",
            caption="../report/external_roc.rst",
            category="External test sets",
            subcategory="{set}",
        ),
    log:
        "logs/evaluate_external/{set}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
    params:
        evaluate=section("evaluate", "n_boot", "ece_bins", "batch_size"),
        explain=section("explain", "shortcut", "lung_mask", "share_n_per_class"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/evaluate_external.py"
