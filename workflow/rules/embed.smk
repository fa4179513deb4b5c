# Embeddings of the trained classifiers: penultimate-layer features, t-SNE maps, k-NN.


rule embed:
    input:
        processed=PROCESSED,
        model=f"{MODELS}/{{task}}/{{arch}}/best.pt",
        code=code("embed.py"),
    output:
        embeddings="results/embed/{task}/{arch}/embeddings.npz",
    log:
        "logs/embed/{task}/{arch}.log",
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=6000,
    params:
        embed=section("embed", "batch_size", "channels_last"),
        device=config["device"],
    script:
        "../scripts/embed.py"


rule tsne_knn:
    input:
        embeddings="results/embed/{task}/{arch}/embeddings.npz",
        code=code("tsne_knn.py"),
    output:
        tsne=report(
            "results/embed/{task}/{arch}/tsne.png",
            caption="../report/embed_tsne.rst",
            category="Embeddings",
            subcategory="{task} {arch}",
        ),
        confusion=report(
            "results/embed/{task}/{arch}/knn_confusion.png",
            caption="../report/embed_confusion.rst",
            category="Embeddings",
            subcategory="{task} {arch}",
        ),
        index=f"{MODELS}/{{task}}/{{arch}}/knn_index.npz",
        metrics="results/embed/{task}/{arch}/metrics.json",
    log:
        "logs/tsne_knn/{task}/{arch}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        embed=section("embed", "tsne", "knn", "bootstrap"),
        seed=config["seed"],
    script:
        "../scripts/tsne_knn.py"
