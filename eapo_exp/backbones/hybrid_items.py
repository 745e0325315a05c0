"""LLaRA's hybrid item representation: an item's title followed by one embedding slot that holds
the frozen expert's item embedding mapped into the LM's hidden size by a trained projector.

A slot is written into token ids as a negative id, ``-(item_id + 1)``, so prompts stay plain
lists of ids: the shared-prompt packing, the reference pass and every evaluation mode carry
them unchanged, and only the input embedding layer tells them apart. ``HybridItemEmbedding``
replaces the backbone's input embeddings: ids >= 0 go through the original token embedding,
slot ids through ``ItemProjector`` (LLaRA: a 2-layer MLP over the expert's item embedding).

The projector is trained together with LoRA and travels inside the adapter: it is a PEFT
``modules_to_save`` module, and ``hybrid_items.json`` beside the adapter records the shapes
needed to rebuild it before the adapter's weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from eapo_exp.errors import ModelError

PROJECTOR_NAME = "item_projector"
SHAPES_FILE = "hybrid_items.json"


def slot_id(item_id: int) -> int:
    """The token id of item `item_id`'s embedding slot."""
    return -(int(item_id) + 1)


class ItemProjector(nn.Module):
    """Frozen expert item embeddings [num_items + 1, expert_dim] -> LM hidden size.

    The table is a buffer (saved with the adapter, never trained); the MLP is trained in
    float32 and its output cast to the LM's embedding dtype."""

    def __init__(self, item_table: Tensor, hidden_size: int) -> None:
        super().__init__()
        if item_table.dim() != 2:
            raise ModelError(f"item table must be [items, dim], got {tuple(item_table.shape)}")
        self.register_buffer("item_table", item_table.detach().float().clone())
        expert_dim = item_table.shape[1]
        self.mlp = nn.Sequential(nn.Linear(expert_dim, hidden_size), nn.GELU(),
                                 nn.Linear(hidden_size, hidden_size))

    @property
    def num_items(self) -> int:
        return self.item_table.shape[0] - 1

    def forward(self, item_ids: Tensor) -> Tensor:
        return self.mlp(self.item_table[item_ids].to(self.mlp[0].weight.dtype))


class HybridItemEmbedding(nn.Module):
    """Token embeddings for ids >= 0, projected expert item embeddings for slot ids < 0."""

    def __init__(self, tokens: nn.Embedding, item_projector: ItemProjector) -> None:
        super().__init__()
        self.tokens = tokens
        self.item_projector = item_projector

    @property
    def weight(self) -> Tensor:  # callers that tie or inspect the embedding matrix
        return self.tokens.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        # Dense over every position (the projector is ~0.3% of a forward): no data-dependent
        # shapes or early returns, so nothing waits on the device.
        slots = input_ids < 0
        embedded = self.tokens(input_ids.clamp(min=0))
        items = (-input_ids - 1).clamp(min=0)  # 0 (the padding item) where there is no slot
        self._check_items(items)
        projected = self.item_projector(items).to(embedded.dtype)
        return torch.where(slots.unsqueeze(-1), projected, embedded)

    def _check_items(self, items: Tensor) -> None:
        known = self.item_projector.num_items
        if items.device.type != "cpu":  # checked on the device, without a host sync
            torch._assert_async(items.max() <= known, "item slot beyond the projector's items")
            return
        if items.numel() and int(items.max()) > known:
            raise ModelError(f"item slot for item {int(items.max())} but the projector knows "
                             f"{known} items")


def install(model, item_table: Tensor, seed: int) -> None:
    """Put a fresh HybridItemEmbedding (projector initialised from `seed`) on `model`."""
    tokens = model.get_input_embeddings()
    if isinstance(tokens, HybridItemEmbedding):
        raise ModelError("the model already has hybrid item embeddings")
    hidden = tokens.weight.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = ItemProjector(item_table, hidden)
    projector.to(tokens.weight.device)
    model.set_input_embeddings(HybridItemEmbedding(tokens, projector))


def find_projector(model) -> ItemProjector | None:
    """The model's item projector (PEFT may hold copies: any has the shapes), or None."""
    return next((m for m in model.modules() if isinstance(m, ItemProjector)), None)


def modules_to_save(existing: list[str]) -> list[str]:
    """PEFT modules_to_save for a hybrid model: the projector travels with the adapter (it is
    inside the input embedding already when that is saved whole)."""
    if "embed_tokens" in existing or PROJECTOR_NAME in existing:
        return list(existing)
    return [*existing, PROJECTOR_NAME]


def write_shapes(model, adapter_dir: Path) -> None:
    """Record what `rebuild` needs, beside a saved adapter of a hybrid model."""
    projector = find_projector(model)
    if projector is None:
        return
    table = projector.item_table
    (Path(adapter_dir) / SHAPES_FILE).write_text(json.dumps(
        {"num_items": int(table.shape[0] - 1), "expert_dim": int(table.shape[1])}))


def rebuild(model, adapter_dir: Path) -> bool:
    """Before loading the adapter at `adapter_dir`: give `model` the hybrid embedding it was
    trained with (placeholder table and weights, which the adapter overwrites). False when the
    adapter is text-only."""
    path = Path(adapter_dir) / SHAPES_FILE
    if not path.is_file():
        return False
    try:
        shapes = json.loads(path.read_text())
        table = torch.zeros(int(shapes["num_items"]) + 1, int(shapes["expert_dim"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable hybrid item shapes ({exc})") from exc
    install(model, table, seed=0)
    return True
