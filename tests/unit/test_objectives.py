"""Training objectives against references written out pair by pair, and the global batch with a patched
all-gather standing in for two DDP ranks (as open_clip tests its gather)."""

import pytest
import torch
import torch.nn.functional as F

from lacoat.contracts import Tokens
from lacoat.errors import LacoatError
from lacoat.models.cascade import IteratingCascade
from lacoat.models.matcher import AudioTextMatcher
from lacoat.train.losses import NTXentLoss
from lacoat.train.objectives import PairObjective
from tests.unit.test_coattention import D, H, StubEncoder, seqs

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons


def make_matcher(
    cascade: bool = True,
    audio_encoder: torch.nn.Module | None = None,
    text_encoder: torch.nn.Module | None = None,
) -> AudioTextMatcher:
    """A small iterating matcher (or bi-encoder) over stub encoders fed ``Tokens``, or the given ones."""
    torch.manual_seed(0)
    head = IteratingCascade(D, H, layers=2, dropout=0.0) if cascade else None
    audio_encoder, text_encoder = audio_encoder or StubEncoder(D), text_encoder or StubEncoder(D)
    return AudioTextMatcher(audio_encoder, text_encoder, head, d_model=D, embed_dim=8, pair_chunk=4).eval()


def make_batch(clips: list[int], seed: int = 0) -> dict:
    n = len(clips)
    t, tm = seqs(n, 5, [5, 3, 4, 2, 5, 1, 4, 3][:n], seed)
    a, am = seqs(n, 7, [7, 4, 6, 2, 5, 7, 3, 6][:n], seed + 1)
    return {
        "text_tokens": t,
        "text_mask": tm,
        "audio_tokens": a,
        "audio_mask": am,
        "clip_index": torch.tensor(clips),
        "captions": [f"caption {i}" for i in range(n)],
    }


def take(batch: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in batch.items()}


@pytest.mark.parametrize("cascade", [True, False])
def test_global_batch_over_two_ranks_equals_the_whole_batch(cascade):
    matcher, loss = make_matcher(cascade), NTXentLoss(temperature=0.1, aux_weight=0.5)
    objective = PairObjective(loss, "full")
    whole = make_batch([0, 1, 2, 2, 3, 4])  # clip 2 twice: a same-clip pair across the two ranks
    expected = objective(matcher, whole)
    ranks = [take(whole, slice(0, 3)), take(whole, slice(3, 6))]

    def gather(tokens: Tokens, labels: torch.Tensor):
        side = "text" if tokens.tokens.shape[1] == 5 else "audio"  # text has 5 positions, audio 7
        parts = [matcher.text_of(b) if side == "text" else matcher.audio_of(b) for b in ranks]
        return Tokens.cat(parts), torch.cat([b["clip_index"] for b in ranks]), torch.tensor([3, 3])

    per_rank = [objective(matcher, ranks[r], gather, rank=r) for r in (0, 1)]
    for name in ("loss", "loss_main", "loss_aux"):
        mean = (per_rank[0][name] + per_rank[1][name]) / 2
        torch.testing.assert_close(mean, expected[name], msg=name)


def reference_candidate_loss(matcher, loss, batch, m, a2t_extra=None):
    """Pair by pair: each caption against its clip and the m other clips its bi-encoder ranks highest,
    each clip against its caption and the m highest other captions (and the finite entries of
    ``a2t_extra[i]``, ``[B, K]``); cross-entropy at temperature τ."""
    text, audio = matcher.text_of(batch), matcher.audio_of(batch)
    clip = batch["clip_index"].tolist()
    bi = matcher.bi_scores(text, audio).detach()
    b, scale = len(clip), 1 / loss.temperature

    def score(i, j):
        return matcher.score_index_pairs(text, audio, torch.tensor([i]), torch.tensor([j]))[0]

    def ce(row):
        return F.cross_entropy(torch.stack(row)[None] * scale, torch.tensor([0]))

    t2a, a2t = [], []
    for i in range(b):
        others = sorted((j for j in range(b) if clip[j] != clip[i]), key=lambda j: -float(bi[i, j]))[:m]
        t2a.append(ce([score(i, i)] + [score(i, j) for j in others]))
        others = sorted((k for k in range(b) if clip[k] != clip[i]), key=lambda k: -float(bi[k, i]))[:m]
        more = [] if a2t_extra is None else [x for x in a2t_extra[i] if torch.isfinite(x)]
        a2t.append(ce([score(i, i)] + [score(k, i) for k in others] + more))
    return (torch.stack(t2a).mean() + torch.stack(a2t).mean()) / 2


def test_hard_negative_objective_scores_each_query_positive_and_its_hardest_negatives():
    matcher, loss = make_matcher(), NTXentLoss(temperature=0.1, aux_weight=0.5)
    batch = make_batch([0, 1, 2, 2, 3, 4, 5])
    out = PairObjective(loss, "hard_negatives", hard_negatives=2)(matcher, batch)
    torch.testing.assert_close(out["loss_main"], reference_candidate_loss(matcher, loss, batch, 2))
    bi = matcher.bi_scores(matcher.text_of(batch), matcher.audio_of(batch))
    torch.testing.assert_close(
        out["loss_aux"], loss.contrastive(bi, batch["clip_index"], batch["clip_index"])
    )
    torch.testing.assert_close(out["loss"], out["loss_main"] + 0.5 * out["loss_aux"])


class WordEncoder(torch.nn.Module):
    """A text encoder stub: a fixed random vector per word plus one per position, so word order
    changes the tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        words = [t.lower().replace(",", " ,").rstrip(".").split() for t in texts]
        length = max(len(w) for w in words)
        out = torch.zeros(len(texts), length, self.dim)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                g = torch.Generator().manual_seed(sum(ord(c) * 31**k for k, c in enumerate(w)) % 2**31)
                out[i, j] = torch.randn(self.dim, generator=g) + 0.3 * torch.randn(self.dim, generator=g) * j
        mask = torch.arange(length)[None, :] < torch.tensor([len(w) for w in words])[:, None]
        return out, mask


@pytest.mark.parametrize("pairs", ["full", "hard_negatives"])
@pytest.mark.parametrize(
    ("kinds", "count_rewrites"),
    [(["order"], 1), (["count"], 1), (["order", "count"], 1), (["order", "count"], 3)],
)
def test_text_negatives_meet_each_clip_with_its_caption_rewritten(pairs, kinds, count_rewrites):
    from lacoat.negatives.order import reverse_order
    from lacoat.negatives.text import count_changes
    from lacoat.train.losses import ExtraNegatives

    matcher = make_matcher(text_encoder=WordEncoder(D))
    loss = NTXentLoss(temperature=0.1, aux_weight=0.5)
    batch = make_batch([0, 1, 2, 3, 4])
    del batch["text_tokens"], batch["text_mask"]
    batch["captions"] = [
        "a hum, then a click",
        "a bell rings twice",
        "three knocks before two drips",
        "a hiss",
        "a tone after a knock",
    ]
    objective = PairObjective(
        loss,
        pairs,
        2,
        order_negatives="text" if "order" in kinds else "none",
        count_negatives="count" in kinds,
        count_rewrites=count_rewrites,
    )
    out = objective(matcher, batch)

    text, audio = matcher.text_of(batch), matcher.audio_of(batch)
    own = matcher.pair_scores(text, audio)
    # by hand: clip i meets each of these captions; "three knocks before two drips" has four count
    # changes, "a bell rings twice" two (once, three times)
    rewrites = {"order": {i: [reverse_order(batch["captions"][i])] for i in (0, 2, 4)}}
    rewrites["count"] = {i: count_changes(batch["captions"][i])[:count_rewrites] for i in (1, 2)}
    assert [len(r) for r in rewrites["count"].values()] == [min(2, count_rewrites), count_rewrites]
    columns = [(kind, n) for kind in kinds for n in range(count_rewrites if kind == "count" else 1)]
    co = torch.full((5, len(columns)), float("-inf"), dtype=torch.float32)
    bi = co.clone()
    for k, (kind, n) in enumerate(columns):
        changed = [i for i, turned in rewrites[kind].items() if n < len(turned)]
        turned = matcher.encode_text([rewrites[kind][i][n] for i in changed])
        rows = torch.tensor(changed)
        co[rows, k] = matcher.score_index_pairs(turned, audio, torch.arange(len(rows)), rows).float()
        bi[rows, k] = (matcher.embed_text(turned) * matcher.embed_audio(audio)[rows]).sum(-1).float()
    for kind in kinds:  # every rewrite of the kind, pooled
        k = [j for j, (c, _) in enumerate(columns) if c == kind]
        has = torch.isfinite(co[:, k])
        win = (own[:, None].expand(-1, len(k))[has] > co[:, k][has].to(own.dtype)).float().mean()
        torch.testing.assert_close(out[f"{kind}_win_text"], win)
    clip = batch["clip_index"]
    bi_sim = matcher.bi_scores(text, audio)
    torch.testing.assert_close(out["loss_aux"], loss.contrastive(bi_sim, clip, clip, ExtraNegatives(a2t=bi)))
    if pairs == "full":
        sim = matcher.score_matrix(text, audio)
        torch.testing.assert_close(
            out["loss_main"], loss.contrastive(sim, clip, clip, ExtraNegatives(a2t=co))
        )
    else:  # the rewritten captions are more candidates of their clip (audio → text)
        expected = reference_candidate_loss(matcher, loss, batch, 2, a2t_extra=co.to(own.dtype))
        torch.testing.assert_close(out["loss_main"], expected)


def test_count_edits_need_count_negatives_on_the_audio_side():
    with pytest.raises(LacoatError, match="count_edits is 2, but count_negatives is 'text'"):
        PairObjective(NTXentLoss(), count_negatives="text", count_edits=2)
    with pytest.raises(LacoatError, match="count_edits is 3"):
        PairObjective(NTXentLoss(), count_negatives="audio", count_edits=3)
    assert PairObjective(NTXentLoss(), count_negatives="both", count_edits=2).audio_edits == ["count"] * 2


def test_count_rewrites_need_count_negatives_on_the_text_side():
    with pytest.raises(LacoatError, match="count_rewrites is 4, but count_negatives is 'audio'"):
        PairObjective(NTXentLoss(), count_negatives="audio", count_rewrites=4)
    with pytest.raises(LacoatError, match="count_rewrites is 0"):
        PairObjective(NTXentLoss(), count_negatives="text", count_rewrites=0)


def test_audio_order_negatives_meet_each_ordered_caption_with_its_clip_swapped():
    from lacoat.negatives.audio_edits import swap_token_halves
    from lacoat.train.losses import ExtraNegatives

    matcher, loss = make_matcher(), NTXentLoss(temperature=0.1, aux_weight=0.5)
    batch = make_batch([0, 1, 2, 3])
    batch["captions"] = ["a hum, then a click", "a bell rings", "a hiss", "a tone after a knock"]
    out = PairObjective(loss, "full", order_negatives="audio")(matcher, batch)

    text, audio = matcher.text_of(batch), matcher.audio_of(batch)
    swapped = matcher.project_audio(
        swap_token_halves(batch["audio_tokens"], batch["audio_mask"]), batch["audio_mask"]
    )
    rows = torch.tensor([0, 3])  # the captions that state an order
    co = torch.full((4,), float("-inf"), dtype=torch.float32)
    co[rows] = matcher.pair_scores(text[rows], swapped[rows]).float()
    clip = batch["clip_index"]
    sim = matcher.score_matrix(text, audio)
    torch.testing.assert_close(out["loss_main"], loss.contrastive(sim, clip, clip, ExtraNegatives(t2a=co)))


class FrameEncoder(torch.nn.Module):
    """A waveform encoder stub at 1 kHz: one token per 10-sample frame, a fixed projection of it."""

    sample_rate = 1000

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = torch.randn(10, dim, generator=torch.Generator().manual_seed(3))

    def forward(self, audio: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = audio.shape[0]
        frames = audio.reshape(b, -1, 10)  # [B, W·S / 10, 10]
        mask = torch.arange(frames.shape[1])[None, :] * 10 < valid.sum(1)[:, None]
        return frames @ self.proj.to(frames.dtype), mask


@pytest.mark.parametrize("pairs", ["full", "hard_negatives"])
@pytest.mark.parametrize("count_edits", [1, 2])
def test_audio_count_negatives_meet_each_counting_caption_with_its_clip_recounted(pairs, count_edits):
    from lacoat.negatives.audio_edits import recount, swap_at_pause
    from lacoat.negatives.text import pick
    from lacoat.train.losses import ExtraNegatives
    from tests.unit.test_audio_edits import clip

    matcher = make_matcher(audio_encoder=FrameEncoder(D), text_encoder=WordEncoder(D))
    loss = NTXentLoss(temperature=0.1, aux_weight=0.5)
    waves = [
        clip((0, 2), (1, 1), (0, 2), (1, 1), (0, 2), (3, 4), (0, 8)),
        clip((0, 2), (3, 4), (0, 3), (2, 1), (0, 2), (2, 1), (0, 7)),
        clip((0, 2), (3, 4), (0, 14)),  # one sound: no edit
        clip((0, 2), (3, 3), (0, 3), (1, 2), (0, 10)),
    ]
    captions = ["two clicks, then a hum", "a hum, then 2 knocks", "three drips", "a bell rings"]
    batch = {
        "audio": torch.stack(waves)[:, None, :],
        "audio_valid": torch.full((4, 1), 200),
        "clip_index": torch.arange(4),
        "captions": captions,
    }
    objective = PairObjective(
        loss, pairs, 2, order_negatives="audio", count_negatives="audio", count_edits=count_edits
    )
    out = objective(matcher, batch)

    text, audio = matcher.text_of(batch), matcher.audio_of(batch)
    own = matcher.pair_scores(text, audio)
    co = torch.full((4, 1 + count_edits), float("-inf"), dtype=torch.float32)
    # column 0: order (captions 0, 1); column 1: count (captions 0, 1, 2; clip 2 has no edit), one
    # occurrence more or fewer as a checksum picks; column 2 (count_edits 2): the other way
    edits = {(0, 0): swap_at_pause(waves[0], 10), (1, 0): swap_at_pause(waves[1], 10)}
    for i in (0, 1):
        more = pick(captions[i], [True, False])
        for n in range(count_edits):
            edits[(i, 1 + n)] = recount(waves[i], 10, more=more if n == 0 else not more)
    assert all(wave is not None for wave in edits.values())
    assert recount(waves[2], 10, more=True) is None and recount(waves[2], 10, more=False) is None
    for (i, k), wave in edits.items():
        edited = matcher.encode_audio(wave[None, None, :], torch.tensor([[200]]))
        co[i, k] = matcher.pair_scores(text[[i]], edited)[0].float()
    for kind, k in [("order", [0]), ("count", list(range(1, 1 + count_edits)))]:  # pooled over its columns
        win = (own[:2, None] > co[:2, k].to(own.dtype)).float().mean()
        torch.testing.assert_close(out[f"{kind}_win"], win)
    if pairs == "full":
        sim, clips = matcher.score_matrix(text, audio), batch["clip_index"]
        expected = loss.contrastive(sim, clips, clips, ExtraNegatives(t2a=co.to(sim.dtype)))
        torch.testing.assert_close(out["loss_main"], expected)


def test_audio_count_negatives_need_waveforms(caplog):
    matcher, loss = make_matcher(), NTXentLoss(temperature=0.1, aux_weight=0.5)
    batch = make_batch([0, 1, 2])
    batch["captions"] = ["two clicks", "a hum", "a single knock"]
    plain = PairObjective(loss, "full")(matcher, batch)
    with caplog.at_level("WARNING"):
        out = PairObjective(loss, "full", count_negatives="audio")(matcher, batch)
    torch.testing.assert_close(out["loss"], plain["loss"])  # no negative made from tokens
    assert "needs waveforms" in caplog.text and "data.feature_cache" in caplog.text


def test_count_negatives_true_means_the_text_side():
    objective = PairObjective(NTXentLoss(), count_negatives=True)
    assert objective.text_rewrites == ["count"] and objective.audio_edits == []
    assert PairObjective(NTXentLoss(), count_negatives="both").audio_edits == ["count"]


def test_negatives_of_edits_do_not_combine_with_gathered_negatives():
    loss = NTXentLoss(temperature=0.1)
    assert PairObjective(loss, gather_negatives=True).gather_negatives
    with pytest.raises(LacoatError, match="do not combine with gather_negatives"):
        PairObjective(loss, order_negatives="both", gather_negatives=True)
