"""Machine learning: datasets and splits, preprocessing, training, calibration, inference, evaluation, reports.

Nothing here imports the service, the clients or the CLI. The service uses only ``ml.serving``.
"""
