"""A minimal DRF project, used only by ``bench/http_load.py`` as the baseline that a
reviewer would pick for the site's API: what stock Django REST framework costs per
request under the same gunicorn configuration, middleware and database settings.

    gunicorn --config paymentsite/gunicorn.conf.py bench.drf_floor.wsgi

Two endpoints (``views.py``): ``POST /nowrite/`` validates and answers, writing nothing;
``POST /durable/`` also inserts one row with one durable commit (SQLite, WAL,
``synchronous=FULL``, a database file of its own, as the embedded event store commits).
"""
