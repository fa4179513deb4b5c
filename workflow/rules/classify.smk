# Classification: binary (normal vs pneumonia), then the three-class fine-tune (normal /
# bacteria / virus) started from the same architecture's binary weights; or, with
# train.joint_head, one three-class network and the binary model its fold (fold_binary). Then
# the operating point fitted on each model's val predictions; evaluation; model comparison.


rule train_binary:
    input:
        processed=PROCESSED,
        code=code("train.py"),
    output:
        model=f"{MODELS}/{{task,binary}}/{{arch}}/best.pt",
        history="results/classify/{task,binary}/{arch}/history.csv",
        val_predictions="results/classify/{task,binary}/{arch}/val_predictions.csv",
    log:
        "logs/train/{task,binary}/{arch}.log",
    benchmark:
        "benchmarks/train/{task,binary}/{arch}.tsv"
    conda:
        ENV
    threads: 8
    resources:
        mem_mb=12000,
        runtime=240,
    params:
        seed=config["seed"],
        device=config["device"],
        train=lambda w: train_recipe("binary", w.arch),
    script:
        "../scripts/train.py"


use rule train_binary as train_three_class with:
    input:
        processed=PROCESSED,
        **({} if JOINT else {"init": f"{MODELS}/binary/{{arch}}/best.pt"}),
        code=code("train.py"),
    output:
        model=f"{MODELS}/{{task,three_class}}/{{arch}}/best.pt",
        history="results/classify/{task,three_class}/{arch}/history.csv",
        val_predictions="results/classify/{task,three_class}/{arch}/val_predictions.csv",
    log:
        "logs/train/{task,three_class}/{arch}.log",
    benchmark:
        "benchmarks/train/{task,three_class}/{arch}.tsv"
    params:
        seed=config["seed"],
        device=config["device"],
        train=lambda w: train_recipe("three_class", w.arch),


if JOINT:
    # the binary model is the joint network folded: no binary training (train_binary never
    # runs; this rule makes its model and val predictions)
    ruleorder: fold_binary > train_binary

    rule fold_binary:
        input:
            model=f"{MODELS}/three_class/{{arch}}/best.pt",
            val_predictions="results/classify/three_class/{arch}/val_predictions.csv",
            code=code("fold_binary.py"),
        output:
            model=f"{MODELS}/binary/{{arch}}/best.pt",
            val_predictions="results/classify/binary/{arch}/val_predictions.csv",
        log:
            "logs/fold_binary/{arch}.log",
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=2000,
        script:
            "../scripts/fold_binary.py"


rule calibrate:
    input:
        predictions="results/classify/{task}/{arch}/val_predictions.csv",
        code=code("calibrate.py"),
    output:
        calibration=f"{MODELS}/{{task}}/{{arch}}/calibration.json",
    log:
        "logs/calibrate/{task}/{arch}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
    params:
        calibrate=config["calibrate"],
    script:
        "../scripts/calibrate.py"


rule evaluate_binary:
    input:
        model=f"{MODELS}/{{task}}/{{arch}}/best.pt",
        calibration=f"{MODELS}/{{task}}/{{arch}}/calibration.json",
        processed=PROCESSED,
        history=history_of,
        code=code("evaluate.py"),
    output:
        metrics="results/classify/{task,binary}/{arch}/metrics.json",
        predictions="results/classify/{task,binary}/{arch}/predictions.csv",
        confusion=report(
            "results/classify/{task,binary}/{arch}/confusion.png",
            caption="../report/classify_confusion.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
        roc=report(
            "results/classify/{task,binary}/{arch}/roc.png",
            caption="../report/classify_roc.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
        reliability=report(
            "results/classify/{task,binary}/{arch}/reliability.png",
            caption="../report/classify_reliability.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
        curves=report(
            "results/classify/{task,binary}/{arch}/curves.png",
            caption="../report/classify_curves.rst",
            category="Classification",
            subcategory="binary {arch}",
        ),
    log:
        "logs/evaluate/{task,binary}/{arch}.log",
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


use rule evaluate_binary as evaluate_three_class with:
    output:
        metrics="results/classify/{task,three_class}/{arch}/metrics.json",
        predictions="results/classify/{task,three_class}/{arch}/predictions.csv",
        confusion=report(
            "results/classify/{task,three_class}/{arch}/confusion.png",
            caption="../report/classify_confusion.rst",
            category="Classification",
            subcategory="three-class {arch}",
        ),
        roc=report(
            "results/classify/{task,three_class}/{arch}/roc.png",
            caption="../report/classify_roc.rst",
            category="Classification",
            subcategory="three-class {arch}",
        ),
        reliability=report(
            "results/classify/{task,three_class}/{arch}/reliability.png",
            caption="../report/classify_reliability.rst",
            category="Classification",
            subcategory="three-class {arch}",
        ),
        curves=report(
            "results/classify/{task,three_class}/{arch}/curves.png",
            caption="../report/classify_curves.rst",
            category="Classification",
            subcategory="three-class {arch}",
        ),
        folded=report(
            "results/classify/{task,three_class}/{arch}/confusion_folded.png",
            caption="../report/classify_confusion_folded.rst",
            category="Classification",
            subcategory="three-class {arch}",
        ),
    log:
        "logs/evaluate/{task,three_class}/{arch}.log",


rule compare_models:
    input:
        unpack(classifier_metrics),
        code=code("compare_models.py"),
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
    params:
        report=section("report", "test_label"),
    script:
        "../scripts/compare_models.py"
