# Anomaly detection: a convolutional autoencoder learns normal chest X-rays (CLAHE images of
# NORMAL train patients only); pneumonia is flagged by its anomaly score at the EER threshold
# chosen on the validation split.


rule train_autoencoder:
    input:
        processed=PROCESSED,
        code=code("train_autoencoder.py"),
    output:
        model=f"{MODELS}/autoencoder/best.pt",
        history="results/anomaly/history.csv",
    log:
        "logs/train_autoencoder.log",
    benchmark:
        "benchmarks/train_autoencoder.tsv"
    conda:
        ENV
    threads: 8
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        anomaly=section("anomaly", "model", "train"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train_autoencoder.py"


rule evaluate_anomaly:
    input:
        model=f"{MODELS}/autoencoder/best.pt",
        processed=PROCESSED,
        code=code("evaluate_anomaly.py"),
    output:
        metrics="results/anomaly/metrics.json",
        scores="results/anomaly/scores.csv",
        score_state="results/anomaly/score_state.pt",
        reconstructions=report(
            "results/anomaly/reconstructions.png",
            caption="../report/anomaly_reconstructions.rst",
            category="Anomaly detection",
        ),
        histogram=report(
            "results/anomaly/score_histogram.png",
            caption="../report/anomaly_histogram.rst",
            category="Anomaly detection",
        ),
        roc=report(
            "results/anomaly/roc.png",
            caption="../report/anomaly_roc.rst",
            category="Anomaly detection",
        ),
    log:
        "logs/evaluate_anomaly.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
    params:
        anomaly=section("anomaly", "score", "evaluate"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/evaluate_anomaly.py"
