# Explainability: occlusion sensitivity and Grad-CAM of each classifier, their faithfulness,
# where the model looks (lung fields vs periphery), sanity checks and the border shortcut probe.


rule explain:
    input:
        processed=PROCESSED,
        model=f"{MODELS}/{{task}}/{{arch}}/best.pt",
        code=code("explain.py"),
    output:
        metrics="results/explain/{task}/{arch}/metrics.json",
        maps="results/explain/{task}/{arch}/maps.npz",
        occlusion=report(
            "results/explain/{task}/{arch}/occlusion.png",
            caption="../report/explain_occlusion.rst",
            category="Explainability",
            subcategory="{task} {arch}",
        ),
        gradcam=report(
            "results/explain/{task}/{arch}/gradcam.png",
            caption="../report/explain_gradcam.rst",
            category="Explainability",
            subcategory="{task} {arch}",
        ),
        comparison=report(
            "results/explain/{task}/{arch}/comparison.png",
            caption="../report/explain_comparison.rst",
            category="Explainability",
            subcategory="{task} {arch}",
        ),
        lung_share=report(
            "results/explain/{task}/{arch}/lung_share.png",
            caption="../report/explain_lung_share.rst",
            category="Explainability",
            subcategory="{task} {arch}",
        ),
        faithfulness=report(
            "results/explain/{task}/{arch}/faithfulness.png",
            caption="../report/explain_faithfulness.rst",
            category="Explainability",
            subcategory="{task} {arch}",
        ),
    log:
        "logs/explain/{task}/{arch}.log",
    benchmark:
        "benchmarks/explain/{task}/{arch}.tsv"
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=6000,
    params:
        explain=config["explain"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/explain.py"


rule geometry_baseline:
    # The acquisition shortcut, measured: the class predicted from the original image size
    # alone (logistic regression on width, height, aspect; patient-grouped CV on train).
    input:
        unpack(geometry_inputs),
        processed=PROCESSED,
        code=code("geometry_baseline.py"),
    output:
        metrics="results/shortcut/geometry.json",
    log:
        "logs/geometry_baseline.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    params:
        geometry=config["geometry"],
        evaluate=section("evaluate", "n_boot"),
        seed=config["seed"],
    script:
        "../scripts/geometry_baseline.py"
