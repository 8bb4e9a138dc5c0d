"""Strife beyond one machine: Kubernetes manifests rendered from the same
topology TOML the local cluster runs, their validation, and the helpers the
container image and the certificate Job call."""
