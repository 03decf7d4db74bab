"""The service: the database and its models, submission, classification, reports, review, promotion, webhooks, exports.

It uses the machine-learning side only through ``bloodcell_core.ml.serving``; it never imports the clients or the CLI.
"""
