"""Pure manifest builders: a custom resource (dict) + settings -> Kubernetes object dicts. No I/O."""
