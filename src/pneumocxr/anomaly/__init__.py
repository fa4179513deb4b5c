"""Anomaly detection: an autoencoder learns normal chest X-rays; a score flags the rest.

The study's detector (its Figures 10-11): a convolutional autoencoder trained with the mean
squared error on NORMAL training images only (CLAHE-preprocessed), an anomaly score per image,
and a threshold chosen on the validation split where the false positive and false negative
rates are equal (EER), then applied to the test split.

Why the score is a *structural* error of the worst pixels (measured on the shared Kermany copy;
``bench/anomaly_experiments.py``, numbers in ``bench/results/anomaly_experiments.json``):
pneumonia X-rays are hazier than normal ones -- opacities wash out ribs, vessels and the
diaphragm edge -- so they hold *less* fine structure, and fine structure is what a small
autoencoder fails to reconstruct. Errors that count lost detail therefore rank normals as the
anomalies: the gradient-map error gives test AUROC 0.19, and the mean squared error is weak
(0.58 after 15 epochs, 0.72 after 30). The default score is instead ``ssim`` aggregated by
``topk`` over the worst 2% of pixels: SSIM compares local structure (correlation) and contrast
*normalised by the local variance*, so the blurred but aligned reconstruction of a normal rib
cage costs little, while a region the normal-only model cannot produce -- it paints normal
lung over a consolidation -- is structurally wrong; the top-2% mean keeps a focal opacity from
being averaged away over the image. It flags what the autoencoder learned to be normal, with
no sign chosen on labels: with untrained weights the same score ranks backwards (test AUROC
0.19: against a structureless output it just counts structure, like the pixel errors), and it
improves as the autoencoder learns normal anatomy (0.84 after 15 epochs, 0.88 after 30); its
worst pixels sit in the lung fields of pneumonia images and at the image borders of normal
ones. It was chosen on the validation split (``bench/anomaly_experiments.py``,
``select_score``).

Densities fitted on the normal training images are offered too: ``feature_stats`` (Mahalanobis
distance of the per-channel mean and spread of the encoder's first-block responses) ranks as
well (test AUROC 0.89) but equally with *untrained* weights -- it measures global texture
(haze), not anything the autoencoder learned. ``latent_mahalanobis`` (a Gaussian over the
bottleneck codes) reaches 0.90 after 5-10 epochs but fades (0.76 at 30) as the code comes to
encode fine detail; ``patch_mahalanobis`` (per-position Gaussians, PaDiM-style) behaves alike.

Layout (import the submodules themselves; this package file imports nothing, so a stage that
uses one of them does not depend on the rest):

* the network: :class:`pneumocxr.models.ConvAutoencoder`, beside the classifiers;
* :mod:`.train`: the ``train_autoencoder`` stage (the shared resumable loop of
  :mod:`pneumocxr.fitloop`, the shared checkpoint format); it does not import the scores;
* :mod:`.scores`: pixel errors (``mse``, ``ssim``, ``gradient``, aggregated by ``mean`` /
  ``max`` / ``topk``), ``feature_error``, and densities fitted on the normal training images
  (``latent_mahalanobis``, ``latent_knn``, ``feature_stats``, ``patch_mahalanobis``);
* :mod:`.detect`: the EER threshold on val, metrics with patient-bootstrap CIs, the trained
  detector (:func:`~.detect.load_detector`);
* :mod:`.evaluate`: the ``evaluate_anomaly`` stage.
"""
