"""CPU kernels in C++, built on first use: oneDNN convolutions (`onednn`)."""
