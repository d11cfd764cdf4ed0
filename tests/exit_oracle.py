"""An independent oracle for the decoder's test-time-compute rules, written from their definitions.

Plain numpy, one position at a time, from the parameter tree alone (no model or decoder code): RMSNorm,
attention over explicit per-(slot, layer) dicts of K/V, the per-position exit criteria, the Huginn fill
of skipped iterations, kv_share slots, warm start, and learned / rope / no positions with every layer
attending to the last `window` positions (sliding-window attention). No biases (the tests' model).
"""

import numpy as np


def _rms(x, scale, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


class Oracle:
    """Run one sequence (1-D tokens) and return per-position logits and loop iterations."""

    def __init__(
        self, cfg, params, *, n_loop, criterion="none", eps=0.0, min_loops=1, patience=2, kv_share=0, warm=False
    ):
        self.cfg, self.p = cfg, _to_np(params)
        self.n_loop, self.criterion, self.eps = n_loop, criterion, eps
        self.min_loops, self.patience, self.warm = min_loops, patience, warm
        self.n_slots = kv_share or n_loop
        # every layer attends to the last attn_window positions, else the last block_size
        self.window = cfg.block_size if cfg.attn_window is None else cfg.attn_window
        self.kv = {}  # (layer name, slot) -> {position: (k (H, K), v (H, K))}

    def _block(self, bp, x, pos, layer):
        """One pre-norm block on the position's vector x; stores its K/V under `layer` and returns (x', (k, v))."""
        cfg, eps = self.cfg, self.cfg.norm_eps
        h, d = cfg.n_head, cfg.n_embd
        qkv = _rms(x, bp["ln_1"]["scale"], eps) @ bp["attn"]["c_attn"]["kernel"]
        q, k, v = (a.reshape(h, d // h) for a in np.split(qkv, 3))
        if cfg.pos_encoding == "rope":
            q, k = _rope(q, pos, cfg.rope_theta), _rope(k, pos, cfg.rope_theta)
        store = self.kv.setdefault(layer, {})
        store[pos] = (k, v)
        return self._attend_mlp(bp, x, q, store, pos), (k, v)

    def _attend_mlp(self, bp, x, q, store, pos):
        eps = self.cfg.norm_eps
        keys = sorted(p for p in store if pos - self.window < p <= pos)
        ks = np.stack([store[p][0] for p in keys])  # (S, H, K)
        vs = np.stack([store[p][1] for p in keys])
        att = np.einsum("hk,shk->hs", q, ks) / np.sqrt(q.shape[-1])
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("hs,shk->hk", att, vs).reshape(-1)
        x = x + y @ bp["attn"]["c_proj"]["kernel"]
        hid = _gelu(_rms(x, bp["ln_2"]["scale"], eps) @ bp["mlp"]["c_fc"]["kernel"])
        return x + hid @ bp["mlp"]["c_proj"]["kernel"]

    def _stat(self, s):
        if self.criterion in ("none", "latent_diff"):
            return None
        if self.criterion == "gate":  # log(1 - lambda), lambda = sigmoid(w . s / rms(s) + b)
            h = float(
                _rms(s, 1.0, self.cfg.norm_eps) @ self.p["exit_gate"]["kernel"][:, 0] + self.p["exit_gate"]["bias"][0]
            )
            return -np.log1p(np.exp(h))
        logits = _rms(s, self.p["ln_f"]["scale"], self.cfg.norm_eps) @ self.p["wte"]["embedding"].T
        if self.criterion == "argmax":
            return int(np.argmax(logits))
        return _log_softmax(logits)

    def _done(self, s_old, s_new, st_old, st_new, stable):
        c = self.criterion
        if c == "latent_diff":
            return np.linalg.norm(s_new - s_old) / np.linalg.norm(s_new) < self.eps, stable
        if c == "kl":
            return float(np.sum(np.exp(st_new) * (st_new - st_old))) < self.eps, stable
        if c == "entropy":
            ent = lambda lp: -float(np.sum(np.exp(lp) * lp))  # noqa: E731
            return abs(ent(st_new) - ent(st_old)) < self.eps, stable
        if c == "argmax":
            stable = stable + 1 if st_new == st_old else 0
            return stable >= self.patience, stable
        if c == "gate":  # st_new is the running log prod (1 - lambda)
            return 1.0 - np.exp(st_new) >= self.eps, stable
        return False, stable

    def run(self, tokens):
        cfg, p = self.cfg, self.p
        loop = p["loop"]
        logits, iters, s_prev = [], [], None
        for pos, tok in enumerate(tokens):
            x = p["wte"]["embedding"][tok] + (p["wpe"]["embedding"][pos] if "wpe" in p else 0.0)
            for j in range(cfg.n_prelude):
                x, _ = self._block(p[f"prelude_{j}"], x, pos, ("prelude", j))
            e = x
            s = s_prev if (self.warm and pos > 0) else e
            stat = 0.0 if self.criterion == "gate" else self._stat(s)
            stable, active, n_it = 0, True, 0
            last_kv = {}
            for i in range(self.n_loop):
                slot = i % self.n_slots
                if not active:  # the Huginn fill: the last computed K/V of this position
                    for j in range(cfg.n_block):
                        self.kv.setdefault(("recur", j, slot), {})[pos] = last_kv[j]
                    continue
                u = np.concatenate([e, s]) @ loop["inject"]["kernel"]
                for j in range(cfg.n_block):
                    u, last_kv[j] = self._block(loop[f"recur_{j}"], u, pos, ("recur", j, slot))
                s_new = _rms(u, loop["norm_recur"]["scale"], cfg.norm_eps)
                st_new = self._stat(s_new)
                if self.criterion == "gate":
                    st_new = stat + st_new
                done, stable = self._done(s, s_new, stat, st_new, stable)
                n_it += 1
                s, stat = s_new, st_new
                active = not (done and n_it >= self.min_loops)
            s_prev = s
            x = s
            for j in range(cfg.n_coda):
                x, _ = self._block(p[f"coda_{j}"], x, pos, ("coda", j))
            logits.append(_rms(x, p["ln_f"]["scale"], cfg.norm_eps) @ p["wte"]["embedding"].T)
            iters.append(n_it)
        return np.stack(logits), np.array(iters)


def _rope(x, pos, theta):
    """Rotate (first half, second half) pairs of each head's dims by pos · theta^(-2i/K)."""
    half = x.shape[-1] // 2
    ang = pos * theta ** (-np.arange(half) * 2.0 / x.shape[-1])
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], axis=-1)


def _to_np(tree):
    if isinstance(tree, dict):
        return {k: _to_np(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)
