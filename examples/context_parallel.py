"""Exact attention over a sequence split across processes, checked against one process.

    torchrun --standalone --nproc-per-node 2 examples/context_parallel.py        # gloo on CPU (NCCL on GPUs)

Every process builds the same inputs, keeps its zigzag shard, runs ring attention (causal, sliding window and
grouped-query heads, forward and backward) and compares its shard of the output and of the gradients with
``attnkit.attention`` on the whole sequence.
"""

import torch
import torch.distributed as dist

import attnkit
from attnkit import distributed as cp

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)  # the same whole tensors on every process
q = torch.randn(1, 8, 4096, 64, dtype=torch.float64, requires_grad=True)
k = torch.randn(1, 2, 4096, 64, dtype=torch.float64, requires_grad=True)  # 2 KV heads: grouped-query
v = torch.randn(1, 2, 4096, 64, dtype=torch.float64, requires_grad=True)

parts = [cp.shard(t.detach(), layout="zigzag").requires_grad_() for t in (q, k, v)]  # (B, H, N/P, D) each
out_part = cp.attention(*parts, causal=True, window=(1023, 0), strategy="ring", layout="zigzag")
out_part.square().sum().backward()

whole = attnkit.attention(q, k, v, causal=True, window=(1023, 0))
whole.square().sum().backward()
for name, mine, reference in [("out", out_part, whole), ("dq", parts[0].grad, q.grad), ("dk", parts[1].grad, k.grad),
                              ("dv", parts[2].grad, v.grad)]:
    error = (mine - cp.shard(reference.detach(), layout="zigzag")).abs().max().item()
    print(f"rank {rank}: {name} {tuple(mine.shape)}, max |difference| from one process {error:.1e}")
dist.destroy_process_group()
