"""Hand-over to an inference engine: MoGU decodes the routed tokens, an OpenAI-compatible engine
(vLLM) serving the plain base model writes the rest of the answer.

``settings.EngineConfig`` says where the engine is and how patiently to talk to it, ``client.EngineClient``
talks to it (retries, time limits, stream relay, health, the start-up model check), and ``handover``
joins the routed phase in process to the engine's continuation.
"""

from mogu.engine.client import EngineClient, EngineError, EngineInfo, EngineMismatchError
from mogu.engine.handover import Continuation, RoutedStart, generate_with_engine, routed_phase
from mogu.engine.settings import EngineConfig

__all__ = [
    "Continuation",
    "EngineClient",
    "EngineConfig",
    "EngineError",
    "EngineInfo",
    "EngineMismatchError",
    "RoutedStart",
    "generate_with_engine",
    "routed_phase",
]
