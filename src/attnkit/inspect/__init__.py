"""See what a model attends to: capture maps through the nn hook point, rollout, head importance and
pruning, ``explain`` (terminal table, self-contained HTML, PNG/SVG figures), and ``view`` for any attention
map (self-, cross-attention, image patches) as the same page, inline in notebooks too."""

from .capture import Capture, attention_layers, capture
from .explanation import Explanation, explain
from .heads import head_importance, prune_heads
from .html import render_html, write_html
from .rollout import fuse_heads, rollout
from .views import View, as_view, view

__all__ = ["Capture", "Explanation", "View", "as_view", "attention_layers", "capture", "explain", "fuse_heads",
           "head_importance", "prune_heads", "render_html", "rollout", "view", "write_html"]
