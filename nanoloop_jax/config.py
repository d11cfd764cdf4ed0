"""The base run config every configs/*.py file starts from, and its translation to a ModelConfig."""

from __future__ import annotations

import dataclasses

import jax
from ml_collections import ConfigDict, config_dict

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model.config import ModelConfig


def base_config(task: str = "lm") -> ConfigDict:
    """Defaults (nanoLOOP's train.py: GPT-2 124M-class looped model on OpenWebText); every field commented,
    with the section of `task` (tasks/__init__.py) and its defaults when the task has one.

    Long on purpose: one line per field, the whole schema in one place."""
    from nanoloop_jax.tasks import task_class  # the tasks import model code; configs need it only here

    c = ConfigDict()
    c.task = task  # what the Trainer trains on: 'lm' (language modelling) | 'lengthgen' (tasks/__init__.py)
    c.seed = 1337  # base seed: param init, the batch of every (step, row), dropout and noise keys
    c.out_dir = "out"  # checkpoints, config.json and metrics.jsonl go here
    c.init_from = "scratch"  # 'scratch' | 'resume' | path to a nanoLOOP ckpt.pt (auto-resumes if out_dir has one)
    c.wandb = False  # also log to Weights & Biases (pip install wandb)
    c.wandb_project = "nanoloop-jax"  # wandb project name
    c.wandb_run_name = "looped-gpt"  # wandb run name

    c.model = ConfigDict()  # maps 1:1 onto nanoloop_jax.model.ModelConfig
    c.model.block_size = 1024  # context length (tokens)
    c.model.vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64; char datasets use meta.json's
    c.model.n_prelude = 2  # unique blocks run once before the loop
    c.model.n_block = 2  # unique blocks inside the recurrent (weight-shared) block
    c.model.n_coda = 2  # unique blocks run once after the loop
    c.model.n_loop = 4  # iterations of the recurrent block
    c.model.n_head = 12  # attention heads
    c.model.n_embd = 768  # width
    c.model.dropout = 0.0  # dropout rate (embeddings, attention weights, residual outputs)
    c.model.bias = False  # biases in Linear layers
    c.model.bptt_k = config_dict.placeholder(int)  # backprop through the last k iterations (None or 0 = all)
    c.model.input_injection = "inject"  # 'inject' | 'inject_random' | 'passthrough'
    c.model.inject_init = "identity"  # inject kernel at init: 'identity' [I; 0] (nanoLOOP) | 'additive' [I; I]
    c.model.loop_sampling = "fixed"  # 'fixed' (n_loop) | 'poisson_lognormal' (depth drawn per training step)
    c.model.n_loop_mean = 4.0  # poisson_lognormal: mean depth (>= bptt_k); eval/sampling still use n_loop
    c.model.n_loop_max = 32  # poisson_lognormal: cap on the sampled depth
    c.model.dtype = "auto"  # compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU
    c.model.param_dtype = "float32"  # parameter (and optimizer state) storage dtype
    c.model.remat_policy = config_dict.placeholder(str)  # jax.checkpoint_policies name, e.g. 'nothing_saveable'
    c.model.attention = "auto"  # 'auto' (the platform's, kernels.py) | 'xla' | 'cudnn' (GPU) | 'pallas' (TPU)
    c.model.platform = config_dict.placeholder(str)  # platform lowered for: 'cpu'|'cuda'|'rocm'|'tpu'; None = default
    c.model.norm_eps = ModelConfig.norm_eps  # RMSNorm epsilon (torch.nn.RMSNorm default: float32 eps)
    c.model.pos_encoding = "learned"  # 'learned' (nanoLOOP's wpe) | 'rope' (rotary q/k) | 'none' (NoPE)
    c.model.rope_theta = ModelConfig.rope_theta  # RoPE base (pos_encoding='rope')
    c.model.exit_gate = False  # a learned halting gate after every iteration (train.halting trains it)
    c.model.causal = True  # causal attention; False: whole-problem tasks (maze, Sudoku) that never decode
    c.model.attn_window = config_dict.placeholder(int)  # sliding-window attention: keys < this away; None = all

    c.data = ConfigDict()
    c.data.dataset = "openwebtext"  # name under data/; shakespeare* are prepared automatically if missing
    c.data.data_dir = ""  # directory with train.bin/val.bin[/meta.json]; '' = data/<dataset>
    c.data.batch_size = 480  # global micro-batch (sequences, all devices) per accumulation step
    c.data.gradient_accumulation_steps = 1  # micro-steps per optimizer step (inside one jitted step)

    c.opt = ConfigDict()
    c.opt.learning_rate = 6e-4  # peak learning rate
    c.opt.min_lr = 6e-5  # final learning rate of the cosine decay
    c.opt.warmup_iters = 2000  # linear warmup steps
    c.opt.lr_decay_iters = 600000  # step at which the cosine reaches min_lr (~= max_iters)
    c.opt.decay_lr = True  # False = constant learning_rate
    c.opt.weight_decay = 0.1  # AdamW decoupled weight decay on >= 2-D params
    c.opt.beta1 = 0.9  # AdamW beta1
    c.opt.beta2 = 0.95  # AdamW beta2
    c.opt.grad_clip = 1.0  # global-norm clip; 0 disables

    c.train = ConfigDict()
    c.train.max_iters = 600000  # optimizer steps
    c.train.eval_interval = 2000  # evaluate (and maybe checkpoint) every this many steps
    c.train.eval_iters = 200  # batches per split in each evaluation
    c.train.log_interval = 1  # print a training line every this many steps
    c.train.eval_only = False  # evaluate once and exit
    c.train.always_save_checkpoint = True  # save at every eval, not only when val loss improves
    c.train.keep_checkpoints = 3  # newest checkpoints kept on disk
    c.train.final_eval = "last"  # the task's final evaluation (lengthgen: accuracy.csv) reads the last step's
    # params | 'best_val': those of the lowest val loss, kept in OUT_DIR/best_val/ (nanoloop_jax/train/best_val.py)
    c.train.async_checkpointing = True  # write checkpoints in the background while training continues
    c.train.eval_n_loops = ()  # e.g. (1, 2, 4, 8), on the command line 1,2,4,8: also val loss at these depths
    c.train.tensorboard = False  # also write metrics.jsonl's numbers as TensorBoard files to OUT_DIR/tensorboard/
    # learned halting (model.exit_gate=True; nanoloop_jax/train/halting.py)
    c.train.halting = "none"  # 'none' | 'ponder' (PonderNet) | 'ouro' (Ouro stage I): sum_i p_i·L_i + beta·reg
    c.train.halting_beta = 0.01  # stage 1: regularizer weight (ponder: KL to the prior; ouro: -entropy); stage 2:
    # the gate loss's weight (Adam's steps ignore it; it sets the gate's share of the norm grad_clip sees)
    c.train.halting_prior = 0.5  # ponder: the geometric prior's halting probability per iteration
    c.train.halting_stage = 1  # 1: the objective trains everything | 2: the gate alone (Ouro stage II), rest frozen
    c.train.halting_freeze = True  # stage 2: freeze all but the gate (False: the rest trains on the plain loss)
    c.train.halting_lookahead = "next"  # stage 2 target: 'next' (Ouro's one-step gain) | 'all' (best later gain)
    # | 'depth' (stop from the task's training depth on: lengthgen's T(n)) | 'prefix' (lengthgen: every position
    # that ends a shorter problem stops at that problem's T, so the "done" signal travels along the sequence)
    c.train.halting_start = 0  # step from which the halting objective replaces the task's plain loss
    c.train.halting_extra = 0  # lengthgen: iterations past T(n) the halting loss reads out (0: up to T(n))
    c.train.halting_stable = False  # stage 2, halting_freeze=False: the rest's task loss is the mean over
    # iterations T(n)..T(n)+halting_extra (the answer held after T(n)), not at T(n) alone; with 'prefix': every
    # shorter problem's answer too, each position from its own depth on
    c.train.halting_bce_trunk = False  # stage 2, halting_freeze=False: the gate's loss also trains the loop
    # (the gate sees the states, not stop_gradient of them), so the state learns a "done" signal

    c.mesh = ConfigDict()
    c.mesh.data = -1  # data-parallel axis size (-1 = all remaining devices)
    c.mesh.fsdp = 1  # FSDP axis: batch split and params/optimizer state sharded
    c.mesh.tensor = 1  # tensor-parallel axis: heads and MLP hidden split
    c.mesh.rules = ()  # overrides of sharding.DEFAULT_RULES, e.g. (('embed', None),)

    c.distributed = ConfigDict()
    c.distributed.initialize = "auto"  # 'auto' (cluster env or coordinator given) | True | False
    c.distributed.coordinator_address = ""  # 'host:port' of process 0 (plain GPU clusters); '' = auto
    c.distributed.num_processes = config_dict.placeholder(int)  # total processes (with coordinator_address)
    c.distributed.process_id = config_dict.placeholder(int)  # this process's id (with coordinator_address)
    c.distributed.cpu_collectives = "gloo"  # collectives for multi-process CPU runs ('' = JAX default)

    cls = task_class(task)
    if cls.section is not None:
        c[cls.section] = cls.defaults()  # the task's own section (e.g. config.lengthgen)
    return c


def run_config_of(model: ModelConfig, dataset: str | None = None, data_dir: str | None = None) -> ConfigDict:
    """A run config (base_config) describing `model`: what converted checkpoints record as their config."""
    c = base_config()
    for field in dataclasses.fields(ModelConfig):
        c.model[field.name] = getattr(model, field.name)
    c.data.dataset = dataset or ""  # '' = not known (data_dir_of gives None): tools then ask for --data_dir
    c.data.data_dir = data_dir or ""  # '' = data/<dataset>
    return c


def resolve_dtype(name: str, platform: str | None = None) -> str:
    """'auto' -> bfloat16 on accelerators, float32 on CPU (of `platform`, else of the default backend)."""
    if name != "auto":
        return name
    return "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"


def model_config(cfg_model: ConfigDict, **overrides) -> ModelConfig:
    """ModelConfig from config.model (dtype 'auto' resolved), validated, with optional field overrides."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: cfg_model[k] for k in cfg_model.keys() if k in fields}
    unknown = set(cfg_model.keys()) - fields
    if unknown:
        raise ConfigError(f"unknown config.model fields {sorted(unknown)}; allowed: {sorted(fields)}")
    values["dtype"] = resolve_dtype(values.get("dtype", "auto"), overrides.get("platform", values.get("platform")))
    if values.get("remat_policy") == "none":
        values["remat_policy"] = None
    if values.get("bptt_k") == 0:  # the command line cannot spell None for an int field: 0 = full backprop
        values["bptt_k"] = None
    values.update(overrides)
    return ModelConfig(**values).validate()
