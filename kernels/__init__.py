"""Pure numpy kernels for the Falcon-H1 hybrid (Mamba2 + attention). Imports nothing from the project."""
