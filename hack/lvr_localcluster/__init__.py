"""A local cluster for tests and the demo: real Kubernetes components, a CPU kubelet stand-in, and S3."""
