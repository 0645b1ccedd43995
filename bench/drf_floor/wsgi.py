"""WSGI entry point: gunicorn --config paymentsite/gunicorn.conf.py bench.drf_floor.wsgi"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.drf_floor.settings")
application = get_wsgi_application()
