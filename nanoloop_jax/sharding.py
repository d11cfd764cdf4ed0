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

from nanoloop_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes. Activations: batch over every batch-like axis, features replicated.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("vocab", None),  # char vocabularies (65) rarely split evenly; the head is small next to the blocks
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
        raise ConfigError(f"mesh sizes (data, fsdp, tensor) = {tuple(sizes)}: use positive sizes and at most one -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(f"mesh {tuple(sizes)} does not divide the {n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ConfigError(
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
            raise ConfigError(f"mesh.data ({shape[0]}) must be a multiple of the {num_slices} slices")
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


def state_shardings(init_fn, key: jax.Array, mesh: Mesh, rules):
    """Shardings of a train state from its logical axes; init_fn(key, boxed=True) is only shape-evaluated."""
    boxed = jax.eval_shape(lambda k: init_fn(k, boxed=True), key)
    shardings = shardings_of(boxed, mesh, rules)
    check_divisible(nn.unbox(boxed), shardings)
    return shardings


def check_divisible(abstract_tree, shardings) -> None:
    """One clear line when a parameter dimension does not split evenly over its mesh axes."""
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
    for (path, leaf), sh in zip(flat, jax.tree_util.tree_leaves(shardings), strict=True):
        for dim, axes in zip(leaf.shape, sh.spec, strict=False):
            axes = (axes,) if isinstance(axes, str) else (axes or ())
            size = int(np.prod([sh.mesh.shape[a] for a in axes])) if axes else 1
            if dim % size:
                name = jax.tree_util.keystr(path)
                raise ConfigError(
                    f"{name} has a dimension of {dim} that does not split over mesh axes {axes} (size {size}); "
                    "change config.mesh or map that logical axis to None in config.mesh.rules"
                )


class MeshJit:
    """A jitted step that traces and runs with the mesh and logical-axis rules active.

    The model's activation constraints (nn.with_logical_constraint) resolve at trace time, so the
    mesh (jax.set_mesh, which must wrap the jit call, not sit inside it) and rules surround every call.
    """

    def __init__(self, fn, mesh: Mesh, rules, **jit_kwargs) -> None:
        self.jitted, self.mesh, self.rules = jax.jit(fn, **jit_kwargs), mesh, rules

    def __call__(self, *args):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.jitted.lower(*args)


def jit_step(fn, mesh: Mesh, rules, in_shardings, out_shardings, donate_argnums=()) -> MeshJit:
    """jax.jit of a pure step with its shardings, under the mesh and logical rules."""
    return MeshJit(
        fn, mesh, rules, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums
    )


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
    """Batch arrays: leading axis split over the batch axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def accum_batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """(accum, batch, T) arrays for gradient accumulation: split the batch axis, not the micro-step one."""
    spec = nn.logical_to_mesh_axes((None, "batch", None), rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_array(local_np: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Build the global batch from each process's local slice (no cross-host copies)."""
    return jax.make_array_from_process_local_data(sharding, local_np)


def local_batch_size(global_batch: int) -> int:
    """Rows this process samples; the global batch must split evenly across processes."""
    n = jax.process_count()
    if global_batch % n:
        raise ConfigError(f"data.batch_size ({global_batch}) must be divisible by the {n} processes")
    return global_batch // n
