# TokenBill production image: one image, several roles (web, worker, beat, migrate),
# chosen by the command in docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=tokenbill.settings \
    TOKENBILL_DATA_DIR=/data \
    STATIC_ROOT=/app/static_root

WORKDIR /app
COPY requirements.lock pyproject.toml ./
RUN pip install -r requirements.lock

COPY . .
# Static files are collected at build time; whitenoise serves them from STATIC_ROOT.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --home-dir /app tokenbill \
    && mkdir -p /data && chown tokenbill /data
USER tokenbill

EXPOSE 8000
CMD ["sh", "-c", "uvicorn tokenbill.asgi:application --http tokenbill.server_protocol:HttpToolsProtocol --host 0.0.0.0 --port 8000 --workers ${WEB_WORKERS:-4} --proxy-headers --forwarded-allow-ips='*'"]
