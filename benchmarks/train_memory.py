"""Memory of B×B pair training against the share of recomputed pair chunks (``bench.py``'s ``train_memory``).

The heads of ``configs/clotho_iter.yaml`` and ``configs/clotho_stack.yaml`` (MCAN-small: width 512,
8 heads, 6 layers, dropout 0.1) behind their trainable projections, pools and temperature, fed random
encoder outputs of the real shapes (CLAP HTSAT-tiny and roberta-base give 768-wide tokens; 96 audio
tokens = 3 ten-second windows of 32 frames, 24 text tokens). The encoders themselves are not built:
CLAP is frozen; roberta-base's trainable state is reported apart (``text_encoder_state_gib``).

Bytes kept for backward are counted with ``torch.autograd.graph.saved_tensors_hooks``, once per distinct
storage, parameters and the encoder outputs excluded. Each term of that count belongs to the step, one
item or one pair, so it is exactly ``c0 + c1·B`` plus a per-pair cost times the pairs: ``p2`` for a pair
whose chunk keeps its activations, ``r2`` (its index and score) for one whose chunk is recomputed and
keeps only its inputs. ``p`` (share 0) and ``r`` (share 1) are measured at B = 2, 3, 4 and checked at
B = 5; the per-item terms when both kinds of chunk are present (the union of the two: ``p0`` and ``r1``)
are fitted the same way on share-½ steps in B chunks of B pairs. At batch B and share s
(``AudioTextMatcher(recompute=s)``: ``recomputed_chunks`` picks ``floor(n·s)`` of the ``n`` chunks of
``recompute_chunk`` = 64 pairs) backward meets at its peak what forward kept plus one recomputed chunk's
activations, rebuilt while that chunk's backward runs: ``p2 × 64`` (at these sizes the step's last chunk
is among those recomputed and its backward runs first, so at B = 32 a share of 1/16, one chunk, saves nothing). Weights, their gradients and AdamW's
two moments are fp32 under bf16-mixed too: 16 bytes per trainable parameter. bf16 is CPU autocast; GPU
autocast keeps a few more ops in fp32.

Each entry's ``recompute_share`` is the smallest multiple of 1/16 whose bf16 total fits
``MEMORY_BUDGET_GIB``; ``bf16_gib_by_share`` lists the total at every sixteenth, to pick the share of
another GPU. The time cost at that share is measured, not modelled: the median, over alternating runs in
one process, of the CPU time of a training step of the head (forward, backward, AdamW; the encoders,
which add the same time to both, left out) with recomputation ÷ without, on one thread, at a size that
runs on a laptop CPU: the real token counts at batch 8 (64 pairs in 16 chunks of 4, so every sixteenth
is realised); also without the AdamW step, and at share 1 (``recompute_time_ratio_full``). A share of 0
runs the plain path, so its ratio is 1 by construction (not timed). On the CPU about a third of a
recomputation's cost is redrawing dropout masks (``bernoulli_``: a dropout costs as much as the FFN
matmul it follows), which a GPU's fused dropout does not pay; ``gpu_bench.py`` measures the ratio on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
from torch import Tensor, nn

import lacoat.models.matcher as matcher_module
from lacoat.contracts import Tokens
from lacoat.models.cascade import Cascade, IteratingCascade, Side, StackingCascade
from lacoat.models.matcher import AudioTextMatcher, recomputed_chunks
from lacoat.train.losses import NTXentLoss

GIB = 2**30
# What one training step of the head may take: an A100-40GB (40 GiB), or half an 80 GB H100. The
# accounting has no headroom for the CUDA context, allocator fragmentation or roberta-base's state.
MEMORY_BUDGET_GIB = 40
SHARE_STEPS = 16  # recompute shares are multiples of 1/16
ENCODER_DIM = 768  # CLAP HTSAT-tiny fine-grained frames and roberta-base tokens
TEXT_TOKENS, AUDIO_TOKENS = 24, 96
RECOMPUTE_CHUNK = 64
ROBERTA_BASE_PARAMS = 124_645_632  # trainable in the Clotho configs (frozen: false)
MCAN_SMALL = (512, 8, 6)  # width, heads, layers of configs/clotho_{iter,stack}.yaml
HEADS = {
    "iter": lambda dim, heads, layers: IteratingCascade(dim, heads, layers, dropout=0.1, lead="text"),
    "stack": lambda dim, heads, layers: StackingCascade(dim, heads, layers, dropout=0.1),
}


class _Stub(nn.Module):
    """Stands in for an encoder: only its width is read."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


class Head(nn.Module):
    """The trainable part of a Clotho config behind its encoders: matcher (projections, positions,
    cascade, pools) and the loss (learnable temperature, auxiliary bi-encoder term 0.5)."""

    def __init__(
        self,
        cascade: Cascade,
        recompute: float,
        recompute_chunk: int = RECOMPUTE_CHUNK,
        encoder_dim: int = ENCODER_DIM,
    ) -> None:
        super().__init__()
        self.matcher = AudioTextMatcher(
            _Stub(encoder_dim),
            _Stub(encoder_dim),
            cascade,
            embed_dim=cascade.dim,
            recompute=recompute,
            recompute_chunk=recompute_chunk,
        )
        self.loss = NTXentLoss(0.05, learnable_temperature=True, aux_weight=0.5)

    def forward(self, text: Tokens, audio: Tokens) -> Tensor:
        """Loss of one training step on encoder outputs ``text [B, Lt, De]``, ``audio [B, La, De]``
        (all B×B pairs through the cascade, as ``train_pairs: full``)."""
        m = self.matcher
        t, a = m.project_text(text.tokens, text.mask), m.project_audio(audio.tokens, audio.mask)
        clip = torch.arange(len(t), device=t.tokens.device)
        return self.loss(m.score_matrix(t, a), clip, clip, aux_sim=m.bi_scores(t, a))["loss"]


def head(
    name: str,
    recompute: float,
    device: str | torch.device = "cpu",
    recompute_chunk: int = RECOMPUTE_CHUNK,
    size: tuple[int, int, int] = MCAN_SMALL,
    encoder_dim: int = ENCODER_DIM,
) -> Head:
    """The ``iter`` or ``stack`` head of ``size`` (width, heads, layers; seeded weights), recomputing
    the share ``recompute`` of its pair chunks, in training mode (dropout on), on ``device``."""
    torch.manual_seed(0)
    return Head(HEADS[name](*size), recompute, recompute_chunk, encoder_dim).to(device).train()


def encoder_outputs(
    b: int, lt: int, la: int, device: str | torch.device = "cpu", encoder_dim: int = ENCODER_DIM
) -> tuple[Tokens, Tokens]:
    """Random encoder outputs: text ``[b, lt, De]``, audio ``[b, la, De]``, every token valid."""
    ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=device)  # noqa: E731
    text = Tokens(torch.randn(b, lt, encoder_dim, device=device), ones(lt))
    audio = Tokens(torch.randn(b, la, encoder_dim, device=device), ones(la))
    return text, audio


def _tensors(x: object) -> list[Tensor]:
    """The tensors in a checkpointed function's arguments (tensors, ``Side``s, None)."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Side):
        return [x.tokens, x.mask, *(t for kv in x.kv for t in kv)]
    return []


@contextmanager
def counting_saved(exclude: set[int]):
    """Counts the distinct storages autograd keeps for backward inside the block, plus the inputs the
    matcher's recomputed chunks hold on to. Yields a dict ``data_ptr → bytes``, filled as it runs."""
    storages: dict[int, int] = {}

    def keep(x: Tensor) -> Tensor:  # the graph holds what this returns: counted storages stay alive
        storage = x.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return x.detach()  # x itself would make a reference cycle through its grad_fn (a leak)

    real_checkpoint = matcher_module.checkpoint

    def checkpoint(fn, *args, **kwargs):
        for x in args:
            for t in _tensors(x):
                keep(t)
        return real_checkpoint(fn, *args, **kwargs)

    with (
        torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x),
        mock.patch.object(matcher_module, "checkpoint", checkpoint),
    ):
        yield storages


def saved_bytes(
    name: str,
    b: int,
    recompute: float,
    bf16: bool,
    recompute_chunk: int = RECOMPUTE_CHUNK,
    lt: int = TEXT_TOKENS,
    la: int = AUDIO_TOKENS,
) -> int:
    """Bytes kept for backward by one training step at batch ``b`` (forward only; see the module doc)."""
    model = head(name, recompute, recompute_chunk=recompute_chunk)
    text, audio = encoder_outputs(b, lt, la)
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude |= {text.tokens.untyped_storage().data_ptr(), audio.tokens.untyped_storage().data_ptr()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast, counting_saved(exclude) as storages:
        model(text, audio)
    return sum(storages.values())


def fit(y: Callable[[int], float]) -> tuple[float, float, float, float]:
    """``(c0, c1, c2, check)``: ``y(B) = c0 + c1·B + c2·B²`` from B = 2, 3, 4, and the relative error of
    that fit at B = 5 (measured). B = 1 is left out: some views alias there that do not at B > 1."""
    y2, y3, y4, y5 = (y(b) for b in (2, 3, 4, 5))
    c2 = (y4 - 2 * y3 + y2) / 2
    c1 = y3 - y2 - 5 * c2
    c0 = y2 - 2 * c1 - 4 * c2
    return c0, c1, c2, abs(c0 + 5 * c1 + 25 * c2 - y5) / y5


def split(pairs: int, share: float, chunk: int) -> tuple[int, int, int]:
    """``(kept, recomputed, largest)``: of ``pairs`` in chunks of ``chunk``, the pairs whose chunk keeps
    its activations and those whose chunk is recomputed at ``share``, and the largest recomputed chunk."""
    sizes = [min(chunk, pairs - start) for start in range(0, pairs, chunk)]
    again = [n for n, a in zip(sizes, recomputed_chunks(len(sizes), share), strict=True) if a]
    return pairs - sum(again), sum(again), max(again, default=0)


class Accounting:
    """Bytes one training step of head ``name`` keeps at any batch and share (see the module doc)."""

    def __init__(self, name: str, bf16: bool) -> None:
        self.plain = fit(lambda b: saved_bytes(name, b, 0.0, bf16))  # c0 + c1·B + p2·B²
        self.recompute = fit(lambda b: saved_bytes(name, b, 1.0, bf16))  # c0 + c1·B + r2·B²
        p2, r2 = self.plain[2], self.recompute[2]

        def items(b: int) -> float:  # both kinds of chunk: b chunks of b pairs, half of them recomputed
            kept, again, _ = split(b * b, 0.5, b)  # (a chunk of one pair keeps more than 1/p of p pairs)
            return saved_bytes(name, b, 0.5, bf16, recompute_chunk=b) - p2 * kept - r2 * again

        self.mixed = fit(items)  # per-item terms: c0 + c1·B (its c2 is 0 where the accounting is exact)
        # the fits' errors at B = 5, and a B² term in the per-item terms against a pair's activations
        self.fit_error = max(self.plain[3], self.recompute[3], self.mixed[3], abs(self.mixed[2]) / p2)
        self.state = 16 * sum(p.numel() for p in head(name, 0.0).parameters())

    @property
    def per_pair(self) -> float:
        """Bytes a pair's activations take (its chunk not recomputed)."""
        return self.plain[2]

    def activations(self, b: int, share: float, chunk: int = RECOMPUTE_CHUNK) -> float:
        """Bytes kept for backward at batch ``b`` and ``share``, plus one recomputed chunk rebuilt."""
        kept, again, largest = split(b * b, share, chunk)
        items = self.plain if not again else self.recompute if not kept else self.mixed
        p2, r2 = self.plain[2], self.recompute[2]
        return items[0] + items[1] * b + p2 * kept + r2 * again + p2 * largest

    def total_gib(self, b: int, share: float) -> float:
        """Activations and the trainable state (fp32 weights, gradients, AdamW moments), in GiB."""
        return (self.activations(b, share) + self.state) / GIB


def budget_share(accounting: Accounting, b: int, budget: float = MEMORY_BUDGET_GIB) -> float:
    """The smallest multiple of 1/16 whose total at batch ``b`` fits ``budget`` GiB (1 if none does)."""
    shares = [k / SHARE_STEPS for k in range(SHARE_STEPS + 1)]
    return next((s for s in shares if accounting.total_gib(b, s) <= budget), 1.0)


def step_seconds(
    model: Head, optimizer: torch.optim.Optimizer, text: Tokens, audio: Tokens
) -> tuple[float, float]:
    """CPU time of this process for one training step of the head: ``(forward + backward + AdamW step,
    forward + backward)``."""
    optimizer.zero_grad(set_to_none=True)
    start = time.process_time()
    model(text, audio).backward()
    backward_done = time.process_time()
    optimizer.step()
    return time.process_time() - start, backward_done - start


def time_ratios(
    name: str,
    shares: list[float],
    b: int = 8,
    lt: int = TEXT_TOKENS,
    la: int = AUDIO_TOKENS,
    chunk: int = 4,
    repeats: int = 7,
) -> dict[float, tuple[float, float]]:
    """Per share: medians over ``repeats`` alternating runs of (step time with that share recomputed ÷
    without): the whole step (forward, backward, AdamW) and forward + backward alone. fp32, one CPU
    thread (process time: robust to other work on a shared machine), the heads' real token counts,
    ``chunk`` pairs per chunk in all (so a step has B²/chunk of them, and all draw masks of the same shapes)."""
    plain = head(name, 0.0, recompute_chunk=chunk)
    plain.matcher.pair_chunk = chunk
    models = [plain, *(head(name, s, recompute_chunk=chunk) for s in shares)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    text, audio = encoder_outputs(b, lt, la)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for m, opt in zip(models, optimizers, strict=True):  # warm-up (and AdamW state)
            step_seconds(m, opt, text, audio)
        ratios: dict[float, list[tuple[float, float]]] = {s: [] for s in shares}
        for _ in range(repeats):
            without, *withs = (
                step_seconds(m, opt, text, audio) for m, opt in zip(models, optimizers, strict=True)
            )
            for s, with_ in zip(shares, withs, strict=True):
                ratios[s].append((with_[0] / without[0], with_[1] / without[1]))
    finally:
        torch.set_num_threads(threads)
    return {
        s: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for s, rs in ratios.items()
    }


def train_memory() -> dict:
    """``bench.py``'s ``train_memory`` section: ``iter_b32`` … ``stack_b64`` and how they were made."""
    out: dict = {}
    batches = (32, 64)
    for name in HEADS:
        bf16, fp32 = Accounting(name, bf16=True), Accounting(name, bf16=False)
        chosen = {b: budget_share(bf16, b) for b in batches}
        timed = sorted({s for s in chosen.values() if s > 0} | {1.0})
        ratio = time_ratios(name, timed)
        for b in batches:
            share = chosen[b]
            at_share = ratio.get(share, (1.0, 1.0))  # share 0: the plain path itself
            out[f"{name}_b{b}"] = {
                "recompute_share": share,
                "bf16_plain_gib": round(bf16.total_gib(b, 0.0), 2),
                "bf16_recompute_gib": round(bf16.total_gib(b, share), 2),
                "bf16_full_recompute_gib": round(bf16.total_gib(b, 1.0), 2),
                "fp32_plain_gib": round(fp32.total_gib(b, 0.0), 2),
                "fp32_recompute_gib": round(fp32.total_gib(b, share), 2),
                "fp32_full_recompute_gib": round(fp32.total_gib(b, 1.0), 2),
                "bf16_gib_by_share": [
                    round(bf16.total_gib(b, k / SHARE_STEPS), 2) for k in range(SHARE_STEPS + 1)
                ],
                "bf16_activations_plain_gib": round(bf16.activations(b, 0.0) / GIB, 2),
                "bf16_activations_recompute_gib": round(bf16.activations(b, share) / GIB, 3),
                "bf16_per_pair_mib": round(bf16.per_pair / 2**20, 2),
                "fp32_per_pair_mib": round(fp32.per_pair / 2**20, 2),
                "recompute_time_ratio": round(at_share[0], 3),
                "recompute_time_ratio_forward_backward": round(at_share[1], 3),
                "recompute_time_ratio_measured": share > 0,
                "recompute_time_ratio_full": round(ratio[1.0][0], 3),
                "recompute_time_ratio_full_forward_backward": round(ratio[1.0][1], 3),
                "fit_error_at_b5": float(f"{max(bf16.fit_error, fp32.fit_error):.1e}"),
            }
    out["head_params"] = (
        sum(p.numel() for p in head("iter", 0.0).parameters()),
        sum(p.numel() for p in head("stack", 0.0).parameters()),
    )
    out["text_encoder_state_gib"] = round(16 * ROBERTA_BASE_PARAMS / GIB, 2)
    out["memory_budget_gib"] = MEMORY_BUDGET_GIB
    out["setup"] = (
        f"heads of configs/clotho_{{iter,stack}}.yaml on random encoder outputs ({TEXT_TOKENS} text, "
        f"{AUDIO_TOKENS} audio tokens of width {ENCODER_DIM}); *_gib = activations kept for backward "
        "(saved-tensor hooks, distinct storages, exact c0+c1·B + per-pair terms fitted at B=2..4, checked at 5) "
        "+ 16 B per head parameter (fp32 weights, gradients, AdamW moments); recompute_chunk "
        f"{RECOMPUTE_CHUNK}; bf16 = CPU autocast; text_encoder_state_gib (roberta-base, trainable) not "
        f"included; recompute_share: smallest multiple of 1/{SHARE_STEPS} whose bf16 total fits "
        f"memory_budget_gib = {MEMORY_BUDGET_GIB} (an A100-40GB or half an 80 GB H100, no headroom); "
        "bf16_recompute_gib / fp32_recompute_gib at that share, *_full_recompute_gib at share 1, "
        f"bf16_gib_by_share at k/{SHARE_STEPS}, k = 0..{SHARE_STEPS}; recompute_time_ratio: step time at "
        "that share ÷ plain, median of 7 alternating fp32 training steps of the head (forward, backward, "
        "AdamW; process CPU time, 1 thread, on a 2-core machine shared with other training runs while "
        f"timing) at batch 8, {TEXT_TOKENS} text + {AUDIO_TOKENS} audio tokens, 64 pairs in 16 chunks of 4; "
        "where recompute_share is 0 (recompute_time_ratio_measured false) the step is the plain one and "
        "the ratio is 1.0 by construction, not timed; *_full: at share 1; *_forward_backward: the same "
        "without the AdamW step"
    )
    return out
