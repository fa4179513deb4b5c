"""t-SNE maps, k-NN classification (k and distance chosen on val) and separability of one
model's embeddings, next to the network head's own predictions.

Inputs:  embeddings=results/embed/{task}/{arch}/embeddings.npz
Outputs: tsne=results/embed/{task}/{arch}/tsne.png
         confusion=results/embed/{task}/{arch}/knn_confusion.png
         index=models/{task}/{arch}/knn_index.npz
         metrics=results/embed/{task}/{arch}/metrics.json
Params:  embed (tsne, knn, bootstrap), seed
"""

from pneumocxr.tsne_knn import run_tsne_knn
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    cfg = io.params["embed"]
    run_tsne_knn(
        io.input["embeddings"],
        tsne_png=io.output["tsne"],
        confusion_png=io.output["confusion"],
        index_path=io.output["index"],
        metrics_path=io.output["metrics"],
        seed=io.params["seed"],
        tsne=cfg["tsne"],
        knn=cfg["knn"],
        bootstrap=cfg["bootstrap"],
    )
