# Run summary and model card: every stage's headline metrics next to the published numbers.
# The HTML report is Snakemake's own: `snakemake ... --report-after-run --report
# results/report.html` (what `make demo` / `make run` do).


rule summary:
    input:
        unpack(summary_inputs),
    output:
        summary="results/summary.json",
        markdown=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        model_card=report(
            "results/MODEL_CARD.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/summary.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
    params:
        evaluate=section("evaluate", "n_boot"),
        report=config["report"],
        seed=config["seed"],
    script:
        "../scripts/summary.py"
