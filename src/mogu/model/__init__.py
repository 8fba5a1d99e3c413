"""The MoGU model: routed layers, routers, target finding, base loading and bundles."""

from mogu.model.bundle import MoGUModel
from mogu.model.bundle_files import BundleError
from mogu.model.chat import ChatTemplateError, format_chat
from mogu.model.loading import ModelLoadError, load_base
from mogu.model.targets import TargetNotFoundError, find_targets

__all__ = [
    "BundleError",
    "ChatTemplateError",
    "ModelLoadError",
    "MoGUModel",
    "TargetNotFoundError",
    "find_targets",
    "format_chat",
    "load_base",
]
