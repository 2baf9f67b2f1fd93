"""The text encoder of an index's model, saved beside the index so that a query needs no transformers.

Importing ``transformers`` takes longer than importing torch itself (it pulls in ``torch._dynamo``
and ``torch.distributed.tensor``), which made every ``lacoat search`` from the shell pay for it. When
an index is built, the model's Hugging Face text encoder (with the checkpoint's weights) is traced to
TorchScript at a fixed input of ``[1, max_length]`` token ids and saved with its fast tokenizer
(``tokenizer.json``, read by the light ``tokenizers`` package). A query is tokenised, padded to
``max_length``, encoded, and cut back to its real length: the tokens equal the transformers path's to
float precision (a test checks the ranking). An index without these files, or a torch that cannot
load them, uses the transformers encoder instead.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

TRACED, TOKENIZER, SETTINGS = "text_encoder.ts", "tokenizer.json", "text_encoder.json"


class _LastHidden(nn.Module):
    """``(input_ids, attention_mask) -> last_hidden_state`` of a transformers model (what is traced)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def save_query_encoder(text_encoder: nn.Module, folder: Path, fingerprint: str) -> bool:
    """Trace ``text_encoder`` (an ``HFTextEncoder`` with a fast tokenizer) into ``folder``.

    Returns:
        False when the encoder is of another kind (nothing written).
    """
    tokenizer = getattr(text_encoder, "tokenizer", None)
    if getattr(tokenizer, "backend_tokenizer", None) is None or not hasattr(text_encoder, "model"):
        return False
    length = text_encoder.max_length
    example = (torch.ones(1, length, dtype=torch.long), torch.ones(1, length, dtype=torch.long))
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on the model config while tracing say nothing to a user
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python code: the shape is fixed
            traced = torch.jit.trace(_LastHidden(text_encoder.model).eval(), example, check_trace=False)
    finally:
        hf_logging.set_verbosity(level)
    traced.save(str(folder / TRACED))
    tokenizer.backend_tokenizer.save(str(folder / TOKENIZER))
    settings = {
        "max_length": length,
        "pad_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
        "dim": text_encoder.dim,
        "checkpoint_fingerprint": fingerprint,
    }
    (folder / SETTINGS).write_text(json.dumps(settings))
    return True


class TracedTextEncoder(nn.Module):
    """The saved text encoder: ``forward(texts)`` as ``HFTextEncoder`` does, without transformers.

    Args:
        folder: the index folder holding the three files.
        fingerprint: the index's checkpoint fingerprint (the files must have been made from it).

    Raises:
        FileNotFoundError, ValueError, RuntimeError: files missing, of another checkpoint, or not
            loadable by this torch (the caller then uses the transformers encoder).
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        super().__init__()
        from tokenizers import Tokenizer

        settings = json.loads((folder / SETTINGS).read_text())
        if settings["checkpoint_fingerprint"] != fingerprint:
            raise ValueError("the saved text encoder was made from another checkpoint")
        self.max_length, self.dim = settings["max_length"], settings["dim"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load: deprecated, not gone
            self.model = torch.jit.load(str(folder / TRACED), map_location="cpu").eval()
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(
            length=self.max_length, pad_id=settings["pad_id"], pad_token=settings["pad_token"]
        )

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Encode texts one by one (the trace has batch 1).

        Shape:
            - texts: list of B strings
            - text_tokens: ``[B, L, D]`` with L the longest tokenised text (≤ ``max_length``)
            - text_mask: ``[B, L]`` bool
        """
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encoded])  # [B, max_length]
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.bool)  # [B, max_length]
        # unoptimised execution: the profiling executor spends the first calls (a CLI search makes one)
        # profiling, ~4x slower than the plain interpreter, for no gain at this size
        with torch.no_grad(), torch.jit.optimized_execution(False):
            tokens = torch.cat([self.model(ids[i : i + 1], mask[i : i + 1].long()) for i in range(len(ids))])
        length = int(mask.sum(1).max())
        return tokens[:, :length], mask[:, :length]  # [B, L, D], [B, L]


def load_query_encoder(folder: Path, fingerprint: str) -> TracedTextEncoder | None:
    """The saved text encoder of an index, or None (absent, or unusable: logged)."""
    if not (folder / TRACED).is_file():
        return None
    try:
        return TracedTextEncoder(folder, fingerprint)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        log.warning("saved text encoder not used (%s); loading it with transformers", err)
        return None
