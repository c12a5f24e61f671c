"""The fast SFT path: packing layout, packed rows, chunked loss at trained positions, threads, GPU kernels."""
