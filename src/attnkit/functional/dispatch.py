"""``kernel="auto"``: which registered kernel serves a request, and resolving a kernel choice.

The policy is the kernels' own: each declares ``priority(request)`` (a :class:`~.registry.Rank`) beside its
capabilities, and ``auto`` tries the exact kernels from the highest rank down (equal ranks in registration
order), taking the first whose ``not_supported_reasons`` is empty. Today that makes

1. ``tiled`` first when its rules say it is the faster (a structured mask that leaves most tiles empty on a
   large input; inference its native forward serves) — see ``TiledKernel.priority``;
2. otherwise ``sdpa`` (PyTorch's fused kernels), then ``tiled``, then ``dense`` (the reference);
3. then kernels registered without a priority, in registration order.

Approximate kernels are never listed. When no kernel fits, the error lists each kernel and its reasons.
"""

from __future__ import annotations

from .registry import Kernel, Rank, get_kernel, is_exact, kernels
from .request import AttentionRequest


def priority(k: Kernel, req: AttentionRequest) -> int:
    """``k.priority(req)``, or ``Rank.UNRANKED`` for a kernel that declares none."""
    rank = getattr(k, "priority", None)
    return Rank.UNRANKED if rank is None else int(rank(req))


def auto_order(req: AttentionRequest) -> list[str]:
    """The names of the exact kernels in the order ``kernel="auto"`` tries them for ``req``."""
    ranked = [(-priority(k, req), i, k.name) for i, k in enumerate(kernels()) if is_exact(k)]
    return [name for _, _, name in sorted(ranked)]


def select_kernel(req: AttentionRequest, kernel: str | Kernel) -> Kernel:
    """Resolve ``kernel`` (a name, "auto" or a kernel object) to a kernel that can serve ``req``."""
    if isinstance(kernel, str) and kernel == "auto":
        refusals = []
        for name in auto_order(req):
            reasons = get_kernel(name).not_supported_reasons(req)
            if not reasons:
                return get_kernel(name)
            refusals.append(f"  {name}: {'; '.join(reasons)}")
        approximate = [k.name for k in kernels() if not is_exact(k)]
        if approximate:
            refusals.append("  (approximate kernels are never chosen by 'auto', only by name: "
                            f"{', '.join(approximate)})")
        raise ValueError("no attention kernel supports this request:\n" + "\n".join(refusals))
    chosen = get_kernel(kernel) if isinstance(kernel, str) else kernel
    if not isinstance(kernel, str) and not isinstance(chosen, Kernel):  # registered ones were checked at registration
        raise TypeError(f"kernel must be a name, 'auto' or a kernel object, got {type(kernel).__name__}")
    reasons = chosen.not_supported_reasons(req)
    if reasons:
        raise ValueError(f"kernel {chosen.name!r} cannot serve this request: {'; '.join(reasons)}")
    return chosen


__all__ = ["auto_order", "priority", "select_kernel"]
