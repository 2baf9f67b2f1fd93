"""Memory of B×B pair training with and without recomputed pair chunks (``bench.py``'s ``train_memory``).

The heads of ``configs/clotho_iter.yaml`` and ``configs/clotho_stack.yaml`` (MCAN-small: width 512,
8 heads, 6 layers, dropout 0.1) behind their trainable projections, pools and temperature, fed random
encoder outputs of the real shapes (CLAP HTSAT-tiny and roberta-base give 768-wide tokens; 96 audio
tokens = 3 ten-second windows of 32 frames, 24 text tokens). The encoders themselves are not built:
CLAP is frozen; roberta-base's trainable state is reported apart (``text_encoder_state_gib``).

Bytes kept for backward are counted with ``torch.autograd.graph.saved_tensors_hooks``, once per distinct
storage, parameters and the encoder outputs excluded. Each term of that count belongs to one item or one
pair, so it is exactly ``c0 + c1·B + c2·B²``: measured at B = 2, 3, 4, checked at B = 5, evaluated at
B = 32 and 64 (the paper sizes would need 50-200 GiB here). With recomputation, what backward meets at
its peak is what forward kept (counted the same way; the recomputed chunks keep only their inputs, which
are counted too) plus one chunk's activations, rebuilt while that chunk's backward runs: ``c2 ×
recompute_chunk``. Weights, their gradients and AdamW's two moments are fp32 under bf16-mixed too:
16 bytes per trainable parameter. bf16 is CPU autocast; GPU autocast keeps a few more ops in fp32.

The time cost is the median, over alternating runs in one process, of the CPU time of a training step of
the head (forward, backward, AdamW; the encoders, which add the same time to both, left out) with
recomputation ÷ without, on one thread, at a size that runs on a laptop CPU: the real token counts at
batch 4 (16 pairs in chunks of 4); also without the AdamW step. On a shared 2-core machine the
ratio moved between 1.33 and 1.47 from run to run (this size and batch 8 with 12 text + 32 audio
tokens alike). On the CPU about a third of the recomputation's cost is redrawing dropout masks
(``bernoulli_``: a dropout costs as much as the FFN matmul it follows), which a GPU's fused dropout
does not pay; ``gpu_bench.py`` measures the ratio on a GPU.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
from torch import Tensor, nn

import lacoat.models.matcher as matcher_module
from lacoat.losses import NTXentLoss
from lacoat.models.cascade import Cascade, IteratingCascade, Side, StackingCascade
from lacoat.models.matcher import AudioTextMatcher, Tokens

GIB = 2**30
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
        recompute: bool,
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
    recompute: bool,
    device: str | torch.device = "cpu",
    recompute_chunk: int = RECOMPUTE_CHUNK,
    size: tuple[int, int, int] = MCAN_SMALL,
    encoder_dim: int = ENCODER_DIM,
) -> Head:
    """The ``iter`` or ``stack`` head of ``size`` (width, heads, layers; seeded weights), in training
    mode (dropout on), on ``device``."""
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
    name: str, b: int, recompute: bool, bf16: bool, lt: int = TEXT_TOKENS, la: int = AUDIO_TOKENS
) -> int:
    """Bytes kept for backward by one training step at batch ``b`` (forward only; see the module doc)."""
    model = head(name, recompute)
    text, audio = encoder_outputs(b, lt, la)
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude |= {text.tokens.untyped_storage().data_ptr(), audio.tokens.untyped_storage().data_ptr()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast, counting_saved(exclude) as storages:
        model(text, audio)
    return sum(storages.values())


def quadratic(name: str, recompute: bool, bf16: bool) -> tuple[float, float, float, float]:
    """``(c0, c1, c2, check)``: saved bytes ``c0 + c1·B + c2·B²`` from B = 2, 3, 4, and the relative
    error of that fit at B = 5 (measured). B = 1 is left out: some views alias there that do not at B > 1."""
    y2, y3, y4, y5 = (saved_bytes(name, b, recompute, bf16) for b in (2, 3, 4, 5))
    c2 = (y4 - 2 * y3 + y2) / 2
    c1 = y3 - y2 - 5 * c2
    c0 = y2 - 2 * c1 - 4 * c2
    return c0, c1, c2, abs(c0 + 5 * c1 + 25 * c2 - y5) / y5


def state_bytes(name: str) -> int:
    """fp32 weights + gradients + AdamW moments of the trainable head: 16 bytes per parameter."""
    return 16 * sum(p.numel() for p in head(name, recompute=False).parameters())


def memory(name: str, bf16: bool, batches: tuple[int, ...] = (32, 64)) -> dict[int, dict]:
    """Per batch size: GiB of activations kept (plain, recompute) and totals with the trainable state."""
    p0, p1, p2, p_check = quadratic(name, False, bf16)
    r0, r1, r2, r_check = quadratic(name, True, bf16)
    state = state_bytes(name)
    out = {}
    for b in batches:
        plain = p0 + p1 * b + p2 * b * b
        recompute = r0 + r1 * b + r2 * b * b + p2 * min(RECOMPUTE_CHUNK, b * b)  # + one chunk rebuilt
        out[b] = {
            "activations_plain_gib": plain / GIB,
            "activations_recompute_gib": recompute / GIB,
            "plain_gib": (plain + state) / GIB,
            "recompute_gib": (recompute + state) / GIB,
            "per_pair_mib": p2 / 2**20,
            "fit_error_at_b5": max(p_check, r_check),
        }
    return out


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


def time_ratio(
    name: str, b: int = 4, lt: int = TEXT_TOKENS, la: int = AUDIO_TOKENS, chunk: int = 4, repeats: int = 7
) -> tuple[float, float]:
    """Medians over ``repeats`` alternating runs of (step time with recomputation ÷ without): the whole
    step (forward, backward, AdamW) and forward + backward alone. fp32, one CPU thread (process time:
    robust to other work on a shared machine), the heads' real token counts, ``chunk`` pairs per chunk
    in both (so a step has several, as at the paper sizes, and both draw the same dropout masks)."""
    plain, recompute = head(name, False, recompute_chunk=chunk), head(name, True, recompute_chunk=chunk)
    plain.matcher.pair_chunk = chunk
    optimizers = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (plain, recompute)}
    text, audio = encoder_outputs(b, lt, la)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for m in (plain, recompute):  # warm-up (and AdamW state)
            step_seconds(m, optimizers[m], text, audio)
        steps, forward_backward = [], []
        for _ in range(repeats):
            without = step_seconds(plain, optimizers[plain], text, audio)
            with_ = step_seconds(recompute, optimizers[recompute], text, audio)
            steps.append(with_[0] / without[0])
            forward_backward.append(with_[1] / without[1])
    finally:
        torch.set_num_threads(threads)
    return statistics.median(steps), statistics.median(forward_backward)


def train_memory() -> dict:
    """``bench.py``'s ``train_memory`` section: ``iter_b32`` … ``stack_b64`` and how they were made."""
    out: dict = {}
    for name in HEADS:
        bf16, fp32 = memory(name, bf16=True), memory(name, bf16=False)
        ratio = time_ratio(name)
        for b in (32, 64):
            out[f"{name}_b{b}"] = {
                "bf16_plain_gib": round(bf16[b]["plain_gib"], 2),
                "bf16_recompute_gib": round(bf16[b]["recompute_gib"], 2),
                "fp32_plain_gib": round(fp32[b]["plain_gib"], 2),
                "fp32_recompute_gib": round(fp32[b]["recompute_gib"], 2),
                "bf16_activations_plain_gib": round(bf16[b]["activations_plain_gib"], 2),
                "bf16_activations_recompute_gib": round(bf16[b]["activations_recompute_gib"], 3),
                "bf16_per_pair_mib": round(bf16[b]["per_pair_mib"], 2),
                "fp32_per_pair_mib": round(fp32[b]["per_pair_mib"], 2),
                "recompute_time_ratio": round(ratio[0], 3),
                "recompute_time_ratio_forward_backward": round(ratio[1], 3),
                "fit_error_at_b5": float(
                    f"{max(bf16[b]['fit_error_at_b5'], fp32[b]['fit_error_at_b5']):.1e}"
                ),
            }
    out["head_params"] = (
        sum(p.numel() for p in head("iter", False).parameters()),
        sum(p.numel() for p in head("stack", False).parameters()),
    )
    out["text_encoder_state_gib"] = round(16 * ROBERTA_BASE_PARAMS / GIB, 2)
    out["setup"] = (
        f"heads of configs/clotho_{{iter,stack}}.yaml on random encoder outputs ({TEXT_TOKENS} text, "
        f"{AUDIO_TOKENS} audio tokens of width {ENCODER_DIM}); *_gib = activations kept for backward "
        f"(saved-tensor hooks, distinct storages, exact c0+c1·B+c2·B² from B=2..4, checked at 5) + 16 B per head "
        f"parameter (fp32 weights, gradients, AdamW moments); recompute_chunk {RECOMPUTE_CHUNK}; bf16 = "
        "CPU autocast; text_encoder_state_gib (roberta-base, trainable) not included; "
        "recompute_time_ratio: median of 7 alternating fp32 training steps of the head (forward, backward, "
        f"AdamW; process CPU time, 1 thread, shared machine) at batch 4, {TEXT_TOKENS} text + "
        f"{AUDIO_TOKENS} audio tokens, chunks of 4 pairs; *_forward_backward: the same without the AdamW step"
    )
    return out
