"""The halting training objective on a tiny gated model: loss and gradients against a written-out reference
(a Python loop over the model's own pieces, halting math in numpy), traced depth == static depth, stage II
freezes all but the gate, and a tiny train.py run with the objective."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO_ROOT, run, tiny_data_dir, tiny_overrides
from ml_collections import ConfigDict

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopBody, LoopedGPT, init_params
from nanoloop_jax.train import halting
from nanoloop_jax.train.steps import init_train_state, make_train_step, model_loss

TINY = ModelConfig(
    block_size=16, vocab_size=13, n_prelude=1, n_block=1, n_coda=1, n_loop=4, n_head=2, n_embd=16, exit_gate=True
)


def tcfg(**kw) -> ConfigDict:
    c = dict(
        halting="ponder",
        halting_beta=0.2,
        halting_prior=0.3,
        halting_stage=1,
        halting_freeze=True,
        halting_lookahead="next",
        halting_start=0,
        halting_extra=0,
        halting_stable=False,
        halting_bce_trunk=False,
    )
    c.update(kw)
    return ConfigDict(c)


@pytest.fixture(scope="module")
def params():
    p = init_params(TINY, jax.random.PRNGKey(0))
    # perturb so iterations differ and the gate is not flat ([I; 0] inject makes every iteration alike at init)
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def batch():
    x = jax.random.randint(jax.random.PRNGKey(2), (2, 10), 0, TINY.vocab_size)
    y = jnp.roll(x, -1, axis=1).at[1, :3].set(-1)  # some ignored targets
    return x, y


def reference_outputs(params, x, y, depth):
    """Per-iteration losses (L, B, T) and gate logits, by a plain Python loop over the model's pieces."""
    m, pos = LoopedGPT(TINY), jnp.arange(x.shape[1])

    def ap(method, *a):
        return m.apply({"params": params}, *a, method=method)

    e, _ = ap(LoopedGPT.prelude_blocks, ap(LoopedGPT.embed, x, pos), pos)
    s = ap(LoopedGPT.initial_state, e, pos)
    losses, halts = [], []
    for _ in range(depth):
        s = LoopBody(TINY).apply({"params": params["loop"]}, s, e, pos, method=LoopBody.iterate)[0]
        logits = ap(LoopedGPT.head, ap(LoopedGPT.coda_blocks, s, pos)[0])
        logp = jax.nn.log_softmax(logits, axis=-1)
        losses.append(
            np.where(
                y >= 0, -np.take_along_axis(np.asarray(logp), np.maximum(np.asarray(y), 0)[..., None], -1)[..., 0], 0
            )
        )
        halts.append(np.asarray(ap(LoopedGPT.halt_logit, s)))
    return np.stack(losses), np.stack(halts)


def reference_ponder(losses, halts, valid, depth, beta, prior):
    total, count = 0.0, 0
    for b in range(valid.shape[0]):
        for t in range(valid.shape[1]):
            if not valid[b, t]:
                continue
            survive, value = 1.0, 0.0
            for i in range(depth):
                lam = 1 / (1 + math.exp(-halts[i, b, t]))
                p = survive if i == depth - 1 else survive * lam
                q = prior * (1 - prior) ** i if i < depth - 1 else (1 - prior) ** i
                value += p * losses[i, b, t] + beta * p * math.log(p / q)
                survive *= 1 - lam
            total, count = total + value, count + 1
    return total / count


def test_stage1_loss_equals_written_out_reference(params):
    x, y = batch()
    loss_fn = halting.make_halting_loss(LoopedGPT(TINY), tcfg(), lambda n: halting.loop_plan(TINY, n), None)
    got, aux = loss_fn(params, x, y, None, jax.random.PRNGKey(3), None, jnp.int32(0))
    losses, halts = reference_outputs(params, x, y, TINY.n_loop)
    valid = np.asarray(y) >= 0
    want = reference_ponder(losses, halts, valid, TINY.n_loop, 0.2, 0.3)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(aux["final_loss"]), losses[-1][valid].mean(), rtol=1e-5)
    assert 1.0 < float(aux["halt_iters"]) < TINY.n_loop


@pytest.mark.parametrize("bptt_k", [None, 2])
def test_gradients_match_the_reference_and_truncation_detaches_the_loop(params, bptt_k):
    cfg = TINY if bptt_k is None else ModelConfig(**{**TINY.__dict__, "bptt_k": bptt_k})
    x, y = batch()
    loss_fn = halting.make_halting_loss(LoopedGPT(cfg), tcfg(), lambda n: halting.loop_plan(cfg, n), None)
    grads = jax.grad(lambda p: loss_fn(p, x, y, None, jax.random.PRNGKey(3), None, jnp.int32(0))[0])(params)

    def reference(p):  # the same objective in jnp, through a Python loop (differentiable), detaching as bptt_k says
        m, pos = LoopedGPT(cfg), jnp.arange(x.shape[1])
        ap = lambda method, *a: m.apply({"params": p}, *a, method=method)  # noqa: E731
        e, _ = ap(LoopedGPT.prelude_blocks, ap(LoopedGPT.embed, x, pos), pos)
        s = ap(LoopedGPT.initial_state, e, pos)
        n_detached = 0 if bptt_k is None else TINY.n_loop - bptt_k
        s = jax.lax.stop_gradient(s) if n_detached else s
        log_survive, value = jnp.zeros(x.shape), jnp.zeros(x.shape)
        log_q = [math.log(0.3) + i * math.log(0.7) for i in range(3)] + [3 * math.log(0.7)]
        for i in range(TINY.n_loop):
            s = LoopBody(cfg).apply({"params": p["loop"]}, s, e, pos, method=LoopBody.iterate)[0]
            s = jax.lax.stop_gradient(s) if i < n_detached else s
            logp = jax.nn.log_softmax(ap(LoopedGPT.head, ap(LoopedGPT.coda_blocks, s, pos)[0]), axis=-1)
            loss = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[..., None], -1)[..., 0]
            h = ap(LoopedGPT.halt_logit, s)
            log_pi = log_survive if i == TINY.n_loop - 1 else log_survive + jax.nn.log_sigmoid(h)
            pi = jnp.exp(log_pi)
            value = value + pi * loss + 0.2 * pi * (log_pi - log_q[i])
            log_survive = log_survive + jax.nn.log_sigmoid(-h)
        valid = y >= 0
        return jnp.sum(jnp.where(valid, value, 0)) / jnp.sum(valid)

    want = jax.grad(reference)(params)
    for g, w in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-4)
    if bptt_k is not None:  # the prelude gets gradient only through the last bptt_k iterations: nonzero here
        assert float(jnp.abs(grads["prelude_0"]["ln_1"]["scale"]).sum()) > 0


def test_traced_depth_equals_static_depth(params):
    cfg = ModelConfig(**{**TINY.__dict__, "bptt_k": 2, "loop_sampling": "poisson_lognormal", "n_loop_max": 7})
    x, y = batch()
    static = halting.make_halting_loss(
        LoopedGPT(cfg),
        tcfg(halting="ouro"),
        lambda n: halting.loop_plan(ModelConfig(**{**cfg.__dict__, "n_loop": 5}), None),
        None,
    )
    traced = halting.make_halting_loss(LoopedGPT(cfg), tcfg(halting="ouro"), lambda n: halting.loop_plan(cfg, n), None)
    key, step = jax.random.PRNGKey(4), jnp.int32(0)
    want, gw = jax.value_and_grad(lambda p: static(p, x, y, None, key, None, step)[0])(params)
    got, gg = jax.jit(jax.value_and_grad(lambda p, d: traced(p, x, y, None, key, d, step)[0]))(params, jnp.int32(5))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(gg), jax.tree_util.tree_leaves(gw), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_stage2_trains_the_gate_alone_from_halting_start(params):
    model, tx = LoopedGPT(TINY), optax.adamw(1e-2)
    cfg = tcfg(halting="ouro", halting_stage=2, halting_start=1, halting_lookahead="all")
    loss_fn = halting.make_halting_loss(model, cfg, lambda n: halting.loop_plan(TINY, n), model_loss(model))
    step_fn = jax.jit(make_train_step(model, tx, loss_fn=loss_fn, update_mask=halting.gate_only_updates(cfg, params)))
    state = init_train_state(model, tx, jax.random.PRNGKey(0)).replace(params=params)
    state = state.replace(opt_state=tx.init(params))
    x, y = batch()
    data = {"x": x[None], "y": y[None]}
    s1, m1 = step_fn(state, data, jax.random.PRNGKey(5))  # step 0 < halting_start: the plain loss, all train
    assert float(m1["halt_objective"]) == 0.0
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), s1.params, state.params)
    assert all(jax.tree_util.tree_leaves(changed))
    s2, m2 = step_fn(s1, data, jax.random.PRNGKey(5))  # from halting_start: only the gate moves
    assert float(m2["halt_objective"]) > 0.0
    for name, sub in s2.params.items():
        moved = any(
            bool(jnp.any(a != b))
            for a, b in zip(jax.tree_util.tree_leaves(sub), jax.tree_util.tree_leaves(s1.params[name]), strict=True)
        )
        assert moved == (name == "exit_gate"), name


def test_halting_needs_a_gate():
    with pytest.raises(ValueError, match="exit_gate=True"):
        halting.check_halting(tcfg(), ModelConfig(**{**TINY.__dict__, "exit_gate": False}))


def reference_stage2_stable(losses, halts, valid, task_depth, extra, beta):
    """beta · BCE of the gate against the 'depth' target (stop from task_depth on) over iterations 1..task_depth
    + extra (every one has a target), plus the mean over iterations task_depth..task_depth + extra of the mean
    loss over valid positions."""
    bce, count = 0.0, 0
    for i in range(task_depth + extra):
        target = 1.0 if i >= task_depth - 1 else 0.0
        for b, t in zip(*np.nonzero(valid), strict=True):
            lam = 1 / (1 + math.exp(-halts[i, b, t]))
            bce, count = bce - (target * math.log(lam) + (1 - target) * math.log(1 - lam)), count + 1
    per_iter = [losses[i][valid].mean() for i in range(task_depth - 1, task_depth + extra)]
    return beta * bce / count + sum(per_iter) / len(per_iter)


def stable_loss_fn(model_config, max_depth, extra, **kw):
    """The lengthgen plan (tasks/lengthgen/forward.py): T(n) + extra iterations tracked, the task's loss at T(n)."""
    cfg = tcfg(halting="ouro", halting_stage=2, halting_freeze=False, halting_lookahead="depth", **kw)
    cfg.halting_extra = extra

    def plan(depth):
        return halting.DepthPlan(0, 0, depth + extra, max_depth + extra, depth)

    return halting.make_halting_loss(LoopedGPT(model_config), cfg, plan, None)


@pytest.mark.parametrize("task_depth,extra", [(2, 2), (3, 1)])
def test_stable_loss_equals_written_out_reference(params, task_depth, extra):
    x, y = batch()
    loss_fn = stable_loss_fn(TINY, task_depth, extra, halting_beta=0.3, halting_stable=True)
    got = loss_fn(params, x, y, None, jax.random.PRNGKey(3), task_depth, jnp.int32(0))[0]
    losses, halts = reference_outputs(params, x, y, task_depth + extra)
    want = reference_stage2_stable(losses, halts, np.asarray(y) >= 0, task_depth, extra, 0.3)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    plain = stable_loss_fn(TINY, task_depth, extra, halting_beta=0.3)  # halting_stable off: the loss at T(n) alone
    got_plain = plain(params, x, y, None, jax.random.PRNGKey(3), task_depth, jnp.int32(0))[0]
    want_plain = want - reference_stage2_stable(losses, halts, np.asarray(y) >= 0, task_depth, extra, 0.0)
    want_plain += losses[task_depth - 1][np.asarray(y) >= 0].mean()
    np.testing.assert_allclose(float(got_plain), want_plain, rtol=1e-5)


def test_stable_loss_traced_depth_equals_static_depth(params):
    x, y = batch()
    loss_fn = stable_loss_fn(TINY, 4, 2, halting_stable=True)
    key, step = jax.random.PRNGKey(4), jnp.int32(0)
    want, gw = jax.value_and_grad(lambda p: loss_fn(p, x, y, None, key, 3, step)[0])(params)
    got, gg = jax.jit(jax.value_and_grad(lambda p, d: loss_fn(p, x, y, None, key, d, step)[0]))(params, jnp.int32(3))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(gg), jax.tree_util.tree_leaves(gw), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert float(jnp.abs(gg["loop"]["recur_0"]["ln_1"]["scale"]).sum()) > 0  # the stable loss trains the trunk


def reference_gate_bce(params, x, depth_BxT, mask_BxT, n_iter):
    """Differentiable written-out 'depth' BCE of the gate over iterations 1..n_iter (a Python loop): position
    (b, t) with mask 1 should stop from iteration depth_BxT[b, t] on."""
    m, pos, valid = LoopedGPT(TINY), jnp.arange(x.shape[1]), jnp.asarray(mask_BxT, jnp.float32)

    def ap(method, *a):
        return m.apply({"params": params}, *a, method=method)

    e, _ = ap(LoopedGPT.prelude_blocks, ap(LoopedGPT.embed, x, pos), pos)
    s, total = ap(LoopedGPT.initial_state, e, pos), 0.0
    for i in range(n_iter):
        s = LoopBody(TINY).apply({"params": params["loop"]}, s, e, pos, method=LoopBody.iterate)[0]
        h = ap(LoopedGPT.halt_logit, s)
        stop = jnp.asarray(np.asarray(depth_BxT) <= i + 1)
        bce = jnp.where(stop, -jax.nn.log_sigmoid(h), -jax.nn.log_sigmoid(-h))
        total = total + jnp.sum(bce * valid)
    return total / (jnp.sum(valid) * n_iter)


def test_bce_trunk_adds_the_gate_loss_gradient_to_the_loop(params):
    x, y = batch()
    key, step, beta = jax.random.PRNGKey(3), jnp.int32(0), 0.7
    grads = {}
    for on in (False, True):
        fn = stable_loss_fn(TINY, 2, 2, halting_beta=beta, halting_stable=True, halting_bce_trunk=on)
        grads[on] = jax.grad(lambda p, f=fn: f(p, x, y, None, key, 2, step)[0])(params)
    depth_BxT = np.full(x.shape, 2)
    bce = jax.grad(lambda p: beta * reference_gate_bce(p, x, depth_BxT, np.asarray(y) >= 0, 4))(params)
    for name in params:  # on - off: the gate's loss through the states; the gate's own gradient is the same
        want = bce[name] if name != "exit_gate" else jax.tree_util.tree_map(jnp.zeros_like, bce[name])
        diff = jax.tree_util.tree_map(lambda a, b: a - b, grads[True][name], grads[False][name])
        for d, w in zip(jax.tree_util.tree_leaves(diff), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(d), np.asarray(w), atol=1e-5)
    assert float(jnp.abs(bce["loop"]["recur_0"]["ln_1"]["scale"]).sum()) > 0


PREFIX_DEPTH_T = np.array([0, 1, 2, 3, 4, 5, 1, 2, 0, 3])  # 0: no problem ends at that position


def prefix_problems(x_BxT, y_BxT):
    """A made-up task's prefix problems: depths PREFIX_DEPTH_T, position (1, 9) padding; answers y's own where
    y has one (as every task's: a problem is a prefix of itself), else made up from x."""
    has_BxT = np.broadcast_to(PREFIX_DEPTH_T > 0, x_BxT.shape).copy()
    has_BxT[1, 9] = False
    made_up_BxT = jnp.where(jnp.asarray(has_BxT), (x_BxT * 7 + 3) % TINY.vocab_size, -1)
    answer_BxT = jnp.where(y_BxT >= 0, y_BxT, made_up_BxT)
    return jnp.broadcast_to(jnp.asarray(PREFIX_DEPTH_T), x_BxT.shape), jnp.asarray(has_BxT), answer_BxT


def prefix_loss_fn(beta, bce_trunk, stable):
    """The lengthgen plan with T(n) 3 and 2 extra iterations, the 'prefix' lookahead."""
    cfg = tcfg(halting="ouro", halting_stage=2, halting_freeze=False, halting_lookahead="prefix")
    cfg.halting_beta, cfg.halting_bce_trunk, cfg.halting_stable, cfg.halting_extra = beta, bce_trunk, stable, 2
    plan = lambda depth: halting.DepthPlan(0, 0, depth + 2, 5 + 2, depth)  # noqa: E731
    return halting.make_halting_loss(LoopedGPT(TINY), cfg, plan, None, prefix_problems), cfg, plan


def test_prefix_lookahead_trains_the_gate_at_every_position_toward_its_own_depth(params):
    """'prefix': the gate's BCE at every position the task marks, each with its own stop depth (not the answer
    slots' T(n)), over T(n) + extra iterations; with bce_trunk it reaches the loop (gradients == the reference)."""
    x, y = batch()
    key, step, beta = jax.random.PRNGKey(3), jnp.int32(0), 0.4
    got, grads = {}, {}
    for on in (False, True):
        fn = prefix_loss_fn(beta, on, False)[0]
        got[on], grads[on] = jax.value_and_grad(lambda p, f=fn: f(p, x, y, None, key, 3, step)[0])(params)
    depth_BxT, has_BxT, _ = (np.asarray(a) for a in prefix_problems(x, y))
    bce, g_bce = jax.value_and_grad(lambda p: beta * reference_gate_bce(p, x, depth_BxT, has_BxT, 5))(params)
    losses, _ = reference_outputs(params, x, y, 5)
    want = float(bce) + losses[2][np.asarray(y) >= 0].mean()  # + the task's loss at T(n) = 3
    for on in (False, True):
        np.testing.assert_allclose(float(got[on]), want, rtol=1e-5)
    for name in params:  # on - off: the gate's loss through the states; the gate's own gradient is the same
        want_g = g_bce[name] if name != "exit_gate" else jax.tree_util.tree_map(jnp.zeros_like, g_bce[name])
        diff = jax.tree_util.tree_map(lambda a, b: a - b, grads[True][name], grads[False][name])
        for d, w in zip(jax.tree_util.tree_leaves(diff), jax.tree_util.tree_leaves(want_g), strict=True):
            np.testing.assert_allclose(np.asarray(d), np.asarray(w), atol=1e-5)
    for a, w in zip(*(jax.tree_util.tree_leaves(t["exit_gate"]) for t in (grads[False], g_bce)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(w), atol=1e-5)  # the gate learns the prefix targets
    assert float(jnp.abs(g_bce["loop"]["recur_0"]["ln_1"]["scale"]).sum()) > 0  # the gate's loss reaches the loop
    cfg, plan = prefix_loss_fn(beta, True, False)[1:]
    with pytest.raises(ConfigError, match="prefix"):  # a task without such positions (language modelling)
        halting.make_halting_loss(LoopedGPT(TINY), cfg, plan, None)


def test_prefix_stable_loss_scores_every_prefix_answer_from_its_own_depth(params):
    """'prefix' + halting_stable: the readouts are scored against every prefix problem's answer, at each position
    from its own depth to T(n) + extra, pooled over (iteration, position) pairs; final_loss stays the task's own
    answer positions at T(n)."""
    x, y = batch()
    loss_fn = prefix_loss_fn(0.4, True, True)[0]
    got, metrics = loss_fn(params, x, y, None, jax.random.PRNGKey(3), 3, jnp.int32(0))
    depth_BxT, has_BxT, answer_BxT = (np.asarray(a) for a in prefix_problems(x, y))
    losses, _ = reference_outputs(params, x, jnp.asarray(answer_BxT), 5)
    pairs = [
        losses[i][b, t] for i in range(5) for b, t in zip(*np.nonzero(has_BxT), strict=True) if depth_BxT[b, t] <= i + 1
    ]
    want = 0.4 * float(reference_gate_bce(params, x, depth_BxT, has_BxT, 5)) + np.mean(pairs)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    task_losses, _ = reference_outputs(params, x, y, 5)
    np.testing.assert_allclose(float(metrics["final_loss"]), task_losses[2][np.asarray(y) >= 0].mean(), rtol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        dict(halting_stage=1, halting_freeze=False, halting_extra=2),
        dict(halting_stage=2, halting_freeze=True, halting_extra=2),
        dict(halting_stage=2, halting_freeze=False, halting_extra=0),
        dict(halting_stage=2, halting_freeze=False, halting_extra=2, halting_stable="yes"),
    ],
)
def test_stable_loss_refuses_settings_it_cannot_serve(kw):
    with pytest.raises(ConfigError, match="halting_stable"):
        halting.check_halting(tcfg(**{"halting_stable": True, **kw}), TINY)


@pytest.mark.parametrize("kw", [dict(halting_stage=1), dict(halting_stage=2, halting_freeze=True)])
def test_bce_trunk_refuses_settings_it_cannot_serve(kw):
    with pytest.raises(ConfigError, match="halting_bce_trunk"):
        halting.check_halting(tcfg(**{"halting_bce_trunk": True, "halting_freeze": False, **kw}), TINY)


@pytest.mark.slow
def test_train_py_with_the_halting_objective(tmp_path):
    data_dir = tiny_data_dir(tmp_path)
    flags = tiny_overrides(
        data_dir,
        tmp_path / "out",
        **{"model.exit_gate": True, "train.halting": "ouro", "train.halting_beta": 0.05, "model.dropout": 0.0},
    )
    res = run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            f"--config={REPO_ROOT / 'configs/shakespeare_char_looped.py:cpu'}",
            *flags,
        ]
    )
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("iter ")]
    assert len(lines) == 8 and all("halt_iters" in line and "final_loss" in line for line in lines)


def test_remat_equals_no_remat(params):
    x, y = batch()
    got = []
    for policy in (None, "nothing_saveable"):
        cfg = ModelConfig(**{**TINY.__dict__, "remat_policy": policy})
        loss_fn = halting.make_halting_loss(LoopedGPT(cfg), tcfg(), lambda n, c=cfg: halting.loop_plan(c, n), None)
        got.append(
            jax.grad(lambda p, f=loss_fn: f(p, x, y, None, jax.random.PRNGKey(3), None, jnp.int32(0))[0])(params)
        )
    for a, b in zip(jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(got[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
