"""Image steps: IDX (MNIST-style) and image-file validation."""
