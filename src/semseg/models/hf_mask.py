"""Hugging Face's Mask2Former and EoMT, adapted to semseg: they report their loss terms, and EoMT
takes any multiple of its patch size and exports. Imports transformers: import this module only
once ``require_extra("mask", ...)`` passed (``semseg.models.mask_classification`` does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import (
    EomtConfig,
    EomtForUniversalSegmentation,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
)
from transformers.models.eomt.modeling_eomt import EomtEmbeddings


class _ReportsLossTerms:
    """Keeps each weighted loss dict the model computes (``get_loss_dict``): transformers returns
    only their sum, and semseg logs each term (``train/loss_<term>``)."""

    def get_loss_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        terms = super().get_loss_dict(*args, **kwargs)
        self.reported_loss_terms.append(dict(terms))
        return terms


class Mask2Former(_ReportsLossTerms, Mask2FormerForUniversalSegmentation):
    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.reported_loss_terms: list[dict[str, torch.Tensor]] = []


class _AnySizeEmbeddings(EomtEmbeddings):
    """EoMT's embeddings with the position embeddings resampled (bicubic, as timm's
    ``dynamic_img_size``) to the input's grid of patches: transformers' take only ``image_size``."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embeddings(pixel_values)
        rows, columns = self.patch_embeddings.image_size
        patch_height, patch_width = self.patch_embeddings.patch_size
        trained = (rows // patch_height, columns // patch_width)
        grid = self.position_embeddings.weight.reshape(1, *trained, -1).permute(0, 3, 1, 2)
        # Always resampled, also to its own size (bicubic at scale 1 is the identity): a branch on
        # the size would fix an exported graph to the example's case.
        grid = F.interpolate(grid, size=(height // patch_height, width // patch_width), mode="bicubic")
        patches = patches + grid.flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1)]
        return self.dropout(torch.cat([*prefix, patches], dim=1))


class Eomt(_ReportsLossTerms, EomtForUniversalSegmentation):
    """EoMT on any multiple of its patch size, exportable.

    transformers' EoMT reshapes its tokens to the fixed grid of ``image_size``, and branches on the
    values of its ``attn_mask_probs`` buffer (the masked-attention annealing), which an exporter
    cannot read: the grid follows the input here, and the probabilities are read as numbers before
    the forward pass (kept from the last eager pass or load for exporting).
    """

    def __init__(self, config: EomtConfig):
        super().__init__(config)
        self.embeddings.__class__ = _AnySizeEmbeddings  # same parameters, another forward
        self.reported_loss_terms: list[dict[str, torch.Tensor]] = []
        self._mask_probs = [1.0] * config.num_blocks  # the buffer's initial values

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self._buffers["attn_mask_probs"].is_meta:
            self._mask_probs = self._buffers["attn_mask_probs"].tolist()

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs):
        if not torch.compiler.is_exporting():
            self._mask_probs = self._buffers["attn_mask_probs"].tolist()
        patch = self.config.patch_size
        fixed_grid = self.grid_size
        self.grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        # An instance attribute shadows the buffer (modules look buffers up only when it is absent).
        self.__dict__["attn_mask_probs"] = self._mask_probs
        try:
            return super().forward(pixel_values, *args, **kwargs)
        finally:
            del self.__dict__["attn_mask_probs"]
            self.grid_size = fixed_grid


MODELS: dict[str, tuple[type, type]] = {
    "mask2former": (Mask2FormerConfig, Mask2Former),
    "eomt": (EomtConfig, Eomt),
}
