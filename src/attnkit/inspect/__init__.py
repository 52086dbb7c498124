"""See what a model attends to: capture maps through the nn hook point, rollout, head importance and
pruning, and ``explain`` (terminal table, self-contained HTML, PNG/SVG figures)."""

from .capture import Capture, attention_layers, capture
from .explanation import Explanation, explain
from .heads import head_importance, prune_heads
from .html import render_html, write_html
from .rollout import fuse_heads, rollout

__all__ = ["Capture", "Explanation", "attention_layers", "capture", "explain", "fuse_heads", "head_importance",
           "prune_heads", "render_html", "rollout", "write_html"]
