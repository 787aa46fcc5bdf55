"""Local emulator of the BytePlus ModelArk content-generation task API (Seedance) and
the Vertex AI Veo long-running video API.

Run it with ``python -m simulator --port 8000`` and point the BytePlus SDK at
``http://127.0.0.1:8000/api/v3``, google-genai (``vertexai=True``) at
``http://127.0.0.1:8000/``. Tasks and operations share one scheduler in memory, advance
with wall-clock time, and can be made to fail, expire, stall or error through config
rates or ``[sim:...]`` markers in the prompt. ``/_sim/*`` endpoints expose counters and
live reconfiguration.
"""

from simulator.app import create_app
from simulator.config import SimConfig

__all__ = ["SimConfig", "create_app"]
