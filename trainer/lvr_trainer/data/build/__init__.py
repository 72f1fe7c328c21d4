"""`lvr data build`: a LongVideo-Reason dataset from the user's own videos and model servers.

The paper's pipeline (LongVILA-R1, Sec. 3), one module per stage:
  clips      videos (local or s3://) -> equal clips -> frames as JPEG data URLs (decord)
  caption    clip -> caption, from a VLM behind any OpenAI-compatible chat endpoint
  questions  time-stamped caption sequence -> questions with reasoning, per category (JSON schema,
             strict parsing, one repair)
  filters    validity, duplicates, a blind text-only pass, answer-letter balance; every drop has a reason
  writer     train/val/test JSONL split by video (reasoning = CoT target), manifest, captions, rejects
  summary    counts, calls, tokens, seconds
and the machinery: `client` (timeouts, retries with backoff and jitter, typed errors), `journal` (finished
calls on disk, keyed by the request's hash: a rerun repeats none), `pipeline` (bounded concurrency),
`run` and `command` (the CLI). Nothing heavy is imported here.
"""
