"""Gunicorn settings for Tollgate, read when gunicorn starts from the repository root.

``billing/serving.py`` says why: gunicorn's request-line limit sits above the app's own
``MAX_URL_LENGTH``, and the errors gunicorn answers itself take the service's JSON error shape.
"""

from billing import serving

limit_request_line = serving.LIMIT_REQUEST_LINE
serving.install()
