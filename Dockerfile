# The operator image: kopf + the kubernetes client + the trainer's config models (no torch).
# Build: docker build -t longvideo-rl/operator:0.1.0 .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY operator ./operator
COPY hack/lvr_localcluster ./hack/lvr_localcluster
RUN pip install --no-cache-dir ".[operator]"
RUN useradd --uid 65532 --no-create-home lvr
USER 65532
ENTRYPOINT ["lvr", "operator", "run"]
