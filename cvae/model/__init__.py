from .svg import SVG, StepLosses

__all__ = ["SVG", "StepLosses"]
