"""Tensor parallelism (`--num-shard`): one model split Megatron-style over N processes.

Rank 0 is the server process (server, scheduler, block manager and shard 0); ranks 1..N-1 are
spawned workers that hold the other shards and run every step rank 0 broadcasts to them
(`worker.py`). `plan.py` says which slice of every weight and LoRA matrix a shard holds,
`group.py` sets up `torch.distributed` and times the all-reduces, `runner.py` is rank 0's side
of the step protocol and `supervisor.py` takes the replica down when a shard dies.
See docs/runtime.md ("Sharding") and docs/kernels.md ("LoRA under tensor parallelism").
"""

from lorafleet.runtime.distributed.plan import ShardPlan, check_shardable

__all__ = ["ShardPlan", "check_shardable"]
