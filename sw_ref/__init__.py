"""sw_ref: quantization-aware PyTorch training of LSTM language models and the bit-exact integer
model of the hardware layer. Importing the package does not import torch (the integer model is
numpy-only, so simulators can use it cheaply)."""
