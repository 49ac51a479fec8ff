"""The Hydra configs of `nmt-train`, installed inside the package as `nmt.conf`."""
