"""Everything about devices: the mesh, logical-axis rules, shardings, multi-host set-up, global batches.

The model names its parameter and activation axes (`nn.with_logical_partitioning`,
`nn.with_logical_constraint`); this file alone maps those names onto a (data, fsdp, tensor) mesh.
  data    pure data parallel: params replicated, batch split (crosses hosts on pods)
  fsdp    batch split *and* params / optimizer state sharded (ZeRO-3 style), gathered per layer
  tensor  attention heads and MLP hidden split (Megatron style), for models too wide for one chip
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes. Activations: batch over every batch-like axis, features replicated.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("pos", None),
    ("norm", None),
    ("inject_in", None),
)


def maybe_initialize_distributed(dist_cfg) -> None:
    """jax.distributed.initialize() when the run spans processes; a no-op for one process.

    Cloud TPU pods and SLURM are detected by JAX itself; plain GPU clusters pass the coordinator
    address, process count and id (config.distributed.* or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID).
    """
    address = dist_cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = dist_cfg.num_processes if dist_cfg.num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    pid = dist_cfg.process_id if dist_cfg.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    mode = dist_cfg.initialize
    auto_cluster = int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if mode is False or mode == "never" or (mode == "auto" and not address and not auto_cluster):
        return
    if dist_cfg.cpu_collectives:
        # CPU multi-process runs (tests, debugging) need a collectives backend for cross-process psum.
        jax.config.update("jax_cpu_collectives_implementation", dist_cfg.cpu_collectives)
    kwargs = {}
    if address:
        kwargs = {"coordinator_address": address, "num_processes": int(num), "process_id": int(pid)}
    jax.distributed.initialize(**kwargs)


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with one -1 filled in by the remaining devices; clear error otherwise."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes (data, fsdp, tensor) = {tuple(sizes)}: use positive sizes and at most one -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"mesh {tuple(sizes)} does not divide the {n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ValueError(
            f"mesh (data, fsdp, tensor) = {tuple(sizes)} needs {int(np.prod(sizes))} devices but "
            f"{n_devices} are present; set one of config.mesh.data/fsdp/tensor to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh, laid out so data crosses hosts/slices and fsdp/tensor stay local."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices > 1:
        # multi-slice TPU: split the data axis across slices (slow DCN), the rest inside a slice (ICI)
        if shape[0] % num_slices:
            raise ValueError(f"mesh.data ({shape[0]}) must be a multiple of the {num_slices} slices")
        per_slice = (shape[0] // num_slices, shape[1], shape[2])
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, (num_slices, 1, 1), devices)
    else:
        # create_device_mesh orders devices for the physical topology (TPU torus, NVLink islands);
        # devices are grouped by process, so the outer data axis is the one that crosses hosts.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def logical_rules(mesh_cfg) -> tuple[tuple[str, object], ...]:
    """DEFAULT_RULES with config.mesh.rules overrides ([[logical_name, mesh_axis_or_None], ...])."""
    rules = dict(DEFAULT_RULES)
    for name, axes in mesh_cfg.rules or ():
        rules[name] = tuple(axes) if isinstance(axes, list) else axes
    return tuple(rules.items())


def shardings_of(boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a tree whose leaves carry logical-axis boxes (params, optimizer state)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
    """Batch arrays: leading axis split over the batch axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def accum_batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """(accum, batch, T) arrays for gradient accumulation: split the batch axis, not the micro-step one."""
    spec = nn.logical_to_mesh_axes((None, "batch", None), rules)
    return NamedSharding(mesh, spec)


def under_mesh(fn, mesh: Mesh, rules):
    """fn traced with the mesh and logical rules active, so the model's activation constraints apply."""

    def wrapped(*args):
        with mesh, nn.logical_axis_rules(rules):
            return fn(*args)

    return wrapped


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_array(local_np: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Build the global batch from each process's local slice (no cross-host copies)."""
    return jax.make_array_from_process_local_data(sharding, local_np)


def local_batch_size(global_batch: int) -> int:
    """Rows this process samples; the global batch must split evenly across processes."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the {n} processes")
    return global_batch // n
