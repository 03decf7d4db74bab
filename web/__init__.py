"""The review console: web pages for technologists, supervisors and admins (served by the API process under /ui)."""
