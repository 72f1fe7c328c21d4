"""`lvr rollout-server`: serve a rollout engine over HTTP (the RLJob's rollout sidecar; rollout/server.py)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("rollout-server", help="serve a rollout engine (transformers or vLLM) over HTTP: the RL "
                       "trainer's rollout sidecar")
    p.add_argument("--config", required=True, help="the trainer config YAML: its `model` section says what to "
                   "load, its `rollout` section the engine settings (the sidecar mounts the job's own config)")
    p.add_argument("--engine", choices=("transformers", "vllm"), default=None,
                   help="engine to serve (default: the config's rollout.engine)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: only containers "
                   "of the same pod reach it)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--batch-size", type=int, default=16, help="transformers engine: sequences per generate "
                   "call (default 16)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    p.add_argument("--drain-on-sigterm", action="store_true",
                   help="on SIGTERM keep serving until the trainer's POST /shutdown (a sidecar that is a regular "
                   "container gets SIGTERM with the trainer, which still needs it for its last step and checkpoint; "
                   "the pod's grace period bounds the wait)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import ConfigError, load_config
    from lvr_trainer.rollout.server import serve

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        raise CLIError(str(err)) from None
    engine_kind = args.engine or cfg.rollout.engine.value
    engine = build_served_engine(cfg, engine_kind, args.batch_size)
    print(f"rollout-server: {engine_kind} engine ready, serving on http://{args.host}:{args.port}", flush=True)
    serve(engine, args.host, args.port, log_level=args.log_level, drain_on_sigterm=args.drain_on_sigterm)
    return 0


def build_served_engine(cfg, engine_kind: str, batch_size: int):
    """The engine this server runs, loaded from the config's `model` section on this machine's device."""
    import torch

    from lvr_trainer.cli import CLIError
    from lvr_trainer.train.setup import load_policy

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.torch_threads:          # as the trainer: same kernels, same replies
        torch.set_num_threads(cfg.train.torch_threads)
    if engine_kind == "transformers":
        from lvr_trainer.rollout.hf import TransformersEngine

        model, tokenizer, _ = load_policy(cfg.model, device)
        return TransformersEngine(model, tokenizer, batch_size)
    from lvr_trainer.model.loading import inference_dtype, resolve_model_path
    from lvr_trainer.rollout.vllm_engine import VllmEngine, import_vllm, rollout_settings

    try:
        import_vllm()
    except ImportError:
        raise CLIError("--engine vllm needs vLLM installed (the rollout image, or `make vllm-venv` and "
                       ".venv-vllm/bin/lvr); or serve --engine transformers") from None
    settings = rollout_settings(cfg, inference_dtype(cfg.model, device), cfg.model.seed)
    if cfg.model.path is not None:              # a checkpoint directory: vLLM reads it as it is
        return VllmEngine(str(resolve_model_path(cfg.model.path)), **settings)
    model, tokenizer, _ = load_policy(cfg.model, torch.device("cpu"))   # a preset: saved once for vLLM
    return VllmEngine.from_model(model, tokenizer, **settings)
