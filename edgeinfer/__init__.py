"""edgeinfer: run quantized LLMs and DNNs on small edge devices, alone or together."""

__version__ = "0.1.0"
