# The operator image: kopf, the kubernetes client and the API/config models (pydantic). No torch, and no
# test harness: hack/ (lvr_localcluster) is never copied, and setuptools skips its missing folder.
# Build from the repository root: docker build -t longvideo-rl/operator:0.1.0 .
# Runs as UID 65532, the user the Helm chart's securityContext sets (read-only root filesystem).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY operator ./operator
# The project itself (a local path, not a PyPI name): its dependencies are pinned by pyproject.toml ranges.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[operator]"

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["lvr", "operator", "run"]
