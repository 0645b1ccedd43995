# The application image: the web service (gunicorn) and the projection runners of
# docker-compose.yml. Configured at run time by environment (paymentsite/settings.py).
#   docker build -t paymentsite:local .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=paymentsite.settings

WORKDIR /app

# Dependencies first: their layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Hashed, compressed static files for whitenoise (DEBUG off: the manifest storage). The
# key here only lets the settings load for this build step; it is in no running
# container, which must be given its own SECRET_KEY. The code and static files stay
# root's: the app's user can read them, not change them.
RUN DEBUG=false SECRET_KEY=collectstatic-at-build-time-only-not-a-secret \
        python manage.py collectstatic --noinput --verbosity 0 \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

# By number, so that runtimes that check for a non-root user can see it is one.
USER 10001:10001

EXPOSE 8000

# Exec form: gunicorn gets docker's SIGTERM itself (graceful shutdown, see gunicorn.conf.py).
CMD ["gunicorn", "--config", "paymentsite/gunicorn.conf.py", "paymentsite.wsgi"]
