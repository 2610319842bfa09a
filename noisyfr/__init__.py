"""noisyfr: margin-based softmax losses under label noise."""
__version__ = "0.1.0"
