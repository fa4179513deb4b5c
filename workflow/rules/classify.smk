# Classification: binary (normal vs pneumonia), then the 3-class fine-tune (normal / bacteria /
# virus) started from the same architecture's binary weights; evaluation; model comparison.


rule train_binary:
    input:
        processed=PROCESSED,
    output:
        model=f"{MODELS}/binary/{{arch}}/best.pt",
        history="results/classify/binary/{arch}/history.csv",
    log:
        "logs/train/binary/{arch}.log",
    benchmark:
        "benchmarks/train/binary/{arch}.tsv"
    conda:
        ENV
    threads: 8
    resources:
        mem_mb=12000,
        runtime=240,
    params:
        train=config["train"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train.py"


use rule train_binary as train_3class with:
    input:
        processed=PROCESSED,
        init=f"{MODELS}/binary/{{arch}}/best.pt",
    output:
        model=f"{MODELS}/3class/{{arch}}/best.pt",
        history="results/classify/3class/{arch}/history.csv",
    log:
        "logs/train/3class/{arch}.log",
    benchmark:
        "benchmarks/train/3class/{arch}.tsv"


rule evaluate_binary:
    input:
        model=f"{MODELS}/binary/{{arch}}/best.pt",
        processed=PROCESSED,
        history="results/classify/binary/{arch}/history.csv",
    output:
        metrics="results/classify/binary/{arch}/metrics.json",
        predictions="results/classify/binary/{arch}/predictions.csv",
        confusion=report(
            "results/classify/binary/{arch}/confusion.png",
            caption="../report/classify_confusion.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
        roc=report(
            "results/classify/binary/{arch}/roc.png",
            caption="../report/classify_roc.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
        reliability=report(
            "results/classify/binary/{arch}/reliability.png",
            caption="../report/classify_reliability.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
        curves=report(
            "results/classify/binary/{arch}/curves.png",
            caption="../report/classify_curves.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
    log:
        "logs/evaluate/binary/{arch}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
    params:
        evaluate=config["evaluate"],
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"


use rule evaluate_binary as evaluate_3class with:
    input:
        model=f"{MODELS}/3class/{{arch}}/best.pt",
        processed=PROCESSED,
        history="results/classify/3class/{arch}/history.csv",
    output:
        metrics="results/classify/3class/{arch}/metrics.json",
        predictions="results/classify/3class/{arch}/predictions.csv",
        confusion=report(
            "results/classify/3class/{arch}/confusion.png",
            caption="../report/classify_confusion.rst",
            category="Classification",
            subcategory="3-class {arch}",
        ),
        roc=report(
            "results/classify/3class/{arch}/roc.png",
            caption="../report/classify_roc.rst",
            category="Classification",
            subcategory="3-class {arch}",
        ),
        reliability=report(
            "results/classify/3class/{arch}/reliability.png",
            caption="../report/classify_reliability.rst",
            category="Classification",
            subcategory="3-class {arch}",
        ),
        curves=report(
            "results/classify/3class/{arch}/curves.png",
            caption="../report/classify_curves.rst",
            category="Classification",
            subcategory="3-class {arch}",
        ),
        folded=report(
            "results/classify/3class/{arch}/confusion_folded.png",
            caption="../report/classify_confusion_folded.rst",
            category="Classification",
            subcategory="3-class {arch}",
        ),
    log:
        "logs/evaluate/3class/{arch}.log",


rule compare_models:
    input:
        unpack(classifier_metrics),
    output:
        figure=report(
            "results/classify/model_comparison.png",
            caption="../report/classify_comparison.rst",
            category="Classification",
        ),
        table="results/classify/model_comparison.csv",
    log:
        "logs/compare_models.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/compare_models.py"
