"""Optional integrations with other systems (imported on demand; each needs its own package).

- :mod:`zhtune.integrations.ray`: batch prediction with Ray Data (``pip install "ray[data]"``).
"""
