"""Learning stage: distil YAMNet (teacher) into a tiny INT8 DS-CNN (student).

Modules: ``teacher`` (YAMNet on log-mel patches), ``student`` (DS-CNN, MAC/parameter count),
``distill`` (KD losses, teacher-as-filter, resampling, training loop, teacher-output cache),
``export`` (float / INT8 TFLite, saved_model.zip), ``evaluate`` (AUC, best-F1, N-of-M false
alerts, TFLite Micro runner), ``report`` (metrics.json, report.md/html), ``train`` (end-to-end
run), ``ei_train`` (Edge Impulse learning-block entry point).
"""
