# The operator image: kopf, the kubernetes client and the API/config models (pydantic). No torch, and no
# test harness: hack/ (lvr_localcluster) is never copied, and setuptools skips its missing folder.
# Build from the repository root: docker build -t longvideo-rl/operator:0.1.0 .
# BASE: any Debian-like image with python3 (and its venv module); the local cluster builds it on a Debian
# base made by debootstrap (hack/build-images.sh).
# Runs as UID 65532, the user the Helm chart's securityContext sets (read-only root filesystem).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY operator ./operator
# The project itself (a local path, not a PyPI name): its dependencies are pinned by pyproject.toml ranges.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/lvr && /opt/lvr/bin/pip install --no-cache-dir ".[operator]"

FROM ${BASE}
COPY --from=build /opt/lvr /opt/lvr
ENV PATH=/opt/lvr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["lvr", "operator", "run"]
