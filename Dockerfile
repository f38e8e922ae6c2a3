# The session-manager image: the API (`python -m service serve`, the default command) and the
# background worker (`python -m service worker`) run from this one image.
#
#   docker build -t session-manager:0.1.0 .
#
# BASE_IMAGE defaults to the public Python image; the local stack (devcluster/images.py) builds
# from a Debian rootfs of its own, offline, and passes pip's PIP_* settings to read its wheels.
#
# Runs as a numeric non-root user on a read-only root filesystem: nothing is written outside
# /tmp (an emptyDir in k8s-manifests/) and /dev/shm (gunicorn's worker heartbeat files).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# pip reads these from the environment when they are passed; unset otherwise.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_BREAK_SYSTEM_PACKAGES

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall them.
# Runtime dependencies only; requirements-dev.txt (tests, linters) never enters the image.
COPY requirements.txt ./
RUN python3 -m pip install --no-cache-dir -r requirements.txt

COPY service/ service/
COPY templates/ templates/
COPY templates-redis/ templates-redis/
COPY templates-light/ templates-light/
# Byte-code compiled at build time: at run time the filesystem is read-only.
RUN python3 -m compileall -q service

USER 10001:10001
EXPOSE 8080
CMD ["python3", "-m", "service", "serve"]
