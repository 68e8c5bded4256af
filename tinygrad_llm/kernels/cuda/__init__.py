"""CuPy kernels for the GPU. Importing this package registers them; it must import cleanly on a
machine without CuPy (nothing here touches cupy at import time). Families without a CuPy kernel run
their array reference on CuPy arrays, which is already GPU code."""
