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
                   "--drain-timeout-s bounds the wait)")
    p.add_argument("--drain-timeout-s", type=float, default=120.0,
                   help="with --drain-on-sigterm: stop this many seconds after SIGTERM even without /shutdown (a "
                   "trainer that was killed sends none); keep it below the pod's grace period (default 120)")
    p.add_argument("--max-body-mb", type=int, default=8192, help="largest request body in MiB (default 8192)")
    p.add_argument("--max-n", type=int, default=64, help="most replies per prompt in one request (default 64)")
    p.add_argument("--max-version-step", type=int, default=1000,
                   help="a weight version may advance by at most this much per push (default 1000)")
    p.add_argument("--staging-dir", default=None, help="where weight buckets wait for their commit (default: a "
                   "new temporary directory on disk)")
    p.add_argument("--shared-dir", default="auto", help="a directory the trainer also mounts, through which it "
                   "may hand over weight buckets without HTTP; `auto`: /dev/shm when writable; `none`: off")
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
    from lvr_trainer.planning import job_max_model_len
    from lvr_trainer.rollout.server import ServerLimits, default_shared_dir

    limits = ServerLimits(max_body_bytes=args.max_body_mb << 20, max_n=args.max_n,
                          max_model_len=cfg.rollout.max_model_len or job_max_model_len(cfg),
                          max_version_step=args.max_version_step)
    shared = {"auto": default_shared_dir(), "none": None}.get(args.shared_dir, args.shared_dir)
    engine = build_served_engine(cfg, engine_kind, args.batch_size)
    print(f"rollout-server: {engine_kind} engine ready, serving on http://{args.host}:{args.port}", flush=True)
    serve(engine, args.host, args.port, log_level=args.log_level, drain_on_sigterm=args.drain_on_sigterm,
          drain_timeout_s=args.drain_timeout_s, limits=limits, staging_dir=args.staging_dir, shared_dir=shared)
    return 0


def build_served_engine(cfg, engine_kind: str, batch_size: int):
    """The engine this server runs, loaded from the config's `model` section on this machine's device."""
    import torch

    from lvr_trainer.cli import CLIError
    from lvr_trainer.model.loading import load_policy

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
