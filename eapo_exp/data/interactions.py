"""The table every data source produces: interactions plus item titles."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

INTERACTION_COLUMNS = ("user", "item", "timestamp")


@dataclass
class InteractionData:
    """Raw interactions of one dataset.

    interactions: columns user (str), item (str), timestamp (float) and optionally rating (float).
    titles: raw item id (str) -> title (str); items may lack a title (they are dropped later, counted).
    """

    interactions: pd.DataFrame
    titles: dict[str, str]

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise ValueError(f"interaction table lacks columns {missing}")
