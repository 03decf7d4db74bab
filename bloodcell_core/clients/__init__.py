"""Producers' Python clients: ``local.Client`` (same machine as the database and Redis) and ``http.HttpClient``.

They never import the database models; the HTTP client imports neither SQLAlchemy nor Keras.
"""
